"""Experiment 5: multi-level (hidden-state) distillation off vs on, in a low-data regime.

Arms: logits KD alone (off); plus a hidden-state loss on the teacher's response-span mean
summaries or on its per-token random projections, each with MSE or cosine, through the uniform
layer map (student layer 1 -> teacher layer 2, student layer 2 -> teacher layer 4). Evaluated on
the four training tasks (in distribution) and on two tasks the student never trained on.

    python study/multi_level.py [--quick | --more-data] [--out DIR]

Full mode writes docs/study/multi_level.md and docs/study/multi_level.png (--more-data:
multi_level_more.md and .png, the same arms with 1,000 examples and 2,400 steps); --quick writes to
--out only.
"""
import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import tasks_common as tc  # noqa: E402

TRAIN_TASKS = ("copy", "reverse", "upper", "double")
HELDOUT_TASKS = ("shift", "sort")
WEIGHTS = (0.1, 1.0)
# (name, hidden target, hidden loss, hidden weight)
ARMS = (("off", None, None, 0.0),) + tuple(
    (f"{target}-{loss}-w{w:g}", target, loss, w) for w in WEIGHTS
    for target in ("mean", "tokens") for loss in ("mse", "cosine"))
LAMBDA = 0.2
PROJ_DIM = 32
FULL = dict(n_train=200, n_val=200, n_test=400, steps=800, seeds=tc.SEEDS,
            lrs=(1e-3, 3e-3, 1e-2), parallel=2)
# --more-data: the same protocol where the logits-only student gets off the floor (the full
# preset's 200 examples leave every student at 0-3% exact match): 5x the examples, 3x the steps
MORE = dict(n_train=1000, n_val=200, n_test=400, steps=2400, seeds=tc.SEEDS,
            lrs=(1e-3, 3e-3, 1e-2), parallel=2)
QUICK = dict(n_train=24, n_val=16, n_test=24, steps=2, seeds=(0,), lrs=(3e-3,), parallel=1)
BATCH = 16

PROTOCOL = """\
## Protocol (fixed before the runs)

- Teacher: `study/teachers/tasks` (Llama, 4 layers, hidden 128), which knows all six letter tasks.
- {regime} regime: {n_train} training examples (seed 501, raw prompts, the demo's 5% typos), drawn
  from four tasks only ({train_tasks}). Validation: seed 502, {n_val} examples of those tasks.
  Test in distribution: seed 503, {n_test} examples of the same four tasks. Test on held-out tasks:
  seed 504, {n_test} examples of {heldout_tasks}, which no student trained on. Test and
  validation responses are correct (no typos).
- Labels: the library call of `kd label`, score mode, top-8, `--hidden-layers 2,final`
  (teacher layers 2 and 4) and `--hidden-proj-dim {proj_dim}` (per-token projections): one label
  set for every arm.
- Student: demo/student.json (2 layers, hidden 96), fresh weights, view raw. Every arm:
  {lam_ce}*CE + {lam_kd}*forward KL (tail bucket, T = 1), {steps} steps of batch {batch} rows
  (the same token budget; many epochs over the small set), AdamW, 20 warm-up steps, cosine decay.
- Arms: hidden-state loss off; on with target `mean` (response-span mean summaries) or `tokens`
  (per-token projections), loss `mse` or `cosine`, weight {weights} (fixed in advance, not tuned:
  configs/multi_level.yaml's 0.1 and TinyBERT's equal weighting 1.0); the uniform layer map
  (student layer i -> teacher layer round(i * 4 / 2)) with a learned linear projection per mapped
  layer.
- Learning rate: chosen from {lrs} by validation exact match of the `off` arm, seed 0; then fixed
  for every arm and seed.
- Seeds {seeds}; every figure is mean ± sample std over seeds.
- Metrics (`kd eval` with `--exact-match`), on both test sets: greedy exact match vs the correct
  answer; per-token CE of the correct answer; top-1 agreement with the teacher; KL(teacher ||
  student) over the teacher's top 8 plus the tail.
- Question (the literature, e.g. TinyBERT, reports that intermediate-layer losses help, most in
  low-data settings): does the hidden-state loss help, hurt or do nothing? Criterion fixed in
  advance: an arm helps (hurts) on a metric when its mean beats (trails) the `off` arm by more
  than the sum of the two stds; otherwise it does nothing measurable.
"""

METRICS = (("exact", "exact %", True), ("top1_agree", "top-1 agr %", True), ("ce", "CE", False),
           ("kl", "KL", False))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run: every arm end to end")
    ap.add_argument("--more-data", action="store_true",
                    help="1,000 examples and 2,400 steps: the same arms above the floor")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    p = QUICK if args.quick else MORE if args.more_data else FULL
    page = "multi_level_more" if args.more_data else "multi_level"
    out = Path(args.out or f"runs/study/{page}").resolve()
    command = ("python study/multi_level.py" + (" --quick" if args.quick else "")
               + (" --more-data" if args.more_data else ""))
    protocol = PROTOCOL.format(**p, batch=BATCH, regime="More-data" if args.more_data else "Low-data", train_tasks=", ".join(TRAIN_TASKS),
                               heldout_tasks=", ".join(HELDOUT_TASKS), proj_dim=PROJ_DIM,
                               lam_ce=LAMBDA, lam_kd=round(1 - LAMBDA, 2),
                               weights=" or ".join(f"{w:g}" for w in WEIGHTS))
    head = (f"# Experiment 5: multi-level (hidden-state) distillation\n\nCommand: `{command}` "
            f"(part of `make study`)\n\nMachine: {tc.machine()}\n\n{protocol}\n")
    tc.write_results(out, f"{page}.md", head + "\n_Results pending._\n", args.quick)
    t0, load0 = time.time(), os.getloadavg()

    teacher = str(tc.TEACHERS / "tasks")
    family = tc.make_data.TASKS
    seen = {t: family[t] for t in TRAIN_TASKS}
    unseen = {t: family[t] for t in HELDOUT_TASKS}
    data, lab = out / "data", out / "labels"
    layers = (2, 4)
    train_raw, _ = tc.split(501, p["n_train"], "train", typos=True, tasks=seen)
    train = tc.label(teacher, tc.write_split(data, "train", train_raw, None), str(lab / "train"),
                     hidden_layers=layers, proj_dim=PROJ_DIM)
    sets = {}
    for name, seed, n, tasks in (("val", 502, p["n_val"], seen), ("test_in", 503, p["n_test"], seen),
                                 ("test_heldout", 504, p["n_test"], unseen)):
        raw, _ = tc.split(seed, n, name, tasks=tasks)
        sets[name] = tc.label(teacher, tc.write_split(data, name, raw, None), str(lab / name))
    t_label = time.time() - t0

    def job(arm, seed, lr, evals):
        _, target, loss, weight = next(a for a in ARMS if a[0] == arm)
        hidden = dict(hidden_weight=weight, hidden_target=target, hidden_loss=loss) \
            if target else {}
        return dict(labels=train, student=str(tc.DEMO_STUDENT),
                    out=str(out / "runs" / f"{arm}_lr{lr:g}_s{seed}"), steps=p["steps"],
                    batch_size=BATCH, lr=lr, lam=LAMBDA, seed=seed, views=("raw",), evals=evals,
                    **hidden)

    sweep = [job("off", 0, lr, {"val": (sets["val"], "raw", False)}) for lr in p["lrs"]
             if len(p["lrs"]) > 1]  # --quick: one learning rate, no sweep
    lr_scores = {j["lr"]: r["val"]["exact"] for j, r in zip(sweep, tc.run_all(sweep, p["parallel"]))}
    lr = tc.choose_lr(lr_scores) if lr_scores else p["lrs"][0]

    evals = {"in": (sets["test_in"], "raw", True), "heldout": (sets["test_heldout"], "raw", True)}
    jobs = [job(arm, seed, lr, evals) for arm, *_ in ARMS for seed in p["seeds"]]
    res = tc.run_all(jobs, p["parallel"])
    metrics = {}
    for j, r in zip(jobs, res):
        arm = Path(j["out"]).name.split("_lr")[0]
        metrics.setdefault(arm, []).append({f"{split}_{m}": r[split][m] for split in ("in", "heldout")
                                            for m, _, _ in METRICS})
    ref = tc.evaluate_model(teacher, evals)

    header = ["arm"] + [f"{split} {title}" for split in ("in-dist", "held-out")
                        for _, title, _ in METRICS]
    rows = []
    for arm, *_ in ARMS:
        row = [arm]
        for split in ("in", "heldout"):
            for m, _, pct in METRICS:
                row.append(tc.fmt([x[f"{split}_{m}"] for x in metrics[arm]], pct=pct,
                                  digits=1 if pct else 3))
        rows.append(row)
    rows.append(["teacher"] + [f"{100 * ref[s][m]:.1f}" if pct else f"{ref[s][m]:.3f}"
                               for s in ("in", "heldout") for m, _, pct in METRICS])
    lr_line = ", ".join(f"{k:g}: {100 * v:.1f}%" for k, v in sorted(lr_scores.items())) or "none"
    tables = ("## Results\n\n"
              f"Learning-rate sweep (validation exact match, `off` arm, seed 0): {lr_line} -> "
              f"{lr:g}.\n\n"
              f"Test figures (mean ± std over {len(p['seeds'])} seeds); in-dist = the four training "
              f"tasks, held-out = {', '.join(HELDOUT_TASKS)} (never trained on). The teacher's own "
              "KL / agreement are against itself.\n\n" + tc.md_table(header, rows)
              + f"\n\nWall time: labelling {t_label:.0f} s, all ({len(sweep) + len(jobs)} training "
              f"runs and their evaluations) {time.time() - t0:.0f} s; " + tc.load_note(load0) + "\n")
    plot(metrics, out / f"{page}.png")
    tc.copy_plot(out, f"{page}.png", args.quick)
    verdict = "" if args.quick else "\n" + verdict_text(metrics) + "\n"
    tc.write_json(out, f"{page}.json", {
        **metrics, "teacher": {f"{s}_{m}": ref[s][m] for s in ("in", "heldout")
                               for m, _, _ in METRICS},
        "lr_sweep": {f"{k:g}": v for k, v in lr_scores.items()}}, args.quick)
    tc.write_results(out, f"{page}.md",
                     head + tables + f"\n![multi-level]({page}.png)\n" + verdict, args.quick)
    print(tables)
    return 0


def verdict_text(metrics) -> str:
    """Per arm and metric: helps / hurts / nothing, by the criterion fixed in advance."""
    calls = {}
    for arm, *_ in ARMS[1:]:
        for split in ("in", "heldout"):
            for m, title, higher in METRICS:
                a = tc.mean_std([x[f"{split}_{m}"] for x in metrics[arm]])
                o = tc.mean_std([x[f"{split}_{m}"] for x in metrics["off"]])
                diff = (a[0] - o[0]) * (1 if higher else -1)
                calls[(arm, split, m)] = ("helps" if diff > a[1] + o[1] else
                                          "hurts" if -diff > a[1] + o[1] else "nothing")
    helps = sorted({k for k, v in calls.items() if v == "helps"})
    hurts = sorted({k for k, v in calls.items() if v == "hurts"})

    def name(k):
        return f"{k[0]} ({'in-dist' if k[1] == 'in' else 'held-out'} {k[2]})"

    def ms(arm, key):
        m, s = tc.mean_std([x[key] for x in metrics[arm]])
        return f"{100 * m:.1f} ± {100 * s:.1f}%"

    word = ("Not reproduced (no measurable effect)" if not helps and not hurts else
            "Reproduced" if helps and not hurts else "Not reproduced (it hurts)"
            if hurts and not helps else "Mixed")
    best = max((a for a, *_ in ARMS), key=lambda a: tc.mean_std([x["in_exact"]
                                                                   for x in metrics[a]])[0])
    return (f"## Verdict\n\n**{word}.** In-distribution exact match: off {ms('off', 'in_exact')}; "
            + "; ".join(f"{a} {ms(a, 'in_exact')}" for a, *_ in ARMS[1:])
            + f" (best mean: {best}). Held-out tasks, top-1 agreement with the teacher: off "
            f"{ms('off', 'heldout_top1_agree')}; "
            + "; ".join(f"{a} {ms(a, 'heldout_top1_agree')}" for a, *_ in ARMS[1:])
            + ". Against the `off` arm, beyond the sum of the stds: helps in "
            + (", ".join(name(k) for k in helps) or "no cell")
            + "; hurts in " + (", ".join(name(k) for k in hurts) or "no cell")
            + f"; {len(calls) - len(helps) - len(hurts)} of {len(calls)} (arm, test set, metric) "
            "cells show no measurable effect.")


def plot(metrics, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = [a for a, *_ in ARMS]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, title in ((axes[0], "in_exact", "in-distribution exact match (%)"),
                           (axes[1], "in_top1_agree", "in-distribution top-1 agreement (%)"),
                           (axes[2], "heldout_top1_agree", "held-out tasks top-1 agreement (%)")):
        stats = [tc.mean_std([x[key] for x in metrics[a]]) for a in arms]
        ax.bar(range(len(arms)), [100 * s[0] for s in stats], yerr=[100 * s[1] for s in stats],
               capsize=4, color=["grey"] + ["C0"] * (len(arms) - 1))
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        lo = min(100 * (s[0] - s[1]) for s in stats)
        ax.set_ylim(max(0, lo - 5), None)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        tc.shutdown()
