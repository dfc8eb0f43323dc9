"""Sampled soft labels: N draws per position from the teacher's full distribution (or a tempered
one), as unique ids with counts and importance weights. Pure torch, vectorised over positions.

Draws are deterministic per (seed, example id, position): each position's uniforms come from a
counter-based hash of its own 64-bit key and the draw index, never from a shared generator, so
the same position gets the same draws whatever else is in the batch, and a rerun or a retried
chunk writes identical bytes. A draw is an inverse-CDF look-up in two levels (blocks of
``BLOCK`` tokens, then the token inside the chosen block), with float64 cumulative sums, so it
costs one pass over the vocabulary (the block sums; ``draw`` first takes the exp of the log-probs,
``draw_probs`` is handed probabilities) plus O(N * BLOCK) per position, and tokens of tiny
probability keep their exact chance.

Proposal q = softmax(log p / tau) (tau = 1: the teacher itself). With ``exclude`` (the top-k ids
in ``--targets both``) q is restricted to the other tokens: the draws then describe the tail.
The log importance weight of a draw is log(p(x) / q(x)) with p the teacher (restricted to the
same support and renormalised when ``exclude`` is given); it is 0 when tau = 1.
"""
import dataclasses
import hashlib

import torch

BLOCK = 256
MASK32 = 0xFFFFFFFF
SCHEME = ("key = sha256('<seed>\\0<example id>')[:16 hex]; per position j and draw i, 53-bit "
          "uniform from lowbias32 counter hashes of (key, j, i); inverse CDF of softmax(log p / "
          "tau) in blocks of 256 tokens (pipeline/sampler.py)")


def example_key(seed: int, example_id: str) -> int:
    """The 64-bit key of one example's draws: the first 16 hex digits of sha256("<seed>\\0<id>")."""
    return int(hashlib.sha256(f"{seed}\0{example_id}".encode()).hexdigest()[:16], 16)


def position_keys(key: int, n: int) -> torch.Tensor:
    """(n, 2) int64: the key of positions 0..n-1 of one example as two 32-bit words."""
    pos = torch.arange(n, dtype=torch.int64)
    hi = torch.full((n,), key >> 32, dtype=torch.int64)
    lo = torch.full((n,), key & MASK32, dtype=torch.int64)
    return torch.stack([_mix(hi ^ _mix(pos)), _mix(lo ^ _mix(pos ^ 0x5BD1E995))], dim=-1)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 0 <= x < 2^32 without int64 overflow."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & MASK32


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) of int64 tensors holding values in [0, 2^32)."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(keys: torch.Tensor, n: int) -> torch.Tensor:
    """(P, 2) position keys -> (P, n) float64 uniforms in (0, 1), 53 random bits each."""
    j = torch.arange(n, dtype=torch.int64)[None, :]
    w0, w1 = keys[:, :1], keys[:, 1:]
    a = _mix(w1 ^ _mix(w0 ^ _mix(2 * j)))
    b = _mix(w0 ^ _mix(w1 ^ _mix(2 * j + 1)))
    bits = (a << 21) | (b >> 11)  # 53 bits
    return (bits.double() + 0.5) / float(1 << 53)


@dataclasses.dataclass
class Samples:
    """Per position, the unique drawn ids ascending, padded to N with id -1 and count 0."""
    ids: torch.Tensor         # (P, N) int64
    counts: torch.Tensor      # (P, N) int64, summing to N per position
    logweights: torch.Tensor  # (P, N) float32, log(p(x) / q(x)); 0 at padding

    def unique_counts(self) -> torch.Tensor:
        """(P,) number of distinct ids per position."""
        return (self.counts > 0).sum(-1)


def draw(logprobs: torch.Tensor, keys: torch.Tensor, n: int, temperature: float = 1.0,
         exclude: torch.Tensor | None = None, consume: bool = False) -> Samples:
    """``n`` draws per position from q = softmax(logprobs / temperature) [outside ``exclude``].

    ``logprobs`` (P, V) the teacher's normalised log-probabilities at temperature 1; ``keys``
    (P, 2) from ``position_keys``; ``exclude`` (P, k) ids q gives no mass to (p is then taken
    on the same support, renormalised). ``consume=True`` lets the function overwrite
    ``logprobs`` (a float32 tensor the caller no longer needs) instead of allocating a second
    (P, V) buffer.
    """
    _check(n, temperature)
    dev = logprobs.device
    log_mp = 0.0  # log of p's mass on q's support
    if exclude is not None:
        exclude = exclude.long().to(dev)
        if temperature != 1.0:  # summed over the tail itself: 1 - sum(head) would cancel
            tail = logprobs.float().exp().scatter_(1, exclude, 0.0)
            log_mp = tail.sum(-1, dtype=torch.float64).log()[:, None]
            del tail
    # unnormalised proposal w = exp(lp / tau - c); c keeps the top of w away from underflow
    q = logprobs if consume and logprobs.dtype == torch.float32 else logprobs.float().clone()
    shift = None
    if temperature != 1.0:
        q.mul_(1.0 / temperature)
        if temperature < 1.0:
            shift = q.amax(-1, keepdim=True)
            q.sub_(shift)
    q.exp_()
    ids, counts, total = _inverse_cdf(q, keys, n, exclude)
    logw = torch.zeros(ids.shape, dtype=torch.float32, device=dev)
    if temperature != 1.0:
        # log w(x) = lp(x) / tau - shift; log q(x) = log w(x) - log total;
        # log p(x) on q's support = lp(x) - log(mass of p there)
        log_w = q.gather(1, ids.clamp(min=0)).double().log()
        lp = (log_w + (0.0 if shift is None else shift.double())) * temperature
        logw = ((lp - log_mp) - (log_w - total.log())).float().masked_fill_(counts == 0, 0.0)
    return Samples(ids, counts, logw)


def draw_probs(probs: torch.Tensor, keys: torch.Tensor, n: int,
               exclude: torch.Tensor | None = None) -> Samples:
    """``n`` draws per position from the teacher itself (proposal temperature 1), given its
    probabilities ``probs`` (P, V) float32, e.g. ``torch.softmax(logits, -1)``: the labelling
    head's road, which so needs no exp pass of its own. ``probs`` is overwritten where
    ``exclude`` (P, k) is given (those ids get no mass: the draws then describe the tail).
    Same draws as ``draw(log(probs), ...)`` up to float rounding at a block boundary."""
    _check(n, 1.0)
    if exclude is not None:
        exclude = exclude.long().to(probs.device)
    ids, counts, _ = _inverse_cdf(probs.float(), keys, n, exclude)
    return Samples(ids, counts, torch.zeros(ids.shape, dtype=torch.float32, device=probs.device))


def _check(n: int, temperature: float) -> None:
    if n < 1:
        raise ValueError(f"samples per position must be >= 1, got {n}")
    if not temperature > 0:
        raise ValueError(f"proposal temperature must be > 0, got {temperature}")


def _inverse_cdf(q: torch.Tensor, keys: torch.Tensor, n: int,
                 exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` draws per row from the unnormalised weights ``q`` (P, V), float32, zeroed in place at
    ``exclude``: (unique ids, counts, (P, 1) float64 total weight)."""
    p_rows, vocab = q.shape
    dev = q.device
    if exclude is not None:
        q.scatter_(1, exclude, 0.0)
    full = vocab // BLOCK
    ragged = vocab % BLOCK
    view = torch.as_strided(q, (p_rows, full, BLOCK), (q.stride(0), BLOCK, 1))
    blocks = view.sum(-1)
    tail = None
    if ragged:  # the last, partial block, padded with zeros (a (P, BLOCK) copy only)
        tail = torch.zeros(p_rows, 1, BLOCK, dtype=q.dtype, device=dev)
        tail[:, 0, :ragged] = q[:, full * BLOCK:]
        blocks = torch.cat([blocks, tail[:, 0].sum(-1, keepdim=True)], dim=-1)
    n_blocks = blocks.shape[1]
    block_mass = blocks.double()                                    # (P, B)
    block_cdf = block_mass.cumsum(-1)
    total = block_cdf[:, -1:]
    u = uniforms(keys.to(dev), n) * total                           # (P, n) in [0, total)
    b = torch.searchsorted(block_cdf, u, right=True).clamp_(max=n_blocks - 1)
    rest = u - (block_cdf.gather(1, b) - block_mass.gather(1, b))  # offset inside block b
    # the chosen blocks' probabilities, (P, n, BLOCK), gathered without an index per token
    inner = (view.gather(1, b.clamp(max=max(full - 1, 0))[..., None].expand(-1, -1, BLOCK))
             if full else torch.zeros(p_rows, n, BLOCK, dtype=q.dtype, device=dev))
    if tail is not None:
        inner = torch.where((b == full)[..., None], tail.expand(-1, n, -1), inner)
    inner = inner.cumsum(-1)  # float32 within a block: relative error ~1e-7 of its mass
    rest = torch.minimum(rest.float(), torch.nextafter(inner[..., -1], torch.zeros_like(inner[..., -1])))
    t = torch.searchsorted(inner, rest[..., None], right=True)[..., 0].clamp_(max=BLOCK - 1)
    ids, counts = _unique_rows(b * BLOCK + t)
    return ids, counts, total


def _unique_rows(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, n) draws -> unique ids ascending and their counts, padded with (-1, 0)."""
    s, _ = tokens.sort(dim=-1)
    first = torch.ones_like(s, dtype=torch.bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    slot = first.long().cumsum(-1) - 1                            # unique index of each draw
    counts = torch.zeros_like(s).scatter_add_(1, slot, torch.ones_like(s))
    ids = torch.full_like(s, -1).scatter_(1, slot, s)
    return ids, counts
