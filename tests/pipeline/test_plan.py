"""kd plan: FLOPs from a config, token counts (exact and sampled), bytes, the command."""
import json
import math
import os

import pytest
from safetensors import safe_open

from pipeline import plan
from pipeline.teacher import model_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEACHER = os.path.join(ROOT, "demo", "teacher")
DATA = os.path.join(ROOT, "demo", "data")

LLAMA = {"model_type": "llama", "hidden_size": 512, "num_hidden_layers": 6,
         "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64,
         "intermediate_size": 1536, "vocab_size": 1000}


def test_dense_flops_are_twice_the_checkpoints_layer_weights():
    """The per-token linear FLOPs equal 2 x the projection and MLP weights actually stored."""
    cost = plan.teacher_cost(model_config(TEACHER))
    with safe_open(os.path.join(TEACHER, "model.safetensors"), "pt") as st:
        weights = sum(st.get_tensor(n).numel() for n in st.keys()
                      if n.startswith("model.layers.") and "norm" not in n)
        head = st.get_tensor("lm_head.weight").numel()
    assert cost.linear == 2 * weights and cost.head == 2 * head and not cost.moe
    cfg = model_config(TEACHER)
    assert cost.attn == 4 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * cfg["head_dim"]


def test_gqa_and_causal_attention():
    cost = plan.teacher_cost(LLAMA)
    per_layer = 512 * 8 * 64 * 2 + 512 * 2 * 64 * 2 + 3 * 512 * 1536
    assert cost.linear == 2 * 6 * per_layer
    length = 100  # causal: token i attends to i + 1 positions
    assert cost.sequence(length, 10) == pytest.approx(
        cost.linear * length + cost.attn * sum(i + 1 for i in range(length)) + cost.head * 10)


def test_moe_counts_routed_shared_and_dense_layers():
    moe = {**LLAMA, "model_type": "qwen2_moe", "num_experts": 16, "num_experts_per_tok": 2,
           "moe_intermediate_size": 256, "shared_expert_intermediate_size": 512,
           "first_k_dense_replace": 1}
    cost = plan.teacher_cost(moe)
    attn = 512 * 8 * 64 * 2 + 512 * 2 * 64 * 2
    dense = attn + 3 * 512 * 1536
    sparse_active = attn + 2 * 3 * 512 * 256 + 3 * 512 * 512 + 512 * 16
    sparse_total = attn + 16 * 3 * 512 * 256 + 3 * 512 * 512 + 512 * 16
    assert cost.moe and cost.linear == 2 * (dense + 5 * sparse_active)
    assert cost.total_params == dense + 5 * sparse_total + 2 * 512 * 1000
    mixtral = {**LLAMA, "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}
    m = plan.teacher_cost(mixtral)  # experts as wide as the dense MLP: 2 of them + the router
    assert m.linear == 2 * 6 * (attn + 2 * 3 * 512 * 1536 + 512 * 8)


def test_exact_count_and_sampled_estimate_with_its_error():
    cost = plan.teacher_cost(model_config(TEACHER))
    raw, simp = f"{DATA}/heldout_raw.jsonl", f"{DATA}/heldout_simplified.jsonl"
    exact = plan.count_tokens(TEACHER, raw, simp, cost)
    from pipeline.tokenize import load_tokenizer, prompt_ids, response_ids
    tok = load_tokenizer(TEACHER)
    rows = [json.loads(line) for line in open(raw)]
    want = sum(len(prompt_ids(tok, r["prompt"])) + len(response_ids(tok, r["response"]))
               for r in rows)
    assert exact.exact and exact.teacher_tokens == want and exact.teacher_error == 0
    assert exact.labelled == 2 * sum(len(response_ids(tok, r["response"])) for r in rows)
    est = plan.count_tokens(TEACHER, raw, simp, cost, sample=60, seed=1)
    assert not est.exact and 30 < est.sampled < 100 and est.teacher_error > 0
    assert abs(est.teacher_tokens - want) <= est.teacher_error
    assert abs(est.flops - exact.flops) <= est.flops_error


def test_label_bytes_interpolate_the_measured_table():
    assert plan.label_bytes_per_position("compact", 64) == 113.6
    mid = plan.label_bytes_per_position("plain", 96)
    assert 365.1 < mid < 718.8
    assert plan.label_bytes_per_position("plain", 10) == pytest.approx(122.1 / 2)


def test_kd_plan_command(tmp_path, capsys):
    from kd_cli import main
    out = tmp_path / "plan.json"
    assert main(["plan", "--teacher", TEACHER, "--input", f"{DATA}/heldout_raw.jsonl",
                 "--top-k", "64", "--encoding", "compact", "--gpu", "a100", "--gpus", "4",
                 "--mfu", "0.4", "--shard-rows", "100", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GPU-hours" in text and "4 a100" in text and "estimates" in text
    p = json.loads(out.read_text())
    c = p["compute"]
    assert c["device_hours"] == pytest.approx(c["flops"] / (312e12 * 0.4) / 3600)
    assert c["wall_s"] == pytest.approx(plan.GPU_START_S + c["device_hours"] * 3600 / 4)
    assert p["output"]["shards"] == math.ceil(300 / 100) and p["input"]["views"] == 1
