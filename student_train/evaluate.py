"""Held-out figures for a student against the teacher's labels.

Per view: CE and perplexity of the true response tokens, top-1 agreement with the teacher
(student argmax == teacher's most likely token), and KL(teacher || student) over the teacher's
top k plus the tail bucket, at temperature 1.
"""
import numpy as np
import torch
from transformers import AutoModelForCausalLM

from student_train import losses
from student_train.model import Distiller
from student_train.stream import LabelSet, collate


@torch.no_grad()
def evaluate(student_dir: str, labels: str, view: str, batch_size: int = 64) -> dict:
    ls = LabelSet(labels, views=(view,))
    if ls.targets == "sampled":
        raise ValueError(f"{labels} holds sampled targets only: kd eval compares with the "
                         "teacher's top k (KL, top-1 agreement); label the held-out set with "
                         "--targets topk or both")
    model = Distiller(AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32),
                      [], None).eval()
    ce = kl = agree = n = 0.0
    rows = 0
    for s in range(ls.num_shards):
        arrays, sel = ls.shard(s)
        for b in range(0, len(sel), batch_size):
            batch = collate([(arrays, sel[b:b + batch_size])])
            h, _ = model(batch)
            logits = model.head(h)
            ce += losses.ce_loss(logits, batch.targets).sum().item()
            kl += losses.sparse_kd_loss(logits, batch.topk_ids, batch.topk_logprobs).sum().item()
            agree += (logits.argmax(-1) == batch.topk_ids[:, 0]).sum().item()
            n += logits.shape[0]
            rows += len(sel[b:b + batch_size])
    if n == 0:
        raise ValueError(f"no '{view}' rows in {labels}")
    return {"student": student_dir, "view": view, "rows": rows, "tokens": int(n),
            "ce": ce / n, "ppl": float(np.exp(ce / n)), "top1_agree": agree / n, "kl": kl / n}


def format_table(results: list[dict]) -> str:
    head = f"{'student':<28} {'view':<11} {'tokens':>7} {'CE':>7} {'PPL':>7} {'top1 agr':>9} {'KL':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['name']:<28} {r['view']:<11} {r['tokens']:>7} {r['ce']:>7.4f} "
                     f"{r['ppl']:>7.3f} {r['top1_agree']:>9.4f} {r['kl']:>7.4f}")
    return "\n".join(lines)
