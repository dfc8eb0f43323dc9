"""Where one `kd label` run spends its time: the engine's forward, our head and summaries, the
shard writing, and the rest (Beam, reading, tokenising, manifest).

    python bench/label_breakdown.py [--teacher demo|wide] [--seqs 2048] [--k 64]
                                    [--hidden final|none] [--targets topk|sampled|both]
                                    [--samples 12]

Plain-text records of ~200 demo-tokenizer tokens ("wide": bench/label_throughput.py's random
32k-vocabulary Llama), one shard, engine started before the timed runs;
the calls are timed by wrappers in this process. Best of 2 runs. Prints one JSON line; its
"shard" part splits the shard's time into the Arrow table, the Parquet encoding (zstd included),
the hash and file write, and gives the same table's Parquet encoding with compression off.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", choices=["demo", "wide"], default="demo")
    ap.add_argument("--seqs", type=int, default=2048)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--hidden", choices=["final", "none"], default="final")
    ap.add_argument("--targets", choices=["topk", "sampled", "both"], default="topk")
    ap.add_argument("--samples", type=int, default=12, help="draws per position (sampled, both)")
    args = ap.parse_args()
    from pipeline import job
    from schemas import labelset
    from pipeline import teacher as T
    spent: dict = {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    tmp = tempfile.mkdtemp()
    raw = os.path.join(tmp, "raw.jsonl")
    rng = np.random.default_rng(0)
    with open(raw, "w") as f:
        for i in range(args.seqs):
            f.write(json.dumps({"id": f"b{i}", "text": "".join(rng.choice(
                list("abcdefghij klmnop"), 198))}) + "\n")
    teacher_dir = os.path.join(ROOT, "demo", "teacher")
    if args.teacher == "wide":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from label_throughput import wide_model
        teacher_dir = wide_model(os.path.join(tmp, "wide"))
    n_layers = int(T.model_config(teacher_dir)["num_hidden_layers"])
    sampling = {} if args.targets == "topk" else {"targets": args.targets,
                                                   "samples": args.samples}
    cfg = T.TeacherConfig(model_dir=teacher_dir, enforce_eager=True, **sampling,
                          top_k=0 if args.targets == "sampled" else args.k,
                          hidden_layers=(n_layers,) if args.hidden == "final" else ())
    teacher = T.get_teacher(cfg)
    teacher.pool.encode = timed("engine_encode", teacher.pool.encode)
    T.VllmTeacher.label = timed("label_call", T.VllmTeacher.label)
    labelset.write_shard = timed("write_shard", labelset.write_shard)
    encode, build = labelset.parquet_bytes, labelset.build_table
    labelset.parquet_bytes = timed("parquet", encode)
    tables = []  # the run's shard table, encoded again below with compression off
    labelset.build_table = timed("build_table", lambda *a, **kw: tables.append(
        build(*a, **kw)) or tables[-1])
    best = None
    for _ in range(2):
        spent.clear()
        tables.clear()
        out = os.path.join(tmp, "labels")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        job.run(job.LabelJob(cfg, raw, out, mode="text", shard_rows=args.seqs), [])
        total = time.perf_counter() - t0
        if best is None or total < best["total_s"]:
            best = {"total_s": total, **spent}
            table = tables[0]
    T.shutdown_all()
    shutil.rmtree(tmp)
    engine, label, write = best["engine_encode"], best["label_call"], best["write_shard"]
    parts = {"engine_forward": engine, "head_topk_summaries": label - engine,
             "shard_encode_write": write, "rest": best["total_s"] - label - write}
    # the shard's part: the Arrow table, its Parquet encoding (zstd included), the rest (hash,
    # file write); and the same table's Parquet encoding with compression off
    uncompressed = []
    for _ in range(2):
        t0 = time.perf_counter()
        encode(table, compression="none")
        uncompressed.append(time.perf_counter() - t0)
    shard = {"build_table_s": best["build_table"], "parquet_s": best["parquet"],
             "parquet_uncompressed_s": min(uncompressed),
             "hash_write_s": write - best["build_table"] - best["parquet"]}
    print(json.dumps({"machine": f"{os.cpu_count()} CPU cores", "teacher": args.teacher,
                      "seqs": args.seqs,
                      "tokens": args.seqs * 200, "k": args.k, "hidden": args.hidden,
                      "targets": args.targets,
                      "samples": 0 if args.targets == "topk" else args.samples,
                      "total_s": round(best["total_s"], 2),
                      **{f"{n}_s": round(v, 2) for n, v in parts.items()},
                      **{f"{n}_share": round(v / best["total_s"], 3)
                         for n, v in parts.items()},
                      "shard": {n: round(v, 3) for n, v in shard.items()}}))


if __name__ == "__main__":
    main()
