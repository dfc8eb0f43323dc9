"""Stored teacher labels equal an independent transformers computation on the same tokens."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from schemas import hidden_column, load_manifest, proj_column, projection_matrix

ATOL = 1e-4  # fp32 teacher: engine kernels vs transformers' eager attention


@pytest.fixture(scope="module")
def hf_teacher(teacher_dir):
    return AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()


def stored_rows(label_set, view="raw"):
    m = load_manifest(label_set["out"])
    for s in m.shards:
        for row in pq.read_table(f"{label_set['out']}/{s.path}").to_pylist():
            if row["view"] == view:
                yield row


@torch.no_grad()
def test_stored_topk_and_hidden_match_transformers(label_set, hf_teacher):
    lc = load_manifest(label_set["out"]).label_config
    layers = lc["hidden_layers"]
    assert len(layers) == 3 and layers[-1] == hf_teacher.config.num_hidden_layers
    proj = projection_matrix(lc["hidden_size"], lc["hidden_proj"]["dim"], lc["hidden_proj"]["seed"])
    checked = 0
    for row in stored_rows(label_set):
        ids = torch.tensor([row["input_ids"]])
        out = hf_teacher(ids, output_hidden_states=True)
        ref = torch.log_softmax(out.logits[0].float(), -1).numpy()
        start, n = row["label_start"], len(row["input_ids"])
        tk_ids = np.array(row["topk_ids"])
        tk_lp = np.array(row["topk_logprobs"])
        k = tk_ids.shape[1]
        for j, p in enumerate(range(start, n)):
            dist = ref[p - 1]  # distribution of token p given tokens < p
            expected_vals = np.sort(dist)[::-1][:k]
            np.testing.assert_allclose(tk_lp[j], expected_vals, atol=ATOL)
            # ids: each stored id really has the stored log-prob (ties may order either way)
            np.testing.assert_allclose(dist[tk_ids[j]], tk_lp[j], atol=ATOL)
            assert len(set(tk_ids[j].tolist())) == k
            np.testing.assert_allclose(row["target_logprob"][j], dist[row["input_ids"][p]],
                                       atol=ATOL)
        for layer in layers:  # embeddings, a middle layer (pre-norm residual stream), final
            states = out.hidden_states[layer][0, start:n].numpy()
            np.testing.assert_allclose(row[hidden_column(layer)], states.mean(0), atol=ATOL)
            np.testing.assert_allclose(np.array(row[proj_column(layer)]), states @ proj,
                                       atol=ATOL * 10, rtol=1e-4)
        checked += 1
    assert checked >= 40


def test_teacher_is_confident_on_the_demo_task(label_set):
    """The demo teacher should put most of its mass on the true response tokens."""
    lps = np.concatenate([r["target_logprob"] for r in stored_rows(label_set)])
    assert np.exp(lps).mean() > 0.6
