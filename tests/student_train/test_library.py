"""student_train.library: the label set as an IterableDataset, its collator and loss, and the
transformers.Trainer example trained end to end on the demo label set."""
import json
import os
import subprocess
import sys

import numpy as np
import torch

from student_train import losses
from student_train.library import LabelSetDataset, collate_rows, kd_loss
from student_train.stream import LabelSet, batches

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ids_of(rows):
    return [tuple(r["input_ids"].tolist()) + (r["label_start"],) for r in rows]


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

    def per_row(b):
        return sorted((tuple(b["input_ids"][i].tolist()), tuple(b["attention_mask"][i].tolist()),
                       tuple(b["targets"][b["pos_b"] == i].tolist()),
                       tuple(b["topk_ids"][b["pos_b"] == i].flatten().tolist()),
                       tuple(b["topk_logprobs"][b["pos_b"] == i].flatten().tolist()),
                       tuple(b["pos_t"][b["pos_b"] == i].tolist()))
                      for i in range(len(b["input_ids"])))
    assert per_row(got) == per_row(vars(want))
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


def test_hf_trainer_example_end_to_end(label_set, tmp_path):
    out = tmp_path / "student_hf"
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "hf_trainer.py"),
                           "--labels", label_set["out"], "--student",
                           os.path.join(REPO, "demo", "student.json"), "--out", str(out),
                           "--steps", "30", "--batch-size", "8"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("trained 30 steps")]
    assert line, proc.stdout
    first, last = (float(v) for v in line[0].split("loss ")[1].split(" -> ")[:2])
    assert last < first
    from student_train.evaluate import evaluate
    r = evaluate(str(out), label_set["out"], "raw")
    assert np.isfinite(r["kl"]) and r["ce"] < np.log(80)  # better than uniform over the vocab
