"""Stream batches from a label set: manifest-listed shards, columnar decode, deterministic order.

Order: per epoch, the shards are permuted and each shard's rows are permuted (seeded by
(seed, epoch, shard)); the sequence is cut into batches. A batch is therefore a pure function of
(seed, epoch, batch index), which makes resume exact: the stream state is (epoch, batch index).
Shards are verified against the manifest's sha256 before use and decoded column-wise with numpy.
"""
import dataclasses
import os

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from schemas import hidden_column, load_manifest, verify_shard


@dataclasses.dataclass
class ShardArrays:
    """One shard decoded to flat numpy arrays (no per-row Python objects)."""
    view: np.ndarray          # (R,) object
    ids: np.ndarray           # flat input ids
    ids_off: np.ndarray       # (R+1,)
    label_start: np.ndarray   # (R,)
    topk_ids: np.ndarray      # (T, k) over all response tokens of the shard
    topk_lp: np.ndarray       # (T, k)
    tok_off: np.ndarray       # (R+1,) offsets into the T axis
    hidden: dict              # teacher layer -> (R, d) summaries


def _offsets(col: pa.ChunkedArray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(pc.list_value_length(col).to_numpy())])


def decode_table(table: pa.Table, k: int, hidden_layers: list[int]) -> ShardArrays:
    flat_ids = pc.list_flatten(table["input_ids"]).to_numpy()
    tk = pc.list_flatten(pc.list_flatten(table["topk_ids"])).to_numpy().reshape(-1, k)
    tl = pc.list_flatten(pc.list_flatten(table["topk_logprobs"])).to_numpy().reshape(-1, k)
    hidden = {layer: pc.list_flatten(table[hidden_column(layer)]).to_numpy()
              .reshape(table.num_rows, -1) for layer in hidden_layers}
    return ShardArrays(table["view"].to_numpy(zero_copy_only=False), flat_ids,
                       _offsets(table["input_ids"]), table["label_start"].to_numpy(),
                       tk, tl, _offsets(table["topk_ids"]), hidden)


class LabelSet:
    """A committed label set: its manifest, file system and shards (decoded on demand)."""

    def __init__(self, path: str, views: tuple[str, ...] = ("raw", "simplified"),
                 verify: bool = True):
        self.path = path.rstrip("/")
        self.manifest = load_manifest(self.path)
        self.fs, self.root = fsspec.core.url_to_fs(self.path)
        self.k = int(self.manifest.label_config["top_k"])
        lc = self.manifest.label_config
        self.hidden_layers = list(lc.get("hidden_layers") or [])
        self.hidden_dim = lc.get("hidden_size")
        self.teacher_layers = lc.get("teacher_num_layers")
        self.views, self.verify = views, verify
        self._cache: dict[int, tuple[ShardArrays, np.ndarray]] = {}
        self._verified: set[int] = set()
        self._local_tok: str | None = None
        if self.hidden_layers and self.hidden_dim is None and self.num_shards:
            self.hidden_dim = next(iter(self.shard(0)[0].hidden.values())).shape[1]

    @property
    def num_shards(self) -> int:
        return len(self.manifest.shards)

    def shard(self, i: int) -> tuple[ShardArrays, np.ndarray]:
        """Decoded shard i and the indices of its rows in the selected views."""
        if i not in self._cache:
            info = self.manifest.shards[i]
            path = f"{self.root}/{info.path}"
            if self.verify and i not in self._verified:
                verify_shard(self.fs, path, info.sha256)
                self._verified.add(i)
            arrays = decode_table(pq.read_table(path, filesystem=self.fs), self.k,
                                  self.hidden_layers)
            rows = np.flatnonzero(np.isin(arrays.view, self.views))
            self._cache = {i: (arrays, rows)}  # keep one shard decoded: memory stays flat
        return self._cache[i]

    def tokenizer_dir(self) -> str:
        """A local directory with the label set's tokenizer (copied once if the set is remote)."""
        if "file" in self.fs.protocol or "local" in self.fs.protocol:
            return f"{self.root}/tokenizer"
        if self._local_tok is None:
            import tempfile
            self._local_tok = tempfile.mkdtemp(prefix="kd-tokenizer-")
            for path in self.fs.ls(f"{self.root}/tokenizer", detail=False):
                self.fs.get(path, os.path.join(self._local_tok, os.path.basename(path)))
        return self._local_tok


@dataclasses.dataclass
class Batch:
    input_ids: torch.Tensor       # (B, L) int64, right-padded
    attention_mask: torch.Tensor  # (B, L)
    pos_b: torch.Tensor           # (N,) batch index of each labelled position
    pos_t: torch.Tensor           # (N,) position whose output predicts the labelled token
    targets: torch.Tensor         # (N,) the true token
    topk_ids: torch.Tensor        # (N, k)
    topk_logprobs: torch.Tensor   # (N, k)
    hidden: dict                  # teacher layer -> (B, d) summary

    def to(self, device) -> "Batch":
        if device.type == "cpu":
            return self
        return Batch(*(v.to(device) if torch.is_tensor(v) else
                       {k: t.to(device) for k, t in v.items()}
                       for v in (getattr(self, f.name) for f in dataclasses.fields(self))))


def collate(parts: list[tuple[ShardArrays, np.ndarray]], pad_id: int = 0) -> Batch:
    """Rows given as (shard arrays, row indices) -> one padded batch."""
    seqs, starts, tk, tl = [], [], [], []
    hid: dict = {layer: [] for layer in parts[0][0].hidden}
    for arr, rows in parts:
        for r in rows:
            seqs.append(arr.ids[arr.ids_off[r]:arr.ids_off[r + 1]])
            starts.append(int(arr.label_start[r]))
            tk.append(arr.topk_ids[arr.tok_off[r]:arr.tok_off[r + 1]])
            tl.append(arr.topk_lp[arr.tok_off[r]:arr.tok_off[r + 1]])
            for layer, h in arr.hidden.items():
                hid[layer].append(h[r])
    lengths = np.array([len(s) for s in seqs])
    ids = np.full((len(seqs), lengths.max()), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    pos_b = np.concatenate([np.full(n - s, i) for i, (n, s) in enumerate(zip(lengths, starts))])
    pos_p = np.concatenate([np.arange(s, n) for n, s in zip(lengths, starts)])
    return Batch(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos_b),
                 torch.from_numpy(pos_p - 1), torch.from_numpy(ids[pos_b, pos_p]),
                 torch.from_numpy(np.concatenate(tk).astype(np.int64)),
                 torch.from_numpy(np.concatenate(tl)),
                 {layer: torch.from_numpy(np.stack(h)) for layer, h in hid.items()})


def epoch_order(ls: LabelSet, seed: int, epoch: int) -> list[tuple[int, np.ndarray]]:
    """(shard, permuted selected rows) in this epoch's order."""
    rng = np.random.default_rng([seed, epoch])
    order = []
    for s in rng.permutation(ls.num_shards):
        _, rows = ls.shard(int(s))
        order.append((int(s), np.random.default_rng([seed, epoch, int(s)]).permutation(rows)))
    return order


def batches(ls: LabelSet, batch_size: int, seed: int, start: tuple[int, int] = (0, 0),
            pad_id: int = 0, rank: int = 0, world: int = 1):
    """Yield ((epoch, index), Batch) forever from ``start``; full batches only, in order.

    A global batch holds ``batch_size * world`` rows; rank r takes rows r, r + world, ...
    so every rank sees the same number of batches and no row is seen twice or dropped
    (beyond the incomplete last global batch of an epoch, which nobody sees).
    """
    global_size = batch_size * world
    epoch, skip = start
    while True:
        order = epoch_order(ls, seed, epoch)
        n_rows = sum(len(rows) for _, rows in order)
        if n_rows < global_size:
            raise ValueError(f"label set has {n_rows} rows in views {ls.views}, fewer than one "
                             f"global batch of {global_size}")
        # flatten to (shard, row) pairs and cut into full batches
        flat = [(s, r) for s, rows in order for r in rows]
        for b in range(skip, len(flat) // global_size):
            chunk = flat[b * global_size:(b + 1) * global_size][rank::world]
            parts = []
            for s in dict.fromkeys(s for s, _ in chunk):
                parts.append((ls.shard(s)[0], np.array([r for s2, r in chunk if s2 == s])))
            yield (epoch, b), collate(parts, pad_id)
        epoch, skip = epoch + 1, 0
