"""A prompt-blind "conventional aesthetics" score from the classical judge, offline and weight-free.

score = 5 x mean of the classical judge's J over the dimensions it covers, so it lies in [0, 10]
like a LAION-style aesthetic predictor: 10 means sharp, well exposed, harmonious, contrasty and
finely detailed; an image that obeys an anti-aesthetic request on any of those axes scores lower.
It is the no-download stand-in for a learned, prompt-blind reward model.

The measurements are the classical judge's: where the judge stage has already judged an image with the
same judge (same identity, so the same statistics and anchors), the score is computed from that record's
J values (``stored_results``, which the score stage asks first) instead of measuring the image again.
The J values round-trip through the record's JSON exactly, so the score is the same to the last bit.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from PIL import Image

from ..judges.classical import ClassicalJudge
from ..records import JUDGE, judge_key_template
from ..registry import register
from ..stage import LOOKUP_CHUNK
from .base import Scorer, ScoreResult

if TYPE_CHECKING:
    from ..store import RunStore


@register("scorers")
class CompositeAesthetics(Scorer):
    name: ClassVar[str] = "composite"
    description: ClassVar[str] = "5 x mean classical-judge J over clarity, brightness, colour, lighting and detail"
    official: ClassVar[str] = "this project's offline stand-in for a reward model (no official counterpart)"
    score_scale: ClassVar[str] = "0-10: 5 x the mean of five J values in [0, 2]"
    parity: ClassVar[str] = "not applicable; the classical judge's measurements are tested against hand computations"
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
        judged = self.judge.judge([img for img, _ in items], self.judge.covers)
        return [self._result(res.scores, res.error) for res in judged]

    def _result(self, scores: Mapping[str, float | None], error: str | None = None) -> ScoreResult:
        """The score from the judge's J per covered dimension (``scores`` holds those, maybe more)."""
        values = [scores.get(d) for d in self.judge.covers]
        if error is not None or any(v is None for v in values):
            return ScoreResult(None, error=error or "the classical judge returned no score")
        return ScoreResult(5.0 * sum(values) / len(values), extra={"J": dict(scores)})

    def stored_results(self, store: RunStore, images: Sequence[str]) -> dict[str, ScoreResult]:
        """Results for those of ``images`` (SHA-256 ids of the run's images) that the judge stage has
        judged ok with this scorer's judge on every dimension it covers, from those records."""
        keys = judge_key_template(self.judge.identity(), self.judge.covers)
        by_key = {keys.hash(sha): sha for sha in images}
        wanted = list(by_key)
        out = {}
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            chunk = wanted[start:start + LOOKUP_CHUNK]
            # The whole record is parsed in Python, so each J is the float its JSON text says.
            rows = store.db.execute(f"SELECT key, stage, status, data FROM records "
                                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            for key, stage, status, data in rows:
                scores = json.loads(data).get("scores") if stage == JUDGE and status == "ok" else None
                if isinstance(scores, dict) and all(isinstance(scores.get(d), float) for d in self.judge.covers):
                    # The judge stage judged every catalogue dimension; the score reads the covered ones.
                    out[by_key[key]] = self._result({d: scores[d] for d in self.judge.covers})
        return out
