"""Student checks, YAML + flag overrides, view mixing, bf16 and accumulation runs."""
import argparse
import json
import os
import shutil

import numpy as np
import pytest
import yaml

from student_train.cli import add_parsers, resolve_config
from student_train.model import load_student
from student_train.stream import LabelSet
from student_train.train import TrainConfig, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDENT = os.path.join(ROOT, "demo", "student.json")


def parse(argv):
    ap = argparse.ArgumentParser()
    add_parsers(ap.add_subparsers())
    return ap.parse_args(argv)


def test_yaml_config_with_flag_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"student": "s.json", "steps": 100, "lam": 0.2,
                                        "temperature": 2.0, "views": ["simplified"]}))
    cfg = resolve_config(parse(["train", "--config", str(cfg_file), "--labels", "L", "--out", "O",
                                "--temperature", "3.0"]))
    assert (cfg.labels, cfg.student, cfg.steps, cfg.lam) == ("L", "s.json", 100, 0.2)
    assert cfg.temperature == 3.0 and cfg.views == ("simplified",)
    with pytest.raises(SystemExit, match="--labels"):
        resolve_config(parse(["train", "--config", str(cfg_file), "--out", "O"]))
    cfg_file.write_text(yaml.safe_dump({"lamda": 0.1}))
    with pytest.raises(SystemExit, match="unknown keys"):
        resolve_config(parse(["train", "--config", str(cfg_file)]))


def test_example_configs_are_valid():
    for name in os.listdir(os.path.join(ROOT, "configs")):
        cfg = resolve_config(parse(["train", "--config", os.path.join(ROOT, "configs", name),
                                    "--labels", "L", "--out", "O"]))
        assert isinstance(cfg, TrainConfig)


def test_student_refusals(label_set, tmp_path, capfd):
    tok_dir = LabelSet(label_set["out"]).tokenizer_dir()
    small = json.load(open(STUDENT))
    small["vocab_size"] = 40
    (tmp_path / "small.json").write_text(json.dumps(small))
    with pytest.raises(ValueError, match="vocabulary"):
        load_student(str(tmp_path / "small.json"), tok_dir)
    model, tok = load_student(STUDENT, tok_dir)
    other = tmp_path / "other"
    model.save_pretrained(other)
    tok.save_pretrained(other)
    cfg = json.loads((other / "tokenizer.json").read_text())
    vocab = cfg["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]  # same size, different meaning
    (other / "tokenizer.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="differs from the labels' tokenizer"):
        load_student(str(other), tok_dir)
    # the same on the terminal of `kd train`, before any step: both fingerprints, what to do
    import kd_cli
    from schemas import tokenizer_fingerprint
    code = kd_cli.main(["train", "--labels", label_set["out"], "--student", str(other),
                        "--out", str(tmp_path / "run"), "--steps", "1"])
    err = capfd.readouterr().err
    assert code == 1
    assert f"student tokenizer in {other} (fingerprint {tokenizer_fingerprint(str(other))}" in err
    assert f"(fingerprint {tokenizer_fingerprint(tok_dir)}, {len(tok)} tokens)" in err
    assert "Train a student that shares the teacher's tokenizer" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_simplified_ratio_mixes_one_view_per_example(label_set):
    counts = {}
    for ratio in (0.0, 0.5, 1.0):
        ls = LabelSet(label_set["out"], simplified_ratio=ratio)
        views, ids = [], []
        for i in range(ls.num_shards):
            arrays, sel = ls.shard(i)
            views += list(arrays.view[sel])
            ids += list(arrays.example_id[sel])
        assert len(ids) == len(set(ids)) == 48  # one row per example
        counts[ratio] = views.count("simplified")
    assert counts[0.0] == 0 and counts[1.0] == 48 and 10 < counts[0.5] < 38


def test_bf16_and_grad_accum_run(label_set, tmp_path):
    out = str(tmp_path / "s")
    r = train(TrainConfig(labels=label_set["out"], student=STUDENT, out=out, steps=3,
                          batch_size=4, grad_accum=2, bf16=True, lam=0.5))
    assert r["steps"] == 3 and np.isfinite(r["loss"])
    assert len(open(os.path.join(out, "metrics.jsonl")).readlines()) == 3
    shutil.rmtree(out)


def test_per_token_hidden_targets(label_set, tmp_path):
    """--hidden-target tokens: batches carry the stored per-token projections, aligned with the
    labelled positions, and training reduces the distance to them."""
    import pyarrow.parquet as pq
    from schemas import load_manifest, proj_column
    from student_train.stream import batches
    ls = LabelSet(label_set["out"], hidden_per_token=True)
    r = load_manifest(label_set["out"]).label_config["hidden_proj"]["dim"]
    _, batch = next(batches(ls, 4, seed=0))
    for layer in ls.hidden_layers:
        assert batch.hidden[layer].shape == (len(batch.targets), r)
    # the first row's block equals that row's stored projections
    first = batch.pos_b == 0
    ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    stored = None
    for sh in load_manifest(label_set["out"]).shards:
        for row in pq.read_table(f"{label_set['out']}/{sh.path}").to_pylist():
            if row["input_ids"] == ids:
                stored = row
    layer = ls.hidden_layers[-1]
    np.testing.assert_allclose(batch.hidden[layer][first].numpy(),
                               np.array(stored[proj_column(layer)]), rtol=1e-6)
    out = tmp_path / "tok"
    res = train(TrainConfig(labels=label_set["out"], student=STUDENT, out=str(out), steps=80,
                            batch_size=8, hidden_weight=1.0, hidden_target="tokens", lam=0.5))
    hid = [json.loads(line)["hidden"] for line in open(out / "metrics.jsonl")]
    assert res["steps"] == 80 and np.mean(hid[-10:]) < 0.7 * np.mean(hid[:10]), hid
