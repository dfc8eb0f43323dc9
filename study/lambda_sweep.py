"""Experiment 2: lambda in lambda*CE + (1 - lambda)*KD, swept over {0, 0.25, 0.5, 0.75, 1}.

(a) a teacher with a planted systematic error (study/teachers/tasks_planted: "shift" answers are
    shifted by two letters) and clean gold labels: held-out exact match on the affected slice and
    overall, and how often the student copies the teacher's error;
(b) a reliable teacher (study/teachers/tasks) and noisy gold labels (30% of the training responses
    replaced by random letters).

    python study/lambda_sweep.py [--quick] [--out DIR]

Full mode writes docs/study/lambda.md and docs/study/lambda.png; --quick writes to --out only.
"""
import argparse
import os
import random
import string
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE), str(HERE / "teachers")]

import tasks_common as tc  # noqa: E402
from train_tasks import PLANTED_TASK, planted_shift  # noqa: E402

LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)
NOISE = 0.30
FULL = dict(n_train=2000, n_val=300, n_test=600, steps=1200, seeds=tc.SEEDS,
            lrs=(1e-3, 3e-3), lambdas=LAMBDAS, parallel=2)
QUICK = dict(n_train=48, n_val=24, n_test=48, steps=2, seeds=(0,), lrs=(3e-3,),
             lambdas=(0.0, 0.5, 1.0), parallel=1)
BATCH = 16

PROTOCOL = """\
## Protocol (fixed before the runs)

- Task family: demo/make_data.py's six letter tasks, raw prompts only (no simplified view here).
  Splits drawn with seeds disjoint from the teachers' training data: train (seed 201, {n_train}
  examples), validation (seed 202, {n_val}), test (seed 203, {n_test}); validation and test
  responses are the correct answers (no typos).
- (a) teacher `study/teachers/tasks_planted` (trained to answer "shift" with every letter shifted
  by two instead of one; otherwise like the reliable teacher); gold training responses correct.
  (b) teacher `study/teachers/tasks` (reliable); gold training responses correct except a fixed
  30% of examples whose response letters are all replaced by random letters (same length, same
  case; seed 204).
- Labels: the library call of `kd label` (score mode, top-8, fp32 vLLM engine) on the gold
  training responses.
- Student: demo/student.json (Llama, 2 layers, hidden 96, 229k parameters, 1/3 of the teacher),
  fresh weights. Same for every arm. `kd train` library call (`TrainConfig`): lambda*CE +
  (1-lambda)*forward KL (tail bucket, T = 1), {steps} steps of batch {batch} rows (the same token
  budget for every arm), AdamW, 20 warm-up steps, cosine decay, view raw.
- Learning rate: one per setting, chosen from {lrs} by greedy exact match on the validation split
  with lambda = 0.5 and seed 0 (the midpoint of the sweep), then fixed for every lambda and seed.
- Seeds {seeds} (student init and batch order); every figure is mean ± sample std over seeds.
- Budget note: a first run at 600 steps with the grid {{1e-3, 3e-3, 1e-2}} was stopped after its
  learning-rate sweep, before any validation or test figure was read: the students' training CE
  was still 1.1-1.5 nats per token at the end (they had not learned the tasks; 1e-2 stayed at
  2.5). The budget was doubled and 1e-2 dropped from the grid; nothing else changed.
- Metrics on the test split (no arm trained on it), greedy decoding (`kd eval --exact-match`):
  exact match vs the correct answer overall, on the planted slice ("shift" prompts) and on the
  other five tasks; on the slice, the share of answers that equal the teacher's planted error
  (copied error).
- Expectation (textbook): in (a) raising lambda (more weight on the gold term) stops the student
  copying the teacher's error; in (b) the teacher-matching term wins (lower lambda is better).
"""


def corrupt(raw: list[dict], rate: float, seed: int) -> list[dict]:
    """A fixed ``rate`` of responses with every letter replaced by a random letter."""
    rng = random.Random(seed)
    bad = set(rng.sample(range(len(raw)), round(rate * len(raw))))
    out = []
    for i, r in enumerate(raw):
        if i in bad:
            resp = "".join(rng.choice(string.ascii_uppercase if c.isupper() else
                                      string.ascii_lowercase) if c.isalpha() else c
                           for c in r["response"])
            r = dict(r, response=resp)
        out.append(r)
    return out


def slice_metrics(result: dict, test_raw: list[dict], tok_dir: str) -> dict:
    """Exact match overall / on the planted slice / elsewhere; copied-error share on the slice."""
    texts = tc.decode(tok_dir, result["responses"])
    on, off, copied = [], [], []
    for r in test_raw:
        ok = result["correct"][r["id"]]
        if tc.task_of(r) == PLANTED_TASK:
            on.append(ok)
            copied.append(texts[r["id"]].strip() == planted_shift(tc.word_of(r)))
        else:
            off.append(ok)
    return {"overall": result["exact"], "slice": sum(on) / len(on), "other": sum(off) / len(off),
            "copied": sum(copied) / len(copied)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run: every arm end to end")
    ap.add_argument("--out", default="runs/study/lambda")
    args = ap.parse_args(argv)
    p = QUICK if args.quick else FULL
    out = Path(args.out).resolve()
    command = "python study/lambda_sweep.py" + (" --quick" if args.quick else "")
    protocol = PROTOCOL.format(**p, batch=BATCH)
    head = (f"# Experiment 2: the CE / KD weight lambda\n\nCommand: `{command}` "
            f"(part of `make study`)\n\nMachine: {tc.machine()}\n\n{protocol}\n")
    tc.write_results(out, "lambda.md", head + "\n_Results pending._\n", args.quick)
    t0, load0 = time.time(), os.getloadavg()

    data = out / "data"
    train_raw, _ = tc.split(201, p["n_train"], "train")
    val_raw, _ = tc.split(202, p["n_val"], "val")
    test_raw, _ = tc.split(203, p["n_test"], "test")
    files = {"clean": tc.write_split(data, "train_clean", train_raw, None),
             "noisy": tc.write_split(data, "train_noisy", corrupt(train_raw, NOISE, 204), None),
             "val": tc.write_split(data, "val", val_raw, None),
             "test": tc.write_split(data, "test", test_raw, None)}
    planted, reliable = str(tc.TEACHERS / "tasks_planted"), str(tc.TEACHERS / "tasks")
    lab = out / "labels"
    settings = {"a": tc.label(planted, files["clean"], str(lab / "a_train")),
                "b": tc.label(reliable, files["noisy"], str(lab / "b_train"))}
    # validation / test rows: only their (correct) responses are used
    val = tc.label(reliable, files["val"], str(lab / "val"))
    test = tc.label(reliable, files["test"], str(lab / "test"))
    t_label = time.time() - t0

    def job(setting, lam, seed, lr, evals):
        return dict(labels=settings[setting], student=str(tc.DEMO_STUDENT),
                    out=str(out / "runs" / f"{setting}_lr{lr:g}_lam{lam:g}_s{seed}"),
                    steps=p["steps"], batch_size=BATCH, lr=lr, lam=lam, seed=seed,
                    views=("raw",), evals=evals)

    # learning rate: lambda = 0.5, seed 0, validation exact match
    sweep = [job(s, 0.5, 0, lr, {"val": (val, "raw", False)}) for s in settings for lr in p["lrs"]
             if len(p["lrs"]) > 1]  # --quick: one learning rate, no sweep
    res = tc.run_all(sweep, p["parallel"])
    lr_scores = {s: {} for s in settings}
    for j, r in zip(sweep, res):
        lr_scores["a" if "/a_train" in j["labels"] else "b"][j["lr"]] = r["val"]["exact"]
    lr = {s: tc.choose_lr(v) if v else p["lrs"][0] for s, v in lr_scores.items()}

    jobs = [job(s, lam, seed, lr[s], {"test": (test, "raw", False)})
            for s in settings for lam in p["lambdas"] for seed in p["seeds"]]
    res = tc.run_all(jobs, p["parallel"])
    tok = str(Path(test) / "tokenizer")
    metrics = {}
    for j, r in zip(jobs, res):
        key = ("a" if "/a_train" in j["labels"] else "b", j["lam"])
        metrics.setdefault(key, []).append(slice_metrics(r["test"], test_raw, tok))
    teachers = {name: slice_metrics(tc.evaluate_model(d, {"t": (test, "raw", False)})["t"],
                                    test_raw, tok)
                for name, d in (("planted teacher", planted), ("reliable teacher", reliable))}

    def col(key, m):
        return tc.fmt([x[m] for x in metrics[key]])

    rows_a = [[f"{lam:g}", col(("a", lam), "slice"), col(("a", lam), "copied"),
               col(("a", lam), "other"), col(("a", lam), "overall")] for lam in p["lambdas"]]
    rows_a.append(["planted teacher"] + [f"{100 * teachers['planted teacher'][m]:.1f}"
                                         for m in ("slice", "copied", "other", "overall")])
    rows_b = [[f"{lam:g}", col(("b", lam), "overall"), col(("b", lam), "slice"),
               col(("b", lam), "other")] for lam in p["lambdas"]]
    rows_b.append(["reliable teacher"] + [f"{100 * teachers['reliable teacher'][m]:.1f}"
                                          for m in ("overall", "slice", "other")])
    lr_line = "; ".join(f"({s}) " + ", ".join(f"{k:g}: {100 * v:.1f}%" for k, v in sorted(d.items()))
                        + f" -> {lr[s]:g}" for s, d in lr_scores.items())
    tables = (
        "## Results\n\n"
        f"Learning-rate sweep (validation exact match, lambda 0.5, seed 0): {lr_line}.\n\n"
        "### (a) planted-error teacher, clean gold labels\n\n"
        f"Test exact match in % (mean ± std over {len(p['seeds'])} seeds); \"copied\" = answers on "
        "the slice that equal the teacher's planted error.\n\n"
        + tc.md_table(["lambda", f"slice ({PLANTED_TASK})", "copied error", "other tasks",
                       "overall"], rows_a)
        + "\n\n### (b) reliable teacher, 30% corrupted gold responses\n\n"
        f"Test exact match in % (mean ± std over {len(p['seeds'])} seeds).\n\n"
        + tc.md_table(["lambda", "overall", f"{PLANTED_TASK} prompts", "other tasks"], rows_b)
        + "\n\nPer seed, overall test exact match in % (seeds "
        + ", ".join(str(s) for s in p["seeds"]) + "):\n\n"
        + tc.md_table(["lambda", "(a) per seed", "(b) per seed"],
                      [[f"{lam:g}"] + [" / ".join(f"{100 * x['overall']:.1f}"
                                                  for x in metrics[(s, lam)])
                                       for s in ("a", "b")] for lam in p["lambdas"]])
        + f"\n\nWall time: labelling {t_label:.0f} s, all ({len(sweep) + len(jobs)} training runs "
        f"and their evaluations) {time.time() - t0:.0f} s; " + tc.load_note(load0) + "\n")
    plot(metrics, p["lambdas"], out / "lambda.png")
    tc.copy_plot(out, "lambda.png", args.quick)
    verdict = "" if args.quick else "\n" + VERDICT.format(**verdict_numbers(metrics, p)) + "\n"
    tc.write_json(out, "lambda.json", {f"{k[0]} lambda={k[1]:g}": v for k, v in metrics.items()},
                  args.quick)
    tc.write_results(out, "lambda.md",
                     head + tables + "\n![lambda sweep](lambda.png)\n" + verdict, args.quick)
    print(tables)
    return 0


VERDICT = "## Verdict\n\n{text}"


def verdict_numbers(metrics: dict, p: dict) -> dict:
    """The verdict paragraph from the measured means (the claim's direction is fixed in advance:
    (a) slice accuracy rises with lambda, (b) overall accuracy falls with lambda)."""
    m = {k: tc.mean_std([x[f] for x in v]) for k, v in metrics.items()
         for f in ["slice"] if k[0] == "a"}
    c = {k: tc.mean_std([x["copied"] for x in v])[0] for k, v in metrics.items() if k[0] == "a"}
    b = {k: tc.mean_std([x["overall"] for x in v]) for k, v in metrics.items() if k[0] == "b"}
    lams = p["lambdas"]
    a_lo, a_hi = m[("a", lams[0])], m[("a", lams[-1])]
    b_lo, b_hi = b[("b", lams[0])], b[("b", lams[-1])]
    best_b = max(lams, key=lambda lam: b[("b", lam)][0])
    a_ok = a_hi[0] - a_hi[1] > a_lo[0] + a_lo[1]
    b_ok = b_lo[0] - b_lo[1] > b_hi[0] + b_hi[1]
    word = {(True, True): "Reproduced", (False, False): "Not reproduced"}.get((a_ok, b_ok), "Mixed")
    text = (f"**{word}.** (a) With the planted-error teacher, slice accuracy goes from "
            f"{100 * a_lo[0]:.1f} ± {100 * a_lo[1]:.1f}% at lambda 0 (copied error "
            f"{100 * c[('a', lams[0])]:.1f}%) to {100 * a_hi[0]:.1f} ± {100 * a_hi[1]:.1f}% at "
            f"lambda 1 (copied {100 * c[('a', lams[-1])]:.1f}%): "
            + ("the gold term stops the copying, as expected" if a_ok else
               "not a separation beyond one std, so the expectation is not shown")
            + f". (b) With the reliable teacher and 30% corrupted gold responses, overall accuracy "
            f"is {100 * b_lo[0]:.1f} ± {100 * b_lo[1]:.1f}% at lambda 0 and "
            f"{100 * b_hi[0]:.1f} ± {100 * b_hi[1]:.1f}% at lambda 1 (best mean at lambda "
            f"{best_b:g}): "
            + ("the teacher-matching term wins, as expected" if b_ok else
               "the teacher-matching term does not win beyond one std")
            + ". Criterion fixed in advance: the means at the two ends of the sweep differ by "
            "more than the sum of their stds, in the expected direction."
            + (" The seed spread is large (per-seed values above): within the budget some "
               "students learn the tasks abruptly and late, some not at all, so the means carry "
               "less than their size suggests." if max(a_lo[1], a_hi[1], b_lo[1], b_hi[1]) > 0.1
               else ""))
    return {"text": text}


def plot(metrics: dict, lambdas, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, setting, series, title in (
            (axes[0], "a", [("slice", f"{PLANTED_TASK} slice"), ("copied", "copied error"),
                            ("overall", "overall")], "(a) planted-error teacher, clean gold"),
            (axes[1], "b", [("overall", "overall")], "(b) reliable teacher, 30% noisy gold")):
        for m, label in series:
            stats = [tc.mean_std([x[m] for x in metrics[(setting, lam)]]) for lam in lambdas]
            ax.errorbar(lambdas, [100 * s[0] for s in stats], yerr=[100 * s[1] for s in stats],
                        marker="o", capsize=3, label=label)
        ax.set_xlabel("lambda (weight of CE on gold)")
        ax.set_ylabel("test exact match / share (%)")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        tc.shutdown()
