"""Study experiment 1: the textbook KL arithmetic, through the project's own loss functions.

Teacher P = (0.7, 0.2, 0.1); two students Q_A = (0.6, 0.3, 0.1) and Q_B = (0.8, 0.1, 0.1).
Forward KL(P || Q) in nats: 0.0268 for A, 0.0452 for B, so A mimics the teacher better.
Reverse KL(Q || P) beside them: 0.0291 for A, 0.0375 for B (A is closer in both directions
here, by a smaller margin in the reverse one). Hand computation:
  KL(P||Q_A) = .7 ln(.7/.6) + .2 ln(.2/.3)            = 0.10791 - 0.08109 = 0.02681
  KL(P||Q_B) = .7 ln(.7/.8) + .2 ln(.2/.1)            = -0.09347 + 0.13863 = 0.04516
  KL(Q_A||P) = .6 ln(.6/.7) + .3 ln(.3/.2)            = -0.09249 + 0.12164 = 0.02915
  KL(Q_B||P) = .8 ln(.8/.7) + .1 ln(.1/.2)            = 0.10683 - 0.06931 = 0.03751
"""
import math

import pytest
import torch

from student_train import losses

P = (0.7, 0.2, 0.1)
Q_A = (0.6, 0.3, 0.1)
Q_B = (0.8, 0.1, 0.1)
EXPECTED = {  # (divergence, student) -> nats, to 4 decimals
    ("forward_kl", "A"): 0.0268, ("forward_kl", "B"): 0.0452,
    ("reverse_kl", "A"): 0.0291, ("reverse_kl", "B"): 0.0375,
}


def logp(dist) -> torch.Tensor:
    return torch.tensor(dist, dtype=torch.float64).log()[None]


@pytest.mark.parametrize("name,student", sorted(EXPECTED))
def test_divergence_functions(name, student):
    q = Q_A if student == "A" else Q_B
    got = losses.DIVERGENCES[name](logp(P), logp(q)).item()
    assert round(got, 4) == EXPECTED[(name, student)]


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl"])
def test_sparse_kd_loss_path_gives_the_same_numbers(name):
    """The trainer's own path: teacher stored as top-k (k = V = 3), student as logits."""
    ids = torch.tensor([[0, 1, 2]])
    for student, q in (("A", Q_A), ("B", Q_B)):
        logits = torch.tensor(q, dtype=torch.float64).log()[None] + 1.7  # any shift: softmax
        got = losses.sparse_kd_loss(logits, ids, logp(P), divergence=name).item()
        assert math.isclose(got, EXPECTED[(name, student)], abs_tol=5e-5)


def test_a_mimics_the_teacher_better_in_both_directions():
    for name in ("forward_kl", "reverse_kl"):
        fa = losses.DIVERGENCES[name](logp(P), logp(Q_A)).item()
        fb = losses.DIVERGENCES[name](logp(P), logp(Q_B)).item()
        assert fa < fb
