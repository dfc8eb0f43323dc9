"""Experiments 2, 4 and 5 of the study (study/lambda_sweep.py, context_distillation.py,
multi_level.py) end to end in --quick mode: real labelling (vLLM through the Beam job), training
and evaluation of every arm on a few examples. Asserts that each writes its table and plot to
--out and leaves docs/study alone; not the findings (too few steps to mean anything).

The three scripts' ``main`` run in one child process, as `make study` would run them one after
the other, so that they share the imports and the engines of the teachers they have in common."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = [("lambda_sweep", "lambda", ["lambda", "slice (shift)", "copied error", "overall"]),
           ("context_distillation", "context", ["arm", "init", "agree", "score", "generate",
                                                "ce", "teacher without context"]),
           ("multi_level", "multi_level", ["off", "mean-mse-w0.1", "mean-cosine-w1",
                                           "tokens-mse-w0.1", "tokens-cosine-w1",
                                           "held-out top-1 agr %"])]
RUNNER = """
import sys
sys.path[:0] = [{study!r}]
from pipeline.teacher import shutdown_all
try:
    for script in {scripts!r}:
        assert __import__(script).main(["--quick", "--out", {out!r} + "/" + script]) == 0
finally:
    shutdown_all()
"""


def test_quick_runs_write_their_tables(tmp_path):
    docs = {name: ROOT / "docs" / "study" / f"{name}.md" for _, name, _ in SCRIPTS}
    before = {k: p.read_bytes() if p.exists() else None for k, p in docs.items()}
    code = RUNNER.format(study=str(ROOT / "study"), scripts=[s for s, _, _ in SCRIPTS],
                         out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for script, name, cells in SCRIPTS:
        text = (tmp_path / script / f"{name}.md").read_text()
        assert "## Protocol" in text and "## Results" in text and "pending" not in text
        table = [line for line in text.splitlines() if line.startswith("| ")]
        assert len(table) >= 3, script
        for cell in cells:
            assert cell in text, (script, cell)
        assert "nan" not in "\n".join(table), script
        assert (tmp_path / script / f"{name}.png").stat().st_size > 1000
    # --quick leaves the committed results alone
    assert {k: p.read_bytes() if p.exists() else None for k, p in docs.items()} == before
