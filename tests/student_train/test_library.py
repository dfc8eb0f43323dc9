"""student_train.library: the label set as an IterableDataset, its collator and loss, and the
transformers.Trainer example trained end to end on the demo label set."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from student_train import losses
from student_train.library import LabelSetDataset, collate_rows, kd_loss
from student_train.stream import LabelSet, batches
from tests.conftest import SAMPLES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDENT = os.path.join(REPO, "demo", "student.json")


def ids_of(rows):
    return [tuple(r["input_ids"].tolist()) + (r["label_start"],) for r in rows]


def per_row(b):
    """A batch as a sorted list of its rows' contents (kd train orders a batch's rows by row
    group, the dataset by the stream)."""
    return sorted((tuple(b["input_ids"][i].tolist()), tuple(b["attention_mask"][i].tolist()))
                  + tuple(tuple(b[c][b["pos_b"] == i].flatten().tolist()) for c in
                          ("targets", "pos_t") + losses.SOFT_COLUMNS)
                  for i in range(len(b["input_ids"])))


def test_one_epoch_is_every_row_once(label_set):
    rows = list(LabelSetDataset(label_set["out"], seed=3, epochs=1))
    ls = LabelSet(label_set["out"])
    assert len(rows) == sum(len(ls.shard(i)[1]) for i in range(ls.num_shards))
    assert {r["position"][0] for r in rows} == {0}
    assert [r["position"][1] for r in rows] == list(range(len(rows)))


def test_collated_rows_are_kd_trains_batch(label_set):
    """The first 8 rows collated hold what the first batch `kd train` builds holds (same seed;
    kd train orders a batch's rows by row group)."""
    rows = list(LabelSetDataset(label_set["out"], seed=5, epochs=1))[:8]
    got = collate_rows(rows)
    (_, want), = [next(batches(LabelSet(label_set["out"]), 8, 5))]
    assert per_row(got) == per_row(vars(want))
    assert got["soft_targets"] == "topk" and got["sample_ids"].shape == (len(got["targets"]), 0)
    lab = got["labels"]
    assert torch.equal(lab[got["pos_b"], got["pos_t"] + 1], got["targets"])
    assert int((lab != -100).sum()) == len(got["targets"])
    assert got["next_position"].tolist() == [0, 8]
    logits = torch.randn(*got["input_ids"].shape, 80)
    sel = logits[got["pos_b"], got["pos_t"]]
    want_loss = losses.combined_loss(losses.ce_loss(sel, got["targets"]),
                                     losses.sparse_kd_loss(sel, got["topk_ids"],
                                                           got["topk_logprobs"]), 0.3, 1.0).mean()
    assert torch.allclose(kd_loss(logits, got, lam=0.3), want_loss)
    assert torch.allclose(kd_loss(sel, got, lam=0.3), want_loss)


def test_sampled_rows_carry_the_draws(sampled_set, both_set):
    """Sampled and both sets: rows hold the draws beside the top k, collated as kd train's batch."""
    ds = LabelSetDataset(sampled_set[0], seed=5, epochs=1)
    assert ds.targets == "sampled" and ds.proposal_temperature == 1.0 and ds.top_k == 0
    rows = list(ds)[:8]
    for r in rows:
        n = len(r["input_ids"]) - r["label_start"]
        assert r["sample_ids"].shape == r["sample_counts"].shape == (n, SAMPLES)
        assert r["topk_ids"].shape == (n, 0) and r["sample_logw"].shape == (n, 0)
        assert (r["sample_counts"].sum(1) == SAMPLES).all()
    got = collate_rows(rows)
    (_, want), = [next(batches(LabelSet(sampled_set[0]), 8, 5))]
    assert per_row(got) == per_row(vars(want))
    assert got["soft_targets"] == "sampled" and got["sample_ids"].shape[1] == SAMPLES
    both = LabelSetDataset(both_set, seed=5, epochs=1)
    assert both.targets == "both" and both.proposal_temperature == 2.0 and both.top_k == 8
    got = collate_rows(list(both)[:8])
    (_, want), = [next(batches(LabelSet(both_set), 8, 5))]
    assert per_row(got) == per_row(vars(want))
    n = len(got["targets"])
    assert got["topk_ids"].shape == (n, 8) and got["sample_logw"].shape == (n, SAMPLES)
    assert (got["sample_logw"][got["sample_counts"] > 0] != 0).any()


@pytest.mark.parametrize("which", ["sampled", "both"])
def test_sampled_loss_is_kd_trains_loss(which, sampled_set, both_set):
    """kd_loss on the collated rows equals the loss kd train's step computes on the same rows with
    the same student: the sampled estimator, with importance weights for the both set (drawn at
    proposal temperature 2, trained at 1)."""
    from student_train.model import Distiller, load_student
    from student_train.train import TrainConfig, backward_step
    path = sampled_set[0] if which == "sampled" else both_set
    ls = LabelSet(path)
    student, _ = load_student(STUDENT, ls.tokenizer_dir(), seed=5)
    cfg = TrainConfig(labels=path, student="", out="", steps=1, lam=0.3, temperature=1.0)
    importance = losses.check_sampled(ls.targets, cfg.divergence, cfg.temperature,
                                      ls.proposal_temperature)
    assert importance == (which == "both")
    _, batch = next(batches(ls, 8, seed=5))
    want = backward_step(Distiller(student, [], None), batch, cfg, targets=ls.targets,
                         importance=importance)
    rows = collate_rows(list(LabelSetDataset(path, seed=5, epochs=1))[:8])
    with torch.no_grad():
        logits = student(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits
        got = kd_loss(logits, rows, lam=0.3, temperature=1.0)
        sel = logits[rows["pos_b"], rows["pos_t"]]
        plain_ce = losses.ce_loss(sel, rows["targets"]).mean()
    assert abs(float(got) - want["loss"]) < 1e-4 * want["loss"], (float(got), want)
    assert abs(float(plain_ce) - want["ce"]) < 1e-4 * want["ce"]
    assert want["kd"] > 0
    if which == "both":  # the importance weights are applied: plain counts estimate otherwise
        z = 4 * torch.randn(len(sel), sel.shape[1], generator=torch.Generator().manual_seed(0))
        got = float(kd_loss(z, rows, lam=0.0))
        est = {logw is None: float(losses.sampled_kd_loss(
            z, rows["sample_ids"], losses.sample_weights(rows["sample_counts"], logw), 1.0,
            rows["topk_ids"], rows["topk_logprobs"]).mean())
            for logw in (None, rows["sample_logw"])}
        assert abs(got - est[False]) < 1e-5 and abs(got - est[True]) > 1e-4  # tail mass is small


def test_sampled_loss_refuses_what_samples_cannot_estimate(sampled_set, both_set):
    for path, kw, msg in [(sampled_set[0], {"divergence": "reverse_kl"},
                           "cannot be estimated from sampled targets"),
                          (sampled_set[0], {"temperature": 1.5}, "normaliser is unknown"),
                          (both_set, {"temperature": 2.0}, "normaliser is unknown")]:
        batch = collate_rows(list(LabelSetDataset(path, seed=0, epochs=1))[:4])
        logits = torch.randn(*batch["input_ids"].shape, 80)
        with pytest.raises(ValueError, match=msg):
            kd_loss(logits, batch, **kw)


def test_ranks_split_rows(label_set):
    one = ids_of(LabelSetDataset(label_set["out"], seed=1, epochs=1))
    r0 = ids_of(LabelSetDataset(label_set["out"], seed=1, rank=0, world=2, epochs=1))
    r1 = ids_of(LabelSetDataset(label_set["out"], seed=1, rank=1, world=2, epochs=1))
    assert len(r0) == len(r1) == len(one) // 2
    assert r0 == one[0:2 * len(r0):2] and r1 == one[1:2 * len(r1):2]


def test_workers_give_the_same_sequence(label_set):
    def seq(workers):
        ds = LabelSetDataset(label_set["out"], seed=2, epochs=1, batch_size=4)
        dl = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_rows,
                                         num_workers=workers)
        got = list(dl)
        return [b["input_ids"] for b in got], [b["next_position"].tolist() for b in got]
    (a, pa), (b, pb) = seq(0), seq(2)
    assert len(a) == len(b) > 2 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert pa == pb


def test_resume_continues_exactly(label_set):
    full = ids_of(LabelSetDataset(label_set["out"], seed=4, epochs=2))
    ds = LabelSetDataset(label_set["out"], seed=4, epochs=2)
    it = iter(ds)
    head = ids_of([next(it) for _ in range(len(full) // 2 + 3)])  # into the second epoch
    state = json.loads(json.dumps(ds.state_dict()))  # it must survive a JSON checkpoint
    again = LabelSetDataset(label_set["out"], seed=4, epochs=2)
    again.load_state_dict(state)
    assert head + ids_of(again) == full


@pytest.mark.parametrize("which", ["topk", "sampled"])
def test_hf_trainer_example_end_to_end(which, label_set, sampled_set, tmp_path):
    out = tmp_path / "student_hf"
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    labels = label_set["out"] if which == "topk" else sampled_set[0]
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "hf_trainer.py"),
                           "--labels", labels, "--student",
                           os.path.join(REPO, "demo", "student.json"), "--out", str(out),
                           "--steps", "30", "--batch-size", "8"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("trained 30 steps")]
    assert line, proc.stdout
    first, last = (float(v) for v in line[0].split("loss ")[1].split(" -> ")[:2])
    assert last < first
    from student_train.evaluate import evaluate
    r = evaluate(str(out), label_set["out"], "raw")  # scored against the top-k set
    assert np.isfinite(r["kl"]) and r["ce"] < np.log(80)  # better than uniform over the vocab
