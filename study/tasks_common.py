"""What experiments 2, 4 and 5 share: data from demo/make_data.py, labelling through the same
library call as ``kd label`` (pipeline.job.run), training through student_train.train.train, the
held-out figures of ``kd eval`` (student_train.evaluate), seeds, tables and the machine line.

Full runs train their arms two at a time in spawned processes with one torch thread each.
"""
import json
import multiprocessing
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "demo"))
import make_data  # noqa: E402

TEACHERS = ROOT / "study" / "teachers"
DOCS = ROOT / "docs" / "study"
DEMO_STUDENT = ROOT / "demo" / "student.json"
SEEDS = (0, 1, 2)


# ---------------------------------------------------------------- data

def task_of(raw: dict) -> str:
    """The task of a raw record, read off its instruction."""
    head = raw["prompt"].rsplit(" ", 2)[0]
    for task, (instructions, _, _) in make_data.TASKS.items():
        if head in [i.rstrip() for i in instructions] or head in instructions:
            return task
    raise ValueError(f"no task for prompt {raw['prompt']!r}")


def word_of(raw: dict) -> str:
    return raw["prompt"].split()[-2]


def split(seed: int, n: int, prefix: str, typos: bool = False, tasks: dict | None = None):
    """(raw, simplified) records of ``n`` examples; ``tasks`` a subset/variant of the family."""
    return make_data.make_split(seed, n, prefix, typos, tasks or make_data.TASKS)


def write_split(d: Path, name: str, raw: list, simplified: list | None) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    make_data.write_jsonl(d / f"{name}_raw.jsonl", raw)
    out = {"raw": str(d / f"{name}_raw.jsonl"), "simplified": None}
    if simplified is not None:
        make_data.write_jsonl(d / f"{name}_simplified.jsonl", simplified)
        out["simplified"] = str(d / f"{name}_simplified.jsonl")
    return out


# ---------------------------------------------------------------- labelling (kd label)

def label(teacher: str, files: dict, out: str, mode: str = "score", top_k: int = 8,
          hidden_layers: tuple = (), proj_dim: int = 0, temperature: float = 1.0,
          max_new_tokens: int = 20) -> str:
    """The library call ``kd label`` makes (Beam FnApiRunner, vLLM in this process, fp32).
    Engines are started eager and shared by every call of this process; ``shutdown`` stops them
    at its end (an engine cannot be restarted beside one that was shut down)."""
    from pipeline import job
    from pipeline.teacher import SamplingConfig, TeacherConfig
    cfg = TeacherConfig(model_dir=teacher, top_k=top_k, hidden_layers=tuple(hidden_layers),
                        proj_dim=proj_dim, enforce_eager=True, kv_cache_gb=0.25)
    job.run(job.LabelJob(cfg, files["raw"], out, files.get("simplified"), mode=mode,
                         sampling=SamplingConfig(max_new_tokens, temperature, 1.0, 0)), [])
    return out


def prompts_only(files: dict, d: Path, name: str) -> dict:
    """{id, prompt} records for generate mode (the gold responses dropped)."""
    rows = [json.loads(line) for line in open(files["raw"])]
    path = d / f"{name}_prompts.jsonl"
    make_data.write_jsonl(path, [{"id": r["id"], "prompt": r["prompt"]} for r in rows])
    return {"raw": str(path), "simplified": files.get("simplified")}


def shutdown() -> None:
    from pipeline.teacher import shutdown_all
    shutdown_all()


# ---------------------------------------------------------------- training (kd train)

def evaluate_model(model_dir: str, evals: dict) -> dict:
    """``evals``: name -> (labels dir, view, with_kd_figures). Greedy exact match (per example)
    and, with the flag, ``kd eval``'s CE / top-1 agreement / KL."""
    from student_train.evaluate import evaluate, exact_match
    out = {}
    for name, (labels, view, figures) in evals.items():
        em = exact_match(model_dir, labels, view)
        res = {"exact": em["exact"], "correct": em["correct"], "responses": em["responses"]}
        if figures:
            res.update({k: v for k, v in evaluate(model_dir, labels, view).items()
                        if k in ("ce", "top1_agree", "kl")})
        out[name] = res
    return out


def _run_one(job: dict) -> dict:
    """Train one arm (unless its --out already holds a model), then evaluate it."""
    import torch
    if job.pop("_one_thread", False):
        torch.set_num_threads(1)
    from student_train.train import TrainConfig, train
    evals = job.pop("evals")
    cfg = TrainConfig(**job)
    if not (Path(cfg.out) / "model.safetensors").exists():
        train(cfg)
    return {"out": cfg.out, **evaluate_model(cfg.out, evals)}


def _init_worker() -> None:
    if hasattr(os, "sched_setaffinity"):  # a vLLM engine may have pinned the parent to one core
        os.sched_setaffinity(0, range(os.cpu_count()))
    os.environ["OMP_NUM_THREADS"] = "1"


def run_all(jobs: list[dict], parallel: int) -> list[dict]:
    """Train and evaluate every job (TrainConfig fields + ``evals``), results in job order.
    ``parallel`` > 1 spawns that many one-thread processes; 1 runs them in this process."""
    jobs = [dict(j, workers=j.get("workers", 0)) for j in jobs]
    if parallel <= 1:
        return [_run_one(j) for j in jobs]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(parallel, initializer=_init_worker, maxtasksperchild=8) as pool:
        return pool.map(_run_one, [dict(j, _one_thread=True) for j in jobs], chunksize=1)


def student_config_from(model_dir: str | Path, out: Path) -> str:
    """A fresh-weights config JSON with the architecture of ``model_dir`` (a teacher)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    keep = ["model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
            "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({k: cfg[k] for k in keep if k in cfg}, indent=1))
    return str(out)


# ---------------------------------------------------------------- evaluation (kd eval)

def decode(model_dir: str, responses: dict) -> dict:
    """Token ids per example -> text (EOS dropped)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    return {k: tok.decode(v, skip_special_tokens=True) for k, v in responses.items()}


def choose_lr(scores: dict) -> float:
    """The learning rate with the best validation score (higher is better; ties: lower lr)."""
    return max(sorted(scores), key=lambda lr: (round(scores[lr], 6), -lr))


# ---------------------------------------------------------------- reporting

def mean_std(values) -> tuple[float, float]:
    a = np.asarray(list(values), dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def fmt(values, pct: bool = True, digits: int = 1) -> str:
    m, s = mean_std(values)
    if pct:
        return f"{100 * m:.{digits}f} ± {100 * s:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    """lscpu model name and flags, core count, Python and torch versions."""
    import torch
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        info = ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    model = fields.get("Model name", platform.processor()).strip()
    flags = fields.get("Flags", "").strip()
    return (f"{model}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__}\n\nlscpu flags: `{flags}`")


def load_note(start: tuple) -> str:
    """The 1-minute load average at the start and the end of a run (other work on the machine)."""
    end = os.getloadavg()[0]
    return (f"1-minute load average {start[0]:.1f} at the start, {end:.1f} at the end (this "
            "run keeps about 2 busy; more means other work shared the machine, which stretches "
            "the wall times but not the figures).")


def write_results(out: Path, name: str, text: str, quick: bool) -> Path:
    """The results file: --out always; docs/study/ too in full mode."""
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(text)
    if not quick:
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / name).write_text(text)
    return out / name


def write_json(out: Path, name: str, obj, quick: bool) -> None:
    """Per-seed figures beside the table: --out always; docs/study/ too in full mode."""
    text = json.dumps(obj, indent=1, sort_keys=True)
    for d in [out] + ([] if quick else [DOCS]):
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text + "\n")


def copy_plot(out: Path, name: str, quick: bool) -> None:
    if not quick:
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / name).write_bytes((out / name).read_bytes())
