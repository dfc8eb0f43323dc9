"""The soft-label sampler against exact distributions: chi-square of the drawn ids, importance
weights, the excluded head, and reproducibility independent of batch composition."""
import math

import pytest
import torch

from pipeline import sampler

V = 40


def chi2_limit(df: int, z: float = 3.29) -> float:
    """Upper 0.9995 quantile of chi-square(df), Wilson-Hilferty approximation."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def teacher(seed=0, rows=1, vocab=V, scale=2.5):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(rows, vocab, generator=g) * scale, -1)


def keys_for(n_examples: int, positions: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.cat([sampler.position_keys(sampler.example_key(seed, f"ex{i}"), positions)
                      for i in range(n_examples)])


def histogram(s: sampler.Samples, vocab: int) -> torch.Tensor:
    keep = s.counts > 0
    return torch.zeros(vocab).index_add_(0, s.ids[keep], s.counts[keep].float())


def chi2(observed: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson statistic with cells of expected count < 5 pooled into one."""
    expected = probs * observed.sum()
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum().item()
    return stat, int(keep.sum()) - 1


def test_uniforms_are_uniform_and_distinct():
    u = sampler.uniforms(keys_for(2000), 8).flatten()
    assert ((u > 0) & (u < 1)).all()
    counts = torch.histc(u.float(), bins=50, min=0, max=1)
    stat = ((counts - u.numel() / 50) ** 2 / (u.numel() / 50)).sum().item()
    assert stat < chi2_limit(49)
    assert u.unique().numel() == u.numel()


@pytest.mark.parametrize("n", [1, 12])
def test_draws_follow_the_teacher_chi_square(n):
    lp = teacher(1)
    positions = 4000
    s = sampler.draw(lp.expand(positions, -1), keys_for(positions), n)
    assert (s.counts.sum(-1) == n).all()
    assert (s.logweights == 0).all()  # tau = 1: the proposal is the teacher
    stat, df = chi2(histogram(s, V), lp[0].exp())
    assert stat < chi2_limit(df), (stat, df)


def test_chi_square_detects_a_wrong_distribution():
    lp = teacher(1)
    s = sampler.draw(lp.expand(4000, -1), keys_for(4000), 12)
    stat, df = chi2(histogram(s, V), teacher(2)[0].exp())
    assert stat > chi2_limit(df)


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_tempered_proposal_draws_from_q_with_exact_importance_weights(tau):
    lp = teacher(3)
    s = sampler.draw(lp.expand(4000, -1), keys_for(4000), 12, temperature=tau)
    q = torch.softmax(lp[0] / tau, -1)
    stat, df = chi2(histogram(s, V), q)
    assert stat < chi2_limit(df)
    keep = s.counts > 0
    ref = (lp[0] - q.log())[s.ids[keep]]
    assert torch.allclose(s.logweights[keep], ref, atol=1e-5)


def test_tempered_tail_weights_are_p_over_q_on_the_tail():
    lp = teacher(8)
    head = lp.topk(3, -1).indices
    s = sampler.draw(lp.expand(50, -1), keys_for(50), 12, temperature=1.7,
                     exclude=head.expand(50, -1))
    tail = lp[0].scatter(0, head[0], float("-inf"))
    ref = torch.log_softmax(tail, -1) - torch.log_softmax(tail / 1.7, -1)
    keep = s.counts > 0
    assert torch.allclose(s.logweights[keep], ref[s.ids[keep]], atol=1e-4)


def test_consuming_the_input_gives_the_same_draws():
    lp = teacher(9, rows=30, vocab=1000)
    keys = keys_for(30)
    for tau in (1.0, 0.7):
        ref = sampler.draw(lp, keys, 12, temperature=tau)
        got = sampler.draw(lp.clone(), keys, 12, temperature=tau, consume=True)
        assert torch.equal(ref.ids, got.ids) and torch.equal(ref.counts, got.counts)
        assert torch.allclose(ref.logweights, got.logweights)


def test_excluded_head_is_never_drawn_and_the_tail_is_followed():
    lp = teacher(4)
    head = lp.topk(5, -1).indices
    positions = 4000
    s = sampler.draw(lp.expand(positions, -1), keys_for(positions), 12,
                     exclude=head.expand(positions, -1))
    drawn = s.ids[s.counts > 0]
    assert not torch.isin(drawn, head[0]).any()
    tail = lp[0].exp().scatter(0, head[0], 0.0)
    stat, df = chi2(histogram(s, V), tail / tail.sum())
    assert stat < chi2_limit(df)


def test_tiny_probabilities_keep_their_chance_on_a_large_vocabulary():
    vocab = 5000  # several blocks; one token holds almost all the mass
    lp = torch.full((1, vocab), -30.0)
    lp[0, 4321] = 0.0
    lp[0, 17] = math.log(0.25)
    lp = torch.log_softmax(lp, -1)
    s = sampler.draw(lp.expand(2000, -1), keys_for(2000), 8)
    h = histogram(s, vocab)
    assert h[4321] + h[17] == h.sum()
    frac = (h[17] / h.sum()).item()
    p17 = lp[0, 17].exp().item()
    assert abs(frac - p17) < 4 * math.sqrt(p17 * (1 - p17) / h.sum().item())


def test_same_key_same_draws_whatever_the_batch():
    lp = teacher(5, rows=64, vocab=700)
    keys = keys_for(16, positions=4)
    whole = sampler.draw(lp, keys, 12, temperature=1.5)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    shuffled = sampler.draw(lp[perm], keys[perm], 12, temperature=1.5)
    one = sampler.draw(lp[7:8], keys[7:8], 12, temperature=1.5)
    for got, rows in ((shuffled, perm), (one, torch.tensor([7]))):
        assert torch.equal(got.ids, whole.ids[rows])
        assert torch.equal(got.counts, whole.counts[rows])
        assert torch.equal(got.logweights, whole.logweights[rows])


def test_keys_depend_on_seed_example_and_position():
    a = sampler.position_keys(sampler.example_key(0, "x"), 3)
    b = sampler.position_keys(sampler.example_key(1, "x"), 3)
    c = sampler.position_keys(sampler.example_key(0, "y"), 3)
    rows = {tuple(r.tolist()) for r in torch.cat([a, b, c])}
    assert len(rows) == 9
    assert torch.equal(a, sampler.position_keys(sampler.example_key(0, "x"), 3))


def test_unique_ids_are_ascending_and_padded():
    lp = teacher(6, rows=200, scale=0.5)
    s = sampler.draw(lp, keys_for(200), 12)
    u = s.unique_counts()
    for i in range(200):
        ids = s.ids[i, :u[i]]
        assert (ids[1:] > ids[:-1]).all()
        assert (s.ids[i, u[i]:] == -1).all() and (s.counts[i, u[i]:] == 0).all()


def test_bad_arguments_are_refused():
    lp = teacher(7)
    with pytest.raises(ValueError, match="samples per position"):
        sampler.draw(lp, keys_for(1), 0)
    with pytest.raises(ValueError, match="temperature"):
        sampler.draw(lp, keys_for(1), 4, temperature=0.0)
