"""Experiment 6, the label cache's fidelity: how much of online distillation's gain a student
trained from cached top-k labels keeps.

Protocol (fixed before any run; nothing below was tuned on the results):
- Teacher: study/teachers/lm (a 3-layer d-128 Llama, byte-level BPE of 2048 tokens, trained on
  stdlib docstrings by study/teachers/make_lm_teacher.py). Text: study/data/lm_train.jsonl for
  training (its first N_TRAIN docstrings), study/data/lm_heldout.jsonl for evaluation (first
  N_EVAL; modules no training text comes from).
- Labels: ``kd label --mode text`` (the same library call, one engine) once per label set:
  k in {1, 8, 32, 128} plain, k = 32 compact; held-out text at k = 1 (it only supplies the tokens).
- Student: the same fresh 1-layer d-64 Llama (student.json below) for every arm, the same token
  budget (STEPS optimiser steps of BATCH texts, the same stream order per seed), seeds {0, 1, 2},
  AdamW lr 3e-3 (the trainer's default; no sweep), 20 warm-up steps, cosine decay.
- Arms: ce (lambda = 1); online (``--teacher``, full vocabulary, lambda = 0); cached top-k at
  k in {1, 8, 32, 128} with the tail bucket (lambda = 0); k = 8 renormalised (``--no-tail``);
  k = 32 compact encoding; k = 32 at temperature 2. Forward KL everywhere.
- Evaluation on the held-out text with ``kd eval --teacher`` (the library call): NLL of the true
  next token, KL(teacher || student) over the teacher's full vocabulary, top-1 agreement with the
  teacher, ECE (15 bins). Kept share of online's gain over CE-only, per seed:
  (arm - ce) / (online - ce) for each metric (1 = as good as online, 0 = no better than CE).

    python study/fidelity.py --out /tmp/fidelity          # full: 3 seeds
    python study/fidelity.py --reduced --out /tmp/fid-red # smaller budget, 3 seeds
    python study/fidelity.py --quick --out /tmp/fid-quick # every arm end to end, tiny budget
"""
import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: this checkout's packages
TEACHER = str(ROOT / "study" / "teachers" / "lm")
DATA = ROOT / "study" / "data"
STUDENT = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 192,
           "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
           "head_dim": 32, "max_position_embeddings": 256, "vocab_size": 2048,
           "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
# full: sized from the measured ~2 student steps/s (d 64, 16 texts) on the shared 2-core
# machine: 27 runs x 80 steps ~ 20 min; not yet run to the end
FULL = {"n_train": 800, "n_eval": 200, "steps": 80, "batch": 16, "seeds": (0, 1, 2)}
# reduced: the budget a heavily shared 2-core machine allowed (same arms, seeds and evaluation)
REDUCED = {"n_train": 400, "n_eval": 64, "steps": 40, "batch": 16, "seeds": (0, 1, 2)}
QUICK = {"n_train": 48, "n_eval": 16, "steps": 4, "batch": 8, "seeds": (0,)}
LABEL_SETS = {"k1": (1, "plain"), "k8": (8, "plain"), "k32": (32, "plain"),
              "k128": (128, "plain"), "k32c": (32, "compact")}
# arm -> (label set, TrainConfig overrides)
ARMS = {
    "ce": ("k1", {"lam": 1.0}),
    "online": ("k1", {"lam": 0.0, "teacher": TEACHER}),
    "k1": ("k1", {"lam": 0.0}),
    "k8": ("k8", {"lam": 0.0}),
    "k32": ("k32", {"lam": 0.0}),
    "k128": ("k128", {"lam": 0.0}),
    "k8 no-tail": ("k8", {"lam": 0.0, "tail": False}),
    "k32 compact": ("k32c", {"lam": 0.0}),
    "k32 T=2": ("k32", {"lam": 0.0, "temperature": 2.0}),
}
METRICS = ("ce", "kl", "top1_agree", "ece")


def head(path: pathlib.Path, n: int, out: str) -> str:
    with open(path) as f, open(out, "w") as g:
        for _, line in zip(range(n), f):
            g.write(line)
    return out


def label_all(work: str, p: dict, names: tuple = tuple(LABEL_SETS)) -> dict:
    """The named label sets and the held-out set, one engine (configs differing only in k
    share it)."""
    from pipeline import job
    from pipeline.teacher import TeacherConfig, shutdown_all
    train_txt = head(DATA / "lm_train.jsonl", p["n_train"], f"{work}/train.jsonl")
    eval_txt = head(DATA / "lm_heldout.jsonl", p["n_eval"], f"{work}/heldout.jsonl")
    sets = {}
    try:
        for name, (k, enc) in [*((n, LABEL_SETS[n]) for n in names), ("heldout", (1, "plain"))]:
            out = f"{work}/labels/{name}"
            if not os.path.exists(f"{out}/manifest.json"):
                cfg = TeacherConfig(model_dir=TEACHER, top_k=k, kv_cache_gb=0.5)
                job.run(job.LabelJob(cfg, eval_txt if name == "heldout" else train_txt, out,
                                     mode="text", truncate=True, encoding=enc,
                                     shard_rows=256), [])
            sets[name] = out
    finally:
        shutdown_all()
    return sets


def run(p: dict, work: str, t0: float) -> list[dict]:
    import torch
    from student_train.evaluate import evaluate
    from student_train.train import TrainConfig, train
    torch.set_num_threads(int(os.environ.get("KD_STUDY_THREADS", "2")))
    os.makedirs(work, exist_ok=True)
    student = f"{work}/student.json"
    with open(student, "w") as f:
        json.dump(STUDENT, f)
    sets = label_all(work, p)
    print(f"labelled in {time.time() - t0:.0f} s", flush=True)
    rows = []
    for seed in p["seeds"]:
        for arm, (label_set, over) in ARMS.items():
            out = f"{work}/runs/{arm.replace(' ', '_').replace('=', '')}-s{seed}"
            t1 = time.time()
            train(TrainConfig(labels=sets[label_set], student=student, out=out,
                              steps=p["steps"], batch_size=p["batch"], seed=seed,
                              views=("raw",), **over))
            r = evaluate(out, sets["heldout"], "raw", teacher=TEACHER)
            rows.append({"arm": arm, "seed": seed, "train_s": round(time.time() - t1, 1),
                         **{m: r[m] for m in METRICS}, "tokens": r["tokens"]})
            print(json.dumps(rows[-1]), flush=True)
        report(rows, p, work, t0)  # after every seed: the table so far
    return rows


def kept(arm: float, ce: float, online: float) -> float:
    """Share of online's gain over CE-only that an arm keeps (NaN when online gained nothing)."""
    return (arm - ce) / (online - ce) if online != ce else float("nan")


def summarise(rows: list[dict]) -> dict:
    """Per arm: mean and std over seeds of each metric and of its kept share."""
    by = {(r["arm"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    out = {}
    for arm in ARMS:
        s = {m: [by[arm, sd][m] for sd in seeds] for m in METRICS}
        for m in ("ce", "kl", "top1_agree"):
            s[f"kept_{m}"] = [kept(by[arm, sd][m], by["ce", sd][m], by["online", sd][m])
                              for sd in seeds]
        out[arm] = {m: (float(np.mean(v)), float(np.std(v))) for m, v in s.items()}
    return out


def table(summary: dict, n_seeds: int) -> str:
    cols = [("NLL", "ce", 4), ("KL to teacher", "kl", 4), ("top-1 agr", "top1_agree", 4),
            ("ECE", "ece", 4), ("kept NLL", "kept_ce", 2), ("kept KL", "kept_kl", 2),
            ("kept top-1", "kept_top1_agree", 2)]
    lines = [f"| arm | {' | '.join(c[0] for c in cols)} |",
             "|---" * (len(cols) + 1) + "|"]
    for arm, s in summary.items():
        cells = [f"{s[key][0]:.{d}f} ± {s[key][1]:.{d}f}" for _, key, d in cols]
        lines.append(f"| {arm} | {' | '.join(cells)} |")
    lines.append(f"\nmean ± std over {n_seeds} seed(s); kept = (arm - ce) / (online - ce) per seed")
    return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = [1, 8, 32, 128]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label in (("kept_ce", "held-out NLL"), ("kept_kl", "KL to teacher"),
                       ("kept_top1_agree", "top-1 agreement")):
        m = [summary[f"k{k}"][key][0] for k in ks]
        e = [summary[f"k{k}"][key][1] for k in ks]
        ax.errorbar(ks, m, yerr=e, marker="o", capsize=3, label=label)
    ax.axhline(1.0, color="gray", ls="--", lw=1)
    ax.axhline(0.0, color="gray", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("cached top-k (tail bucket, T = 1)")
    ax.set_ylabel("share of online KD's gain kept")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="every arm end to end, tiny budget")
    ap.add_argument("--reduced", action="store_true",
                    help="a smaller budget (400 texts, 40 steps, 64 held-out texts), 3 seeds")
    ap.add_argument("--out", required=True, help="work and result directory")
    args = ap.parse_args()
    p = QUICK if args.quick else REDUCED if args.reduced else FULL
    t0 = time.time()
    run(p, args.out, t0)
    print(open(f"{args.out}/table.md").read())
    print(f"done in {time.time() - t0:.0f} s -> {args.out}")


def report(rows: list[dict], p: dict, out: str, t0: float) -> None:
    """results.json, table.md and kept_share.png over the seeds finished so far."""
    summary = summarise(rows)
    n_seeds = len({r["seed"] for r in rows})
    with open(f"{out}/results.json", "w") as f:
        json.dump({"params": {**p, "seeds": list(p["seeds"])}, "seeds_done": n_seeds,
                   "rows": rows, "summary": summary, "seconds": round(time.time() - t0, 1)},
                  f, indent=1)
    with open(f"{out}/table.md", "w") as f:
        f.write(table(summary, n_seeds) + "\n")
    plot(summary, f"{out}/kept_share.png")


if __name__ == "__main__":
    main()
