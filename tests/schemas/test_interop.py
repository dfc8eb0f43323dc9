"""Plain shards read with common tools: datasets.load_dataset("parquet"), DuckDB, polars.

Only the shards the manifest lists are read (a glob over shards/ could take an unreferenced file:
see kd cache gc)."""
import json
import os

import pyarrow.parquet as pq


def listed_shards(label_dir: str) -> list[str]:
    with open(os.path.join(label_dir, "manifest.json")) as f:
        return [os.path.join(label_dir, s["path"]) for s in json.load(f)["shards"]]


def reference(label_dir: str):
    table = pq.read_table(listed_shards(label_dir), columns=["example_id", "view", "topk_ids",
                                                             "topk_logprobs"])
    return table.to_pylist()


def test_datasets_load_dataset(label_set, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets
    files = listed_shards(label_set["out"])
    ds = datasets.load_dataset("parquet", data_files=files, split="train",
                               cache_dir=str(tmp_path / "hf"))
    want = reference(label_set["out"])
    assert ds.num_rows == len(want) == label_set["summary"]["rows_labelled"]
    assert ds[0]["example_id"] == want[0]["example_id"]
    assert ds[0]["topk_ids"] == want[0]["topk_ids"]
    assert len(ds[0]["topk_ids"][0]) == 8


def test_duckdb(label_set):
    import duckdb
    files = listed_shards(label_set["out"])
    rows, tokens, k = duckdb.sql(
        "select count(*), sum(len(topk_ids)), max(len(topk_ids[1])) "
        "from read_parquet($files)", params={"files": files}).fetchall()[0]
    want = reference(label_set["out"])
    assert rows == len(want) and k == 8
    assert tokens == sum(len(r["topk_ids"]) for r in want)
    top1 = duckdb.sql("select example_id, view, topk_logprobs[1][1] from read_parquet($files) "
                      "order by example_id, view", params={"files": files}).fetchall()
    expect = sorted((r["example_id"], r["view"], r["topk_logprobs"][0][0]) for r in want)
    assert [(a, b) for a, b, _ in top1] == [(a, b) for a, b, _ in expect]
    assert all(abs(x - y) < 1e-6 for (_, _, x), (_, _, y) in zip(top1, expect))


def test_polars(label_set):
    import polars as pl
    files = listed_shards(label_set["out"])
    df = pl.read_parquet(files)
    want = reference(label_set["out"])
    assert df.height == len(want)
    assert df["example_id"].to_list() == [r["example_id"] for r in want]
    assert df["topk_ids"][0].to_list() == want[0]["topk_ids"]
    per_view = dict(df.group_by("view").len().iter_rows())
    assert sum(per_view.values()) == len(want) and set(per_view) <= {"raw", "simplified"}
