"""Stream batches from a label set: manifest-listed shards, columnar decode, deterministic order.

Order: per epoch, the shards are permuted (seeded by (seed, epoch)), read one Parquet row group
at a time, and their rows pass through a seeded shuffle buffer; the sequence is cut into batches.
A batch is therefore a pure function of (seed, shard order, epoch, batch index), which makes
resume exact: the stream state is the shard order plus (epoch, batch index). Shards are verified
against their recorded sha256 before use and decoded column-wise with numpy.
"""
import dataclasses
import functools
import hashlib
import time

import fsspec
import numpy as np
import pyarrow.parquet as pq
import torch

from schemas import ShardInfo, load_manifest, verify_shard
from schemas.files import TOKENIZER_DIR, check_store, copy_tokenizer
from schemas.labelconfig import LabelConfig
from schemas.labelset import ShardArrays, decode_table
from schemas.manifest import load_committed
from schemas.rows import predictor


class LabelSet:
    """A label set: its shards (decoded on demand), from the manifest or, while the labelling job
    is still running (``follow=True``), from the job's per-shard commit records."""

    def __init__(self, path: str, views: tuple[str, ...] = ("raw", "simplified"),
                 verify: bool = True, follow: bool = False, poll: float = 2.0,
                 timeout: float = 3600.0, simplified_ratio: float | None = None,
                 hidden_per_token: bool = False):
        self.path = path.rstrip("/")
        check_store(self.path)
        self.fs, self.root = fsspec.core.url_to_fs(self.path)
        self.views, self.verify, self.poll = views, verify, poll
        self.simplified_ratio = simplified_ratio
        self.hidden_per_token = hidden_per_token
        self.shards: list[ShardInfo] = []
        self.final = False
        self.label_config: dict | None = None
        self._cache: dict[int, tuple[ShardArrays, np.ndarray]] = {}
        self._verified: set[int] = set()
        self._local_tok: str | None = None
        deadline = time.time() + timeout
        self.refresh(follow)
        while self.label_config is None:  # follow: wait for the first committed shard
            if time.time() > deadline:
                raise TimeoutError(f"no shard committed in {path} after {timeout:.0f} s")
            time.sleep(poll)
            self.refresh(follow)
        lc = self.config = LabelConfig.from_dict(self.label_config)
        self.k = lc.top_k
        self.targets, self.samples = lc.targets, lc.samples
        self.proposal_temperature = lc.proposal_temperature
        self.hidden_layers = list(lc.hidden_layers)
        self.hidden_dim = lc.hidden_size
        self.teacher_layers = lc.teacher_num_layers
        if hidden_per_token:
            if not lc.hidden_proj:
                raise ValueError(f"{path} stores no per-token projections: label it with "
                                 "`kd label --hidden-proj-dim R`")
            self.hidden_dim = int(lc.hidden_proj["dim"])
        if self.hidden_layers and self.hidden_dim is None and self.num_shards:
            self.hidden_dim = next(iter(self.shard(0)[0].hidden.values())).shape[1]

    def refresh(self, follow: bool = True, sync=None) -> None:
        """Pick up newly committed shards; known shards keep their index (stable order)."""
        try:
            m = load_committed(self.path) if follow else load_manifest(self.path)
            found, final, config = m.shards, m.complete, m.label_config
        except FileNotFoundError:
            if not follow:
                raise
            found, final, config = [], False, None  # nothing committed yet
        if sync is not None:  # DDP: every rank adopts rank 0's view
            found, final, config = sync((found, final, config))
        known = {s.path for s in self.shards}
        self.shards += [s for s in found if s.path not in known]
        self.final, self.label_config = final, config

    def adopt_order(self, paths: list[str]) -> None:
        """Put the shards in a recorded order (resume): those paths first, the rest after."""
        by_path = {s.path: s for s in self.shards}
        missing = [p for p in paths if p not in by_path]
        if missing:
            raise ValueError(f"checkpoint refers to shards not in {self.path}: {missing[:3]}")
        self.shards = [by_path[p] for p in paths] + [s for s in self.shards if s.path not in paths]
        self._cache.clear()
        self._verified.clear()

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def _open(self, i: int) -> pq.ParquetFile:
        info = self.shards[i]
        path = f"{self.root}/{info.path}"
        if self.verify and i not in self._verified:
            verify_shard(self.fs, path, info.sha256)
            self._verified.add(i)
        return pq.ParquetFile(self.fs.open(path, "rb"))

    def _select(self, arrays: ShardArrays) -> np.ndarray:
        """Rows to train on: the selected views, or one view per example by ``simplified_ratio``.

        With a ratio r, an example with both views contributes its simplified row with
        probability r and its raw row otherwise (a fixed choice per example: a hash of its id);
        an example without a simplified row contributes its raw row. Shards never split an
        example's rows across row groups, so both are seen together here.
        """
        if self.simplified_ratio is None:
            return np.flatnonzero(np.isin(arrays.view, self.views))
        is_simp = arrays.view == "simplified"
        has_simp = set(arrays.example_id[is_simp])
        u = np.array([int(hashlib.sha256(i.encode()).hexdigest()[:8], 16) / 2**32
                      for i in arrays.example_id])
        pick_simp = u < self.simplified_ratio
        paired = np.array([i in has_simp for i in arrays.example_id], dtype=bool)
        keep = np.where(is_simp, pick_simp, ~(paired & pick_simp))
        return np.flatnonzero(keep)

    def shard(self, i: int) -> tuple[ShardArrays, np.ndarray]:
        """Shard i decoded whole, and the indices of its rows in the selected views."""
        if i not in self._cache:
            arrays = decode_table(self._open(i).read(), self.k, self.hidden_layers,
                                  self.hidden_per_token, self.samples)
            self._cache = {i: (arrays, self._select(arrays))}  # one shard at a time
        return self._cache[i]

    def row_groups(self, i: int):
        """Shard i one Parquet row group at a time: (decoded arrays, selected row indices)."""
        pf = self._open(i)
        for g in range(pf.num_row_groups):
            arrays = decode_table(pf.read_row_group(g), self.k, self.hidden_layers,
                                  self.hidden_per_token, self.samples)
            yield arrays, self._select(arrays)

    def tokenizer_dir(self) -> str:
        """A local directory with the label set's tokenizer (copied once if the set is remote)."""
        if "file" in self.fs.protocol or "local" in self.fs.protocol:
            return f"{self.root}/{TOKENIZER_DIR}"
        if self._local_tok is None:
            import tempfile
            self._local_tok = tempfile.mkdtemp(prefix="kd-tokenizer-")
            copy_tokenizer(f"{self.path}/{TOKENIZER_DIR}", self._local_tok)
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
    hidden: dict                  # teacher layer -> (B, d) summary, or (N, r) per token
    sample_ids: torch.Tensor      # (N, S) sampled targets, -1 padding; (N, 0) without
    sample_counts: torch.Tensor   # (N, S) draws per id, 0 padding
    sample_logw: torch.Tensor     # (N, S) log importance weights; (N, 0) when all 0

    def to(self, device) -> "Batch":
        if device.type == "cpu":
            return self
        return Batch(*(v.to(device) if torch.is_tensor(v) else
                       {k: t.to(device) for k, t in v.items()}
                       for v in (getattr(self, f.name) for f in dataclasses.fields(self))))


def collate(parts: list[tuple[ShardArrays, np.ndarray]], pad_id: int = 0) -> Batch:
    """Rows given as (shard arrays, row indices) -> one padded batch."""
    seqs, starts, tk, tl, si, sc, sw = [], [], [], [], [], [], []
    hid: dict = {layer: [] for layer in parts[0][0].hidden}
    for arr, rows in parts:
        for r in rows:
            seqs.append(arr.ids[arr.ids_off[r]:arr.ids_off[r + 1]])
            starts.append(int(arr.label_start[r]))
            tk.append(arr.topk_ids[arr.tok_off[r]:arr.tok_off[r + 1]])
            tl.append(arr.topk_lp[arr.tok_off[r]:arr.tok_off[r + 1]])
            span = slice(arr.tok_off[r], arr.tok_off[r + 1])
            n_pos = arr.tok_off[r + 1] - arr.tok_off[r]
            si.append(arr.sample_ids[span] if arr.sample_ids is not None
                      else np.zeros((n_pos, 0), np.int32))
            sc.append(arr.sample_counts[span] if arr.sample_counts is not None
                      else np.zeros((n_pos, 0), np.uint8))
            sw.append(arr.sample_logw[span] if arr.sample_logw is not None
                      else np.zeros((n_pos, 0), np.float32))
            for layer, h in arr.hidden.items():
                hid[layer].append(h[arr.tok_off[r]:arr.tok_off[r + 1]] if arr.hidden_per_token
                                  else h[r][None])
    return pad_rows(seqs, starts, tk, tl, hid, pad_id, si, sc, sw)


def pad_rows(seqs: list, starts: list[int], tk: list, tl: list, hid: dict,
             pad_id: int = 0, si: list | None = None, sc: list | None = None,
             sw: list | None = None) -> Batch:
    """Per-row arrays (input ids, first labelled position, (n, k) top-k ids and log-probs, hidden
    targets per layer, and the (n, S) sampled targets when there are any) -> one right-padded
    batch."""
    lengths = np.array([len(s) for s in seqs])
    ids = np.full((len(seqs), lengths.max()), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    pos_b = np.concatenate([np.full(n - s, i) for i, (n, s) in enumerate(zip(lengths, starts))])
    pos_p = np.concatenate([np.arange(s, n) for n, s in zip(lengths, starts)])
    none = {"si": np.zeros((len(pos_b), 0), np.int32), "sc": np.zeros((len(pos_b), 0), np.uint8),
            "sw": np.zeros((len(pos_b), 0), np.float32)}
    si, sc, sw = ([none[k]] if not v else v for k, v in (("si", si), ("sc", sc), ("sw", sw)))
    return Batch(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos_b),
                 torch.from_numpy(predictor(pos_p)), torch.from_numpy(ids[pos_b, pos_p]),
                 torch.from_numpy(np.concatenate(tk).astype(np.int64)),
                 torch.from_numpy(np.concatenate(tl)),
                 {layer: torch.from_numpy(np.concatenate(h)) for layer, h in hid.items()},
                 torch.from_numpy(np.concatenate(si).astype(np.int64)),
                 torch.from_numpy(np.concatenate(sc).astype(np.int64)),
                 torch.from_numpy(np.concatenate(sw)))


def growing_shards(ls: LabelSet, sync=None):
    """Shard indices in commit order, waiting for more until the manifest is final."""
    i = 0
    while True:
        if i < ls.num_shards:
            yield i
            i += 1
        elif ls.final:
            return
        else:
            time.sleep(ls.poll)
            ls.refresh(follow=True, sync=sync)


def batches(ls: LabelSet, batch_size: int, seed: int, start: tuple[int, int] = (0, 0),
            pad_id: int = 0, rank: int = 0, world: int = 1, follow: bool = False, sync=None,
            lazy: bool = False, shuffle_buffer: int = 2048):
    """Yield ((epoch, index), Batch) forever from ``start``; full batches only, in order.

    Epoch e visits the shards in a permutation seeded by (seed, e), reads them one row group at a
    time, and passes rows through a shuffle buffer of ``shuffle_buffer`` rows drawn with an RNG
    seeded by (seed, e). With ``follow``, epoch 0 instead takes the shards in commit order as the
    labelling job commits them, and ends when the manifest is final.
    A global batch holds ``batch_size * world`` rows; rank r takes rows r, r + world, ... so
    every rank sees the same number of batches and no row is seen twice or dropped (beyond the
    incomplete last global batch of an epoch, which nobody sees). With ``lazy``, yields
    ((epoch, index), build) where build() collates the batch (so a reader can skip batches
    cheaply).
    """
    global_size = batch_size * world
    epoch, skip = start
    while True:
        if follow and epoch == 0:
            order = growing_shards(ls, sync)
        else:
            order = (int(s) for s in np.random.default_rng([seed, epoch]).permutation(ls.num_shards))
        rng = np.random.default_rng([seed, epoch, 1])
        buffer: list = []   # (arrays, row) waiting to be drawn
        pending: list = []  # drawn rows waiting for a full global batch
        index = 0

        def draw(n_keep: int):
            while len(buffer) > n_keep:
                j = int(rng.integers(len(buffer)))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                pending.append(buffer.pop())

        def emit():
            nonlocal index, pending
            while len(pending) >= global_size:
                chunk, pending = pending[:global_size][rank::world], pending[global_size:]
                if index >= skip:
                    groups: dict = {}
                    for arrays, r in chunk:
                        groups.setdefault(id(arrays), (arrays, []))[1].append(r)
                    parts = [(a, np.array(rows)) for a, rows in groups.values()]
                    pos = (epoch, index)
                    yield pos, (functools.partial(collate, parts, pad_id) if lazy
                                else collate(parts, pad_id))
                index += 1

        for s in order:
            for arrays, sel in ls.row_groups(s):
                buffer += [(arrays, r) for r in sel]
                draw(shuffle_buffer)
                yield from emit()
        draw(0)
        yield from emit()
        if index == 0:
            raise ValueError(f"label set {ls.path} has fewer rows in views {ls.views} than one "
                             f"global batch of {global_size}")
        epoch, skip = epoch + 1, 0


class BatchStream(torch.utils.data.IterableDataset):
    """``batches`` for a DataLoader with worker processes: global batch g (counted from the start
    position) is built by worker g mod W, and the DataLoader's round-robin over workers returns
    them in order, so the sequence is the same for any number of workers."""

    def __init__(self, ls: LabelSet, batch_size: int, seed: int, start: tuple[int, int],
                 pad_id: int, rank: int, world: int, shuffle_buffer: int):
        self.args = (ls, batch_size, seed, start, pad_id, rank, world)
        self.shuffle_buffer = shuffle_buffer

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        ls, batch_size, seed, start, pad_id, rank, world = self.args
        for g, item in enumerate(batches(ls, batch_size, seed, start, pad_id, rank, world,
                                         lazy=True, shuffle_buffer=self.shuffle_buffer)):
            if g % workers == wid:
                pos, build = item
                yield pos, build()


def loader(ls: LabelSet, batch_size: int, seed: int, start: tuple[int, int], pad_id: int,
           rank: int, world: int, workers: int, shuffle_buffer: int = 2048):
    """Iterator of ((epoch, index), Batch): in-process, or through ``workers`` processes."""
    if workers == 0:
        return batches(ls, batch_size, seed, start, pad_id, rank, world,
                       shuffle_buffer=shuffle_buffer)
    ds = BatchStream(ls, batch_size, seed, start, pad_id, rank, world, shuffle_buffer)
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                            prefetch_factor=4, persistent_workers=False))
