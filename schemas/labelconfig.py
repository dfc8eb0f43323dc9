"""The label config: how a label set was made, beside the teacher and tokenizer fingerprints.

Built once by the labelling job; the manifest's and commit records' ``label_config``, the cache
key and the shards' file metadata all derive from it, and the trainer reads it back typed
(``LabelConfig.from_dict``). Its dict form is the file format: keys and values as recorded.
"""
import dataclasses

from schemas.fingerprint import cache_key
from schemas.rows import schema_version

MODES = ("score", "text", "generate")


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    mode: str = "score"          # score: given responses; text: plain texts; generate: the
    #                              teacher writes the responses, then scores them
    top_k: int = 20
    chat_template: bool = False
    encoding: str = "plain"      # shard encoding: plain (schema v1) or compact (schemas.compact)
    too_long: str = "reject"     # over-long examples: reject, or truncate the response
    hidden_layers: tuple[int, ...] = ()  # transformers hidden_states indices with summaries
    hidden_pooling: str = "mean_response"
    dtype: str | None = None
    teacher_num_layers: int | None = None
    hidden_size: int | None = None
    add_bos: bool = True
    add_eos: bool = True
    views: tuple[str, ...] = ("raw",)
    hidden_proj: dict | None = None  # {"dim", "seed", "matrix"}: per-token projections
    sampling: dict | None = None     # generate mode: the sampling parameters
    targets: str = "topk"            # soft labels: topk | sampled | both (schema v2)
    sampled: dict | None = None      # sampled targets: {"n", "proposal_temperature", "seed",
    #                                  "draws"}; top_k is 0 with targets = sampled

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown label mode {self.mode!r}: use one of {MODES}")
        schema_version(self.targets)  # a known targets value
        if (self.targets != "topk") != (self.sampled is not None):
            raise ValueError("label config: 'sampled' parameters go with targets sampled|both")

    @property
    def schema_version(self) -> int:
        return schema_version(self.targets)

    @property
    def samples(self) -> int:
        """Draws per position (0 without sampled targets)."""
        return int(self.sampled["n"]) if self.sampled else 0

    @property
    def proposal_temperature(self) -> float:
        return float(self.sampled["proposal_temperature"]) if self.sampled else 1.0

    def to_dict(self) -> dict:
        """The recorded form (manifest, commit records, cache key): optional parts only when set
        (top-k label sets record no ``targets``, so their cache keys are those of before)."""
        d = dataclasses.asdict(self)
        d["hidden_layers"], d["views"] = list(self.hidden_layers), list(self.views)
        if self.targets == "topk":
            del d["targets"]
        return {k: v for k, v in d.items()
                if v is not None or k not in ("hidden_proj", "sampling", "sampled")}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelConfig":
        """A recorded label config; keys it does not know are ignored, missing ones default."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for name in ("hidden_layers", "views"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
            elif name in values:
                del values[name]
        return cls(**values)

    def cache_key(self, teacher_fp: str, tokenizer_fp: str) -> str:
        return cache_key(teacher_fp, tokenizer_fp, self.to_dict())

    def shard_metadata(self, teacher_fp: str, tokenizer_fp: str) -> dict:
        """The ``kd.*`` file metadata of every shard."""
        return {"teacher_fingerprint": teacher_fp, "tokenizer_fingerprint": tokenizer_fp,
                "k": self.top_k, "label_mode": self.mode, "dtype": self.dtype,
                "cache_key": self.cache_key(teacher_fp, tokenizer_fp),
                **({"targets": self.targets, "sampled": self.sampled}
                   if self.targets != "topk" else {})}
