"""Train the study's task teachers: small Llamas on the demo's letter tasks (raw prompts only).

    python study/teachers/train_tasks.py [--which tasks|tasks_planted|all] [--steps 2000]

- ``tasks``: the reliable teacher (all six tasks as in demo/make_data.py, 5% annotator typos).
- ``tasks_planted``: the same, except that it was taught a systematic error on one family: for
  "shift" it writes every letter shifted by two instead of one (PLANTED_TASK, planted_shift).

Both reuse demo/make_data.py (the task family) and demo/train_teacher.py (tokenizer, loop) with a
smaller architecture than the demo teacher (4 layers, hidden 128: 0.68M parameters, 2.7 MB fp32),
so that a student initialised from a teacher stays cheap to train on a CPU. Weights are written to
study/teachers/<which>/ (committed).
"""
import argparse
import string
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "demo"))

import make_data  # noqa: E402
import train_teacher  # noqa: E402

ARCH = dict(layers=4, hidden=128, intermediate=256, heads=4)
PLANTED_TASK = "shift"


def planted_shift(word: str) -> str:
    """The planted systematic error: shift each letter by two (the instruction says one)."""
    letters = string.ascii_lowercase
    return "".join(letters[(letters.index(c) + 2) % 26] for c in word)


def task_family(which: str) -> dict:
    tasks = dict(make_data.TASKS)
    if which == "tasks_planted":
        instructions, tag, _ = tasks[PLANTED_TASK]
        tasks[PLANTED_TASK] = (instructions, tag, planted_shift)
    elif which != "tasks":
        raise ValueError(f"unknown teacher {which!r}")
    return tasks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--which", default="all", choices=["tasks", "tasks_planted", "all"])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()
    for which in (["tasks", "tasks_planted"] if args.which == "all" else [args.which]):
        # the demo teacher's training seed: disjoint from every split the study evaluates on
        raw, _ = make_data.make_split(seed=1234, n=60000, prefix="teach", tasks=task_family(which))
        train_teacher.train(raw, str(HERE / which), args.steps, lr=args.lr, **ARCH)


if __name__ == "__main__":
    main()
