"""kd cache ls / inspect over label sets."""
import json
import shutil

import pytest

from kd_cli import main
from schemas.cache import describe, find_label_sets


def test_ls_and_inspect(label_set, tmp_path, capsys):
    root = tmp_path / "cache"
    shutil.copytree(label_set["out"], root / "team" / "set-a")
    shutil.copytree(label_set["out"], root / "set-b")
    (root / "set-b" / "manifest.json").unlink()  # an interrupted run: commit records only
    found = find_label_sets(str(root))
    assert found == sorted([str(root / "set-b"), str(root / "team" / "set-a")])
    a, b = describe(found[1]), describe(found[0])
    assert a["complete"] and not b["complete"]
    assert a["rows"] == b["rows"] == label_set["summary"]["rows_labelled"]
    assert a["teacher"]["fingerprint"] and a["label_config"]["top_k"] == 8
    assert main(["cache", "ls", str(root)]) == 0
    out = capsys.readouterr().out
    assert "set-a" in out and "set-b" in out and "false" in out


def test_inspect_reports_corruption_and_unlisted_files(label_set, tmp_path, capsys):
    d = tmp_path / "set"
    shutil.copytree(label_set["out"], d)
    (d / "shards" / "part-orphan.parquet").write_bytes(b"left by a killed run")
    first = json.loads((d / "manifest.json").read_text())["shards"][0]["path"]
    data = bytearray((d / first).read_bytes())
    data[100] ^= 0xFF
    (d / first).write_bytes(bytes(data))
    assert main(["cache", "inspect", str(d), "--verify"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert info["unlisted_files"] == ["shards/part-orphan.parquet"]
    assert len(info["corrupted"]) == 1 and first in info["corrupted"][0]
    with pytest.raises(FileNotFoundError):
        describe(str(tmp_path / "nothing"))
