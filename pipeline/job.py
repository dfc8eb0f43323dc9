"""The labelling job as a short composition of named Beam transforms.

    ReadRecords (per input: read, count, parse) -> PairViews (join by id) -> Tokenise
        -> LabelChunks (chunk, label or reuse, write and commit each shard; generate mode: the
                        teacher writes the responses there, then scores them)
    rejects of every step, shard infos, row counts -> CommitLabelSet (rejects file, then the
                                                       manifest: the commit)

Per-element logic lives in records.py, tokenize.py and teacher.py and in the plain functions
below; the label set's writer and commit protocol in schemas/labelset.py.
"""
import collections
import contextlib
import dataclasses
import logging
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import records, sampler
from pipeline.teacher import (SamplingConfig, TeacherConfig, checkpoint_dtype, context_length,
                              model_config, write_responses)
from pipeline.tokenize import Tokenized, load_tokenizer, tokenize_example
from schemas import (Manifest, ShardInfo, load_manifest, teacher_fingerprint,
                     tokenizer_fingerprint, write_manifest)
from schemas.rows import PROJECTION
from schemas import labelset
from schemas.files import TOKENIZER_DIR, check_store, copy_tokenizer
from schemas.labelconfig import LabelConfig
from schemas.labelset import committed_shards, shard_present
from schemas.manifest import clear_stale_commits, read_commit, strip_credentials, write_commit

log = logging.getLogger("kd.label")


@dataclasses.dataclass(frozen=True)
class LabelJob:
    teacher: TeacherConfig
    input: str
    out: str
    simplified: str | None = None
    shard_rows: int = 512
    truncate: bool = False  # over-long examples: truncate the response instead of rejecting
    mode: str = "score"     # score: prompt + response records; text: plain text records;
    #                         generate: prompt records, the teacher writes the responses
    columns: tuple = ()     # (our field, input field) pairs: a column mapping
    chat_template: bool = False  # wrap prompts in the tokenizer's chat template
    sampling: SamplingConfig = SamplingConfig()  # generate mode only
    encoding: str = "plain"  # shard encoding: plain (schema v1) or compact (schemas.compact)
    read_splits: int = 1    # inputs read as this many interleaved splits of whole chunks
    overlap_writes: bool = True  # write chunk n's shard while the engine labels chunk n + 1
    overwrite: bool = False  # --out may hold a label set of another cache key: replace it


def read_split(split: tuple[int, int, int], path: str, kind: str, columns: dict):
    """(split, splits, block) -> that split's records of the input."""
    return records.read_records(path, kind, columns, *split)


def one_row(_record):
    return "rows_in", 1


def is_reject(element) -> bool:
    return isinstance(element, dict)


def is_result(element) -> bool:
    return not is_reject(element)


def key_by_id(record):
    """A Record keyed by its example id."""
    return record.id, record


def pair_group(group, mode: str) -> list:
    """The CoGroupByKey result (id, {view: records}) of one id -> its Example of ``mode`` and
    rejects (``records.pair``)."""
    example_id, views = group
    return records.pair(example_id, list(views["raw"]), list(views["simplified"]), mode)


def tagged(value, kind: str):
    return kind, value


def under_one_key(part):
    return None, part


class SplitRejects(beam.PTransform):
    """(ok, rejects) of a collection that mixes results and reject dicts, as two filters rather
    than a multi-output ParDo: Beam's Dask runner hands every consumer of a multi-output ParDo
    all of its outputs (docs/RUNNERS.md)."""

    def expand(self, pcoll):
        return (pcoll | "Ok" >> beam.Filter(is_result),
                pcoll | "Rejected" >> beam.Filter(is_reject))


class ReadRecords(beam.PTransform):
    """One input file -> (records, rejects, row counts): read as ``splits`` interleaved splits
    of whole chunks, reshuffled, counted (rows_in), parsed and checked."""

    def __init__(self, path: str, kind: str, columns: dict, splits: int, block: int):
        super().__init__()
        self.path, self.kind, self.columns = path, kind, columns
        self.splits, self.block = splits, block

    def expand(self, pbegin):
        lines = (pbegin
                 | "Splits" >> beam.Create([(i, self.splits, self.block)
                                            for i in range(self.splits)])
                 | "Records" >> beam.FlatMap(read_split, self.path, self.kind, self.columns)
                 | "Reshuffle" >> beam.Reshuffle())
        counts = lines | "Count" >> beam.Map(one_row)
        ok, rejected = (lines
                        | "Parse" >> beam.MapTuple(records.parse_record, columns=self.columns)
                        | "Split" >> SplitRejects())
        return ok, rejected, counts


class PairViews(beam.PTransform):
    """{view: records} -> (examples, rejects): the raw and simplified records joined by id into
    examples of the job's mode."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def expand(self, views):
        keyed = {view: pcoll | f"KeyById{view}" >> beam.Map(key_by_id)
                 for view, pcoll in views.items()}
        if "simplified" not in keyed:
            keyed["simplified"] = keyed["raw"].pipeline | "NoSimplified" >> beam.Create([])
        return (keyed
                | "JoinById" >> beam.CoGroupByKey()
                | "Pair" >> beam.FlatMap(pair_group, self.mode)
                | "Split" >> SplitRejects())


class Tokenise(beam.PTransform):
    """examples -> (tokenised examples, rejects)."""

    def __init__(self, cfg: TeacherConfig, max_len: int, truncate: bool, chat: bool):
        super().__init__()
        self.fn = TokenizeFn(cfg.model_dir, max_len, cfg.trust_remote_code, truncate, chat)

    def expand(self, examples):
        return examples | "Tokenize" >> beam.ParDo(self.fn) | "Split" >> SplitRejects()


class LabelChunks(beam.PTransform):
    """tokenised examples -> shard infos: grouped into chunks of input lines, each labelled and
    committed as one shard, or reused."""

    def __init__(self, shard_rows: int, fn: "LabelChunkFn"):
        super().__init__()
        self.shard_rows, self.fn = shard_rows, fn

    def expand(self, tokenised):
        return (tokenised
                | "Chunk" >> beam.Map(chunk_key, self.shard_rows)
                | "GroupChunks" >> beam.GroupByKey()
                | "LabelOrReuse" >> beam.ParDo(self.fn))


class CommitLabelSet(beam.PTransform):
    """(rejects, shard infos, row counts) -> the counts, after ``commit`` wrote the rejects
    file and then the manifest: every part is tagged and gathered under one key, so the commit
    is one step that runs last, also on empty input."""

    def __init__(self, out: str, header: dict):
        super().__init__()
        self.out, self.header = out, header

    def expand(self, parts):
        rejects, infos, counts = parts
        p = infos.pipeline
        tagged_parts = [rejects | "TagRejects" >> beam.Map(tagged, "reject"),
                        infos | "TagShards" >> beam.Map(tagged, "shard"),
                        counts | "RowsIn" >> beam.CombinePerKey(sum),
                        p | "NoRows" >> beam.Create([("rows_in", 0)])]
        return (tagged_parts
                | "AllParts" >> beam.Flatten()
                | "OneKey" >> beam.Map(under_one_key)
                | "Gather" >> beam.GroupByKey()
                | "WriteManifest" >> beam.Map(commit, self.out, self.header))


class TokenizeFn(beam.DoFn):
    def __init__(self, model_dir: str, max_len: int, trust_remote_code: bool, truncate: bool,
                 chat: bool):
        self.model_dir, self.max_len, self.trust = model_dir, max_len, trust_remote_code
        self.truncate, self.chat = truncate, chat

    def setup(self):
        self.tok = load_tokenizer(self.model_dir, self.trust)

    def process(self, ex):
        yield from tokenize_example(self.tok, ex, self.max_len, self.truncate, self.chat)


def chunk_key(item: Tokenized, shard_rows: int) -> tuple[str, Tokenized]:
    """Chunk = a fixed range of raw input lines: appending records leaves old chunks unchanged."""
    source, line = item.raw_src
    return f"{source}:{(line - 1) // shard_rows}", item


class LabelChunkFn(beam.DoFn):
    """Label one chunk with the process-wide teacher and commit it as one shard; in generate mode
    the teacher first writes the chunk's responses.

    With ``overlap`` the shard of chunk n is encoded, written and committed by a writer thread
    while the engine labels chunk n + 1: at most one write in flight (bounded memory: two chunks'
    labels), its info emitted on the next chunk or at the end of the bundle. The commit protocol
    is unchanged (the same write_shard then write_commit, in that order, in the writer); a failed
    write fails the bundle."""

    def __init__(self, cfg: TeacherConfig, out: str, config: LabelConfig, metadata: dict,
                 existing: dict, sampling: SamplingConfig = SamplingConfig(), max_len: int = 0,
                 overlap: bool = True):
        self.cfg, self.out, self.config, self.metadata = cfg, out, config, metadata
        self.existing = existing  # chunk -> ShardInfo dict, committed earlier with this key
        self.sampling, self.max_len, self.overlap = sampling, max_len, overlap

    def setup(self):
        self.teacher = None  # started on the first chunk that needs labelling
        self.writer = None   # one writer thread, started with the first overlapped write

    def start_bundle(self):
        self.pending = None  # the write in flight: a Future of the shard info dict

    def process(self, keyed):
        _, items = keyed
        items = sorted(items, key=lambda t: t.id)
        chunk = labelset.chunk_name(items)
        if chunk in self.existing:  # same content, same teacher and config: reuse
            yield {**self.existing[chunk], "reused": True}
            return
        record = read_commit(self.out, chunk)  # committed meanwhile by a concurrent run
        if (record is not None and record["cache_key"] == self.metadata["cache_key"]
                and shard_present(self.out, record["shard"])):
            yield {**record["shard"], "reused": True}
            return
        if self.teacher is None:
            from pipeline.teacher import get_teacher
            self.teacher = get_teacher(self.cfg)
        t0 = time.perf_counter()
        if self.config.mode == "generate":
            items = write_responses(self.cfg, items, self.sampling, self.max_len)
        labels = self.teacher.label([t.raw_ids for t in items], [t.raw_start for t in items],
                                    [t.id for t in items])
        yield from self.drain()  # the previous chunk's write ran beside this forward
        if not self.overlap:
            yield self.write(chunk, items, labels, t0)
            return
        if self.writer is None:
            from concurrent.futures import ThreadPoolExecutor
            self.writer = ThreadPoolExecutor(1, thread_name_prefix="kd-shard-writer")
        self.pending = self.writer.submit(self.write, chunk, items, labels, t0)

    def drain(self):
        if self.pending is not None:
            done, self.pending = self.pending, None
            yield done.result()

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows
        for info in self.drain():
            yield GlobalWindows.windowed_value(info)

    def teardown(self):
        if self.writer is not None:
            self.writer.shutdown(wait=True)

    def write(self, chunk: str, items: list[Tokenized], labels: list, t0: float) -> dict:
        """Encode and write the shard, then its commit record (the commit protocol)."""
        info = labelset.write_shard(self.out, list(zip(items, labels)), self.cfg.top_k,
                                  self.cfg.hidden_layers, self.metadata, chunk,
                                  self.config.encoding)
        write_commit(self.out, info, self.metadata["cache_key"], self.config.to_dict(), chunk)
        dt = time.perf_counter() - t0
        log.debug("committed %s: %d rows, %d labelled tokens, %.0f tokens/s", info.path,
                 info.rows, info.tokens, sum(len(t.raw_ids) for t in items) / dt)
        return {**dataclasses.asdict(info), "reused": False}


def commit(gathered, out: str, header: dict) -> dict:
    """The last step, on the one gathered (None, [(kind, value) parts]) group: write the rejects
    file, then the manifest listing every shard (all shards are durable by then)."""
    parts = list(gathered[1])
    infos = [v for kind, v in parts if kind == "shard"]
    rejects_info = labelset.write_rejects(out, [v for kind, v in parts if kind == "reject"])
    rows_in = sum(v for kind, v in parts if kind == "rows_in")
    return commit_manifest(infos, rejects_info, rows_in, out, header)


def commit_manifest(shard_infos, rejects_info, rows_in, out, header):
    """The last step: write the manifest listing every shard, after all shards are durable."""
    shard_list = sorted(shard_infos, key=lambda s: s["path"])
    reused = [s for s in shard_list if s.pop("reused")]
    labelled = sum(s["rows"] for s in shard_list)
    counts = {"rows_in": rows_in, "rows_labelled": labelled,
              "rows_rejected": rejects_info["rows"],
              "tokens_labelled": sum(s["tokens"] for s in shard_list),
              "shards_reused": len(reused), "rows_reused": sum(s["rows"] for s in reused)}
    if counts["rows_in"] != labelled + rejects_info["rows"]:
        raise RuntimeError(f"row accounting broken: {counts}")  # a bug, never bad input
    manifest = Manifest(shards=[ShardInfo(**s) for s in shard_list], rejects=rejects_info,
                        counts=counts, **header)
    write_manifest(out, manifest)
    return counts


def build(p: beam.Pipeline, job: LabelJob, config: LabelConfig, header: dict, metadata: dict,
          existing: dict) -> None:
    """The job's graph. Only Create, ParDo, Flatten and GroupByKey, no side inputs and no
    multi-output ParDo, so that every Beam runner here can run it, Dask's included."""
    cfg = job.teacher
    max_len = cfg.max_model_len or context_length(model_config(cfg.model_dir))
    columns = dict(job.columns)
    sources = {"Raw": ("raw", job.input, records.RAW_KIND[job.mode])}
    if job.simplified:
        sources["Simplified"] = ("simplified", job.simplified, "simplified")
    read = {view: p | f"Read{name}" >> ReadRecords(path, kind, columns, job.read_splits,
                                                     job.shard_rows)
            for name, (view, path, kind) in sources.items()}
    examples, pair_rejects = {view: ok for view, (ok, _, _) in read.items()} | PairViews(job.mode)
    tokenised, token_rejects = examples | Tokenise(cfg, max_len, job.truncate, job.chat_template)
    infos = tokenised | LabelChunks(job.shard_rows, LabelChunkFn(
        cfg, job.out, config, metadata, existing, job.sampling, max_len, job.overlap_writes))
    rejects = ([rejected for _, rejected, _ in read.values()] + [pair_rejects, token_rejects]
               | "AllRejects" >> beam.Flatten())
    counts = [counted for _, _, counted in read.values()] | "AllCounts" >> beam.Flatten()
    (rejects, infos, counts) | CommitLabelSet(job.out, header)


def label_config(job: LabelJob, mcfg: dict) -> LabelConfig:
    """The label config of a job on a teacher whose config.json is ``mcfg``: built once."""
    cfg = job.teacher
    return LabelConfig(
        mode=job.mode, top_k=cfg.top_k, chat_template=job.chat_template, encoding=job.encoding,
        too_long="truncate" if job.truncate else "reject", hidden_layers=tuple(cfg.hidden_layers),
        dtype=cfg.dtype or checkpoint_dtype(mcfg),
        teacher_num_layers=int(mcfg["num_hidden_layers"]), hidden_size=int(mcfg["hidden_size"]),
        views=("raw", "simplified") if job.simplified else ("raw",),
        hidden_proj=({"dim": cfg.proj_dim, "seed": cfg.proj_seed, "matrix": PROJECTION}
                     if cfg.proj_dim else None),
        sampling=dataclasses.asdict(job.sampling) if job.mode == "generate" else None,
        targets=cfg.targets,
        sampled=({"n": cfg.samples, "proposal_temperature": cfg.proposal_temperature,
                  "seed": cfg.sample_seed, "draws": sampler.SCHEME}
                 if cfg.targets != "topk" else None))


def run(job: LabelJob, beam_args: list[str], watch=None) -> dict:
    """Run the job; return the summary (counts, shards, rejects by reason). ``watch(job, key)``,
    if given, returns a context manager held while the pipeline runs (the CLI's progress bar)."""
    cfg = job.teacher
    mcfg = model_config(cfg.model_dir)
    if job.mode == "text" and job.simplified:
        raise ValueError("plain text mode labels single texts: no simplified input")
    config = label_config(job, mcfg)
    check_store(job.input, job.simplified, job.out)
    records.check_columns(job.input, {"text": "text", "generate": "prompt"}.get(job.mode, "raw"),
                          dict(job.columns))
    if job.simplified:
        records.check_columns(job.simplified, "simplified", dict(job.columns))
        records.check_pairing(job.input, job.simplified, dict(job.columns), mode=job.mode)
    t_fp, tok_fp = teacher_fingerprint(cfg.model_dir), tokenizer_fingerprint(cfg.model_dir)
    key = config.cache_key(t_fp, tok_fp)
    header = {"schema_version": config.schema_version, "cache_key": key,
              "teacher": {"path": strip_credentials(cfg.model_dir), "fingerprint": t_fp,
                          "dtype": config.dtype},
              "tokenizer_fingerprint": tok_fp, "label_config": config.to_dict()}
    metadata = config.shard_metadata(t_fp, tok_fp)
    check_out(job, header)  # before anything is written to --out
    copy_tokenizer(cfg.model_dir, f"{job.out.rstrip('/')}/{TOKENIZER_DIR}")
    clear_stale_commits(job.out, key)
    existing = committed_shards(job.out, key)
    beam_args = runner_args(beam_args)
    if "--runner=" + DASK_RUNNER in beam_args:
        # the Dask runner drops what finish_bundle emits (it collects a bundle's outputs
        # before calling it), so the last chunk's overlapped write would go unlisted
        job = dataclasses.replace(job, read_splits=dask_partitions(beam_args),
                                  overlap_writes=False)
    with watch(job, key) if watch else contextlib.nullcontext():
        with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
            build(p, job, config, header, metadata, existing)
    manifest = load_manifest(job.out)
    return summarize(job.out, manifest)


# label-config fields -> the kd label flags that set them (for the key-mismatch error)
CONFIG_FLAGS = {"top_k": "--top-k", "mode": "--mode", "chat_template": "--chat-template",
                "encoding": "--encoding", "too_long": "--too-long",
                "hidden_layers": "--hidden-layers", "dtype": "--dtype",
                "teacher_num_layers": "--teacher", "hidden_size": "--teacher",
                "views": "--simplified", "hidden_proj": "--hidden-proj-dim/--hidden-proj-seed",
                "sampling": "--max-new-tokens/--temperature/--top-p/--seed",
                "targets": "--targets",
                "sampled": "--samples/--proposal-temperature/--sample-seed"}


def check_out(job: LabelJob, header: dict) -> None:
    """An --out that holds a label set of another cache key stops the run before any teacher
    work, unless ``job.overwrite`` (then its commit records are cleared and the manifest
    replaced at the end). The same key (a resumed or incremental run) passes."""
    held = None if job.overwrite else labelset.held_label_set(job.out, header["cache_key"])
    if held is not None:
        raise ValueError(key_mismatch(job.out, held, header))


def key_mismatch(out: str, held: dict, header: dict) -> str:
    """What differs between the label set ``out`` holds and this run's, and what to do."""
    old, new = held["label_config"], header["label_config"]
    diffs = [f"{f} ({CONFIG_FLAGS.get(f, 'label config')}) {old.get(f)!r} -> {new.get(f)!r}"
             for f in sorted(set(old) | set(new)) if old.get(f) != new.get(f)]
    if held["teacher_fingerprint"] not in (None, header["teacher"]["fingerprint"]):
        path = (f"; teacher path {held['teacher_path']} -> {header['teacher']['path']}"
                if held["teacher_path"] not in (None, header["teacher"]["path"]) else "")
        diffs.append(f"teacher fingerprint {held['teacher_fingerprint']} -> "
                     f"{header['teacher']['fingerprint']} (other weights or config.json{path})")
    if held["tokenizer_fingerprint"] not in (None, header["tokenizer_fingerprint"]):
        diffs.append(f"tokenizer fingerprint {held['tokenizer_fingerprint']} -> "
                     f"{header['tokenizer_fingerprint']} (other tokenizer files)")
    if not diffs:
        diffs = (["the label config is the same, so the teacher's weights or tokenizer differ "
                  "(its commit records do not name them)"]
                 if held["teacher_fingerprint"] is None else
                 ["the label config and teacher are the same: the old key was computed by "
                  "another kd version"])
    return (f"--out {out} already holds a label set under cache key {held['cache_key']}; this "
            f"run's cache key is {header['cache_key']}. They differ in: {'; '.join(diffs)}. "
            f"Choose another --out to keep both label sets, or pass --overwrite to replace it "
            f"(its shards stay readable until the new manifest lands; `kd cache gc {out} --yes` "
            f"then removes them).")


DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def runner_args(beam_args: list[str]) -> list[str]:
    """FnApiRunner unless a runner is named; ``DaskRunner`` stands for Beam's Dask runner."""
    if not any(a.startswith("--runner") for a in beam_args):
        return ["--runner=FnApiRunner", *beam_args]
    return [f"--runner={DASK_RUNNER}" if a == "--runner=DaskRunner" else a for a in beam_args]


def dask_partitions(beam_args: list[str]) -> int:
    """On Dask a collection keeps the partitions it was created with (the runner translates
    Reshuffle to nothing), so the inputs are read as --dask_npartitions splits (default 1)."""
    from apache_beam.runners.dask.dask_runner import DaskOptions
    return PipelineOptions(beam_args).view_as(DaskOptions).npartitions or 1


def summarize(out: str, manifest: Manifest) -> dict:
    import pyarrow.parquet as pq
    import fsspec
    fs, root = fsspec.core.url_to_fs(out)
    reasons = collections.Counter()
    if manifest.rejects["rows"]:
        table = pq.read_table(f"{root}/{manifest.rejects['path']}", filesystem=fs,
                              columns=["reason"])
        reasons.update(table["reason"].to_pylist())
    return {**manifest.counts, "shards": len(manifest.shards),
            "rejects_path": f"{out}/{manifest.rejects['path']}",
            "rejects_by_reason": dict(sorted(reasons.items())), "cache_key": manifest.cache_key}
