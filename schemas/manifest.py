"""The manifest: the commit record of a label set.

A shard exists for readers only once the manifest lists it; shards are written under a temporary
name, renamed, and only then recorded here. The manifest is written last, by temp-then-rename
(a single PUT on object stores), so a reader sees either the old or the new manifest, never half.
Paths inside are relative to the manifest's directory; no credentials are ever stored.
"""
import dataclasses
import json
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import fsspec

MANIFEST_NAME = "manifest.json"
FORMAT = "kd-labels"


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

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        d = json.loads(text)
        if d.get("format") != FORMAT:
            raise ValueError(f"not a kd label manifest (format={d.get('format')!r})")
        d["shards"] = [ShardInfo(**s) for s in d["shards"]]
        return cls(**d)


def strip_credentials(url: str) -> str:
    """Drop any user:password@ part of a URL before it is recorded anywhere."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def write_manifest(label_dir: str, manifest: Manifest, storage_options: dict | None = None) -> str:
    fs, root = fsspec.core.url_to_fs(label_dir, **(storage_options or {}))
    final = f"{root}/{MANIFEST_NAME}"
    tmp = f"{root}/.{MANIFEST_NAME}.{uuid.uuid4().hex}.tmp"
    with fs.open(tmp, "w") as f:
        f.write(manifest.to_json())
    fs.mv(tmp, final)
    return final


def load_manifest(label_dir: str, storage_options: dict | None = None) -> Manifest:
    fs, root = fsspec.core.url_to_fs(label_dir, **(storage_options or {}))
    path = f"{root}/{MANIFEST_NAME}"
    if not fs.exists(path):
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {label_dir}: not a label set, or its "
                                "labelling job has not committed yet")
    with fs.open(path, "r") as f:
        return Manifest.from_json(f.read())
