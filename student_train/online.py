"""Online distillation: the teacher runs in the training loop (transformers, eval mode, no grad).

The label set still supplies the input tokens and the labelled positions; the teacher's
log-probabilities over its full vocabulary at those positions replace the cached top k. They are
handed to the same loss as a "top V" (ids 0..V-1, every log-prob), for which ``sparse_kd_loss``
drops the tail bucket, so the divergence, temperature and lambda options mean what they mean for
cached labels, and a cache holding the full vocabulary gives the same loss.
"""
import dataclasses

import torch
from transformers import AutoModelForCausalLM

from schemas import tokenizer_fingerprint


def load_teacher(teacher_dir: str, label_tokenizer_dir: str, student) -> torch.nn.Module:
    """The teacher in eval mode, frozen; refuses one whose tokenizer or vocabulary differs."""
    if tokenizer_fingerprint(teacher_dir) != tokenizer_fingerprint(label_tokenizer_dir):
        raise ValueError(f"online teacher {teacher_dir} has a different tokenizer from the label "
                         f"set's ({label_tokenizer_dir}): its token ids would mean other tokens")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    s_vocab = student.get_output_embeddings().weight.shape[0]
    if t_vocab != s_vocab:
        raise ValueError(f"online teacher {teacher_dir} has {t_vocab} output tokens, the student "
                         f"{s_vocab}: full-vocabulary KD needs the same vocabulary")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def full_logprobs(teacher: torch.nn.Module, batch) -> torch.Tensor:
    """(N, V) teacher log-probabilities at temperature 1 at the batch's labelled positions."""
    logits = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return torch.log_softmax(logits[batch.pos_b, batch.pos_t].float(), dim=-1)


def with_teacher(teacher: torch.nn.Module, batch):
    """The batch with its cached top k replaced by the teacher's full distribution."""
    lp = full_logprobs(teacher, batch)
    ids = torch.arange(lp.shape[-1], device=lp.device).expand(lp.shape[0], -1)
    return dataclasses.replace(batch, topk_ids=ids, topk_logprobs=lp)
