"""The label set's shards: the writer and the reader of each encoding side by side, and the
commit protocol's shard checks.

A shard is named ``<chunk>-<bytes>.parquet``: the content hash of the chunk it came from (what
reuse looks up) and the hash of its own bytes. It is written to a temporary name and renamed into
place (``files.write_atomic``), so readers never see half a file, and a record naming a file
always describes that file's bytes, even when two runs label the same chunk at once. Then its
commit record is written (``manifest.write_commit``); the manifest comes last.

Writing takes (``Tokenized``, ``Labels``) pairs: a tokenised example and its teacher labels.
Reading gives flat numpy arrays (``ShardArrays``).
"""
import dataclasses
import hashlib
import io

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import compact, sampled
from schemas.files import REJECTS_PATH, SHARDS_DIR, write_atomic
from schemas.manifest import ShardInfo, load_manifest, read_commits
from schemas.rows import REJECT_SCHEMA, hidden_column, proj_column, read_file_metadata, row_schema

ROW_GROUP_ROWS = 256


@dataclasses.dataclass
class Tokenized:
    """One example tokenised for the teacher: its raw view and, when paired, its simplified one."""
    id: str
    raw_ids: list[int]          # BOS + prompt + response (+ EOS)
    raw_start: int              # index of the first response token in raw_ids
    simplified_ids: list[int] | None
    simplified_start: int | None
    raw_src: tuple[str, int] = ("", 0)  # (file, line) of the raw record: decides its chunk


@dataclasses.dataclass
class Labels:
    """Teacher labels for the response span of one sequence (n = number of response tokens)."""
    topk_ids: np.ndarray         # (n, k) int32, descending probability
    topk_logprobs: np.ndarray    # (n, k) float32
    target_logprob: np.ndarray   # (n,) float32
    hidden: dict                 # layer -> (d,) float32 mean over the response span
    proj: dict = dataclasses.field(default_factory=dict)  # layer -> (n, r) float32 projections
    samples: "SampledLabels | None" = None  # sampled targets (--targets sampled|both)


@dataclasses.dataclass
class SampledLabels:
    """Per response token, the distinct drawn ids ascending, padded to N with id -1, count 0."""
    ids: np.ndarray          # (n, N) int32
    counts: np.ndarray       # (n, N) uint8, summing to N per position
    logweights: np.ndarray   # (n, N) float32, log(p / q) of each id (0 when q = p)


# ---- names -------------------------------------------------------------------------------------

def chunk_name(items: list[Tokenized]) -> str:
    """Content hash of one input chunk's tokenised examples (what reuse looks up)."""
    h = hashlib.sha256()
    for t in sorted(items, key=lambda t: t.id):
        h.update(f"{t.id}\0{t.raw_ids}\0{t.simplified_ids}\n".encode())
    return f"part-{h.hexdigest()[:20]}"


def shard_chunk(path: str) -> str:
    """The chunk name of a shard path (``shards/<chunk>-<bytes hash>.parquet``)."""
    return path.rsplit("/", 1)[-1].rsplit("-", 1)[0]


# ---- writer ------------------------------------------------------------------------------------

def _list(rows: list[np.ndarray], dtype) -> pa.Array:
    flat = np.concatenate([np.asarray(r).reshape(-1) for r in rows]).astype(dtype, copy=False)
    off = np.concatenate([[0], np.cumsum([np.asarray(r).size for r in rows])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(off), pa.array(flat))


def _list_of_lists(rows: list[np.ndarray], k: int, dtype) -> pa.Array:
    """(n_i, k) arrays -> list<list<dtype>>, one row per array."""
    return compact.nested_list(np.concatenate(rows).astype(dtype, copy=False), k,
                               [len(r) for r in rows])


def build_table(items: list[tuple[Tokenized, Labels]], k: int, hidden_layers: tuple[int, ...],
                metadata: dict, encoding: str = "plain") -> pa.Table:
    """One raw row per example, plus a simplified row carrying the same labels when present.

    ``encoding``: "plain" (the row schema as is) or "compact" (``schemas.compact``).
    ``metadata["targets"]`` (absent: ``topk``) picks the soft-label columns: ``sampled`` /
    ``both`` add the ``sampled_*`` columns of ``schemas.sampled`` (``sampled_logweights`` when
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


def row_group_bounds(ids: list[str], target: int = ROW_GROUP_ROWS) -> list[int]:
    """Row-group end offsets of about ``target`` rows that never split one example's rows."""
    ends, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (i - start >= target and ids[i] != ids[i - 1]):
            ends.append(i)
            start = i
    return ends


def parquet_bytes(table: pa.Table, compression: str = "zstd") -> bytes:
    """A shard's (or the rejects') Parquet bytes; ``compression`` other than zstd for benches."""
    buf = io.BytesIO()
    if "example_id" not in table.column_names:  # rejects: plain row groups
        pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS, compression=compression)
        return buf.getvalue()
    with pq.ParquetWriter(buf, table.schema, compression=compression,
                          **compact.parquet_options(table.schema)) as writer:
        start = 0
        for end in row_group_bounds(table["example_id"].to_pylist()):
            writer.write_table(table.slice(start, end - start), row_group_size=end - start)
            start = end
    return buf.getvalue()


def write_shard(out_dir: str, items: list[tuple[Tokenized, Labels]], k: int, hidden_layers: tuple[int, ...],
                metadata: dict, chunk: str, encoding: str = "plain") -> ShardInfo:
    """Commit one chunk's shard (``chunk``: ``chunk_name`` of the chunk as it came in; in generate
    mode that is the prompts, known before the responses; ``encoding``: see ``build_table``)."""
    table = build_table(items, k, hidden_layers, metadata, encoding)
    data = parquet_bytes(table)
    sha = hashlib.sha256(data).hexdigest()
    rel = f"{SHARDS_DIR}/{chunk}-{sha[:12]}.parquet"
    write_atomic(out_dir, rel, data)
    tokens = pc.sum(pc.list_value_length(table["target_logprob"])).as_py()
    return ShardInfo(rel, table.num_rows, tokens, len(data), sha)


def write_rejects(out_dir: str, rejects: list[dict]) -> dict:
    rejects = sorted(rejects, key=lambda r: (r["source"], r["line"], r["view"]))
    table = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
    write_atomic(out_dir, REJECTS_PATH, parquet_bytes(table))
    return {"path": REJECTS_PATH, "rows": len(rejects)}


# ---- reader ------------------------------------------------------------------------------------

@dataclasses.dataclass
class ShardArrays:
    """One shard decoded to flat numpy arrays (no per-row Python objects)."""
    view: np.ndarray          # (R,) object
    example_id: np.ndarray    # (R,) object
    ids: np.ndarray           # flat input ids
    ids_off: np.ndarray       # (R+1,)
    label_start: np.ndarray   # (R,)
    topk_ids: np.ndarray      # (T, k) over all response tokens of the shard
    topk_lp: np.ndarray       # (T, k)
    tok_off: np.ndarray       # (R+1,) offsets into the T axis
    hidden: dict              # teacher layer -> (R, d) summaries, or (T, r) per-token projections
    hidden_per_token: bool = False
    sample_ids: np.ndarray | None = None      # (T, N) sampled targets: distinct ids, -1 padding
    sample_counts: np.ndarray | None = None   # (T, N) draws per id, 0 padding
    sample_logw: np.ndarray | None = None     # (T, N) log importance weights (None: all 0)


def _offsets(col: pa.ChunkedArray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(pc.list_value_length(col).to_numpy())])


def decode_table(table: pa.Table, k: int, hidden_layers: list[int],
                 per_token: bool = False, samples: int = 0) -> ShardArrays:
    """A shard table (plain or compact, by its ``kd.encoding``) -> flat arrays. ``per_token``:
    hidden targets are the per-token projections ``hidden_proj_l<L>`` instead of the means;
    ``samples``: N of a label set with sampled targets (0: none)."""
    flat_ids = pc.list_flatten(table["input_ids"]).to_numpy()
    tk, tl = compact.topk_arrays(table, k)
    if per_token:
        hidden = {layer: pc.list_flatten(pc.list_flatten(table[proj_column(layer)])).to_numpy()
                  .reshape(len(tk), -1) for layer in hidden_layers}
    else:
        hidden = {layer: pc.list_flatten(table[hidden_column(layer)]).to_numpy()
                  .reshape(table.num_rows, -1) for layer in hidden_layers}
    return ShardArrays(table["view"].to_numpy(zero_copy_only=False),
                       table["example_id"].to_numpy(zero_copy_only=False), flat_ids,
                       _offsets(table["input_ids"]), table["label_start"].to_numpy(),
                       tk, tl, _offsets(table[compact.position_column(table)]), hidden,
                       per_token, *(sampled.decode(table, samples) if samples
                                    else (None, None, None)))


# ---- commit protocol: which shards are in place ------------------------------------------------

def shard_present(out: str, info: dict) -> bool:
    """The shard a manifest entry or commit record names is in place at its recorded size."""
    fs, root = fsspec.core.url_to_fs(out)
    path = f"{root}/{info['path']}"
    return fs.exists(path) and fs.size(path) == info["bytes"]


def committed_shards(out: str, key: str) -> dict:
    """Shards already committed under this cache key (previous manifest, or commit records of an
    interrupted run) whose files are present: chunk name -> ShardInfo dict."""
    fs, root = fsspec.core.url_to_fs(out)
    fs.invalidate_cache(f"{root}/{SHARDS_DIR}")
    found = {}
    try:
        m = load_manifest(out)
        if m.cache_key == key:
            found.update({shard_chunk(s.path): dataclasses.asdict(s) for s in m.shards})
    except FileNotFoundError:
        pass
    found.update({r["chunk"]: r["shard"] for r in read_commits(out) if r["cache_key"] == key})
    return {c: info for c, info in found.items() if shard_present(out, info)}


def held_label_set(out: str, key: str) -> dict | None:
    """The label set ``out`` already holds under a cache key other than ``key``, or None (empty,
    or holding ``key`` only: a resumed or incremental run). A directory whose commit records are
    all of ``key`` is a run of ``key`` in progress (an interrupted ``--overwrite`` run included),
    whatever its older manifest says. Returns {cache_key, label_config, teacher_fingerprint,
    tokenizer_fingerprint, teacher_path}; a value not recorded where it was found is None."""
    commits = read_commits(out)
    other = [r for r in commits if r["cache_key"] != key]
    try:
        m = load_manifest(out)
    except FileNotFoundError:
        m = None
    if m is not None and m.cache_key != key and (other or not commits):
        return {"cache_key": m.cache_key, "label_config": m.label_config,
                "teacher_fingerprint": m.teacher.get("fingerprint"),
                "tokenizer_fingerprint": m.tokenizer_fingerprint or None,
                "teacher_path": m.teacher.get("path")}
    if not other:
        return None
    r = other[0]  # commit records name no teacher: the shard's file metadata does
    fs, root = fsspec.core.url_to_fs(out)
    meta = (read_file_metadata(f"{root}/{r['shard']['path']}", filesystem=fs)
            if shard_present(out, r["shard"]) else {})
    return {"cache_key": r["cache_key"], "label_config": r["label_config"],
            "teacher_fingerprint": meta.get("teacher_fingerprint"),
            "tokenizer_fingerprint": meta.get("tokenizer_fingerprint"), "teacher_path": None}
