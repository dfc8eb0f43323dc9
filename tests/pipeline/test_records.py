"""Bad input becomes a reject with a reason; good input becomes a Record/Example."""
import json

import pytest

from pipeline import records


def parse(obj_or_bytes, view="raw"):
    data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode()
    return records.parse_record(view, "f.jsonl", 3, data)


def test_good_raw_and_simplified():
    r = parse({"id": "a", "prompt": "p", "response": "r"})
    assert isinstance(r, records.Record) and (r.id, r.prompt, r.response) == ("a", "p", "r")
    s = parse({"id": "a", "prompt": "q"}, view="simplified")
    assert isinstance(s, records.Record) and s.response is None


@pytest.mark.parametrize("data,reason", [
    (b"{not json", "malformed_json"),
    (b"[1, 2]", "not_an_object"),
    (b'"text"', "not_an_object"),
    (b"\xff\xfe{}", "invalid_utf8"),
    ({"id": "a", "prompt": "p"}, "missing_field"),
    ({"id": "a", "prompt": "p", "response": "r", "x": 1}, "extra_field"),
    ({"id": 3, "prompt": "p", "response": "r"}, "wrong_type"),
    ({"id": "a", "prompt": ["p"], "response": "r"}, "wrong_type"),
    ({"id": "a", "prompt": "  ", "response": "r"}, "empty_field"),
    ({"id": "a", "prompt": "p", "response": ""}, "empty_field"),
])
def test_bad_records_are_rejected_with_reason(data, reason):
    r = parse(data)
    assert isinstance(r, dict)
    assert r["reason"] == reason and r["source"] == "f.jsonl" and r["line"] == 3
    assert r["detail"]


def test_pair_duplicates_and_orphans():
    raw1 = records.Record("raw", "r.jsonl", 1, "a", "p", "x")
    raw2 = records.Record("raw", "r.jsonl", 9, "a", "p2", "y")
    simp = records.Record("simplified", "s.jsonl", 4, "a", "q")
    out = records.pair("a", [raw2, raw1], [simp])
    exs = [o for o in out if isinstance(o, records.Example)]
    rej = [o for o in out if isinstance(o, dict)]
    assert len(exs) == 1 and exs[0].prompt == "p" and exs[0].simplified_prompt == "q"
    assert [(r["reason"], r["line"]) for r in rej] == [("duplicate_id", 9)]
    orphan = records.pair("b", [], [records.Record("simplified", "s.jsonl", 2, "b", "q")])
    assert [o["reason"] for o in orphan] == ["no_raw_partner"]


def test_read_records_skips_blank_lines_and_counts_from_one(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a":1}\n\n{"b":2}\n')
    got = list(records.read_records(str(p), "raw"))
    assert [(g[2], g[3].strip()) for g in got] == [(1, b'{"a":1}'), (3, b'{"b":2}')]


def test_column_mapping_and_text_records():
    r = records.parse_record("raw", "f", 1, b'{"uid": "a", "q": "p", "a": "r"}',
                             {"id": "uid", "prompt": "q", "response": "a"})
    assert isinstance(r, records.Record) and (r.id, r.prompt, r.response) == ("a", "p", "r")
    t = records.parse_record("text", "f", 1, {"id": "t1", "text": "hello"})
    assert isinstance(t, records.Record) and (t.prompt, t.response) == ("", "hello")
    bad = records.parse_record("text", "f", 2, {"id": "t2", "text": None})
    assert bad["reason"] == "wrong_type"


def test_parquet_input_reads_only_mapped_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"uid": ["a", "b"], "question": ["p1", "p2"],
                             "answer": ["r1", None], "other": [1, 2]}), path)
    cols = {"id": "uid", "prompt": "question", "response": "answer"}
    got = [records.parse_record(*rec, columns=cols)
           for rec in records.read_records(path, "raw", cols)]
    assert isinstance(got[0], records.Record) and got[0].response == "r1"
    assert got[1]["reason"] == "wrong_type" and got[1]["line"] == 2


def test_prompt_records_for_generate_mode(teacher_dir):
    """Generate mode reads {id, prompt}: a response field is ignored, others rejected; a prompt
    that leaves no room for one new token is rejected as too long (both views)."""
    from pipeline.tokenize import load_tokenizer, tokenize_example
    r = parse({"id": "a", "prompt": "Copy the word: abc =", "response": " ignored"}, "prompt")
    assert isinstance(r, records.Record) and r.response is None
    assert parse({"id": "a", "prompt": "p", "x": 1}, "prompt")["reason"] == "extra_field"
    tok = load_tokenizer(teacher_dir)
    ex = records.Example("a", "Copy the word: abc =", None, "cp abc =", ("f", 1), ("g", 1),
                         "generate")
    (t,) = tokenize_example(tok, ex, 64)
    assert t.raw_ids[t.raw_start:] == [] and t.simplified_ids[t.simplified_start:] == []
    n_prompt = len(t.raw_ids)
    assert len(tokenize_example(tok, ex, n_prompt + 1)) == 1  # room for exactly one token
    out = tokenize_example(tok, ex, n_prompt)
    assert [o["reason"] for o in out] == ["too_long", "too_long"]


def test_hidden_layer_flag():
    from pipeline.cli import parse_layers
    assert parse_layers("final", 4) == (4,)
    assert parse_layers("none", 4) == ()
    assert parse_layers("2,final,0,2", 4) == (0, 2, 4)
    for bad in ("5", "-1", "mid"):
        with pytest.raises(ValueError, match="not 'final' or a layer"):
            parse_layers(bad, 4)
