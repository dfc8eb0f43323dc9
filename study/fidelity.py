"""Experiment 6, the label cache's fidelity: how much of online distillation's gain a student
trained from cached top-k labels keeps.

Protocol (fixed before any run; nothing below was tuned on the results):
- Teacher: study/teachers/lm (a 3-layer d-128 Llama, byte-level BPE of 2048 tokens, trained on
  stdlib docstrings by study/teachers/make_lm_teacher.py). Text: study/data/lm_train.jsonl for
  training (its first N_TRAIN docstrings), study/data/lm_heldout.jsonl for evaluation (first
  N_EVAL; modules no training text comes from).
- Labels: ``kd label --mode text`` (the same library call, one engine) once per label set:
  k in {1, 8, 32, 128} plain, k = 32 compact; sampled targets (``--targets sampled``, N = 12
  and 32 draws per position from the teacher's own distribution, plain; N = 12 compact) and
  ``--targets both`` (top 8 + 12 draws); the validation and held-out texts at k = 1 (they only
  supply the tokens). Label bytes per token are the shard files' bytes per labelled token.
- Student: the same fresh 1-layer d-64 Llama (student.json below) for every arm, the same token
  budget (STEPS optimiser steps of BATCH texts, the same stream order per seed), seeds {0, 1, 2},
  AdamW, 20 warm-up steps, cosine decay; one learning rate for every arm, chosen from LRS by the
  mean validation NLL of the ce and online arms (seed 0) on the validation split: training-module
  texts after the first N_TRAIN, which no arm trains on (never the held-out text).
- Arms: ce (lambda = 1); online (``--teacher``, full vocabulary, lambda = 0); cached top-k at
  k in {1, 8, 32, 128} with the tail bucket (lambda = 0); k = 8 renormalised (``--no-tail``);
  k = 32 compact encoding; k = 32 at temperature 2; sampled N = 12, N = 32, N = 12 compact,
  top 8 + 12 draws (the unbiased estimator of the forward KL). Forward KL everywhere.
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
import shutil
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
# full: 2,000 training texts seen 3.2 times (400 steps of 16), 300 validation and 300 held-out
# texts; sized for about 20 min on an idle 2-core machine (a d-64 student runs at ~30 steps/s)
FULL = {"n_train": 2000, "n_eval": 300, "steps": 400, "batch": 16, "seeds": (0, 1, 2)}
# reduced: the budget a heavily shared 2-core machine allowed (same arms, seeds and evaluation)
REDUCED = {"n_train": 400, "n_eval": 64, "steps": 40, "batch": 16, "seeds": (0, 1, 2)}
QUICK = {"n_train": 48, "n_eval": 16, "steps": 4, "batch": 8, "seeds": (0,)}
# label set -> (top k, encoding, targets, samples per position)
LABEL_SETS = {"k1": (1, "plain", "topk", 0), "k8": (8, "plain", "topk", 0),
              "k32": (32, "plain", "topk", 0), "k128": (128, "plain", "topk", 0),
              "k32c": (32, "compact", "topk", 0),
              "s12": (0, "plain", "sampled", 12), "s32": (0, "plain", "sampled", 32),
              "k8s12": (8, "plain", "both", 12), "s12c": (0, "compact", "sampled", 12)}
LRS = (1e-3, 3e-3, 1e-2)  # the learning-rate sweep, on the validation split
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
    "s12": ("s12", {"lam": 0.0}),
    "s32": ("s32", {"lam": 0.0}),
    "k8+s12": ("k8s12", {"lam": 0.0}),
    "s12 compact": ("s12c", {"lam": 0.0}),
}
METRICS = ("ce", "kl", "top1_agree", "ece")


def lines(path: pathlib.Path, start: int, n: int, out: str) -> str:
    """Lines start .. start + n of a JSONL file, written to ``out``."""
    with open(path) as f, open(out, "w") as g:
        for i, line in enumerate(f):
            if start <= i < start + n:
                g.write(line)
    return out


def label_all(work: str, p: dict, names: tuple = tuple(LABEL_SETS)) -> dict:
    """The named label sets, the validation set (training-module texts after the first
    n_train, which no arm trains on) and the held-out set, one engine."""
    from pipeline import job
    from pipeline.teacher import TeacherConfig, shutdown_all
    train_txt = lines(DATA / "lm_train.jsonl", 0, p["n_train"], f"{work}/train.jsonl")
    val_txt = lines(DATA / "lm_train.jsonl", p["n_train"], p["n_eval"], f"{work}/val.jsonl")
    eval_txt = lines(DATA / "lm_heldout.jsonl", 0, p["n_eval"], f"{work}/heldout.jsonl")
    todo = [*((n, train_txt, LABEL_SETS[n]) for n in names),
            ("val", val_txt, LABEL_SETS["k1"]), ("heldout", eval_txt, LABEL_SETS["k1"])]
    sets = {}
    try:
        for name, text, (k, enc, targets, n) in todo:
            out = f"{work}/labels/{name}"
            if not os.path.exists(f"{out}/manifest.json"):
                cfg = TeacherConfig(model_dir=TEACHER, top_k=k, kv_cache_gb=0.5,
                                    targets=targets, samples=n)
                job.run(job.LabelJob(cfg, text, out, mode="text", truncate=True, encoding=enc,
                                     shard_rows=256), [])
            sets[name] = out
    finally:
        shutdown_all()
    return sets


def bytes_per_token(label_set: str) -> float:
    """Shard bytes per labelled token (the files as written: labels, ids, Parquet overhead)."""
    from schemas.manifest import Manifest
    with open(f"{label_set}/manifest.json") as f:
        m = Manifest.from_json(f.read())
    return sum(s.bytes for s in m.shards) / m.counts["tokens_labelled"]


def heldout_batches(ls, size: int = 32):
    """The label set's rows as collated batches of ``size``, shard by shard, in order."""
    from student_train.stream import collate
    for s in range(ls.num_shards):
        arrays, sel = ls.shard(s)
        for b in range(0, len(sel), size):
            yield collate([(arrays, sel[b:b + size])])


def teacher_stats(labels: str) -> dict:
    """How spread out the teacher is on the held-out text: mean next-token entropy (nats), the
    mean probability mass of its top 1 / 8 / 32 / 128 tokens, and its NLL of the true text."""
    import torch
    from transformers import AutoModelForCausalLM
    from student_train import online
    from student_train.stream import LabelSet
    ls = LabelSet(labels, views=("raw",))
    teacher = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    sums, n = {"entropy": 0.0, "nll": 0.0, **{f"top{k}_mass": 0.0 for k in (1, 8, 32, 128)}}, 0
    with torch.no_grad():
        for batch in heldout_batches(ls):
            lp = online.full_logprobs(teacher, batch)
            p = lp.exp()
            sums["entropy"] += -(p * lp).sum().item()
            sums["nll"] += -lp.gather(-1, batch.targets[:, None]).sum().item()
            top = p.topk(128, -1).values.cumsum(-1)
            for k in (1, 8, 32, 128):
                sums[f"top{k}_mass"] += top[:, k - 1].sum().item()
            n += lp.shape[0]
    return {k: round(v / n, 4) for k, v in sums.items()}


def run_key(cfg) -> str:
    """What decides a training run's result: its settings, the student's config and the label
    set's content (cache key and shard hashes), not where they are stored."""
    import hashlib
    from schemas.manifest import load_manifest
    m = load_manifest(cfg.labels)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k not in ("labels", "student", "out", "metrics_file")}
    with open(cfg.student) as f:
        student = json.load(f)
    blob = json.dumps({"settings": settings, "student": student, "cache_key": m.cache_key,
                       "shards": sorted(sh.sha256 for sh in m.shards)}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_shared(cfg) -> str:
    """Train ``cfg`` into ``cfg.out``. Within one `make study` (``KD_STUDY_RUNS`` set to a
    directory of that invocation) a run is trained once for all experiments: experiment 3's
    forward-KL arm and its sweep are experiment 6's online arm and sweep. ``cfg.out`` is then a
    link to the shared run. Returns ``cfg.out``."""
    from student_train.train import train
    shared = os.environ.get("KD_STUDY_RUNS")
    if not shared:
        train(cfg)
        return cfg.out
    run = os.path.abspath(f"{shared}/{run_key(cfg)}")
    if not os.path.exists(f"{run}/trained.json"):
        train(dataclasses.replace(cfg, out=run))
        with open(f"{run}/trained.json", "w") as f:
            json.dump({"first_trained_as": cfg.out}, f)
    else:
        print(f"{cfg.out}: the same run as {run} (trained by another experiment)", flush=True)
    os.makedirs(os.path.dirname(cfg.out), exist_ok=True)
    if os.path.lexists(cfg.out):
        os.remove(cfg.out) if os.path.islink(cfg.out) else shutil.rmtree(cfg.out)
    os.symlink(run, cfg.out)
    return cfg.out


def choose_lr(p: dict, work: str, sets: dict, student: str, arms: dict) -> float:
    """The learning rate of LRS with the lowest validation NLL, averaged over ``arms`` (seed 0):
    the validation split only, never the held-out text. Writes {work}/lr_sweep.json."""
    from student_train.evaluate import evaluate
    from student_train.train import TrainConfig
    path = f"{work}/lr_sweep.json"
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)["chosen"]
    nll = {}
    for lr in LRS:
        for arm, (label_set, over) in arms.items():
            out = f"{work}/sweep/{arm}-lr{lr:g}"
            train_shared(TrainConfig(labels=sets[label_set], student=student, out=out, lr=lr,
                                     steps=p["steps"], batch_size=p["batch"], seed=0,
                                     views=("raw",), **over))
            nll[f"{arm} lr={lr:g}"] = evaluate(out, sets["val"], "raw")["ce"]
            print(f"lr sweep: {arm} lr={lr:g} validation NLL {nll[f'{arm} lr={lr:g}']:.4f}",
                  flush=True)
    chosen = min(LRS, key=lambda lr: np.mean([nll[f"{a} lr={lr:g}"] for a in arms]))
    with open(path, "w") as f:
        json.dump({"validation_nll": nll, "arms": list(arms), "chosen": chosen}, f, indent=1)
    return chosen


def run(p: dict, work: str, t0: float) -> list[dict]:
    import torch
    from student_train.evaluate import evaluate
    from student_train.train import TrainConfig
    torch.set_num_threads(int(os.environ.get("KD_STUDY_THREADS", "2")))
    os.makedirs(work, exist_ok=True)
    student = f"{work}/student.json"
    with open(student, "w") as f:
        json.dump(STUDENT, f)
    sets = label_all(work, p)
    print(f"labelled in {time.time() - t0:.0f} s", flush=True)
    size = {arm: bytes_per_token(sets[ls]) for arm, (ls, _) in ARMS.items()}
    p = {**p, "teacher": teacher_stats(sets["heldout"])}
    print(f"teacher on the held-out text: {p['teacher']}", flush=True)
    lr = choose_lr(p, work, sets, student, {a: ARMS[a] for a in ("ce", "online")})
    print(f"learning rate {lr:g} (validation sweep) after {time.time() - t0:.0f} s", flush=True)
    rows = []
    for seed in p["seeds"]:
        for arm, (label_set, over) in ARMS.items():
            out = f"{work}/runs/{arm.replace(' ', '_').replace('=', '')}-s{seed}"
            t1 = time.time()
            train_shared(TrainConfig(labels=sets[label_set], student=student, out=out,
                                     steps=p["steps"], batch_size=p["batch"], seed=seed, lr=lr,
                                     views=("raw",), **over))
            r = evaluate(out, sets["heldout"], "raw", teacher=TEACHER)
            rows.append({"arm": arm, "seed": seed, "train_s": round(time.time() - t1, 1),
                         **{m: r[m] for m in METRICS}, "tokens": r["tokens"],
                         "label_B_per_token": None if arm == "online" else size[arm]})
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
        out[arm] = {m: mean_std(v) for m, v in s.items()}
        out[arm]["bytes"] = by[arm, seeds[0]]["label_B_per_token"]
    return out


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def table(summary: dict, n_seeds: int) -> str:
    cols = [("NLL", "ce", 4), ("KL to teacher", "kl", 4), ("top-1 agr", "top1_agree", 4),
            ("ECE", "ece", 4), ("kept NLL", "kept_ce", 2), ("kept KL", "kept_kl", 2),
            ("kept top-1", "kept_top1_agree", 2)]
    rows = [f"| arm | B/token | {' | '.join(c[0] for c in cols)} |",
            "|---" * (len(cols) + 2) + "|"]
    for arm, s in summary.items():
        size = "full logits" if s["bytes"] is None else f"{s['bytes']:.1f}"
        cells = [f"{s[key][0]:.{d}f} ± {s[key][1]:.{d}f}" for _, key, d in cols]
        rows.append(f"| {arm} | {size} | {' | '.join(cells)} |")
    rows.append(f"\nmean ± sample std over {n_seeds} seed(s); kept = (arm - ce) / (online - ce) "
                "per seed; B/token: label-set shard bytes per labelled token")
    return "\n".join(rows)


def plot(summary: dict, path: str) -> None:
    """Left: the kept share against k. Right: KL to the teacher against label bytes per token,
    top-k and sampled targets, with CE-only and online KD as lines (quality per byte)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = [1, 8, 32, 128]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
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
    for arms, label, marker in (([f"k{k}" for k in ks], "top-k (plain)", "o"),
                                (["s12", "s32"], "sampled (plain)", "s"),
                                (["k8+s12"], "top-8 + 12 samples", "^"),
                                (["k32 compact", "s12 compact"], "compact", "x")):
        arms = [a for a in arms if a in summary]
        bx.errorbar([summary[a]["bytes"] for a in arms], [summary[a]["kl"][0] for a in arms],
                    yerr=[summary[a]["kl"][1] for a in arms], marker=marker, capsize=3,
                    label=label, ls="-" if len(arms) > 1 and marker != "x" else "none")
    for arm, ls in (("ce", ":"), ("online", "--")):
        bx.axhline(summary[arm]["kl"][0], color="gray", ls=ls, lw=1, label=f"{arm} (no cache)")
    bx.set_xscale("log")
    ticks = [16, 32, 64, 128, 256, 512]
    bx.set_xticks(ticks, [str(t) for t in ticks])
    bx.minorticks_off()
    bx.set_xlabel("label bytes per token (shard files)")
    bx.set_ylabel("held-out KL(teacher || student), nats")
    bx.legend(fontsize=7)
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
