"""kd's output: engine and library writes (any fd-1/2 writer, child processes included) go to the
log file; kd's own lines to the terminal; -v shows everything there."""
import logging
import os
import subprocess
import sys
import warnings

import kd_cli


def test_engine_output_goes_to_the_log(tmp_path, capfd):
    log = tmp_path / "kd-label.log"
    with kd_cli.quiet_output(str(log), verbose=False) as term:
        os.write(1, b"engine stdout from C\n")
        os.write(2, b"engine stderr from C\n")
        print("library print")
        warnings.warn("a library warning")
        subprocess.run([sys.executable, "-c", "print('worker process output')"], check=True)
        logging.getLogger("kd.label").info("stage: 4 shards, 4000 rows, 667 tokens/s")
        logging.getLogger("kd.label").debug("committed shard 3")
        print("the final table", file=term)
    out, err = capfd.readouterr()
    shown = out + err
    assert "stage: 4 shards" in shown and "the final table" in shown
    for noise in ("engine stdout", "engine stderr", "library print", "a library warning",
                  "worker process output", "committed shard 3"):
        assert noise not in shown
        assert noise in log.read_text()
    os.write(1, b"after\n")  # the descriptors are back
    assert "after" in capfd.readouterr().out


def test_verbose_shows_everything(tmp_path, capfd):
    log = tmp_path / "kd-train.log"
    with kd_cli.quiet_output(str(log), verbose=True) as term:
        os.write(2, b"engine stderr from C\n")
        logging.getLogger("kd").info("a stage")
        print("summary", file=term)
    out, err = capfd.readouterr()
    assert "engine stderr" in err and "a stage" in err and "summary" in out
    assert "engine stderr" in log.read_text()  # and a copy of the descriptors in the log
    os.write(2, b"after\n")  # the descriptors are back
    assert "after" in capfd.readouterr().err and "after" not in log.read_text()


def test_errors_reach_the_terminal(tmp_path, capfd):
    code = kd_cli.main(["train", "--labels", str(tmp_path / "missing"), "--student",
                        "demo/student.json", "--out", str(tmp_path / "out"), "--steps", "1"])
    out, err = capfd.readouterr()
    assert code == 1
    assert "kd train: error: no manifest.json" in out + err
    assert str(tmp_path / "out" / "kd-train.log") in out + err
    assert "Traceback" in (tmp_path / "out" / "kd-train.log").read_text()


def test_speed_advice_summarised_once(tmp_path):
    log = tmp_path / "kd-label.log"
    log.write_text("WARNING [cpu_worker.py:114] libtcmalloc is not found in LD_PRELOAD. For best\n"
                   "WARNING [cpu_worker.py:114] libiomp is not found in LD_PRELOAD. For best\n" * 3)
    advice = kd_cli.speed_advice(str(log))
    assert advice.count("libiomp") == 1 and advice.count("libtcmalloc") == 1
    log.write_text("nothing to say\n")
    assert kd_cli.speed_advice(str(log)) is None


def test_label_progress_bar(tmp_path):
    """kd label's progress bar counts the commit records of this run's key (shards done of the
    input's chunks) with rows and tokens/s, up to the last one; records made before the run or
    of another key are not counted."""
    import io
    import json
    import time
    import types
    from pipeline.cli import Progress
    (tmp_path / "in.jsonl").write_text('{"id": "1"}\n' * 5)
    commits = tmp_path / "out" / "commits"
    commits.mkdir(parents=True)

    def commit(chunk, key, rows):
        (commits / f"{chunk}.json").write_text(json.dumps(
            {"chunk": chunk, "cache_key": key, "shard": {"rows": rows, "tokens": 10 * rows}}))
    commit("old", "k", 2)  # reused from an earlier run
    term = io.StringIO()
    job = types.SimpleNamespace(input=str(tmp_path / "in.jsonl"), out=str(tmp_path / "out"),
                                shard_rows=2)
    with Progress(job, "k", file=term, every=0.05):
        time.sleep(0.2)
        commit("c1", "k", 2)
        commit("c2", "other-key", 2)
        time.sleep(0.3)
        commit("c3", "k", 1)  # the last shard commits as the job ends: shown too
    shown = term.getvalue()
    assert "label:" in shown and "1/3" in shown and "rows=2," in shown
    final = shown.split("\r")[-1]
    assert "2/3" in final and "rows=3," in final and "3/3" not in shown
