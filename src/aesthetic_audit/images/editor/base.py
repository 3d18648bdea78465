"""What an editor transform is, and how one is registered.

A transform takes an RGB image as float32 in [0, 1] with shape (H, W, 3), a strength in [0, 1]
(0 leaves the image unchanged, 1 is the strongest edit) and a numpy Generator, and returns the edited
image (same shape unless the transform says otherwise) and the parameters it used. It must be
deterministic given (image, strength, rng state). ``phrasings`` are noun phrases describing exactly
the effect (they follow "a photo with ..."); the template rewriter builds p_a from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ...registry import register

TransformFn = Callable[[np.ndarray, float, np.random.Generator], tuple[np.ndarray, dict[str, Any]]]


@dataclass(frozen=True)
class Transform:
    name: str
    dimension: str
    phrasings: tuple[str, ...]
    fn: TransformFn
    version: str = "1"
    description: str = ""

    def apply(self, image: np.ndarray, strength: float, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"transform {self.name}: strength {strength} is outside [0, 1]")
        out, params = self.fn(image, float(strength), rng)
        return np.clip(out, 0.0, 1.0).astype(np.float32), params

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}


def _first_sentence(doc: str) -> str:
    # Docstrings are reStructuredText; `ls transforms` and the report show plain text.
    text = re.sub(r":\w+:`([^`]*)`|``([^`]*)``|`([^`]*)`", lambda m: next(g for g in m.groups() if g is not None),
                  " ".join(doc.split()))
    return text.split(". ", 1)[0].rstrip(".") + "." if text else ""


def transform(name: str, dimension: str, phrasings: tuple[str, ...] | list[str], *, version: str = "1",
              description: str = "") -> Callable[[TransformFn], TransformFn]:
    """Register ``fn`` as the editor transform ``name`` realising ``dimension``."""

    def deco(fn: TransformFn) -> TransformFn:
        register("transforms", name)(Transform(name, dimension, tuple(phrasings), fn, version,
                                               description or _first_sentence(fn.__doc__ or "")))
        return fn

    return deco
