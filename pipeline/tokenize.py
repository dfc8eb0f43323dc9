"""Tokenise prompt and response as separate segments, so the response tokens are identical in the
raw and simplified views (only the offset ``label_start`` differs)."""
from pipeline.records import Example, reject
from schemas.labelset import Tokenized


def load_tokenizer(model_dir: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)


def prompt_ids(tok, prompt: str, chat: bool = False) -> list[int]:
    """BOS + prompt tokens; with ``chat``, the tokenizer's chat template around a user turn."""
    if chat:
        if not tok.chat_template:
            raise ValueError("--chat-template asked for, but the tokenizer has no chat template")
        out = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                      add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
    ids = tok.encode(prompt, add_special_tokens=False)
    return ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids


def response_ids(tok, response: str) -> list[int]:
    ids = tok.encode(response, add_special_tokens=False)
    return ids + ([tok.eos_token_id] if tok.eos_token_id is not None else [])


def tokenize_example(tok, ex: Example, max_len: int, truncate: bool = False,
                     chat: bool = False) -> list[Tokenized | dict]:
    """Tokenise one example. A sequence over ``max_len`` rejects the example (both views), or
    with ``truncate`` keeps the first tokens of the response that fit behind the longer prompt.
    Text mode labels every position after the first. Generate mode examples (no response yet)
    get an empty response and need room for one token."""
    generate = ex.mode == "generate"
    resp = [] if generate else response_ids(tok, ex.response)
    raw_p = prompt_ids(tok, ex.prompt, chat and ex.mode != "text")
    if not raw_p:  # plain text without a BOS token: the first text token is the context
        raw_p, resp = resp[:1], resp[1:]
    simp_p = (prompt_ids(tok, ex.simplified_prompt, chat) if ex.simplified_prompt is not None
              else None)
    resp_len = 1 if generate else len(resp)  # generate: room for one new token
    longest = resp_len + max(len(raw_p), len(simp_p or []))
    room = max_len - max(len(raw_p), len(simp_p or []))
    if longest > max_len and truncate and room >= 1:
        resp = resp[:room]
    elif longest > max_len:
        detail = f"{longest} tokens > teacher context {max_len}"
        out = [reject(*ex.raw_src, "raw", "too_long", detail, ex.id)]
        if ex.simplified_src:
            out.append(reject(*ex.simplified_src, "simplified", "too_long", detail, ex.id))
        return out
    return [Tokenized(ex.id, raw_p + resp, len(raw_p),
                      None if simp_p is None else simp_p + resp,
                      None if simp_p is None else len(simp_p), ex.raw_src)]
