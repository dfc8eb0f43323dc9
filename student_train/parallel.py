"""Data parallelism on torch's own engines.

- DDP (``DistributedDataParallel``) for students that fit one device: gradients all-reduced in
  buckets overlapped with the backward pass, once per optimiser step (``no_sync`` on the other
  micro-batches).
- FSDP2 (``torch.distributed.fsdp.fully_shard``, ``--shard-model``) for students that do not:
  every decoder layer and the root are sharded over the ranks (parameters, gradients and
  optimiser state); gradients are reduce-scattered once per optimiser step
  (``set_requires_gradient_sync(False)`` on the other micro-batches).

Both see one backward per micro-batch through the wrapped module: ``train.backward_step`` runs
the chunked LM-head losses into detached leaves and then one backward through the model.

Checkpoints keep one format whatever the engine: the trainer's plain ``Distiller`` and an AdamW
over it. Under FSDP2, rank 0 holds a plain CPU copy that ``gather`` fills from the shards before
a save, and ``load_optimizer`` puts a plain optimiser's state back into the sharded one.
"""
import contextlib

import torch
import torch.distributed as dist


def decoder_layers(student) -> list[torch.nn.Module]:
    """The student's repeated blocks (transformers keeps them in one ModuleList)."""
    base = getattr(student, student.base_model_prefix)
    for name in ("layers", "h", "blocks", "decoder_layers"):
        if isinstance(getattr(base, name, None), torch.nn.ModuleList):
            return list(getattr(base, name))
    raise ValueError(f"{type(student).__name__}: no ModuleList of decoder layers to shard")


def wrap(model: torch.nn.Module, device: torch.device, shard: bool) -> torch.nn.Module:
    """The module to run forward through: FSDP2-sharded ``model`` (in place) or a DDP wrapper."""
    if shard:
        from torch.distributed.fsdp import fully_shard
        for t in list(model.parameters()) + list(model.buffers()):  # identical start
            dist.broadcast(t.data, src=0)
        for block in decoder_layers(model.student):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)  # broadcasts rank 0's parameters and buffers


def grad_sync(engine: torch.nn.Module, sync: bool):
    """Context for one micro-batch: communicate gradients only when ``sync`` (the last one)."""
    from torch.nn.parallel import DistributedDataParallel
    if isinstance(engine, DistributedDataParallel):
        return contextlib.nullcontext() if sync else engine.no_sync()
    if hasattr(engine, "set_requires_gradient_sync"):  # FSDP2
        engine.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather(model, opt, plain, plain_opt) -> None:
    """FSDP2: fill rank 0's plain copy (model and AdamW) from the shards (collective)."""
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict)
    msd = get_model_state_dict(model, options=_full_options())
    osd = get_optimizer_state_dict(model, opt, options=_full_options())
    if plain is None:
        return
    plain.load_state_dict(msd)
    index = {name: i for i, (name, _) in enumerate(plain.named_parameters())}
    plain_opt.load_state_dict({
        "state": {index[name]: state for name, state in osd["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                         for g in osd["param_groups"]]})


def load_optimizer(model, opt, plain_opt, names: list[str]) -> None:
    """FSDP2: the state of an AdamW over the plain model (parameter ``names`` in its order) into
    the sharded optimiser (every rank holds the full state, each keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    sd = plain_opt.state_dict()
    set_optimizer_state_dict(model, opt, {
        "state": {names[i]: state for i, state in sd["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                         for g in sd["param_groups"]]},
        options=StateDictOptions(full_state_dict=True))
