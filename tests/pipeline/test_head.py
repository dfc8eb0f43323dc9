"""The labelling LM head (`teacher.LmHead`) on the CPU, through vLLM's CPU GEMM dispatch, against a
plain torch matmul of the same weights: the same log-probabilities and top-k. No engine needed;
the oracle tests (tests/test_oracle.py) check the whole path against transformers."""
import torch

from pipeline.teacher import LmHead


def plain(states, weight, mcfg):
    """The reference: transformers' head as plain torch ops in fp32."""
    logits = states.float() @ weight.float().T
    if mcfg.get("logit_scale"):
        logits = logits * mcfg["logit_scale"]
    if mcfg.get("final_logit_softcapping"):
        cap = mcfg["final_logit_softcapping"]
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, dim=-1)


def check(dtype, vocab, hidden, mcfg, atol):
    torch.manual_seed(0)
    weight = (torch.randn(vocab, hidden) * hidden ** -0.5 * 2).to(dtype)
    states = torch.randn(300, hidden).to(dtype)
    head = LmHead(weight.clone(), mcfg)
    assert (head.vocab, head.hidden, head.dtype) == (vocab, hidden, dtype)
    assert head.rows * vocab <= 1 << 22  # a CPU block stays within the allocator's reuse size
    lp, ref = head(states), plain(states, weight, mcfg)
    assert lp.dtype == torch.float32 and lp.shape == (300, vocab)
    torch.testing.assert_close(lp, ref, atol=atol, rtol=0)
    # the top-k: the k largest (ids may differ only between log-probs equal within the tolerance,
    # and bf16 logits tie often) and each id's log-prob is the reference's
    top = lp.topk(min(64, vocab - 1))
    torch.testing.assert_close(top.values, ref.topk(top.values.shape[1]).values, atol=atol, rtol=0)
    torch.testing.assert_close(ref.gather(1, top.indices), top.values, atol=atol, rtol=0)


def test_bf16_wide_head_matches_plain_matmul():
    # bf16 logits: half an ulp of a logit of magnitude ~8 is 2^-5
    check(torch.bfloat16, 32000, 1024, {}, atol=0.04)


def test_fp32_head_with_scale_and_softcap_matches():
    check(torch.float32, 80, 256, {"logit_scale": 0.5, "final_logit_softcapping": 30.0},
          atol=1e-5)


def block_roads(vocab=3000, hidden=64, rows=200, scale=1.0, k=20, tail_only=False):
    """`head_block` with draws (softmax road) and the general log-softmax road on the same block:
    the second is forced by a proposal temperature a hair above 1."""
    from pipeline import sampler
    from pipeline.teacher import Draws, head_block
    torch.manual_seed(1)
    weight = torch.randn(vocab, hidden) * hidden ** -0.5
    head = LmHead(weight, {"logit_scale": scale})
    states = torch.randn(rows, hidden)
    targets = torch.randint(0, vocab, (rows,))
    keys = sampler.position_keys(sampler.example_key(0, "block"), rows)
    fast = head_block(head, states, targets, k, Draws(keys, 12, 1.0, tail_only))
    lp = head(states)
    ref_top = lp.topk(k) if k else None
    ref_draws = sampler.draw(lp.clone(), keys, 12,
                             exclude=ref_top.indices if tail_only else None)
    return fast, lp, ref_top, ref_draws, targets


def test_head_block_softmax_road_equals_log_softmax_road():
    for tail_only in (False, True):
        (ids, top_lp, target_lp, drawn), lp, ref_top, ref_draws, targets = block_roads(
            tail_only=tail_only)
        assert torch.equal(ids, ref_top.indices)
        torch.testing.assert_close(top_lp, ref_top.values, atol=2e-6, rtol=0)
        torch.testing.assert_close(target_lp, lp.gather(1, targets[:, None])[:, 0],
                                   atol=2e-6, rtol=0)
        # the same uniforms through probabilities that differ by float rounding: same draws
        assert torch.equal(drawn.ids, ref_draws.ids) and torch.equal(drawn.counts, ref_draws.counts)
        assert not drawn.logweights.any()
        if tail_only:  # the tail's draws never hit the stored head
            hit = (drawn.ids[:, :, None] == ids[:, None, :]) & (drawn.counts[:, :, None] > 0)
            assert not hit.any()


def test_head_block_rows_near_underflow_take_the_log_softmax():
    # logits spread over hundreds of nats: most targets and the 20th entries underflow in fp32
    # probabilities; their logs must still be the log-softmax's, never -inf
    (ids, top_lp, target_lp, _), lp, ref_top, _, targets = block_roads(scale=200.0)
    ref_target = lp.gather(1, targets[:, None])[:, 0]
    assert (ref_target < -100).float().mean() > 0.5 and (ref_top.values[:, -1] < -70).any()
    assert torch.isfinite(target_lp).all() and torch.isfinite(top_lp).all()
    torch.testing.assert_close(target_lp, ref_target, atol=1e-4, rtol=0)
    torch.testing.assert_close(top_lp, ref_top.values, atol=1e-4, rtol=0)
    torch.testing.assert_close(lp.gather(1, ids), ref_top.values, atol=1e-4, rtol=0)
