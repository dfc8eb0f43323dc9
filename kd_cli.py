"""The ``kd`` command: ``kd label``, ``kd train``, ``kd eval``."""
import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from pipeline import cli as label_cli
    from student_train import cli as train_cli

    ap = argparse.ArgumentParser(prog="kd", description="offline knowledge distillation")
    sub = ap.add_subparsers(dest="command", required=True)
    label_cli.add_parser(sub)
    train_cli.add_parsers(sub)
    args, rest = ap.parse_known_args(argv)
    if rest and args.command != "label":
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args, rest) or 0


if __name__ == "__main__":
    sys.exit(main())
