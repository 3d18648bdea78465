"""The composite, prompt-blind aesthetics score: 5 x the mean classical J."""

from __future__ import annotations

import numpy as np
import pytest

from aesthetic_audit import registry
from aesthetic_audit.images.decode import from_array
from aesthetic_audit.judges.classical import ClassicalJudge
from aesthetic_audit.scorers.base import Scorer
from aesthetic_audit.scorers.composite import CompositeAesthetics


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:96, 0:128] / 128.0
    gradient = np.stack([0.2 + 0.7 * xx, 0.25 + 0.6 * yy, 0.7 - 0.5 * xx], -1)
    photo = np.clip(gradient + rng.normal(0, 0.03, gradient.shape), 0, 1)
    dark = photo * 0.08
    blocky = np.kron(rng.random((12, 16, 3)), np.ones((8, 8, 1)))
    return [from_array(photo), from_array(dark), from_array(blocky)]


def test_registered_with_the_attributes_a_caller_needs():
    cls = registry.get("scorers", "composite")
    assert cls is CompositeAesthetics and issubclass(cls, Scorer)
    assert cls.higher_is_better is True
    assert cls.prompt_aware is False
    assert cls.score_range == (0.0, 10.0)
    assert cls.max_prompt_tokens is None


def test_score_is_five_times_the_mean_judge_score(images):
    judge = ClassicalJudge()
    expected = []
    for res in judge.judge(images, judge.covers):
        values = [res.scores[d] for d in judge.covers]
        expected.append(5.0 * sum(values) / len(values))
    results = CompositeAesthetics().score([(img, "a photo") for img in images])
    assert [r.score for r in results] == pytest.approx(expected, abs=1e-12)
    assert all(r.ok and 0.0 <= r.score <= 10.0 for r in results)
    assert results[0].extra["J"] == judge.judge([images[0]], judge.covers)[0].scores


def test_edited_photos_score_lower_than_the_original():
    pytest.importorskip("skimage")
    from aesthetic_audit.images.decode import to_array
    from aesthetic_audit.images.photos import load_photos

    photo = load_photos("builtin", max_side=192)[0].image  # the astronaut
    transforms = registry.available("transforms")
    edits = [from_array(transforms[name].apply(to_array(photo), 1.0, np.random.default_rng(0))[0])
             for name in ("underexposure", "pixelation", "defocus_blur", "oversaturation")]
    original, *edited = (r.score for r in CompositeAesthetics().score([(img, None) for img in [photo, *edits]]))
    assert original >= 9.0
    assert all(e <= original - 1.5 for e in edited), (original, edited)


def test_prompt_is_ignored(images):
    scorer = CompositeAesthetics()
    a, b, c = scorer.score([(images[0], "a blurry dark photo"), (images[0], "a crisp bright photo"), (images[0], None)])
    assert a.score == b.score == c.score
    assert a.tokens is None and a.truncated is None


def test_bad_items_get_an_error_and_the_batch_goes_on(images):
    results = CompositeAesthetics().score([(None, "x"), (images[0], "x"), (OSError("cannot decode y.jpg"), "x")])
    assert results[0].score is None and results[0].error
    assert results[1].ok
    assert results[2].score is None and "cannot decode y.jpg" in results[2].error


def test_identity_names_the_judge_and_an_injected_judge_is_used():
    class Fixed(ClassicalJudge):
        version = "test"

        def judge(self, images, dims):
            from aesthetic_audit.judges.base import JudgeResult

            return [JudgeResult({d: 1.0 for d in dims}) for _ in images]

    scorer = CompositeAesthetics(judge=Fixed())
    assert scorer.identity()["judge"]["version"] == "test"
    assert CompositeAesthetics().identity()["judge"]["name"] == "classical"
    [res] = scorer.score([(from_array(np.zeros((8, 8, 3))), None)])
    assert res.score == 5.0
