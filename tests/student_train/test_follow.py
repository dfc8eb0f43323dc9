"""Follow mode: train while the label set is still being written, from committed shards only."""
import json
import os
import shutil
import subprocess
import sys
import threading
import time

from schemas import ShardInfo, load_manifest
from schemas.labelset import shard_chunk
from schemas.manifest import write_commit
from student_train.train import TrainConfig, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDENT = os.path.join(ROOT, "demo", "student.json")


def has_steps(metrics: str) -> bool:
    return os.path.exists(metrics) and os.path.getsize(metrics) > 0


def slow_writer(src: str, dst: str, metrics: str, log: list):
    """Replays a finished label set shard by shard through the commit protocol."""
    m = load_manifest(src)
    shutil.copytree(f"{src}/tokenizer", f"{dst}/tokenizer")
    os.makedirs(f"{dst}/shards")
    with open(f"{dst}/shards/part-not-committed.parquet", "wb") as f:
        f.write(b"PAR1 half a file")  # what a crashed writer leaves: must never be read
    for i, info in enumerate(m.shards):
        if i == len(m.shards) - 1:  # hold the last shard until the trainer is running
            deadline = time.time() + 120
            while not has_steps(metrics) and time.time() < deadline:
                time.sleep(0.05)
            log.append(("trainer_running", has_steps(metrics)))
        shutil.copy(f"{src}/{info.path}", f"{dst}/{info.path}")
        write_commit(dst, ShardInfo(**vars(info)), m.cache_key, m.label_config,
                     shard_chunk(info.path))
        time.sleep(0.2)
    shutil.copy(f"{src}/manifest.json", f"{dst}/manifest.json")
    log.append(("final", time.time()))


def test_follow_trains_from_committed_shards_until_final(label_set, tmp_path):
    src, dst, out = label_set["out"], str(tmp_path / "labels"), str(tmp_path / "student")
    os.makedirs(dst)
    log = []
    writer = threading.Thread(target=slow_writer,
                              args=(src, dst, os.path.join(out, "metrics.jsonl"), log))
    writer.start()
    n_rows = sum(s.rows for s in load_manifest(src).shards)
    steps = n_rows // 8 + 3  # more than one epoch: must wait for the final manifest
    result = train(TrainConfig(labels=dst, student=STUDENT, out=out, steps=steps, batch_size=8,
                               follow=True, poll_seconds=0.05, save_every=steps - 1,
                               shuffle_buffer=16))
    writer.join()
    assert result["steps"] == steps
    assert log[0] == ("trainer_running", True)  # training began before the last shard existed
    state = json.load(open(os.path.join(out, f"checkpoint-{steps - 1:08d}", "state.json")))
    assert state["position"][0] == 1  # finished epoch 0 (follow) and moved on
    assert sorted(state["shard_order"]) == sorted(s.path for s in load_manifest(src).shards)


def test_follow_with_a_live_labelling_job(demo_inputs, tmp_path):
    """`kd label` and `kd train --follow` at the same time, as separate processes."""
    bindir = os.path.dirname(sys.executable)
    labels, out = str(tmp_path / "labels"), str(tmp_path / "student")
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b"".join(open(demo_inputs["raw"], "rb").readlines()[:40]))
    label = subprocess.Popen(
        [os.path.join(bindir, "kd"), "label", "--teacher", os.path.join(ROOT, "demo", "teacher"),
         "--input", str(raw), "--out", labels, "--top-k", "4", "--enforce-eager",
         "--kv-cache-gb", "0.25", "--shard-rows", "8", "--hidden-layers", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    trainer = subprocess.run(
        [os.path.join(bindir, "kd"), "train", "--labels", labels, "--student", STUDENT,
         "--out", out, "--steps", "12", "--batch-size", "4", "--follow"],
        capture_output=True, text=True, timeout=600)
    label_out, _ = label.communicate(timeout=600)
    assert label.returncode == 0, label_out[-3000:]
    assert trainer.returncode == 0, trainer.stderr[-3000:]
    assert load_manifest(labels).counts["rows_labelled"] == 40
    assert len(open(os.path.join(out, "metrics.jsonl")).readlines()) == 12
