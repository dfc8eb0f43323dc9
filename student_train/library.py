"""Label sets in your own training loop: a row stream, a collator and the KD loss.

    from student_train.library import LabelSetDataset, collate_rows, kd_loss

    ds = LabelSetDataset("runs/demo/labels/train", seed=0, batch_size=16)  # IterableDataset
    dl = torch.utils.data.DataLoader(ds, batch_size=16, collate_fn=collate_rows)
    for batch in dl:
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits
        loss = kd_loss(logits, batch, lam=0.5, temperature=1.0)

Top-k, sampled and both label sets (schema v2) alike: the rows carry the label set's soft-target
columns and the loss picks the estimator ``kd train`` uses for them (``losses.kd_term``).
The rows come in the order ``kd train`` uses (student_train.stream.batches: seeded shard
permutation per epoch, a seeded shuffle buffer), split across ranks (row r of each group of
``world`` rows goes to rank r) and DataLoader workers, so the sequence is the same for any number
of workers. The losses are the pure functions of student_train.losses. docs/LIBRARY.md has the
full guide, including a ``transformers.Trainer`` example (examples/hf_trainer.py).
"""
import torch

from schemas.rows import predicted
from student_train.losses import (DIVERGENCES, SOFT_COLUMNS, ce_loss, check_sampled,
                                  combined_loss, kd_term, sparse_kd_loss)
from student_train.stream import LabelSet, batches, pad_rows

__all__ = ["LabelSetDataset", "collate_rows", "kd_loss", "kd_term", "check_sampled",
           "sparse_kd_loss", "ce_loss", "combined_loss", "DIVERGENCES"]


class LabelSetDataset(torch.utils.data.IterableDataset):
    """The rows of a label set as dicts of tensors: ``input_ids`` (L,), ``label_start`` (the first
    labelled position), for the n labelled positions ``topk_ids`` and ``topk_logprobs`` (n, k)
    and the sampled targets ``sample_ids``, ``sample_counts``, ``sample_logw`` (n, S; log
    importance weights (n, 0) where the set stores none), ``soft_targets`` and
    ``proposal_temperature`` (the label set's ``targets`` and ``proposal_temperature``; top-k
    sets have (n, 0) sampled columns, ``sampled`` sets (n, 0) top-k columns, as in
    student_train.stream), and ``position`` (epoch, index) of the row in the stream.

    ``rank``/``world`` default to torch.distributed's when it is initialised. DataLoader workers
    are dealt rows in blocks of ``batch_size`` (give the DataLoader's), so the batches are the
    same for any number of workers. Iterates ``epochs``
    epochs (None: forever, for step-bounded training). Resumable: ``state_dict()`` after the rows
    consumed in this process, or the ``next_position`` of the last collated batch when a
    DataLoader runs workers; ``load_state_dict`` before iterating continues exactly there (iterating again in the same
    process continues where the last iteration stopped).
    Shards are verified against their sha256 before use (``verify``).
    """

    def __init__(self, path: str, views: tuple[str, ...] = ("raw", "simplified"), seed: int = 0,
                 rank: int | None = None, world: int | None = None, epochs: int | None = None,
                 shuffle_buffer: int = 2048, follow: bool = False, verify: bool = True,
                 batch_size: int = 1):
        super().__init__()
        self.labels = LabelSet(path, views=tuple(views), verify=verify, follow=follow)
        if rank is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank, world = ((torch.distributed.get_rank(), torch.distributed.get_world_size())
                           if dist else (0, 1))
        self.rank, self.world = rank, world or 1
        self.seed, self.epochs, self.follow = seed, epochs, follow
        self.shuffle_buffer, self.block = shuffle_buffer, batch_size
        self.position = (0, 0)  # (epoch, index of the next row) for this rank

    @property
    def top_k(self) -> int:
        return self.labels.k

    @property
    def targets(self) -> str:
        """The label set's soft targets: ``topk``, ``sampled`` or ``both`` (docs/SCHEMA.md)."""
        return self.labels.targets

    @property
    def proposal_temperature(self) -> float:
        """The temperature the sampled targets were drawn at (1.0 without sampled targets)."""
        return self.labels.proposal_temperature

    def tokenizer_dir(self) -> str:
        """A local directory holding the label set's (the teacher's) tokenizer."""
        return self.labels.tokenizer_dir()

    def state_dict(self) -> dict:
        return {"position": list(self.position), "shards": [s.path for s in self.labels.shards],
                "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this stream has "
                             f"seed {self.seed}")
        self.labels.adopt_order(state["shards"])
        self.position = tuple(int(v) for v in state["position"])

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        rows = batches(self.labels, 1, self.seed, self.position, rank=self.rank,
                       world=self.world, follow=self.follow, lazy=True,
                       shuffle_buffer=self.shuffle_buffer)
        for g, ((epoch, index), build) in enumerate(rows):
            if self.epochs is not None and epoch >= self.epochs:
                return
            if (g // self.block) % workers != wid:
                continue
            b = build()
            self.position = (epoch, index + 1)
            yield {"input_ids": b.input_ids[0], "label_start": int(b.pos_t[0]) + 1,
                   **{c: getattr(b, c) for c in SOFT_COLUMNS},
                   "soft_targets": self.targets,
                   "proposal_temperature": self.proposal_temperature,
                   "position": (epoch, index)}


def collate_rows(rows: list[dict], pad_id: int = 0) -> dict:
    """Rows of a LabelSetDataset -> a batch dict: ``input_ids``, ``attention_mask`` (B, L)
    right-padded; ``labels`` (B, L) with -100 outside the labelled tokens (the usual causal-LM
    convention, for a model's own CE); ``pos_b``, ``pos_t`` (N,) the row and position whose
    output predicts each labelled token, ``targets`` (N,) that token; ``topk_ids``,
    ``topk_logprobs`` (N, k); ``sample_ids``, ``sample_counts``, ``sample_logw`` (N, S);
    ``soft_targets`` and ``proposal_temperature`` of the label set; ``next_position`` (2,) where
    the stream continues after this batch (student_train.stream.pad_rows pads, as for
    ``kd train``). Use ``functools.partial(collate_rows, pad_id=...)`` for another pad id."""
    tk, tl, si, sc, sw = ([r[c].numpy() for r in rows] for c in SOFT_COLUMNS)
    b = pad_rows([r["input_ids"].numpy() for r in rows], [r["label_start"] for r in rows],
                 tk, tl, {}, pad_id, si, sc, sw)
    labels = torch.full_like(b.input_ids, -100)
    labels[b.pos_b, predicted(b.pos_t)] = b.targets
    last = max(r["position"] for r in rows)
    return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": labels,
            "pos_b": b.pos_b, "pos_t": b.pos_t, "targets": b.targets,
            **{c: getattr(b, c) for c in SOFT_COLUMNS},
            "soft_targets": rows[0]["soft_targets"],
            "proposal_temperature": rows[0]["proposal_temperature"],
            "next_position": torch.tensor([last[0], last[1] + 1])}


def kd_loss(logits: torch.Tensor, batch: dict, lam: float = 0.5, temperature: float = 1.0,
            divergence: str = "forward_kl", tail: bool = True, **kwargs) -> torch.Tensor:
    """Mean over the labelled positions of lambda*CE + (1-lambda)*T^2*KD, as ``kd train``.

    ``logits`` (B, L, V) from the student on ``batch["input_ids"]``; ``kwargs`` (beta, alpha) go
    to the divergence. For long sequences and big vocabularies compute the logits of the
    labelled positions only (``hidden[pos_b, pos_t]`` through the LM head) and pass them (N, V).
    KD is ``losses.kd_term`` for the batch's ``soft_targets`` (absent: ``topk``): the sparse
    top-k divergence, or for sampled / both targets the sampled estimate of the forward KL, with
    the draws' importance weights when ``temperature`` is not the proposal temperature;
    ``losses.check_sampled`` refuses, with the reason, what samples cannot estimate."""
    targets = batch.get("soft_targets", "topk")
    importance = check_sampled(targets, divergence, temperature,
                               batch.get("proposal_temperature", 1.0))
    sel = logits if logits.dim() == 2 else logits[batch["pos_b"], batch["pos_t"]]
    ce = ce_loss(sel, batch["targets"])
    kd = kd_term(sel, *(batch.get(c) for c in SOFT_COLUMNS), targets, temperature, divergence,
                 tail, importance, **kwargs)
    return combined_loss(ce, kd, lam, temperature).mean()
