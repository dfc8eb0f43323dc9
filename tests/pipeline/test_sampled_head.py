"""Sampled targets from the teacher's head (real engine): the same draws whatever the batch,
the top-k head excluded in `both`, and importance weights that match transformers."""
import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.teacher import get_teacher

N = 12


@pytest.fixture(scope="module")
def seqs(teacher):
    tok_ids = [[1] + list(range(5 + i, 25 + 2 * i)) + [2] for i in range(6)]
    return tok_ids, [4 + i for i in range(6)], [f"ex{i}" for i in range(6)]


def sampled_view(teacher_config, **kw):
    return get_teacher(dataclasses.replace(teacher_config, samples=N, **kw))


def test_draws_do_not_depend_on_the_batch(teacher, teacher_config, seqs):
    t = sampled_view(teacher_config, targets="sampled", proposal_temperature=1.5)
    seq, starts, ids = seqs
    whole = t.label(seq, starts, ids)
    order = [4, 0, 5]
    part = t.label([seq[i] for i in order], [starts[i] for i in order], [ids[i] for i in order])
    for got, i in zip(part, order):
        for name in ("ids", "counts", "logweights"):
            assert np.array_equal(getattr(got.samples, name), getattr(whole[i].samples, name))
    assert whole[0].topk_ids.shape == (len(seq[0]) - starts[0], 0)  # sampled only: no top-k
    assert all((lab.samples.counts.sum(1) == N).all() for lab in whole)
    other = sampled_view(teacher_config, targets="sampled", proposal_temperature=1.5,
                         sample_seed=1).label(seq, starts, ids)
    assert any(not np.array_equal(a.samples.ids, b.samples.ids) for a, b in zip(whole, other))


@torch.no_grad()
def test_both_excludes_the_head_and_weights_match_transformers(teacher, teacher_config, seqs,
                                                               teacher_dir):
    tau = 2.0
    t = sampled_view(teacher_config, targets="both", proposal_temperature=tau)
    seq, starts, ids = seqs
    hf = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    for lab, s, start in zip(t.label(seq, starts, ids), seq, starts):
        ref = torch.log_softmax(hf(torch.tensor([s])).logits[0].float(), -1)[start - 1:len(s) - 1]
        smp = lab.samples
        assert lab.topk_ids.shape[1] == teacher_config.top_k
        for j in range(len(ref)):
            keep = smp.counts[j] > 0
            drawn = smp.ids[j][keep].astype(np.int64)
            assert not np.isin(drawn, lab.topk_ids[j]).any()
            assert (np.diff(drawn) > 0).all()
            # log(p_tail / q_tail) from transformers' full distribution
            lp = ref[j].clone()
            lp[torch.from_numpy(lab.topk_ids[j].astype(np.int64))] = float("-inf")
            p_tail = lp - torch.logsumexp(lp, -1)
            q_tail = lp / tau - torch.logsumexp(lp / tau, -1)
            want = (p_tail - q_tail)[torch.from_numpy(drawn)].numpy()
            np.testing.assert_allclose(smp.logweights[j][keep], want, atol=2e-3)
