"""Sampled soft-label columns (schema v2): writer and reader side by side, plain and compact.

Per labelled position, N draws from the teacher's distribution (``targets = sampled``) or from
its tail outside the stored top k (``targets = both``), under a proposal q = softmax(log p / tau):

- ``sampled_ids`` list<list<int32>>: the distinct drawn ids, ascending;
- ``sampled_counts`` list<list<uint8>>: how many of the N draws gave each id (they sum to N);
- ``sampled_logweights`` list<list<float32>>: log(p(x) / q(x)) of each id, p the teacher on
  the same support (renormalised to the tail with ``both``); only when tau != 1 (else 0).

Compact shards replace ``sampled_ids`` by ``sampled_id_deltas`` (the first id as is, then the
gaps, >= 1) and write the three columns with BYTE_STREAM_SPLIT and no dictionary.
Readers get padded (T, N) arrays: ids (-1 at padding), counts (0 at padding), log weights.
"""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PLAIN_FIELDS = (pa.field("sampled_ids", pa.list_(pa.list_(pa.int32())), nullable=False),
                pa.field("sampled_counts", pa.list_(pa.list_(pa.uint8())), nullable=False))
WEIGHTS_FIELD = pa.field("sampled_logweights", pa.list_(pa.list_(pa.float32())), nullable=False)
DELTAS_FIELD = pa.field("sampled_id_deltas", pa.list_(pa.list_(pa.int32())), nullable=False)
COLUMNS = ("sampled_ids", "sampled_id_deltas", "sampled_counts", "sampled_logweights")
MAX_SAMPLES = 255  # counts are uint8


def fields(weights: bool, compact: bool = False) -> list[pa.Field]:
    """The sampled columns of a shard schema (``weights``: the proposal is not the teacher)."""
    out = [DELTAS_FIELD if compact else PLAIN_FIELDS[0], PLAIN_FIELDS[1]]
    return out + [WEIGHTS_FIELD] if weights else out


def _ragged(values: np.ndarray, lengths: np.ndarray, positions: np.ndarray) -> pa.Array:
    """Flat values, per-position lengths, per-row position counts -> list<list<>>."""
    inner_off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    inner = pa.ListArray.from_arrays(pa.array(inner_off), pa.array(values))
    outer = np.concatenate([[0], np.cumsum(positions)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(outer), inner)


def encode(ids: np.ndarray, counts: np.ndarray, logweights: np.ndarray | None,
           positions: np.ndarray, compact: bool = False) -> dict[str, pa.Array]:
    """Padded (T, N) arrays (ids ascending, then -1 / count 0) of all rows' positions, and the
    positions per row -> the sampled columns by name."""
    counts = np.asarray(counts)
    keep = counts > 0
    sums = counts.sum(1, dtype=np.int64)
    if len(sums) and (sums != sums[0]).any():
        raise ValueError("every position must carry the same number of draws")
    lengths = keep.sum(1)
    ids = np.asarray(ids, dtype=np.int32)
    flat_ids = ids[keep]
    if compact:
        prev = np.where(keep[:, :-1], ids[:, :-1], 0)
        gaps = ids.copy()
        gaps[:, 1:] = ids[:, 1:] - prev
        flat_ids = gaps[keep]
    out = {"sampled_id_deltas" if compact else "sampled_ids": _ragged(flat_ids, lengths, positions),
           "sampled_counts": _ragged(counts[keep].astype(np.uint8), lengths, positions)}
    if logweights is not None:
        out["sampled_logweights"] = _ragged(np.asarray(logweights, np.float32)[keep], lengths,
                                            positions)
    return out


def decode(table: pa.Table, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A shard table's sampled columns (either encoding) -> padded (T, n) int32 ids (-1 at
    padding), uint8 counts, float32 log weights (None without the column)."""
    compact = "sampled_id_deltas" in table.column_names
    name = "sampled_id_deltas" if compact else "sampled_ids"
    for col in (name, "sampled_counts"):
        if col not in table.column_names:
            raise ValueError(f"a sampled shard needs column {col}")
    per_pos = pc.list_flatten(table[name])
    lengths = pc.list_value_length(per_pos).to_numpy()
    t = len(lengths)
    if t and lengths.max() > n:
        raise ValueError(f"a position holds {lengths.max()} distinct ids, more than N={n} draws")
    row = np.repeat(np.arange(t), lengths)
    start = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    col = np.arange(len(row)) - np.repeat(start, lengths)
    flat = pc.list_flatten(per_pos).to_numpy().astype(np.int32)
    if compact:
        flat = _undelta(flat, lengths)
    counts_flat = pc.list_flatten(pc.list_flatten(table["sampled_counts"])).to_numpy()
    if len(counts_flat) != len(flat):
        raise ValueError("sampled_counts must have one count per sampled id")
    ids = np.full((t, n), -1, np.int32)
    counts = np.zeros((t, n), np.uint8)
    ids[row, col], counts[row, col] = flat, counts_flat
    weights = None
    if "sampled_logweights" in table.column_names:
        w_flat = pc.list_flatten(pc.list_flatten(table["sampled_logweights"])).to_numpy()
        if len(w_flat) != len(flat):
            raise ValueError("sampled_logweights must have one weight per sampled id")
        weights = np.zeros((t, n), np.float32)
        weights[row, col] = w_flat
    return ids, counts, weights


def _undelta(gaps: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per-position cumulative sums of the gaps (flat, positions of ``lengths`` entries)."""
    total = np.cumsum(gaps, dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    before = np.where(start > 0, total[np.maximum(start - 1, 0)], 0)
    return (total - np.repeat(before, lengths)).astype(np.int32)


def delta_column(col, inverse: bool = False) -> pa.Array:
    """``sampled_ids`` <-> ``sampled_id_deltas`` (``inverse``), as list<list<int32>> arrays."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    per_pos = pc.list_flatten(col)
    lengths = pc.list_value_length(per_pos).to_numpy()
    flat = pc.list_flatten(per_pos).to_numpy().astype(np.int32)
    if inverse:
        new = _undelta(flat, lengths)
    else:
        new = flat.copy()
        new[1:] -= flat[:-1]
        first = np.concatenate([[0], np.cumsum(lengths)])[:-1][lengths > 0]
        new[first] = flat[first]
    return _ragged(new, lengths, pc.list_value_length(col).to_numpy())


def check(ids: np.ndarray, counts: np.ndarray, n: int, vocab: int | None = None) -> None:
    """Raise ValueError unless every position holds distinct ascending ids >= 0 whose counts sum
    to n (padding: id -1, count 0, at the end)."""
    keep = counts > 0
    if (counts.sum(1, dtype=np.int64) != n).any():
        raise ValueError(f"sampled_counts must sum to N={n} at every position")
    if (ids[keep] < 0).any() or (vocab is not None and (ids[keep] >= vocab).any()):
        raise ValueError("sampled ids must lie in the vocabulary")
    nxt = keep[:, 1:]
    if (nxt & ~keep[:, :-1]).any() or (nxt & (ids[:, 1:] <= ids[:, :-1])).any():
        raise ValueError("sampled ids must be distinct and ascending at every position")


def parquet_split_paths(schema: pa.Schema) -> dict[str, str]:
    """Sampled leaf columns of a schema for BYTE_STREAM_SPLIT: name -> leaf path suffix."""
    return {f.name: "list.element.list.element" for f in schema if f.name in COLUMNS}
