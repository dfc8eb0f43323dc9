"""``kd train`` and ``kd eval``."""
import json
import os


def add_parsers(sub) -> None:
    tr = sub.add_parser("train", help="train a student from a label set")
    tr.add_argument("--labels", required=True, help="label-set directory (has manifest.json)")
    tr.add_argument("--student", required=True,
                    help="config JSON (fresh student, labels' tokenizer) or a model directory")
    tr.add_argument("--out", required=True, help="output model directory")
    tr.add_argument("--steps", type=int, required=True, help="total optimiser steps")
    tr.add_argument("--batch-size", type=int, default=16)
    tr.add_argument("--lr", type=float, default=3e-3)
    tr.add_argument("--warmup-steps", type=int, default=20)
    tr.add_argument("--lambda", dest="lam", type=float, default=0.5,
                    help="weight of CE in lambda*CE + (1-lambda)*T^2*KD; 1.0 = CE only")
    tr.add_argument("--temperature", type=float, default=1.0)
    tr.add_argument("--divergence", choices=["forward_kl", "reverse_kl"], default="forward_kl")
    tr.add_argument("--no-tail", dest="tail", action="store_false",
                    help="renormalise the teacher over its top k instead of a tail bucket")
    tr.add_argument("--views", default="raw,simplified", help="which rows to train on")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--save-every", type=int, default=0, help="checkpoint every M steps")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    tr.set_defaults(func=train_main)

    ev = sub.add_parser("eval", help="held-out CE/perplexity, teacher agreement and KL")
    ev.add_argument("--labels", required=True, help="held-out label set")
    ev.add_argument("--student", action="append", required=True,
                    help="student model directory, optionally NAME=DIR (repeatable)")
    ev.add_argument("--views", default="raw,simplified")
    ev.add_argument("--json", help="also write the results to this JSON file")
    ev.set_defaults(func=eval_main)


def train_main(args, _rest) -> int:
    from student_train.train import TrainConfig, train
    cfg = TrainConfig(labels=args.labels, student=args.student, out=args.out, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                      lam=args.lam, temperature=args.temperature, divergence=args.divergence,
                      tail=args.tail, views=tuple(args.views.split(",")), seed=args.seed,
                      save_every=args.save_every, resume=args.resume)
    result = train(cfg)
    print(f"trained {result['steps']} steps in {result['seconds']:.1f} s; "
          f"last loss {result.get('loss', float('nan')):.4f} -> {args.out}")
    return 0


def eval_main(args, _rest) -> int:
    from student_train.evaluate import evaluate, format_table
    results = []
    for spec in args.student:
        name, _, path = spec.rpartition("=")
        path = path or spec
        for view in args.views.split(","):
            r = evaluate(path, args.labels, view)
            results.append({**r, "name": name or os.path.basename(path.rstrip("/"))})
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0
