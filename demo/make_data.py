"""Generate the demo's datasets: a family of letter tasks where the instruction picks the task.

Raw prompts carry a full instruction ("Write the word backwards: ..."); simplified prompts carry only
a terse tag ("rev ...") that the teacher was never trained on. The response is the same either way,
so a student trained on simplified prompts with raw-conditioned teacher labels learns to act on the
tag as the teacher acts on the instruction (context distillation).

Responses contain a small rate of annotator typos, so the teacher's distributions are not one-hot.

    python demo/make_data.py            # writes demo/data/*.jsonl (deterministic, seeded)
"""
import json
import random
import string
from pathlib import Path

LETTERS = string.ascii_lowercase
TYPO_RATE = 0.05

# task -> (paraphrased instructions, terse tag, function)
TASKS = {
    "copy": (["Copy the word:", "Repeat this word:"], "cp", lambda w: w),
    "reverse": (["Write the word backwards:", "Reverse the letters:"], "rev", lambda w: w[::-1]),
    "upper": (["Write the word in capitals:", "Uppercase this word:"], "up", str.upper),
    "shift": (["Replace each letter by the next one:", "Shift every letter by one:"], "sh",
              lambda w: "".join(LETTERS[(LETTERS.index(c) + 1) % 26] for c in w)),
    "double": (["Write every letter twice:", "Double each letter:"], "dbl",
               lambda w: "".join(c + c for c in w)),
    "sort": (["Sort the letters alphabetically:", "Put the letters in order:"], "srt",
             lambda w: "".join(sorted(w))),
}


def make_example(rng: random.Random, idx: int, prefix: str, typos: bool = True,
                 tasks: dict = TASKS) -> tuple[dict, dict]:
    task = rng.choice(sorted(tasks))
    instructions, tag, fn = tasks[task]
    word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 7)))
    answer = fn(word)
    if typos:
        answer = "".join(rng.choice(LETTERS) if rng.random() < TYPO_RATE and c.islower() else c
                         for c in answer)
    ex_id = f"{prefix}-{idx:06d}"
    raw = {"id": ex_id, "prompt": f"{rng.choice(instructions)} {word} =", "response": f" {answer}"}
    simplified = {"id": ex_id, "prompt": f"{tag} {word} ="}
    return raw, simplified


def make_split(seed: int, n: int, prefix: str, typos: bool = True,
               tasks: dict = TASKS) -> tuple[list, list]:
    """``tasks`` (default: all of TASKS) is the family to draw from: a subset, or a variant with
    another function for some task (a teacher with a planted error)."""
    rng = random.Random(seed)
    pairs = [make_example(rng, i, prefix, typos, tasks) for i in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def write_jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main() -> None:
    out = Path(__file__).parent / "data"
    for name, seed, n in [("train", 1, 2000), ("heldout", 2, 300)]:
        raw, simp = make_split(seed, n, name)
        write_jsonl(out / f"{name}_raw.jsonl", raw)
        write_jsonl(out / f"{name}_simplified.jsonl", simp)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
