"""Unknown arguments stop every kd command before any work, naming the nearest valid flag."""
import pytest

import kd_cli


def run_kd(argv, capsys):
    with pytest.raises(SystemExit) as e:
        kd_cli.main(argv)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv,bad,near", [
    # the teacher does not exist: reaching any work would fail differently
    (["label", "--teacher", "/nonexistent", "--input", "x", "--out", "y", "--top_k", "64"],
     "--top_k", "--top-k"),
    (["label", "--teacher", "/nonexistent", "--input", "x", "--out", "y", "--shard_rows=5"],
     "--shard_rows", "--shard-rows"),
    (["label", "--teacher", "/nonexistent", "--input", "x", "--out", "y",
      "--runner=DirectRunner", "--direct_num_worker", "2"],
     "--direct_num_worker", "--direct_num_workers"),
    (["train", "--labels", "/nonexistent", "--stpes", "3"], "--stpes", "--steps"),
    (["eval", "--labels", "/nonexistent", "--student", "a", "--jsn", "x"], "--jsn", "--json"),
    (["cache", "ls", "/nonexistent", "--jsno"], "--jsno", "--json"),
    (["cache", "gc", "/nonexistent", "--yess"], "--yess", "--yes"),
])
def test_unknown_flag_names_nearest(argv, bad, near, capsys):
    code, err = run_kd(argv, capsys)
    assert code == 2
    assert f"unknown argument {bad}; did you mean {near}?" in err


def test_stray_value_is_an_error(capsys):
    code, err = run_kd(["label", "--teacher", "/nonexistent", "--input", "x", "--out", "y",
                        "64"], capsys)
    assert code == 2 and "unexpected argument '64'" in err


def test_beam_flags_are_accepted():
    beam = kd_cli.beam_parser()
    assert kd_cli.unknown_argument(["--runner=DirectRunner", "--direct_num_workers", "2",
                                    "--direct_running_mode=multi_processing"], [], beam) is None
    assert kd_cli.unknown_argument(["--top_k", "3"], ["--top-k"], beam) == \
        "unknown argument --top_k; did you mean --top-k?"
