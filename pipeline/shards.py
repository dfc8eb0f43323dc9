"""Encode labelled examples as schema-v1 Arrow tables and commit them as Parquet shards.

A shard is named ``<chunk>-<bytes>.parquet``: the content hash of the chunk it came from (what
reuse looks up) and the hash of its own bytes. It is written to a temporary name and renamed into
place, so readers never see half a file, and a record naming a file always describes that file's
bytes, even when two runs label the same chunk at once.
"""
import hashlib
import io
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.teacher import Labels
from pipeline.tokenize import Tokenized
from schemas import (REJECT_SCHEMA, ShardInfo, compact, hidden_column, proj_column, row_schema,
                     sampled)

ROW_GROUP_ROWS = 256


def chunk_name(items: list[Tokenized]) -> str:
    h = hashlib.sha256()
    for t in sorted(items, key=lambda t: t.id):
        h.update(f"{t.id}\0{t.raw_ids}\0{t.simplified_ids}\n".encode())
    return f"part-{h.hexdigest()[:20]}"


def shard_chunk(path: str) -> str:
    """The chunk name of a shard path (``shards/<chunk>-<bytes hash>.parquet``)."""
    return path.rsplit("/", 1)[-1].rsplit("-", 1)[0]


def _list_of_lists(rows: list[np.ndarray], k: int, dtype) -> pa.Array:
    """(n_i, k) arrays -> list<list<dtype>>, one row per array."""
    return compact.nested_list(np.concatenate(rows).astype(dtype), k, [len(r) for r in rows])


def _list(rows: list[np.ndarray], dtype) -> pa.Array:
    flat = np.concatenate([np.asarray(r).reshape(-1) for r in rows]).astype(dtype)
    off = np.concatenate([[0], np.cumsum([np.asarray(r).size for r in rows])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(off), pa.array(flat))


def build_table(items: list[tuple[Tokenized, Labels]], k: int, hidden_layers: tuple[int, ...],
                metadata: dict, encoding: str = "plain") -> pa.Table:
    """One raw row per example, plus a simplified row carrying the same labels when present.

    ``encoding``: "plain" (the row schema as is) or "compact" (``schemas.compact``).
    ``metadata["targets"]`` (absent: ``topk``) picks the soft-label columns: ``sampled`` /
    ``both`` add the ``sampled_*`` columns (``sampled_logweights`` when
    ``metadata["sampled"]["proposal_temperature"] != 1``), ``sampled`` drops ``topk_*``.
    """
    if encoding not in compact.ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}: use one of {compact.ENCODINGS}")
    rows = []  # (id, view, ids, start, labels)
    for tok, lab in sorted(items, key=lambda x: x[0].id):
        rows.append((tok.id, "raw", tok.raw_ids, tok.raw_start, lab))
        if tok.simplified_ids is not None:
            rows.append((tok.id, "simplified", tok.simplified_ids, tok.simplified_start, lab))
    targets = metadata.get("targets", "topk")
    weights = targets != "topk" and metadata["sampled"]["proposal_temperature"] != 1.0
    cols = {
        "example_id": pa.array([r[0] for r in rows], pa.string()),
        "view": pa.array([r[1] for r in rows], pa.string()),
        "input_ids": _list([np.asarray(r[2]) for r in rows], np.int32),
        "label_start": pa.array([r[3] for r in rows], pa.int32()),
        "target_logprob": _list([r[4].target_logprob for r in rows], np.float32),
    }
    if targets != "sampled":
        cols["topk_ids"] = _list_of_lists([r[4].topk_ids for r in rows], k, np.int32)
        cols["topk_logprobs"] = _list_of_lists([r[4].topk_logprobs for r in rows], k, np.float32)
    if targets != "topk":
        cols.update(sampled.encode(
            np.concatenate([r[4].samples.ids for r in rows]),
            np.concatenate([r[4].samples.counts for r in rows]),
            np.concatenate([r[4].samples.logweights for r in rows]) if weights else None,
            np.array([len(r[4].target_logprob) for r in rows])))
    for layer in hidden_layers:
        cols[hidden_column(layer)] = _list([r[4].hidden[layer] for r in rows], np.float32)
    proj_layers = tuple(sorted(rows[0][4].proj)) if rows else ()
    for layer in proj_layers:
        proj = [r[4].proj[layer] for r in rows]
        cols[proj_column(layer)] = _list_of_lists(proj, proj[0].shape[1], np.float32)
    schema = row_schema(hidden_layers, metadata, proj_layers, targets, weights)
    table = pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)
    return compact.encode_table(table) if encoding == "compact" else table


def commit_bytes(out_dir: str, rel_path: str, data: bytes) -> None:
    """Write ``data`` to ``out_dir/rel_path`` through a temporary name and a rename."""
    fs, root = fsspec.core.url_to_fs(out_dir)
    final = f"{root}/{rel_path}"
    fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{final.rsplit('/', 1)[0]}/.tmp-{uuid.uuid4().hex}"
    fs.pipe(tmp, data)
    fs.mv(tmp, final)


def row_group_bounds(ids: list[str], target: int = ROW_GROUP_ROWS) -> list[int]:
    """Row-group end offsets of about ``target`` rows that never split one example's rows."""
    ends, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (i - start >= target and ids[i] != ids[i - 1]):
            ends.append(i)
            start = i
    return ends


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    if "example_id" not in table.column_names:  # rejects: plain row groups
        pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS, compression="zstd")
        return buf.getvalue()
    with pq.ParquetWriter(buf, table.schema, compression="zstd",
                          **compact.parquet_options(table.schema)) as writer:
        start = 0
        for end in row_group_bounds(table["example_id"].to_pylist()):
            writer.write_table(table.slice(start, end - start), row_group_size=end - start)
            start = end
    return buf.getvalue()


def write_shard(out_dir: str, items: list[tuple[Tokenized, Labels]], k: int,
                hidden_layers: tuple[int, ...], metadata: dict, chunk: str,
                encoding: str = "plain") -> ShardInfo:
    """Commit one chunk's shard (``chunk``: ``chunk_name`` of the chunk as it came in; in generate
    mode that is the prompts, known before the responses; ``encoding``: see ``build_table``)."""
    table = build_table(items, k, hidden_layers, metadata, encoding)
    data = parquet_bytes(table)
    sha = hashlib.sha256(data).hexdigest()
    rel = f"shards/{chunk}-{sha[:12]}.parquet"
    commit_bytes(out_dir, rel, data)
    tokens = pc.sum(pc.list_value_length(table["target_logprob"])).as_py()
    return ShardInfo(rel, table.num_rows, tokens, len(data), sha)


def write_rejects(out_dir: str, rejects: list[dict]) -> dict:
    rejects = sorted(rejects, key=lambda r: (r["source"], r["line"], r["view"]))
    table = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
    rel = "rejects/rejects.parquet"
    commit_bytes(out_dir, rel, parquet_bytes(table))
    return {"path": rel, "rows": len(rejects)}
