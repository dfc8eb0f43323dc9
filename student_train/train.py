"""The training loop: stream batches, lambda*CE + (1-lambda)*T^2*KD, AdamW, checkpoints."""
import dataclasses
import json
import math
import os
import sys
import time

import torch
from tqdm import tqdm

from student_train import checkpoint, losses
from student_train.model import load_student, response_logits, save_tokenizer_files
from student_train.stream import LabelSet, batches


@dataclasses.dataclass
class TrainConfig:
    labels: str
    student: str
    out: str
    steps: int
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    lam: float = 0.5              # weight of CE; 1.0 = CE only
    temperature: float = 1.0
    divergence: str = "forward_kl"
    tail: bool = True             # tail bucket (True) or renormalise over the top k (False)
    views: tuple[str, ...] = ("raw", "simplified")
    seed: int = 0
    save_every: int = 0
    resume: bool = False
    chunk_positions: int = 4096   # positions per logits chunk (bounds full-vocab memory)
    metrics_file: str | None = None


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def step_loss(model, batch, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    logits = response_logits(model, batch.input_ids, batch.attention_mask, batch.pos_b, batch.pos_t)
    n = logits.shape[0]
    ce_sum = kd_sum = 0.0
    for s in range(0, n, cfg.chunk_positions):
        sl = slice(s, s + cfg.chunk_positions)
        ce_sum = ce_sum + losses.ce_loss(logits[sl], batch.targets[sl]).sum()
        if cfg.lam < 1.0:
            kd_sum = kd_sum + losses.sparse_kd_loss(
                logits[sl], batch.topk_ids[sl], batch.topk_logprobs[sl], cfg.temperature,
                cfg.divergence, cfg.tail).sum()
    ce, kd = ce_sum / n, kd_sum / n  # kd stays 0.0 (a float) when lambda = 1
    loss = losses.combined_loss(ce, kd, cfg.lam, cfg.temperature)
    kd_value = kd.item() if torch.is_tensor(kd) else kd
    return loss, {"loss": loss.item(), "ce": ce.item(), "kd": kd_value, "tokens": n}


def truncate_metrics(path: str, step: int) -> None:
    """Drop metric lines past ``step`` (written after the checkpoint we resume from)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(keep)


def train(cfg: TrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    ls = LabelSet(cfg.labels, views=cfg.views)
    model, tok = load_student(cfg.student, ls.tokenizer_dir(), cfg.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    os.makedirs(cfg.out, exist_ok=True)
    step, position = 0, (0, 0)
    if cfg.resume:
        state = checkpoint.load_latest(cfg.out, model, opt)
        if state is not None:
            step, position = state["step"], tuple(state["position"])
            print(f"resumed from step {step} (stream epoch {position[0]}, batch {position[1]})")
    metrics_path = cfg.metrics_file or os.path.join(cfg.out, "metrics.jsonl")
    truncate_metrics(metrics_path, step)
    stream = batches(ls, cfg.batch_size, cfg.seed, position, pad_id=tok.pad_token_id or 0)
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 15)
    t0, last = time.time(), {}
    with open(metrics_path, "a") as mf:
        while step < cfg.steps:
            (epoch, index), batch = next(stream)
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            loss, last = step_loss(model, batch, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            mf.write(json.dumps({"step": step, "lr": lr_at(cfg, step - 1), **last}) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}", ce=f"{last['ce']:.3f}", refresh=False)
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                mf.flush()
                checkpoint.save(cfg.out, model, opt, {"step": step, "position": [epoch, index + 1]})
    bar.close()
    model.save_pretrained(cfg.out, safe_serialization=True)
    save_tokenizer_files(ls.tokenizer_dir(), cfg.out)
    with open(os.path.join(cfg.out, "train_config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)
    return {"steps": step, "seconds": time.time() - t0, **last}
