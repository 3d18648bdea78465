"""A prompt-blind "conventional aesthetics" score from the classical judge, offline and weight-free.

score = 5 x mean of the classical judge's J over the dimensions it covers, so it lies in [0, 10]
like a LAION-style aesthetic predictor: 10 means sharp, well exposed, harmonious, contrasty and
finely detailed; an image that obeys an anti-aesthetic request on any of those axes scores lower.
It is the no-download stand-in for a learned, prompt-blind reward model.
"""

from __future__ import annotations

from typing import Any, ClassVar

from PIL import Image

from ..judges.classical import ClassicalJudge
from ..registry import register
from .base import Scorer, ScoreResult


@register("scorers")
class CompositeAesthetics(Scorer):
    name: ClassVar[str] = "composite"
    description: ClassVar[str] = "5 x mean classical-judge J over clarity, brightness, colour, lighting and detail"
    higher_is_better: ClassVar[bool] = True
    score_range: ClassVar[tuple[float | None, float | None]] = (0.0, 10.0)
    prompt_aware: ClassVar[bool] = False
    version: ClassVar[str] = "1"

    def __init__(self, judge: ClassicalJudge | None = None, **options: Any):
        super().__init__(**options)
        # Injectable so a caller can share one judge (and its settings) with the judge stage.
        self.judge = judge if judge is not None else ClassicalJudge()

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "judge": self.judge.identity()}

    def _score(self, items: list[tuple[Image.Image | BaseException | None, str | None]]) -> list[ScoreResult]:
        dims = self.judge.covers
        judged = self.judge.judge([img for img, _ in items], dims)
        results = []
        for (img, _), res in zip(items, judged):
            values = [res.scores.get(d) for d in dims]
            if res.error is not None or any(v is None for v in values):
                results.append(ScoreResult(None, error=res.error or "the classical judge returned no score"))
                continue
            results.append(ScoreResult(5.0 * sum(values) / len(values), extra={"J": dict(res.scores)}))
        return results
