"""Sparse top-k losses against dense full-vocabulary reference computations."""
import math

import pytest
import torch

from student_train import losses

V, N = 50, 7


def dense(seed=0):
    g = torch.Generator().manual_seed(seed)
    t_logits = torch.randn(N, V, generator=g) * 3
    s_logits = torch.randn(N, V, generator=g) * 2
    return t_logits, s_logits


def topk(t_logits, k):
    lp = torch.log_softmax(t_logits, -1)
    vals, ids = lp.topk(k, dim=-1)
    return ids, vals


def test_full_k_forward_kl_equals_dense_kl():
    t, s = dense()
    ids, vals = topk(t, V)
    got = losses.sparse_kd_loss(s, ids, vals, divergence="forward_kl")
    p, q = torch.log_softmax(t, -1), torch.log_softmax(s, -1)
    ref = (p.exp() * (p - q)).sum(-1)
    assert torch.allclose(got, ref, atol=1e-4)


def test_full_k_reverse_kl_equals_dense_kl():
    t, s = dense(1)
    ids, vals = topk(t, V)
    got = losses.sparse_kd_loss(s, ids, vals, divergence="reverse_kl")
    p, q = torch.log_softmax(t, -1), torch.log_softmax(s, -1)
    ref = (q.exp() * (q - p)).sum(-1)
    assert torch.allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_tail_bucket_equals_dense_kl_over_coarsened_distributions(k):
    t, s = dense(2)
    ids, vals = topk(t, k)
    got = losses.sparse_kd_loss(s, ids, vals)
    p, q = torch.log_softmax(t, -1).exp(), torch.log_softmax(s, -1).exp()
    pk, qk = p.gather(-1, ids), q.gather(-1, ids)
    P = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)
    Q = torch.cat([qk, 1 - qk.sum(-1, keepdim=True)], -1)
    ref = (P * (P.log() - Q.log())).sum(-1)
    assert torch.allclose(got, ref, atol=1e-4)
    assert (got >= -1e-6).all()


def test_renormalised_topk_matches_dense_kl_over_topk_support():
    t, s = dense(3)
    ids, vals = topk(t, 6)
    got = losses.sparse_kd_loss(s, ids, vals, tail=False)
    P = torch.softmax(t.gather(-1, ids), -1)
    Q = torch.softmax(s.gather(-1, ids), -1)
    ref = (P * (P.log() - Q.log())).sum(-1)
    assert torch.allclose(got, ref, atol=1e-5)


def test_temperature_softens_teacher_exactly_when_k_is_full():
    t, s = dense(4)
    T = 2.5
    ids, vals = topk(t, V)  # full support: the uniform-tail assumption plays no role
    got = losses.sparse_kd_loss(s, ids, vals, temperature=T)
    p, q = torch.log_softmax(t / T, -1), torch.log_softmax(s / T, -1)
    ref = (p.exp() * (p - q)).sum(-1)
    assert torch.allclose(got, ref, atol=1e-4)


def test_teacher_tail_at_t1_is_exact_mass_outside_topk():
    t, _ = dense(5)
    ids, vals = topk(t, 4)
    lp = losses.teacher_logprobs(vals, V)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(N), atol=1e-5)
    full = torch.log_softmax(t, -1).exp()
    tail = 1 - full.gather(-1, ids).sum(-1)
    assert torch.allclose(lp[:, -1].exp(), tail, atol=1e-5)


def test_zero_when_student_equals_teacher():
    t, _ = dense(6)
    ids, vals = topk(t, 8)
    for div in losses.DIVERGENCES:
        assert losses.sparse_kd_loss(t, ids, vals, divergence=div).abs().max() < 1e-4


def test_gradient_flows_only_to_student():
    t, s = dense(7)
    s.requires_grad_(True)
    ids, vals = topk(t, 5)
    losses.sparse_kd_loss(s, ids, vals).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_combined_objective_weights():
    ce, kd = torch.tensor(2.0), torch.tensor(0.5)
    assert losses.combined_loss(ce, kd, 1.0, 2.0).item() == pytest.approx(2.0)
    assert losses.combined_loss(ce, kd, 0.0, 2.0).item() == pytest.approx(4 * 0.5)
    assert losses.combined_loss(ce, kd, 0.3, 1.0).item() == pytest.approx(0.3 * 2 + 0.7 * 0.5)


def test_ce_matches_negative_logprob():
    _, s = dense(8)
    y = torch.arange(N) % V
    ref = -torch.log_softmax(s, -1)[torch.arange(N), y]
    assert torch.allclose(losses.ce_loss(s, y), ref, atol=1e-5)
    assert math.isfinite(losses.ce_loss(s, y).sum().item())


def dense_ref(name, p, q, beta=0.5, alpha=0.1):
    """Dense full-vocabulary definitions, written independently of the module."""
    P, Q = p.exp(), q.exp()
    kl = lambda a, b: (a * (a.log() - b.log())).sum(-1)  # noqa: E731
    if name == "forward_kl":
        return kl(P, Q)
    if name == "reverse_kl":
        return kl(Q, P)
    if name == "jsd":
        M = beta * P + (1 - beta) * Q
        return beta * kl(P, M) + (1 - beta) * kl(Q, M)
    if name == "skew_kl":
        return kl(P, alpha * P + (1 - alpha) * Q)
    if name == "skew_reverse_kl":
        return kl(Q, alpha * Q + (1 - alpha) * P)
    if name == "tvd":
        return 0.5 * (P - Q).abs().sum(-1)
    raise KeyError(name)


@pytest.mark.parametrize("name", sorted(losses.DIVERGENCES))
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_every_divergence_matches_dense_reference(name, T):
    t, s = dense(9)
    ids, vals = topk(t, V)
    got = losses.sparse_kd_loss(s, ids, vals, temperature=T, divergence=name, beta=0.3, alpha=0.2)
    ref = dense_ref(name, torch.log_softmax(t / T, -1), torch.log_softmax(s / T, -1),
                    beta=0.3, alpha=0.2)
    assert torch.allclose(got, ref, atol=1e-4), (got, ref)
    assert (got >= -1e-6).all()


def test_jsd_limits_and_symmetry():
    t, s = dense(10)
    ids, vals = topk(t, V)
    a = losses.sparse_kd_loss(s, ids, vals, divergence="jsd", beta=0.5)
    ids2, vals2 = topk(s, V)
    b = losses.sparse_kd_loss(t, ids2, vals2, divergence="jsd", beta=0.5)
    assert torch.allclose(a, b, atol=1e-4)  # beta = 0.5 is symmetric
    assert (a <= math.log(2) + 1e-5).all()


def test_hidden_losses():
    a = torch.randn(4, 6)
    assert torch.allclose(losses.hidden_loss(a, a), torch.zeros(4))
    assert torch.allclose(losses.hidden_loss(a, 3 * a, "cosine"), torch.zeros(4), atol=1e-6)
    assert torch.allclose(losses.hidden_loss(a, -a, "cosine"), 2 * torch.ones(4), atol=1e-6)
    assert torch.allclose(losses.hidden_loss(a, a + 1), torch.ones(4))
    with pytest.raises(ValueError):
        losses.hidden_loss(a, a, "l1")
