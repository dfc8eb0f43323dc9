"""Sampled-target losses against the dense full-vocabulary oracle: unbiased over many seeds, with
a spread that shrinks as 1/sqrt(N), for the teacher's own and a tempered proposal and for `both`
(exact head, sampled tail); and clear refusals for what samples cannot estimate."""
import math

import pytest
import torch

from pipeline import sampler
from student_train import losses

V, P, SEEDS = 60, 5, 400


def dense(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.log_softmax(torch.randn(P, V, generator=g) * 2.5, -1),
            torch.randn(P, V, generator=g) * 1.5)


def estimates(lp_t, s_logits, n, tau=1.0, T=1.0, importance=True, head_k=0, seeds=SEEDS):
    """(seeds, P) estimator values, one independent set of draws per seed."""
    out = []
    head_ids = head_lp = exclude = None
    if head_k:
        head_lp, head_ids = lp_t.topk(head_k, -1)
        exclude = head_ids
    for seed in range(seeds):
        keys = sampler.position_keys(sampler.example_key(seed, "oracle"), P)
        s = sampler.draw(lp_t, keys, n, temperature=tau, exclude=exclude)
        w = losses.sample_weights(s.counts, s.logweights if importance else None)
        out.append(losses.sampled_kd_loss(s_logits, s.ids, w, T, head_ids, head_lp))
    return torch.stack(out)


def dense_ce(lp_t, s_logits, T=1.0):
    """H(p_T, q_T) over the full vocabulary; and its single-draw variance."""
    p = torch.softmax(lp_t / T, -1)
    f = -torch.log_softmax(s_logits / T, -1)
    mean = (p * f).sum(-1)
    return mean, (p * (f - mean[:, None]) ** 2).sum(-1)


def dense_kl(lp_t, s_logits):
    lq = torch.log_softmax(s_logits, -1)
    return (lp_t.exp() * (lp_t - lq)).sum(-1)


@pytest.mark.parametrize("n", [4, 32])
def test_mean_over_seeds_is_the_dense_forward_kl_plus_teacher_entropy(n):
    lp_t, s = dense(0)
    est = estimates(lp_t, s, n)
    ref, var = dense_ce(lp_t, s)
    entropy = -(lp_t.exp() * lp_t).sum(-1)
    assert torch.allclose(ref - entropy, dense_kl(lp_t, s), atol=1e-5)
    sd = (var / (n * SEEDS)).sqrt()  # the standard error of the mean over seeds
    assert ((est.mean(0) - ref).abs() < 4 * sd).all(), (est.mean(0), ref, sd)


def test_spread_shrinks_as_one_over_sqrt_n():
    lp_t, s = dense(1)
    _, var = dense_ce(lp_t, s)
    spreads = {}
    for n in (4, 32):
        est = estimates(lp_t, s, n)
        spreads[n] = est.std(0)
        # sample std over 400 seeds is within ~25% of the true sigma / sqrt(N)
        ratio = spreads[n] / (var / n).sqrt()
        assert ((ratio > 0.75) & (ratio < 1.25)).all(), ratio
    shrink = (spreads[4] / spreads[32]).mean().item()
    assert abs(shrink - math.sqrt(8)) < 0.5, shrink


def test_tempered_proposal_with_importance_weights_is_unbiased_at_t1():
    lp_t, s = dense(2)
    est = estimates(lp_t, s, 12, tau=2.0)
    ref, var = dense_ce(lp_t, s)
    # importance weighting can only widen the spread: compare with a generous 6 sigma bound
    # computed from the weighted variance
    q = torch.softmax(lp_t / 2.0, -1)
    f = -torch.log_softmax(s, -1)
    wf = lp_t.exp() / q * f
    wvar = (q * (wf - ref[:, None]) ** 2).sum(-1)
    sd = (wvar / (12 * SEEDS)).sqrt()
    assert ((est.mean(0) - ref).abs() < 4 * sd).all(), (est.mean(0), ref, sd)


def test_training_at_the_proposal_temperature_needs_no_weights():
    lp_t, s = dense(3)
    tau = 2.0
    est = estimates(lp_t, s, 12, tau=tau, T=tau, importance=False)
    ref, var = dense_ce(lp_t, s, T=tau)
    sd = (var / (12 * SEEDS)).sqrt()
    assert ((est.mean(0) - ref).abs() < 4 * sd).all()


def test_both_is_exact_on_the_head_and_unbiased_on_the_tail():
    lp_t, s = dense(4)
    k = 8
    est = estimates(lp_t, s, 12, head_k=k)
    head_lp, head_ids = lp_t.topk(k, -1)
    p = lp_t.exp()
    tail_p = p.scatter(1, head_ids, 0.0)
    tail_entropy = -(tail_p * lp_t).sum(-1)
    ref = dense_kl(lp_t, s) + tail_entropy
    mass = tail_p.sum(-1)
    f = -torch.log_softmax(s, -1)
    tail_mean = (tail_p * f).sum(-1) / mass
    var = (tail_p / mass[:, None] * (f - tail_mean[:, None]) ** 2).sum(-1)
    sd = mass * (var / (12 * SEEDS)).sqrt()
    assert ((est.mean(0) - ref).abs() < 4 * sd).all(), (est.mean(0), ref, sd)
    # the head part carries no noise: the spread is the tail mass times the tail's
    assert (est.std(0) < 1.3 * mass * (var / 12).sqrt()).all()


def test_mean_gradient_is_the_dense_forward_kl_gradient():
    lp_t, s = dense(5)
    s = s.clone().requires_grad_(True)
    total = estimates(lp_t, s, 12, seeds=300).mean(0).sum()
    (g,) = torch.autograd.grad(total, s)
    ref = torch.softmax(s.detach(), -1) - lp_t.exp()  # d KL(p || softmax(s)) / ds
    assert (g - ref).abs().max() < 0.05


def test_zero_weight_padding_is_ignored():
    lp_t, s = dense(6)
    ids = torch.tensor([[3, -1, -1]] * P)
    w = torch.tensor([[1.0, 0.0, 0.0]] * P)
    got = losses.sampled_kd_loss(s, ids, w)
    assert torch.allclose(got, -torch.log_softmax(s, -1)[:, 3])


@pytest.mark.parametrize("div", ["reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"])
def test_divergences_that_need_the_full_teacher_are_refused(div):
    for targets in ("sampled", "both"):
        with pytest.raises(ValueError, match="cannot be estimated from sampled targets"):
            losses.check_sampled(targets, div, 1.0)
    assert losses.check_sampled("topk", div, 2.0) is False  # top-k: every divergence, no weights


def test_temperatures_without_a_known_normaliser_are_refused():
    # -> whether the draws need their importance weights: T = 1 from a tempered proposal only
    assert losses.check_sampled("sampled", "forward_kl", 1.0, 2.0) is True
    assert losses.check_sampled("sampled", "forward_kl", 2.0, 2.0) is False
    assert losses.check_sampled("sampled", "forward_kl", 1.0, 1.0) is False
    assert losses.check_sampled("both", "forward_kl", 1.0, 2.0) is True
    with pytest.raises(ValueError, match="normaliser is unknown"):
        losses.check_sampled("sampled", "forward_kl", 1.5, 2.0)
    with pytest.raises(ValueError, match="normaliser is unknown"):
        losses.check_sampled("both", "forward_kl", 2.0, 2.0)
    with pytest.raises(ValueError, match="unknown targets"):
        losses.check_sampled("dense", "forward_kl", 1.0)
