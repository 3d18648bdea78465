"""Users' text in and out: reading files with errors that name the file (and the line of undecodable
bytes), finding control characters, and making text cells safe to open in a spreadsheet."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, BinaryIO

from .errors import InputError


def open_input(path: Path, what: str) -> BinaryIO:
    """``path`` opened for reading bytes, or an InputError naming it (missing, a folder, no permission)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise InputError(f"{what} {path}: permission denied") from None


def read_text(path: str | Path, what: str, *, allow_empty: bool = False) -> str:
    """A UTF-8 file's text (a BOM is dropped), or an InputError saying what is wrong with it."""
    path = Path(path)
    with open_input(path, what) as fh:
        raw = fh.read()
    if not allow_empty and not raw.strip():
        raise InputError(f"{what} {path} is empty")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: bytes that are not UTF-8 ({exc.reason} at byte {exc.start}); "
                         "re-save the file as UTF-8") from None


def control_char(text: str) -> str | None:
    """The first control character in ``text`` other than tab, newline and carriage return, written
    as U+XXXX (e.g. a NUL byte, a terminal escape), or None. Such characters never belong in a prompt."""
    found = _CONTROL.search(text)
    return f"U+{ord(found.group()):04X}" if found else None


# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F; tab, newline and carriage return are allowed.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


# OWASP "CSV injection": a cell starting with one of these is run as a formula by spreadsheets.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)", re.IGNORECASE)


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: a string starting with =, +, -, @, tab or carriage
    return gets a leading single quote (OWASP's convention). Numbers, and strings that are just a
    signed number such as ``-0.5``, stay as they are, so they still read as numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def from_spreadsheet_cell(text: str) -> str:
    """The inverse of ``spreadsheet_safe`` for CSV cells read back, so an exported CSV imports exactly."""
    if text.startswith("'") and spreadsheet_safe(text[1:]) == text:
        return text[1:]
    return text


def json_line(line: str, where: str) -> Any:
    """One line of a JSONL file parsed, or an InputError naming ``where`` (file and line)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply") from None


def jsonl_objects(text: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    """The objects of a JSONL text as (``"<name>:line N"``, object); blank lines skipped. A line that is
    not JSON, or not a JSON object, is an InputError naming it."""
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        obj = json_line(line, f"{name}:line {n}")
        if not isinstance(obj, dict):
            raise InputError(f"{name}:line {n}: not a JSON object")
        rows.append((f"{name}:line {n}", obj))
    return rows
