"""Canonical JSON and the content hashes that key every record in a run."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal specs give equal bytes."""
    return _ENCODER.encode(obj)


def _default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "__fspath__"):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"cannot hash object of type {type(obj).__name__}")


# What json.dumps builds on every call with these arguments, built once (the same bytes; a third of the
# cost of storing a small record was the encoder's construction).
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def spec_hash(obj: Any) -> str:
    """SHA-256 hex digest of an object's canonical JSON: the cache key of a record."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def bytes_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
