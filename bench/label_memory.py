"""Peak memory of `kd label` as the dataset grows: is it flat?

    python bench/label_memory.py [--sizes 2048,8192,32768] [--k 64]

For each size, writes that many plain-text records of ~200 demo-teacher tokens, runs
`kd label --mode text --shard-rows 512` on them in a fresh process (default runner, engine
in-process) and reads its peak resident memory from `/usr/bin/time`. Prints JSON lines;
docs/BENCHMARKS.md records them with the machine they ran on.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2048,8192,32768")
    ap.add_argument("--k", type=int, default=64)
    args = ap.parse_args()
    kd = os.path.join(os.path.dirname(sys.executable), "kd")
    tmp = tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    letters = list("abcdefghij klmnop")
    for n in (int(s) for s in args.sizes.split(",")):
        raw, out = os.path.join(tmp, f"raw-{n}.jsonl"), os.path.join(tmp, f"labels-{n}")
        with open(raw, "w") as f:
            for i in range(n):
                f.write(json.dumps({"id": f"m{i}", "text": "".join(rng.choice(letters, 198))})
                        + "\n")
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "maxrss_kb=%M", kd, "label", "--teacher",
             os.path.join(ROOT, "demo", "teacher"), "--input", raw, "--out", out, "--mode",
             "text", "--top-k", str(args.k), "--shard-rows", "512", "--enforce-eager",
             "--no-progress"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        rss = int(proc.stderr.rsplit("maxrss_kb=", 1)[1].split()[0])
        print(json.dumps({"records": n, "tokens": n * 200, "k": args.k,
                          "seconds": round(time.perf_counter() - t0, 1),
                          "max_rss_mb": round(rss / 1024),
                          "machine": f"{os.cpu_count()} CPU cores"}), flush=True)
        shutil.rmtree(out)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
