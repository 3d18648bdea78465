"""Prompt pairs in and out: the study's published column layout and the project's own.

The study's layout has ``original_prompt``, ``disorted_long_prompt`` (spelled so in the published
data) and ``selected`` (a list of dimension keys; in CSV a JSON or Python list literal). The
project's own layout has ``p_o``, ``p_a`` and ``dims``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..dimensions import Catalogue, parse_dims
from ..errors import InputError
from ..records import PROMPTS, failed_item_key, prompt_key
from ..stage import StageSummary
from ..store import Record, RunStore
from ..textio import read_text
from .rewriters.base import word_count

STUDY = ("original_prompt", "disorted_long_prompt", "selected")
OWN = ("p_o", "p_a", "dims")


def study_layout(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Export rows of prompt records in the study's layout (ok records only)."""
    return [{"original_prompt": r["p_o"], "disorted_long_prompt": r["p_a"], "selected": r["dims"]}
            for r in rows if r.get("status") == "ok"]


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        if not path.is_file():
            raise InputError(f"prompt pairs file {path} does not exist")
        return [(f"{path.name}:row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    text = read_text(path, "prompt pairs file")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        out = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    out.append((f"{path.name}:line {lineno}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        return out
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    return [(f"{path.name}:line {i + 2}", row) for i, row in enumerate(reader)]


def import_prompt_pairs(store: RunStore, path: str | Path, catalogue: Catalogue) -> StageSummary:
    """Import pairs as prompt records; a row with a missing prompt or unknown dimension fails alone."""
    path = Path(path)
    rows = _rows(path)
    summary = StageSummary(PROMPTS, total=len(rows))
    for index, (where, row) in enumerate(rows):
        cols = STUDY if "original_prompt" in row else OWN
        p_o, p_a = (str(row.get(cols[0]) or "").strip(), str(row.get(cols[1]) or "").strip())
        failed_key = failed_item_key(PROMPTS, path.name, where)
        try:
            if not p_o or not p_a:
                raise InputError(f"{where}: missing {cols[0] if not p_o else cols[1]}")
            try:
                dims = parse_dims(row.get(cols[2]))
            except InputError as exc:
                raise InputError(f"{where}: {exc}") from None
            unknown = [d for d in dims if d not in catalogue]
            if unknown:
                raise InputError(f"{where}: unknown dimension {', '.join(map(repr, unknown))}; "
                                 "add it in a dimensions file")
        except InputError as exc:
            store.put(Record.failed(failed_key, PROMPTS, where, str(exc), index=index))
            summary.failed += 1
            continue
        # An imported pair is its content: the same (p_o, p_a, dims) from another file or row is the same pair.
        key = prompt_key(caption=p_o, effects=dims, rewriter={"name": "import", "p_a": p_a}, max_words=0, seed=None)
        store.discard_failed([failed_key])
        data = {"pair_id": key, "index": index, "source": path.name, "caption_id": where, "p_o": p_o,
                "p_a": p_a, "dims": dims, "rewriter": "import", "seed": None, "words": word_count(p_a)}
        if store.put(Record(key, PROMPTS, where, data)):
            summary.new += 1
        else:
            summary.cached += 1
    return summary
