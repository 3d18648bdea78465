"""Read VisionReward's guideline file as a judging rubric.

The file is a CSV with the columns Dimension, Option, Score, Description. Dimension holds a display
name with the key in parentheses, e.g. ``Overall Clarity (clarity)``, and is filled down: an empty
cell belongs to the dimension above it. Score is an integer whose sign gives the rubric level
(negative -> 0 anti-aesthetic, zero -> 1 neutral, positive -> 2 conventional), the mapping the study
uses for its targets: level = sign(score) + 1.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ..errors import InputError
from ..textio import read_text

_HEADER = ("Dimension", "Option", "Score", "Description")
_NAME_KEY = re.compile(r"^(?P<name>.*?)\s*\((?P<key>[^()]+)\)\s*$")


def load_visionreward_rubric(path: str | Path) -> dict[str, dict]:
    """Return ``{key: {"name": display name, "rubric": {0: text, 1: text, 2: text}, "options": [...]}}``.

    Options sharing a level are joined one per line, ``Option: Description``. A level with no option
    in the file gets an empty string so a judge can still ask for all three. ``options`` keeps every row
    in file order as ``{"option", "score", "level", "description"}``: the study's judge prompt lists the
    options one by one, so a published judge needs them as the file has them.
    """
    path = Path(path)
    text = read_text(path, "VisionReward guideline file")
    reader = csv.DictReader(io.StringIO(text, newline=""))  # keeps newlines inside quoted cells
    if reader.fieldnames is None or any(col not in reader.fieldnames for col in _HEADER):
        raise InputError(f"{path}: expected columns {', '.join(_HEADER)}; found {reader.fieldnames}")
    out: dict[str, dict] = {}
    levels: dict[str, dict[int, list[str]]] = {}
    current: str | None = None
    for lineno, row in enumerate(reader, start=2):
        cell = (row["Dimension"] or "").strip()
        if cell:
            m = _NAME_KEY.match(cell)
            if not m:
                raise InputError(f"{path}:{lineno}: Dimension {cell!r} has no '(key)' after its name")
            current = m["key"].strip()
            out.setdefault(current, {"name": m["name"].strip()})
            levels.setdefault(current, {0: [], 1: [], 2: []})
        if current is None:
            raise InputError(f"{path}:{lineno}: the first row must name a Dimension")
        try:
            score = int(str(row["Score"]).strip())
        except ValueError:
            raise InputError(f"{path}:{lineno}: Score {row['Score']!r} is not an integer") from None
        level = (score > 0) - (score < 0) + 1
        option, desc = (row["Option"] or "").strip(), (row["Description"] or "").strip()
        out[current].setdefault("options", []).append(
            {"option": option, "score": score, "level": level, "description": desc})
        levels[current][level].append(f"{option}: {desc}" if option and desc else option or desc)
    if not out:
        raise InputError(f"{path}: no rows")
    for key, by_level in levels.items():
        out[key]["rubric"] = {lvl: "\n".join(lines) for lvl, lines in by_level.items()}
    return out
