"""Online distillation (`kd train --teacher`) against cached labels, and the ECE in `kd eval`."""
import dataclasses
import json
import shutil

import pytest
import torch

from student_train import losses, online
from student_train.evaluate import calibration_bins, ece_from_bins, evaluate
from student_train.model import load_student
from student_train.stream import LabelSet, collate
from student_train.train import TrainConfig, train
from tests.conftest import ROOT, TEACHER

STUDENT = str(ROOT / "demo" / "student.json")


@pytest.fixture(scope="module")
def full_vocab_set(teacher, teacher_config, demo_inputs, tmp_path_factory) -> str:
    """The demo slice labelled with k = the whole (tiny) vocabulary, by the session's engine."""
    from pipeline import job
    from pipeline.teacher import model_config
    vocab = int(model_config(TEACHER)["vocab_size"])
    cfg = dataclasses.replace(teacher_config, top_k=vocab, hidden_layers=(), proj_dim=0)
    out = str(tmp_path_factory.mktemp("full") / "set")
    job.run(job.LabelJob(cfg, demo_inputs["raw"], out, demo_inputs["simplified"],
                         shard_rows=64), [])
    return out


def test_online_kd_equals_cached_full_vocab_kd(full_vocab_set):
    ls = LabelSet(full_vocab_set, views=("raw",))
    arrays, sel = ls.shard(0)
    batch = collate([(arrays, sel[:16])])
    student, _ = load_student(STUDENT, ls.tokenizer_dir(), seed=0)
    teacher = online.load_teacher(TEACHER, ls.tokenizer_dir(), student)
    logits = student(input_ids=batch.input_ids,
                     attention_mask=batch.attention_mask).logits[batch.pos_b, batch.pos_t]
    live = online.with_teacher(teacher, batch)
    assert live.topk_logprobs.shape == (len(batch.targets), logits.shape[-1])
    for div in ("forward_kl", "reverse_kl"):
        for t in (1.0, 2.0):
            cached = losses.sparse_kd_loss(logits, batch.topk_ids, batch.topk_logprobs, t, div)
            onl = losses.sparse_kd_loss(logits, live.topk_ids, live.topk_logprobs, t, div)
            torch.testing.assert_close(onl.mean(), cached.mean(), rtol=2e-3, atol=2e-4)
    # and the cached labels are the teacher's distribution (vLLM vs transformers)
    cached_full = torch.full_like(live.topk_logprobs, float("-inf")).scatter_(
        1, batch.topk_ids, batch.topk_logprobs.float())
    torch.testing.assert_close(cached_full.exp(), live.topk_logprobs.exp(), rtol=0, atol=2e-3)


def test_online_training_lowers_kd(full_vocab_set, tmp_path):
    before = evaluate_student(full_vocab_set, tmp_path / "s0", steps=1)
    after = evaluate_student(full_vocab_set, tmp_path / "s1", steps=40)
    assert after["kl"] < 0.8 * before["kl"], (before, after)
    cached = evaluate(str(tmp_path / "s1"), full_vocab_set, "raw")  # k = V: the same KL
    assert cached["kl"] == pytest.approx(after["kl"], rel=5e-3, abs=1e-4)
    metrics = [json.loads(line) for line in open(tmp_path / "s1" / "metrics.jsonl")]
    assert sum(m["kd"] for m in metrics[-5:]) / 5 < metrics[0]["kd"]


def evaluate_student(labels, out, steps):
    train(TrainConfig(labels=labels, student=STUDENT, out=str(out), steps=steps, batch_size=8,
                      lam=0.0, warmup_steps=2, teacher=TEACHER, views=("raw",)))
    return evaluate(str(out), labels, "raw", teacher=TEACHER)


def test_online_teacher_with_other_tokenizer_is_refused(full_vocab_set, tmp_path):
    other = tmp_path / "teacher"
    shutil.copytree(TEACHER, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab)[-2:]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match="different tokenizer"):
        train(TrainConfig(labels=full_vocab_set, student=STUDENT, out=str(tmp_path / "s"),
                          steps=1, lam=0.0, teacher=str(other)))


def test_ece_known_values():
    # 10 positions, confidence 0.9 each (two tokens: logit gap log 9), 5 correct: ECE = 0.4
    logits = torch.tensor([[torch.log(torch.tensor(9.0)).item(), 0.0]] * 10)
    targets = torch.tensor([0] * 5 + [1] * 5)
    assert ece_from_bins(calibration_bins(logits, targets)) == pytest.approx(0.4, abs=1e-6)
    # add 10 perfectly calibrated positions at confidence 0.5 (a tie: argmax 0, half right):
    # ECE = (10 * 0.4 + 10 * 0) / 20 = 0.2; bins accumulate across calls
    tie = torch.zeros(10, 2)
    sums = calibration_bins(logits, targets) + calibration_bins(tie, targets)
    assert ece_from_bins(sums) == pytest.approx(0.2, abs=1e-6)
    # always right with confidence 0.9: ECE 0.1
    assert ece_from_bins(calibration_bins(logits, torch.zeros(10, dtype=torch.long))) == \
        pytest.approx(0.1, abs=1e-6)
