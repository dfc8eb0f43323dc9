"""The teacher engine: vLLM in-process, score mode (teacher forcing over given tokens).

One pass per chunk: the engine's pooling runner returns the final hidden states for every
position (``token_embed``, no activation); the LM head (loaded from the checkpoint) turns those at
the labelled positions into logits, then log-softmax and top-k run as tensor ops, on the GPU when
there is one. The same states give the final-layer summary. Measured against the engine's
flat prompt logprobs (which need a second pass for summaries and whose host cost grows with k),
see docs/BENCHMARKS.md. The head follows the transformers definition: ``lm_head`` (or the tied
input embedding), times ``logit_scale`` and through ``final_logit_softcapping`` where the config
has them; the oracle tests compare it with transformers on the same tokens.

One engine per process (``get_teacher``), shared by every DoFn instance and test in it.
"""
import copy
import dataclasses
import json
import os
import threading

import numpy as np

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the job prints its own progress


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    model_dir: str
    top_k: int = 20
    dtype: str | None = None             # None: the checkpoint's own dtype
    hidden_layers: tuple[int, ...] = ()  # transformers hidden_states indices; only the final layer
    max_model_len: int | None = None
    kv_cache_gb: float = 1.0
    enforce_eager: bool = False
    trust_remote_code: bool = False
    engine_args: tuple = ()              # extra vLLM engine args as (key, value) pairs


def model_config(model_dir: str) -> dict:
    import fsspec
    with fsspec.open(f"{model_dir}/config.json", "r") as f:
        return json.load(f)


def checkpoint_dtype(cfg: dict) -> str:
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return str(dtype).replace("torch.", "")


def context_length(cfg: dict) -> int:
    return int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048)


@dataclasses.dataclass
class Labels:
    """Teacher labels for the response span of one sequence (n = number of response tokens)."""
    topk_ids: np.ndarray         # (n, k) int32, descending probability
    topk_logprobs: np.ndarray    # (n, k) float32
    target_logprob: np.ndarray   # (n,) float32
    hidden: dict                 # layer -> (d,) float32 mean over the response span


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
        bad = [layer for layer in cfg.hidden_layers if layer != self.num_layers]
        if bad:
            raise ValueError(f"hidden layers {bad}: only the final layer ({self.num_layers}) is "
                             "available from the vLLM engine")
        self.lock = threading.Lock()  # one request batch at a time per engine
        self.pool = LLM(model=cfg.model_dir, dtype=self.dtype, max_model_len=self.max_len,
                        enable_prefix_caching=False, seed=0, enforce_eager=cfg.enforce_eager,
                        trust_remote_code=cfg.trust_remote_code,
                        kv_cache_memory_bytes=int(cfg.kv_cache_gb * 2**30),
                        runner="pooling", convert="embed",
                        pooler_config=PoolerConfig(task="token_embed", use_activation=False),
                        **dict(cfg.engine_args))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.head = load_lm_head(cfg.model_dir, mcfg).to(self.device, getattr(torch, self.dtype))
        self.logit_scale = mcfg.get("logit_scale")
        self.softcap = mcfg.get("final_logit_softcapping")

    def logprobs(self, states):
        """(n, d) final hidden states -> (n, V) fp32 log-probabilities at temperature 1."""
        import torch
        logits = (states.to(self.device, self.head.dtype) @ self.head.T).float()
        if self.logit_scale:
            logits = logits * self.logit_scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return torch.log_softmax(logits, dim=-1)

    def label(self, seqs: list[list[int]], starts: list[int]) -> list[Labels]:
        import torch
        from vllm.inputs import TokensPrompt
        prompts = [TokensPrompt(prompt_token_ids=s) for s in seqs]
        with self.lock:
            outs = self.pool.encode(prompts, pooling_task="token_embed", use_tqdm=False)
        k = self.cfg.top_k
        result = []
        with torch.no_grad():
            for seq, start, out in zip(seqs, starts, outs):
                states = out.outputs.data  # (n, d): position p's state predicts token p + 1
                lp = self.logprobs(states[start - 1:len(seq) - 1])
                top = lp.topk(k, dim=-1)
                target = lp.gather(1, torch.tensor(seq[start:], device=lp.device)[:, None])[:, 0]
                hidden = {}
                if self.cfg.hidden_layers:
                    mean = states[start:len(seq)].float().mean(0).cpu().numpy()
                    hidden = {layer: mean for layer in self.cfg.hidden_layers}
                result.append(Labels(top.indices.int().cpu().numpy(),
                                     top.values.cpu().numpy().astype(np.float32),
                                     target.cpu().numpy().astype(np.float32), hidden))
        return result

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.llm_engine.engine_core.shutdown()
        self.pool = None


_TEACHERS: dict = {}
_TEACHERS_LOCK = threading.Lock()


def get_teacher(cfg: TeacherConfig) -> VllmTeacher:
    """The process-wide engine for ``cfg`` (started once, shared by every caller).

    Configs differing only in ``top_k`` or ``hidden_layers`` share one engine.
    """
    with _TEACHERS_LOCK:
        if cfg not in _TEACHERS:
            for other, teacher in list(_TEACHERS.items()):
                same_engine = dataclasses.replace(other, top_k=cfg.top_k,
                                                  hidden_layers=cfg.hidden_layers) == cfg
                if same_engine and teacher.pool is not None:
                    view = copy.copy(teacher)
                    view.cfg = cfg
                    _TEACHERS[cfg] = view
                    break
            else:
                _TEACHERS[cfg] = VllmTeacher(cfg)
        return _TEACHERS[cfg]


def shutdown_all() -> None:
    with _TEACHERS_LOCK:  # views share engines: shut each engine down once
        engines = {id(t.pool): t.pool for t in _TEACHERS.values() if t.pool is not None}
        for engine in engines.values():
            engine.llm_engine.engine_core.shutdown()
        for teacher in _TEACHERS.values():
            teacher.pool = None
        _TEACHERS.clear()
