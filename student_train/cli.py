"""``kd train`` and ``kd eval``.

``kd train`` takes its settings from an optional YAML file (``--config``), overridden by any flag
given on the command line; keys are TrainConfig's field names (see configs/*.yaml).
"""
import dataclasses
import json
import os

import yaml

REQUIRED = ("labels", "student", "out", "steps")


def add_parsers(sub) -> None:
    tr = sub.add_parser("train", help="train a student from a label set",
                        description=__doc__.split("\n\n")[1])
    tr.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    tr.add_argument("--labels", help="label-set directory (has manifest.json)")
    tr.add_argument("--student", help="config JSON (fresh student, labels' tokenizer) or a model dir")
    tr.add_argument("--out", help="output model directory")
    tr.add_argument("--steps", type=int, help="total optimiser steps")
    tr.add_argument("--batch-size", type=int, help="rows per rank per micro-batch (16)")
    tr.add_argument("--grad-accum", type=int, help="micro-batches per step (1)")
    tr.add_argument("--lr", type=float, help="peak learning rate (3e-3)")
    tr.add_argument("--warmup-steps", type=int, help="linear warm-up steps (20)")
    tr.add_argument("--lambda", dest="lam", type=float,
                    help="weight of CE in lambda*CE + (1-lambda)*T^2*KD; 1.0 = CE only (0.5)")
    tr.add_argument("--temperature", type=float, help="distillation temperature (1.0)")
    tr.add_argument("--divergence", choices=["forward_kl", "reverse_kl", "jsd", "skew_kl",
                                             "skew_reverse_kl", "tvd"])
    tr.add_argument("--beta", type=float, help="generalised JSD mixing weight (0.5)")
    tr.add_argument("--alpha", type=float, help="skew KL / skew reverse KL alpha (0.1)")
    tr.add_argument("--no-tail", dest="tail", action="store_const", const=False,
                    help="renormalise the teacher over its top k instead of a tail bucket")
    tr.add_argument("--teacher", help="online KD: a teacher model directory (transformers) run in "
                         "the loop; the KD term uses its full vocabulary instead of the cached "
                         "top k (same tokenizer as the label set)")
    tr.add_argument("--hidden-weight", type=float, help="weight of the hidden-state loss (0 = off)")
    tr.add_argument("--hidden-loss", choices=["mse", "cosine"])
    tr.add_argument("--hidden-target", choices=["mean", "tokens"],
                    help="mean: match the teacher's response-span summaries; tokens: match its "
                         "per-token projections (label set made with --hidden-proj-dim)")
    tr.add_argument("--views", help="comma-separated views to train on (raw,simplified)")
    tr.add_argument("--simplified-ratio", type=float,
                    help="mix views by ratio: each example trains on its simplified row with "
                         "this probability, else on its raw row (overrides --views)")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--save-every", type=int, help="checkpoint every M steps (0 = never)")
    tr.add_argument("--resume", action="store_const", const=True,
                    help="continue from the newest complete checkpoint in --out")
    tr.add_argument("--shuffle-buffer", type=int, help="rows in the shuffle buffer (2048)")
    tr.add_argument("--workers", type=int, help="DataLoader worker processes (0 = inline)")
    tr.add_argument("--bf16", action="store_const", const=True, help="bfloat16 autocast")
    tr.add_argument("--shard-model", action="store_const", const=True,
                    help="under torchrun: shard parameters, gradients and optimiser state "
                         "over the ranks (FSDP2) instead of replicating them (DDP)")
    tr.add_argument("--follow", action="store_const", const=True,
                    help="train while the label set is still being written: use shards as they "
                         "are committed, finish the first epoch when the manifest is final")
    tr.set_defaults(func=train_main)

    ev = sub.add_parser("eval", help="held-out CE/perplexity, teacher agreement and KL")
    ev.add_argument("--labels", required=True, help="held-out label set")
    ev.add_argument("--student", action="append", required=True,
                    help="student model directory, optionally NAME=DIR (repeatable)")
    ev.add_argument("--views", default="raw,simplified")
    ev.add_argument("--teacher", help="score KL and top-1 agreement against this teacher model's "
                         "full distribution (run here) instead of the cached top k")
    ev.add_argument("--exact-match", action="store_true",
                    help="also decode greedily from each prompt and report the share of rows "
                         "whose response is reproduced exactly (column 'exact')")
    ev.add_argument("--json", help="also write the results to this JSON file")
    ev.set_defaults(func=eval_main)


def resolve_config(args):
    """YAML (if any) overridden by the flags given; returns a TrainConfig."""
    from student_train.train import TrainConfig
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {}
    if args.config:
        with open(args.config) as f:
            values = yaml.safe_load(f) or {}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise SystemExit(f"{args.config}: unknown keys {unknown}; valid: {sorted(fields)}")
    for name in fields:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    missing = [k for k in REQUIRED if values.get(k) is None]
    if missing:
        raise SystemExit(f"kd train: missing {', '.join('--' + m for m in missing)} "
                         "(on the command line or in --config)")
    if isinstance(values.get("views"), str):
        values["views"] = tuple(values["views"].split(","))
    elif "views" in values:
        values["views"] = tuple(values["views"])
    return TrainConfig(**values)


def train_main(args, _rest) -> int:
    from student_train.train import train
    cfg = resolve_config(args)
    term = getattr(args, "term", None)  # kd's own lines (kd_cli sends the rest to a log)
    result = train(cfg, term)
    if result["rank"] == 0:
        print(f"trained {result['steps']} steps in {result['seconds']:.1f} s "
              f"({result['world']} process(es)); last loss {result.get('loss', float('nan')):.4f}"
              f" -> {cfg.out}", file=term)
    return 0


def eval_main(args, _rest) -> int:
    from student_train.evaluate import evaluate, exact_match, format_table
    results = []
    for spec in args.student:
        name, _, path = spec.rpartition("=")
        for view in args.views.split(","):
            r = evaluate(path, args.labels, view, teacher=args.teacher)
            if args.exact_match:
                r["exact"] = exact_match(path, args.labels, view)["exact"]
            results.append({**r, "name": name or os.path.basename(path.rstrip("/"))})
    print(format_table(results), file=getattr(args, "term", None))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0
