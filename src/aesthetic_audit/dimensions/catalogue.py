"""Load the dimension catalogue (``data/dimensions.yaml``) and merge a user's YAML file over it.

A user file has the same shape as the built-in one::

    dimensions:
      - key: pixelated            # a new dimension: every field is required
        name: Pixelation
        conventional: smooth, full-resolution detail
        anti: coarse square blocks, like a low-resolution image blown up
        rubric: {0: ..., 1: ..., 2: ...}
        phrasings: [blocky oversized pixels, ...]
        editor: [pixelation]
      - key: clarity              # an existing one: only the fields given are replaced
        phrasings: [a smeared, unfocused haze]

``conflicts`` (optional) names dimensions whose anti-aesthetic pole contradicts this one's, such as
an empty scene and a cluttered background: the prompt stage never draws them into one prompt.
"""

from __future__ import annotations

import ast
import json
import math
import reprlib

from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError, InputError
from ..textio import read_text

LEVELS = (0, 1, 2)


class Dimension(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(pattern=r"^[a-z][a-z0-9 _-]*$", description="lower-case key, as in the study's data")
    name: str = Field(description="display name (VisionReward's wording where it has one)")
    study: bool = Field(False, description="one of the 11 dimensions of the study's prompt set")
    conventional: str = Field(description="what conventional aesthetics rewards on this axis")
    anti: str = Field(description="what a user asking for the anti-aesthetic pole wants to see")
    rubric: dict[int, str] = Field(description="judging rubric: 0 anti-aesthetic, 1 neutral, 2 conventional")
    phrasings: tuple[str, ...] = Field(min_length=1, description="noun phrases naming the anti-aesthetic effect")
    editor: tuple[str, ...] = Field((), description="editor transforms that realise the effect on a photo")
    conflicts: tuple[str, ...] = Field((), description="dimensions whose anti-aesthetic pole contradicts this "
                                       "one's (a cluttered background and an empty scene); a prompt never "
                                       "asks for both. Symmetric: listing it on one side is enough")

    @field_validator("rubric")
    @classmethod
    def _three_levels(cls, v: dict[int, str]) -> dict[int, str]:
        if sorted(v) != list(LEVELS):
            raise ValueError(f"rubric needs exactly the levels 0, 1, 2; got {sorted(v)}")
        return v


class Catalogue:
    """An ordered, read-only mapping from key to Dimension."""

    def __init__(self, dims: Iterable[Dimension]):
        self._dims = {d.key: d for d in dims}

    def __getitem__(self, key: str) -> Dimension:
        try:
            return self._dims[key]
        except KeyError:
            raise ConfigError(f"unknown dimension {key!r}; known: {', '.join(self._dims)}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._dims

    def __iter__(self):
        return iter(self._dims.values())

    def __len__(self) -> int:
        return len(self._dims)

    def keys(self) -> list[str]:
        return list(self._dims)

    @property
    def study_keys(self) -> list[str]:
        return [d.key for d in self if d.study]

    def conflicts(self) -> dict[str, frozenset[str]]:
        """Key -> the keys it must not be drawn with, both directions of every declared conflict."""
        out: dict[str, set[str]] = {k: set() for k in self._dims}
        for d in self:
            for other in d.conflicts:
                out[d.key].add(other)
                out.setdefault(other, set()).add(d.key)
        return {k: frozenset(v) for k, v in out.items()}

    def select(self, keys: Iterable[str] | None) -> list[Dimension]:
        """The dimensions named, in the order given; the study's 11 when ``keys`` is None."""
        return [self[k] for k in (self.study_keys if keys is None else keys)]

    def with_rubrics(self, rubrics: dict[str, dict[int, str]]) -> "Catalogue":
        """A copy whose rubrics are replaced where ``rubrics`` has the key (e.g. VisionReward's)."""
        return Catalogue(
            d.model_copy(update={"rubric": rubrics[d.key]}) if d.key in rubrics else d for d in self
        )


def _read_yaml(path: Path | None, text: str | None = None) -> list[dict[str, Any]]:
    where = str(path) if path else "built-in catalogue"
    if text is None:
        text = read_text(path, "dimensions file")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"dimensions"} or not isinstance(doc["dimensions"], list):
        raise InputError(f"{where}: expected a mapping with one key 'dimensions' holding a list")
    for i, entry in enumerate(doc["dimensions"]):
        if not isinstance(entry, dict) or "key" not in entry:
            raise InputError(f"{where}: entry {i} must be a mapping with a 'key'")
    return doc["dimensions"]


def _build(entry: dict[str, Any], where: str) -> Dimension:
    try:
        return Dimension.model_validate(entry)
    except ValidationError as exc:
        raise InputError(f"{where}: dimension {entry.get('key')!r}: {exc}") from None


def load_catalogue(user_file: str | Path | None = None) -> Catalogue:
    """The built-in catalogue, with a user's YAML file merged over it when given."""
    text = resources.files("aesthetic_audit.dimensions").joinpath("data/dimensions.yaml").read_text("utf-8")
    merged: dict[str, dict[str, Any]] = {e["key"]: e for e in _read_yaml(None, text)}
    if user_file is not None:
        for entry in _read_yaml(Path(user_file)):
            merged[entry["key"]] = {**merged.get(entry["key"], {}), **entry}
    where = str(user_file) if user_file else "built-in catalogue"
    catalogue = Catalogue(_build(entry, where) for entry in merged.values())
    for d in catalogue:
        bad = [k for k in d.conflicts if k not in catalogue or k == d.key]
        if bad:
            raise InputError(f"{where}: dimension {d.key!r}: conflicts names {', '.join(map(repr, bad))}, "
                             "which is not another dimension")
    return catalogue


def parse_dims(value: Any) -> list[str]:
    """A list of dimension keys from a list, a JSON or Python list literal, or a ';'-separated string.

    Published prompt sets write the list as JSON or as Python's ``str(list)``; empty and missing
    values (None, NaN) are no dimensions. Raises ``InputError`` for anything else.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                value = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                try:
                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise InputError(f"dims {reprlib.repr(text)} is neither a JSON list of names "
                                     "nor ';'-separated") from None
        else:
            value = text.split(";")
    # Checked before anything formats the value: a deeply nested list would overflow repr().
    if not isinstance(value, (list, tuple)) or not all(isinstance(d, str) for d in value):
        raise InputError(f"dims {reprlib.repr(value)} must be a flat list of dimension names")
    return [d.strip() for d in value if d.strip()]
