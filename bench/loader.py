"""Benchmarks of the training side: shard decode, data-wait share, loss time and memory.

    python bench/loader.py decode  [--labels DIR]       # rows -> tensors per second, MB/s
    python bench/loader.py wait    --labels DIR         # share of a training step waiting for data
    python bench/loader.py loss                         # sparse chunked loss vs dense KD, V=32k/128k
    python bench/loader.py all     --labels DIR

Results are printed as JSON lines; docs/BENCHMARKS.md records them with the machine they ran on.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def synthetic_label_set(out: str, rows: int = 2048, seq: int = 256, resp: int = 192,
                        k: int = 64, vocab: int = 32000, shard_rows: int = 512) -> str:
    """A label set of random rows at realistic sizes (no teacher involved: a bench fixture)."""
    from schemas.labelset import Labels, Tokenized, chunk_name, write_shard
    from schemas import Manifest, write_manifest
    rng = np.random.default_rng(0)
    infos = []
    for s in range(0, rows, shard_rows):
        items = []
        for i in range(s, min(rows, s + shard_rows)):
            ids = rng.integers(3, vocab, seq).tolist()
            lp = -np.sort(rng.exponential(2.0, (resp, k)).astype(np.float32), axis=1)
            lp = lp - np.log(np.exp(lp).sum(1, keepdims=True) * 1.05)
            items.append((Tokenized(f"ex{i:07d}", ids, seq - resp, None, None),
                          Labels(rng.integers(0, vocab, (resp, k)).astype(np.int32), lp,
                                 lp[:, 0].copy(), {})))
        infos.append(write_shard(out, items, k, (), {"k": k},
                                 chunk_name([t for t, _ in items])))
    write_manifest(out, Manifest(1, "bench", {"path": "synthetic"}, "synthetic",
                                 {"top_k": k, "hidden_layers": []}, infos,
                                 {"path": "", "rows": 0}, {"rows_in": rows}))
    return out


def bench_decode(labels: str, batch_size: int = 32) -> dict:
    from student_train.stream import LabelSet, batches
    ls = LabelSet(labels)
    total_bytes = sum(s.bytes for s in ls.shards)
    n_rows = sum(len(ls.shard(i)[1]) for i in range(ls.num_shards))
    n_batches = n_rows // batch_size
    ls = LabelSet(labels)  # cold: nothing decoded or verified yet
    t0 = time.perf_counter()
    gen = batches(ls, batch_size, seed=0)
    tokens = 0
    for _ in range(n_batches):
        _, b = next(gen)
        tokens += b.targets.numel()
    dt = time.perf_counter() - t0
    return {"bench": "decode", "labels": labels, "rows": n_batches * batch_size,
            "rows_per_s": n_batches * batch_size / dt, "label_tokens_per_s": tokens / dt,
            "MB_per_s": total_bytes / 1e6 / dt, "shard_MB": total_bytes / 1e6,
            "seconds": dt, "includes": "sha256 check, Parquet read, columnar decode, collate"}


def bench_wait(labels: str, steps: int, workers: int) -> dict:
    from student_train.train import TrainConfig, train
    with tempfile.TemporaryDirectory() as out:
        train(TrainConfig(labels=labels, student=os.path.join(ROOT, "demo", "student.json"),
                          out=out, steps=steps, batch_size=32, lam=0.2, workers=workers))
        rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    rows = rows[5:]  # skip warm-up
    wait, step = sum(r["data_wait_s"] for r in rows), sum(r["step_s"] for r in rows)
    return {"bench": "data_wait", "workers": workers, "steps": len(rows),
            "wait_share": wait / step, "step_ms": 1000 * step / len(rows)}


LOSS_CHILD = r"""
import json, resource, sys, time, torch
sys.path.insert(0, {root!r})
from student_train import losses
mode, V, N, d, k, chunk = {mode!r}, {V}, {N}, {d}, {k}, {chunk}
torch.manual_seed(0)
head = torch.nn.Linear(d, V, bias=False)
h = torch.randn(N, d, requires_grad=True)
if mode == "dense":  # the dense teacher is the input of a dense loss: allocated before `base`
    t_logits = torch.randn(N, V) * 2
else:  # a sparse teacher: k ids and log-probs per position, as stored in the shards
    ids = torch.randint(0, V, (N, k))
    lp = torch.log_softmax(torch.randn(N, k) * 2, -1) - 0.1
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
for _ in range(3):
    if mode == "dense":
        q = torch.log_softmax(head(h), -1)
        p = torch.log_softmax(t_logits, -1)
        (p.exp() * (p - q)).sum(-1).mean().backward()
    else:
        leaf = h.detach().requires_grad_(True)
        for s in range(0, N, chunk):
            logits = head(leaf[s:s + chunk])
            (losses.sparse_kd_loss(logits, ids[s:s + chunk], lp[s:s + chunk]).sum() / N).backward()
        (h * leaf.grad).sum().backward()
dt = (time.perf_counter() - t0) / 3
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"bench": "loss", "mode": mode, "vocab": V, "positions": N, "hidden": d,
                  "k": k, "chunk": chunk if mode == "sparse" else None, "ms": dt * 1000,
                  "peak_extra_MB": (peak - base) / 1024}}))
"""


def bench_loss(vocab: int, mode: str, n: int = 2048, d: int = 512, k: int = 64,
               chunk: int = 512) -> dict:
    code = LOSS_CHILD.format(root=ROOT, mode=mode, V=vocab, N=n, d=d, k=k, chunk=chunk)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["decode", "wait", "loss", "all"])
    ap.add_argument("--labels", default=os.path.join(ROOT, "runs", "demo", "labels", "train"))
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    results = []
    if args.what in ("decode", "all"):
        results.append(bench_decode(args.labels))
        with tempfile.TemporaryDirectory() as tmp:
            results.append({**bench_decode(synthetic_label_set(tmp)),
                            "labels": "synthetic: 2048 rows x 256 tokens, 192 labelled, k=64"})
    if args.what in ("wait", "all"):
        for workers in (0, 2):
            results.append(bench_wait(args.labels, args.steps, workers))
    if args.what in ("loss", "all"):
        for vocab in (32000, 128000):
            for mode in ("dense", "sparse"):
                results.append(bench_loss(vocab, mode))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
