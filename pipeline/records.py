"""Reading and checking input records: plain functions, no Beam.

Every non-blank input line is one record. A record either becomes an ``Example`` or a reject
(a dict of REJECT_SCHEMA) with a reason, so that rows_in == rows_labelled + rows_rejected.
"""
import dataclasses
import json

import fsspec

FIELDS = {"raw": ("id", "prompt", "response"), "simplified": ("id", "prompt")}
MAX_RECORD_ECHO = 500


@dataclasses.dataclass
class Record:
    view: str
    source: str
    line: int
    id: str
    prompt: str
    response: str | None = None


@dataclasses.dataclass
class Example:
    """A raw record with its simplified partner (if any), ready to tokenise."""
    id: str
    prompt: str
    response: str
    simplified_prompt: str | None
    raw_src: tuple[str, int]
    simplified_src: tuple[str, int] | None


def reject(source: str, line: int, view: str, reason: str, detail: str,
           example_id: str | None = None, record: str = "") -> dict:
    return {"source": source, "line": line, "example_id": example_id, "view": view,
            "reason": reason, "detail": detail, "record": record[:MAX_RECORD_ECHO]}


def read_lines(path: str, view: str):
    """Yield (view, source, line_no, raw bytes) for every non-blank line of a JSONL file."""
    with fsspec.open(path, "rb", compression="infer") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                yield view, path, n, line


def parse_line(view: str, source: str, line_no: int, data: bytes) -> Record | dict:
    """Decode and check one JSONL line; return a Record or a reject."""
    echo = data.decode("utf-8", errors="replace").rstrip("\n")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return reject(source, line_no, view, "invalid_utf8", str(e), record=echo)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return reject(source, line_no, view, "malformed_json", str(e), record=echo)
    if not isinstance(obj, dict):
        return reject(source, line_no, view, "not_an_object",
                      f"expected a JSON object, got {type(obj).__name__}", record=echo)
    rid = obj.get("id") if isinstance(obj.get("id"), str) else None
    want = FIELDS[view]
    missing = [k for k in want if k not in obj]
    extra = sorted(set(obj) - set(want))
    if missing or extra:
        detail = "; ".join(filter(None, [missing and f"missing {missing}",
                                          extra and f"unexpected {extra}"]))
        return reject(source, line_no, view, "missing_field" if missing else "extra_field",
                      detail, rid, echo)
    for k in want:
        if not isinstance(obj[k], str):
            return reject(source, line_no, view, "wrong_type",
                          f"field {k!r} must be a string, got {type(obj[k]).__name__}", rid, echo)
    for k in want:
        if not obj[k].strip():
            return reject(source, line_no, view, "empty_field", f"field {k!r} is empty", rid, echo)
    return Record(view, source, line_no, obj["id"], obj["prompt"], obj.get("response"))


def pair(example_id: str, raws: list[Record], simps: list[Record]) -> list[Example | dict]:
    """Join the raw and simplified records of one id; duplicates and orphans become rejects."""
    out: list[Example | dict] = []
    for dup in sorted(raws, key=lambda r: (r.source, r.line))[1:]:
        out.append(reject(dup.source, dup.line, "raw", "duplicate_id",
                          f"id {example_id!r} appears more than once", example_id))
    for dup in sorted(simps, key=lambda r: (r.source, r.line))[1:]:
        out.append(reject(dup.source, dup.line, "simplified", "duplicate_id",
                          f"id {example_id!r} appears more than once", example_id))
    raw = min(raws, key=lambda r: (r.source, r.line)) if raws else None
    simp = min(simps, key=lambda r: (r.source, r.line)) if simps else None
    if raw is None:
        out.append(reject(simp.source, simp.line, "simplified", "no_raw_partner",
                          f"no raw record with id {example_id!r}", example_id))
        return out
    out.append(Example(example_id, raw.prompt, raw.response, simp and simp.prompt,
                       (raw.source, raw.line), simp and (simp.source, simp.line)))
    return out
