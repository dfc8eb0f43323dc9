"""The ``kd`` command: ``kd label``, ``kd plan``, ``kd train``, ``kd eval``, ``kd cache``."""
import argparse
import contextlib
import difflib
import logging
import os
import sys
import tempfile
import warnings


def add_cache_parser(sub) -> None:
    cache = sub.add_parser("cache", help="list, inspect, verify and clean label sets")
    csub = cache.add_subparsers(dest="cache_command", required=True)
    ls = csub.add_parser("ls", help="every label set under ROOT, one line each")
    ls.add_argument("root")
    ls.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    ls.set_defaults(func=cache_ls)
    ins = csub.add_parser("inspect", help="one label set in full (JSON)")
    ins.add_argument("dir")
    ins.add_argument("--verify", action="store_true", help="check every shard's sha256")
    ins.set_defaults(func=cache_inspect)
    ver = csub.add_parser("verify", help="check every checksum of every label set under ROOT; "
                                         "exit status 1 on any mismatch or missing shard")
    ver.add_argument("root")
    ver.set_defaults(func=cache_verify)
    gc = csub.add_parser("gc", help="list files under ROOT that no manifest or commit record "
                                    "refers to; remove them with --yes")
    gc.add_argument("root")
    gc.add_argument("--yes", action="store_true", help="remove the files listed")
    gc.add_argument("--min-age", type=float, default=3600.0, metavar="SECONDS",
                    help="only files older than this (a running job's newest shard is "
                         "unreferenced until its commit record is written; default 3600)")
    gc.set_defaults(func=cache_gc)


def cache_ls(args, _rest) -> int:
    import json
    from schemas.cache import describe, find_label_sets, format_ls
    rows = [describe(d) for d in find_label_sets(args.root)]
    print(json.dumps(rows, indent=1, sort_keys=True) if args.json else format_ls(rows))
    return 0


def cache_inspect(args, _rest) -> int:
    import json
    from schemas.cache import describe
    info = describe(args.dir, verify=args.verify)
    print(json.dumps(info, indent=1, sort_keys=True))
    return 1 if info.get("corrupted") else 0


def cache_verify(args, _rest) -> int:
    from schemas.cache import find_label_sets, verify_label_set
    dirs = find_label_sets(args.root)
    if not dirs:
        print(f"no label sets under {args.root}", file=sys.stderr)
        return 1
    bad = 0
    for d in dirs:
        n, problems = verify_label_set(d)
        bad += len(problems)
        print(f"{'ok ' if not problems else 'BAD'} {d}: {n} shards checked"
              + "".join(f"\n    {p}" for p in problems))
    print(f"{len(dirs)} label set(s), {bad} problem(s)")
    return 1 if bad else 0


def cache_gc(args, _rest) -> int:
    from schemas.cache import remove_files, unreferenced_files
    found = unreferenced_files(args.root, min_age=args.min_age)
    for path, size in found:
        print(f"{size:>12} {path}")
    total = sum(size for _, size in found)
    if not found:
        print(f"nothing to remove under {args.root}")
    elif args.yes:
        remove_files(args.root, [p for p, _ in found])
        print(f"removed {len(found)} file(s), {total / 1e6:.2f} MB")
    else:
        print(f"{len(found)} file(s), {total / 1e6:.2f} MB unreferenced; "
              "run again with --yes to remove them")
    return 0


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def beam_parser() -> argparse.ArgumentParser:
    """A parser of every flag some Beam PipelineOptions class defines (what Beam accepts)."""
    logging.disable(logging.WARNING)  # Beam's import-time notes (apitools, ...) are not for
    try:                              # the terminal; they happen before the log file is open
        from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser
        import apache_beam.runners.dask.dask_runner  # noqa: F401  defines the --dask_* options
    finally:
        logging.disable(logging.NOTSET)
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    return parser


def unknown_argument(rest: list[str], known: list[str],
                     beam: argparse.ArgumentParser | None = None) -> str | None:
    """A message naming the first argument in ``rest`` that neither kd (``known``) nor Beam
    (``beam``, for kd label) accepts, with the nearest valid flag; None if all are accepted."""
    pool = list(known)
    if beam is not None:
        _, rest = beam.parse_known_args(rest)
        pool += option_strings(beam)
    for arg in rest:
        if not arg.startswith("-"):
            return f"unexpected argument {arg!r} (options are --name value or --name=value)"
        name = arg.split("=", 1)[0]
        exact = [c for c in pool if c.replace("_", "-") == name.replace("_", "-")]
        near = exact or difflib.get_close_matches(name, pool, n=1, cutoff=0.7)
        hint = f"; did you mean {near[0]}?" if near else "; see --help"
        return f"unknown argument {name}{hint}"
    return None


def chosen_parser(ap: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The (sub)parser of the command given, e.g. the parser of `kd cache gc`."""
    parser = ap
    for dest in ("command", "cache_command"):
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)),
                   None)
        if sub is None or getattr(args, dest, None) is None:
            break
        parser = sub.choices[getattr(args, dest)]
    return parser


def log_path(args) -> str | None:
    """Where a command's engine and library output goes: a file in its output directory (a local
    temporary directory for an object-store output); None for commands that do no such work."""
    name = f"kd-{args.command}.log"
    if args.command == "label":
        out = getattr(args, "out", None)
    elif args.command == "train":
        out = getattr(args, "out", None)
    elif args.command == "eval":
        out = os.path.dirname(os.path.abspath(args.json)) if args.json else None
    else:
        return None
    if not out or "://" in out:
        return os.path.join(tempfile.gettempdir(), f"kd-{args.command}-{os.getpid()}.log")
    os.makedirs(out, exist_ok=True)
    return os.path.join(out, name)


@contextlib.contextmanager
def tee_descriptors(path: str):
    """With -v: file descriptors 1 and 2 still reach the terminal, and a copy of both goes to
    ``path`` (one ``tee -a`` process per descriptor), so the log file exists either way."""
    import subprocess
    sys.stdout.flush()
    sys.stderr.flush()
    saved, tees = [], []
    for fd in (1, 2):
        saved.append(os.dup(fd))
        tee = subprocess.Popen(["tee", "-a", path], stdin=subprocess.PIPE, stdout=saved[-1])
        os.dup2(tee.stdin.fileno(), fd)
        tees.append(tee)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        for tee in tees:
            tee.stdin.close()
            try:
                tee.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a child process still holds the pipe
                tee.kill()


@contextlib.contextmanager
def quiet_output(path: str | None, verbose: bool):
    """Yield the stream (standard output) for kd's own lines: stages, progress bars, summaries.

    Unless ``verbose``, file descriptors 1 and 2 point at ``path`` meanwhile, so whatever the
    engine, Beam, torch or transformers write (from Python, C++ or worker processes) lands in
    the log file, and the terminal shows only kd's lines. The "kd" logger writes to both."""
    log = logging.getLogger("kd")
    log.setLevel(logging.DEBUG)
    log.propagate = False  # importing Beam configures the root logger
    if path is None or verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        log.handlers = [handler]
        with tee_descriptors(path) if path else contextlib.nullcontext():
            yield sys.stdout
        log.handlers = []
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    term = os.fdopen(os.dup(1), "w", buffering=1)
    logfile = open(path, "a", buffering=1)
    os.dup2(logfile.fileno(), 1)
    os.dup2(logfile.fileno(), 2)
    to_term, to_file = logging.StreamHandler(term), logging.StreamHandler(logfile)
    to_term.setFormatter(logging.Formatter("%(message)s"))
    to_file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    to_term.setLevel(logging.INFO)
    log.handlers = [to_term, to_file]
    streams = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = logfile  # Python-level writers too, however sys.stdout was set up
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = lambda msg, cat, fn, ln, file=None, line=None: logfile.write(
                warnings.formatwarning(msg, cat, fn, ln, line))
            yield term
    finally:
        sys.stdout, sys.stderr = streams
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        log.handlers = []
        term.close()
        logfile.close()


def speed_advice(log_path: str) -> str | None:
    """vLLM's CPU start-up advice (libraries it wants in LD_PRELOAD), summarised once."""
    import re
    try:
        with open(log_path, errors="replace") as f:
            libs = sorted(set(re.findall(r"(\w+) is not found in LD_PRELOAD", f.read())))
    except FileNotFoundError:
        return None
    if not libs:
        return None
    return (f"note: vLLM advises preloading {' and '.join(libs)} (LD_PRELOAD) for CPU speed; "
            "not done here (docs/BENCHMARKS.md)")


def main(argv: list[str] | None = None) -> int:
    from pipeline import cli as label_cli
    from student_train import cli as train_cli

    ap = argparse.ArgumentParser(prog="kd", description="offline knowledge distillation")
    sub = ap.add_subparsers(dest="command", required=True)
    label_cli.add_parser(sub)
    label_cli.add_plan_parser(sub)
    train_cli.add_parsers(sub)
    add_cache_parser(sub)
    for name in ("label", "train", "eval"):
        sub.choices[name].add_argument(
            "-v", "--verbose", action="store_true",
            help="show engine, Beam, torch and transformers output on the terminal (by default "
                 "it goes to kd-<command>.log in the output directory)")
    args, rest = ap.parse_known_args(argv)
    parser = chosen_parser(ap, args)
    if rest:  # before any work: a misspelt flag must not run with the defaults
        beam = beam_parser() if args.command == "label" else None
        problem = unknown_argument(rest, option_strings(parser), beam)
        if problem:
            parser.exit(2, f"{parser.prog}: error: {problem}\n")
    path = log_path(args)
    error = None
    with quiet_output(path, getattr(args, "verbose", False)) as term:
        args.term = term
        if path and not args.verbose:
            print(f"engine and library output: {path} (-v to show it here)", file=term)
        try:
            rc = args.func(args, rest) or 0
            if path and not args.verbose:
                advice = speed_advice(path)
                if advice:
                    print(advice, file=term)
            return rc
        except SystemExit as e:
            if not isinstance(e.code, str):
                raise
            error = e.code  # a message for the user
        except (ValueError, FileNotFoundError, OSError, TimeoutError) as e:
            logging.getLogger("kd").debug("failed", exc_info=True)  # the traceback: log file
            error = f"kd {args.command}: error: {e}" + (f" (details: {path})" if path else "")
    print(error, file=sys.stderr)  # after the descriptors are back: on the terminal
    return 1


if __name__ == "__main__":
    sys.exit(main())
