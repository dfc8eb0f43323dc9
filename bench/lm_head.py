"""The labelling LM head alone: plain torch matmul vs vLLM's CPU GEMM (`teacher.LmHead`), each with
the old 2^26-element and the current 2^22-element blocks of log-probs.

    python bench/lm_head.py [--vocab 32000] [--hidden 1024] [--dtype bfloat16] [--rows 8192]
                            [--k 64] [--repeat 5]

Same random states and weights for every variant: matmul, fp32 log-softmax and top-k per block
(what `VllmTeacher.label` does per block). Variants run interleaved, ``--repeat`` rounds after a
warm-up round, best of each. Prints one JSON line per variant, with its ratio to the old road
(plain matmul, 2^26 blocks).
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from pipeline.teacher import LmHead
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    weight = (torch.randn(args.vocab, args.hidden) * args.hidden ** -0.5).to(dtype)
    states = torch.randn(args.rows, args.hidden).to(dtype)
    head = LmHead(weight.clone(), {})

    def plain(x):
        return torch.log_softmax((x @ weight.T).float(), dim=-1)

    old_rows = max(1, (1 << 26) // args.vocab)
    variants = {"plain_matmul_2^26": (plain, old_rows), "plain_matmul_2^22": (plain, head.rows),
                "vllm_cpu_gemm_2^26": (head, old_rows), "vllm_cpu_gemm_2^22": (head, head.rows)}

    def run(fn, rows):
        with torch.no_grad():
            for i in range(0, len(states), rows):
                lp = fn(states[i:i + rows])
                lp.topk(args.k, dim=-1)
    best = dict.fromkeys(variants, float("inf"))
    for r in range(args.repeat + 1):  # round 0 warms up
        for name, (fn, rows) in variants.items():
            t0 = time.perf_counter()
            run(fn, rows)
            if r:
                best[name] = min(best[name], time.perf_counter() - t0)
    base = best["plain_matmul_2^26"]
    for name, (_, rows) in variants.items():
        print(json.dumps({"machine": f"{os.cpu_count()} CPU cores",
                          "threads": torch.get_num_threads(), "vocab": args.vocab,
                          "hidden": args.hidden, "dtype": args.dtype, "k": args.k,
                          "positions": args.rows, "variant": name, "block_rows": rows,
                          "positions_s": round(args.rows / best[name]),
                          "vs_plain_2^26": round(base / best[name], 3)}), flush=True)


if __name__ == "__main__":
    main()
