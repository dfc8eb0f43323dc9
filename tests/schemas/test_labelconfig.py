"""The typed label config: its recorded form, cache key and shard metadata."""
import pytest

from schemas import cache_key
from schemas.labelconfig import LabelConfig


def test_recorded_form_round_trips_and_keys_the_cache():
    c = LabelConfig(mode="generate", top_k=8, hidden_layers=(0, 4), dtype="float32",
                    views=("raw", "simplified"), sampling={"temperature": 0.0})
    d = c.to_dict()
    assert d["hidden_layers"] == [0, 4] and d["views"] == ["raw", "simplified"]
    assert "hidden_proj" not in d and d["sampling"] == {"temperature": 0.0}
    assert LabelConfig.from_dict(d) == c
    assert c.cache_key("t", "tok") == cache_key("t", "tok", d)
    assert c.cache_key("t", "tok") != LabelConfig(top_k=8).cache_key("t", "tok")
    meta = c.shard_metadata("t", "tok")
    assert meta["k"] == 8 and meta["label_mode"] == "generate"
    assert meta["cache_key"] == c.cache_key("t", "tok")


def test_older_and_partial_records_read_with_defaults():
    c = LabelConfig.from_dict({"top_k": 4, "future_key": 1})
    assert c.top_k == 4 and c.encoding == "plain" and c.hidden_layers == ()
    with pytest.raises(ValueError, match="unknown label mode"):
        LabelConfig(mode="sample")
