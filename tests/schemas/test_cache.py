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


def _age(path, seconds=7200):
    import os
    import time
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_ls_json(label_set, tmp_path, capsys):
    shutil.copytree(label_set["out"], tmp_path / "a")
    assert main(["cache", "ls", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == [str(tmp_path / "a")]
    assert rows[0]["rows"] == label_set["summary"]["rows_labelled"] and rows[0]["complete"]


def test_verify_exit_status(label_set, tmp_path, capsys):
    for name in ("good", "bad"):
        shutil.copytree(label_set["out"], tmp_path / name)
    assert main(["cache", "verify", str(tmp_path)]) == 0
    assert "2 label set(s), 0 problem(s)" in capsys.readouterr().out
    shards = json.loads((tmp_path / "bad" / "manifest.json").read_text())["shards"]
    data = bytearray((tmp_path / "bad" / shards[-1]["path"]).read_bytes())
    data[50] ^= 0xFF
    (tmp_path / "bad" / shards[-1]["path"]).write_bytes(bytes(data))
    (tmp_path / "bad" / shards[0]["path"]).unlink()
    assert main(["cache", "verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s)" in out and "missing" in out and "corrupted" in out
    assert f"ok  {tmp_path / 'good'}" in out and f"BAD {tmp_path / 'bad'}" in out


def test_gc_lists_then_removes_only_unreferenced(label_set, tmp_path, capsys):
    d = tmp_path / "set"
    shutil.copytree(label_set["out"], d)
    listed = json.loads((d / "manifest.json").read_text())["shards"]
    first = d / listed[0]["path"]
    # the second file of a chunk two concurrent runs both labelled (same chunk, other bytes hash)
    twin = first.with_name(first.name.rsplit("-", 1)[0] + "-0000000000000000.parquet")
    twin.write_bytes(first.read_bytes() + b"x")
    stale = d / "shards" / "old-key-chunk.parquet"   # a shard of a superseded cache key
    stale.write_bytes(b"superseded")
    temp = d / "shards" / ".tmp-0123abcd"             # left by a killed writer
    temp.write_bytes(b"half")
    fresh = d / "shards" / "in-flight.parquet"        # renamed just now, record not yet written
    fresh.write_bytes(b"new")
    for p in (twin, stale, temp):
        _age(p)
    for p in d.rglob("*"):  # listed files old too: age alone never selects a file
        if p.is_file() and p not in (fresh,):
            _age(p)
    assert main(["cache", "gc", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert sorted(line.split()[-1] for line in out.splitlines()[:-1]) == \
        sorted(str(p) for p in (twin, stale, temp))
    assert twin.exists() and "--yes" in out  # only listed without --yes
    assert main(["cache", "gc", str(tmp_path), "--yes"]) == 0
    assert "removed 3 file(s)" in capsys.readouterr().out
    assert not twin.exists() and not stale.exists() and not temp.exists() and fresh.exists()
    assert all((d / s["path"]).exists() for s in listed)
    assert (d / "manifest.json").exists() and (d / "tokenizer").is_dir()
    assert main(["cache", "verify", str(tmp_path)]) == 0
    assert main(["cache", "gc", str(tmp_path), "--min-age", "0", "--yes"]) == 0
    assert not fresh.exists() and all((d / s["path"]).exists() for s in listed)


def test_gc_keeps_shards_of_commit_records(label_set, tmp_path, capsys):
    d = tmp_path / "set"
    shutil.copytree(label_set["out"], d)
    (d / "manifest.json").unlink()  # a running (or interrupted) job: commit records only
    before = sorted(p for p in (d / "shards").iterdir())
    assert main(["cache", "gc", str(tmp_path), "--min-age", "0", "--yes"]) == 0
    assert "nothing to remove" in capsys.readouterr().out
    assert sorted((d / "shards").iterdir()) == before
