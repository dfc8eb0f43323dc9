"""The teacher engine: vLLM in-process, scoring (teacher forcing over given tokens); in generate
mode a second engine first writes the responses.

One pass per chunk: the engine's pooling runner returns the final hidden states for every
position (``token_embed``, no activation); the LM head (loaded from the checkpoint, ``LmHead``)
turns those at the labelled positions into logits, then log-softmax and top-k run as tensor ops,
on the GPU when there is one; on the CPU the head's matmul is the engine's own CPU kernel. The same states give the final-layer summary. Intermediate layers come from the same
pass: vLLM's auxiliary hidden-state outputs (the mechanism its EAGLE-3 drafters use; residual
stream after L layers = transformers' ``hidden_states[L]``) are switched on for the asked layers
and a forward hook on the model concatenates them to the final states, so the pooler hands back
``[final | layer a | layer b ...]`` per position. That needs an eager engine (a compiled graph
would not see the switch), so asking for intermediate layers turns ``enforce_eager`` on.

This road was chosen by measurement over the engine's flat prompt logprobs (which need a second
pass for summaries and whose host cost grows with k), see docs/BENCHMARKS.md. The head follows
the transformers definition: ``lm_head`` (or the tied input embedding), times ``logit_scale``
and through ``final_logit_softcapping`` where the config has them; the oracle tests compare
it with transformers on the same tokens.

One scoring engine per process (``get_teacher``), shared by every DoFn instance and test in it;
generate mode adds one generating engine (``get_generator``). Engine passes per option: score and
text modes, with or without summaries of any layers and projections: one; generate mode: the
generation (one prefill plus one decode step per new token) and then that one scoring pass.
"""
import copy
import dataclasses
import hashlib
import json
import logging
import os
import threading
import time

import numpy as np

from schemas.labelset import Labels, SampledLabels, Tokenized
from schemas.rows import predictor

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the job prints its own progress


# elements of one block of fp32 log-probs: on the CPU 16 MB, which the allocator hands back for
# the next block (a 256 MB block costs fresh zeroed pages each time: 1.5x slower head, measured in
# docs/BENCHMARKS.md); on a GPU the caching allocator reuses any size
LOGITS_BUDGET = {"cpu": 1 << 22, "cuda": 1 << 26}


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    model_dir: str
    top_k: int = 20
    dtype: str | None = None             # None: the checkpoint's own dtype
    hidden_layers: tuple[int, ...] = ()  # transformers hidden_states indices, 0..num_layers
    targets: str = "topk"                # topk | sampled | both (top-k head + sampled tail)
    samples: int = 0                     # sampled targets: draws per position
    proposal_temperature: float = 1.0    # draws from softmax(log p / this), importance-weighted
    sample_seed: int = 0                 # draws seeded from (this, example id, position)
    proj_dim: int = 0                    # > 0: also every response token's state of each layer,
    proj_seed: int = 0                   # projected to proj_dim by schemas.projection_matrix
    max_model_len: int | None = None
    kv_cache_gb: float = 1.0
    enforce_eager: bool = False
    trust_remote_code: bool = False
    engine_args: tuple = ()              # extra vLLM engine args as (key, value) pairs


def model_config(model_dir: str) -> dict:
    """The teacher's config.json; a ValueError that says what is wrong when the directory is
    missing or is not a transformers model directory."""
    import fsspec
    fs, root = fsspec.core.url_to_fs(model_dir)
    if not fs.isdir(root):
        raise ValueError(f"teacher {model_dir}: no such directory (give a transformers model "
                         "directory: config.json, tokenizer files, *.safetensors)")
    try:
        with fs.open(f"{root}/config.json", "r") as f:
            cfg = json.load(f)
    except FileNotFoundError:
        found = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))[:8]
        raise ValueError(f"teacher {model_dir} is not a transformers model directory: no "
                         f"config.json (found: {', '.join(found) or 'nothing'})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"teacher {model_dir}/config.json is not valid JSON: {e}") from None
    if "num_hidden_layers" not in cfg and "model_type" not in cfg:
        raise ValueError(f"teacher {model_dir}/config.json is not a model config (no model_type "
                         "or num_hidden_layers)")
    return cfg


def checkpoint_dtype(cfg: dict) -> str:
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return str(dtype).replace("torch.", "")


def context_length(cfg: dict) -> int:
    return int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048)


def load_lm_head(model_dir: str, mcfg: dict) -> "torch.Tensor":  # noqa: F821
    """The output projection (V, d) from the checkpoint's safetensors files."""
    from safetensors import safe_open
    names = ["lm_head.weight"]
    if mcfg.get("tie_word_embeddings"):
        names = ["model.embed_tokens.weight", "lm_head.weight"]
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    for name in names:
        for f in files:
            with safe_open(os.path.join(model_dir, f), framework="pt") as st:
                if name in st.keys():
                    return st.get_tensor(name)
    raise ValueError(f"no LM head ({' or '.join(names)}) in {model_dir}")


class LmHead:
    """The teacher's output layer on the labelling side: (n, d) final states -> (n, V) fp32
    log-probabilities at temperature 1, as transformers defines them (``logit_scale``, then
    ``final_logit_softcapping``, where the config has them).

    On the CPU the matmul runs through vLLM's own CPU GEMM dispatch, the kernel its engine's LM
    head uses (``dispatch_cpu_unquantized_gemm``: oneDNN with the weight prepacked once, an AMX
    kernel for small weights, a plain matmul where neither exists); the dispatch keeps the packed
    copy and drops ours. On a GPU a plain matmul."""

    def __init__(self, weight, mcfg: dict):
        import torch
        self.vocab, self.hidden = weight.shape
        self.dtype, self.device = weight.dtype, weight.device
        self.logit_scale = mcfg.get("logit_scale")
        self.softcap = mcfg.get("final_logit_softcapping")
        self.rows = max(1, LOGITS_BUDGET.get(weight.device.type, 1 << 26) // self.vocab)
        if weight.device.type == "cpu":
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
            layer = torch.nn.Module()
            layer.weight = torch.nn.Parameter(weight, requires_grad=False)
            dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
            self.matmul = lambda x: layer.cpu_linear(x, layer.weight, None)
        else:
            self.matmul = lambda x: x @ weight.T

    def logits(self, states):
        """(n, d) states -> (n, V) fp32 logits. At most ``self.rows`` states at a time keep them
        within the block budget."""
        import torch
        logits = self.matmul(states.to(self.device, self.dtype).contiguous()).float()
        if self.logit_scale:
            logits = logits * self.logit_scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def __call__(self, states):
        """(n, d) states -> (n, V) fp32 log-probabilities."""
        import torch
        return torch.log_softmax(self.logits(states), dim=-1)


# a probability below this is too close to float32's underflow for its log: such rows of a
# block take their log-probs from the log-softmax instead (see head_block)
TINY_PROB = 1e-30


@dataclasses.dataclass
class Draws:
    """What ``head_block`` draws: ``samples`` per position with these ``keys`` (P, 2), from
    softmax(log p / ``temperature``), outside the top-k when ``tail_only`` (``--targets both``)."""
    keys: "torch.Tensor"  # noqa: F821
    samples: int
    temperature: float = 1.0
    tail_only: bool = False


def head_block(head: LmHead, states, targets, k: int, draws: Draws | None = None):
    """One block of positions through the labelling head: (top-k ids, top-k log-probs, the
    targets' log-probs, the draws or None); ids and log-probs ``None`` when ``k`` is 0.

    Top-k only: log-softmax, top-k and the targets' entries. With draws from the teacher itself
    (proposal temperature 1), the softmax replaces the log-softmax (same cost, one kernel), the
    draws take its probabilities as they are, and the top-k and the targets' log-probs are logs
    of its entries (within ~1e-7 of the log-softmax's), except in rows where one of those
    probabilities is below ``TINY_PROB``, which take them from the log-softmax; so sampling adds
    no exp pass of its own over the vocabulary. Other proposal temperatures take the general
    road (``sampler.draw`` on the log-softmax)."""
    import torch
    from pipeline import sampler
    logits = head.logits(states)
    targets = targets.to(logits.device)[:, None]
    if draws is None or draws.temperature != 1.0:
        lp = torch.log_softmax(logits, dim=-1)
        del logits
        top = lp.topk(k, dim=-1) if k else None
        target_lp = lp.gather(1, targets)[:, 0]
        drawn = None
        if draws is not None:
            drawn = sampler.draw(lp, draws.keys, draws.samples, draws.temperature,
                                 exclude=top.indices if draws.tail_only else None,
                                 consume=True)  # lp is not needed after this
        return (top.indices if k else None, top.values if k else None, target_lp, drawn)
    probs = torch.softmax(logits, dim=-1)
    top = probs.topk(k, dim=-1) if k else None
    target_p = probs.gather(1, targets)[:, 0]
    low = target_p < TINY_PROB
    if k:
        low |= top.values[:, -1] < TINY_PROB
    top_ids, top_lp = (top.indices, top.values.log()) if k else (None, None)
    target_lp = target_p.log()
    rows = low.nonzero()[:, 0]
    if len(rows):  # exact logs for the rows near underflow (ties at 0 also reorder their top-k)
        lp = torch.log_softmax(logits[rows], dim=-1)
        target_lp[rows] = lp.gather(1, targets[rows])[:, 0]
        if k:
            exact = lp.topk(k, dim=-1)
            top_ids[rows], top_lp[rows] = exact.indices, exact.values
    del logits
    drawn = sampler.draw_probs(probs, draws.keys, draws.samples,
                               exclude=top_ids if draws.tail_only else None)
    return top_ids, top_lp, target_lp, drawn


def engine_key(cfg: TeacherConfig) -> TeacherConfig:
    """The part of a config that decides the engine (not what is kept of its outputs)."""
    return dataclasses.replace(cfg, top_k=0, hidden_layers=(), proj_dim=0, proj_seed=0,
                               targets="topk", samples=0, proposal_temperature=1.0,
                               sample_seed=0)


def engine_kwargs(cfg: TeacherConfig, mcfg: dict, enforce_eager: bool) -> dict:
    """``vllm.LLM`` arguments shared by the scoring and the generating engine."""
    return dict(model=cfg.model_dir, dtype=cfg.dtype or checkpoint_dtype(mcfg),
                max_model_len=cfg.max_model_len or context_length(mcfg),
                enable_prefix_caching=False, seed=0, enforce_eager=enforce_eager,
                trust_remote_code=cfg.trust_remote_code,
                kv_cache_memory_bytes=int(cfg.kv_cache_gb * 2**30), **dict(cfg.engine_args))


def install_concat_hook(model) -> None:
    """Runs inside the engine: when auxiliary layers are on, the model returns (final, [aux]);
    hand the pooler one (tokens, d * (1 + n_aux)) tensor instead."""
    import torch

    def concat(module, args, out):
        if isinstance(out, tuple):
            final, aux = out
            return torch.cat([final, *aux], dim=-1)
        return out
    model.register_forward_hook(concat)


class VllmTeacher:
    def __init__(self, cfg: TeacherConfig):
        import torch
        from vllm import LLM
        from vllm.config import PoolerConfig

        mcfg = model_config(cfg.model_dir)
        self.cfg = cfg
        self.dtype = cfg.dtype or checkpoint_dtype(mcfg)
        self.num_layers = int(mcfg["num_hidden_layers"])
        self.max_len = cfg.max_model_len or context_length(mcfg)
        bad = [layer for layer in cfg.hidden_layers if not 0 <= layer <= self.num_layers]
        if bad:
            raise ValueError(f"hidden layers {bad}: the teacher has hidden_states[0.."
                             f"{self.num_layers}] (0 = embeddings, {self.num_layers} = final)")
        self.engine_state = {"aux": ()}  # shared by views: the layers the engine now returns
        self.lock = threading.Lock()  # one request batch at a time per engine
        self.eager = cfg.enforce_eager or bool(self.intermediate(cfg))
        self.pool = LLM(runner="pooling", convert="embed",
                        pooler_config=PoolerConfig(task="token_embed", use_activation=False),
                        **engine_kwargs(cfg, mcfg, self.eager))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.head = LmHead(load_lm_head(cfg.model_dir, mcfg).to(self.device,
                                                                 getattr(torch, self.dtype)), mcfg)
        self.hidden_size = int(mcfg["hidden_size"])
        self.pool.apply_model(install_concat_hook)

    def intermediate(self, cfg: TeacherConfig) -> tuple[int, ...]:
        return tuple(sorted({layer for layer in cfg.hidden_layers if layer < self.num_layers}))

    def set_aux_layers(self, layers: tuple[int, ...]) -> None:
        """Make the engine return these intermediate layers beside the final states."""
        if layers == self.engine_state["aux"]:
            return
        if layers and not self.eager:
            raise ValueError("intermediate hidden layers need an eager engine (enforce_eager): "
                             "this engine was started compiled")

        def switch(model):
            model.set_aux_hidden_state_layers(layers)
        self.pool.apply_model(switch)
        self.engine_state["aux"] = layers

    def label(self, seqs: list[list[int]], starts: list[int],
              ids: list[str] | None = None) -> list[Labels]:
        """Labels of each sequence's positions ``start..``; ``ids`` (the example ids) seed the
        sampled targets, one key per (sample_seed, example id, position)."""
        import torch
        from vllm.inputs import TokensPrompt
        from pipeline import sampler
        from schemas import projection_matrix
        prompts = [TokensPrompt(prompt_token_ids=s) for s in seqs]
        aux = self.intermediate(self.cfg)
        with self.lock:
            self.set_aux_layers(aux)
            outs = self.pool.encode(prompts, pooling_task="token_embed", use_tqdm=False)
        cfg, d = self.cfg, self.hidden_size
        k = 0 if cfg.targets == "sampled" else cfg.top_k
        slot = {self.num_layers: 0, **{layer: i + 1 for i, layer in enumerate(aux)}}
        proj = None
        if cfg.proj_dim:
            proj = torch.from_numpy(projection_matrix(d, cfg.proj_dim, cfg.proj_seed))
        n_resp = [len(seq) - start for seq, start in zip(seqs, starts)]
        # the final states that predict the response tokens
        states = torch.cat([out.outputs.data[predictor(start):predictor(len(seq)), :d]
                            for seq, start, out in zip(seqs, starts, outs)])
        targets = torch.tensor([t for seq, start in zip(seqs, starts) for t in seq[start:]])
        draws = cfg.targets != "topk"
        if draws:
            if ids is None or len(ids) != len(seqs):
                raise ValueError("sampled targets need the example id of every sequence")
            keys = torch.cat([sampler.position_keys(sampler.example_key(cfg.sample_seed, i), n)
                              for i, n in zip(ids, n_resp)])
        top_ids, top_lp, target_lp, drawn = [], [], [], []
        rows = self.head.rows  # bound the (rows, V) logits
        with torch.no_grad():
            for i in range(0, len(states), rows):  # all sequences' positions, in blocks
                block = (Draws(keys[i:i + rows], cfg.samples, cfg.proposal_temperature,
                               tail_only=cfg.targets == "both") if draws else None)
                ids_, lp_, tlp, s = head_block(self.head, states[i:i + rows],
                                               targets[i:i + rows], k, block)
                if k:
                    top_ids.append(ids_.int().cpu())
                    top_lp.append(lp_.cpu())
                target_lp.append(tlp.cpu())
                if draws:
                    drawn.append((s.ids.int().cpu(), s.counts.to(torch.uint8).cpu(),
                                  s.logweights.cpu()))
        split = np.cumsum(n_resp)[:-1]
        n_all = len(states)
        top_ids = np.split(torch.cat(top_ids).numpy() if k else np.zeros((n_all, 0), np.int32),
                           split)
        top_lp = np.split(torch.cat(top_lp).numpy().astype(np.float32, copy=False) if k
                          else np.zeros((n_all, 0), np.float32), split)
        sampled = [None] * len(seqs)
        if draws:
            parts = [np.split(torch.cat(col).numpy(), split) for col in zip(*drawn)]
            sampled = [SampledLabels(*cols) for cols in zip(*parts)]
        target_lp = np.split(torch.cat(target_lp).numpy().astype(np.float32, copy=False), split)
        result = []
        for i, (seq, start, out) in enumerate(zip(seqs, starts, outs)):
            data = out.outputs.data  # (n, d * (1 + len(aux))): [final | aux layers]
            hidden, projected = {}, {}
            for layer in cfg.hidden_layers:
                span = data[start:len(seq), slot[layer] * d:(slot[layer] + 1) * d].float().cpu()
                hidden[layer] = span.mean(0).numpy()
                if proj is not None:
                    projected[layer] = (span @ proj).numpy()
            result.append(Labels(top_ids[i], top_lp[i], target_lp[i], hidden, projected,
                                 sampled[i]))
        return result

@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the teacher writes responses in generate mode (recorded in the label config)."""
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0  # each example samples with a seed drawn from (seed, example id)


def example_seed(seed: int, example_id: str) -> int:
    """Per-example sampling seed: the same response for the same example whatever the batch."""
    return int(hashlib.sha256(f"{seed}\0{example_id}".encode()).hexdigest()[:8], 16)


class VllmGenerator:
    """A second, generating engine of the same teacher for generate mode (sequence-level KD). It
    only writes the responses; the labels then come from the scoring engine's one pass over
    prompt + response, exactly as in score mode."""

    def __init__(self, cfg: TeacherConfig):
        from vllm import LLM
        mcfg = model_config(cfg.model_dir)
        self.lock = threading.Lock()
        # whole prompts per step: a split prompt rewinds the per-request sampling generator,
        # which the CPU backend cannot do
        self.pool = LLM(enable_chunked_prefill=False,
                        **engine_kwargs(cfg, mcfg, cfg.enforce_eager))

    def generate(self, prompts: list[list[int]], ids: list[str], max_tokens: list[int],
                 sampling: SamplingConfig) -> list[list[int]]:
        """Response token ids per prompt (ending with EOS when the teacher stopped)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        params = [SamplingParams(max_tokens=n, temperature=sampling.temperature,
                                 top_p=sampling.top_p, seed=example_seed(sampling.seed, i))
                  for i, n in zip(ids, max_tokens)]
        with self.lock:
            outs = self.pool.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                     use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]


_TEACHERS: dict = {}
_GENERATORS: dict = {}
_TEACHERS_LOCK = threading.Lock()


def get_teacher(cfg: TeacherConfig) -> VllmTeacher:
    """The process-wide engine for ``cfg`` (started once, shared by every caller).

    Configs differing only in what is kept (``top_k``, ``hidden_layers``, projections) share one
    engine, unless intermediate layers are asked of a compiled engine.
    """
    with _TEACHERS_LOCK:
        if cfg not in _TEACHERS:
            for other, teacher in list(_TEACHERS.items()):
                same_engine = engine_key(other) == engine_key(cfg)
                usable = teacher.eager or not teacher.intermediate(cfg)
                if same_engine and usable and teacher.pool is not None:
                    view = copy.copy(teacher)
                    view.cfg = cfg
                    _TEACHERS[cfg] = view
                    break
            else:
                _TEACHERS[cfg] = VllmTeacher(cfg)
        return _TEACHERS[cfg]


def get_generator(cfg: TeacherConfig) -> VllmGenerator:
    """The process-wide generating engine for ``cfg``'s teacher (beside the scoring engine)."""
    key = engine_key(cfg)
    with _TEACHERS_LOCK:
        if key not in _GENERATORS:
            _GENERATORS[key] = VllmGenerator(key)
        return _GENERATORS[key]


def write_responses(cfg: TeacherConfig, items: list[Tokenized], sampling: SamplingConfig,
                    max_len: int) -> list[Tokenized]:
    """Generate mode: the teacher writes each example's response (at most max_new_tokens and
    what fits in ``max_len`` behind the longer prompt), appended to both views; the scoring
    engine then labels prompt + response as in score mode."""
    room = [max_len - max(len(t.raw_ids), len(t.simplified_ids or [])) for t in items]
    t0 = time.perf_counter()
    responses = get_generator(cfg).generate(
        [t.raw_ids for t in items], [t.id for t in items],
        [min(sampling.max_new_tokens, r) for r in room], sampling)
    n = sum(len(r) for r in responses)
    logging.getLogger("kd.label").debug("generated %d responses, %d tokens, %.0f tokens/s",
                                        len(items), n, n / (time.perf_counter() - t0))
    return [dataclasses.replace(t, raw_ids=t.raw_ids + r,
                                simplified_ids=None if t.simplified_ids is None
                                else t.simplified_ids + r)
            for t, r in zip(items, responses)]


def shutdown_all() -> None:
    """Shut every engine of this process down (engines share vLLM's process state: stop them all
    together, at the end)."""
    with _TEACHERS_LOCK:  # views share engines: shut each engine down once
        owners = list(_TEACHERS.values()) + list(_GENERATORS.values())
        engines = {id(t.pool): t.pool for t in owners if t.pool is not None}
        for engine in engines.values():
            engine.llm_engine.engine_core.shutdown()
        for owner in owners:
            owner.pool = None
        _TEACHERS.clear()
        _GENERATORS.clear()
