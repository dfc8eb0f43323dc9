"""Schema v1 of a soft-label row and of a rejected row.

One row is one (example, view). Per response token j (token ``input_ids[label_start + j]``):
``topk_ids[j]`` / ``topk_logprobs[j]`` hold the teacher's k most likely next tokens, sorted by
descending probability, with natural-log probabilities at temperature 1, the teacher conditioned
on the RAW prompt and the response tokens before j; ``target_logprob[j]`` is the teacher's
log-probability of the actual token. ``hidden_mean_l<L>`` is the mean over the response tokens of
transformers' ``hidden_states[L]``; ``hidden_proj_l<L>[j]`` (optional) is that state at response
token j times ``projection_matrix(d, r, seed)``. Simplified rows carry the same teacher labels on
the same response tokens behind the simplified prompt.
"""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 2  # the newest version this code writes and reads
FORMATS = {1: "kd-labels", 2: "kd-labels-v2"}  # the manifest's ``format`` for each version
TARGETS = ("topk", "sampled", "both")


def schema_version(targets: str = "topk") -> int:
    """Top-k label sets stay version 1, byte for byte; sampled targets (``sampled_*`` columns,
    ``topk_*`` absent with ``sampled``) are version 2."""
    if targets not in TARGETS:
        raise ValueError(f"unknown targets {targets!r}: use one of {TARGETS}")
    return 1 if targets == "topk" else 2


def check_version(version, where: str) -> int:
    """The schema version of a label set or record, refused clearly when this code cannot read it."""
    if version not in FORMATS:
        raise ValueError(f"{where}: label schema version {version!r} is not one this reader knows "
                         f"(1..{SCHEMA_VERSION}); a newer kd-pipeline wrote it: upgrade to read it")
    return int(version)
META_PREFIX = "kd."
VIEWS = ("raw", "simplified")


def predictor(token_pos):
    """The state at position p predicts token p + 1: the position whose state predicts the token
    at ``token_pos`` (an int, a numpy array or a torch tensor)."""
    return token_pos - 1


def predicted(state_pos):
    """The inverse of ``predictor``: the position of the token the state at ``state_pos``
    predicts."""
    return state_pos + 1


def hidden_column(layer: int) -> str:
    """Column holding the mean over the response span of transformers' ``hidden_states[layer]``."""
    return f"hidden_mean_l{layer}"


def proj_column(layer: int) -> str:
    """Column holding, per response token, ``hidden_states[layer]`` projected to r dims."""
    return f"hidden_proj_l{layer}"


PROJECTION = "numpy.random.default_rng(seed).standard_normal((d, r), float32) / sqrt(r)"


def projection_matrix(d: int, r: int, seed: int) -> np.ndarray:
    """The seeded random projection (d, r) behind ``hidden_proj_l<L>`` (see PROJECTION): a
    reader can rebuild it from the manifest's ``label_config.hidden_proj`` alone."""
    m = np.random.default_rng(seed).standard_normal((d, r), dtype=np.float32)
    return m / np.float32(np.sqrt(r))


def row_schema(hidden_layers: tuple[int, ...] = (), metadata: dict | None = None,
               proj_layers: tuple[int, ...] = (), targets: str = "topk",
               sample_weights: bool = False) -> pa.Schema:
    """The plain row schema. ``targets``: which soft labels the rows carry (``sampled``: no
    ``topk_*`` columns; ``sampled``/``both``: the ``sampled_*`` columns of schemas.sampled,
    with ``sampled_logweights`` when ``sample_weights``)."""
    from schemas import sampled
    schema_version(targets)
    fields = [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("view", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("label_start", pa.int32(), nullable=False),
    ]
    if targets != "sampled":
        fields += [pa.field("topk_ids", pa.list_(pa.list_(pa.int32())), nullable=False),
                   pa.field("topk_logprobs", pa.list_(pa.list_(pa.float32())), nullable=False)]
    fields.append(pa.field("target_logprob", pa.list_(pa.float32()), nullable=False))
    if targets != "topk":
        fields += sampled.fields(sample_weights)
    fields += [pa.field(hidden_column(layer), pa.list_(pa.float32()), nullable=False)
               for layer in hidden_layers]
    fields += [pa.field(proj_column(layer), pa.list_(pa.list_(pa.float32())), nullable=False)
               for layer in proj_layers]
    schema = pa.schema(fields)
    if metadata:
        schema = schema.with_metadata(encode_metadata(metadata))
    return schema


REJECT_SCHEMA = pa.schema([
    pa.field("source", pa.string()),      # file the record came from
    pa.field("line", pa.int64()),         # 1-based line number in that file (-1 if unknown)
    pa.field("example_id", pa.string()),  # null when the record had no usable id
    pa.field("view", pa.string()),
    pa.field("reason", pa.string()),      # short machine-friendly reason code
    pa.field("detail", pa.string()),      # human-readable detail
    pa.field("record", pa.string()),      # the offending text, truncated
])


def encode_metadata(meta: dict) -> dict[bytes, bytes]:
    """File key-value metadata: every value JSON-encoded under a ``kd.`` key; the schema
    version follows ``meta["targets"]`` (absent: top-k, version 1)."""
    version = schema_version(meta.get("targets", "topk"))
    out = {f"{META_PREFIX}schema_version".encode(): str(version).encode()}
    for key, value in meta.items():
        out[f"{META_PREFIX}{key}".encode()] = json.dumps(value, sort_keys=True).encode()
    return out


def read_file_metadata(path: str, filesystem=None) -> dict:
    """The ``kd.*`` key-value metadata of a shard, decoded."""
    raw = pq.read_schema(path, filesystem=filesystem).metadata or {}
    out = {}
    for k, v in raw.items():
        key = k.decode()
        if key.startswith(META_PREFIX):
            out[key[len(META_PREFIX):]] = json.loads(v.decode())
    return out
