"""The chunked backward equals a plain one; data parallel equals one process."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from student_train.model import Distiller, load_student
from student_train.stream import LabelSet, batches
from student_train.train import TrainConfig, backward_step, chunk_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDENT = os.path.join(ROOT, "demo", "student.json")


def grads_for(ls, chunk, hidden_weight=0.0, lam=0.3):
    student, _ = load_student(STUDENT, ls.tokenizer_dir(), seed=5)
    model = Distiller(student, ls.hidden_layers if hidden_weight else [], ls.hidden_dim)
    torch.manual_seed(0)
    for p in model.proj.parameters():
        torch.nn.init.normal_(p, std=0.02)
    cfg = TrainConfig(labels="", student="", out="", steps=1, chunk_positions=chunk, lam=lam,
                      temperature=2.0, hidden_weight=hidden_weight)
    _, batch = next(batches(ls, 8, seed=0))
    metrics = backward_step(model, batch, cfg)
    return metrics, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_chunked_backward_matches_plain_autograd(label_set):
    ls = LabelSet(label_set["out"])
    m_small, g_small = grads_for(ls, chunk=7, hidden_weight=0.5)
    m_big, g_big = grads_for(ls, chunk=100000, hidden_weight=0.5)
    assert abs(m_small["loss"] - m_big["loss"]) < 1e-5
    # an independent plain-autograd computation of the same objective
    from student_train import losses
    student, _ = load_student(STUDENT, ls.tokenizer_dir(), seed=5)
    model = Distiller(student, ls.hidden_layers, ls.hidden_dim)
    torch.manual_seed(0)
    for p in model.proj.parameters():
        torch.nn.init.normal_(p, std=0.02)
    _, batch = next(batches(ls, 8, seed=0))
    h, summ = model(batch)
    logits = model.head(h)
    ce = losses.ce_loss(logits, batch.targets).mean()
    kd = losses.sparse_kd_loss(logits, batch.topk_ids, batch.topk_logprobs, 2.0).mean()
    hid = sum(losses.hidden_loss(v, batch.hidden[k]).mean() for k, v in summ.items())
    (losses.combined_loss(ce, kd, 0.3, 2.0) + 0.5 * hid).backward()
    ref = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert g_small.keys() == ref.keys()
    for name in ref:
        assert torch.allclose(g_small[name], ref[name], atol=1e-6, rtol=1e-4), name
        assert torch.allclose(g_big[name], ref[name], atol=1e-6, rtol=1e-4), name


def test_chunk_default_by_device_and_default_run_equals_plain(label_set):
    """chunk_positions = 0 takes the device's chunk (256 positions on the CPU); a set value wins;
    the default run's gradients are those of one unchunked pass."""
    cfg = TrainConfig(labels="", student="", out="", steps=1)
    assert (chunk_for(cfg, "cpu"), chunk_for(cfg, "cuda")) == (256, 4096)
    assert chunk_for(TrainConfig(labels="", student="", out="", steps=1, chunk_positions=64),
                     "cpu") == 64
    ls = LabelSet(label_set["out"])
    m_default, g_default = grads_for(ls, chunk=0)
    m_one, g_one = grads_for(ls, chunk=100000)
    assert abs(m_default["loss"] - m_one["loss"]) < 1e-5
    for name in g_one:
        assert torch.allclose(g_default[name], g_one[name], atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_data_parallel_matches_single_process(label_set, tmp_path, engine):
    """2 gloo processes (torch DDP, or FSDP2 with --shard-model) with 2 micro-batches per step
    give the weights of one process seeing the whole global batch."""
    bindir = os.path.dirname(sys.executable)
    common = ["train", "--labels", label_set["out"], "--student", STUDENT, "--steps", "5",
              "--seed", "2", "--grad-accum", "2"]
    single = subprocess.run([os.path.join(bindir, "kd"), *common, "--out", str(tmp_path / "one"),
                             "--batch-size", "8"], capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    extra = ["--shard-model"] if engine == "fsdp2" else []
    ddp = subprocess.run([os.path.join(bindir, "torchrun"), "--standalone", "--nproc_per_node=2",
                          "--no-python", os.path.join(bindir, "kd"), *common,
                          "--out", str(tmp_path / "two"), "--batch-size", "4", "--save-every", "3",
                          *extra], capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert "(2 process(es))" in ddp.stdout
    assert (tmp_path / "two" / "checkpoint-00000003").is_dir()
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 5
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=2e-5), name
