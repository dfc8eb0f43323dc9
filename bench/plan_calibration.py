"""`kd plan --gpu cpu` against measured `kd label` runs on this machine.

    python bench/plan_calibration.py [--repeat 3]

Four runs of `kd label` (default settings, k=20, raw + simplified views): the demo teacher and
"wide" (bench/label_throughput.py's random Llama, hidden 1024, vocab 32k, here in fp32) on the
demo train split (2,000 examples) and held-out split (300). Each is timed `--repeat` times
(wall seconds of the whole command, engine start included; median). The two train runs fit the
CPU branch's two constants: start-up s and effective FLOP/s (time = start + FLOPs / rate, from
the plan's own FLOP count); the held-out runs check them. Prints JSON lines and a Markdown table
of measured vs planned (with the constants now in pipeline/plan.py and with the fitted ones).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))


def measure(teacher: str, split: str, out: str, repeat: int) -> float:
    data = os.path.join(ROOT, "demo", "data")
    cmd = [os.path.join(os.path.dirname(sys.executable), "kd"), "label", "--teacher", teacher,
           "--input", f"{data}/{split}_raw.jsonl", "--simplified",
           f"{data}/{split}_simplified.jsonl", "--top-k", "20", "--no-progress"]
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd + ["--out", f"{out}-{i}"], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    from label_throughput import wide_model
    from pipeline import plan
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        teachers = {"demo": os.path.join(ROOT, "demo", "teacher"),
                    "wide fp32": wide_model(os.path.join(tmp, "wide"), torch.float32)}
        for split in ("train", "heldout"):
            for name, teacher in teachers.items():
                data = os.path.join(ROOT, "demo", "data")
                p = plan.plan(teacher, f"{data}/{split}_raw.jsonl",
                              f"{data}/{split}_simplified.jsonl", top_k=20, gpu="cpu")
                measured = measure(teacher, split, os.path.join(tmp, f"{name}-{split}"),
                                   args.repeat)
                rows.append({"teacher": name, "split": split, "flops": p["compute"]["flops"],
                             "measured_s": measured, "planned_s": p["compute"]["wall_s"]})
                print(json.dumps(rows[-1]), flush=True)
    (a, b) = [r for r in rows if r["split"] == "train"]
    rate = (b["flops"] - a["flops"]) / (b["measured_s"] - a["measured_s"])
    start = a["measured_s"] - a["flops"] / rate
    peak, _ = plan.cpu_peak()
    print(json.dumps({"fit_start_s": start, "fit_flops_per_s": rate, "fit_mfu": rate / peak}))
    print("| teacher | split | TFLOP | measured s | plan s (plan.py) | error | plan s (fit) | error |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        fit = start + r["flops"] / rate
        print(f"| {r['teacher']} | {r['split']} | {r['flops'] / 1e12:.2f} | "
              f"{r['measured_s']:.1f} | {r['planned_s']:.1f} | "
              f"{r['planned_s'] / r['measured_s'] - 1:+.0%} | {fit:.1f} | "
              f"{fit / r['measured_s'] - 1:+.0%} |")


if __name__ == "__main__":
    main()
