"""Checks on shards: schema, per-row consistency, checksums."""
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import compact, sampled
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


def validate_table(table: pa.Table, top_k: int, samples: int | None = None) -> None:
    """Raise ShardError unless ``table`` is a well-formed label table (a compact one: unless it
    decodes to one). Its targets follow from its columns; ``samples``: the expected draws per
    position of sampled targets (None: whatever the first position holds)."""
    try:
        table = compact.to_plain(table)
    except ValueError as e:
        raise ShardError(f"the shard's labels do not decode: {e}") from None
    def layers(prefix):
        return tuple(int(n[len(prefix):]) for n in table.column_names if n.startswith(prefix))
    proj = layers("hidden_proj_l")
    has_topk, has_sampled = "topk_ids" in table.column_names, "sampled_ids" in table.column_names
    targets = ("both" if has_topk else "sampled") if has_sampled else "topk"
    expected = row_schema(layers("hidden_mean_l"), proj_layers=proj, targets=targets,
                          sample_weights="sampled_logweights" in table.column_names)
    if not table.schema.remove_metadata().equals(expected):
        raise ShardError(f"schema mismatch:\n{table.schema.remove_metadata()}\n"
                         f"expected\n{expected}")
    bad_view = pc.invert(pc.is_in(table["view"], pa.array(VIEWS)))
    if pc.any(bad_view).as_py():
        raise ShardError("view must be 'raw' or 'simplified'")
    n_ids = pc.list_value_length(table["input_ids"]).to_numpy()
    start = table["label_start"].to_numpy()
    n_resp = pc.list_value_length(table["target_logprob"]).to_numpy()
    if (start < 1).any() or (start + n_resp != n_ids).any():
        raise ShardError("label_start + len(target_logprob) must equal len(input_ids), "
                         "label_start >= 1")
    for name in ("topk_ids", "sampled_ids"):
        if name in table.column_names and not (
                pc.list_value_length(table[name]).to_numpy() == n_resp).all():
            raise ShardError(f"{name} must have one entry per response token")
    for layer in proj:
        if not (pc.list_value_length(table[proj_column(layer)]).to_numpy() == n_resp).all():
            raise ShardError(f"{proj_column(layer)} must have one entry per response token")
    if has_sampled:
        try:
            n = samples
            if n is None:
                counts = pc.list_flatten(table["sampled_counts"])
                n = int(pc.sum(counts[0]).as_py()) if len(counts) else 1
            ids, counts, _ = sampled.decode(table, n)
            sampled.check(ids, counts, n)
        except ValueError as e:
            raise ShardError(f"sampled targets: {e}") from None
        if has_topk and len(ids):
            head = pc.list_flatten(pc.list_flatten(table["topk_ids"])).to_numpy().reshape(len(ids), -1)
            if (np.equal(ids[:, :, None], head[:, None, :]) & (counts > 0)[:, :, None]).any():
                raise ShardError("with both targets the sampled ids lie outside the top k")
    if not has_topk:
        return
    inner = pc.list_value_length(pc.list_flatten(table["topk_ids"])).to_numpy()
    if not (inner == top_k).all():
        raise ShardError(f"every position must carry exactly k={top_k} teacher ids")
    lp = pc.list_flatten(pc.list_flatten(table["topk_logprobs"])).to_numpy().reshape(-1, top_k)
    if (lp > 1e-6).any() or (np.diff(lp, axis=1) > 1e-6).any():
        raise ShardError("top-k log-probs must be <= 0 and sorted in descending order")
