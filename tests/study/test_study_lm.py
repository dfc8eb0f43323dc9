"""The language-model study scripts run end to end in --quick mode and write their tables.

These check the arms run and report; they do not assert the study's findings."""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def run_quick(script: str, out, shared=None) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if shared is not None:  # share training runs between experiments, as `make study` does
        env["KD_STUDY_RUNS"] = str(shared)
    subprocess.run([sys.executable, str(ROOT / "study" / script), "--quick", "--out", str(out)],
                   check=True, env=env, cwd=ROOT, timeout=1800)


def test_lm_experiments_quick_write_their_tables_and_share_runs(tmp_path):
    """Experiments 3 and 6 as `make study` runs them: one directory of shared training runs, so
    experiment 6's online arm reuses experiment 3's forward-KL runs where the settings match."""
    from study import fidelity, kl_direction
    shared = tmp_path / "shared-runs"
    run_quick("kl_direction.py", tmp_path / "kl", shared)
    run_quick("fidelity.py", tmp_path / "fid", shared)

    kl = tmp_path / "kl"
    table = (kl / "table.md").read_text()
    for arm in kl_direction.ARMS:
        assert f"| {arm} |" in table
    rows = json.loads((kl / "results.json").read_text())["rows"]
    assert {r["arm"] for r in rows} == set(kl_direction.ARMS)
    for r in rows:
        assert all(r[m] == r[m] for m in kl_direction.METRICS)
        assert r["entropy"] > 0 and 0 <= r["mode_share"] <= 1 and r["sample_nll"] > 0

    fid = tmp_path / "fid"
    table = (fid / "table.md").read_text()
    for arm in fidelity.ARMS:
        assert f"| {arm} |" in table
    result = json.loads((fid / "results.json").read_text())
    assert {r["arm"] for r in result["rows"]} == set(fidelity.ARMS)
    for r in result["rows"]:
        assert all(r[m] == r[m] for m in fidelity.METRICS)  # no NaN
        assert r["kl"] >= 0 and 0 <= r["top1_agree"] <= 1 and 0 <= r["ece"] <= 1
    assert (fid / "kept_share.png").stat().st_size > 0

    # the learning-rate sweeps: the same run for experiment 3's forward KL and 6's online arm,
    # trained once; reverse KL and CE-only have runs of their own
    for lr in fidelity.LRS:
        fwd, onl = kl / "sweep" / f"forward_kl-lr{lr:g}", fid / "sweep" / f"online-lr{lr:g}"
        assert fwd.is_symlink() and onl.is_symlink()
        assert os.path.realpath(fwd) == os.path.realpath(onl)
        assert os.path.realpath(kl / "sweep" / f"reverse_kl-lr{lr:g}") != os.path.realpath(fwd)
        assert os.path.realpath(fid / "sweep" / f"ce-lr{lr:g}") != os.path.realpath(fwd)
    trained = [d for d in shared.iterdir() if (d / "trained.json").exists()]
    links = [p for d in (kl, fid) for p in (d / "sweep").iterdir()]
    links += [p for d in (kl, fid) for p in (d / "runs").iterdir()]
    assert len({os.path.realpath(p) for p in links}) == len(trained) < len(links)
