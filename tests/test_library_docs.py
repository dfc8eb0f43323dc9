"""Every python block of docs/LIBRARY.md runs against a real label set (the class-only snippet of
the Trainer example is run by tests/student_train/test_library.py as examples/hf_trainer.py)."""
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = open(os.path.join(REPO, "docs", "LIBRARY.md")).read()
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", TEXT, re.S) if "class KDTrainer" not in b]


def test_there_are_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_block_runs(i, label_set, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    code = BLOCKS[i].replace('"runs/demo/labels/train"', repr(label_set["out"]))
    assert repr(label_set["out"]) in code
    exec(compile(code, f"docs/LIBRARY.md block {i}", "exec"), {})
