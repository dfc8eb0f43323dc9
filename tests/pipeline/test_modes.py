"""Plain text mode, Parquet input with a column mapping, chat templates."""
import json
import shutil

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM

from pipeline import job
from pipeline.records import Example
from pipeline.tokenize import load_tokenizer, tokenize_example
from schemas import load_manifest


def test_text_mode_from_parquet_in_memory(teacher, teacher_config, teacher_dir, tmp_path):
    texts = ["Copy the word: abc = abc", "Reverse the letters: xyz = zyx", "", "sort dcba"]
    table = pa.table({"doc": ["d1", "d2", "d3", "d4"], "body": texts})
    with fsspec.open("memory://kd-modes/in.parquet", "wb") as f:
        pq.write_table(table, f)
    out = str(tmp_path / "labels")
    s = job.run(job.LabelJob(teacher_config, "memory://kd-modes/in.parquet", out, mode="text",
                             columns=(("id", "doc"), ("text", "body"))), [])
    assert (s["rows_in"], s["rows_labelled"], s["rows_rejected"]) == (4, 3, 1)
    assert s["rejects_by_reason"] == {"empty_field": 1}
    m = load_manifest(out)
    assert m.label_config["mode"] == "text"
    rows = [r for sh in m.shards for r in pq.read_table(f"{out}/{sh.path}").to_pylist()]
    hf = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    for r in rows:
        assert r["view"] == "raw" and r["label_start"] == 1
        assert len(r["topk_ids"]) == len(r["input_ids"]) - 1  # every position after the first
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([r["input_ids"]])).logits[0], -1)
        want = ref[torch.arange(len(r["input_ids"]) - 1), torch.tensor(r["input_ids"][1:])]
        np.testing.assert_allclose(r["target_logprob"], want.numpy(), atol=1e-4)


def test_chat_template_wraps_prompts(teacher_dir, tmp_path):
    d = tmp_path / "chat"
    shutil.copytree(teacher_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ("{{ bos_token }}{% for m in messages %}User: {{ m['content'] }}\n"
                            "{% endfor %}{% if add_generation_prompt %}Bot:{% endif %}")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(str(d))
    ex = Example("a", "cp abc", " abc", "cp abc", ("f", 1), ("g", 1))
    (t,) = tokenize_example(tok, ex, 256, chat=True)
    assert tok.decode(t.raw_ids[:t.raw_start]) == "<s>User: cp abc\nBot:"
    assert tok.decode(t.raw_ids[t.raw_start:]) == " abc</s>"
    plain = load_tokenizer(teacher_dir)
    try:
        tokenize_example(plain, ex, 256, chat=True)
        raise AssertionError("a tokenizer without a chat template must be refused")
    except ValueError as e:
        assert "chat template" in str(e)


def generate_run(cfg, raw, simp, out, **sampling):
    from pipeline.teacher import SamplingConfig
    s = job.run(job.LabelJob(cfg, raw, out, simp, mode="generate",
                             sampling=SamplingConfig(**sampling)), [])
    m = load_manifest(out)
    rows = [r for sh in m.shards for r in pq.read_table(f"{out}/{sh.path}").to_pylist()]
    return s, m, rows


def test_generate_mode_labels_the_teachers_own_responses(teacher, teacher_config, teacher_dir,
                                                         tmp_path):
    """Greedy generation equals transformers' greedy decoding; simplified rows carry the same
    response and labels; sampling is recorded, keyed and reproducible per example."""
    from conftest import DATA
    raw, simp = tmp_path / "raw.jsonl", tmp_path / "simp.jsonl"
    raw.write_bytes(b"".join((DATA / "train_raw.jsonl").read_bytes().splitlines(True)[:12]))
    simp.write_bytes(b"".join((DATA / "train_simplified.jsonl").read_bytes()
                              .splitlines(True)[:12]))
    s, m, rows = generate_run(teacher_config, str(raw), str(simp), str(tmp_path / "greedy"),
                              temperature=0.0, max_new_tokens=16)
    assert (s["rows_in"], s["rows_labelled"], s["rows_rejected"]) == (24, 24, 0)
    assert m.label_config["mode"] == "generate"
    assert m.label_config["sampling"]["temperature"] == 0.0
    by_view = {(r["example_id"], r["view"]): r for r in rows}
    hf = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    eos = hf.config.eos_token_id
    for (eid, view), r in by_view.items():
        if view != "raw":
            continue
        start, ids = r["label_start"], r["input_ids"]
        with torch.no_grad():
            greedy = hf.generate(torch.tensor([ids[:start]]), do_sample=False, max_new_tokens=16,
                                 eos_token_id=eos, pad_token_id=eos)[0, start:].tolist()
        assert ids[start:] == greedy
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0], -1)
        want = ref[torch.arange(start - 1, len(ids) - 1), torch.tensor(ids[start:])]
        np.testing.assert_allclose(r["target_logprob"], want.numpy(), atol=1e-4)
        sim = by_view[(eid, "simplified")]
        assert sim["input_ids"][sim["label_start"]:] == ids[start:]
        assert sim["topk_ids"] == r["topk_ids"] and sim["topk_logprobs"] == r["topk_logprobs"]
    # sampled: the same seed gives the same responses in a fresh run, another seed another key
    _, m1, rows1 = generate_run(teacher_config, str(raw), None, str(tmp_path / "s1"), seed=3)
    _, m2, rows2 = generate_run(teacher_config, str(raw), None, str(tmp_path / "s2"), seed=3)
    _, m3, _ = generate_run(teacher_config, str(raw), None, str(tmp_path / "s3"), seed=4)
    assert [r["input_ids"] for r in rows1] == [r["input_ids"] for r in rows2]
    assert m1.cache_key == m2.cache_key != m3.cache_key != m.cache_key


def test_compact_encoding_end_to_end(label_set, teacher, teacher_config, demo_inputs, tmp_path):
    """`kd label --encoding compact`: shards validate, are smaller, and decode to the plain
    label set's top-k (ids exact, distributions within a small KL)."""
    from schemas import compact, validate_table, verify_shard
    from student_train.stream import LabelSet
    out = str(tmp_path / "compact")
    s = job.run(job.LabelJob(teacher_config, demo_inputs["raw"], out, demo_inputs["simplified"],
                             shard_rows=20, encoding="compact"), [])
    plain_m, m = load_manifest(label_set["out"]), load_manifest(out)
    assert s["rows_labelled"] == label_set["summary"]["rows_labelled"]
    assert m.label_config["encoding"] == "compact" and m.cache_key != plain_m.cache_key
    fs = fsspec.filesystem("file")
    for sh in m.shards:
        verify_shard(fs, f"{out}/{sh.path}", sh.sha256)
        validate_table(pq.read_table(f"{out}/{sh.path}"), m.label_config["top_k"])
    assert sum(sh.bytes for sh in m.shards) < sum(sh.bytes for sh in plain_m.shards)

    def by_row(path):
        ls = LabelSet(path)
        got = {}
        for i in range(ls.num_shards):
            arr, _ = ls.shard(i)
            for r in range(len(arr.view)):
                sl = slice(arr.tok_off[r], arr.tok_off[r + 1])
                got[(arr.example_id[r], arr.view[r])] = (arr.topk_ids[sl], arr.topk_lp[sl])
        return got
    plain, comp = by_row(label_set["out"]), by_row(out)
    assert plain.keys() == comp.keys()
    for key, (ids, lp) in plain.items():
        c_ids, c_lp = comp[key]
        kl = compact.topk_kl(ids, lp, c_ids, c_lp)
        assert kl.max() < 2e-3, key
        top1_same = (ids[:, 0] == c_ids[:, 0]) | np.isclose(lp[:, 0], lp[:, 1], atol=1e-2)
        assert top1_same.all(), key
