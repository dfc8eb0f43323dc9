"""The compact shard encoding: error bounds, plain shards unchanged, validation."""
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import ShardError, compact, read_file_metadata, validate_table
from schemas.labelset import build_table, parquet_bytes
from synthetic import items, teacher_topk

@pytest.mark.parametrize("bits,tau", [(8, 2.0), (8, 4.0), (5, 2.0)])
def test_round_trip_within_the_code_cells(bits, tau):
    ids, lp = teacher_topk(400, 32)
    deltas, codes, logmass = compact.encode_topk(ids, lp, bits, tau)
    assert deltas.dtype == np.int32 and codes.dtype == np.uint8 and codes.max() < 2 ** bits
    d_ids, d_lp = compact.decode_topk(deltas, codes, logmass, bits, tau)
    assert d_ids.shape == d_lp.shape == ids.shape
    assert (np.diff(d_lp, axis=1) <= 0).all()  # descending probability, as plain shards
    # ids exactly preserved, each with its own value: align both by id
    o, d_o = np.argsort(ids, 1), np.argsort(d_ids, 1)
    assert np.array_equal(np.take_along_axis(ids, o, 1), np.take_along_axis(d_ids, d_o, 1))
    x = (lp.max(1, keepdims=True) - lp).astype(np.float64)
    d_x = (d_lp.max(1, keepdims=True) - d_lp).astype(np.float64)
    x, d_x = np.take_along_axis(x, o, 1), np.take_along_axis(d_x, d_o, 1)
    lo, hi = compact.code_cells(codes, bits, tau)  # codes come in ascending id order
    assert (x >= lo - 1e-4).all() and (x <= hi + 1e-4).all()      # stored value in its cell
    assert (d_x >= lo - 1e-4).all() and (d_x <= hi + 1e-4).all()  # decoded value in that cell
    # the top-k mass, hence the tail bucket, is kept
    mass = np.log(np.exp(lp.astype(np.float64)).sum(1))
    assert np.allclose(np.log(np.exp(d_lp.astype(np.float64)).sum(1)), mass, atol=1e-5)
    kl = compact.topk_kl(ids, lp, d_ids, d_lp)
    assert (kl >= -1e-7).all()
    # small-error expansion: KL ~ 1/2 sum_i p_i var(error_i); a cell at ratio r = p_i / p_max is
    # tau * r**(-1/tau) / q wide, so for tau >= 2 each entry adds at most p_max tau^2 / (24 q^2)
    q = 2 ** bits - 1
    assert kl.mean() < 2 * 32 * tau ** 2 / (24 * q ** 2)


def test_coarser_codes_cost_more_kl():
    ids, lp = teacher_topk(300, 64, seed=1)
    kls = []
    for bits in (4, 6, 8):
        d_ids, d_lp = compact.decode_topk(*compact.encode_topk(ids, lp, bits), bits)
        kls.append(compact.topk_kl(ids, lp, d_ids, d_lp).mean())
    assert kls[0] > kls[1] > kls[2] and kls[2] < 2e-4


def test_topk_kl_is_zero_for_the_same_labels_and_sees_a_change():
    ids, lp = teacher_topk(50, 16, seed=2)
    perm = np.random.default_rng(0).permutation(16)
    assert np.allclose(compact.topk_kl(ids, lp, ids[:, perm], lp[:, perm]), 0, atol=1e-12)
    moved = lp.copy()
    moved[:, 1] -= 1.0
    assert (compact.topk_kl(ids, lp, ids, moved) > 1e-4).all()
    with pytest.raises(ValueError, match="same ids"):
        compact.topk_kl(ids, lp, ids + 1, lp)


def test_encode_refuses_duplicate_ids_and_nan():
    ids, lp = teacher_topk(5, 8)
    bad = ids.copy()
    bad[2, 3] = bad[2, 0]
    with pytest.raises(ValueError, match="distinct"):
        compact.encode_topk(bad, lp)
    nan = lp.copy()
    nan[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        compact.encode_topk(ids, nan)


def test_plain_shards_are_unchanged():
    its = items()
    default = build_table(its, 16, (2,), {"k": 16})
    plain = build_table(its, 16, (2,), {"k": 16}, encoding="plain")
    assert default.equals(plain) and default.schema.metadata == plain.schema.metadata
    assert parquet_bytes(default) == parquet_bytes(plain)
    assert b"kd.encoding" not in default.schema.metadata
    assert compact.encoding_of(default.schema) == ("plain", {})
    assert {"topk_ids", "topk_logprobs"} <= set(default.column_names)
    back = pq.read_table(io.BytesIO(parquet_bytes(plain)))  # any Parquet reader: no project code
    assert back["topk_ids"].to_pylist() == default["topk_ids"].to_pylist()


def test_compact_table_round_trip_and_validation(tmp_path):
    its = items()
    plain = build_table(its, 16, (2,), {"k": 16})
    table = build_table(its, 16, (2,), {"k": 16}, encoding="compact")
    assert not {"topk_ids", "topk_logprobs"} & set(table.column_names)
    assert table["topk_codes"].type == pa.list_(pa.list_(pa.uint8()))
    data = parquet_bytes(table)
    assert compact.label_bytes(data) < 0.6 * compact.label_bytes(parquet_bytes(plain))
    (tmp_path / "c.parquet").write_bytes(data)
    meta = read_file_metadata(str(tmp_path / "c.parquet"))
    assert meta["encoding"] == "compact" and meta["encoding_params"] == {"bits": 8, "tau": 2.0}
    back = pq.read_table(tmp_path / "c.parquet")
    validate_table(back, 16)
    decoded = compact.to_plain(back)
    validate_table(decoded, 16)
    assert decoded.column_names == plain.column_names
    assert b"kd.encoding" not in decoded.schema.metadata
    for col in ("example_id", "view", "input_ids", "label_start", "target_logprob",
                "hidden_mean_l2"):
        assert decoded[col].to_pylist() == plain[col].to_pylist()
    p_ids, p_lp = compact.topk_arrays(plain, 16)
    d_ids, d_lp = compact.topk_arrays(decoded, 16)
    assert compact.topk_kl(p_ids, p_lp, d_ids, d_lp).max() < 1e-3
    with pytest.raises(ValueError, match="unknown encoding"):
        build_table(its, 16, (2,), {}, encoding="zip")


def test_validation_rejects_broken_compact_shards():
    table = build_table(items(), 16, (2,), {}, encoding="compact")
    validate_table(table, 16)
    with pytest.raises(ShardError, match="exactly k=8"):
        validate_table(table, 8)
    col = table.schema.get_field_index("topk_id_deltas")
    deltas = table["topk_id_deltas"].to_pylist()
    deltas[0][0][1] = 0  # a repeated id
    field = table.schema.field(col)
    bad = table.set_column(col, field, pa.array(deltas, field.type))
    with pytest.raises(ShardError, match="distinct"):
        validate_table(bad, 16)
    meta = dict(table.schema.metadata)
    meta[b"kd.encoding_params"] = json.dumps({"bits": 4, "tau": 2.0}).encode()
    with pytest.raises(ShardError, match="above 15"):  # codes of 8 bits read as 4-bit codes
        validate_table(table.replace_schema_metadata(meta), 16)
    meta[b"kd.encoding"] = json.dumps("zip").encode()
    with pytest.raises(ShardError, match="unknown shard encoding"):
        validate_table(table.replace_schema_metadata(meta), 16)
    wide = table.set_column(col, "topk_id_deltas", table["topk_id_deltas"].cast(
        pa.list_(pa.list_(pa.int64()))))
    with pytest.raises(ShardError, match="topk_id_deltas"):
        validate_table(wide, 16)
