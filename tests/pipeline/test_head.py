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
