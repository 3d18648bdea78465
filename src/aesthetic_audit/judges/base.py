"""The judge protocol: images in, per-dimension scores J(I, d) in [0, 2] out.

J = 0*P0 + 1*P1 + 2*P2 over the rubric levels (0 anti-aesthetic, 1 neutral, 2 conventional).
A judge declares which dimensions it covers; the others come back as None ("not judged").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from PIL import Image


@dataclass(frozen=True)
class JudgeResult:
    scores: dict[str, float | None]
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Judge:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    covers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any):
        self.options = options

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "options": self.options}

    def prepare(self, catalogue: Any, rubric_options: dict[str, list[dict[str, Any]]] | None = None) -> None:
        """Bind the dimension catalogue (and a guideline file's option rows) before judging; a judge
        that asks about rubrics uses them, others need nothing."""

    def describe(self) -> str:
        """What stands behind this judge's J, in a few words, for reports."""
        return self.description or self.name

    def load(self) -> None:
        """Load weights or open connections; called before the first batch that needs them."""

    def unload(self) -> None:
        """Free what ``load`` took."""

    def judge(self, images: Sequence[Image.Image], dims: Sequence[str]) -> list[JudgeResult]:
        raise NotImplementedError
