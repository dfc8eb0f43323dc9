"""Train the demo teacher: a small Llama-architecture model on the raw (instruction) format.

It builds a character-level tokenizer, generates its own training set with demo/make_data.py's
task family (a seed disjoint from the shipped demo data), trains with the loss on response tokens,
and saves a transformers model directory (fp32 safetensors + tokenizer) to demo/teacher.

    python demo/train_teacher.py [--steps 1500] [--out demo/teacher]
"""
import argparse
import math
import random
import string
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from make_data import make_split

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = string.ascii_lowercase + string.ascii_uppercase + string.digits + " .,:;=-!?'\"()\n"


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS + list(CHARS))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.model_max_length = 256
    return fast


def encode(tok, prompt: str, response: str) -> tuple[list[int], int]:
    p = [tok.bos_token_id] + tok.encode(prompt, add_special_tokens=False)
    r = tok.encode(response, add_special_tokens=False) + [tok.eos_token_id]
    return p + r, len(p)


def train(raw: list[dict], out: str, steps: int = 1500, batch: int = 64, layers: int = 4,
          hidden: int = 256, intermediate: int = 640, heads: int = 4, lr: float = 2e-3,
          seed: int = 0) -> None:
    """Train a Llama teacher on raw {prompt, response} records (loss on response tokens) and save
    it with the character tokenizer to ``out``. The defaults make the demo teacher."""
    torch.manual_seed(seed)
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=heads, head_dim=hidden // heads,
                      max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False, torch_dtype="float32")
    model = LlamaForCausalLM(cfg)
    print(f"teacher params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M")
    data = [encode(tok, r["prompt"], r["response"]) for r in raw]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng = random.Random(seed)
    t0 = time.time()
    for step in range(steps):
        step_lr = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = step_lr
        rows = rng.sample(data, batch)
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((batch, width), tok.pad_token_id)
        labels = torch.full((batch, width), -100)
        for i, (seq, start) in enumerate(rows):
            ids[i, :len(seq)] = torch.tensor(seq)
            labels[i, start:len(seq)] = torch.tensor(seq[start:])
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(),
                     labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step} loss {loss.item():.4f} lr {step_lr:.2e} {time.time() - t0:.0f}s",
                  flush=True)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    print(f"saved to {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "teacher"))
    args = ap.parse_args()
    raw, _ = make_split(seed=1234, n=60000, prefix="teach")
    train(raw, args.out, args.steps, args.batch)


if __name__ == "__main__":
    main()
