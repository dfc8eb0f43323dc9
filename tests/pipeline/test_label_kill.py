"""kill -9 during `kd label`, then the same command again: every row exactly once."""
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

from schemas import load_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_kill_mid_run_then_rerun(demo_inputs, tmp_path):
    out, summary = tmp_path / "labels", tmp_path / "summary.json"
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b"".join(open(demo_inputs["raw"], "rb").readlines()[:48]))
    cmd = [os.path.join(os.path.dirname(sys.executable), "kd"), "label",
           "--teacher", os.path.join(ROOT, "demo", "teacher"), "--input", str(raw),
           "--out", str(out), "--top-k", "4", "--enforce-eager", "--kv-cache-gb", "0.25",
           "--shard-rows", "2", "--summary-json", str(summary)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    commits = out / "commits"
    deadline = time.time() + 300
    while time.time() < deadline:
        if commits.is_dir() and len(list(commits.glob("*.json"))) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before the kill"
    committed = len(list(commits.glob("*.json")))

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads(summary.read_text())
    assert s["rows_in"] == s["rows_labelled"] == 48 and s["rows_rejected"] == 0
    assert s["shards"] == 24 and s["shards_reused"] >= committed
    m = load_manifest(str(out))
    ids = [i for sh in m.shards
           for i in pq.read_table(f"{out}/{sh.path}", columns=["example_id"])["example_id"]
           .to_pylist()]
    assert len(ids) == len(set(ids)) == 48


def test_two_concurrent_runs_on_one_key(demo_inputs, tmp_path):
    """Two `kd label` processes on the same input and output at once: both finish, the manifest
    lists every example exactly once and every listed shard matches its checksum (a chunk the
    other run has committed meanwhile is taken over, one both label at once is renamed into place
    whole by each)."""
    import fsspec
    from schemas import verify_shard
    out = tmp_path / "labels"
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b"".join(open(demo_inputs["raw"], "rb").readlines()[:48]))
    cmds = [[os.path.join(os.path.dirname(sys.executable), "kd"), "label",
             "--teacher", os.path.join(ROOT, "demo", "teacher"), "--input", str(raw),
             "--out", str(out), "--top-k", "4", "--enforce-eager", "--kv-cache-gb", "0.25",
             "--shard-rows", "2", "--no-progress", "--summary-json", str(tmp_path / f"s{i}.json")]
            for i in range(2)]
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    summaries = [json.loads((tmp_path / f"s{i}.json").read_text()) for i in range(2)]
    assert all(s["rows_labelled"] == 48 and s["shards"] == 24 for s in summaries), summaries
    m = load_manifest(str(out))
    ids = []
    for sh in m.shards:
        verify_shard(fsspec.filesystem("file"), f"{out}/{sh.path}", sh.sha256)
        ids += pq.read_table(f"{out}/{sh.path}", columns=["example_id"])["example_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 48
    assert not list(out.glob("shards/.tmp-*")), "a temporary file was left behind"
