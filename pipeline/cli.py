"""``kd label``: label a dataset with the teacher and write a label set."""
import json
import logging
import sys
import time

DESCRIPTION = """Run the teacher (vLLM, in-process) over raw [and simplified] records (JSONL or
Parquet, any fsspec URL) through
an Apache Beam pipeline; write Parquet shards, a rejects file and the manifest to --out.
Arguments not listed here are passed to Beam (e.g. --runner=DirectRunner
--direct_num_workers=2 --direct_running_mode=multi_processing)."""


def add_parser(sub) -> None:
    ap = sub.add_parser("label", help="label a dataset with the teacher", description=DESCRIPTION)
    ap.add_argument("--teacher", required=True, help="teacher model directory (transformers format)")
    ap.add_argument("--input", required=True, help="raw JSONL {id, prompt, response} (fsspec URL)")
    ap.add_argument("--simplified", help="simplified JSONL {id, prompt}, paired with raw by id")
    ap.add_argument("--out", required=True, help="output label-set directory (fsspec URL)")
    ap.add_argument("--mode", choices=["score", "text"], default="score",
                    help="score: {id, prompt, response} records (teacher forcing on the given "
                         "responses); text: {id, text} records, every position after the first")
    ap.add_argument("--columns", default="",
                    help="column mapping, e.g. id=uid,prompt=question,response=answer")
    ap.add_argument("--chat-template", action="store_true",
                    help="wrap each prompt in the tokenizer's chat template as a user turn")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--dtype", default=None,
                    help="engine dtype (default: the checkpoint's own, e.g. float32)")
    ap.add_argument("--hidden-layers", default="final",
                    help="'final' (mean-pooled final-layer state over the response) or 'none'")
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
    ap.set_defaults(func=main)


def parse_engine_args(items: list[str]) -> tuple:
    out = []
    for item in items:
        key, _, value = item.partition("=")
        try:
            out.append((key, json.loads(value)))
        except json.JSONDecodeError:
            out.append((key, value))
    return tuple(sorted(out))


def main(args, beam_args: list[str]) -> int:
    from pipeline import job
    from pipeline.teacher import TeacherConfig, model_config, shutdown_all

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.hidden_layers not in ("final", "none"):
        sys.exit("--hidden-layers must be 'final' or 'none'")
    n_layers = int(model_config(args.teacher)["num_hidden_layers"])
    cfg = TeacherConfig(model_dir=args.teacher, top_k=args.top_k, dtype=args.dtype,
                        hidden_layers=(n_layers,) if args.hidden_layers == "final" else (),
                        max_model_len=args.max_model_len, kv_cache_gb=args.kv_cache_gb,
                        enforce_eager=args.enforce_eager, trust_remote_code=args.trust_remote_code,
                        engine_args=parse_engine_args(args.engine_arg))
    t0 = time.time()
    try:
        columns = tuple(tuple(kv.split("=", 1)) for kv in args.columns.split(",") if kv)
        summary = job.run(job.LabelJob(cfg, args.input, args.out, args.simplified,
                                       args.shard_rows, args.too_long == "truncate", args.mode,
                                       columns, args.chat_template), beam_args,
                          progress=args.progress)
    finally:
        shutdown_all()
    summary["seconds"] = round(time.time() - t0, 2)
    print(job.format_summary(summary))
    print(f"done in {summary['seconds']} s -> {args.out}")
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            f.write(job.dumps(summary))
    return 0
