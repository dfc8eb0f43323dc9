"""Checks on shards: schema, per-row consistency, checksums."""
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import compact
from schemas.rows import VIEWS, proj_column, row_schema


class ShardError(ValueError):
    """A shard that is missing, corrupted or does not follow the schema."""


def sha256_file(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verify_shard(fs, path: str, sha256: str) -> None:
    try:
        got = sha256_file(fs, path)
    except FileNotFoundError:
        raise ShardError(f"shard {path} is listed in the manifest but missing") from None
    if got != sha256:
        raise ShardError(f"shard {path} is corrupted: sha256 {got} != manifest {sha256}")


def validate_table(table: pa.Table, top_k: int) -> None:
    """Raise ShardError unless ``table`` is a well-formed schema-v1 label table (a compact one:
    unless it decodes to one)."""
    try:
        table = compact.to_plain(table)
    except ValueError as e:
        raise ShardError(f"the shard's labels do not decode: {e}") from None
    def layers(prefix):
        return tuple(int(n[len(prefix):]) for n in table.column_names if n.startswith(prefix))
    proj = layers("hidden_proj_l")
    expected = row_schema(layers("hidden_mean_l"), proj_layers=proj)
    if not table.schema.remove_metadata().equals(expected):
        raise ShardError(f"schema mismatch:\n{table.schema.remove_metadata()}\n"
                         f"expected\n{expected}")
    bad_view = pc.invert(pc.is_in(table["view"], pa.array(VIEWS)))
    if pc.any(bad_view).as_py():
        raise ShardError("view must be 'raw' or 'simplified'")
    n_ids = pc.list_value_length(table["input_ids"]).to_numpy()
    start = table["label_start"].to_numpy()
    n_resp = pc.list_value_length(table["topk_ids"]).to_numpy()
    if (start < 1).any() or (start + n_resp != n_ids).any():
        raise ShardError("label_start + len(topk_ids) must equal len(input_ids), label_start >= 1")
    if not (pc.list_value_length(table["target_logprob"]).to_numpy() == n_resp).all():
        raise ShardError("target_logprob must have one entry per response token")
    for layer in proj:
        if not (pc.list_value_length(table[proj_column(layer)]).to_numpy() == n_resp).all():
            raise ShardError(f"{proj_column(layer)} must have one entry per response token")
    inner = pc.list_value_length(pc.list_flatten(table["topk_ids"])).to_numpy()
    if not (inner == top_k).all():
        raise ShardError(f"every position must carry exactly k={top_k} teacher ids")
    lp = pc.list_flatten(pc.list_flatten(table["topk_logprobs"])).to_numpy().reshape(-1, top_k)
    if (lp > 1e-6).any() or (np.diff(lp, axis=1) > 1e-6).any():
        raise ShardError("top-k log-probs must be <= 0 and sorted in descending order")
