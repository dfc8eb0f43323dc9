"""Listing, inspecting, verifying and cleaning label sets (``kd cache ls|inspect|verify|gc``)."""
import time

import fsspec

from schemas.files import COMMITS_DIR, MANIFEST_NAME, SHARDS_DIR
from schemas.manifest import (load_committed, load_manifest,
                              read_commits)
from schemas.validate import ShardError, verify_shard


def describe(label_dir: str, verify: bool = False) -> dict:
    """What a label set holds: teacher, config, rows, tokens, bytes, complete or not."""
    fs, root = fsspec.core.url_to_fs(label_dir)
    m = load_committed(label_dir)
    shards, complete = m.shards, m.complete
    info = {"cache_key": m.cache_key, "teacher": m.teacher or None,
            "label_config": m.label_config, "counts": m.counts or None}
    listed = {s.path for s in shards}
    fs.invalidate_cache(f"{root}/shards")
    try:
        on_disk = {p[len(root) + 1:] for p in fs.ls(f"{root}/shards", detail=False)}
    except FileNotFoundError:
        on_disk = set()
    out = {"path": label_dir, "complete": complete, "shards": len(shards),
           "rows": sum(s.rows for s in shards), "tokens": sum(s.tokens for s in shards),
           "bytes": sum(s.bytes for s in shards),
           "unlisted_files": sorted(on_disk - listed), **info}
    if verify:
        out["corrupted"] = shard_problems(fs, root, shards)
    return out


def shard_problems(fs, root: str, shards) -> list[str]:
    """What is wrong with each listed shard (sha256 and size), one message per bad shard."""
    problems = []
    for s in shards:
        try:
            verify_shard(fs, f"{root}/{s.path}", s.sha256)
        except ShardError as e:
            problems.append(str(e))
    return problems


def find_label_sets(root: str) -> list[str]:
    """Directories under ``root`` (any depth) holding a manifest or commit records."""
    fs, base = fsspec.core.url_to_fs(root)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    dirs = set()
    for path in fs.find(base):
        parts = path.split("/")
        if parts[-1] == MANIFEST_NAME:
            dirs.add("/".join(parts[:-1]))
        elif len(parts) >= 2 and parts[-2] == COMMITS_DIR and path.endswith(".json"):
            dirs.add("/".join(parts[:-2]))
    return sorted(prefix + d for d in dirs)


def format_ls(rows: list[dict]) -> str:
    head = (f"{'label set':<44} {'complete':<9} {'teacher':<10} {'mode':<9} {'enc':<8} {'k':>4} "
            f"{'rows':>8} {'tokens':>9} {'MB':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        teacher = (r["teacher"] or {}).get("fingerprint", "?")[:8]
        lc = r["label_config"]
        lines.append(f"{r['path'][-44:]:<44} {str(r['complete']).lower():<9} {teacher:<10} "
                     f"{lc.get('mode', '?'):<9} {lc.get('encoding', 'plain'):<8} "
                     f"{lc.get('top_k', '?'):>4} {r['rows']:>8} {r['tokens']:>9} "
                     f"{r['bytes'] / 1e6:>8.2f}")
    return "\n".join(lines)


def referenced_files(label_dir: str) -> set[str]:
    """Shard paths (relative to the label set) its manifest and commit records refer to."""
    fs, root = fsspec.core.url_to_fs(label_dir)
    refs = set()
    try:
        m = load_manifest(label_dir)
        refs.update(s.path for s in m.shards)
    except FileNotFoundError:
        pass
    refs.update(r["shard"]["path"] for r in read_commits(label_dir))
    return refs


def unreferenced_files(root: str, min_age: float = 3600.0) -> list[tuple[str, int]]:
    """(path, bytes) of every file in the shards/ directory of the label sets under
    ``root`` that no manifest or commit record refers to (e.g. the second shard of a chunk two
    concurrent runs both labelled, shards of a superseded cache key), and of temporary files left
    by killed writers; only files older than ``min_age`` seconds (a running job renames a shard
    into place before it writes the shard's commit record). Paths as ``fs.rm`` takes them."""
    fs, _ = fsspec.core.url_to_fs(root)
    now = time.time()
    out = []
    for label_dir in find_label_sets(root):
        _, base = fsspec.core.url_to_fs(label_dir)
        refs = referenced_files(label_dir)
        fs.invalidate_cache(base)
        for path, info in sorted(fs.find(base, detail=True).items()):
            rel = path[len(base) + 1:]
            name = rel.rsplit("/", 1)[-1]
            temp = name.startswith(".") and "tmp" in name
            if rel in refs or not (temp or rel.split("/")[0] == SHARDS_DIR):
                continue
            try:
                age = now - fs.modified(path).timestamp()
            except (NotImplementedError, FileNotFoundError):
                age = float("inf")
            if age >= min_age:
                out.append((path, int(info.get("size") or 0)))
    return out


def remove_files(root: str, paths: list[str]) -> None:
    fs, _ = fsspec.core.url_to_fs(root)
    for path in paths:
        fs.rm(path)


def verify_label_set(label_dir: str) -> tuple[int, list[str]]:
    """Check every shard of a label set (manifest, else commit records) against its sha256 and
    size; returns (shards checked, problems)."""
    fs, root = fsspec.core.url_to_fs(label_dir)
    try:
        shards = load_committed(label_dir).shards
    except (FileNotFoundError, ValueError) as e:
        return 0, [str(e)]
    return len(shards), shard_problems(fs, root, shards)
