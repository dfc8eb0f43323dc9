"""kill -9 during training, then --resume: same weights as an uninterrupted run."""
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


def test_kill_and_resume_matches_uninterrupted_run(label_set, tmp_path):
    labels = label_set["out"]
    ref_out, out = str(tmp_path / "ref"), str(tmp_path / "killed")
    subprocess.run(kd_train(labels, ref_out), check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(kd_train(labels, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (os.path.isdir(out) and any(n.startswith("checkpoint-") for n in os.listdir(out))):
        assert time.time() < deadline and proc.poll() is None, "no checkpoint before kill"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # at the first checkpoint: mid-run on any machine
    proc.wait()
    assert not os.path.exists(os.path.join(out, "model.safetensors")), "run finished before kill"

    done = subprocess.run(kd_train(labels, out, "--resume"), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from step" in done.stdout
    a, b = weights(ref_out), weights(out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    import json
    seen = [json.loads(line)["batch"] for line in open(os.path.join(out, "metrics.jsonl"))]
    ref = [json.loads(line)["batch"] for line in open(os.path.join(ref_out, "metrics.jsonl"))]
    assert len(seen) == STEPS and seen == ref  # batch by batch, the same rows in the same order


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_torchrun_kill9_then_resume(label_set, tmp_path, engine):
    """kill -9 of torchrun and both ranks after a checkpoint, then --resume under torchrun: the
    weights of an uninterrupted 2-process run, bit for bit."""
    import json
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
    try:
        deadline = time.time() + 300
        while not (os.path.isdir(out) and any(n.startswith("checkpoint-")
                                              for n in os.listdir(out))):
            assert time.time() < deadline and proc.poll() is None, "no checkpoint before kill"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not os.path.exists(os.path.join(out, "model.safetensors")), "run finished before kill"
    done = subprocess.run(cmd(out, "--resume"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from step" in done.stdout
    a, b = weights(ref_out), weights(out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    seen = [json.loads(line)["batch"] for line in open(os.path.join(out, "metrics.jsonl"))]
    want = [json.loads(line)["batch"] for line in open(os.path.join(ref_out, "metrics.jsonl"))]
    assert seen == want
