"""Experiments 2, 4 and 5 of the study (study/lambda_sweep.py, context_distillation.py,
multi_level.py) end to end in --quick mode: real labelling (vLLM through the Beam job), training
and evaluation of every arm on a few examples. Asserts that each writes its table and plot to
--out and leaves docs/study alone; not the findings (too few steps to mean anything)."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = [("lambda_sweep", "lambda", ["lambda", "slice (shift)", "copied error", "overall"]),
           ("context_distillation", "context", ["arm", "init", "agree", "score", "generate",
                                                "ce", "teacher without context"]),
           ("multi_level", "multi_level", ["off", "mean-mse", "mean-cosine", "tokens-mse",
                                           "tokens-cosine", "held-out top-1 agr %"])]


@pytest.mark.parametrize("script,name,cells", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_quick_run_writes_its_table(script, name, cells, tmp_path):
    docs = ROOT / "docs" / "study" / f"{name}.md"
    before = docs.read_bytes() if docs.exists() else None
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, str(ROOT / "study" / f"{script}.py"), "--quick",
                           "--out", str(tmp_path)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = (tmp_path / f"{name}.md").read_text()
    assert "## Protocol" in text and "## Results" in text and "pending" not in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) >= 3
    for cell in cells:
        assert cell in text, cell
    assert "nan" not in "\n".join(table)
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    # --quick leaves the committed results alone
    assert (docs.read_bytes() if docs.exists() else None) == before
