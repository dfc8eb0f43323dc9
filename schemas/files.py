"""The layout of a label-set directory and the one way anything is written into it.

    <label set>/manifest.json        the commit (written last)
    <label set>/commits/<chunk>.json one record per committed chunk (before the manifest exists)
    <label set>/shards/<chunk>-<bytes hash>.parquet
    <label set>/rejects/rejects.parquet
    <label set>/tokenizer/           the teacher's tokenizer files
"""
import uuid

import fsspec

from schemas.fingerprint import TOKENIZER_FILES

MANIFEST_NAME = "manifest.json"
COMMITS_DIR = "commits"
SHARDS_DIR = "shards"
REJECTS_PATH = "rejects/rejects.parquet"
TOKENIZER_DIR = "tokenizer"


def write_atomic(label_dir: str, rel_path: str, data: bytes) -> str:
    """Write ``data`` to ``label_dir/rel_path`` through a temporary name and a rename (one PUT on
    object stores): a reader sees the old file, or the new one whole, never half."""
    fs, root = fsspec.core.url_to_fs(label_dir)
    final = f"{root}/{rel_path}"
    parent = final.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
    fs.pipe(tmp, data)
    fs.mv(tmp, final)
    return final


def copy_tokenizer(src_dir: str, dst_dir: str) -> None:
    """Copy the tokenizer files of ``src_dir`` (any fsspec URL) into ``dst_dir``: the teacher's
    into a label set, a label set's to a local directory, a label set's into a checkpoint."""
    fs, root = fsspec.core.url_to_fs(src_dir)
    for name in TOKENIZER_FILES:
        if fs.exists(f"{root}/{name}"):
            write_atomic(dst_dir, name, fs.cat_file(f"{root}/{name}"))
