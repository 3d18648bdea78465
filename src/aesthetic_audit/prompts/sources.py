"""Caption sources: the built-in set, COCO captions JSON, CSV/TSV (e.g. PartiPrompts), JSONL, text.

Problems with single captions (empty, duplicate, over 10,000 characters, a control character such
as a NUL byte) are counted warnings that name the file and line; problems with the whole source
(missing, empty, undecodable, no such column, a malformed CSV row) are errors.

CSV follows RFC 4180 quoting, read strictly: a quoted cell may not run over several lines, since
such a cell is almost always an unclosed quote that swallowed the rows after it. TSV is plain
tab-separated text as in PartiPrompts: quotes are ordinary characters.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from ..textio import control_char, from_spreadsheet_cell, read_text

MAX_CAPTION_CHARS = 10_000
DEFAULT_COLUMNS = ("caption", "Prompt", "prompt", "text", "original_prompt")
BUILTIN = "builtin"


@dataclass(frozen=True)
class Caption:
    id: str      # stable, human-readable origin: "captions.json:annotation 42", "parti.tsv:line 7"
    text: str


@dataclass
class CaptionSet:
    source: str
    captions: list[Caption]
    warnings: list[str] = field(default_factory=list)


def read_captions(source: str, *, format: str = "auto", column: str | None = None,
                  filter: dict[str, str] | None = None) -> CaptionSet:
    """Read, clean and de-duplicate the captions of a source."""
    if source == BUILTIN:
        text = resources.files("aesthetic_audit.prompts").joinpath("data/captions.txt").read_text("utf-8")
        rows = _text_rows(text, "builtin")
        name = "builtin"
    else:
        path = Path(source)
        text = read_text(path, "caption source")
        fmt = _detect(path, text) if format == "auto" else format
        name = path.name
        if filter and fmt in ("coco", "txt"):
            raise InputError(f"{path}: a filter needs a CSV, TSV or JSONL source, not {fmt}")
        rows = _READERS[fmt](text, name, column=column, filter=filter or {})
    return _clean(name, rows)


def _detect(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "coco"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    if suffix == ".csv":
        return "csv"
    if suffix in (".txt", ".text", ""):
        return "txt"
    raise InputError(f"{path}: cannot tell the format from the suffix {suffix!r}; pass --format")


def _text_rows(text: str, name: str, **_: object) -> Iterator[tuple[str, str]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        yield f"{name}:line {lineno}", line


def _coco_rows(text: str, name: str, **_: object) -> Iterator[tuple[str, str]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise InputError(f"{name}: JSON nested too deeply") from None
    anns = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(anns, list):
        raise InputError(f"{name}: not a COCO captions file (no 'annotations' list)")
    for i, ann in enumerate(anns):
        where = f"{name}:annotation {ann.get('id', i) if isinstance(ann, dict) else i}"
        caption = ann.get("caption") if isinstance(ann, dict) else None
        yield where, caption if isinstance(caption, str) else ""


def _pick_column(columns: list[str] | None, column: str | None, name: str) -> str:
    columns = [c for c in (columns or []) if c is not None]
    if column:
        if column not in columns:
            raise InputError(f"{name}: no column {column!r}; columns are {', '.join(columns)}")
        return column
    for cand in DEFAULT_COLUMNS:
        if cand in columns:
            return cand
    raise InputError(f"{name}: no caption column found among {', '.join(columns)}; pass --column")


def _delimited_rows(text: str, name: str, delimiter: str, column: str | None,
                    filter: dict[str, str]) -> Iterator[tuple[str, str]]:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        fieldnames = reader.fieldnames
    except csv.Error as exc:
        raise InputError(f"{name}:1: malformed header ({exc})") from None
    col = _pick_column(fieldnames, column, name)
    for fcol in filter:
        _pick_column(fieldnames, fcol, name)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{name}:{start}: malformed row ({exc}); an unclosed quote?") from None
        if reader.line_num > start:
            raise InputError(f"{name}:{start}: a quoted cell runs on to line {reader.line_num}; "
                             "an unclosed quote? (a caption row is one line)")
        if all((row.get(k) or "").strip() == v for k, v in filter.items()):
            caption = row.get(col) or ""
            if quoting != csv.QUOTE_NONE:  # a CSV exported by this package escapes formula-like cells
                caption = from_spreadsheet_cell(caption)
            yield f"{name}:line {start}", caption


def _csv_rows(text, name, *, column=None, filter=None):
    return _delimited_rows(text, name, ",", column, filter or {})


def _tsv_rows(text, name, *, column=None, filter=None):
    return _delimited_rows(text, name, "\t", column, filter or {})


def _jsonl_rows(text: str, name: str, *, column: str | None = None,
                filter: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    col = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{name}:{lineno}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise InputError(f"{name}:{lineno}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise InputError(f"{name}:{lineno}: expected a JSON object per line")
        if col is None:
            col = _pick_column(list(obj), column, name)
        if all(_scalar_text(obj.get(k, "")) == v for k, v in (filter or {}).items()):
            value = obj.get(col)
            yield f"{name}:line {lineno}", value if isinstance(value, str) else ""


def _scalar_text(value: object) -> str | None:
    """A JSON scalar as the text a filter compares; lists and objects match no filter."""
    return None if isinstance(value, (list, dict)) else str(value).strip()


_READERS = {"coco": _coco_rows, "csv": _csv_rows, "tsv": _tsv_rows, "jsonl": _jsonl_rows, "txt": _text_rows}


def _clean(name: str, rows) -> CaptionSet:
    out = CaptionSet(source=name, captions=[])
    seen: dict[str, str] = {}
    for where, raw in rows:
        text = " ".join(raw.split())
        bad = control_char(text)
        if not text:
            out.warnings.append(f"{where}: empty caption skipped")
        elif bad:
            out.warnings.append(f"{where}: caption with the control character {bad} skipped")
        elif len(text) > MAX_CAPTION_CHARS:
            out.warnings.append(f"{where}: caption of {len(text)} characters skipped "
                                f"(over {MAX_CAPTION_CHARS})")
        elif text.lower() in seen:
            out.warnings.append(f"{where}: duplicate of {seen[text.lower()]} skipped")
        else:
            seen[text.lower()] = where
            out.captions.append(Caption(id=where, text=text))
    if not out.captions:
        raise InputError(f"{name}: no usable captions"
                         + (f" ({len(out.warnings)} skipped: {out.warnings[0]} ...)" if out.warnings else ""))
    return out
