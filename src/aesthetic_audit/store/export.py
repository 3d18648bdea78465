"""Export a stage's records to Parquet, CSV or JSONL. Exports are derived; the database is the truth.

Rows are sorted stably (by the record's ``index`` when it has one, then item, then key), so the
same records always export to the same bytes. A file is written whole to a temporary file and then
renamed over the target, so a killed export or a full disk leaves the previous export in place.

CSV is for spreadsheets: a text cell that a spreadsheet would run as a formula (starting with =, +,
-, @, tab or carriage return) is written with a leading single quote. Parquet and JSONL are data
formats and keep every value exactly as stored.

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
