"""``kd plan``: what a ``kd label`` run will cost, before running it.

Tokens are counted with the teacher's tokenizer exactly as ``kd label`` tokenises (prompt and
response apart, BOS/EOS), over every record or over a seeded random sample with the 95% error of
the estimated total. FLOPs come from the teacher's ``config.json``: per token twice the weights
the token passes through (attention projections, the dense MLP or the routed + shared experts of
a mixture of experts, the router), causal attention over the preceding positions
(QK^T and AV: 4 * layers * heads * head_dim per earlier position), and the LM head
(2 * hidden * vocab) at the labelled positions only, where ``kd label`` applies it.

Time = FLOPs / (peak * MFU) plus a start-up constant. Peaks are the vendors' dense BF16
tensor-core figures (no sparsity); the MFU is an assumption the user states (``--mfu``): the GPU
figures are estimates, not measurements. The CPU branch's defaults are calibrated against a
measured ``kd label`` run (docs/BENCHMARKS.md, "kd plan").
Output bytes use the label columns' bytes per labelled position measured by bench/storage.py for
each encoding (128k vocabulary; smaller vocabularies compress better, so this is an upper
bound there), plus the token ids and the hidden-state summaries.
"""
import dataclasses
import math
import os
import random

import numpy as np

from pipeline import records
from pipeline.tokenize import load_tokenizer, prompt_ids, response_ids

# dense BF16 tensor-core peak, TFLOP/s, without structured sparsity (vendor data sheets)
PEAK_TFLOPS = {"h100": 989.0,   # H100 SXM5
               "a100": 312.0,   # A100 SXM4 / PCIe
               "l4": 121.0}     # L4
GPU_MFU = 0.35       # default assumption for prefill-only scoring on vLLM
GPU_START_S = 120.0  # assumption: engine start (weights load, graph capture) per worker
# CPU branch: per-core peak = FLOP/cycle * clock, both assumed (AVX-512 FMA in fp32, 3 GHz);
# CPU_MFU and CPU_START_S are fitted to a measured kd label run (docs/BENCHMARKS.md)
CPU_FLOP_PER_CYCLE = 32
CPU_GHZ = 3.0
CPU_MFU = 0.69
CPU_START_S = 18.0
# label columns (ids, log-probs, target log-prob), bytes per labelled position, measured by
# bench/storage.py (synthetic teacher, vocab 128k, Zipf-ordered ids; docs/BENCHMARKS.md)
LABEL_BYTES = {"plain": {20: 122.1, 50: 288.4, 64: 365.1, 128: 718.8},
               "compact": {20: 48.2, 50: 93.8, 64: 113.6, 128: 197.7}}
NON_GATED = {"gpt2", "gpt_neox", "opt", "gptj", "falcon", "bloom", "phi"}
Z95 = 1.96


def _get(cfg: dict, *names, default=None):
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    return default


@dataclasses.dataclass
class TeacherCost:
    """Per-token FLOPs of one forward pass: ``linear`` per token, ``attn`` per token and per
    earlier position it attends to, ``head`` per labelled position."""
    linear: float
    attn: float
    head: float
    moe: bool
    active_params: float
    total_params: float

    def sequence(self, length: int, labelled: int) -> float:
        """FLOPs of one causal forward over ``length`` tokens with ``labelled`` head positions."""
        return self.linear * length + self.attn * length * (length + 1) / 2 + self.head * labelled


def teacher_cost(cfg: dict) -> TeacherCost:
    """FLOPs per token from a transformers ``config.json`` (dense or mixture of experts)."""
    d = int(_get(cfg, "hidden_size", "n_embd", "d_model"))
    layers = int(_get(cfg, "num_hidden_layers", "n_layer", "num_layers"))
    heads = int(_get(cfg, "num_attention_heads", "n_head"))
    kv_heads = int(_get(cfg, "num_key_value_heads", default=heads))
    hd = int(_get(cfg, "head_dim", default=d // heads))
    vocab = int(cfg["vocab_size"])
    inter = int(_get(cfg, "intermediate_size", "n_inner", "ffn_dim", default=4 * d))
    mats = 2 if cfg.get("model_type") in NON_GATED else 3  # gated MLPs: gate, up, down
    attn_params = d * heads * hd * 2 + d * kv_heads * hd * 2  # q, o; k, v
    experts = _get(cfg, "num_local_experts", "num_experts", "n_routed_experts")
    dense_mlp = mats * d * inter
    total = active = 0.0
    for i in range(layers):
        sparse = bool(experts) and i >= int(cfg.get("first_k_dense_replace", 0)) \
            and i not in (cfg.get("mlp_only_layers") or []) \
            and (i + 1) % int(cfg.get("decoder_sparse_step", 1)) == 0
        if sparse:
            e_inter = int(_get(cfg, "moe_intermediate_size", default=inter))
            shared = int(_get(cfg, "shared_expert_intermediate_size", default=0)) or \
                int(cfg.get("n_shared_experts") or 0) * e_inter
            per_expert = mats * d * e_inter
            router = d * int(experts)
            active += attn_params + int(cfg["num_experts_per_tok"]) * per_expert \
                + mats * d * shared + router
            total += attn_params + int(experts) * per_expert + mats * d * shared + router
        else:
            active += attn_params + dense_mlp
            total += attn_params + dense_mlp
    return TeacherCost(linear=2 * active, attn=4 * layers * heads * hd, head=2 * d * vocab,
                       moe=bool(experts), active_params=active,
                       total_params=total + 2 * d * vocab)


@dataclasses.dataclass
class TokenCount:
    records: int        # raw records read (parseable or not)
    examples: float     # raw records that parse (estimated when sampled)
    sampled: int        # raw records tokenised (== examples when exact)
    teacher_tokens: float   # tokens the engine runs (prompt + response of the raw view)
    labelled: float         # labelled positions, all views
    stored_ids: float       # token ids stored, all views
    flops: float            # teacher FLOPs over the whole input
    teacher_error: float    # 95% half-width of teacher_tokens (0 when exact)
    flops_error: float

    @property
    def exact(self) -> bool:
        return self.sampled >= self.examples


def count_tokens(model_dir: str, raw: str, simplified: str | None, cost: TeacherCost,
                 sample: int = 0, seed: int = 0, columns: dict | None = None,
                 trust_remote_code: bool = False) -> TokenCount:
    """Tokenise every raw record (sample = 0) or a seeded random sample of about ``sample`` of
    them, as kd label does; simplified prompts are tokenised for the sampled ids."""
    from pipeline.records import count_records
    tok = load_tokenizer(model_dir, trust_remote_code)
    n_records = count_records(raw)
    p = 1.0 if not sample or sample >= n_records else sample / n_records
    rng = random.Random(seed)
    picked, n_ok, per = {}, 0, []  # per sampled example: (teacher tokens, resp, flops)
    for kind, source, line, data in records.read_records(raw, "raw", columns):
        rec = records.parse_record(kind, source, line, data, columns)
        if isinstance(rec, dict):
            continue
        n_ok += 1
        if p < 1.0 and rng.random() >= p:
            continue
        prompt, resp = prompt_ids(tok, rec.prompt), response_ids(tok, rec.response)
        picked[rec.id] = len(per)
        per.append([len(prompt) + len(resp), len(resp),
                    cost.sequence(len(prompt) + len(resp), len(resp)), 0])
    views = 1
    if simplified:
        views = 2
        for kind, source, line, data in records.read_records(simplified, "simplified", columns):
            rec = records.parse_record(kind, source, line, data, columns)
            if not isinstance(rec, dict) and rec.id in picked:
                per[picked[rec.id]][3] = len(prompt_ids(tok, rec.prompt))
    a = np.array(per, dtype=np.float64).reshape(-1, 4)
    n = len(a)
    scale = n_ok / max(n, 1)
    stored = a[:, 0].sum() + (a[:, 1].sum() + a[:, 3].sum() if simplified else 0)

    def err(col):  # 95% half-width of the estimated total (finite population correction)
        if n >= n_ok or n < 2:
            return 0.0
        return Z95 * n_ok * a[:, col].std(ddof=1) / math.sqrt(n) * math.sqrt(1 - n / n_ok)
    return TokenCount(records=n_records, examples=n_ok, sampled=n,
                      teacher_tokens=a[:, 0].sum() * scale, labelled=a[:, 1].sum() * views * scale,
                      stored_ids=stored * scale, flops=a[:, 2].sum() * scale,
                      teacher_error=err(0), flops_error=err(2))


def label_bytes_per_position(encoding: str, k: int) -> float:
    """Linear interpolation in k of the measured bytes (extrapolated beyond the table)."""
    table = sorted(LABEL_BYTES[encoding].items())
    ks, bs = [t[0] for t in table], [t[1] for t in table]
    if k <= ks[0]:
        return bs[0] * k / ks[0]
    i = min(max(np.searchsorted(ks, k) - 1, 0), len(ks) - 2)
    return bs[i] + (bs[i + 1] - bs[i]) * (k - ks[i]) / (ks[i + 1] - ks[i])


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_peak() -> tuple[float, str]:
    """This machine's assumed CPU peak, FLOP/s, and how it was made."""
    return (cpu_cores() * CPU_FLOP_PER_CYCLE * CPU_GHZ * 1e9,
            f"{cpu_cores()} cores x {CPU_FLOP_PER_CYCLE} FLOP/cycle x {CPU_GHZ} GHz "
            "(assumed; fp32 AVX-512 FMA)")


def plan(model_dir: str, raw: str, simplified: str | None = None, top_k: int = 20,
         encoding: str = "plain", gpu: str = "h100", gpus: int = 1, mfu: float | None = None,
         shard_rows: int = 512, summary_layers: int = 1, proj_dim: int = 0, sample: int = 0,
         seed: int = 0, columns: dict | None = None) -> dict:
    from pipeline.teacher import model_config
    mcfg = model_config(model_dir)
    cost = teacher_cost(mcfg)
    tc = count_tokens(model_dir, raw, simplified, cost, sample, seed, columns)
    views = 2 if simplified else 1
    d = int(_get(mcfg, "hidden_size", "n_embd", "d_model"))
    out_bytes = (tc.labelled * label_bytes_per_position(encoding, top_k) + tc.stored_ids * 4
                 + tc.examples * views * summary_layers * d * 4
                 + tc.labelled * summary_layers * proj_dim * 4)
    if gpu == "cpu":
        peak, peak_note = cpu_peak()
        mfu = mfu or CPU_MFU
        start = CPU_START_S
        peak_note += ", MFU and start-up fitted on this machine"
    else:
        peak = PEAK_TFLOPS[gpu] * 1e12
        mfu = mfu or GPU_MFU
        start = GPU_START_S
        peak_note = f"{gpu} dense BF16 peak {PEAK_TFLOPS[gpu]:.0f} TFLOP/s (data sheet), MFU assumed"
    device_s = tc.flops / (peak * mfu)
    return {
        "teacher": {"params_total": cost.total_params, "params_active": cost.active_params,
                    "moe": cost.moe, "flops_per_token": tc.flops / max(tc.teacher_tokens, 1),
                    "flops_linear_per_token": cost.linear,
                    "flops_attn_per_token_per_position": cost.attn,
                    "flops_head_per_labelled_position": cost.head},
        "input": {"records": tc.records, "examples": round(tc.examples),
                  "exact": tc.exact, "sampled": tc.sampled,
                  "teacher_tokens": round(tc.teacher_tokens),
                  "teacher_tokens_error_95": round(tc.teacher_error),
                  "labelled_positions": round(tc.labelled), "views": views},
        "compute": {"flops": tc.flops, "flops_error_95": tc.flops_error, "device": gpu,
                    "devices": gpus, "mfu": mfu, "peak_flops_per_device": peak,
                    "assumptions": peak_note,
                    "device_hours": device_s / 3600,
                    "wall_s": start + device_s / gpus, "start_s": start},
        "output": {"encoding": encoding, "top_k": top_k,
                   "label_bytes_per_position": label_bytes_per_position(encoding, top_k),
                   "bytes": out_bytes, "shards": math.ceil(tc.records / shard_rows),
                   "shard_rows": shard_rows},
    }


def format_plan(p: dict) -> str:
    t, i, c, o = p["teacher"], p["input"], p["compute"], p["output"]
    err = "" if i["exact"] else (f" +- {i['teacher_tokens_error_95']:,} (95%, from "
                                 f"{i['sampled']:,} sampled records)")
    unit = "GPU" if c["device"] != "cpu" else "CPU"
    return "\n".join([
        f"teacher        {t['params_total'] / 1e6:,.1f}M params"
        + (f" ({t['params_active'] / 1e6:,.1f}M active, MoE)" if t["moe"] else "")
        + f", {t['flops_per_token'] / 1e9:,.4f} GFLOP/token (attention and LM head included)",
        f"records        {i['records']:,} ({i['examples']:,} parse), {i['views']} view(s)",
        f"teacher tokens {i['teacher_tokens']:,}" + (" (exact)" if i["exact"] else err),
        f"labelled       {i['labelled_positions']:,} positions",
        f"compute        {c['flops'] / 1e12:,.2f} TFLOP; {c['device']} at MFU {c['mfu']:.2f}: "
        f"{c['device_hours']:,.3f} {unit}-hours",
        f"wall time      {c['wall_s'] / 3600:,.3f} h on {c['devices']} {c['device']} "
        f"({c['wall_s']:,.0f} s incl. {c['start_s']:.0f} s start-up)",
        f"output         {o['bytes'] / 1e9:,.3f} GB ({o['encoding']}, k={o['top_k']}: "
        f"{o['label_bytes_per_position']:.1f} B per labelled position for the labels), "
        f"{o['shards']:,} shards of {o['shard_rows']} rows",
        f"assumptions    {c['assumptions']}; estimates, not measurements",
    ])
