"""kd train writes TensorBoard event files beside metrics.jsonl when tensorboard is installed
(the `tensorboard` extra; in the `test` extra too), and a resumed run replaces the steps after
its checkpoint instead of duplicating them."""
import json
import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from student_train.train import TrainConfig, train

STUDENT = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "student.json")


def scalars(out, tag):
    acc = EventAccumulator(os.path.join(out, "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_event_files_match_metrics(label_set, tmp_path):
    out = str(tmp_path / "s")
    cfg = dict(labels=label_set["out"], student=STUDENT, out=out, batch_size=4, save_every=3)
    train(TrainConfig(steps=4, **cfg))
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    got = scalars(out, "train/loss")
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert all(abs(v - r["loss"]) < 1e-5 for (_, v), r in zip(got, rows))
    assert "train/lr" in EventAccumulator(os.path.join(out, "tensorboard")).Reload().Tags()["scalars"]
    train(TrainConfig(steps=6, resume=True, **cfg))  # from the step-3 checkpoint
    steps = sorted(s for s, _ in scalars(out, "train/loss"))
    assert steps == [1, 2, 3, 4, 5, 6]
