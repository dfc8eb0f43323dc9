"""``kd label --config FILE.yaml``: the file fills the options, flags given override it."""
import argparse

import pytest

from pipeline import cli


def parse(argv):
    ap = argparse.ArgumentParser()
    cli.add_parser(ap.add_subparsers())
    args, _ = ap.parse_known_args(["label", *argv])
    cli.resolve_config(args)
    return args


def test_config_file_with_flags_overriding(tmp_path):
    path = tmp_path / "label.yaml"
    path.write_text("teacher: demo/teacher\ninput: in.jsonl\nout: labels\ntop_k: 8\n"
                    "hidden_layers: [0, final]\nchat_template: true\nencoding: compact\n"
                    "overwrite: true\n")
    args = parse(["--config", str(path), "--top-k", "5", "--out", "other"])
    assert (args.teacher, args.input, args.out) == ("demo/teacher", "in.jsonl", "other")
    assert args.top_k == 5 and args.hidden_layers == "0,final"
    assert args.chat_template is True and args.encoding == "compact" and args.overwrite is True
    plain = parse(["--teacher", "t", "--input", "i", "--out", "o"])  # no file
    assert plain.top_k == 20 and plain.overwrite is False


def test_config_file_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("teacher: t\ntopk: 8\n")
    with pytest.raises(SystemExit, match="unknown keys \\['topk'\\]"):
        parse(["--config", str(path)])
    with pytest.raises(SystemExit, match="missing --input, --out"):
        parse(["--teacher", "t"])
