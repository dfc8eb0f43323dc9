"""GPU readiness: run where CUDA exists, skipped (never counted as passed) elsewhere.

Not yet run on a GPU: the project's machines so far have none (docs/BENCHMARKS.md)."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(ROOT, "demo", "teacher")
STUDENT = os.path.join(ROOT, "demo", "student.json")
BIN = os.path.dirname(sys.executable)


def head_on(device: str):
    """The teacher's tensor path (LM head, log-softmax) on ``device``, without an engine (on the
    CPU through vLLM's CPU GEMM, on CUDA a plain matmul)."""
    from pipeline.teacher import LmHead, load_lm_head, model_config
    mcfg = model_config(TEACHER)
    return LmHead(load_lm_head(TEACHER, mcfg).to(device, torch.float32), mcfg)


@pytest.mark.gpu
def test_tensor_path_head_on_cuda_equals_cpu():
    torch.manual_seed(0)
    states = torch.randn(4096, head_on("cpu").hidden)
    targets = torch.randint(0, 80, (4096,))
    out = {}
    for device in ("cpu", "cuda"):
        lp = head_on(device)(states)
        top = lp.topk(8, dim=-1)
        out[device] = (lp.cpu(), top.indices.cpu(), top.values.cpu(),
                       lp.gather(1, targets[:, None].to(lp.device))[:, 0].cpu(),
                       states.to(device)[:100].mean(0).cpu())
    for a, b in zip(out["cpu"], out["cuda"]):
        if a.dtype.is_floating_point:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # top-k ids may swap only between (near-)equal log-probs
    same = (out["cpu"][1] == out["cuda"][1]).float().mean().item()
    assert same > 0.999, same


@pytest.mark.gpu
def test_head_block_with_draws_on_cuda_equals_cpu():
    """`kd label --targets both`'s head work per block (softmax road, top-k + tail draws) on CUDA
    against the CPU: the same log-probs, and the same draws but where float rounding moves a
    block boundary (the uniforms are integer hashes, equal on both devices)."""
    from pipeline import sampler
    from pipeline.teacher import Draws, head_block
    torch.manual_seed(0)
    n = 4096
    states = torch.randn(n, head_on("cpu").hidden)
    targets = torch.randint(0, 80, (n,))
    keys = sampler.position_keys(sampler.example_key(0, "gpu"), n)
    out = {}
    for device in ("cpu", "cuda"):
        ids, top_lp, target_lp, s = head_block(head_on(device), states, targets, 8,
                                               Draws(keys.to(device), 12, tail_only=True))
        out[device] = [t.cpu() for t in (ids, top_lp, target_lp, s.ids, s.counts)]
    cpu, gpu = out["cpu"], out["cuda"]
    assert (cpu[0] == gpu[0]).float().mean().item() > 0.999
    torch.testing.assert_close(cpu[1], gpu[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cpu[2], gpu[2], atol=1e-4, rtol=1e-4)
    assert (gpu[4].sum(-1) == 12).all()
    same = ((cpu[3] == gpu[3]) & (cpu[4] == gpu[4])).all(-1).float().mean().item()
    assert same > 0.99, same


def kd_train(labels, out, *extra, env=None):
    cmd = [f"{BIN}/kd", "train", "--labels", labels, "--student", STUDENT, "--out", out,
           "--steps", "20", "--batch-size", "8", "--seed", "3", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load_file(os.path.join(out, "model.safetensors"))


@pytest.mark.gpu
def test_kd_train_cuda_bf16_matches_cpu_fp32(label_set, tmp_path):
    import json
    cpu = kd_train(label_set["out"], str(tmp_path / "cpu"), env={"CUDA_VISIBLE_DEVICES": ""})
    gpu = kd_train(label_set["out"], str(tmp_path / "gpu"), "--bf16")
    losses = {}
    for name in ("cpu", "gpu"):
        rows = [json.loads(x) for x in open(tmp_path / name / "metrics.jsonl")]
        losses[name] = [r["loss"] for r in rows]
    for a, b in zip(losses["cpu"], losses["gpu"]):  # the same curve within bf16 rounding
        assert abs(a - b) <= 0.03 * abs(a) + 0.02, (a, b)
    for name in cpu:
        diff = (cpu[name].float() - gpu[name].float()).norm() / cpu[name].float().norm()
        assert diff < 0.05, (name, diff.item())


@pytest.mark.gpu(devices=2)
def test_ddp_nccl_two_gpus_matches_one(label_set, tmp_path):
    one = kd_train(label_set["out"], str(tmp_path / "one"))
    cmd = [f"{BIN}/torchrun", "--standalone", "--nproc_per_node=2", "--no-python", f"{BIN}/kd",
           "train", "--labels", label_set["out"], "--student", STUDENT, "--out",
           str(tmp_path / "two"), "--steps", "20", "--batch-size", "4", "--seed", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    for name in one:
        torch.testing.assert_close(one[name], two[name], atol=1e-4, rtol=1e-3)
