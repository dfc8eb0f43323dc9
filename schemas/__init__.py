"""The contract between the labelling job and the trainer: row schema, manifest, cache key, checks.

No Beam, vLLM or torch here: plain pyarrow, fsspec and the standard library.
"""
from schemas.fingerprint import cache_key, teacher_fingerprint, tokenizer_fingerprint
from schemas.manifest import Manifest, ShardInfo, load_manifest, write_manifest
from schemas.rows import (REJECT_SCHEMA, SCHEMA_VERSION, TARGETS, hidden_column, proj_column,
                          projection_matrix, read_file_metadata, row_schema, schema_version)
from schemas.validate import ShardError, validate_table, verify_shard

__all__ = [
    "SCHEMA_VERSION", "TARGETS", "schema_version", "REJECT_SCHEMA", "row_schema", "hidden_column", "proj_column",
    "projection_matrix", "read_file_metadata",
    "Manifest", "ShardInfo", "load_manifest", "write_manifest",
    "cache_key", "teacher_fingerprint", "tokenizer_fingerprint",
    "ShardError", "validate_table", "verify_shard",
]
