"""Shared fixtures. One vLLM engine serves the whole session (started on first use)."""
import json
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEACHER = str(ROOT / "demo" / "teacher")
DATA = ROOT / "demo" / "data"
TOP_K = 8
N_EXAMPLES = 48
PROJ_DIM = 8


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu are skipped, not passed, where CUDA is missing (or too few devices)."""
    import torch
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        mark = item.get_closest_marker("gpu")
        need = mark.kwargs.get("devices", 1) if mark else 0
        if mark and have < need:
            item.add_marker(pytest.mark.skip(reason=f"needs {need} CUDA device(s), found {have}"))


@pytest.fixture(scope="session")
def teacher_dir() -> str:
    return TEACHER


@pytest.fixture(scope="session")
def teacher_config():
    from pipeline.teacher import TeacherConfig, model_config
    n_layers = int(model_config(TEACHER)["num_hidden_layers"])
    # embeddings, a middle layer and the final layer, plus per-token projections: all one pass
    return TeacherConfig(model_dir=TEACHER, top_k=TOP_K, hidden_layers=(0, n_layers // 2, n_layers),
                         proj_dim=PROJ_DIM, proj_seed=7, enforce_eager=True, kv_cache_gb=0.5)


@pytest.fixture(scope="session")
def teacher(teacher_config):
    from pipeline.teacher import get_teacher, shutdown_all
    yield get_teacher(teacher_config)
    shutdown_all()  # an engine left to die at exit can abort the interpreter


BAD_RAW_LINES = [
    b"this is not json\n",
    b"[1, 2, 3]\n",
    b'{"id": "bad-missing", "prompt": "Copy the word: abc ="}\n',
    b'{"id": "bad-type", "prompt": 5, "response": " x"}\n',
    b'{"id": "bad-empty", "prompt": "Copy the word: abc =", "response": ""}\n',
    b'{"id": "bad-extra", "prompt": "p", "response": " r", "x": 1}\n',
    b'{"id": "bad-utf8", "prompt": "\xff\xfe", "response": " r"}\n',
    b'{"id": "bad-long", "prompt": "' + b"a" * 400 + b'", "response": " r"}\n',
]


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory) -> dict:
    """A slice of the demo data plus bad records of every kind and their expected count."""
    d = tmp_path_factory.mktemp("inputs")
    raw = (DATA / "train_raw.jsonl").read_bytes().splitlines(keepends=True)[:N_EXAMPLES]
    simp = (DATA / "train_simplified.jsonl").read_bytes().splitlines(keepends=True)[:N_EXAMPLES]
    first_id = json.loads(raw[0])["id"]
    dup = json.dumps({"id": first_id, "prompt": "Copy the word: dup =", "response": " dup"})
    (d / "raw.jsonl").write_bytes(b"".join(raw + BAD_RAW_LINES) + dup.encode() + b"\n\n")
    orphan = json.dumps({"id": "no-such-raw", "prompt": "cp x ="}).encode() + b"\n"
    (d / "simplified.jsonl").write_bytes(b"".join(simp) + orphan)
    return {"raw": str(d / "raw.jsonl"), "simplified": str(d / "simplified.jsonl"),
            "good": N_EXAMPLES, "rows_in": N_EXAMPLES * 2 + len(BAD_RAW_LINES) + 2,
            "rejected": len(BAD_RAW_LINES) + 2}


@pytest.fixture(scope="session")
def label_set(teacher, teacher_config, demo_inputs, tmp_path_factory) -> dict:
    """The demo slice labelled by the Beam job (FnApiRunner, in this process: shares the engine)."""
    from pipeline import job
    out = str(tmp_path_factory.mktemp("labels") / "set")
    summary = job.run(job.LabelJob(teacher_config, demo_inputs["raw"], out,
                                   demo_inputs["simplified"], shard_rows=20), [])
    return {"out": out, "summary": summary}


SAMPLES = 12  # draws per position of the sampled label sets


def label_sampled(teacher_config, demo_inputs, out, encoding="plain", **kw) -> dict:
    """The demo slice labelled with sampled targets (``targets``, ``proposal_temperature``...)."""
    import dataclasses
    from pipeline import job
    cfg = dataclasses.replace(teacher_config, samples=SAMPLES, **kw)
    if cfg.targets == "sampled":
        cfg = dataclasses.replace(cfg, top_k=0)
    return job.run(job.LabelJob(cfg, demo_inputs["raw"], out, demo_inputs["simplified"],
                                shard_rows=20, encoding=encoding), [])


@pytest.fixture(scope="session")
def sampled_set(teacher, teacher_config, demo_inputs, tmp_path_factory) -> tuple[str, dict]:
    """`--targets sampled --samples 12` at proposal temperature 1: (path, job summary)."""
    out = str(tmp_path_factory.mktemp("sampled") / "set")
    return out, label_sampled(teacher_config, demo_inputs, out, targets="sampled")


@pytest.fixture(scope="session")
def both_set(teacher, teacher_config, demo_inputs, tmp_path_factory) -> str:
    """`--targets both --samples 12 --proposal-temperature 2` (importance weights stored)."""
    out = str(tmp_path_factory.mktemp("both") / "set")
    label_sampled(teacher_config, demo_inputs, out, targets="both", proposal_temperature=2.0)
    return out


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto) on loopback; s3fs talks HTTP to it."""
    import boto3
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="kd-labels")
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
