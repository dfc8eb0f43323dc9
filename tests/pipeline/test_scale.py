"""Two Beam worker processes, each with its own engine, reading from and writing to S3."""
import json
import os
import subprocess
import sys

import fsspec

from schemas import load_manifest
from schemas.manifest import read_commits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_multiprocessing_workers_over_s3(s3_server, demo_inputs, tmp_path):
    import boto3
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(
        Bucket="kd-scale")
    fs = fsspec.filesystem("s3", endpoint_url=s3_server)
    raw = b"".join(open(demo_inputs["raw"], "rb").readlines()[:40]) + b"{broken\n"
    fs.pipe("kd-scale/in/raw.jsonl", raw)
    fs.pipe("kd-scale/in/simplified.jsonl", open(demo_inputs["simplified"], "rb").read())
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "kd"), "label",
         "--teacher", os.path.join(ROOT, "demo", "teacher"),
         "--input", "s3://kd-scale/in/raw.jsonl", "--simplified", "s3://kd-scale/in/simplified.jsonl",
         "--out", "s3://kd-scale/labels", "--top-k", "4", "--enforce-eager", "--kv-cache-gb", "0.25",
         "--shard-rows", "5", "--summary-json", str(summary),
         "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(summary.read_text())
    # 41 raw lines (1 broken) + 49 simplified (48 + the orphan): 40 pairs labelled
    assert s["rows_labelled"] == 80 and s["rows_in"] == 41 + 49
    assert s["rows_in"] == s["rows_labelled"] + s["rows_rejected"]
    m = load_manifest("s3://kd-scale/labels")
    assert len(m.shards) == 8 and all(fs.exists(f"kd-scale/labels/{x.path}") for x in m.shards)
    writers = {r["writer"] for r in read_commits("s3://kd-scale/labels")}
    assert len(writers) == 2  # both worker processes labelled shards
