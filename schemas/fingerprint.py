"""Cheap identities of a teacher, a tokenizer and a label configuration.

A teacher fingerprint must be cheap for a 100 GB checkpoint, so weights are not hashed whole:
each weight file contributes its name, size, its safetensors header (tensor names, dtypes, shapes,
offsets) and a hash of its first and last MiB. Any retraining changes the values, and the sampled
bytes plus header catch any realistic difference; the full config.json is hashed whole.
"""
import hashlib
import json
import os

import fsspec

SAMPLE = 1 << 20
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "tokenizer_config.json", "special_tokens_map.json")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def teacher_fingerprint(model_dir: str) -> str:
    fs, root = fsspec.core.url_to_fs(model_dir)
    h = hashlib.sha256()
    with fs.open(f"{root}/config.json", "rb") as f:
        h.update(b"config.json" + f.read())
    weights = sorted(p for p in fs.ls(root, detail=False)
                     if p.endswith((".safetensors", ".bin", ".pt")))
    if not weights:
        raise FileNotFoundError(f"no weight files in {model_dir}")
    for path in weights:
        size = fs.size(path)
        h.update(f"{os.path.basename(path)}:{size}".encode())
        with fs.open(path, "rb") as f:
            h.update(f.read(SAMPLE))
            if path.endswith(".safetensors"):  # header: tensor names, dtypes, shapes, offsets
                f.seek(0)
                n = int.from_bytes(f.read(8), "little")
                h.update(f.read(n))
            if size > SAMPLE:
                f.seek(max(size - SAMPLE, SAMPLE))
                h.update(f.read())
    return h.hexdigest()[:32]


def tokenizer_fingerprint(tokenizer_dir: str) -> str:
    fs, root = fsspec.core.url_to_fs(tokenizer_dir)
    h = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        path = f"{root}/{name}"
        if fs.exists(path):
            found = True
            with fs.open(path, "rb") as f:
                h.update(name.encode() + f.read())
    if not found:
        raise FileNotFoundError(f"no tokenizer files in {tokenizer_dir}")
    return h.hexdigest()[:32]


def cache_key(teacher_fp: str, tokenizer_fp: str, label_config: dict) -> str:
    """Key of a label set: same teacher, tokenizer and label config -> same key."""
    blob = json.dumps({"teacher": teacher_fp, "tokenizer": tokenizer_fp, "config": label_config},
                      sort_keys=True).encode()
    return _sha(blob)[:24]
