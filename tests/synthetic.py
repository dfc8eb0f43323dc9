"""Synthetic label sets for tests (no teacher involved): heavy-tailed top-k labels, examples and
shards written by hand through schemas.labelset."""
import hashlib

import numpy as np

from schemas import Manifest, ShardInfo, write_manifest
from schemas.labelset import Labels, Tokenized, build_table, parquet_bytes

VOCAB = 3000


def teacher_topk(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) ids and log-probs of heavy-tailed distributions over VOCAB tokens: a Zipf prior
    plus Gumbel noise plus a few boosted tokens (top-1 probability from ~0.1 to ~1)."""
    rng = np.random.default_rng(seed)
    z = -np.log(np.arange(1, VOCAB + 1)) + rng.gumbel(size=(n, VOCAB))
    for i in range(n):
        z[i, rng.choice(VOCAB, 3, replace=False)] += rng.uniform(2, 14) - np.array([0, 1.5, 3])
    lp = z - np.log(np.exp(z).sum(1, keepdims=True))
    ids = np.argsort(-lp, axis=1)[:, :k]
    return ids.astype(np.int32), np.take_along_axis(lp, ids, 1).astype(np.float32)


def items(n=12, k=16, d=5, seed=0, simplified=True):
    """Examples with teacher-like labels (distinct ids per position), no teacher involved."""
    rng = np.random.default_rng(seed)
    out, start = [], 0
    n_resp = rng.integers(2, 9, n)
    ids, lp = teacher_topk(int(n_resp.sum()), k, seed)
    for i, m in enumerate(n_resp):
        resp = rng.integers(5, VOCAB, m).tolist()
        lab = Labels(ids[start:start + m], lp[start:start + m], lp[start:start + m, 0].copy(),
                     {2: rng.random(d).astype(np.float32)})
        start += m
        simp = ([1, 3] + resp, 2) if simplified else (None, None)
        out.append((Tokenized(f"id{i:03d}", [1, 7, 8, 9] + resp, 4, *simp), lab))
    return out


def write_label_set(out, its, k, encoding, shard_size=5):
    """A label set on disk by hand (build_table + parquet_bytes + manifest), no teacher."""
    infos = []
    for s in range(0, len(its), shard_size):
        table = build_table(its[s:s + shard_size], k, (2,), {"k": k}, encoding=encoding)
        data = parquet_bytes(table)
        rel = f"shards/part-{s:04d}.parquet"
        (out / "shards").mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        tokens = sum(len(r) for r in table["target_logprob"].to_pylist())
        infos.append(ShardInfo(rel, table.num_rows, tokens, len(data),
                               hashlib.sha256(data).hexdigest()))
    write_manifest(str(out), Manifest(1, "test", {"path": "synthetic"}, "synthetic",
                                      {"top_k": k, "hidden_layers": [2], "encoding": encoding},
                                      infos, {"path": "", "rows": 0}, {"rows_in": len(its)}))
    return str(out)
