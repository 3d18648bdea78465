"""Reading users' text files with errors that name the file (and the line of undecodable bytes)."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError


def read_text(path: str | Path, what: str, *, allow_empty: bool = False) -> str:
    """A UTF-8 file's text (a BOM is dropped), or an InputError saying what is wrong with it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise InputError(f"{what} {path}: permission denied") from None
    if not allow_empty and not raw.strip():
        raise InputError(f"{what} {path} is empty")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: bytes that are not UTF-8 ({exc.reason} at byte {exc.start}); "
                         "re-save the file as UTF-8") from None
