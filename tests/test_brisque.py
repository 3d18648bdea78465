"""BRISQUE: our numpy-2.4-safe features + the package's SVM must give the package's own scores."""

from __future__ import annotations

import platform
import sys
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFilter

pytest.importorskip("cv2")
pytest.importorskip("brisque")

from aesthetic_audit import registry  # noqa: E402
from aesthetic_audit.errors import MissingExtraError  # noqa: E402
from aesthetic_audit.scorers.brisque import BrisqueScorer  # noqa: E402


def _synthetic() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:128]
    return {
        "noise": Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)),
        "gradient": Image.fromarray(np.stack([x * 2, y * 2, x + y], -1).astype(np.uint8)),
        "blurred_noise_odd_size": Image.fromarray(rng.integers(0, 256, (97, 131, 3), dtype=np.uint8))
        .filter(ImageFilter.GaussianBlur(2)),
        "checkerboard": Image.fromarray((((x // 8 + y // 8) % 2) * 200 + 20).astype(np.uint8)).convert("RGB"),
        "smooth_blobs_with_noise": Image.fromarray(np.clip(
            128 + 60 * np.sin(x / 9.0)[..., None] * np.cos(y / 7.0)[..., None]
            + rng.normal(0, 4, (96, 128, 3)), 0, 255).astype(np.uint8)),
    }


@pytest.fixture(scope="module")
def package_score():
    """The package's own BRISQUE().score, with only its failing float() conversion shimmed.

    Under numpy >= 2.4 ``scale_features`` raises on the 1-element arrays its feature code produces;
    the shim unwraps them to scalars and calls the original, so every other step is the package's.
    """
    from brisque import BRISQUE

    original = BRISQUE.scale_features

    def scale_features(self, features):
        return original(self, [np.asarray(f, dtype=np.float64).reshape(-1)[0] for f in features])

    reference = BRISQUE(url=False)
    reference.scale_features = scale_features.__get__(reference)

    def score(image: Image.Image) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(reference.score(np.asarray(image)))
    return score


def test_the_unshimmed_package_still_fails_so_the_workaround_is_needed() -> None:
    from brisque import BRISQUE

    if np.lib.NumpyVersion(np.__version__) < "2.4.0":
        pytest.skip("the package's float() of 1-element arrays only fails on numpy >= 2.4")
    with warnings.catch_warnings(), pytest.raises(TypeError, match="0-dimensional"):
        warnings.simplefilter("ignore")
        BRISQUE(url=False).score(np.asarray(_synthetic()["noise"]))


@pytest.mark.parametrize("case", sorted(_synthetic()))
def test_equals_the_package(case: str, package_score) -> None:
    image = _synthetic()[case]
    (ours,) = BrisqueScorer().score([(image, None)])
    assert ours.ok
    assert ours.score == pytest.approx(package_score(image), abs=1e-6)


def test_real_photo_equals_the_package_and_noise_makes_it_worse(package_score) -> None:
    data = pytest.importorskip("skimage.data")
    clean = Image.fromarray(data.astronaut()).resize((256, 256), Image.Resampling.BICUBIC)
    noisy_arr = np.asarray(clean, np.float64) + np.random.default_rng(3).normal(0, 25, (256, 256, 3))
    noisy = Image.fromarray(np.clip(noisy_arr, 0, 255).astype(np.uint8))
    ours = BrisqueScorer().score([(clean, None), (noisy, "prompts are ignored")])
    assert ours[0].score == pytest.approx(package_score(clean), abs=1e-6)
    assert ours[1].score == pytest.approx(package_score(noisy), abs=1e-6)
    assert ours[1].score > ours[0].score + 10  # lower is better: noise is penalised


def test_scores_leave_the_nominal_range_unclipped(package_score) -> None:
    """The SVR output is not bounded by 0-100 on either side, so the class declares no range and the scorer
    reports the model's own value."""
    data = pytest.importorskip("skimage.data")
    coffee = Image.fromarray(data.coffee())
    coffee.thumbnail((96, 96))
    low, high = BrisqueScorer().score([(coffee, None), (_synthetic()["checkerboard"], None)])
    assert low.score < 0 and low.score == pytest.approx(package_score(coffee), abs=1e-6)
    # a feature vector far from every support vector gets the shipped model's -rho (svm.txt: rho -155.845)
    assert high.score == pytest.approx(155.845, abs=1e-9)


def test_scores_do_not_depend_on_openmp_threads() -> None:
    """libsvm sums the SVR in an OpenMP reduction whose order follows thread scheduling; the scorer runs it
    on one thread, so every call gives the bits of the sequential sum, whatever the caller's setting."""
    cv2 = pytest.importorskip("cv2")
    from threadpoolctl import threadpool_limits

    from aesthetic_audit.scorers.brisque import brisque_features

    image = _synthetic()["blurred_noise_odd_size"]
    scorer = BrisqueScorer().load()
    with threadpool_limits(limits=1, user_api="openmp"):
        sequential = scorer._model.calculate_image_quality_score(brisque_features(image, cv2))
    with threadpool_limits(limits=4, user_api="openmp"):
        scores = {scorer.score([(image, None)])[0].score for _ in range(20)}
    assert scores == {sequential}


def test_bad_items_fail_alone() -> None:
    good = _synthetic()["noise"]
    items = [
        (None, None),
        (ValueError("image x.png: file not found"), None),
        (Image.new("RGB", (20, 200)), None),
        (Image.new("RGB", (64, 64), (128, 128, 128)), None),
        (good, None),
    ]
    results = BrisqueScorer().score(items)
    assert [r.ok for r in results] == [False, False, False, False, True]
    assert "NoneType" in results[0].error
    assert "file not found" in results[1].error
    assert "too small" in results[2].error and "20x200" in results[2].error
    assert "flat" in results[3].error
    assert all(r.score is None for r in results[:4])


def test_non_rgb_input_is_converted() -> None:
    image = _synthetic()["checkerboard"]
    scorer = BrisqueScorer()
    (rgb,) = scorer.score([(image, None)])
    (grey,) = scorer.score([(image.convert("L"), None)])
    assert grey.score == pytest.approx(rgb.score, abs=1e-9)


def test_class_metadata_and_registry() -> None:
    assert registry.get("scorers", "brisque") is BrisqueScorer
    assert BrisqueScorer.higher_is_better is False
    assert BrisqueScorer.prompt_aware is False
    assert BrisqueScorer.score_range == (None, None)  # see test_scores_leave_the_nominal_range
    assert BrisqueScorer.extra == "offline"
    identity = BrisqueScorer().identity()
    assert identity["name"] == "brisque" and identity["weights"].startswith("brisque==")


def test_constructor_loads_nothing_and_a_missing_package_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "brisque", None)  # makes `import brisque` fail
    scorer = BrisqueScorer()  # cheap: nothing imported yet
    with pytest.raises(MissingExtraError, match=r"aesthetic-audit\[offline\]"):
        scorer.load()


@pytest.mark.skipif(np.lib.NumpyVersion(__import__("scipy").__version__) < "1.16.0"
                    or platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="the summation order reproduced is that of scipy >= 1.16's x86-64 wheels")
def test_window_sum_is_convolve2d_bit_for_bit() -> None:
    """The fast window sum gives scipy.signal.convolve2d's bits, which the package's MSCN uses: in flat
    regions the last bit decides which side of the AGGD split a coefficient falls on."""
    from scipy import signal

    from aesthetic_audit.scorers.brisque import _window, grey, window_sum

    rng = np.random.default_rng(5)
    arrays = [grey(image) for image in _synthetic().values()]
    arrays += [rng.random((5, 3)), rng.random((1, 1)), rng.random((8, 200)), np.full((40, 41), 0.3)]
    kernels = [_window(), rng.random((7, 7)), rng.random((3, 5)), rng.random((4, 6)), rng.random((9, 9))]
    for kernel in kernels:
        for a in arrays:
            for x in (a, a**2):
                assert np.array_equal(window_sum(x, kernel).view(np.uint64),
                                      signal.convolve2d(x, kernel, "same").view(np.uint64))


def test_flat_regions_make_the_summation_order_matter() -> None:
    """Why the window sum keeps convolve2d's order instead of a separable filter: on a posterised photo the
    separable Gaussian (mathematically the same window) moves the score by more than a point."""
    from scipy import ndimage

    from aesthetic_audit.scorers import brisque

    data = pytest.importorskip("skimage.data")
    photo = Image.fromarray(data.astronaut())
    photo.thumbnail((256, 256))
    posterised = photo.quantize(6).convert("RGB")
    g = np.exp(-((np.arange(7) - 3) ** 2) / (2 * brisque._WINDOW_SIGMA**2))
    g /= g.sum()

    def separable(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        rows = ndimage.correlate1d(x, g, axis=0, mode="constant")
        return ndimage.correlate1d(rows, g, axis=1, mode="constant")

    assert np.allclose(np.outer(g, g), brisque._window(), rtol=1e-12, atol=0)
    (exact,) = BrisqueScorer().score([(posterised, None)])
    real = brisque.window_sum
    brisque.window_sum = separable
    try:
        (fast,) = BrisqueScorer().score([(posterised, None)])
    finally:
        brisque.window_sum = real
    assert abs(fast.score - exact.score) > 1.0
