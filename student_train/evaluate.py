"""Held-out figures for a student against the teacher's labels.

Per view: CE and perplexity of the true response tokens, top-1 agreement with the teacher
(student argmax == teacher's most likely token), KL(teacher || student) over the teacher's top k
plus the tail bucket (or, given a teacher model, over its full distribution) at temperature 1,
and the expected calibration error (ECE) of the student's top-1 confidence against whether its
top-1 is the true next token (ECE_BINS equal-width bins: sum over bins of bin share times
|accuracy - mean confidence|).
``exact_match``: greedy decoding from each row's prompt, compared whole with the row's response
(sequence-level accuracy).
"""
import numpy as np
import torch
from transformers import AutoModelForCausalLM

from student_train import losses, online
from student_train.model import Distiller
from student_train.stream import LabelSet, collate

ECE_BINS = 15


def calibration_bins(logits: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS):
    """(3, bins) sums per equal-width confidence bin: count, confidence, correct (top-1)."""
    conf, pred = torch.softmax(logits.float(), dim=-1).max(-1)
    idx = (conf * bins).long().clamp(max=bins - 1)
    out = torch.zeros(3, bins, dtype=torch.float64)
    out[0].index_add_(0, idx, torch.ones_like(conf, dtype=torch.float64))
    out[1].index_add_(0, idx, conf.double())
    out[2].index_add_(0, idx, (pred == targets).double())
    return out


def ece_from_bins(sums: torch.Tensor) -> float:
    """Expected calibration error from ``calibration_bins`` sums."""
    count, conf, correct = sums
    return float((conf - correct).abs().sum() / count.sum().clamp(min=1))


@torch.no_grad()
def evaluate(student_dir: str, labels: str, view: str, batch_size: int = 64,
             teacher: str | None = None) -> dict:
    """With ``teacher`` (a model directory), KL and agreement are against that teacher's full
    distribution computed here (exact KL) instead of the label set's cached top k."""
    ls = LabelSet(labels, views=(view,))
    if ls.targets == "sampled" and not teacher:
        raise ValueError(f"{labels} holds sampled targets only: kd eval compares with the "
                         "teacher's top k (KL, top-1 agreement); label the held-out set with "
                         "--targets topk or both, or give --teacher")
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    model = Distiller(student, [], None).eval()
    online_teacher = online.load_teacher(teacher, ls.tokenizer_dir(), student) if teacher else None
    ce = kl = agree = n = 0.0
    cal = torch.zeros(3, ECE_BINS, dtype=torch.float64)
    rows = 0
    for s in range(ls.num_shards):
        arrays, sel = ls.shard(s)
        for b in range(0, len(sel), batch_size):
            batch = collate([(arrays, sel[b:b + batch_size])])
            if online_teacher is not None:
                batch = online.with_teacher(online_teacher, batch)
            h, _ = model(batch)
            logits = model.head(h)
            ce += losses.ce_loss(logits, batch.targets).sum().item()
            kl += losses.sparse_kd_loss(logits, batch.topk_ids, batch.topk_logprobs).sum().item()
            best = batch.topk_logprobs.argmax(-1, keepdim=True)
            agree += (logits.argmax(-1) == batch.topk_ids.gather(1, best)[:, 0]).sum().item()
            cal += calibration_bins(logits, batch.targets)
            n += logits.shape[0]
            rows += len(sel[b:b + batch_size])
    if n == 0:
        raise ValueError(f"no '{view}' rows in {labels}")
    return {"student": student_dir, "view": view, "rows": rows, "tokens": int(n),
            "ce": ce / n, "ppl": float(np.exp(ce / n)), "top1_agree": agree / n, "kl": kl / n,
            "ece": ece_from_bins(cal)}


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
            f"{'KL':>7} {'ECE':>7}" + (f" {'exact':>7}" if exact else ""))
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['name']:<28} {r['view']:<11} {r['tokens']:>7} {r['ce']:>7.4f} "
                     f"{r['ppl']:>7.3f} {r['top1_agree']:>9.4f} {r['kl']:>7.4f} {r['ece']:>7.4f}"
                     + (f" {r['exact']:>7.4f}" if exact else ""))
    return "\n".join(lines)
