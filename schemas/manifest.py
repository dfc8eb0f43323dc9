"""The manifest: the commit record of a label set.

A shard exists for readers only once the manifest lists it; shards are written under a temporary
name, renamed, and only then recorded here. The manifest is written last, by temp-then-rename
(a single PUT on object stores), so a reader sees either the old or the new manifest, never half.
Paths inside are relative to the manifest's directory; no credentials are ever stored.
"""
import dataclasses
import json
import os
import socket
import time
from urllib.parse import urlsplit, urlunsplit

import fsspec

from schemas.files import COMMITS_DIR, MANIFEST_NAME, write_atomic
from schemas.rows import FORMATS, check_version, schema_version

FORMAT = FORMATS[1]


@dataclasses.dataclass
class ShardInfo:
    path: str        # relative to the label-set directory
    rows: int
    tokens: int      # labelled (response) tokens
    bytes: int
    sha256: str


@dataclasses.dataclass
class Manifest:
    schema_version: int
    cache_key: str
    teacher: dict            # {"path", "fingerprint", "dtype"}
    tokenizer_fingerprint: str
    label_config: dict       # {"top_k", "mode", "hidden_layers", ...}
    shards: list[ShardInfo]
    rejects: dict            # {"path", "rows"}
    counts: dict             # rows_in, rows_labelled, rows_rejected, tokens_labelled
    complete: bool = True
    created_at: float = dataclasses.field(default_factory=time.time)
    format: str = FORMAT

    def __post_init__(self):
        # the format string names the version, so that readers from before the version check
        # (which compare the format only) refuse a newer label set instead of misreading it
        self.format = FORMATS[check_version(self.schema_version, "manifest")]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        d = json.loads(text)
        fmt = d.get("format")
        if not (isinstance(fmt, str) and fmt.startswith(FORMAT)):
            raise ValueError(f"not a kd label manifest (format={fmt!r})")
        version = check_version(d.get("schema_version"), f"manifest (format {fmt!r})")
        if fmt != FORMATS[version]:
            raise ValueError(f"manifest format {fmt!r} does not match its schema version "
                             f"{version} ({FORMATS[version]!r})")
        d["shards"] = [ShardInfo(**s) for s in d["shards"]]
        return cls(**d)


def strip_credentials(url: str) -> str:
    """Drop any user:password@ part of a URL before it is recorded anywhere."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def write_manifest(label_dir: str, manifest: Manifest) -> str:
    return write_atomic(label_dir, MANIFEST_NAME, manifest.to_json().encode())


def load_manifest(label_dir: str, storage_options: dict | None = None) -> Manifest:
    fs, root = fsspec.core.url_to_fs(label_dir, **(storage_options or {}))
    path = f"{root}/{MANIFEST_NAME}"
    fs.invalidate_cache(root)  # object-store listings are cached; the manifest may be new
    try:
        with fs.open(path, "r") as f:
            return Manifest.from_json(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {label_dir}: not a label set, or its "
                                "labelling job has not committed yet") from None


def write_commit(label_dir: str, info: ShardInfo, cache_key: str, label_config: dict,
                 chunk: str) -> None:
    """Record one durable shard before the manifest exists (what follow-mode readers poll).

    One small JSON object per input chunk, written whole (temp + rename; one PUT on object
    stores) after its shard, so a reader sees a record only once its shard is in place.
    """
    writer = f"{socket.gethostname()}:{os.getpid()}"  # which worker committed it
    version = schema_version(label_config.get("targets", "topk"))
    # one record per input chunk, the last one wins
    write_atomic(label_dir, f"{COMMITS_DIR}/{chunk}.json",
                 json.dumps({"schema_version": version,
                             "cache_key": cache_key, "label_config": label_config,
                             "chunk": chunk, "shard": dataclasses.asdict(info),
                             "writer": writer}).encode())


def read_commits(label_dir: str) -> list[dict]:
    """Every commit record of a label set (sorted by chunk name); [] if none yet."""
    fs, root = fsspec.core.url_to_fs(label_dir)
    fs.invalidate_cache(f"{root}/{COMMITS_DIR}")  # see commits made since the last look
    try:
        paths = sorted(p for p in fs.ls(f"{root}/{COMMITS_DIR}", detail=False)
                       if p.endswith(".json"))
    except FileNotFoundError:
        return []
    return [json.loads(fs.cat_file(p)) for p in paths]


def read_commit(label_dir: str, chunk: str) -> dict | None:
    """The commit record of one input chunk, or None if no shard of it has been committed."""
    fs, root = fsspec.core.url_to_fs(label_dir)
    path = f"{root}/{COMMITS_DIR}/{chunk}.json"
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def clear_stale_commits(label_dir: str, cache_key: str) -> int:
    """Remove commit records of another label config (a previous run into the same directory)."""
    fs, root = fsspec.core.url_to_fs(label_dir)
    stale = [r for r in read_commits(label_dir) if r["cache_key"] != cache_key]
    for r in stale:
        fs.rm(f"{root}/{COMMITS_DIR}/{r['chunk']}.json")
    return len(stale)


def load_committed(label_dir: str) -> Manifest:
    """The manifest or, while its job still runs, a provisional one (``complete=False``) built
    from the job's commit records. FileNotFoundError when there is neither."""
    try:
        return load_manifest(label_dir)
    except FileNotFoundError:
        records = read_commits(label_dir)
        if not records:
            raise FileNotFoundError(f"{label_dir} holds no manifest and no committed shards")
        version = check_version(records[0].get("schema_version", 1), f"commit records of {label_dir}")
        return Manifest(schema_version=version, cache_key=records[0]["cache_key"],
                        teacher={}, tokenizer_fingerprint="",
                        label_config=records[0]["label_config"],
                        shards=[ShardInfo(**r["shard"]) for r in records], rejects={},
                        counts={}, complete=False)
