"""Export a stage's records to Parquet, CSV or JSONL. Exports are derived; the database is the truth.

Rows are sorted stably (by the record's ``index`` when it has one, then item, then key), so the
same records always export to the same bytes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import InputError
from .run import Record, RunStore

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
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
        return path
    flat = [{c: _flat(row.get(c)) for c in columns} for row in rows]
    if fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(flat)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(flat) if flat else pa.table({c: [] for c in columns}), path)
    return path


def _flat(value: Any) -> Any:
    """Nested values become JSON strings in tabular formats (JSONL keeps them nested)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value


def export_stage(store: RunStore, stage: str, path: str | Path, fmt: str | None = None, *,
                 include_failed: bool = True, layout: Callable[[list[dict]], list[dict]] | None = None) -> Path:
    records = list(store.records(stage, status=None if include_failed else "ok"))
    rows = record_rows(records)
    if layout is not None:
        rows = layout(rows)
    return write_rows(rows, path, fmt)
