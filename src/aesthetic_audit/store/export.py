"""Export a stage's records to Parquet, CSV or JSONL. Exports are derived; the database is the truth.

Rows are sorted stably (by the record's ``index`` when it has one, then item, then key), so the
same records always export to the same bytes. A file is written whole to a temporary file and then
renamed over the target, so a killed export or a full disk leaves the previous export in place.

CSV is for spreadsheets: a text cell that a spreadsheet would run as a formula (starting with =, +,
-, @, tab or carriage return) is written with a leading single quote. Parquet and JSONL are data
formats and keep every value exactly as stored.

The ``generate`` layout (prompts only) is for rendering a run's prompt pairs elsewhere: one row per ok
prompt pair with ``pair_id``, ``p_o``, ``p_a``, ``dims``, ``file_o`` and ``file_a``, the file names the
images should get, from a template with ``{pair_id}``, ``{side}`` (o or a) and ``{index}`` (the row's
position from 0; format specs work: ``{index:04d}``). The default ``{pair_id}_{side}.png`` names can be
imported as a plain folder; any names import through this file itself, as a manifest (its ``file_o``,
``file_a`` columns are image paths, ``pair_id`` links each pair to its prompt record).

Prompt records carry an ``origin`` column in every layout: ``captions`` (the prompt stage),
``editor`` (the edit stage's prompts, one per photo and draw) or ``import`` (pairs imported with
``prompts --import``); ``origin=`` keeps one of them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import InputError
from ..records import ORIGINS, PROMPTS, prompt_origin
from ..textio import spreadsheet_safe
from .run import Record, RunStore, atomic_write, atomic_write_text

FORMATS = ("parquet", "csv", "jsonl")


def record_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        row = {"key": r.key, "stage": r.stage, "item": r.item, "status": r.status, "error": r.error}
        row.update({k: v for k, v in r.data.items() if k not in row})
        rows.append(row)
    rows.sort(key=lambda row: (row.get("index") if isinstance(row.get("index"), int) else -1,
                               row["item"], row["key"]))
    return rows


def write_rows(rows: list[dict[str, Any]], path: str | Path, fmt: str | None = None) -> Path:
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise InputError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if fmt == "jsonl":
        atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        return path
    flat = [{c: _flat(row.get(c)) for c in columns} for row in rows]
    if fmt == "csv":
        buf = io.StringIO(newline="")
        writer = csv.writer(buf)
        writer.writerow([spreadsheet_safe(c) for c in columns])
        writer.writerows([spreadsheet_safe(row[c]) for c in columns] for row in flat)
        atomic_write_text(path, buf.getvalue())
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(flat) if flat else pa.table({c: [] for c in columns}), sink)
        atomic_write(path, sink.getvalue().to_pybytes())
    return path


def _flat(value: Any) -> Any:
    """Nested values become JSON strings in tabular formats (JSONL keeps them nested)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value


def generate_layout(template: str) -> Callable[[list[dict]], list[dict]]:
    """The ``generate`` layout with file names from ``template``; InputError when the template is not one
    that gives every pair and side its own name."""
    def name(pair_id: str, side: str, index: int) -> str:
        try:
            return template.format(pair_id=pair_id, side=side, index=index)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise InputError(f"--template {template!r}: {exc!r}; use {{pair_id}}, {{side}} and {{index}}") from None

    a, b = name("p1", "o", 1), name("p2", "a", 2)
    if len({a, b, name("p1", "a", 1), name("p2", "o", 2)}) < 4 or "/" in a + b or "\\" in a + b:
        raise InputError(f"--template {template!r} must give each pair and side its own file name, without "
                         "folders: use {side} and {pair_id} or {index}, e.g. {pair_id}_{side}.png")

    def layout(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ok = [r for r in rows if r.get("status") == "ok"]
        return [{"pair_id": r["key"], "p_o": r["p_o"], "p_a": r["p_a"], "dims": r["dims"],
                 "file_o": name(r["key"], "o", i), "file_a": name(r["key"], "a", i), "origin": r["origin"]}
                for i, r in enumerate(ok)]

    return layout


def export_stage(store: RunStore, stage: str, path: str | Path, fmt: str | None = None, *,
                 include_failed: bool = True, layout: Callable[[list[dict]], list[dict]] | None = None,
                 origin: str | None = None) -> Path:
    """Write the stage's records to ``path``; ``origin`` (prompts only) keeps the prompts of one origin."""
    if origin is not None and (stage != PROMPTS or origin not in ORIGINS):
        raise InputError(f"an origin filter applies to the prompts stage and is one of {', '.join(ORIGINS)}; "
                         f"got {origin!r} for stage {stage!r}")
    rows = record_rows(store.records(stage, status=None if include_failed else "ok"))
    if stage == PROMPTS:
        # Always the last column, also for records stored before the field existed.
        rows = [{**{k: v for k, v in row.items() if k != "origin"}, "origin": prompt_origin(row)} for row in rows]
        if origin is not None:
            rows = [row for row in rows if row["origin"] == origin]
    if layout is not None:
        rows = layout(rows)
    return write_rows(rows, path, fmt)
