"""The ``kd`` command: ``kd label``, ``kd plan``, ``kd train``, ``kd eval``, ``kd cache``."""
import argparse
import sys


def add_cache_parser(sub) -> None:
    cache = sub.add_parser("cache", help="list and inspect label sets")
    csub = cache.add_subparsers(dest="cache_command", required=True)
    ls = csub.add_parser("ls", help="every label set under ROOT, one line each")
    ls.add_argument("root")
    ls.set_defaults(func=cache_ls)
    ins = csub.add_parser("inspect", help="one label set in full (JSON)")
    ins.add_argument("dir")
    ins.add_argument("--verify", action="store_true", help="check every shard's sha256")
    ins.set_defaults(func=cache_inspect)


def cache_ls(args, _rest) -> int:
    from schemas.cache import describe, find_label_sets, format_ls
    print(format_ls([describe(d) for d in find_label_sets(args.root)]))
    return 0


def cache_inspect(args, _rest) -> int:
    import json
    from schemas.cache import describe
    info = describe(args.dir, verify=args.verify)
    print(json.dumps(info, indent=1, sort_keys=True))
    return 1 if info.get("corrupted") else 0


def main(argv: list[str] | None = None) -> int:
    from pipeline import cli as label_cli
    from student_train import cli as train_cli

    ap = argparse.ArgumentParser(prog="kd", description="offline knowledge distillation")
    sub = ap.add_subparsers(dest="command", required=True)
    label_cli.add_parser(sub)
    label_cli.add_plan_parser(sub)
    train_cli.add_parsers(sub)
    add_cache_parser(sub)
    args, rest = ap.parse_known_args(argv)
    if rest and args.command != "label":
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args, rest) or 0


if __name__ == "__main__":
    sys.exit(main())
