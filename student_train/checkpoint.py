"""Atomic training checkpoints: weights, optimiser and stream state, no pickle.

A checkpoint is a folder ``checkpoint-<step>`` holding model.safetensors, optimizer.safetensors
(every tensor of the optimiser state) and state.json (step, stream position, optimiser param
groups). It is written under a temporary name and renamed into place, so a folder with the final
name is always complete; a kill mid-write leaves only a ``.tmp`` folder that resume ignores.
"""
import json
import os
import re
import shutil
import uuid

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

PATTERN = re.compile(r"^checkpoint-(\d+)$")


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict, list]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = t.contiguous()
    return tensors, sd["param_groups"]


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    state: dict = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


def save(out_dir: str, model, opt, state: dict, keep: int = 2) -> str:
    step = state["step"]
    final = os.path.join(out_dir, f"checkpoint-{step:08d}")
    tmp = os.path.join(out_dir, f".checkpoint-{step:08d}.{uuid.uuid4().hex[:8]}.tmp")
    os.makedirs(tmp)
    save_model(model, os.path.join(tmp, "model.safetensors"))  # handles tied weights
    tensors, groups = optimizer_to_tensors(opt)
    save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({**state, "param_groups": groups}, f)
    for name in os.listdir(tmp):  # durable before the rename makes it visible
        with open(os.path.join(tmp, name), "rb") as f:
            os.fsync(f.fileno())
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(os.path.join(out_dir, old), ignore_errors=True)
    return final


def list_checkpoints(out_dir: str) -> list[str]:
    if not os.path.isdir(out_dir):
        return []
    names = [n for n in os.listdir(out_dir) if PATTERN.match(n)]
    return sorted(names, key=lambda n: int(PATTERN.match(n).group(1)))


def load_latest(out_dir: str, model, opt) -> dict | None:
    """Restore the newest complete checkpoint into ``model``/``opt``; return its state or None."""
    names = list_checkpoints(out_dir)
    if not names:
        return None
    path = os.path.join(out_dir, names[-1])
    load_model(model, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    optimizer_from_tensors(opt, load_file(os.path.join(path, "optimizer.safetensors")),
                           state.pop("param_groups"))
    return state
