"""Errors for the mistakes a newcomer makes, on the terminal with what to do, before any work."""
import json

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
