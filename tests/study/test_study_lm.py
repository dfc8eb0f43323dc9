"""The language-model study scripts run end to end in --quick mode and write their tables.

These check the arms run and report; they do not assert the study's findings."""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def run_quick(script: str, out) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "study" / script), "--quick", "--out", str(out)],
                   check=True, env=env, cwd=ROOT, timeout=1800)


def test_fidelity_quick_writes_its_table(tmp_path):
    from study.fidelity import ARMS, METRICS
    run_quick("fidelity.py", tmp_path)
    table = (tmp_path / "table.md").read_text()
    for arm in ARMS:
        assert f"| {arm} |" in table
    result = json.loads((tmp_path / "results.json").read_text())
    assert {r["arm"] for r in result["rows"]} == set(ARMS)
    for r in result["rows"]:
        assert all(r[m] == r[m] for m in METRICS)  # no NaN
        assert r["kl"] >= 0 and 0 <= r["top1_agree"] <= 1 and 0 <= r["ece"] <= 1
    assert (tmp_path / "kept_share.png").stat().st_size > 0


def test_kl_direction_quick_writes_its_table(tmp_path):
    from study.kl_direction import ARMS, METRICS
    run_quick("kl_direction.py", tmp_path)
    table = (tmp_path / "table.md").read_text()
    for arm in ARMS:
        assert f"| {arm} |" in table
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["arm"] for r in rows} == set(ARMS)
    for r in rows:
        assert all(r[m] == r[m] for m in METRICS)
        assert r["entropy"] > 0 and 0 <= r["mode_share"] <= 1 and r["sample_nll"] > 0
