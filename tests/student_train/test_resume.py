"""kill -9 during training, then --resume: same weights as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDENT = os.path.join(ROOT, "demo", "student.json")
STEPS = 200  # ~3 s of training here: the kill lands long before the end on a fast CPU


def kd_train(labels, out, *extra):
    kd = os.path.join(os.path.dirname(sys.executable), "kd")
    return [kd, "train", "--labels", labels, "--student", STUDENT, "--out", out,
            "--steps", str(STEPS), "--batch-size", "4", "--save-every", "3", "--seed", "1",
            *extra]


def weights(out):
    return load_file(os.path.join(out, "model.safetensors"))


def batches(out):
    return [json.loads(line)["batch"] for line in open(os.path.join(out, "metrics.jsonl"))]


def kill_at_first_checkpoint(proc, out, kill, poll=0.01):
    """Wait for the run's first checkpoint, then ``kill()`` it: mid-run on any machine."""
    try:
        deadline = time.time() + 300
        while not (os.path.isdir(out) and any(n.startswith("checkpoint-")
                                              for n in os.listdir(out))):
            assert time.time() < deadline and proc.poll() is None, "no checkpoint before kill"
            time.sleep(poll)
    finally:
        kill()
        proc.wait(timeout=60)
    assert not os.path.exists(os.path.join(out, "model.safetensors")), "run finished before kill"


def assert_resumed_equal(done, ref_out, out):
    """The resumed run succeeded and ends with the uninterrupted run's weights, bit for bit, after
    the same batches in the same order."""
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from step" in done.stdout
    a, b = weights(ref_out), weights(out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert batches(out) == batches(ref_out)


def test_kill_and_resume_matches_uninterrupted_run(label_set, tmp_path):
    labels = label_set["out"]
    ref_out, out = str(tmp_path / "ref"), str(tmp_path / "killed")
    subprocess.run(kd_train(labels, ref_out), check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(kd_train(labels, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kill_at_first_checkpoint(proc, out, lambda: proc.send_signal(signal.SIGKILL))
    done = subprocess.run(kd_train(labels, out, "--resume"), capture_output=True, text=True,
                          timeout=600)
    assert_resumed_equal(done, ref_out, out)
    assert len(batches(out)) == STEPS  # batch by batch, the same rows in the same order


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_torchrun_kill9_then_resume(label_set, tmp_path, engine):
    """kill -9 of torchrun and both ranks after a checkpoint, then --resume under torchrun: the
    weights of an uninterrupted 2-process run, bit for bit."""
    bindir = os.path.dirname(sys.executable)
    extra = ["--shard-model"] if engine == "fsdp2" else []

    def cmd(out, *more):
        return [os.path.join(bindir, "torchrun"), "--standalone", "--nproc_per_node=2",
                "--no-python", *kd_train(label_set["out"], out, "--steps", "12", "--grad-accum",
                                         "2", *extra, *more)]
    ref_out, out = str(tmp_path / "ref"), str(tmp_path / "killed")
    ref = subprocess.run(cmd(ref_out), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: torchrun + ranks
    kill_at_first_checkpoint(proc, out, lambda: os.killpg(proc.pid, signal.SIGKILL), poll=0.05)
    done = subprocess.run(cmd(out, "--resume"), capture_output=True, text=True, timeout=600)
    assert_resumed_equal(done, ref_out, out)
