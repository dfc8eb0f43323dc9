"""torchrun with 2 CPU processes (gloo): both ranks step together and finish."""
import json
import os
import subprocess
import sys

from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_torchrun_two_processes(label_set, tmp_path):
    bindir = os.path.dirname(sys.executable)
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [os.path.join(bindir, "torchrun"), "--standalone", "--nproc_per_node=2", "--no-python",
         os.path.join(bindir, "kd"), "train", "--labels", label_set["out"],
         "--student", os.path.join(ROOT, "demo", "student.json"), "--out", str(out),
         "--steps", "6", "--batch-size", "4", "--save-every", "3"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2 process(es))" in proc.stdout
    metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert os.path.isdir(out / "checkpoint-00000003")
    AutoModelForCausalLM.from_pretrained(str(out))
