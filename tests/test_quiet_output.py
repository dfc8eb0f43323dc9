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
