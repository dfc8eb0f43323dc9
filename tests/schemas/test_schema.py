"""Schema v1 round trip, validation, manifest and fingerprints."""
import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from schemas.labelset import Labels, Tokenized, build_table
from schemas import (Manifest, ShardError, ShardInfo, load_manifest, read_file_metadata,
                     teacher_fingerprint, tokenizer_fingerprint, validate_table, write_manifest)
from schemas.manifest import strip_credentials

K = 4


def fake_items(n=3, d=5, seed=0):
    """Synthetic labels (no teacher involved): enough to exercise encoding and checks."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        resp = list(rng.integers(5, 50, size=3 + i))
        raw = [1, 7, 8, 9] + resp
        lp = -np.sort(rng.random((len(resp), K)).astype(np.float32) * 5, axis=1)
        lab = Labels(rng.integers(0, 50, (len(resp), K)).astype(np.int32), lp,
                     lp[:, 0].copy(), {2: rng.random(d).astype(np.float32)})
        items.append((Tokenized(f"id{i}", raw, 4, [1, 3] + resp, 2), lab))
    return items


def test_round_trip_through_parquet():
    items = fake_items()
    table = build_table(items, K, (2,), {"k": K, "label_mode": "score"})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    back = pq.read_table(io.BytesIO(buf.getvalue()))
    validate_table(back, K)
    assert back.num_rows == 6 and back["view"].to_pylist() == ["raw", "simplified"] * 3
    rows = back.to_pylist()
    tok, lab = items[1]
    raw, simp = rows[2], rows[3]
    assert raw["input_ids"] == tok.raw_ids and simp["input_ids"] == tok.simplified_ids
    assert raw["input_ids"][raw["label_start"]:] == simp["input_ids"][simp["label_start"]:]
    assert np.allclose(raw["topk_logprobs"], lab.topk_logprobs)
    assert raw["topk_ids"] == simp["topk_ids"] == lab.topk_ids.tolist()
    assert np.allclose(raw["hidden_mean_l2"], lab.hidden[2])
    meta = back.schema.metadata
    assert meta[b"kd.schema_version"] == b"1" and json.loads(meta[b"kd.k"]) == K


def test_file_metadata_reader(tmp_path):
    table = build_table(fake_items(), K, (2,), {"k": K, "teacher_fingerprint": "abc"})
    pq.write_table(table, tmp_path / "x.parquet")
    meta = read_file_metadata(str(tmp_path / "x.parquet"))
    assert meta == {"schema_version": 1, "k": K, "teacher_fingerprint": "abc"}


def test_validation_rejects_unsorted_logprobs_and_bad_lengths():
    items = fake_items()
    items[0][1].topk_logprobs[0] = items[0][1].topk_logprobs[0][::-1].copy()
    with pytest.raises(ShardError, match="descending"):
        validate_table(build_table(items, K, (2,), {}), K)
    items = fake_items()
    with pytest.raises(ShardError, match="exactly k"):
        validate_table(build_table(items, K, (2,), {}), K + 1)
    table = build_table(fake_items(), K, (2,), {})
    bad = table.set_column(3, "label_start", table["label_start"].cast("int64"))
    with pytest.raises(ShardError, match="schema"):
        validate_table(bad, K)


def test_manifest_round_trip(tmp_path):
    m = Manifest(schema_version=1, cache_key="k1", teacher={"path": "t", "fingerprint": "f"},
                 tokenizer_fingerprint="tf", label_config={"top_k": 4},
                 shards=[ShardInfo("shards/a.parquet", 2, 10, 100, "00")],
                 rejects={"path": "rejects/rejects.parquet", "rows": 0},
                 counts={"rows_in": 2, "rows_labelled": 2, "rows_rejected": 0})
    write_manifest(str(tmp_path), m)
    assert load_manifest(str(tmp_path)) == m
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(FileNotFoundError, match="not a label set"):
        load_manifest(str(tmp_path / "nothing"))


def test_credentials_never_recorded():
    assert strip_credentials("s3://AKIA:secret@bucket/x") == "s3://bucket/x"
    assert strip_credentials("/local/path") == "/local/path"


def test_fingerprints_track_weights_and_tokenizer(teacher_dir, tmp_path):
    copy = tmp_path / "t"
    shutil.copytree(teacher_dir, copy)
    assert teacher_fingerprint(str(copy)) == teacher_fingerprint(teacher_dir)
    assert tokenizer_fingerprint(str(copy)) == tokenizer_fingerprint(teacher_dir)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # flip one byte of the last tensor
    weights.write_bytes(bytes(data))
    assert teacher_fingerprint(str(copy)) != teacher_fingerprint(teacher_dir)


def test_per_token_projection_columns():
    """hidden_proj_l<L>: one R-vector per response token, validated; the matrix is rebuilt from
    (d, R, seed) alone and is the same every time."""
    import pyarrow as pa
    from schemas import proj_column, projection_matrix
    items = fake_items()
    for _, lab in items:
        lab.proj = {2: np.ones((len(lab.target_logprob), 6), np.float32)}
    table = build_table(items, K, (2,), {})
    validate_table(table, K)
    assert table.schema.field(proj_column(2)).type == pa.list_(pa.list_(pa.float32()))
    rows = table.to_pylist()
    assert all(len(r[proj_column(2)]) == len(r["target_logprob"]) for r in rows)
    i = table.schema.get_field_index(proj_column(2))
    bad = table.set_column(i, table.schema.field(i),
                           pa.array([r[proj_column(2)][:-1] for r in rows],
                                    pa.list_(pa.list_(pa.float32()))))
    with pytest.raises(ShardError, match="one entry per response token"):
        validate_table(bad, K)
    p = projection_matrix(256, 16, 7)
    assert p.shape == (256, 16) and p.dtype == np.float32
    np.testing.assert_array_equal(p, projection_matrix(256, 16, 7))
    assert not np.array_equal(p, projection_matrix(256, 16, 8))
    assert abs(float((p ** 2).sum(0).mean()) - 256 / 16) < 2  # columns of squared norm ~ d / R


def test_schemas_stand_alone():
    """Importing the label-set contract pulls in no engine, Beam or torch and sets no engine
    variables; the schema tests themselves import nothing above schemas/."""
    import ast
    import os
    import pathlib
    import subprocess
    import sys
    code = ("import os, sys, schemas, schemas.labelset, schemas.files, schemas.cache; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'vllm', "
            "'apache_beam', 'pipeline', 'student_train'}), "
            "sorted(k for k in os.environ if k.startswith('VLLM_')))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[] []"
    for path in pathlib.Path(__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                    [a.name for a in node.names]
                assert not any(n.split(".")[0] in ("pipeline", "student_train") for n in names), \
                    f"{path.name} imports {names}"
