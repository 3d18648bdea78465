"""The scorer protocol: a batch of (image, prompt) in, one result per item out.

What a caller needs to read a score lives on the class: ``higher_is_better``, ``score_range``,
``prompt_aware``, ``reward_model``, ``max_prompt_tokens``. Constructing a scorer loads nothing;
``load()`` (called on first use) does. ``identity()`` is what goes into every record key: change the
weights, the preprocessing version or an option that changes numbers, and the key changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar, Sequence

from PIL import Image


def package_version(dist: str) -> str | None:
    """The installed version of a distribution (for scorers whose weights ship inside a package)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class ScoreResult:
    score: float | None
    error: str | None = None
    tokens: int | None = None
    truncated: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.score is not None


class Scorer:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    score_range: ClassVar[tuple[float | None, float | None]] = (None, None)
    prompt_aware: ClassVar[bool] = True
    # A preference or quality model whose higher score means "better image": the analysis runs the
    # reward-model test on it. False for scorers that measure something else (a safety classifier).
    reward_model: ClassVar[bool] = True
    max_prompt_tokens: ClassVar[int | None] = None
    version: ClassVar[str] = "1"
    extra: ClassVar[str | None] = None  # the pip extra its dependencies come from

    def __init__(self, **options: Any):
        self.options = options
        self._loaded = False

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "options": self.options}

    def load(self) -> "Scorer":
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def _load(self) -> None:
        """Load weights; subclasses override. Nothing heavy may happen before this."""

    def score(self, items: Sequence[tuple[Image.Image, str | None]]) -> list[ScoreResult]:
        """Score a batch. A bad item gets a result with ``error`` set; it never fails the batch."""
        self.load()
        return self._score(list(items))

    def _score(self, items: list[tuple[Image.Image, str | None]]) -> list[ScoreResult]:
        raise NotImplementedError
