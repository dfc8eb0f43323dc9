"""The training loop: stream batches, lambda*CE + (1-lambda)*T^2*KD [+ hidden], AdamW, checkpoints.

KD targets are the label set's cached top k, or with ``teacher`` the full distribution of a
teacher run in the loop (student_train/online.py).

Runs as one process or under torchrun (data parallel; gloo on CPU, nccl on GPU): every rank walks
the same global batches and takes its own slice of each, so per-rank step counts are always
equal; torch's DDP averages the gradients once per optimiser step, or FSDP2 shards the model
(``--shard-model``; student_train/parallel.py).
"""
import copy
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
from student_train import checkpoint, losses, online, parallel, plots
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
    shard_model: bool = False     # under torchrun: FSDP2 (sharded) instead of DDP (replicated)
    chunk_positions: int = 0      # positions per logits chunk (bounds full-vocab memory);
    #                               0 = by device (``chunk_for``)
    metrics_file: str | None = None
    teacher: str | None = None    # online KD: this teacher model runs in the loop (full vocab)


CHUNK_POSITIONS = {"cuda": 4096, "cpu": 256}  # chunk_positions = 0: per device type


def chunk_for(cfg: TrainConfig, device_type: str) -> int:
    """Positions per logits chunk. On the CPU 256: at V = 32k a (256, V) fp32 chunk stays under
    glibc's 32 MiB limit for memory it reuses after a free; with 4096-position chunks the KD
    term, which makes more temporaries of that size than CE, cost 1.35x CE-only and much of the
    time was the kernel's (docs/BENCHMARKS.md, "Training: the KD loss against CE-only")."""
    return cfg.chunk_positions or CHUNK_POSITIONS.get(device_type, CHUNK_POSITIONS["cuda"])


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def backward_step(model: Distiller, batch, cfg: TrainConfig, scale: float = 1.0,
                  denom: float | None = None, engine: torch.nn.Module | None = None,
                  targets: str = "topk", importance: bool = False) -> dict:
    """Forward + backward of one micro-batch; gradients accumulate, scaled by ``scale``. The KD
    term is ``losses.kd_term`` for the label set's ``targets`` (``importance``: from
    ``losses.check_sampled``), as in ``student_train.library.kd_loss``.

    Logit losses are summed over positions and divided by ``denom`` (default: this batch's
    position count; under data parallelism, the global count / world, so that the averaged
    gradient equals that of one process seeing the whole global batch).

    The LM head and the logit losses run chunk by chunk over the labelled positions, each chunk
    back-propagated at once into detached copies of the final hidden states and of the head's
    weights; one backward through the model follows, carrying both accumulated gradients. Peak
    memory holds one (chunk, V) logits tensor, not (N, V), and the model sees exactly one
    backward per micro-batch, as DDP and FSDP2 (``engine``, the wrapper that runs the forward)
    expect.
    """
    device_type = batch.input_ids.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.bf16):
        h, summaries = (engine or model)(batch)
    n = h.shape[0]
    denom = denom or n
    head = model.student.get_output_embeddings()  # after the forward: unsharded under FSDP2
    params = [p for p in (head.weight, head.bias) if p is not None]
    leaves = [p.detach().requires_grad_(True) for p in params]
    h_leaf = h.detach().requires_grad_(True)
    ce_total = kd_total = 0.0
    chunk = chunk_for(cfg, device_type)
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = torch.nn.functional.linear(h_leaf[sl], *leaves)
        ce = losses.ce_loss(logits, batch.targets[sl]).sum()
        kd = (losses.kd_term(logits, *(getattr(batch, c)[sl] for c in losses.SOFT_COLUMNS),
                             targets, cfg.temperature, cfg.divergence, cfg.tail, importance,
                             cfg.beta, cfg.alpha).sum()
              if cfg.lam < 1.0 else torch.zeros((), device=logits.device))
        (losses.combined_loss(ce, kd, cfg.lam, cfg.temperature) * (scale / denom)).backward()
        ce_total += ce.item()
        kd_total += kd.item()
    hid = sum((losses.hidden_loss(proj, batch.hidden[t], cfg.hidden_loss).mean()
               for t, proj in summaries.items()), torch.zeros((), device=h.device))
    carried = (h * h_leaf.grad).sum() + sum((p * leaf.grad).sum() for p, leaf in
                                            zip(params, leaves) if leaf.grad is not None)
    (carried + cfg.hidden_weight * scale * hid).backward()
    ce, kd = ce_total / n, kd_total / n
    return {"loss": float(losses.combined_loss(ce, kd, cfg.lam, cfg.temperature)
                          + cfg.hidden_weight * hid.item()),
            "ce": ce, "kd": kd, "hidden": hid.item(), "tokens": n}


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


@dataclasses.dataclass
class Run:
    """What the loop works on, built once by ``setup``: the process's place in the job, the label
    set, the student (and, under torchrun, the wrapper the forward runs through), the optimiser,
    the batch stream, and where the loop stands."""
    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    ls: LabelSet
    importance: bool               # weight sampled draws by the stored p/q
    student: torch.nn.Module
    model: Distiller
    opt: torch.optim.Optimizer
    engine: torch.nn.Module        # what the forward runs through (model, DDP or FSDP2)
    shadow: Distiller | None       # FSDP2, rank 0: a plain CPU copy for checkpoints and the end
    shadow_opt: torch.optim.Optimizer | None
    stream: object                 # ((epoch, index), Batch) pairs
    metrics_path: str
    metrics: object                # rank 0: the metrics file, line-buffered
    tb: object                     # rank 0 with tensorboard installed: its event writer
    bar: tqdm
    step: int = 0
    position: tuple[int, int] = (0, 0)  # the stream position of the last batch taken
    t0: float = 0.0
    last: dict = dataclasses.field(default_factory=dict)  # the last step's metrics
    teacher: torch.nn.Module | None = None  # online KD: the teacher run on every batch
    targets: str = "topk"          # KD targets: the label set's, or topk for online KD


def train(cfg: TrainConfig, term=None) -> dict:
    """Set up, run the loop to ``cfg.steps``, write the student. ``term``: where kd's own lines
    and the progress bar go (default standard output / standard error)."""
    run = setup(cfg, term)
    loop(run)
    return finish(run)


def setup(cfg: TrainConfig, term=None) -> Run:
    """The process group, the label set, the student and optimiser (resumed from the latest
    checkpoint with ``cfg.resume``), the parallel wrapper and the batch stream."""
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
    online_kd = bool(cfg.teacher) and cfg.lam < 1.0
    targets = "topk" if online_kd else ls.targets  # online: the teacher's full distribution
    importance = losses.check_sampled(targets, cfg.divergence, cfg.temperature,
                                      ls.proposal_temperature)
    student, tok = load_student(cfg.student, ls.tokenizer_dir(), cfg.seed)
    model = Distiller(student, ls.hidden_layers if cfg.hidden_weight > 0 else [],
                      ls.hidden_dim, cfg.layer_map, ls.teacher_layers, per_token).to(device)
    model.train()
    teacher = (online.load_teacher(cfg.teacher, ls.tokenizer_dir(), student).to(device)
               if online_kd else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    os.makedirs(cfg.out, exist_ok=True)
    step, position = resume(cfg, model, opt, ls, rank, term)
    engine, opt, shadow, shadow_opt = wrap(cfg, model, opt, device, rank, world)
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
               mininterval=0.5 if (term or sys.stderr).isatty() else 15, disable=rank != 0,
               file=term or sys.stderr)
    t0 = time.time()
    metrics = open(metrics_path, "a", buffering=1) if rank == 0 else None  # line-buffered
    tb = plots.tensorboard_writer(cfg.out, step) if rank == 0 else None
    return Run(cfg, rank, world, device, ls, importance, student, model, opt, engine, shadow,
               shadow_opt, stream, metrics_path, metrics, tb, bar, step, position, t0,
               teacher=teacher, targets=targets)


def resume(cfg: TrainConfig, model: Distiller, opt, ls: LabelSet, rank: int, term=None
           ) -> tuple[int, tuple[int, int]]:
    """With ``cfg.resume``, load the latest checkpoint into model and optimiser and adopt its
    shard order; -> (step, stream position) to go on from, (0, (0, 0)) for a fresh run."""
    if not cfg.resume:
        return 0, (0, 0)
    state = checkpoint.load_latest(cfg.out, model, opt)
    if state is None:
        return 0, (0, 0)
    step, position = state["step"], tuple(state["position"])
    ls.adopt_order(state["shard_order"])
    if rank == 0:
        print(f"resumed from step {step} (stream epoch {position[0]}, batch {position[1]})",
              file=term or sys.stdout)
    return step, position


def wrap(cfg: TrainConfig, model: Distiller, opt, device, rank: int, world: int) -> tuple:
    """Under torchrun: the DDP or FSDP2 wrapper (-> engine), with FSDP2 a new optimiser over the
    shards carrying the resumed state, and on rank 0 a plain CPU shadow copy (and its optimiser)
    for checkpoints and the final model. -> (engine, opt, shadow, shadow_opt)."""
    if world == 1:
        return model, opt, None, None
    shard, shadow, shadow_opt = cfg.shard_model, None, None
    if shard and rank == 0:
        shadow = copy.deepcopy(model).cpu()
        shadow_opt = torch.optim.AdamW(shadow.parameters(), lr=cfg.lr,
                                       weight_decay=cfg.weight_decay)
    names = [name for name, _ in model.named_parameters()]
    engine = parallel.wrap(model, device, shard)
    if shard:  # the optimiser over the shards, with the resumed state if any
        plain_opt, opt = opt, torch.optim.AdamW(model.parameters(), lr=cfg.lr,
                                                weight_decay=cfg.weight_decay)
        if plain_opt.state:
            parallel.load_optimizer(model, opt, plain_opt, names)
        del plain_opt
    return engine, opt, shadow, shadow_opt


def loop(run: Run) -> None:
    """Optimiser steps until ``cfg.steps``: metrics per step, a checkpoint every save_every."""
    cfg = run.cfg
    while run.step < cfg.steps:
        t_step = time.perf_counter()
        means, wait, digest = optimizer_step(run)
        run.step += 1
        run.last = {**means, "step_s": time.perf_counter() - t_step, "data_wait_s": wait,
                    "batch": digest}  # which rows this step saw
        run.bar.update(1)
        run.bar.set_postfix(loss=f"{run.last['loss']:.3f}", ce=f"{run.last['ce']:.3f}",
                            refresh=False)
        if run.metrics:
            run.metrics.write(json.dumps({"step": run.step, "lr": lr_at(cfg, run.step - 1),
                                          **run.last}) + "\n")
        if run.tb:
            plots.log_scalars(run.tb, run.step, {"lr": lr_at(cfg, run.step - 1), **run.last})
        if cfg.save_every and run.step % cfg.save_every == 0 and run.step < cfg.steps:
            save_checkpoint(run)


def optimizer_step(run: Run) -> tuple[dict, float, str]:
    """One optimiser step over cfg.grad_accum micro-batches; -> the micro-batches' mean metrics,
    the seconds spent waiting for batches and a digest of the rows the step saw."""
    cfg, world = run.cfg, run.world
    for g in run.opt.param_groups:
        g["lr"] = lr_at(cfg, run.step)
    run.opt.zero_grad(set_to_none=True)
    parts, wait, digest = [], 0.0, hashlib.sha256()
    for _ in range(cfg.grad_accum):
        t_wait = time.perf_counter()
        run.position, batch = next(run.stream)
        wait += time.perf_counter() - t_wait
        digest.update(batch.input_ids.numpy().tobytes())
        batch, denom = batch.to(run.device), None
        if run.teacher is not None:
            batch = online.with_teacher(run.teacher, batch)
        if world > 1:
            count = torch.tensor(float(batch.targets.numel()), device=run.device)
            dist.all_reduce(count)
            denom = count.item() / world
        with parallel.grad_sync(run.engine, len(parts) == cfg.grad_accum - 1):
            parts.append(backward_step(run.model, batch, cfg, 1.0 / cfg.grad_accum, denom,
                                       run.engine, run.targets, run.importance))
    means = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
    run.opt.step()
    return means, wait, digest.hexdigest()[:16]


def save_checkpoint(run: Run) -> None:
    """A resumable checkpoint of the step just taken (rank 0 writes; FSDP2 gathers first)."""
    if run.world > 1 and run.cfg.shard_model:
        parallel.gather(run.model, run.opt, run.shadow, run.shadow_opt)
    if run.rank == 0:
        run.metrics.flush()
        epoch, index = run.position
        checkpoint.save(run.cfg.out, run.model if run.shadow is None else run.shadow,
                        run.opt if run.shadow is None else run.shadow_opt, {
                            "step": run.step, "position": [epoch, index + 1],
                            "shard_order": [s.path for s in run.ls.shards]})
    if run.world > 1:
        dist.barrier()


def finish(run: Run) -> dict:
    """Rank 0 writes the student (safetensors), its tokenizer, the config and the loss plot;
    the process group is closed. -> the run's summary."""
    cfg = run.cfg
    run.bar.close()
    if run.world > 1 and cfg.shard_model:
        parallel.gather(run.model, run.opt, run.shadow, run.shadow_opt)
    if run.rank == 0:
        run.metrics.close()
        if run.tb:
            run.tb.close()
        (run.student if run.shadow is None else run.shadow.student).save_pretrained(
            cfg.out, safe_serialization=True)
        copy_tokenizer(run.ls.tokenizer_dir(), cfg.out)
        with open(os.path.join(cfg.out, "train_config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=1)
        plots.plot_metrics(run.metrics_path, os.path.join(cfg.out, "loss.png"))
    if run.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"steps": run.step, "seconds": time.time() - run.t0, "rank": run.rank,
            "world": run.world, **run.last}
