"""Errors for the mistakes a newcomer makes, on the terminal with what to do, before any work."""
import json
import os

import kd_cli


def label(tmp_path, teacher, capfd):
    code = kd_cli.main(["label", "--teacher", str(teacher), "--input", str(tmp_path / "in.jsonl"),
                        "--out", str(tmp_path / "out")])
    out, err = capfd.readouterr()
    return code, err


def test_teacher_missing(tmp_path, capfd):
    code, err = label(tmp_path, tmp_path / "no-such-teacher", capfd)
    assert code == 1
    assert "no-such-teacher: no such directory (give a transformers model directory" in err


def test_teacher_not_a_model(tmp_path, capfd):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    code, err = label(tmp_path, tmp_path / "notes", capfd)
    assert code == 1
    assert "is not a transformers model directory: no config.json (found: readme.txt)" in err
    (tmp_path / "notes" / "config.json").write_text(json.dumps({"hello": 1}))
    code, err = label(tmp_path, tmp_path / "notes", capfd)
    assert code == 1 and "is not a model config" in err


def test_yaml_key_that_does_not_exist(tmp_path, capfd):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("labels: x\nstudent: y\nout: z\nsteps: 3\nlearning_rate: 0.1\n")
    code = kd_cli.main(["train", "--config", str(cfg)])
    err = capfd.readouterr().err
    assert code == 1 and "unknown keys ['learning_rate']" in err and "'lr'" in err


def test_input_columns_missing(tmp_path, capfd):
    import os
    teacher = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "teacher")
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"uid": str(i), "question": "q", "answer": "a"}) + "\n"
                for i in range(5)))
    code, err = label(tmp_path, teacher, capfd)
    assert code == 1
    assert "no record has the column(s) id, prompt, response (found: answer, question, uid)" in err
    assert "--columns id=<your column>,prompt=<your column>,response=<your column>" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_check_columns_with_a_mapping_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest
    from pipeline.records import check_columns
    path = tmp_path / "in.jsonl"
    path.write_text('oops\n{"uid": "1", "question": "q", "answer": "a"}\n')
    check_columns(str(path), "raw", {"id": "uid", "prompt": "question", "response": "answer"})
    with pytest.raises(ValueError, match="column\\(s\\) response \\(found"):
        check_columns(str(path), "raw", {"id": "uid", "prompt": "question"})
    pq.write_table(pa.table({"id": ["1"], "text": ["t"]}), tmp_path / "in.parquet")
    check_columns(str(tmp_path / "in.parquet"), "text")
    with pytest.raises(ValueError, match="found: id, text"):
        check_columns(str(tmp_path / "in.parquet"), "raw")


def test_simplified_ids_match_nothing(tmp_path, capfd):
    import os
    teacher = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "teacher")
    (tmp_path / "in.jsonl").write_text("".join(
        json.dumps({"id": f"r{i}", "prompt": "p", "response": "a"}) + "\n" for i in range(5)))
    (tmp_path / "simp.jsonl").write_text("".join(
        json.dumps({"id": f"s{i}", "prompt": "p"}) + "\n" for i in range(5)))
    code = kd_cli.main(["label", "--teacher", teacher, "--input", str(tmp_path / "in.jsonl"),
                        "--simplified", str(tmp_path / "simp.jsonl"),
                        "--out", str(tmp_path / "out")])
    err = capfd.readouterr().err
    assert code == 1
    assert "none of its first 5 ids matches a record of" in err and "'s0'" in err
    assert "raw ['r0', 'r1', 'r2']" in err
    from pipeline.records import check_pairing
    (tmp_path / "simp.jsonl").write_text('{"id": "s0", "prompt": "p"}\n{"id": "r4", "prompt": "p"}\n')
    check_pairing(str(tmp_path / "in.jsonl"), str(tmp_path / "simp.jsonl"))  # one match is enough


def test_s3_without_credentials(tmp_path, monkeypatch, capfd):
    """No AWS variables, no ~/.aws files (and no instance-metadata lookup): kd label and kd train
    stop before any work and say what to set. Nothing is contacted."""
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    code = kd_cli.main(["label", "--teacher", "demo/teacher", "--input", "s3://bucket/raw.jsonl",
                        "--out", str(tmp_path / "out")])
    err = capfd.readouterr().err
    assert code == 1
    assert "s3://bucket/raw.jsonl: no S3 credentials found" in err and "AWS_ENDPOINT_URL" in err
    code = kd_cli.main(["train", "--labels", "s3://bucket/labels", "--student",
                        "demo/student.json", "--out", str(tmp_path / "s"), "--steps", "1"])
    err = capfd.readouterr().err
    assert code == 1 and "s3://bucket/labels: no S3 credentials found" in err


def test_out_holds_another_cache_key(teacher, teacher_config, demo_inputs, tmp_path, capfd,
                                     monkeypatch):
    """kd label into an --out labelled under another key (here --top-k 8 -> 4) stops before any
    teacher work, naming both keys and the field; the old set is untouched and still verifies.
    --overwrite replaces it; the same key then reruns without it (reusing every shard)."""
    import dataclasses
    import pathlib
    from pipeline import job, teacher as teacher_mod
    from pipeline.teacher import model_config
    from schemas import load_manifest, teacher_fingerprint, tokenizer_fingerprint
    from schemas.labelset import held_label_set
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b"".join(open(demo_inputs["raw"], "rb").readlines()[:6]))
    out = str(tmp_path / "labels")
    job.run(job.LabelJob(teacher_config, str(raw), out, shard_rows=3), [])
    old = load_manifest(out)

    def files():
        return {str(p.relative_to(out)): p.read_bytes() for p in pathlib.Path(out).rglob("*")
                if p.is_file() and p.name != "kd-label.log"}
    before = files()
    n = int(model_config(teacher_config.model_dir)["num_hidden_layers"])
    new_job = job.LabelJob(dataclasses.replace(teacher_config, top_k=4), str(raw), out,
                           shard_rows=3)
    new_key = job.label_config(new_job, model_config(teacher_config.model_dir)).cache_key(
        teacher_fingerprint(teacher_config.model_dir),
        tokenizer_fingerprint(teacher_config.model_dir))
    monkeypatch.setattr(teacher_mod, "shutdown_all", lambda: None)  # keep the session's engine
    code = kd_cli.main(["label", "--teacher", teacher_config.model_dir, "--input", str(raw),
                        "--out", out, "--shard-rows", "3", "--top-k", "4",
                        "--hidden-layers", f"0,{n // 2},final", "--hidden-proj-dim", "8",
                        "--hidden-proj-seed", "7"])
    err = capfd.readouterr().err
    assert code == 1
    assert f"already holds a label set under cache key {old.cache_key}" in err
    assert f"this run's cache key is {new_key}" in err and new_key != old.cache_key
    assert "They differ in: top_k (--top-k) 8 -> 4." in err
    assert "Choose another --out" in err and "pass --overwrite" in err
    assert files() == before  # no shard, commit record, tokenizer or manifest written
    assert kd_cli.main(["cache", "verify", out]) == 0
    capfd.readouterr()

    s = job.run(dataclasses.replace(new_job, overwrite=True), [])
    new = load_manifest(out)
    assert new.cache_key == new_key and s["rows_labelled"] == 6 and s["shards_reused"] == 0
    assert kd_cli.main(["cache", "verify", out]) == 0
    old_shards = {s.path for s in old.shards}
    assert old_shards.isdisjoint(s.path for s in new.shards)
    assert kd_cli.main(["cache", "gc", out, "--min-age", "0", "--yes"]) == 0  # superseded shards
    assert not any((pathlib.Path(out) / p).exists() for p in old_shards)
    assert all((pathlib.Path(out) / s.path).exists() for s in new.shards)
    assert kd_cli.main(["cache", "verify", out]) == 0
    capfd.readouterr()
    again = job.run(new_job, [])  # the same key: a rerun, no --overwrite needed
    assert again["shards_reused"] == again["shards"] == 2
    # an interrupted --overwrite run (old manifest, new commit records) resumes without it
    (pathlib.Path(out) / "manifest.json").write_bytes(before["manifest.json"])
    assert held_label_set(out, new_key) is None
    held = held_label_set(out, old.cache_key)
    assert held["cache_key"] == new_key and held["label_config"]["top_k"] == 4
    assert held["teacher_fingerprint"] == old.teacher["fingerprint"]
