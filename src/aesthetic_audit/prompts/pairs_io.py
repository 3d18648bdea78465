"""Prompt pairs in and out: the study's published column layout and the project's own.

The study's layout has ``original_prompt``, ``disorted_long_prompt`` (spelled so in the published
data) and ``selected`` (a list of dimension keys; in CSV a JSON or Python list literal). The
project's own layout has ``p_o``, ``p_a`` and ``dims``. Exports in either layout add ``origin``
(captions, editor or import; see ``records.prompt_origin``); imports ignore it.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterator

from ..dimensions import Catalogue, parse_dims
from ..errors import InputError
from ..records import PROMPTS, failed_item_key, prompt_key, prompt_origin
from ..stage import StageSummary
from ..store import Record, RunStore
from ..textio import control_char, from_spreadsheet_cell, json_line, read_text
from .rewriters.base import word_count

STUDY = ("original_prompt", "disorted_long_prompt", "selected")
OWN = ("p_o", "p_a", "dims")


def study_layout(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Export rows of prompt records in the study's layout (ok records only), with their origin."""
    return [{"original_prompt": r["p_o"], "disorted_long_prompt": r["p_a"], "selected": r["dims"],
             "origin": prompt_origin(r)} for r in rows if r.get("status") == "ok"]


def _rows(path: Path) -> tuple[Iterator[tuple[str, Any]], int]:
    """The rows of a pairs file as (where, row), read lazily, and how many there are. A text file is read
    through once first to count its rows, which also refuses a malformed one before any row is stored."""
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not path.is_file():
            raise InputError(f"prompt pairs file {path} does not exist")
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"prompt pairs file {path} is not a readable Parquet file ({exc})") from None
        return _parquet_rows(path, parquet), parquet.metadata.num_rows
    text = read_text(path, "prompt pairs file")
    reader = _jsonl_rows if path.suffix.lower() in (".jsonl", ".ndjson") else _delimited_rows
    return reader(path, text), sum(1 for _ in reader(path, text))


def _parquet_rows(path: Path, parquet: Any) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa

    n = 0
    try:
        for batch in parquet.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield f"{path.name}:row {n}", row
                n += 1
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"prompt pairs file {path} is not a readable Parquet file ({exc})") from None


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield f"{path.name}:line {lineno}", json_line(line, f"{path}:{lineno}")


def _delimited_rows(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    # As for captions: TSV has no quoting; CSV is read strictly, so an unclosed quote is an error
    # instead of a cell that swallows the rows after it.
    tsv = path.suffix.lower() == ".tsv"
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if tsv else ",",
                            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL, strict=True)
    try:
        reader.fieldnames  # reads the header, so that line numbers below count from it
    except csv.Error as exc:
        raise InputError(f"{path}:1: malformed header ({exc})") from None
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{path}:{start}: malformed row ({exc}); an unclosed quote?") from None
        if not tsv:  # undo the export's spreadsheet escaping, so an exported CSV imports exactly
            row = {k: from_spreadsheet_cell(v) if isinstance(v, str) else v for k, v in row.items()}
        yield f"{path.name}:line {start}", row


def import_prompt_pairs(store: RunStore, path: str | Path, catalogue: Catalogue) -> StageSummary:
    """Import pairs as prompt records; a row with a missing prompt or unknown dimension fails alone.
    Rows stream and records are committed in chunks (``RunStore.writer``)."""
    path = Path(path)
    rows, total = _rows(path)
    summary = StageSummary(PROMPTS, total=total)
    failed_before = store.keys(PROMPTS, "failed")
    pending: set[str] = set()  # keys written since the last flush, which ``store.get`` cannot see yet
    with store.writer() as writer:
        for index, (where, row) in enumerate(rows):
            failed_key = failed_item_key(PROMPTS, path.name, where)
            try:
                if not isinstance(row, dict):
                    raise InputError(f"{where}: expected a JSON object")
                cols = STUDY if "original_prompt" in row else OWN
                p_o, p_a = (_prompt(row, cols[0], where), _prompt(row, cols[1], where))
                try:
                    dims = parse_dims(row.get(cols[2]))
                except InputError as exc:
                    raise InputError(f"{where}: {exc}") from None
                unknown = [d for d in dims if d not in catalogue]
                if unknown:
                    raise InputError(f"{where}: unknown dimension {', '.join(map(repr, unknown))}; "
                                     "add it in a dimensions file")
            except InputError as exc:
                writer.put(Record.failed(failed_key, PROMPTS, where, str(exc), index=index, origin="import"))
                summary.failed += 1
                continue
            # An imported pair is its content: the same (p_o, p_a, dims) from another file or row is the same pair.
            key = prompt_key(caption=p_o, effects=dims, rewriter={"name": "import", "p_a": p_a}, max_words=0,
                             seed=None)
            if failed_key in failed_before:
                store.discard_failed([failed_key])
            stored = store.get(key) if key not in pending else None
            if key in pending or (stored is not None and stored.status == "ok"):
                summary.cached += 1
                continue
            data = {"pair_id": key, "index": index, "origin": "import", "source": path.name, "caption_id": where,
                    "p_o": p_o, "p_a": p_a, "dims": dims, "rewriter": "import", "seed": None,
                    "words": word_count(p_a)}
            writer.put(Record(key, PROMPTS, where, data))
            summary.new += 1
            pending.add(key)
            if len(pending) >= writer.max_records:
                writer.flush()
                pending.clear()
    return summary


def _prompt(row: dict[str, Any], column: str, where: str) -> str:
    """A prompt cell as clean text; missing, non-text or control characters fail the row."""
    value = row.get(column)
    if isinstance(value, float) and math.isnan(value):  # an empty cell in a pandas-written file
        value = None
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{where}: missing {column}")
    if not isinstance(value, str):
        raise InputError(f"{where}: {column} must be text, not a {type(value).__name__}")
    bad = control_char(value)
    if bad:
        raise InputError(f"{where}: {column} contains the control character {bad}")
    return value.strip()
