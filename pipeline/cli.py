"""``kd label``: label a dataset with the teacher and write a label set."""
import functools
import json
import math
import sys
import threading
import time

import yaml

DESCRIPTION = """Run the teacher (vLLM, in-process) over raw [and simplified] records (JSONL or
Parquet, any fsspec URL) through
an Apache Beam pipeline; write Parquet shards, a rejects file and the manifest to --out.
Arguments not listed here are passed to Beam (e.g. --runner=DirectRunner
--direct_num_workers=2 --direct_running_mode=multi_processing); one that neither kd nor Beam
knows stops the command before any work. --config FILE.yaml holds any of the options below by
their long name (top_k: 20); flags given on the command line override it."""
REQUIRED = ("teacher", "input", "out")


def add_parser(sub) -> None:
    ap = sub.add_parser("label", help="label a dataset with the teacher", description=DESCRIPTION)
    ap.add_argument("--config", help="YAML file of options (keys: the long flag names with _); "
                                     "flags override it")
    ap.add_argument("--teacher", help="teacher model directory (transformers format); required")
    ap.add_argument("--input", help="raw JSONL {id, prompt, response} (fsspec URL); required")
    ap.add_argument("--simplified", help="simplified JSONL {id, prompt}, paired with raw by id")
    ap.add_argument("--out", help="output label-set directory (fsspec URL); required")
    ap.add_argument("--overwrite", action="store_true",
                    help="--out may hold a label set of another cache key (other teacher, "
                         "tokenizer or label config): replace it. Without it such an --out "
                         "stops the run; the same key resumes or labels only what is new")
    ap.add_argument("--mode", choices=["score", "text", "generate"], default="score",
                    help="score: {id, prompt, response} records (teacher forcing on the given "
                         "responses); text: {id, text} records, every position after the first; "
                         "generate: {id, prompt} records, the teacher writes the responses "
                         "(sequence-level KD), then labels them as in score mode")
    ap.add_argument("--columns", default="",
                    help="column mapping, e.g. id=uid,prompt=question,response=answer")
    ap.add_argument("--chat-template", action="store_true",
                    help="wrap each prompt in the tokenizer's chat template as a user turn")
    ap.add_argument("--top-k", type=int, default=20)
    smp = ap.add_argument_group("sampled soft labels (schema v2; recorded in the label config)")
    smp.add_argument("--targets", choices=["topk", "sampled", "both"], default="topk",
                     help="topk: the k most likely tokens (default); sampled: N draws per "
                          "position from the teacher's full distribution, stored as distinct ids "
                          "with counts (an unbiased estimate of the full-vocabulary loss); both: "
                          "the top k exactly plus N draws from the rest")
    smp.add_argument("--samples", type=int, default=12, metavar="N",
                     help="draws per position for sampled targets (1..255)")
    smp.add_argument("--proposal-temperature", type=float, default=1.0, metavar="TAU",
                     help="draw from softmax(log p / TAU) and store importance weights p/q "
                          "(TAU > 1 reaches further into the tail); 1 = the teacher itself")
    smp.add_argument("--sample-seed", type=int, default=0,
                     help="draws are seeded from (this, example id, position)")
    ap.add_argument("--dtype", default=None,
                    help="engine dtype (default: the checkpoint's own, e.g. float32)")
    ap.add_argument("--hidden-layers", default="final",
                    help="teacher layers to summarise (mean over the response): comma-separated "
                         "transformers hidden_states indices (0 = embeddings) and/or 'final'; "
                         "'none' for no summaries. One engine pass whatever the choice")
    ap.add_argument("--hidden-proj-dim", type=int, default=0, metavar="R",
                    help="also store every response token's state of those layers, projected to "
                         "R dims by a seeded random projection (schemas.projection_matrix)")
    ap.add_argument("--hidden-proj-seed", type=int, default=0)
    gen = ap.add_argument_group("generate mode (sampling parameters, recorded in the manifest)")
    gen.add_argument("--max-new-tokens", type=int, default=256)
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0,
                     help="each example samples with a seed drawn from (seed, example id)")
    ap.add_argument("--encoding", choices=["plain", "compact"], default="plain",
                    help="plain: schema v1, readable with pyarrow alone; compact: sorted "
                         "delta-coded ids + 8-bit log-prob codes, decoded by schemas.compact "
                         "(sizes and error: docs/BENCHMARKS.md)")
    ap.add_argument("--shard-rows", type=int, default=512,
                    help="raw input lines per chunk; a chunk becomes one shard")
    ap.add_argument("--too-long", choices=["reject", "truncate"], default="reject",
                    help="examples longer than the teacher's context: reject (default) or "
                         "truncate the response")
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--kv-cache-gb", type=float, default=1.0, help="engine KV cache size")
    ap.add_argument("--enforce-eager", action="store_true",
                    help="skip the engine's graph compilation (faster start, slower steps)")
    ap.add_argument("--engine-arg", action="append", default=[], metavar="KEY=JSON",
                    help="extra vLLM engine argument, e.g. tensor_parallel_size=2 (repeatable)")
    ap.add_argument("--trust-remote-code", action="store_true")
    ap.add_argument("--summary-json", help="write the run summary (counts) to this file")
    ap.add_argument("--no-progress", dest="progress", action="store_false",
                    help="no progress bar (shards, rows, tokens/s, ETA)")
    ap.set_defaults(func=main, parser=ap)


def parse_engine_args(items: list[str]) -> tuple:
    out = []
    for item in items:
        key, _, value = item.partition("=")
        try:
            out.append((key, json.loads(value)))
        except json.JSONDecodeError:
            out.append((key, value))
    return tuple(sorted(out))


def parse_layers(spec: str, n_layers: int) -> tuple[int, ...]:
    """'final' / 'none' / '2,final' / '1,3' -> sorted transformers hidden_states indices."""
    if spec == "none":
        return ()
    out = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        layer = n_layers if part == "final" else int(part) if part.lstrip("-").isdigit() else None
        if layer is None or not 0 <= layer <= n_layers:
            raise ValueError(f"--hidden-layers {spec!r}: {part!r} is not 'final' or a layer in "
                             f"0..{n_layers}")
        out.add(layer)
    return tuple(sorted(out))


def resolve_config(args) -> None:
    """Fill the options not given on the command line from ``--config`` (YAML), in place."""
    ap = args.parser
    dests = {a.dest for a in ap._actions if a.dest not in ("help", "config", "func", "parser")}
    if args.config:
        with open(args.config) as f:
            values = yaml.safe_load(f) or {}
        unknown = sorted(set(values) - dests)
        if unknown:
            sys.exit(f"{args.config}: unknown keys {unknown}; valid: {sorted(dests)}")
        for name, value in values.items():
            if getattr(args, name) == ap.get_default(name):  # not given: the file's value
                if isinstance(value, list) and name != "engine_arg":
                    value = ",".join(str(v) for v in value)
                setattr(args, name, value)
    missing = [n for n in REQUIRED if getattr(args, n) is None]
    if missing:
        sys.exit(f"kd label: missing {', '.join('--' + m for m in missing)} "
                 "(on the command line or in --config)")


def main(args, beam_args: list[str]) -> int:
    term = getattr(args, "term", sys.stdout)  # kd's own lines (kd_cli sends the rest to a log)
    from pipeline import job
    from pipeline.teacher import SamplingConfig, TeacherConfig, model_config, shutdown_all

    resolve_config(args)
    n_layers = int(model_config(args.teacher)["num_hidden_layers"])
    try:
        layers = parse_layers(args.hidden_layers, n_layers)
    except ValueError as e:
        sys.exit(str(e))
    if args.hidden_proj_dim and not layers:
        sys.exit("--hidden-proj-dim needs --hidden-layers")
    if args.targets != "topk" and not 1 <= args.samples <= 255:
        sys.exit(f"--samples {args.samples}: use 1..255 draws per position")
    if args.targets != "topk" and not args.proposal_temperature > 0:
        sys.exit(f"--proposal-temperature {args.proposal_temperature}: must be > 0")
    if args.targets != "sampled" and args.top_k < 1:
        sys.exit(f"--top-k {args.top_k}: must be >= 1 with --targets {args.targets}")
    sampling_args = {}
    if args.targets != "topk":
        sampling_args = dict(targets=args.targets, samples=args.samples,
                             proposal_temperature=args.proposal_temperature,
                             sample_seed=args.sample_seed)
    cfg = TeacherConfig(model_dir=args.teacher,
                        top_k=0 if args.targets == "sampled" else args.top_k, dtype=args.dtype,
                        hidden_layers=layers, proj_dim=args.hidden_proj_dim,
                        proj_seed=args.hidden_proj_seed,
                        max_model_len=args.max_model_len, kv_cache_gb=args.kv_cache_gb,
                        enforce_eager=args.enforce_eager, trust_remote_code=args.trust_remote_code,
                        engine_args=parse_engine_args(args.engine_arg), **sampling_args)
    t0 = time.time()
    try:
        columns = tuple(tuple(kv.split("=", 1)) for kv in args.columns.split(",") if kv)
        label_job = job.LabelJob(
            teacher=cfg, input=args.input, out=args.out, simplified=args.simplified,
            shard_rows=args.shard_rows, truncate=args.too_long == "truncate", mode=args.mode,
            columns=columns, chat_template=args.chat_template, encoding=args.encoding,
            overwrite=args.overwrite, sampling=SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed))
        summary = job.run(label_job, beam_args,
                          watch=functools.partial(Progress, file=term) if args.progress else None)
    finally:
        shutdown_all()
    summary["seconds"] = round(time.time() - t0, 2)
    print(format_summary(summary), file=term)
    print(f"label set: {args.out}", file=term)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            f.write(json.dumps(summary, indent=1, sort_keys=True))
    return 0


class Progress:
    """``kd label --progress``: a progress bar fed by the job's commit records (shards, rows,
    tokens/s, ETA), polled from the driver while the pipeline runs (``job.run``'s ``watch``);
    the total is the input's record count / shard_rows."""

    def __init__(self, job, key: str, file=None, every: float = 1.0):
        self.job, self.key, self.file, self.every = job, key, file, every
        self.stop = threading.Event()

    def __enter__(self):
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def loop(self):
        from tqdm import tqdm

        from pipeline import records
        from schemas.manifest import read_commits
        total = math.ceil(records.count_records(self.job.input) / self.job.shard_rows)
        before = {r["chunk"] for r in read_commits(self.job.out) if r["cache_key"] == self.key}
        bar = tqdm(total=total, desc="label", unit="shard", dynamic_ncols=True,
                   mininterval=self.every, file=self.file)
        while True:
            stopping = self.stop.wait(self.every)
            new = [r["shard"] for r in read_commits(self.job.out)
                   if r["cache_key"] == self.key and r["chunk"] not in before]
            bar.n = len(new)
            elapsed = bar.format_dict["elapsed"] or 1e-9
            bar.set_postfix(rows=sum(s["rows"] for s in new),
                            tok_s=f"{sum(s['tokens'] for s in new) / elapsed:.0f}", refresh=False)
            bar.refresh()
            if stopping:  # a last look after the job: its final shards commit at the end
                break
        bar.close()


def format_summary(summary: dict) -> str:
    """The run in one line (two with rejects): counts, reuse, tokens and, when timed, speed."""
    line = (f"labelled {summary['rows_labelled']} of {summary['rows_in']} rows "
            f"({summary.get('rows_reused', 0)} reused from {summary.get('shards_reused', 0)} "
            f"unchanged shards), {summary['tokens_labelled']} tokens, {summary['shards']} "
            f"shards; rejected {summary['rows_rejected']}")
    if summary.get("seconds"):
        line += (f"; {summary['seconds']:.1f} s, "
                 f"{summary['tokens_labelled'] / summary['seconds']:.0f} tokens/s")
    if summary["rejects_by_reason"]:
        line += ("\n  rejects by reason: "
                 + ", ".join(f"{r} {n}" for r, n in summary["rejects_by_reason"].items())
                 + f" (rows in {summary['rejects_path']})")
    return line


def add_plan_parser(sub) -> None:
    ap = sub.add_parser("plan", help="what a kd label run will cost, before running it",
                        description="Count the tokens, the teacher's FLOPs (from its config: "
                        "dense or MoE, attention and LM head included), device-hours, wall time "
                        "on N devices, output bytes and shards of a kd label run. GPU figures "
                        "are estimates from data-sheet peaks and a stated MFU.")
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--simplified")
    ap.add_argument("--columns", default="")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--encoding", choices=["plain", "compact"], default="plain")
    ap.add_argument("--hidden-layers", default="final")
    ap.add_argument("--hidden-proj-dim", type=int, default=0)
    ap.add_argument("--shard-rows", type=int, default=512)
    ap.add_argument("--gpu", choices=["h100", "a100", "l4", "cpu"], default="h100",
                    help="device kind; cpu: this machine's cores (calibrated)")
    ap.add_argument("--gpus", type=int, default=1, help="devices (engine processes)")
    ap.add_argument("--mfu", type=float, default=None,
                    help="model FLOPs utilisation (default: 0.35 on GPUs, fitted on CPU)")
    ap.add_argument("--sample", type=int, default=0,
                    help="tokenise a random sample of about N records (0: every record, exact)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the plan as JSON to this file")
    ap.set_defaults(func=plan_main)


def plan_main(args, _rest) -> int:
    from pipeline.plan import format_plan, plan
    from pipeline.teacher import model_config
    n_layers = int(model_config(args.teacher)["num_hidden_layers"])
    layers = parse_layers(args.hidden_layers, n_layers)
    columns = dict(tuple(kv.split("=", 1)) for kv in args.columns.split(",") if kv)
    result = plan(args.teacher, args.input, args.simplified, args.top_k, args.encoding,
                  args.gpu, args.gpus, args.mfu, args.shard_rows, len(layers),
                  args.hidden_proj_dim, args.sample, args.seed, columns)
    print(format_plan(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
    return 0
