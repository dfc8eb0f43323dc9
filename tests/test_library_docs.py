"""Every python block of docs/LIBRARY.md runs against a real label set, top-k or sampled (the
class-only snippet of the Trainer example is run by tests/student_train/test_library.py as
examples/hf_trainer.py)."""
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = open(os.path.join(REPO, "docs", "LIBRARY.md")).read()
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", TEXT, re.S) if "class KDTrainer" not in b]


def test_there_are_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_block_runs(i, request, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    # the page's label sets: `make demo`'s top-k set, and a `--targets sampled` one
    name, fixture = (("train_sampled", "sampled_set") if "labels/train_sampled" in BLOCKS[i]
                     else ("train", "label_set"))
    path = request.getfixturevalue(fixture)
    path = path["out"] if fixture == "label_set" else path[0]
    code = BLOCKS[i].replace(f'"runs/demo/labels/{name}"', repr(path))
    assert repr(path) in code
    exec(compile(code, f"docs/LIBRARY.md block {i}", "exec"), {})
