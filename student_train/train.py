"""The training loop: stream batches, lambda*CE + (1-lambda)*T^2*KD [+ hidden], AdamW, checkpoints.

KD targets are the label set's cached top k, or with ``teacher`` the full distribution of a
teacher run in the loop (student_train/online.py).

Runs as one process or under torchrun (data parallel; gloo on CPU, nccl on GPU): every rank walks
the same global batches and takes its own slice of each, so per-rank step counts are always
equal; gradients are averaged with one flat all-reduce per optimiser step.
"""
import dataclasses
import hashlib
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from schemas.files import copy_tokenizer
from student_train import checkpoint, losses, online
from student_train.model import Distiller, load_student
from student_train.stream import LabelSet, batches, loader


@dataclasses.dataclass
class TrainConfig:
    labels: str
    student: str
    out: str
    steps: int
    batch_size: int = 16          # rows per rank per micro-batch
    grad_accum: int = 1           # micro-batches per optimiser step
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    lam: float = 0.5              # weight of CE; 1.0 = CE only
    temperature: float = 1.0
    divergence: str = "forward_kl"
    beta: float = 0.5             # generalised JSD
    alpha: float = 0.1            # skew KL / skew reverse KL
    tail: bool = True             # tail bucket (True) or renormalise over the top k (False)
    hidden_weight: float = 0.0    # weight of the hidden-state (multi-level) loss; 0 = off
    hidden_loss: str = "mse"      # mse | cosine
    hidden_target: str = "mean"   # mean: response-span summaries; tokens: per-token projections
    layer_map: dict | None = None  # student layer -> teacher layer; None = uniform
    views: tuple[str, ...] = ("raw", "simplified")
    simplified_ratio: float | None = None  # one view per example: simplified with this chance
    seed: int = 0
    save_every: int = 0
    resume: bool = False
    follow: bool = False          # train while `kd label` is still writing the label set
    poll_seconds: float = 2.0     # follow: how often to look for newly committed shards
    workers: int = 0              # DataLoader worker processes building batches (0 = inline)
    shuffle_buffer: int = 2048    # rows in the seeded shuffle buffer
    bf16: bool = False            # autocast the student forward to bfloat16
    chunk_positions: int = 4096   # positions per logits chunk (bounds full-vocab memory)
    metrics_file: str | None = None
    teacher: str | None = None    # online KD: this teacher model runs in the loop (full vocab)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def backward_step(model: Distiller, batch, cfg: TrainConfig, scale: float = 1.0,
                  denom: float | None = None) -> dict:
    """Forward + backward of one micro-batch; gradients accumulate, scaled by ``scale``.

    Logit losses are summed over positions and divided by ``denom`` (default: this batch's
    position count; under data parallelism, the global count / world, so that the averaged
    gradient equals that of one process seeing the whole global batch).

    The LM head and the logit losses run chunk by chunk over the labelled positions, each chunk
    back-propagated at once into a detached copy of the final hidden states; one backward through
    the backbone follows. Peak memory holds one (chunk, V) logits tensor, not (N, V).
    """
    device_type = batch.input_ids.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.bf16):
        h, summaries = model(batch)
    n = h.shape[0]
    denom = denom or n
    h_leaf = h.detach().requires_grad_(True)
    ce_total = kd_total = 0.0
    for s in range(0, n, cfg.chunk_positions):
        sl = slice(s, s + cfg.chunk_positions)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model.head(h_leaf[sl])
        ce = losses.ce_loss(logits, batch.targets[sl]).sum()
        kd = (losses.sparse_kd_loss(logits, batch.topk_ids[sl], batch.topk_logprobs[sl],
                                    cfg.temperature, cfg.divergence, cfg.tail, beta=cfg.beta,
                                    alpha=cfg.alpha).sum()
              if cfg.lam < 1.0 else torch.zeros((), device=logits.device))
        (losses.combined_loss(ce, kd, cfg.lam, cfg.temperature) * (scale / denom)).backward()
        ce_total += ce.item()
        kd_total += kd.item()
    hid = sum((losses.hidden_loss(proj, batch.hidden[t], cfg.hidden_loss).mean()
               for t, proj in summaries.items()), torch.zeros((), device=h.device))
    ((h * h_leaf.grad).sum() + cfg.hidden_weight * scale * hid).backward()
    ce, kd = ce_total / n, kd_total / n
    return {"loss": float(losses.combined_loss(ce, kd, cfg.lam, cfg.temperature)
                          + cfg.hidden_weight * hid.item()),
            "ce": ce, "kd": kd, "hidden": hid.item(), "tokens": n}


def all_reduce_grads(model: torch.nn.Module, world: int) -> None:
    """Average gradients over ranks in one flat all-reduce."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def truncate_metrics(path: str, step: int) -> None:
    """Drop metric lines past ``step`` (written after the checkpoint we resume from)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(keep)


def broadcast_from_rank0(obj):
    """Every rank gets rank 0's ``obj`` (DDP ranks must agree on which shards exist)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world, device


def train(cfg: TrainConfig) -> dict:
    rank, world, device = setup_distributed()
    torch.manual_seed(cfg.seed)
    if cfg.hidden_target not in ("mean", "tokens"):
        raise ValueError(f"hidden_target {cfg.hidden_target!r}: use 'mean' or 'tokens'")
    per_token = cfg.hidden_weight > 0 and cfg.hidden_target == "tokens"
    ls = LabelSet(cfg.labels, views=cfg.views, follow=cfg.follow, poll=cfg.poll_seconds,
                  simplified_ratio=cfg.simplified_ratio, hidden_per_token=per_token)
    sync = broadcast_from_rank0 if world > 1 else None
    if sync:
        ls.shards = sync(ls.shards)
    student, tok = load_student(cfg.student, ls.tokenizer_dir(), cfg.seed)
    model = Distiller(student, ls.hidden_layers if cfg.hidden_weight > 0 else [],
                      ls.hidden_dim, cfg.layer_map, ls.teacher_layers, per_token).to(device)
    model.train()
    teacher = (online.load_teacher(cfg.teacher, ls.tokenizer_dir(), student).to(device)
               if cfg.teacher and cfg.lam < 1.0 else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    os.makedirs(cfg.out, exist_ok=True)
    step, position = 0, (0, 0)
    if cfg.resume:
        state = checkpoint.load_latest(cfg.out, model, opt)
        if state is not None:
            step, position = state["step"], tuple(state["position"])
            ls.adopt_order(state["shard_order"])
            if rank == 0:
                print(f"resumed from step {step} (stream epoch {position[0]}, "
                      f"batch {position[1]})")
    if world > 1:  # identical start on every rank
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)
    metrics_path = cfg.metrics_file or os.path.join(cfg.out, "metrics.jsonl")
    if rank == 0:
        truncate_metrics(metrics_path, step)
    if cfg.follow:
        if cfg.workers:
            raise ValueError("--follow reads shards as they are committed: use --workers 0")
        stream = batches(ls, cfg.batch_size, cfg.seed, position, pad_id=tok.pad_token_id or 0,
                         rank=rank, world=world, follow=True, sync=sync,
                         shuffle_buffer=cfg.shuffle_buffer)
    else:
        stream = loader(ls, cfg.batch_size, cfg.seed, position, tok.pad_token_id or 0, rank,
                        world, cfg.workers, cfg.shuffle_buffer)
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 15, disable=rank != 0)
    t0, last = time.time(), {}
    mf = open(metrics_path, "a", buffering=1) if rank == 0 else None  # line-buffered
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        parts, t_step, wait, digest = [], time.perf_counter(), 0.0, hashlib.sha256()
        for _ in range(cfg.grad_accum):
            t_wait = time.perf_counter()
            (epoch, index), batch = next(stream)
            wait += time.perf_counter() - t_wait
            digest.update(batch.input_ids.numpy().tobytes())
            batch, denom = batch.to(device), None
            if teacher is not None:
                batch = online.with_teacher(teacher, batch)
            if world > 1:
                count = torch.tensor(float(batch.targets.numel()), device=device)
                dist.all_reduce(count)
                denom = count.item() / world
            parts.append(backward_step(model, batch, cfg, 1.0 / cfg.grad_accum, denom))
        last = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
        if world > 1:
            all_reduce_grads(model, world)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        last.update(step_s=time.perf_counter() - t_step, data_wait_s=wait,
                    batch=digest.hexdigest()[:16])  # which rows this step saw
        bar.update(1)
        bar.set_postfix(loss=f"{last['loss']:.3f}", ce=f"{last['ce']:.3f}", refresh=False)
        if mf:
            mf.write(json.dumps({"step": step, "lr": lr_at(cfg, step - 1), **last}) + "\n")
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            if rank == 0:
                mf.flush()
                checkpoint.save(cfg.out, model, opt, {
                    "step": step, "position": [epoch, index + 1],
                    "shard_order": [s.path for s in ls.shards]})
            if world > 1:
                dist.barrier()
    bar.close()
    if rank == 0:
        mf.close()
        student.save_pretrained(cfg.out, safe_serialization=True)
        copy_tokenizer(ls.tokenizer_dir(), cfg.out)
        with open(os.path.join(cfg.out, "train_config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=1)
        from student_train.plots import plot_metrics
        plot_metrics(metrics_path, os.path.join(cfg.out, "loss.png"))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"steps": step, "seconds": time.time() - t0, "rank": rank, "world": world, **last}
