"""Build or load the student; check it can read the label set's token ids."""
import json
import os

import fsspec
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from schemas import tokenizer_fingerprint


def load_student(spec: str, label_tokenizer_dir: str, seed: int = 0):
    """``spec`` is a config JSON file (fresh weights, the labels' tokenizer) or a model directory.

    Returns (model, tokenizer). Refuses a student whose tokenizer differs from the labels' or whose
    vocabulary does not cover the teacher's ids.
    """
    label_tok = AutoTokenizer.from_pretrained(label_tokenizer_dir)
    if os.path.isfile(spec):
        with open(spec) as f:
            cfg_dict = json.load(f)
        config = AutoConfig.for_model(**cfg_dict)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tok = label_tok
    else:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(spec)
        if tokenizer_fingerprint(spec) != tokenizer_fingerprint(label_tokenizer_dir):
            raise ValueError(f"student tokenizer in {spec} differs from the labels' tokenizer "
                             f"({label_tokenizer_dir}): teacher ids would mean other tokens")
    vocab = model.get_output_embeddings().weight.shape[0]
    if vocab < len(label_tok):
        raise ValueError(f"student vocabulary ({vocab}) is smaller than the teacher tokenizer's "
                         f"({len(label_tok)}): it cannot score every teacher id")
    return model, tok


def response_logits(model, input_ids, attention_mask, pos_b, pos_t) -> torch.Tensor:
    """Logits only at the labelled positions: run the backbone, gather, then the LM head.

    Avoids a (B, L, V) tensor: only (N, V) for the N labelled positions is built.
    """
    base = getattr(model, model.base_model_prefix)
    hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model.get_output_embeddings()(hidden[pos_b, pos_t])


def save_tokenizer_files(src_dir: str, dst_dir: str) -> None:
    fs, root = fsspec.core.url_to_fs(src_dir)
    os.makedirs(dst_dir, exist_ok=True)
    for path in fs.ls(root, detail=False):
        fs.get(path, os.path.join(dst_dir, os.path.basename(path)))
