"""`kd label` on Beam's Dask runner against a real dask.distributed cluster: a scheduler and two
worker processes on loopback, started here, each worker holding its own engine."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from schemas import load_manifest

pytest.importorskip("distributed")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
START_TIMEOUT = 60
RUN_TIMEOUT = 600


class Cluster:
    """dask scheduler + worker processes (no nanny: a killed worker stays dead)."""

    def __init__(self, tmp):
        self.tmp, self.file = tmp, str(tmp / "scheduler.json")
        self.env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.scheduler = self.spawn([f"{BIN}/dask", "scheduler", "--host", "127.0.0.1",
                                     "--port", "0", "--no-dashboard", "--scheduler-file",
                                     self.file], "scheduler")
        self.workers = []

    def spawn(self, cmd, name):
        log = open(self.tmp / f"{name}.log", "w")
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                cwd=self.tmp, start_new_session=True)

    def add_worker(self):
        self.workers.append(self.spawn(
            [f"{BIN}/dask", "worker", "--scheduler-file", self.file, "--nthreads", "1",
             "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
            f"worker{len(self.workers)}"))

    def wait_workers(self, n):
        from distributed import Client
        deadline = time.time() + START_TIMEOUT
        while not os.path.exists(self.file):
            assert time.time() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        with Client(scheduler_file=self.file, timeout=START_TIMEOUT) as c:
            c.wait_for_workers(n, timeout=START_TIMEOUT)

    def close(self):
        for proc in [*self.workers, self.scheduler]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        c.add_worker()
        c.add_worker()
        c.wait_workers(2)
        yield c
    finally:
        c.close()


def kd_label(raw, out, args, cluster, summary, simplified=None):
    cmd = [f"{BIN}/kd", "label", "--teacher", os.path.join(ROOT, "demo", "teacher"),
           "--input", str(raw), "--out", str(out), "--no-progress", "--summary-json",
           str(summary), *args, "--runner=DaskRunner", f"--dask_scheduler_file={cluster.file}",
           "--dask_npartitions=4"]
    if simplified:
        cmd += ["--simplified", str(simplified)]
    return cmd


def rows_by_key(out) -> dict:
    m = load_manifest(str(out))
    table = {}
    for sh in m.shards:
        for row in pq.read_table(f"{out}/{sh.path}").to_pylist():
            key = (row["example_id"], row["view"])
            assert key not in table, f"{key} twice"
            table[key] = row
    return table


def test_dask_label_set_equals_fnapi(cluster, label_set, demo_inputs, tmp_path):
    """The same job as the session's FnApiRunner label set (k, layers, projections, rejects):
    same cache key, same counts, same rows, labels within float tolerance."""
    out, summary = tmp_path / "labels", tmp_path / "summary.json"
    cmd = kd_label(demo_inputs["raw"], out,
                   ["--top-k", "8", "--hidden-layers", "0,2,final", "--hidden-proj-dim", "8",
                    "--hidden-proj-seed", "7", "--enforce-eager", "--kv-cache-gb", "0.25",
                    "--shard-rows", "20"], cluster, summary, demo_inputs["simplified"])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want, got = label_set["summary"], json.loads(summary.read_text())
    assert got["cache_key"] == want["cache_key"]
    for key in ("rows_in", "rows_labelled", "rows_rejected", "tokens_labelled", "shards"):
        assert got[key] == want[key], key
    assert got["rejects_by_reason"] == want["rejects_by_reason"]
    ref, new = rows_by_key(label_set["out"]), rows_by_key(out)
    assert set(ref) == set(new) and len(new) == 2 * demo_inputs["good"]
    for key, r in ref.items():
        n = new[key]
        assert n["input_ids"] == r["input_ids"] and n["label_start"] == r["label_start"]
        assert n["topk_ids"] == r["topk_ids"], key
        for col in r:
            if col.startswith(("topk_logprobs", "target_logprob", "hidden_")):
                np.testing.assert_allclose(np.array(n[col], dtype=np.float64),
                                           np.array(r[col], dtype=np.float64),
                                           rtol=1e-5, atol=1e-5, err_msg=f"{key} {col}")


def test_worker_killed_mid_run_then_rerun(cluster, demo_inputs, tmp_path):
    """kill -9 one worker while chunks are being committed; whatever the first run does (Dask
    retries the lost tasks on the other worker, or the run fails), the same command run again
    ends with every row exactly once."""
    out, summary = tmp_path / "labels", tmp_path / "summary.json"
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b"".join(open(demo_inputs["raw"], "rb").readlines()[:48]))
    cmd = kd_label(raw, out, ["--top-k", "4", "--enforce-eager", "--kv-cache-gb", "0.25",
                              "--shard-rows", "2"], cluster, summary)
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        commits, deadline = out / "commits", time.time() + RUN_TIMEOUT
        while not (commits.is_dir() and len(list(commits.glob("*.json"))) >= 3):
            assert time.time() < deadline and first.poll() is None, "no commits before the kill"
            time.sleep(0.05)
        victim = cluster.workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        assert not (out / "manifest.json").exists(), "the run finished before the kill"
        committed = len(list(commits.glob("*.json")))
        first.communicate(timeout=RUN_TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    cluster.add_worker()  # a replacement, as a cluster manager would start
    cluster.wait_workers(2)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads(summary.read_text())
    assert s["rows_in"] == s["rows_labelled"] == 48 and s["rows_rejected"] == 0
    assert s["shards"] == 24 and s["shards_reused"] >= committed
    ids = [row[0] for row in rows_by_key(out)]
    assert len(ids) == len(set(ids)) == 48
