"""Build or load the student; check it can read the label set's token ids."""
import json
import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from schemas import tokenizer_fingerprint
from schemas.rows import predicted


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
        ours, theirs = tokenizer_fingerprint(spec), tokenizer_fingerprint(label_tokenizer_dir)
        if ours != theirs:
            raise ValueError(
                f"student tokenizer in {spec} (fingerprint {ours}, {len(tok)} tokens) differs "
                f"from the labels' tokenizer in {label_tokenizer_dir} (fingerprint {theirs}, "
                f"{len(label_tok)} tokens): teacher ids would mean other tokens. Train a student "
                "that shares the teacher's tokenizer (a config JSON as --student gets the "
                "labels' tokenizer), or label with a teacher of the student's tokenizer")
    vocab = model.get_output_embeddings().weight.shape[0]
    if vocab < len(label_tok):
        raise ValueError(f"student vocabulary ({vocab}) is smaller than the teacher tokenizer's "
                         f"({len(label_tok)}): it cannot score every teacher id; give the "
                         f"student vocab_size >= {len(label_tok)}")
    return model, tok


def uniform_layer_map(student_layers: int, teacher_layers: int, available: list[int]) -> dict:
    """TinyBERT-style map: student layer i -> teacher layer i * (L_t / L_s), kept where stored."""
    out = {}
    for i in range(1, student_layers + 1):
        t = round(i * teacher_layers / student_layers)
        if t in available:
            out[i] = t
    return out


class Distiller(torch.nn.Module):
    """The student plus learned projections from student layers to the teacher's summaries.

    ``forward(batch)`` returns the student's final hidden states at the N labelled positions
    (N, d) and, per mapped teacher layer, the projected student summary (mean over the response
    span), or with ``per_token`` the projected student state at every response token (N, r),
    matched to the teacher's stored per-token projections. ``head(h)`` applies the LM head;
    callers apply it chunk by chunk, so a full-vocabulary tensor exists for one chunk of positions
    at a time, never for (B, L, V).
    """

    def __init__(self, student, teacher_hidden_layers: list[int], teacher_dim: int | None,
                 layer_map: dict | None = None, teacher_layers: int | None = None,
                 per_token: bool = False):
        super().__init__()
        self.student = student
        self.per_token = per_token
        n_student = student.config.num_hidden_layers
        if teacher_hidden_layers:
            layer_map = ({int(k): int(v) for k, v in layer_map.items()} if layer_map else
                         uniform_layer_map(n_student, teacher_layers or max(teacher_hidden_layers),
                                           teacher_hidden_layers))
            missing = sorted(set(layer_map.values()) - set(teacher_hidden_layers))
            if missing or not layer_map:
                raise ValueError(f"layer map {layer_map} needs teacher layers the label set does "
                                 f"not store (stored: {teacher_hidden_layers})")
        self.layer_map = layer_map if teacher_hidden_layers else {}
        d_s = student.config.hidden_size
        self.proj = torch.nn.ModuleDict({str(t): torch.nn.Linear(d_s, teacher_dim, bias=False)
                                         for t in self.layer_map.values()})

    def forward(self, batch):
        base = getattr(self.student, self.student.base_model_prefix)
        out = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   output_hidden_states=bool(self.layer_map))
        h = out.last_hidden_state[batch.pos_b, batch.pos_t]
        summaries = {}
        if self.layer_map:
            # response span: the labelled tokens themselves
            count = torch.bincount(batch.pos_b, minlength=batch.input_ids.shape[0]).clamp(min=1)
            for s_layer, t_layer in self.layer_map.items():
                hs = out.hidden_states[s_layer][batch.pos_b, predicted(batch.pos_t)]
                if self.per_token:
                    summaries[t_layer] = self.proj[str(t_layer)](hs)
                    continue
                pooled = torch.zeros(batch.input_ids.shape[0], hs.shape[-1], dtype=hs.dtype,
                                     device=hs.device).index_add_(0, batch.pos_b, hs)
                summaries[t_layer] = self.proj[str(t_layer)](pooled / count[:, None].to(hs.dtype))
        return h, summaries

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.student.get_output_embeddings()(h)
