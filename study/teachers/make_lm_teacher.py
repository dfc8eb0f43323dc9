"""Make the study's language-model teacher: a byte-level BPE and a small Llama trained on the
docstrings of the running interpreter's own standard library (a corpus that exists offline).

Corpus: every module, class and function docstring (``ast.get_docstring``) of the stdlib's .py
files, walked in sorted path order (tests, idlelib, site-packages and similar skipped), each
docstring cut to its first ``MAX_CHARS`` characters. A module is held out for evaluation when
sha256(module name) mod 10 == 0; its docstrings never reach the teacher or any student's training
text. Writes study/data/lm_train.jsonl and study/data/lm_heldout.jsonl ({id, text}, for
``kd label --mode text``) and the model directory study/teachers/lm (fp32 safetensors, tokenizer).

Training is capped by steps and by wall-clock seconds (``--max-seconds``), whichever comes first
(the cosine decay follows whichever budget runs out first), so the weights depend on the machine's
speed: the step count reached and the last loss are recorded in study/teachers/lm/teacher_train.json.
Texts are cut to their first MAX_TOKENS tokens (with BOS/EOS) for teacher training.

    python study/teachers/make_lm_teacher.py            # ~8 min on 2 CPU threads
"""
import argparse
import ast
import hashlib
import json
import math
import os
import pathlib
import random
import sysconfig
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parents[2]
SKIP = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo",
        "__pycache__", "ensurepip", "venv"}
MAX_CHARS = 600
MIN_CHARS = 40
MAX_TOKENS = 96


def heldout(module: str) -> bool:
    return int(hashlib.sha256(module.encode()).hexdigest(), 16) % 10 == 0


def docstrings() -> list[dict]:
    """[{id, text, module}] in a fixed order (sorted file paths, then AST walk order)."""
    base = pathlib.Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base)
        if SKIP & set(rel.parts) or any(p.startswith("test") for p in rel.parts):
            continue
        module = ".".join(rel.with_suffix("").parts)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(
            n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        for i, node in enumerate(nodes):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= MIN_CHARS:
                out.append({"id": f"{module}:{i}", "text": doc[:MAX_CHARS], "module": module})
    return out


def build_tokenizer(texts: list[str], vocab: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=256)


def write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"id": r["id"], "text": r["text"]}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "study" / "teachers" / "lm"))
    ap.add_argument("--data", default=str(ROOT / "study" / "data"))
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--max-seconds", type=float, default=450)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    docs = docstrings()
    train = [d for d in docs if not heldout(d["module"])]
    held = [d for d in docs if heldout(d["module"])]
    data = pathlib.Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    write_jsonl(data / "lm_train.jsonl", train)
    write_jsonl(data / "lm_heldout.jsonl", held)
    print(f"{len(docs)} docstrings: {len(train)} train, {len(held)} held out "
          f"({len({d['module'] for d in held})} modules)")

    tok = build_tokenizer([d["text"] for d in train], args.vocab)
    # the labelling job's text mode: BOS + text + EOS; the teacher trains on the same framing
    seqs = [([tok.bos_token_id] + tok.encode(d["text"], add_special_tokens=False)
             + [tok.eos_token_id])[:MAX_TOKENS] for d in train]
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=384,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                         head_dim=32, max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    rng = random.Random(args.seed)
    t0, step, warm = time.time(), 0, 10
    model.train()
    while step < args.steps and time.time() - t0 < args.max_seconds:
        # cosine decay over whichever budget runs out first (steps or seconds)
        frac = min(1.0, max(step / args.steps, (time.time() - t0) / args.max_seconds))
        lr = args.lr * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (
            1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = [seqs[rng.randrange(len(seqs))] for _ in range(args.batch_size)]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(batch):
            ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    with open(os.path.join(args.out, "teacher_train.json"), "w") as f:
        where = {k: os.path.relpath(getattr(args, k), ROOT) for k in ("out", "data")}
        json.dump({**vars(args), **where, "max_steps": args.steps, "steps": step,
                   "seconds": round(time.time() - t0, 1), "last_loss": loss.item(),
                   "train_docs": len(train), "heldout_docs": len(held)}, f, indent=1)
    print(f"saved to {args.out} after {step} steps, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
