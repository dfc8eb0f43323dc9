"""Distillation losses as pure functions over a sparse teacher: top-k and/or sampled targets.

Shapes: N positions, V vocabulary, k teacher ids per position.
- ``topk_ids`` (N, k) int64 and ``topk_logprobs`` (N, k): the teacher's k most likely tokens and
  their log-probabilities at temperature 1 (as stored in the label shards).
- The teacher's mass outside its top k is either a (k+1)-th "tail" bucket on both sides
  (``tail=True``, exact at T=1) or dropped by renormalising over the k ids (``tail=False``).
- Temperature T: teacher log-probs are divided by T and renormalised; with the tail bucket the
  unknown tail is taken as uniform over the V-k other tokens, which is exact at T=1.
Every loss returns a per-position tensor (N,); callers reduce.
"""
import math

import torch
import torch.nn.functional as F


def teacher_logprobs(topk_logprobs: torch.Tensor, vocab: int, temperature: float = 1.0,
                     tail: bool = True) -> torch.Tensor:
    """(N, k) stored log-probs -> (N, k+1) [tail last] or (N, k) teacher log-distribution at T."""
    lp = topk_logprobs.float()
    if not tail:
        return torch.log_softmax(lp / temperature, dim=-1)
    k = lp.shape[-1]
    mass = torch.logsumexp(lp, dim=-1)  # log sum of top-k probs
    tail_lp = torch.log1p(-mass.exp().clamp(max=1 - 1e-6))  # log(1 - sum p_topk)
    rest = max(vocab - k, 1)
    # uniform tail: each of `rest` tokens has log-prob tail_lp - log(rest)
    tail_t = (tail_lp - math.log(rest)) / temperature + math.log(rest)
    return torch.log_softmax(torch.cat([lp / temperature, tail_t[:, None]], dim=-1), dim=-1)


def student_logprobs(logits: torch.Tensor, topk_ids: torch.Tensor, temperature: float = 1.0,
                     tail: bool = True) -> torch.Tensor:
    """(N, V) logits -> student log-probs at the teacher's ids, (N, k+1) with tail or (N, k)."""
    z = logits.float() / temperature
    at_ids = z.gather(-1, topk_ids.long())
    if not tail:
        return torch.log_softmax(at_ids, dim=-1)
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    lq = at_ids - lse
    tail_lq = torch.log1p(-lq.exp().sum(-1).clamp(max=1 - 1e-6))
    return torch.cat([lq, tail_lq[:, None]], dim=-1)


def _kl(la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    return (la.exp() * (la - lb)).sum(-1)


def _log_mix(la: torch.Tensor, lb: torch.Tensor, w: float) -> torch.Tensor:
    """log(w * a + (1 - w) * b), stable."""
    if w <= 0.0:
        return lb
    if w >= 1.0:
        return la
    return torch.logaddexp(la + math.log(w), lb + math.log1p(-w))


def forward_kl(lp, lq, **_):
    """KL(p || q); mean-seeking (the classic Hinton objective)."""
    return _kl(lp, lq)


def reverse_kl(lp, lq, **_):
    """KL(q || p); mode-seeking (MiniLLM)."""
    return _kl(lq, lp)


def jsd(lp, lq, beta: float = 0.5, **_):
    """Generalised JSD (GKD): beta*KL(p||m) + (1-beta)*KL(q||m), m = beta*p + (1-beta)*q."""
    lm = _log_mix(lp, lq, beta)
    return beta * _kl(lp, lm) + (1 - beta) * _kl(lq, lm)


def skew_kl(lp, lq, alpha: float = 0.1, **_):
    """Skew KL (DistiLLM): KL(p || alpha*p + (1-alpha)*q)."""
    return _kl(lp, _log_mix(lp, lq, alpha))


def skew_reverse_kl(lp, lq, alpha: float = 0.1, **_):
    """Skew reverse KL (DistiLLM): KL(q || alpha*q + (1-alpha)*p)."""
    return _kl(lq, _log_mix(lq, lp, alpha))


def tvd(lp, lq, **_):
    """Total variation distance: 0.5 * sum |p - q|."""
    return 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)


DIVERGENCES = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "jsd": jsd,
               "skew_kl": skew_kl, "skew_reverse_kl": skew_reverse_kl, "tvd": tvd}


def sparse_kd_loss(logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                   temperature: float = 1.0, divergence: str = "forward_kl",
                   tail: bool = True, beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
    """Per-position divergence between the sparse teacher and the student, at temperature T."""
    tail = tail and topk_ids.shape[-1] < logits.shape[-1]  # k = V: nothing outside the top k
    lp = teacher_logprobs(topk_logprobs, logits.shape[-1], temperature, tail)
    lq = student_logprobs(logits, topk_ids, temperature, tail)
    return DIVERGENCES[divergence](lp, lq, beta=beta, alpha=alpha)


TARGETS = ("topk", "sampled", "both")


def check_sampled(targets: str, divergence: str, temperature: float,
                  proposal_temperature: float = 1.0) -> bool:
    """Refuse, with the reason, what sampled targets cannot estimate; -> whether the draws need
    their stored importance weights p/q (``importance`` of ``kd_term``): sampled targets trained
    at a temperature other than the proposal's (at T = tau the draws are the target itself).

    Samples give expectations under the teacher of functions known at the drawn tokens. The
    forward KL / cross-entropy to the teacher is such an expectation (E_p[-log q]); reverse KL,
    JSD, skew KL and TVD need the teacher's probability of tokens the student puts mass on, or a
    sum over the whole vocabulary of functions of p, which the samples do not carry. Temperature:
    the target p^(1/T) / Z_T needs Z_T, known only at T = 1 (importance weights p/q) and at the
    proposal's own temperature (the draws are from that distribution: weights = counts / N).
    """
    if targets not in TARGETS:
        raise ValueError(f"unknown targets {targets!r}: use one of {TARGETS}")
    if targets == "topk":
        return False
    if divergence != "forward_kl":
        raise ValueError(
            f"divergence {divergence!r} cannot be estimated from sampled targets: samples "
            "estimate expectations under the teacher (forward KL / cross-entropy to the teacher), "
            "while reverse KL, JSD, skew KL and TVD need the teacher's probability of arbitrary "
            "student tokens; use --divergence forward_kl or a top-k label set")
    ok = (1.0,) if targets == "both" else (1.0, proposal_temperature)
    if not any(math.isclose(temperature, t) for t in ok):
        raise ValueError(
            f"temperature {temperature} with {targets!r} targets drawn at proposal temperature "
            f"{proposal_temperature}: the tempered teacher's normaliser is unknown from samples; "
            f"use --temperature {' or '.join(str(t) for t in sorted(set(ok)))}")
    return not math.isclose(temperature, proposal_temperature)


def sample_weights(counts: torch.Tensor, logweights: torch.Tensor | None = None) -> torch.Tensor:
    """(N, S) draw counts [and log importance weights] -> per-id weights of the estimator
    E_p[f] ~= sum_i w_i f(x_i): counts / draws, times p/q when the proposal was not p."""
    c = counts.float()
    w = c / c.sum(-1, keepdim=True).clamp(min=1.0)
    return w if logweights is None else w * logweights.float().exp()


def sampled_kd_loss(logits: torch.Tensor, sample_ids: torch.Tensor, weights: torch.Tensor,
                    temperature: float = 1.0, head_ids: torch.Tensor | None = None,
                    head_logprobs: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position unbiased estimate of the cross-entropy from the teacher to the student.

    ``sample_ids`` (N, S) drawn ids (padding: any id with weight 0), ``weights`` from
    ``sample_weights``. Without a head (``--targets sampled``): -sum_i w_i log q_T(x_i), whose
    expectation is H(p_T, q_T) = KL(p_T || q_T) + H(p_T): the forward KL up to the teacher's
    entropy, a constant for the student (same gradient). With ``head_ids`` / ``head_logprobs``
    (``--targets both``, T = 1; the draws then come from the teacher outside its top k): the head
    terms exactly, sum_h p_h (log p_h - log q_h), plus the tail mass times the sampled tail
    cross-entropy; its expectation is the forward KL plus the tail's part of the teacher's
    entropy, -sum_tail p log p.
    """
    lq = torch.log_softmax(logits.float() / temperature, dim=-1)
    ce = -(weights * lq.gather(-1, sample_ids.long().clamp(min=0))).sum(-1)
    if head_ids is None:
        return ce
    lp = head_logprobs.float()
    head = (lp.exp() * (lp - lq.gather(-1, head_ids.long()))).sum(-1)
    tail_mass = (1 - lp.exp().sum(-1)).clamp(min=0.0)
    return head + tail_mass * ce


SOFT_COLUMNS = ("topk_ids", "topk_logprobs", "sample_ids", "sample_counts", "sample_logw")


def kd_term(logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
            sample_ids: torch.Tensor | None = None, sample_counts: torch.Tensor | None = None,
            sample_logw: torch.Tensor | None = None, targets: str = "topk",
            temperature: float = 1.0, divergence: str = "forward_kl", tail: bool = True,
            importance: bool = False, beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
    """Per-position KD term against a label set's soft targets, the columns of a batch
    (``SOFT_COLUMNS``: (N, k) top k, (N, S) draws). ``topk``: the sparse top-k divergence.
    ``sampled`` / ``both``: the sampled estimator of the forward KL (``both`` with the exact
    top-k head), the draws weighted by their stored p/q when ``importance`` (check_sampled says
    when, and refuses the divergences and temperatures samples cannot estimate)."""
    if targets == "topk":
        return sparse_kd_loss(logits, topk_ids, topk_logprobs, temperature, divergence, tail,
                              beta=beta, alpha=alpha)
    logw = sample_logw if importance and sample_logw is not None and sample_logw.shape[-1] else None
    w = sample_weights(sample_counts, logw)
    head = (topk_ids, topk_logprobs) if targets == "both" else (None, None)
    return sampled_kd_loss(logits, sample_ids, w, temperature, *head)


def hidden_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-row distance between projected student summaries and teacher summaries, (B, d)."""
    if kind == "mse":
        return ((student.float() - teacher.float()) ** 2).mean(-1)
    if kind == "cosine":
        return 1 - torch.nn.functional.cosine_similarity(student.float(), teacher.float(), dim=-1)
    raise ValueError(f"unknown hidden loss {kind!r}: use 'mse' or 'cosine'")


def ce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy of the true tokens."""
    return F.cross_entropy(logits.float(), targets.long(), reduction="none")


def combined_loss(ce: torch.Tensor, kd: torch.Tensor, lam: float, temperature: float) -> torch.Tensor:
    """lambda * CE + (1 - lambda) * T^2 * KD (Hinton's T^2 keeps gradient scale across T)."""
    return lam * ce + (1.0 - lam) * temperature ** 2 * kd
