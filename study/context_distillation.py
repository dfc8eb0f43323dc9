"""Experiment 4: context distillation. The student sees simplified prompts only ("rev qzmfa =");
the teacher saw the raw prompt with its instruction ("Write the word backwards: qzmfa =").

Arms (labels x initialisation), each at several training-set sizes N:
  score     `kd label` score mode on the gold responses, pure KD (lambda 0)
  generate  `kd label --mode generate` (the teacher writes the responses, no gold), pure KD
  ce        CE on the gold responses alone (lambda 1)
  x  init from the teacher (the usual recipe) | from scratch (same architecture)

    python study/context_distillation.py [--quick] [--out DIR]

Full mode writes docs/study/context.md and docs/study/context.png; --quick writes to --out only.
"""
import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import tasks_common as tc  # noqa: E402

LABELS = ("score", "generate", "ce")
INITS = ("teacher", "scratch")
FULL = dict(sizes=(50, 200, 1600), n_val=200, n_test=600, steps=400, seeds=tc.SEEDS,
            lrs=(3e-4, 1e-3, 3e-3), lr_size=200, parallel=2)
QUICK = dict(sizes=(16,), n_val=16, n_test=32, steps=2, seeds=(0,), lrs=(1e-3,), lr_size=16,
             parallel=1)
BATCH = 16

PROTOCOL = """\
## Protocol (fixed before the runs)

- Task family: demo/make_data.py's six letter tasks. Training pool: seed 401, the first N
  examples for N in {sizes} (nested subsets); gold responses carry the demo's 5% annotator typos.
  Validation: seed 402, {n_val} examples; test: seed 403, {n_test} examples; both with correct
  responses (no typos), disjoint from the teacher's training data (seed 1234).
- Teacher: `study/teachers/tasks` (4 layers, hidden 128, 0.68M parameters), trained on raw
  prompts only.
- Labels, all through the library call of `kd label` (top-8, fp32 vLLM engine), conditioned on
  the raw prompt: score mode on the gold responses; generate mode (greedy, temperature 0, at most
  20 new tokens) on the prompts alone: the teacher's own response replaces the gold one.
- Arms: `score` = pure KD (lambda 0) on score-mode labels; `generate` = pure KD on generate-mode
  labels; `ce` = CE on the gold responses alone (lambda 1). Each initialised from the teacher's
  weights or from scratch with the teacher's architecture (the same student in every arm).
  Students train on the simplified view only (`views: [simplified]`): {steps} steps of batch
  {batch} rows for every arm and every N (the same token budget; small N means more epochs),
  forward KL with tail bucket, T = 1, AdamW, 20 warm-up steps, cosine decay.
- Learning rate: per initialisation, chosen from {lrs} by validation exact match (simplified
  prompts) of the `score` arm at N = {lr_size}, seed 0; then fixed for every arm, N and seed.
- Seeds {seeds}; every figure is mean ± sample std over seeds.
- Metrics on the test split, greedy decoding from the simplified prompt (`kd eval --exact-match`):
  exact match vs the correct answer, and agreement = the share of examples whose greedy answer is
  identical to the teacher's greedy answer given the raw prompt (teacher with context). Beside
  them the teacher with context (raw prompt) and without it (simplified prompt).
- Expectations (literature: context distillation, Askell et al. 2021, Snell et al. 2022): a
  student without the context approaches the teacher with it (and far exceeds the teacher
  without it); KD labels are more data-efficient than CE on gold at small N; initialising from
  the teacher beats scratch.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run: every arm end to end")
    ap.add_argument("--out", default="runs/study/context")
    args = ap.parse_args(argv)
    p = QUICK if args.quick else FULL
    out = Path(args.out).resolve()
    command = "python study/context_distillation.py" + (" --quick" if args.quick else "")
    head = (f"# Experiment 4: context distillation\n\nCommand: `{command}` (part of `make study`)"
            f"\n\nMachine: {tc.machine()}\n\n{PROTOCOL.format(**p, batch=BATCH)}\n")
    tc.write_results(out, "context.md", head + "\n_Results pending._\n", args.quick)
    t0, load0 = time.time(), os.getloadavg()

    teacher = str(tc.TEACHERS / "tasks")
    data, lab = out / "data", out / "labels"
    pool_raw, pool_simp = tc.split(401, max(p["sizes"]), "train", typos=True)
    val = tc.label(teacher, tc.write_split(data, "val", *tc.split(402, p["n_val"], "val")),
                   str(lab / "val"))
    test_raw, test_simp = tc.split(403, p["n_test"], "test")
    test = tc.label(teacher, tc.write_split(data, "test", test_raw, test_simp), str(lab / "test"))
    sets = {}
    for n in p["sizes"]:
        files = tc.write_split(data, f"train{n}", pool_raw[:n], pool_simp[:n])
        sets[("score", n)] = tc.label(teacher, files, str(lab / f"score{n}"))
        sets[("generate", n)] = tc.label(teacher, tc.prompts_only(files, data, f"train{n}"),
                                         str(lab / f"generate{n}"), mode="generate",
                                         temperature=0.0, max_new_tokens=20)
    t_label = time.time() - t0
    scratch = tc.student_config_from(teacher, out / "scratch_student.json")

    def job(arm, init, n, seed, lr, evals):
        return dict(labels=sets[("generate" if arm == "generate" else "score", n)],
                    student=teacher if init == "teacher" else scratch,
                    out=str(out / "runs" / f"{arm}_{init}_n{n}_lr{lr:g}_s{seed}"),
                    steps=p["steps"], batch_size=BATCH, lr=lr, lam=1.0 if arm == "ce" else 0.0,
                    seed=seed, views=("simplified",), evals=evals)

    sweep = [job("score", init, p["lr_size"], 0, lr, {"val": (val, "simplified", False)})
             for init in INITS for lr in p["lrs"] if len(p["lrs"]) > 1]  # --quick: no sweep
    lr_scores = {init: {} for init in INITS}
    for j, r in zip(sweep, tc.run_all(sweep, p["parallel"])):
        lr_scores["teacher" if j["student"] == teacher else "scratch"][j["lr"]] = r["val"]["exact"]
    lr = {init: tc.choose_lr(v) if v else p["lrs"][0] for init, v in lr_scores.items()}

    jobs = [job(arm, init, n, seed, lr[init], {"test": (test, "simplified", False)})
            for arm in LABELS for init in INITS for n in p["sizes"] for seed in p["seeds"]]
    res = tc.run_all(jobs, p["parallel"])
    ref = tc.evaluate_model(teacher, {"with": (test, "raw", False),
                                      "without": (test, "simplified", False)})
    ref_resp = ref["with"]["responses"]

    def agreement(result):
        return sum(result["responses"][k] == v for k, v in ref_resp.items()) / len(ref_resp)

    metrics = {}
    for j, r in zip(jobs, res):
        arm, init, n = Path(j["out"]).name.split("_")[:3]
        metrics.setdefault((arm, init, int(n[1:])), []).append(
            {"exact": r["test"]["exact"], "agree": agreement(r["test"])})
    t_with = {"exact": ref["with"]["exact"], "agree": 1.0}
    t_without = {"exact": ref["without"]["exact"], "agree": agreement(ref["without"])}

    def cell(arm, init, n, m):
        return tc.fmt([x[m] for x in metrics[(arm, init, n)]])

    header = ["arm", "init"] + [f"N={n} exact" for n in p["sizes"]] + \
             [f"N={n} agree" for n in p["sizes"]]
    rows = [[arm, init] + [cell(arm, init, n, "exact") for n in p["sizes"]]
            + [cell(arm, init, n, "agree") for n in p["sizes"]]
            for arm in LABELS for init in INITS]
    rows.append(["teacher with context (raw prompt)", "-"]
                + [f"{100 * t_with['exact']:.1f}"] * len(p["sizes"]) + ["100.0"] * len(p["sizes"]))
    rows.append(["teacher without context (simplified prompt)", "-"]
                + [f"{100 * t_without['exact']:.1f}"] * len(p["sizes"])
                + [f"{100 * t_without['agree']:.1f}"] * len(p["sizes"]))
    lr_line = "; ".join(f"init {i}: " + ", ".join(f"{k:g}: {100 * v:.1f}%"
                                                  for k, v in sorted(d.items())) + f" -> {lr[i]:g}"
                        for i, d in lr_scores.items())
    tables = ("## Results\n\n"
              f"Learning-rate sweep (validation exact match, `score` arm, N = {p['lr_size']}, "
              f"seed 0): {lr_line}.\n\n"
              f"Test exact match vs the correct answer and agreement with the teacher-with-context, "
              f"greedy, simplified prompts, in % (mean ± std over {len(p['seeds'])} seeds), by the "
              f"number N of training examples:\n\n" + tc.md_table(header, rows)
              + f"\n\nWall time: labelling {t_label:.0f} s, all ({len(sweep) + len(jobs)} training "
              f"runs and their evaluations) {time.time() - t0:.0f} s; " + tc.load_note(load0) + "\n")
    plot(metrics, p["sizes"], t_with, t_without, out / "context.png")
    tc.copy_plot(out, "context.png", args.quick)
    verdict = "" if args.quick else "\n" + verdict_text(metrics, p, t_with, t_without) + "\n"
    tc.write_json(out, "context.json", {
        **{f"{arm} init={init} N={n}": v for (arm, init, n), v in metrics.items()},
        "teacher with context": t_with, "teacher without context": t_without,
        "lr_sweep": {i: {f"{k:g}": v for k, v in d.items()} for i, d in lr_scores.items()}},
        args.quick)
    tc.write_results(out, "context.md",
                     head + tables + "\n![context distillation](context.png)\n" + verdict,
                     args.quick)
    print(tables)
    return 0


def verdict_text(metrics, p, t_with, t_without) -> str:
    """Three claims, each judged by a criterion fixed in advance: means differ by more than the
    sum of their stds in the expected direction."""
    def ms(arm, init, n, m="exact"):
        return tc.mean_std([x[m] for x in metrics[(arm, init, n)]])

    def beats(a, b):
        return a[0] - a[1] > b[0] + b[1]

    small, large = min(p["sizes"]), max(p["sizes"])
    best = max(((arm, init) for arm in LABELS for init in INITS),
               key=lambda k: ms(*k, large, "agree")[0])
    b_agree, b_exact = ms(*best, large, "agree"), ms(*best, large)
    c1 = b_exact[0] >= 0.9 * t_with["exact"] and b_exact[0] > t_without["exact"] + 0.3
    kd_small = {init: ms("score", init, small) for init in INITS}
    ce_small = {init: ms("ce", init, small) for init in INITS}
    c2 = {init: beats(kd_small[init], ce_small[init]) for init in INITS}
    init_cmp = {(arm, n): (ms(arm, "teacher", n), ms(arm, "scratch", n))
                for arm in LABELS for n in p["sizes"]}
    c3 = sum(beats(t, s) for t, s in init_cmp.values())
    passed = [c1, all(c2.values()), c3 == len(init_cmp)]
    word = "Reproduced" if all(passed) else "Not reproduced" if not any(passed) else "Mixed"

    def pct(x):
        return f"{100 * x[0]:.1f} ± {100 * x[1]:.1f}%"

    return (f"## Verdict\n\n**{word}.** (1) Without its context the teacher solves "
            f"{100 * t_without['exact']:.1f}% of the test prompts (with it: "
            f"{100 * t_with['exact']:.1f}%); the best student at N = {large} ({best[0]}, init "
            f"{best[1]}) solves {pct(b_exact)} from the simplified prompt alone and agrees with "
            f"the teacher-with-context on {pct(b_agree)}: "
            + ("the context is internalised (criterion: at least 90% of the teacher-with-context's "
               "exact match)" if c1 else "short of the criterion (at least 90% of the "
               "teacher-with-context's exact match)")
            + f". (2) Data efficiency at N = {small}: score-mode KD {pct(kd_small['teacher'])} vs "
            f"CE on gold {pct(ce_small['teacher'])} from the teacher's weights, "
            f"{pct(kd_small['scratch'])} vs {pct(ce_small['scratch'])} from scratch: "
            + ("KD is more data-efficient in both" if all(c2.values()) else
               ("KD beats CE beyond the spread only from the "
                + ", ".join(k for k, v in c2.items() if v) + " initialisation")
               if any(c2.values()) else
               "KD does not beat CE beyond the spread from either initialisation")
            + f". (3) Initialising from the teacher beats scratch beyond the spread in {c3} of "
            f"{len(init_cmp)} (arm, N) cells. Criterion for (2) and (3), fixed in advance: means "
            "differ by more than the sum of their stds.")


def plot(metrics, sizes, t_with, t_without, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, m, title in ((axes[0], "exact", "test exact match (simplified prompt)"),
                         (axes[1], "agree", "agreement with teacher-with-context")):
        for arm in LABELS:
            for init in INITS:
                stats = [tc.mean_std([x[m] for x in metrics[(arm, init, n)]]) for n in sizes]
                ax.errorbar(sizes, [100 * s[0] for s in stats], yerr=[100 * s[1] for s in stats],
                            marker="o", capsize=3, linestyle="-" if init == "teacher" else "--",
                            label=f"{arm}, init {init}")
        ax.axhline(100 * t_with[m], color="k", linestyle=":", label="teacher with context")
        ax.axhline(100 * t_without[m], color="grey", linestyle=":",
                   label="teacher without context")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("training examples N")
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        tc.shutdown()
