"""The teacher engine: vLLM in-process, score mode (teacher forcing over given tokens).

Top-k comes from the engine's prompt logprobs, returned flat (no per-position dicts, no
detokenising). The final-layer hidden summary comes from a second, pooling-runner engine over the
same tokens (vLLM's CPU path has no way to return hidden states from the generate runner): two
passes when summaries are on, one when they are off (``hidden_layers=()``).

One ``VllmTeacher`` per process (``get_teacher``), shared by every DoFn instance and test in it.
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


class VllmTeacher:
    def __init__(self, cfg: TeacherConfig):
        from vllm import LLM, SamplingParams
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
        common = dict(model=cfg.model_dir, dtype=self.dtype, max_model_len=self.max_len,
                      enable_prefix_caching=False, seed=0, enforce_eager=cfg.enforce_eager,
                      trust_remote_code=cfg.trust_remote_code,
                      kv_cache_memory_bytes=int(cfg.kv_cache_gb * 2**30), **dict(cfg.engine_args))
        self.lock = threading.Lock()  # LLM.generate is not thread-safe
        self.llm = LLM(max_logprobs=max(cfg.top_k, 20), **common)
        self.params = SamplingParams(max_tokens=1, prompt_logprobs=cfg.top_k, detokenize=False,
                                     flat_logprobs=True)
        self.pool = None
        if cfg.hidden_layers:
            self.pool = LLM(runner="pooling", convert="embed",
                            pooler_config=PoolerConfig(task="token_embed", use_activation=False),
                            **common)

    def label(self, seqs: list[list[int]], starts: list[int]) -> list[Labels]:
        from vllm.inputs import TokensPrompt
        prompts = [TokensPrompt(prompt_token_ids=s) for s in seqs]
        with self.lock:
            outs = self.llm.generate(prompts, self.params, use_tqdm=False)
            pooled = (self.pool.encode(prompts, pooling_task="token_embed", use_tqdm=False)
                      if self.pool else [None] * len(seqs))
        k = self.cfg.top_k
        result = []
        for seq, start, out, pool_out in zip(seqs, starts, outs, pooled):
            ids, lps = flat_to_arrays(out.prompt_logprobs, len(seq), k)
            span = slice(start - 1, len(seq) - 1)  # entry p-1 is the distribution of token p
            hidden = {}
            if pool_out is not None:
                states = pool_out.outputs.data.float().numpy()
                mean = states[start:len(seq)].mean(axis=0).astype(np.float32)
                hidden = {layer: mean for layer in self.cfg.hidden_layers}
            result.append(Labels(ids[span, 1:], lps[span, 1:], lps[span, 0], hidden))
        return result

    def shutdown(self) -> None:
        for engine in (self.llm, self.pool):
            if engine is not None:
                engine.llm_engine.engine_core.shutdown()
        self.llm = self.pool = None


def flat_to_arrays(flat, n_tokens: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """vLLM FlatLogprobs -> (n_tokens - 1, k + 1) arrays for positions 1..n-1.

    Per position the engine returns the actual token first (with its true rank), then the top k
    (ranks 1..k); the actual token appears twice when it is in the top k.
    """
    ids = np.asarray(flat.token_ids, dtype=np.int32)
    lps = np.asarray(flat.logprobs, dtype=np.float32)
    width = k + 1
    if ids.size != (n_tokens - 1) * width:
        raise RuntimeError(f"engine returned {ids.size} logprob entries for {n_tokens} tokens, "
                           f"expected {(n_tokens - 1) * width}")
    return ids.reshape(-1, width), lps.reshape(-1, width)


_TEACHERS: dict = {}
_TEACHERS_LOCK = threading.Lock()


def get_teacher(cfg: TeacherConfig) -> VllmTeacher:
    """The process-wide engine for ``cfg`` (started once, shared by every caller).

    A running engine serves any smaller k too: configs differing only in ``top_k`` share it.
    """
    from vllm import SamplingParams
    with _TEACHERS_LOCK:
        if cfg not in _TEACHERS:
            for other, teacher in list(_TEACHERS.items()):
                if (dataclasses.replace(other, top_k=cfg.top_k) == cfg
                        and teacher.llm is not None and other.top_k >= cfg.top_k):
                    view = copy.copy(teacher)
                    view.cfg = cfg
                    view.params = SamplingParams(max_tokens=1, prompt_logprobs=cfg.top_k,
                                                 detokenize=False, flat_logprobs=True)
                    _TEACHERS[cfg] = view
                    break
            else:
                _TEACHERS[cfg] = VllmTeacher(cfg)
        return _TEACHERS[cfg]


def shutdown_all() -> None:
    with _TEACHERS_LOCK:  # views share engines: shut each engine down once
        engines = {id(e): e for t in _TEACHERS.values() for e in (t.llm, t.pool) if e is not None}
        for engine in engines.values():
            engine.llm_engine.engine_core.shutdown()
        for teacher in _TEACHERS.values():
            teacher.llm = teacher.pool = None
        _TEACHERS.clear()
