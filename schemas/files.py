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


def check_store(*urls: str | None) -> None:
    """Stop before any work when an ``s3://`` URL has no credentials to reach it, with what to
    set. S3-compatible stores also need their endpoint (AWS_ENDPOINT_URL or fsspec config), which
    is named too. Anonymous access configured for fsspec (FSSPEC_S3_ANON=true) needs neither."""
    s3 = [u for u in urls if u and u.split("://", 1)[0] in ("s3", "s3a")]
    if not s3 or fsspec.config.conf.get("s3", {}).get("anon"):
        return
    import botocore.session  # s3fs's own credential chain
    if botocore.session.get_session().get_credentials() is None:
        raise ValueError(
            f"{s3[0]}: no S3 credentials found. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE with ~/.aws/credentials); for an S3-compatible store (MinIO, Ceph, "
            "R2, ...) also set AWS_ENDPOINT_URL=http(s)://host:port; for a public bucket set "
            "FSSPEC_S3_ANON=true.")


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
