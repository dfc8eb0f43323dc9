"""Experiment 3, KL direction: forward KL, reverse KL, JSD (beta 0.5) and TVD for a
capacity-limited student of the language-model teacher.

Protocol (fixed before any run): the teacher, texts, label sets and student of study/fidelity.py
(1-layer d-64 Llama); the teacher runs online (``--teacher``, full vocabulary) so that only the
divergence differs; lambda = 0, T = 1, the same token budget and seeds {0, 1, 2}; one learning rate
for every arm, chosen from study.fidelity.LRS by the mean validation NLL of the forward and reverse
KL arms (seed 0, the validation split, never the held-out text). On held-out text:
- entropy of the student's next-token distribution (nats, mean over positions);
- mode share: of the teacher's top-5 tokens at a position, the share that are also in the
  student's top 5 (mean over positions);
- held-out NLL of the true text under the student, KL(teacher || student);
- teacher-scored NLL of the student's own samples: N_SAMPLES texts of SAMPLE_LEN tokens sampled
  from the student at T = 1 after BOS (seeded), scored per token by the teacher.
Expected (the literature): forward KL covers the teacher's modes (higher entropy, higher mode
share), reverse KL picks one (lower entropy, samples the teacher scores better).

    python study/kl_direction.py --out /tmp/kl-direction
    python study/kl_direction.py --quick --out /tmp/kl-quick
"""
import argparse
import json
import os
import pathlib
import sys
import time


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run as a script
from study.fidelity import (FULL, QUICK, REDUCED, STUDENT, TEACHER, choose_lr, heldout_batches,
                            label_all, mean_std, train_shared)

ARMS = {"forward_kl": {}, "reverse_kl": {}, "jsd": {"beta": 0.5}, "tvd": {}}
N_SAMPLES, SAMPLE_LEN, TOP_MODES = 32, 32, 5
METRICS = ("entropy", "mode_share", "nll", "kl", "sample_nll")


def student_stats(student_dir: str, labels: str, seed: int) -> dict:
    """Entropy and mode share on held-out text, and the teacher's NLL of the student's samples."""
    import torch
    from transformers import AutoModelForCausalLM
    from student_train import online
    from student_train.stream import LabelSet
    ls = LabelSet(labels, views=("raw",))
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
    teacher = online.load_teacher(TEACHER, ls.tokenizer_dir(), student)
    ent = share = n = 0.0
    with torch.no_grad():
        for batch in heldout_batches(ls):
            lq = torch.log_softmax(student(input_ids=batch.input_ids,
                                           attention_mask=batch.attention_mask)
                                   .logits[batch.pos_b, batch.pos_t], -1)
            lp = online.full_logprobs(teacher, batch)
            ent += -(lq.exp() * lq).sum().item()
            t_top = lp.topk(TOP_MODES, -1).indices
            s_top = lq.topk(TOP_MODES, -1).indices
            share += (t_top[:, :, None] == s_top[:, None, :]).any(-1).float().mean(-1).sum().item()
            n += lq.shape[0]
        gen = torch.Generator().manual_seed(seed)
        ids = torch.full((N_SAMPLES, 1), student.config.bos_token_id)
        for _ in range(SAMPLE_LEN):
            probs = torch.softmax(student(input_ids=ids).logits[:, -1].float(), -1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], 1)
        lt = torch.log_softmax(teacher(input_ids=ids).logits[:, :-1].float(), -1)
        sample_nll = -lt.gather(-1, ids[:, 1:, None]).mean().item()
    return {"entropy": ent / n, "mode_share": share / n, "sample_nll": sample_nll}


def run(p: dict, work: str) -> list[dict]:
    import torch
    from student_train.evaluate import evaluate
    from student_train.train import TrainConfig
    torch.set_num_threads(int(os.environ.get("KD_STUDY_THREADS", "2")))
    os.makedirs(work, exist_ok=True)
    student = f"{work}/student.json"
    with open(student, "w") as f:
        json.dump(STUDENT, f)
    sets = label_all(work, p, names=("k1",))
    online = {arm: ("k1", {"lam": 0.0, "teacher": TEACHER, "divergence": arm, **over})
              for arm, over in ARMS.items()}
    lr = choose_lr(p, work, sets, student, {a: online[a] for a in ("forward_kl", "reverse_kl")})
    print(f"learning rate {lr:g} (validation sweep)", flush=True)
    rows = []
    for seed in p["seeds"]:
        for arm, over in ARMS.items():
            out = f"{work}/runs/{arm}-s{seed}"
            train_shared(TrainConfig(labels=sets["k1"], student=student, out=out,
                                     steps=p["steps"], batch_size=p["batch"], seed=seed,
                                     views=("raw",), lr=lr, **online[arm][1]))
            r = evaluate(out, sets["heldout"], "raw", teacher=TEACHER)
            rows.append({"arm": arm, "seed": seed, "nll": r["ce"], "kl": r["kl"],
                         **student_stats(out, sets["heldout"], seed)})
            print(json.dumps(rows[-1]), flush=True)
        report(rows, work)
    return rows


def report(rows: list[dict], out: str) -> None:
    seeds = sorted({r["seed"] for r in rows})
    lines = ["| divergence | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    summary = {}
    for arm in ARMS:
        vals = {m: [r[m] for r in rows if r["arm"] == arm] for m in METRICS}
        if not vals["nll"]:
            continue
        summary[arm] = {m: mean_std(v) for m, v in vals.items()}
        lines.append(f"| {arm} | " + " | ".join(f"{summary[arm][m][0]:.4f} ± "
                                                 f"{summary[arm][m][1]:.4f}" for m in METRICS)
                     + " |")
    lines.append(f"\nmean ± sample std over {len(seeds)} seed(s)")
    with open(f"{out}/table.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(f"{out}/results.json", "w") as f:
        json.dump({"rows": rows, "summary": summary}, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reduced", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    p = QUICK if args.quick else REDUCED if args.reduced else FULL
    t0 = time.time()
    run(p, args.out)
    print(open(f"{args.out}/table.md").read())
    print(f"done in {time.time() - t0:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
