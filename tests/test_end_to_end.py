"""Beam + vLLM labelling -> shards + manifest -> streaming trainer, on the demo teacher."""
import collections
import json
import os
import subprocess
import sys

import fsspec
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM

from pipeline import job
from pipeline.tokenize import load_tokenizer, prompt_ids
from schemas import load_manifest, validate_table, verify_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENT = os.path.join(ROOT, "demo", "student.json")


def read_all(out):
    m = load_manifest(out)
    return m, [r for s in m.shards for r in pq.read_table(f"{out}/{s.path}").to_pylist()]


def test_summary_accounts_for_every_input_row(label_set, demo_inputs):
    s = label_set["summary"]
    assert s["rows_in"] == demo_inputs["rows_in"]
    assert s["rows_labelled"] == 2 * demo_inputs["good"]
    assert s["rows_rejected"] == demo_inputs["rejected"]
    assert s["rows_in"] == s["rows_labelled"] + s["rows_rejected"]
    assert s["rejects_by_reason"] == {
        "duplicate_id": 1, "empty_field": 1, "extra_field": 1, "invalid_utf8": 1,
        "malformed_json": 1, "missing_field": 1, "no_raw_partner": 1, "not_an_object": 1,
        "too_long": 1, "wrong_type": 1}
    assert "reject" in s["rejects_path"]
    rejects = pq.read_table(s["rejects_path"]).to_pylist()
    assert all(r["reason"] and r["detail"] and r["source"] for r in rejects)


def test_shards_are_valid_listed_and_checksummed(label_set):
    m, rows = read_all(label_set["out"])
    fs = fsspec.filesystem("file")
    assert m.complete and len(m.shards) >= 2
    for s in m.shards:
        verify_shard(fs, f"{label_set['out']}/{s.path}", s.sha256)
        validate_table(pq.read_table(f"{label_set['out']}/{s.path}"), m.label_config["top_k"])
    ids = [(r["example_id"], r["view"]) for r in rows]
    assert len(ids) == len(set(ids))
    assert sum(len(r["target_logprob"]) for r in rows) == m.counts["tokens_labelled"]
    assert m.label_config["dtype"] == "float32"
    on_disk = {p for p in os.listdir(f"{label_set['out']}/shards")}
    assert on_disk == {os.path.basename(s.path) for s in m.shards}  # no temp files left


def test_context_distillation_alignment(label_set, demo_inputs, teacher_dir):
    """Simplified rows: simplified prompt + the same response tokens + the raw-conditioned labels."""
    _, rows = read_all(label_set["out"])
    by_id = collections.defaultdict(dict)
    for r in rows:
        by_id[r["example_id"]][r["view"]] = r
    simp_prompts = {json.loads(line)["id"]: json.loads(line)["prompt"]
                    for line in open(demo_inputs["simplified"])}
    tok = load_tokenizer(teacher_dir)
    assert len(by_id) == demo_inputs["good"]
    for ex_id, views in by_id.items():
        raw, simp = views["raw"], views["simplified"]
        assert raw["input_ids"][raw["label_start"]:] == simp["input_ids"][simp["label_start"]:]
        assert simp["input_ids"][:simp["label_start"]] == prompt_ids(tok, simp_prompts[ex_id])
        assert raw["label_start"] != simp["label_start"]
        for col in ("topk_ids", "topk_logprobs", "target_logprob"):
            assert raw[col] == simp[col]


def test_rerun_is_idempotent(label_set, teacher_config, demo_inputs):
    before = load_manifest(label_set["out"])
    job.run(job.LabelJob(teacher_config, demo_inputs["raw"], label_set["out"],
                         demo_inputs["simplified"], shard_rows=20), [])
    after = load_manifest(label_set["out"])
    assert [(s.path, s.sha256) for s in after.shards] == [(s.path, s.sha256) for s in before.shards]
    assert after.counts["shards_reused"] == len(after.shards)  # nothing relabelled


def test_grown_dataset_labels_only_new_chunks(teacher_config, demo_inputs, tmp_path):
    lines = open(demo_inputs["raw"], "rb").readlines()[:30]
    raw = tmp_path / "raw.jsonl"
    out = str(tmp_path / "labels")
    raw.write_bytes(b"".join(lines[:20]))
    first = job.run(job.LabelJob(teacher_config, str(raw), out, shard_rows=8), [])
    assert (first["shards"], first["shards_reused"]) == (3, 0)  # lines 1-8, 9-16, 17-20
    raw.write_bytes(b"".join(lines))  # 10 more records appended
    second = job.run(job.LabelJob(teacher_config, str(raw), out, shard_rows=8), [])
    assert second["rows_labelled"] == 30 and second["rows_in"] == 30
    assert (second["shards"], second["shards_reused"]) == (4, 2)  # lines 17-24 changed, 25-30 new
    _, rows = read_all(out)
    ids = [r["example_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 30


def test_train_and_eval_from_label_set(label_set, tmp_path):
    from student_train.evaluate import evaluate
    from student_train.train import TrainConfig, train
    out = str(tmp_path / "student")
    cfg = TrainConfig(labels=label_set["out"], student=STUDENT, out=out, steps=12, batch_size=8,
                      lam=0.5, save_every=5)
    result = train(cfg)
    assert result["steps"] == 12
    losses = [json.loads(line)["loss"] for line in open(os.path.join(out, "metrics.jsonl"))]
    assert len(losses) == 12 and losses[-1] < losses[0]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, torch.nn.Module)
    assert sorted(n for n in os.listdir(out) if "checkpoint" in n) == ["checkpoint-00000005",
                                                                      "checkpoint-00000010"]
    for view in ("raw", "simplified"):
        r = evaluate(out, label_set["out"], view)
        assert r["rows"] == 48 and 0 <= r["top1_agree"] <= 1 and r["kl"] >= 0 and r["ce"] > 0


def test_cli_label_subprocess(tmp_path, demo_inputs):
    """The README's `kd label` command end to end in a fresh process (its own engine)."""
    out, summary = tmp_path / "labels", tmp_path / "summary.json"
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b"".join(open(demo_inputs["raw"], "rb").readlines()[:10]) + b"oops\n")
    kd = os.path.join(os.path.dirname(sys.executable), "kd")
    proc = subprocess.run([kd, "label", "--teacher", os.path.join(ROOT, "demo", "teacher"),
                           "--input", str(raw), "--out", str(out), "--top-k", "5",
                           "--enforce-eager", "--kv-cache-gb", "0.25", "--summary-json",
                           str(summary), "--runner=FnApiRunner"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(summary.read_text())
    assert (s["rows_in"], s["rows_labelled"], s["rows_rejected"]) == (11, 10, 1)
    assert s["rejects_by_reason"] == {"malformed_json": 1}
    assert "labelled 10 of 11 rows" in proc.stdout and "malformed_json 1" in proc.stdout
    assert "WARNING" not in proc.stdout + proc.stderr  # engine output: in the log file
    assert "libtcmalloc" in (out / "kd-label.log").read_text()
    assert load_manifest(str(out)).label_config["views"] == ["raw"]
