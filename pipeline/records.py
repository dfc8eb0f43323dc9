"""Reading and checking input records: plain functions, no Beam.

Inputs are JSONL (every non-blank line is one record) or Parquet (every row is one record), read
through fsspec. A record either becomes an ``Example`` or a reject (a dict of REJECT_SCHEMA) with
a reason, so that rows_in == rows_labelled + rows_rejected.

Record kinds: "raw" {id, prompt, response}, "simplified" {id, prompt}, "text" {id, text} (plain
text mode: every position after the first is labelled), "prompt" {id, prompt} (generate mode; a
"response" field, if present, is ignored). A column mapping renames input fields
to these names (``{"prompt": "question"}`` reads the input's "question" as the prompt).
"""
import dataclasses
import json

import fsspec

FIELDS = {"raw": ("id", "prompt", "response"), "simplified": ("id", "prompt"),
          "text": ("id", "text"), "prompt": ("id", "prompt")}
RAW_KIND = {"score": "raw", "text": "text", "generate": "prompt"}  # mode -> raw input's kind
IGNORED = {"prompt": ("response",)}  # generate mode: the teacher writes its own response
PARQUET_BATCH = 1024
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
    """A raw record with its simplified partner (if any), ready to tokenise. ``mode`` is the
    job's: score (prompt and response), text (empty prompt, the text as the response) or
    generate (prompt only, response None: the teacher writes it)."""
    id: str
    prompt: str
    response: str | None
    simplified_prompt: str | None
    raw_src: tuple[str, int]
    simplified_src: tuple[str, int] | None
    mode: str = "score"


def reject(source: str, line: int, view: str, reason: str, detail: str,
           example_id: str | None = None, record: str = "") -> dict:
    return {"source": source, "line": line, "example_id": example_id, "view": view,
            "reason": reason, "detail": detail, "record": record[:MAX_RECORD_ECHO]}


def input_format(path: str) -> str:
    name = path.lower()
    return "parquet" if name.endswith((".parquet", ".pq")) else "jsonl"


def read_records(path: str, kind: str, columns: dict | None = None, split: int = 0,
                 splits: int = 1, block: int = 1):
    """Yield (kind, source, record number, payload) per record of a JSONL or Parquet file.

    The payload is the line's bytes (JSONL; decoded by ``parse_record``) or a dict (Parquet,
    only the mapped columns read). Record numbers are 1-based line or row numbers.
    With ``splits`` > 1, only the records of every ``splits``-th block of ``block`` lines starting
    at block ``split``: the splits together yield every record once, whole chunks each.
    """
    def mine(n: int) -> bool:
        return ((n - 1) // block) % splits == split

    if input_format(path) == "parquet":
        import pyarrow.parquet as pq
        names = [(columns or {}).get(k, k) for k in FIELDS[kind]]
        with fsspec.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            present = [n for n in names if n in pf.schema_arrow.names]
            n = 0
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH, columns=present):
                for row in batch.to_pylist():
                    n += 1
                    if mine(n):
                        yield kind, path, n, row
        return
    with fsspec.open(path, "rb", compression="infer") as f:
        for n, line in enumerate(f, start=1):
            if line.strip() and mine(n):
                yield kind, path, n, line


def check_columns(path: str, kind: str, columns: dict | None = None, sample: int = 20) -> None:
    """Stop before any work when the input's records lack a column the mode needs in every one of
    the first ``sample`` records (a wrong file or a missing --columns mapping, not a bad record):
    a ValueError naming the columns missing and the ones found."""
    import itertools
    ours = {v: k for k, v in (columns or {}).items()}  # input column -> our field
    seen = []
    for _, _, _, data in itertools.islice(read_records(path, kind, columns), sample):
        if not isinstance(data, dict):
            try:
                data = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
        if isinstance(data, dict):
            seen.append(data)
    if input_format(path) == "parquet":
        import pyarrow.parquet as pq
        with fsspec.open(path, "rb") as f:
            seen = [dict.fromkeys(pq.ParquetFile(f).schema_arrow.names)]
    if not seen:
        return
    fields = [{ours.get(k, k) for k in rec} for rec in seen]
    missing = [k for k in FIELDS[kind] if not any(k in f for f in fields)]
    if missing:
        found = sorted(set().union(*(set(rec) for rec in seen)))
        mapped = [(columns or {}).get(k, k) for k in missing]
        raise ValueError(
            f"{path}: no record has the column(s) {', '.join(mapped)} (found: "
            f"{', '.join(found)}); map yours with --columns "
            + ",".join(f"{k}=<your column>" for k in missing))


def check_pairing(raw: str, simplified: str, columns: dict | None = None,
                  sample: int = 20) -> None:
    """Stop before any work when none of the first ``sample`` simplified ids is the id of any raw
    record (the simplified file belongs to other data, or its ids are in another column)."""
    import itertools

    def ids(path, kind, limit=None):
        for _, _, _, data in itertools.islice(read_records(path, kind, columns), limit):
            rec = parse_record(kind, path, 0, data, columns)
            if isinstance(rec, Record):
                yield rec.id
    wanted = set(ids(simplified, "simplified", sample))
    if not wanted:
        return
    raw_seen = []
    for rid in ids(raw, "raw"):
        if rid in wanted:
            return
        if len(raw_seen) < 3:
            raw_seen.append(rid)
    raise ValueError(f"{simplified}: none of its first {len(wanted)} ids matches a record of "
                     f"{raw} (e.g. {sorted(wanted)[:3]} vs raw {raw_seen}); simplified records "
                     "pair with raw ones by id: check both files use the same ids (--columns "
                     "id=<column>)")


def parse_record(kind: str, source: str, line_no: int, data, columns: dict | None = None
                 ) -> Record | dict:
    """Decode and check one record; return a Record or a reject."""
    view = "simplified" if kind == "simplified" else "raw"
    if isinstance(data, dict):
        obj, echo = data, str(data)
    else:
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
    if columns:
        inverse = {src: ours for ours, src in columns.items()}
        obj = {inverse.get(k, k): v for k, v in obj.items()}
    rid = obj.get("id") if isinstance(obj.get("id"), str) else None
    want = FIELDS[kind]
    missing = [k for k in want if k not in obj]
    extra = sorted(set(obj) - set(want) - set(IGNORED.get(kind, ())))
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
    if kind == "text":
        return Record(view, source, line_no, obj["id"], "", obj["text"])
    if kind == "prompt":
        return Record(view, source, line_no, obj["id"], obj["prompt"], None)
    return Record(view, source, line_no, obj["id"], obj["prompt"], obj.get("response"))


def pair(example_id: str, raws: list[Record], simps: list[Record], mode: str = "score"
         ) -> list[Example | dict]:
    """Join the raw and simplified records of one id into an Example of ``mode``; duplicates
    and orphans become rejects."""
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
                       (raw.source, raw.line), simp and (simp.source, simp.line), mode))
    return out


def count_records(path: str) -> int:
    """Records in an input file (JSONL lines or Parquet rows), read cheaply."""
    if input_format(path) == "parquet":
        import pyarrow.parquet as pq
        with fsspec.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows
    with fsspec.open(path, "rb", compression="infer") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b""))
