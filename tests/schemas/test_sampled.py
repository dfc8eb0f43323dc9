"""Sampled-target columns: plain and compact round trips through Parquet, and checks."""
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from schemas import sampled


def draws(t=300, n=12, vocab=5000, tau=1.0, seed=0):
    """Padded (t, n) distinct ids ascending with counts (numpy only: schemas/ tests import
    nothing above schemas/), and log weights when tau != 1."""
    rng = np.random.default_rng(seed)
    raw = np.sort(rng.zipf(1.3, (t, n)) % vocab, axis=1)
    ids = np.full((t, n), -1, np.int32)
    counts = np.zeros((t, n), np.uint8)
    for i in range(t):
        u, c = np.unique(raw[i], return_counts=True)
        ids[i, :len(u)], counts[i, :len(u)] = u, c
    logw = np.where(counts > 0, rng.normal(size=(t, n)), 0).astype(np.float32)
    return ids, counts, logw if tau != 1.0 else np.zeros_like(logw)


def roundtrip(cols: dict) -> pa.Table:
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return pq.read_table(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_round_trip_gives_back_the_padded_arrays(compact, tau):
    ids, counts, logw = draws(tau=tau)
    positions = np.array([100, 0, 150, 50])  # rows with their labelled positions
    weights = logw if tau != 1.0 else None
    table = roundtrip(sampled.encode(ids, counts, weights, positions, compact))
    assert ("sampled_id_deltas" in table.column_names) == compact
    got_ids, got_counts, got_w = sampled.decode(table, 12)
    assert np.array_equal(got_ids, ids) and np.array_equal(got_counts, counts)
    if weights is None:
        assert got_w is None
    else:
        assert np.array_equal(got_w, logw)
    sampled.check(got_ids, got_counts, 12, vocab=5000)
    # plain columns read with pyarrow alone: row 2's first position
    if not compact:
        first = table["sampled_ids"][2].as_py()[0]
        assert first == ids[100][counts[100] > 0].tolist()


def test_checks_refuse_broken_positions():
    ids, counts, _ = draws(t=5)
    bad = counts.copy()
    bad[0, 0] += 1
    with pytest.raises(ValueError, match="sum to N"):
        sampled.check(ids, bad, 12)
    unsorted = ids.copy()
    k = int((counts[1] > 0).sum())
    if k > 1:
        unsorted[1, :k] = unsorted[1, :k][::-1]
        with pytest.raises(ValueError, match="ascending"):
            sampled.check(unsorted, counts, 12)
    with pytest.raises(ValueError, match="vocabulary"):
        sampled.check(ids, counts, 12, vocab=1)
    table = roundtrip(sampled.encode(ids, counts, None, np.array([5])))
    with pytest.raises(ValueError, match="more than N"):
        sampled.decode(table, 1)
