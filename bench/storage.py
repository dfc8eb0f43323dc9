"""Bytes per labelled token of plain and compact shards, and the compact encoding's error.

    python bench/storage.py                        # synthetic teacher, vocab 128k, ids Zipf-ordered
    python bench/storage.py --ids uniform          # the same distributions, ids spread uniformly
    python bench/storage.py --labels DIR           # re-encode a real (plain) label set

Counted: the compressed bytes of the shard's label columns (plain: topk_ids, topk_logprobs,
target_logprob; compact: topk_id_deltas, topk_codes, topk_logmass, target_logprob), read from
the Parquet footer of a shard written by ``schemas.labelset.parquet_bytes``, divided by the
labelled positions. Not counted: input_ids, ids/views, summaries, the footer (reported
separately as whole-file bytes per token). Error: mean (and p99, max) over positions of
KL(stored || decoded), both as k ids plus a tail bucket 1 - sum p (``schemas.compact.topk_kl``).

Beside them: DistillKit's format at its recommended settings (exact_k=16 bf16 log-probs, the
other k-16 from a least-squares fit in rank with terms 1, t, t^2, t^3, t^4, sqrt t, stored as
float32; ids bit-packed at ceil(log2 V) bits): its bytes by that format's arithmetic, its error
from our own re-implementation of that approximation on the same distributions (not DistillKit's
code). At k=50 also its "budget" settings (exact_k=1, terms 1, t, sqrt t).
Speeds (best of 3, one process): ``parquet_bytes`` of a built table (compact: including
``encode_table``), and Parquet read + ``schemas.compact.topk_arrays`` to (T, k) arrays.
Results are printed as JSON lines and as a Markdown table; docs/BENCHMARKS.md records them.
"""
import argparse
import io
import json
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KS = (20, 50, 64, 128)
SAMPLE_NS = (4, 12, 32)
# sampled-target variants measured beside top-k: (name, targets, N, proposal temperature, head k)
SAMPLED = tuple((f"sampled N={n}", "sampled", n, 1.0, 0) for n in SAMPLE_NS) + (
    ("sampled N=12 tau=2 (+weights)", "sampled", 12, 2.0, 0),
    ("both k=20 + N=12 tail", "both", 12, 1.0, 20))
VARIANTS = {"compact": {"bits": 8, "tau": 2.0}, "compact tau=3": {"bits": 8, "tau": 3.0}}
DK_RECOMMENDED = {"exact_k": 16, "terms": ("0", "1", "2", "3", "4", "sqrt")}
DK_BUDGET = {"exact_k": 1, "terms": ("0", "1", "sqrt")}


def synthetic_teacher(n: int, vocab: int = 128_000, k: int = 128, ids: str = "zipf",
                      seed: int = 0, batch: int = 256, sampled: tuple = (),
                      draws: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) top-k ids and log-probs of a made-up teacher over ``vocab`` tokens.

    Per position, logits over the whole vocabulary = a Zipf prior (-log(id + 1): low ids are the
    frequent tokens, as in BPE vocabularies) + s * Gumbel noise (s ~ U(0.5, 1.2)) + a boost for
    m ~ U{1..7} context tokens at random ids (B ~ U(10, 22), the j-th one B - j * U(0.3, 3));
    log-softmax over the vocabulary; the k largest, sorted. ``ids="uniform"``: the same, with the
    token ids permuted at random (no frequency order: the worst case for delta-coded ids).
    ``sampled``: variants of SAMPLED whose draws (``pipeline.sampler.draw`` on the full
    distribution, as ``kd label --targets sampled|both`` does) go into ``draws[name]`` as
    padded (n, N) ids, counts, log weights.
    """
    rng = np.random.default_rng(seed)
    prior = (-np.log(np.arange(1, vocab + 1))).astype(np.float32)
    perm = rng.permutation(vocab).astype(np.int32) if ids == "uniform" else None
    out_ids = np.empty((n, k), np.int32)
    out_lp = np.empty((n, k), np.float32)
    for s in range(0, n, batch):
        b = min(batch, n - s)
        u = rng.random((b, vocab), dtype=np.float32)
        z = prior - rng.uniform(0.5, 1.2, (b, 1)).astype(np.float32) * np.log(-np.log(u + 1e-12))
        for i in range(b):
            m = int(rng.integers(1, 8))
            boost = rng.uniform(10, 22) - np.arange(m) * rng.uniform(0.3, 3)
            z[i, rng.integers(0, vocab, m)] += boost.astype(np.float32)
        zmax = z.max(axis=1, keepdims=True)
        lp = z - (zmax + np.log(np.exp(z - zmax).sum(axis=1, keepdims=True)))
        top = np.argpartition(-lp, k - 1, axis=1)[:, :k]
        top_lp = np.take_along_axis(lp, top, 1)
        order = np.argsort(-top_lp, axis=1, kind="stable")
        top, top_lp = np.take_along_axis(top, order, 1), np.take_along_axis(top_lp, order, 1)
        out_ids[s:s + b] = top if perm is None else perm[top]
        out_lp[s:s + b] = top_lp
        for name, _, n_draws, tau, head in sampled:
            import torch
            from pipeline import sampler
            keys = torch.cat([sampler.position_keys(sampler.example_key(seed, f"p{s + i}"), 1)
                              for i in range(b)])
            exclude = torch.from_numpy(top[:, :head].astype(np.int64)) if head else None
            d = sampler.draw(torch.from_numpy(lp), keys, n_draws, tau, exclude)
            got = d.ids.numpy().astype(np.int32)
            if perm is not None:
                got = np.where(got >= 0, perm[np.maximum(got, 0)], -1)
                order = np.argsort(np.where(got >= 0, got, np.iinfo(np.int32).max), axis=1)
                got = np.take_along_axis(got, order, 1)
                d.counts = torch.from_numpy(np.take_along_axis(d.counts.numpy(), order, 1))
                d.logweights = torch.from_numpy(np.take_along_axis(d.logweights.numpy(), order, 1))
            draws.setdefault(name, []).append((got, d.counts.numpy().astype(np.uint8),
                                               d.logweights.numpy()))
    for name in list(draws or {}):
        draws[name] = tuple(np.concatenate(parts) for parts in zip(*draws[name]))
    return out_ids, out_lp


def items_from(ids: np.ndarray, lp: np.ndarray, seed: int = 0, drawn: tuple | None = None) -> list:
    """Rows of 32-480 labelled positions (plain text mode: input = BOS + the labelled tokens);
    ``drawn``: padded (T, N) sampled ids, counts, log weights for the same positions."""
    from schemas.labelset import Labels, SampledLabels, Tokenized
    rng = np.random.default_rng(seed)
    items, start, i = [], 0, 0
    while start < len(ids):
        n = min(int(rng.integers(32, 481)), len(ids) - start)
        tokens = [1] + rng.integers(3, 1000, n).tolist()
        span = slice(start, start + n)
        samples = SampledLabels(*(a[span] for a in drawn)) if drawn is not None else None
        items.append((Tokenized(f"ex{i:06d}", tokens, 1, None, None),
                      Labels(ids[span], lp[span], lp[span, 0].copy(), {}, {}, samples)))
        start, i = start + n, i + 1
    return items


def distillkit_style(lp: np.ndarray, exact_k: int, terms: tuple[str, ...]) -> np.ndarray:
    """Our re-implementation of DistillKit's log-prob approximation: the first ``exact_k``
    rounded to bf16, the rest a least-squares fit in rank t = 0, 1, ... (float32 coefficients)."""
    import torch
    k = lp.shape[1]
    exact = torch.from_numpy(lp[:, :exact_k].copy()).to(torch.bfloat16).float().numpy()
    if k <= exact_k:
        return exact
    t = np.arange(k - exact_k, dtype=np.float64)
    x = np.stack([np.sqrt(t) if term == "sqrt" else t ** int(term) for term in terms], axis=1)
    coef = np.linalg.lstsq(x, lp[:, exact_k:].T.astype(np.float64), rcond=None)[0]
    return np.concatenate([exact, (x @ coef.astype(np.float32).astype(np.float64)).T], axis=1)


def distillkit_bytes(k: int, vocab: int, exact_k: int, terms: tuple[str, ...]) -> int:
    """Bytes per token of DistillKit's packed format: bit-packed ids, bf16 exact values,
    float32 coefficients."""
    return math.ceil(k * math.ceil(math.log2(vocab)) / 8) + 2 * min(exact_k, k) + 4 * len(terms)


def kl_stats(kl: np.ndarray) -> dict:
    return {"kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)),
            "kl_max": float(kl.max())}


def best_of(fn, n: int = 3):
    """(fastest wall time of n calls, the result)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def measure(plain_table, k: int, source: str) -> list[dict]:
    """Plain and compact shards of one plain label table: bytes per token, error, speed."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from schemas.labelset import parquet_bytes
    from schemas import compact
    tokens = int(pc.sum(pc.list_value_length(plain_table["target_logprob"])).as_py())
    write, data = best_of(lambda: parquet_bytes(plain_table))
    plain_read, (ids, lp) = best_of(lambda: compact.topk_arrays(pq.read_table(io.BytesIO(data)), k))
    rows = [{"source": source, "k": k, "encoding": "plain", "tokens": tokens,
             "label_B_per_token": compact.label_bytes(data) / tokens,
             "file_B_per_token": len(data) / tokens, "kl": "exact",
             "encode_write_tokens_per_s": tokens / write,
             "read_decode_tokens_per_s": tokens / plain_read}]
    for name, params in VARIANTS.items():
        enc, cdata = best_of(lambda: parquet_bytes(
            compact.encode_table(plain_table, params["bits"], params["tau"])))
        dec, (d_ids, d_lp) = best_of(
            lambda: compact.topk_arrays(pq.read_table(io.BytesIO(cdata)), k))
        rows.append({"source": source, "k": k, "encoding": name, **params, "tokens": tokens,
                     "label_B_per_token": compact.label_bytes(cdata) / tokens,
                     "file_B_per_token": len(cdata) / tokens,
                     **kl_stats(compact.topk_kl(ids, lp, d_ids, d_lp)),
                     "encode_write_tokens_per_s": tokens / enc,
                     "read_decode_tokens_per_s": tokens / dec})
    return rows


def measure_sampled(plain_table, name: str, source: str, n: int) -> list[dict]:
    """Plain and compact shards of a table with sampled targets: bytes per token, distinct ids
    per position, write and read + decode speed."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from schemas import compact, sampled
    from schemas.labelset import parquet_bytes
    tokens = int(pc.sum(pc.list_value_length(plain_table["target_logprob"])).as_py())
    distinct = int(pc.sum(pc.list_value_length(pc.list_flatten(
        plain_table["sampled_ids"]))).as_py()) / tokens
    rows = []
    for encoding in ("plain", "compact"):
        def write():
            t = compact.encode_table(plain_table) if encoding == "compact" else plain_table
            return parquet_bytes(t)
        w, data = best_of(write)
        r, _ = best_of(lambda: sampled.decode(pq.read_table(io.BytesIO(data)), n))
        rows.append({"source": source, "k": name, "encoding": encoding, "tokens": tokens,
                     "distinct_ids_per_position": distinct,
                     "label_B_per_token": compact.label_bytes(data) / tokens,
                     "file_B_per_token": len(data) / tokens, "kl": "unbiased estimate",
                     "encode_write_tokens_per_s": tokens / w,
                     "read_decode_tokens_per_s": tokens / r})
    return rows


def sampled_metadata(targets: str, n: int, tau: float, head: int) -> dict:
    return {"k": head, "targets": targets, "sampled": {"n": n, "proposal_temperature": tau}}


def distillkit_rows(ids: np.ndarray, lp: np.ndarray, k: int, vocab: int, source: str) -> list:
    from schemas import compact
    out = []
    for name, cfg in (("DistillKit recommended settings", DK_RECOMMENDED),
                      ("DistillKit budget settings", DK_BUDGET)):
        if name.endswith("budget settings") and k != 50:
            continue
        approx = distillkit_style(lp, cfg["exact_k"], cfg["terms"])
        out.append({"source": source, "k": k, "encoding": name,
                    "label_B_per_token": distillkit_bytes(k, vocab, cfg["exact_k"], cfg["terms"]),
                    **kl_stats(compact.topk_kl(ids, lp, ids, approx)),
                    "note": "bytes: the format's arithmetic; KL: our re-implementation"})
    return out


def synthetic(args) -> list[dict]:
    from schemas.labelset import build_table
    t0 = time.perf_counter()
    draws: dict = {}
    ids, lp = synthetic_teacher(args.positions, args.vocab, max(KS), args.ids, args.seed,
                                sampled=SAMPLED, draws=draws)
    p = np.exp(lp.astype(np.float64))
    source = f"synthetic vocab {args.vocab}, ids {args.ids}, {args.positions} positions"
    shape = {"bench": "distributions", "source": source, "seconds": time.perf_counter() - t0,
             "top1_p_percentiles_5_25_50_75_95": np.percentile(p[:, 0], [5, 25, 50, 75, 95])
             .round(3).tolist()}
    for k in KS:
        shape[f"top{k}_mass_percentiles_5_50_95"] = np.percentile(
            p[:, :k].sum(1), [5, 50, 95]).round(4).tolist()
    results = [shape]
    for k in KS:
        table = build_table(items_from(ids[:, :k], lp[:, :k]), k, (), {"k": k})
        results += measure(table, k, source)
        results += distillkit_rows(ids[:, :k], lp[:, :k], k, args.vocab, source)
    for name, targets, n, tau, head in SAMPLED:
        meta = sampled_metadata(targets, n, tau, head)
        table = build_table(items_from(ids[:, :head], lp[:, :max(head, 1)], drawn=draws[name]),
                            head, (), meta)
        results += measure_sampled(table, name, source, n)
    return results


def real(args) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from schemas import load_manifest
    from schemas.labelconfig import LabelConfig
    m = load_manifest(args.labels)
    lc = LabelConfig.from_dict(m.label_config)
    table = pa.concat_tables([pq.read_table(f"{args.labels}/{s.path}") for s in m.shards])
    if lc.targets == "topk":
        return measure(table.combine_chunks(), lc.top_k, f"label set {args.labels} (k={lc.top_k})")
    name = f"{lc.targets} N={lc.samples}" + (f" + k={lc.top_k}" if lc.top_k else "")
    return measure_sampled(table.combine_chunks(), name, f"label set {args.labels}", lc.samples)


def markdown(results: list[dict]) -> str:
    sources = sorted({r["source"] for r in results if "encoding" in r})
    lines = [f"{src}:" for src in sources] + [
        "", "| k / targets | encoding | label B/token | file B/token | KL mean | KL p99 | KL max | "
        "write tok/s | read tok/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "encoding" not in r:
            continue
        cells = [f"{r['label_B_per_token']:.1f}"]
        cells.append(f"{r['file_B_per_token']:.1f}" if "file_B_per_token" in r else "-")
        if r.get("kl") == "unbiased estimate":
            cells += ["unbiased", f"{r['distinct_ids_per_position']:.1f} ids/pos", "-"]
        else:
            cells += [f"{r[key]:.1e}" if key in r else "exact" if "file_B_per_token" in r
                      else "-" for key in ("kl_mean", "kl_p99", "kl_max")]
        cells += [f"{r[key]:,.0f}" if key in r else "-"
                  for key in ("encode_write_tokens_per_s", "read_decode_tokens_per_s")]
        lines.append(f"| {r['k']} | {r['encoding']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", help="a plain label set to re-encode instead of synthetic data")
    ap.add_argument("--ids", choices=["zipf", "uniform"], default="zipf")
    ap.add_argument("--positions", type=int, default=16384)
    ap.add_argument("--vocab", type=int, default=128_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = real(args) if args.labels else synthetic(args)
    for r in results:
        print(json.dumps(r))
    print(markdown(results))


if __name__ == "__main__":
    main()
