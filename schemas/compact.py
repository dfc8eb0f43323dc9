"""The compact shard encoding: the same labels as schema v1 in fewer bytes, decoded here.

A compact shard has the columns of a plain (schema v1) shard except that ``topk_ids`` and
``topk_logprobs`` are replaced, per labelled position, by:

- ``topk_id_deltas`` list<list<int32>>: the k teacher ids sorted ascending and delta-coded (the
  first is the id itself, each next one the gap to the previous; gaps are >= 1). Small gaps
  compress well.
- ``topk_codes`` list<list<uint8>>: one code per id, in the same (ascending id) order: with
  ``r = p_i / p_max`` the probability ratio to the position's most likely token,
  ``code = round(Q * (1 - r ** (1 / tau)))``, ``Q = 2**bits - 1``. With tau = 2 this quantises
  ``sqrt(r)`` uniformly: fine steps near the top of the distribution, coarse ones far below it,
  where an error in log p costs the KL divergence little (with tau = 2 every entry adds about
  the same expected error). Code 0 is the top entry exactly; code Q holds everything below the
  last step (r <= (1 / (2Q)) ** tau).
- ``topk_logmass`` list<float32>: ``log(sum_i p_i)`` over the k stored entries (<= 0), so the
  tail bucket ``1 - sum p`` survives decoding unchanged.

Decoding turns each code back into a ratio (the code's value; code Q: the middle of its cell),
scales the k ratios so that they sum to ``exp(topk_logmass)``, and sorts by descending
probability (ties by ascending id). Ids come back exactly; each log-prob relative to the top one
comes back within its code's cell. ``target_logprob`` and every other column are unchanged.
These four label columns (``target_logprob`` included) are written with Parquet's
BYTE_STREAM_SPLIT encoding and no dictionary; the others as in plain shards.

The shard's ``kd.encoding`` metadata names the encoding (absent = ``plain``) and
``kd.encoding_params`` holds ``{"bits", "tau"}``. Plain shards need no project code to read;
compact ones need :func:`to_plain` or :func:`topk_arrays`.
"""
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import sampled
from schemas.rows import META_PREFIX, row_schema

ENCODINGS = ("plain", "compact")
DEFAULT_PARAMS = {"bits": 8, "tau": 2.0}
COMPACT_FIELDS = (pa.field("topk_id_deltas", pa.list_(pa.list_(pa.int32())), nullable=False),
                  pa.field("topk_codes", pa.list_(pa.list_(pa.uint8())), nullable=False),
                  pa.field("topk_logmass", pa.list_(pa.float32()), nullable=False))
COMPACT_COLUMNS = tuple(f.name for f in COMPACT_FIELDS)
_ENC_KEY = f"{META_PREFIX}encoding".encode()
_PARAMS_KEY = f"{META_PREFIX}encoding_params".encode()


def encoding_of(schema: pa.Schema) -> tuple[str, dict]:
    """(name, params) from a shard's ``kd.`` metadata; a shard without it is plain."""
    meta = schema.metadata or {}
    name = json.loads(meta[_ENC_KEY]) if _ENC_KEY in meta else "plain"
    params = json.loads(meta[_PARAMS_KEY]) if _PARAMS_KEY in meta else {}
    if name not in ENCODINGS:
        raise ValueError(f"unknown shard encoding {name!r}: expected one of {ENCODINGS}")
    if name == "compact":
        params = {**DEFAULT_PARAMS, **params}
    return name, params


def compact_schema(plain: pa.Schema, params: dict | None = None) -> pa.Schema:
    """A plain shard schema with the top-k columns swapped for the compact ones, and the
    encoding recorded in its ``kd.`` metadata."""
    fields = []
    for f in plain:
        if f.name == "topk_ids":
            fields += COMPACT_FIELDS
        elif f.name == "sampled_ids":
            fields.append(sampled.DELTAS_FIELD)
        elif f.name != "topk_logprobs":
            fields.append(f)
    meta = dict(plain.metadata or {})
    meta[_ENC_KEY] = json.dumps("compact").encode()
    meta[_PARAMS_KEY] = json.dumps({**DEFAULT_PARAMS, **(params or {})}, sort_keys=True).encode()
    return pa.schema(fields, metadata=meta)


def plain_schema(compact: pa.Schema) -> pa.Schema:
    """The inverse of :func:`compact_schema` (the encoding keys dropped from the metadata)."""
    plain = row_schema()
    fields = []
    for f in compact:
        if f.name == "topk_id_deltas":
            fields += [plain.field("topk_ids"), plain.field("topk_logprobs")]
        elif f.name == "sampled_id_deltas":
            fields.append(sampled.PLAIN_FIELDS[0])
        elif f.name not in COMPACT_COLUMNS:
            fields.append(f)
    meta = {k: v for k, v in (compact.metadata or {}).items() if k not in (_ENC_KEY, _PARAMS_KEY)}
    return pa.schema(fields, metadata=meta)


def _check_params(bits: int, tau: float) -> None:
    if not (1 <= bits <= 8 and tau > 0):
        raise ValueError(f"compact encoding needs 1 <= bits <= 8 and tau > 0, got {bits}, {tau}")


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (m + np.log(np.exp(a - m).sum(axis=1, keepdims=True)))[:, 0]


def code_values(bits: int = 8, tau: float = 2.0) -> np.ndarray:
    """x = log(p_max / p_i) that each code decodes to, (2**bits,)."""
    _check_params(bits, tau)
    q = 2 ** bits - 1
    y = np.arange(q + 1, dtype=np.float64) / q
    y[-1] = 1 - 0.25 / q  # the last cell is [1 - 0.5/q, 1): its middle
    return -tau * np.log1p(-y)


def code_cells(codes: np.ndarray, bits: int = 8,
               tau: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """The range [lo, hi] of x = log(p_max / p_i) that each code stands for."""
    q = 2 ** bits - 1
    lo = -tau * np.log1p(-np.clip((codes - 0.5) / q, 0, None))
    with np.errstate(divide="ignore"):  # the last cell has no upper end
        hi = -tau * np.log1p(-np.minimum((codes + 0.5) / q, 1.0))
    return lo, hi


def quantise(logprobs: np.ndarray, bits: int = 8,
             tau: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """(T, k) log-probs (any order) -> (T, k) uint8 codes in the same order, (T,) log mass."""
    _check_params(bits, tau)
    lp = np.asarray(logprobs, dtype=np.float32)  # float32 is ample for 8-bit codes
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise ValueError("top-k log-probs must not be NaN or +inf")
    neg_x = lp - lp.max(axis=1, keepdims=True)  # log(p_i / p_max) <= 0; -inf for a -inf log-prob
    q = 2 ** bits - 1
    codes = np.rint(np.expm1(neg_x * np.float32(1 / tau)) * np.float32(-q)).astype(np.uint8)
    logmass = np.minimum(_logsumexp(lp.astype(np.float64)), 0.0).astype(np.float32)
    return codes, logmass


def dequantise(codes: np.ndarray, logmass: np.ndarray, bits: int = 8,
               tau: float = 2.0) -> np.ndarray:
    """(T, k) codes and (T,) log mass -> (T, k) float32 log-probs in the codes' order."""
    neg_x = (-code_values(bits, tau)).astype(np.float32)[codes]
    return (logmass[:, None] + neg_x - _logsumexp(neg_x)[:, None]).astype(np.float32, copy=False)


def encode_topk(ids: np.ndarray, logprobs: np.ndarray, bits: int = 8,
                tau: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, k) ids and log-probs -> (T, k) int32 id deltas, (T, k) uint8 codes, (T,) log mass."""
    ids = np.asarray(ids, dtype=np.int32)
    order = np.argsort(ids, axis=1)  # ids are distinct: no need for a stable sort
    sid = np.take_along_axis(ids, order, axis=1)
    deltas = np.diff(sid, axis=1, prepend=np.int32(0))
    if sid.size and ((deltas[:, 1:] <= 0).any() or (sid[:, 0] < 0).any()):
        raise ValueError("top-k ids must be distinct and >= 0 at every position")
    codes, logmass = quantise(np.take_along_axis(np.asarray(logprobs), order, axis=1), bits, tau)
    return deltas, codes, logmass


def decode_topk(deltas: np.ndarray, codes: np.ndarray, logmass: np.ndarray, bits: int = 8,
                tau: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`encode_topk`: (T, k) int32 ids and float32 log-probs, sorted by
    descending probability (ties by ascending id)."""
    ids = np.cumsum(deltas, axis=1, dtype=np.int32)
    order = np.argsort(codes, axis=1, kind="stable")  # code order = descending probability
    lp = dequantise(np.take_along_axis(codes, order, axis=1), logmass, bits, tau)
    return np.take_along_axis(ids, order, axis=1), lp


def nested_list(flat: np.ndarray, k: int, positions) -> pa.Array:
    """(T, k) array -> list<list<>> with ``positions[r]`` inner lists in row r, without
    per-element Python objects."""
    inner = pa.ListArray.from_arrays(
        pa.array((np.arange(len(flat) + 1) * k).astype(np.int32)), pa.array(flat.reshape(-1)))
    outer = np.concatenate([[0], np.cumsum(positions)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(outer), inner)


def _flat2(col: pa.ChunkedArray, k: int) -> np.ndarray:
    flat = pc.list_flatten(pc.list_flatten(col)).to_numpy()
    return flat.reshape(-1, k) if k else flat.reshape(0, 0)


def _k_of(table: pa.Table, column: str) -> int:
    inner = pc.list_value_length(pc.list_flatten(table[column])).to_numpy()
    if inner.size and (inner != inner[0]).any():
        raise ValueError(f"{column}: every position must carry the same number of entries")
    return int(inner[0]) if inner.size else 0


def encode_table(table: pa.Table, bits: int = 8, tau: float = 2.0) -> pa.Table:
    """A plain label table -> the same labels as a compact table."""
    new = {}
    if "topk_ids" in table.column_names:
        k = _k_of(table, "topk_ids")
        deltas, codes, logmass = encode_topk(_flat2(table["topk_ids"], k),
                                             _flat2(table["topk_logprobs"], k), bits, tau)
        positions = pc.list_value_length(table["topk_ids"]).to_numpy()
        new = {"topk_id_deltas": nested_list(deltas, k, positions),
               "topk_codes": nested_list(codes, k, positions),
               "topk_logmass": pa.ListArray.from_arrays(
                   pa.array(np.concatenate([[0], np.cumsum(positions)]).astype(np.int32)),
                   pa.array(logmass))}
    if "sampled_ids" in table.column_names:
        new["sampled_id_deltas"] = sampled.delta_column(table["sampled_ids"])
    schema = compact_schema(table.schema, {"bits": bits, "tau": tau})
    return pa.Table.from_arrays([new[f.name] if f.name in new else table[f.name]
                                 for f in schema], schema=schema)


def compact_topk(table: pa.Table, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A compact table's labels as (T, k) int32 ids and float32 log-probs (``k``: the width to
    give a table without labelled positions; otherwise taken from the data)."""
    _, params = encoding_of(table.schema)
    for f in COMPACT_FIELDS:
        if f.name not in table.column_names or table.schema.field(f.name).type != f.type:
            raise ValueError(f"a compact shard needs column {f.name}: {f.type}")
    stored_k = _k_of(table, "topk_id_deltas")
    if k is not None and stored_k and stored_k != k:
        raise ValueError(f"the shard holds k={stored_k} entries per position, expected k={k}")
    k = stored_k or (k or 0)
    bits, tau = int(params["bits"]), float(params["tau"])
    deltas = _flat2(table["topk_id_deltas"], k)
    if _k_of(table, "topk_codes") not in (k, 0):
        raise ValueError("topk_codes must have one code per stored id")
    codes = _flat2(table["topk_codes"], k)
    logmass = pc.list_flatten(table["topk_logmass"]).to_numpy()
    if not len(codes) == len(logmass) == len(deltas):
        raise ValueError("topk_codes and topk_logmass must cover every labelled position")
    if (deltas[:, 1:] <= 0).any() or (deltas[:, :1] < 0).any():
        raise ValueError("topk_id_deltas: ids must be distinct, ascending and >= 0")
    if codes.size and int(codes.max()) >= 2 ** bits:
        raise ValueError(f"topk_codes: a code above {2 ** bits - 1} ({bits} bits)")
    return decode_topk(deltas, codes, logmass, bits, tau)


def topk_arrays(table: pa.Table, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(T, k) ids and log-probs of any shard table, dispatching on its ``kd.encoding``; (T, 0)
    for a table with sampled targets only."""
    if not {"topk_ids", "topk_id_deltas"} & set(table.column_names):
        t = len(pc.list_flatten(table["target_logprob"]))
        return np.zeros((t, 0), np.int32), np.zeros((t, 0), np.float32)
    if encoding_of(table.schema)[0] == "compact":
        return compact_topk(table, k)
    k = _k_of(table, "topk_ids") if k is None else k
    return _flat2(table["topk_ids"], k), _flat2(table["topk_logprobs"], k)


def position_column(table: pa.Table) -> str:
    """A column with one list entry per labelled position, in either encoding."""
    return "target_logprob"


def to_plain(table: pa.Table) -> pa.Table:
    """Any shard table -> a plain (schema v1) table with the decoded labels."""
    if encoding_of(table.schema)[0] == "plain":
        return table
    new = {}
    if "topk_id_deltas" in table.column_names:
        ids, lp = compact_topk(table)
        positions = pc.list_value_length(table["topk_id_deltas"]).to_numpy()
        new = {"topk_ids": nested_list(ids, ids.shape[1], positions),
               "topk_logprobs": nested_list(lp, ids.shape[1], positions)}
    if "sampled_id_deltas" in table.column_names:
        new["sampled_ids"] = sampled.delta_column(table["sampled_id_deltas"], inverse=True)
    schema = plain_schema(table.schema)
    return pa.Table.from_arrays([new[f.name] if f.name in new else table[f.name]
                                 for f in schema], schema=schema)


def parquet_options(schema: pa.Schema) -> dict:
    """Extra ``pq.ParquetWriter`` options for a shard schema: dictionary encoding on the id and
    string columns only (float columns, the summaries and projections most of all, gain nothing
    from a dictionary: on the demo teacher's label set both encodings' shards are a quarter
    smaller without one); for compact shards BYTE_STREAM_SPLIT on the label columns."""
    dictionary = [_leaf_path(f) for f in schema if not pa.types.is_floating(_leaf_type(f.type))]
    if encoding_of(schema)[0] == "plain":
        return {"use_dictionary": dictionary}
    split = {"topk_id_deltas": "list.element.list.element",
             "topk_codes": "list.element.list.element",
             "topk_logmass": "list.element", "target_logprob": "list.element",
             **sampled.parquet_split_paths(schema)}
    return {"use_dictionary": [p for p in dictionary if p.split(".")[0] not in split],
            "column_encoding": {f"{n}.{leaf}": "BYTE_STREAM_SPLIT" for n, leaf in split.items()}}


def _leaf_type(t: pa.DataType) -> pa.DataType:
    while pa.types.is_list(t):
        t = t.value_type
    return t


def _leaf_path(field: pa.Field) -> str:
    """The Parquet column path of a (possibly nested) list field: ``name.list.element...``."""
    path, t = field.name, field.type
    while pa.types.is_list(t):
        path, t = f"{path}.list.element", t.value_type
    return path


def topk_kl(ids_a: np.ndarray, lp_a: np.ndarray, ids_b: np.ndarray,
            lp_b: np.ndarray) -> np.ndarray:
    """Per-position KL(a || b) between two top-k labellings of the same positions with the same
    id sets, each taken as k + 1 buckets: the k ids and a tail ``1 - sum p`` (clamped to at least
    1e-6 and renormalised, as ``student_train.losses.teacher_logprobs`` does)."""
    oa, ob = np.argsort(ids_a, axis=1), np.argsort(ids_b, axis=1)
    if not np.array_equal(np.take_along_axis(ids_a, oa, 1), np.take_along_axis(ids_b, ob, 1)):
        raise ValueError("the two labellings do not hold the same ids")
    out = []
    for lp, o in ((lp_a, oa), (lp_b, ob)):
        lp = np.take_along_axis(np.asarray(lp, dtype=np.float64), o, 1)
        mass = np.minimum(np.exp(_logsumexp(lp)), 1 - 1e-6)
        full = np.concatenate([lp, np.log1p(-mass)[:, None]], axis=1)
        out.append(full - _logsumexp(full)[:, None])
    la, lb = out
    return (np.exp(la) * (la - lb)).sum(axis=1)


def label_bytes(data: bytes) -> int:
    """Compressed bytes of a shard's label columns (``topk_*``, ``sampled_*`` and
    ``target_logprob``), from the
    Parquet footer of the shard file's bytes: what the storage figures count."""
    md = pq.ParquetFile(io.BytesIO(data)).metadata
    return sum(md.row_group(g).column(c).total_compressed_size
               for g in range(md.num_row_groups) for c in range(md.num_columns)
               if md.row_group(g).column(c).path_in_schema.startswith(
                   ("topk_", "target_", "sampled_")))
