"""Held-out figures for a student against the teacher's labels.

Per view: CE and perplexity of the true response tokens, top-1 agreement with the teacher
(student argmax == teacher's most likely token), and KL(teacher || student) over the teacher's
top k plus the tail bucket, at temperature 1. ``exact_match``: greedy decoding from each row's
prompt, compared whole with the row's response (sequence-level accuracy).
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


@torch.no_grad()
def greedy_responses(model, prompts: list[list[int]], limits: list[int], eos_id: int,
                     pad_id: int) -> list[list[int]]:
    """Greedy continuation of each prompt (left-padded into one batch), at most ``limits[i]``
    tokens, cut after the first EOS."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(limits),
                         do_sample=False, eos_token_id=eos_id, pad_token_id=pad_id)
    responses = []
    for row, limit in zip(out[:, width:].tolist(), limits):
        row = row[:limit]
        responses.append(row[:row.index(eos_id) + 1] if eos_id in row else row)
    return responses


@torch.no_grad()
def exact_match(student_dir: str, labels: str, view: str, batch_size: int = 64,
                slack: int = 4) -> dict:
    """Greedy decoding from the prompt of every ``view`` row (``input_ids[:label_start]``) against
    its response (``input_ids[label_start:]``, EOS included): the share of rows reproduced exactly.
    Each row decodes at most len(response) + ``slack`` tokens. Also returns per example id the
    decoded tokens (``responses``) and whether they matched (``correct``), for slicing and for
    comparing two models' outputs."""
    ls = LabelSet(labels, views=(view,))
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
    eos_id, pad_id = model.config.eos_token_id, model.config.pad_token_id or 0
    if isinstance(eos_id, list):
        eos_id = eos_id[0]
    responses, correct = {}, {}
    for s in range(ls.num_shards):
        arrays, sel = ls.shard(s)
        for b in range(0, len(sel), batch_size):
            rows = sel[b:b + batch_size]
            seqs = [arrays.ids[arrays.ids_off[r]:arrays.ids_off[r + 1]].tolist() for r in rows]
            starts = [int(arrays.label_start[r]) for r in rows]
            refs = [seq[st:] for seq, st in zip(seqs, starts)]
            outs = greedy_responses(model, [seq[:st] for seq, st in zip(seqs, starts)],
                                    [len(ref) + slack for ref in refs], eos_id, pad_id)
            for r, ref, got in zip(rows, refs, outs):
                responses[arrays.example_id[r]] = got
                correct[arrays.example_id[r]] = got == ref
    if not correct:
        raise ValueError(f"no '{view}' rows in {labels}")
    return {"student": student_dir, "view": view, "rows": len(correct),
            "exact": sum(correct.values()) / len(correct), "responses": responses,
            "correct": correct}


def format_table(results: list[dict]) -> str:
    exact = any("exact" in r for r in results)
    head = (f"{'student':<28} {'view':<11} {'tokens':>7} {'CE':>7} {'PPL':>7} {'top1 agr':>9} "
            f"{'KL':>7}" + (f" {'exact':>7}" if exact else ""))
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['name']:<28} {r['view']:<11} {r['tokens']:>7} {r['ce']:>7.4f} "
                     f"{r['ppl']:>7.3f} {r['top1_agree']:>9.4f} {r['kl']:>7.4f}"
                     + (f" {r['exact']:>7.4f}" if exact else ""))
    return "\n".join(lines)
