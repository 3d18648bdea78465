"""Caption sources: the built-in set, COCO captions JSON, CSV/TSV (e.g. PartiPrompts), JSONL, text.

Problems with single captions (empty, duplicate, over 10,000 characters, a control character such
as a NUL byte) are counted warnings that name the file and line; problems with the whole source
(missing, empty, undecodable, no such column, a malformed CSV row) are errors.

CSV follows RFC 4180 quoting, read strictly: a quoted cell may not run over several lines, since
such a cell is almost always an unclosed quote that swallowed the rows after it. TSV is plain
tab-separated text as in PartiPrompts: quotes are ordinary characters.

A source is streamed (``open_captions``): read once to count, check and de-duplicate its captions, then
once more as the prompt stage goes through them, a line at a time, so a large caption file never sits in
memory (a COCO JSON file is one document and is parsed whole on each read).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import InputError
from ..textio import control_char, from_spreadsheet_cell, json_line, open_input

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
    """Read, clean and de-duplicate the captions of a source, all at once."""
    stream = open_captions(source, format=format, column=column, filter=filter)
    return CaptionSet(source=stream.source, captions=list(stream), warnings=stream.warnings)


def open_captions(source: str, *, format: str = "auto", column: str | None = None,
                  filter: dict[str, str] | None = None) -> "CaptionStream":
    """A source's cleaned, de-duplicated captions as a stream: this reads it once to count them and
    collect the warnings (and raises for an unusable source); iterating reads it again."""
    if source == BUILTIN:
        text = resources.files("aesthetic_audit.prompts").joinpath("data/captions.txt").read_text("utf-8")
        name = "builtin"

        def rows() -> Iterator[tuple[str, str]]:
            return _text_rows(text.splitlines(keepends=True), name)
    else:
        path = Path(source)
        _check_text_file(path, "caption source")
        fmt = _detect(path) if format == "auto" else format
        name = path.name
        if filter and fmt in ("coco", "txt"):
            raise InputError(f"{path}: a filter needs a CSV, TSV or JSONL source, not {fmt}")
        reader = _READERS[fmt]

        def rows() -> Iterator[tuple[str, str]]:
            return reader(_lines(path), name, column=column, filter=filter or {})
    return CaptionStream(name, rows)


def _check_text_file(path: Path, what: str) -> None:
    """The checks ``textio.read_text`` makes (exists, a file, readable, not blank, UTF-8), with the same
    messages, reading a megabyte at a time."""
    fh = open_input(path, what)
    offset, lines, blank, tail = 0, 0, True, b""  # tail: a character cut by the chunk's end
    with fh:
        while True:
            chunk = fh.read(1 << 20)
            data = tail + chunk
            try:
                used = codecs.utf_8_decode(data, "strict", not chunk)[1]
            except UnicodeDecodeError as exc:
                line = lines + data[:exc.start].count(b"\n") + 1
                raise InputError(f"{path}:{line}: bytes that are not UTF-8 ({exc.reason} at byte "
                                 f"{offset + exc.start}); re-save the file as UTF-8") from None
            blank = blank and not chunk.strip()
            lines += data[:used].count(b"\n")
            offset += used
            tail = data[used:]
            if not chunk:
                break
    if blank:
        raise InputError(f"{what} {path} is empty")


def _lines(path: Path) -> Iterator[str]:
    """A checked UTF-8 file's lines, each ending in its \\n (a BOM dropped): what iterating over the
    decoded text in a StringIO gives, without holding the text."""
    with open(path, "rb") as fh:
        first = True
        for line in fh:
            yield line.decode("utf-8-sig" if first else "utf-8")
            first = False


def _detect(path: Path) -> str:
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


def _split_lines(lines: Iterable[str]) -> Iterator[str]:
    """The lines ``str.splitlines`` finds in the text the chunks ``lines`` make up (each chunk ends at a
    \\n, so no line break spans two chunks)."""
    for chunk in lines:
        yield from chunk.splitlines()


def _text_rows(lines: Iterable[str], name: str, **_: object) -> Iterator[tuple[str, str]]:
    lineno = 0
    for chunk in lines:
        for line in chunk.splitlines():
            lineno += 1
            yield f"{name}:line {lineno}", line


def _coco_rows(lines: Iterable[str], name: str, **_: object) -> Iterator[tuple[str, str]]:
    try:
        doc = json.loads("".join(lines))
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


def _delimited_rows(lines: Iterable[str], name: str, delimiter: str, column: str | None,
                    filter: dict[str, str]) -> Iterator[tuple[str, str]]:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(lines, delimiter=delimiter, quoting=quoting, strict=True)
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


def _csv_rows(lines, name, *, column=None, filter=None):
    return _delimited_rows(lines, name, ",", column, filter or {})


def _tsv_rows(lines, name, *, column=None, filter=None):
    return _delimited_rows(lines, name, "\t", column, filter or {})


def _jsonl_rows(lines: Iterable[str], name: str, *, column: str | None = None,
                filter: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    col = None
    for lineno, line in enumerate(_split_lines(lines), start=1):
        if not line.strip():
            continue
        obj = json_line(line, f"{name}:{lineno}")
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


# The control characters (Unicode category Cc: U+0000-001F, U+007F-009F) that control_char reports: a
# regular expression finds out at C speed whether a caption has one, and control_char then names it.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _problem(text: str) -> str | None:
    """Why a cleaned caption is skipped (the warning's text after its location), or None."""
    if not text:
        return "empty caption skipped"
    bad = control_char(text) if _CONTROL.search(text) else None
    if bad:
        return f"caption with the control character {bad} skipped"
    if len(text) > MAX_CAPTION_CHARS:
        return f"caption of {len(text)} characters skipped (over {MAX_CAPTION_CHARS})"
    return None


def text_digest(text: str) -> bytes:
    """The 16-byte digest ``CaptionStream.digests`` holds for a caption's text."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _folded_digest(text: str) -> bytes:
    """A 16-byte digest of a caption's case-folded text: duplicates are found by it, so only the digest
    of each caption is held, not its text (a collision is as unlikely as one between the run's keys)."""
    return hashlib.blake2b(text.lower().encode("utf-8"), digest_size=16).digest()


class CaptionStream:
    """The usable captions of a source: ``count`` of them, ``warnings`` for those skipped, iterated in
    source order as ``Caption``s. Built from ``rows``, which reads the source anew on every call.
    ``digests`` holds each usable caption's ``text_digest``, in order, so that a stage can tell which
    captions it has done without reading the source a second time."""

    def __init__(self, source: str, rows: Callable[[], Iterator[tuple[str, str]]]):
        self.source, self._rows = source, rows
        self.warnings: list[str] = []
        self.digests = bytearray()
        self._kept = bytearray()  # one flag per row: a usable caption, first of its text
        seen: set[bytes] = set()
        duplicates: list[tuple[int, bytes, str]] = []  # (warning index, digest, where): see _name_firsts
        blake2b = hashlib.blake2b  # the loop runs once per row of the source: keep lookups out of it
        for where, raw in rows():
            text = " ".join(raw.split())
            problem = _problem(text)
            if problem is None:
                folded = blake2b(text.lower().encode("utf-8"), digest_size=16).digest()  # _folded_digest
                if folded in seen:
                    duplicates.append((len(self.warnings), folded, where))
                    problem = "duplicate"
                else:
                    seen.add(folded)
                    self.digests += blake2b(text.encode("utf-8"), digest_size=16).digest()  # text_digest
            if problem:
                self.warnings.append(f"{where}: {problem}")
            self._kept.append(problem is None)
        del seen
        self.count = sum(self._kept)
        if duplicates:
            self._name_firsts(duplicates)
        if not self.count:
            raise InputError(f"{source}: no usable captions" + (
                f" ({len(self.warnings)} skipped: {self.warnings[0]} ...)" if self.warnings else ""))

    def _name_firsts(self, duplicates: list[tuple[int, bytes, str]]) -> None:
        """Write each duplicate's warning, naming where its text first appeared: found by reading the
        source again, since only the digests of the texts were kept."""
        wanted: dict[bytes, list[tuple[int, str]]] = {}
        for i, digest, where in duplicates:
            wanted.setdefault(digest, []).append((i, where))
        for (first, raw), kept in zip(self._rows(), self._kept):
            if not wanted:
                return
            if kept:
                for i, where in wanted.pop(_folded_digest(" ".join(raw.split())), ()):
                    self.warnings[i] = f"{where}: duplicate of {first} skipped"

    def __iter__(self) -> Iterator[Caption]:
        kept = iter(self._kept)
        for where, raw in self._rows():
            flag = next(kept, None)
            if flag is None:
                break
            if flag:
                yield Caption(id=where, text=" ".join(raw.split()))
        else:
            if next(kept, None) is None:
                return
        raise InputError(f"{self.source}: changed while it was being read; run the stage again")
