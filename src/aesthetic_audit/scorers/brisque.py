"""BRISQUE no-reference image quality (Mittal, Moorthy & Bovik 2012), as the ``brisque`` package scores it.

Lower is better. The score is the raw output of an epsilon-SVR (RBF kernel) trained on quality ratings
in 0-100, and it is not clipped: on the scikit-image photographs at sizes from 48 to 512 px and on
blurred, noisy, pixelated, sharpened, contrast-boosted and posterised copies of them it ranged from -8.9
(a contrast-boosted photograph) to 169 (a posterised one); a feature vector far from every support
vector tends to 155.8 (the model's -rho). So ``score_range`` is (None, None) and 0-100 is only the
nominal scale. The scores are the model's own: nothing is clipped or rescaled.

Reproducibility: libsvm (``libsvm-official``) is built with OpenMP and sums the SVR's kernel terms in a
``guided``-scheduled parallel reduction, so with more than one OpenMP thread the order of the sum, and
the last digits of the score, depend on thread scheduling (one image gave 14 distinct values in 300
calls on 2 threads). We score with OpenMP limited to one thread (threadpoolctl), which makes every score
bit-identical across runs and thread settings; with 770 support vectors the SVR costs microseconds anyway.

Why we compute the features ourselves: ``brisque`` 0.2.0 fails on numpy >= 2.4. Its
``mean_squares_sum`` divides by ``filtered_values.shape`` (a tuple) instead of ``.size``, which turns
sigma_l, sigma_r and every feature derived from them into 1-element arrays; ``scale_features`` then
calls ``float()`` on those arrays, which numpy deprecated in 1.25 and turned into a TypeError ("only
0-dimensional arrays can be converted to Python scalars") in 2.4. We therefore compute the same 36
features with plain scalars, following the package's estimator step by step (same grey conversion,
Gaussian window, MSCN constant, AGGD moment-matching with ``scipy.optimize.root`` from 0.2, and
OpenCV bicubic half-scale), and hand them to the package's own ``BRISQUE`` object, so its shipped SVM
model and normalisation parameters produce the score. ``tests/test_brisque.py`` checks this against
the package's own ``BRISQUE().score`` with the one failing conversion shimmed, to 1e-6.

Speed: the four 7x7 window sums per image (``window_sum``) and the AGGD's sign split (``aggd_fit``) are
vectorised so that every floating-point operation, and so every score, stays the same as scipy's direct
convolution and boolean indexing give: 1.9x less CPU per image than the plain calls (42 vs 81 ms for a
384 px photograph), with no new scorer version and no record changed.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..errors import require
from ..images.decode import to_rgb
from ..registry import register
from .base import ScoreResult, Scorer, package_version

# skimage.color.rgb2gray's luma weights (ITU-R BT.709), which the package applies to [0, 1] floats.
_GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])
_WINDOW, _WINDOW_SIGMA = 7, 7 / 6
_MSCN_C = 1 / 255
MIN_SIDE = 32  # below this the half-scale image is barely larger than the 7x7 window: no usable statistics


def grey(image: Image.Image) -> np.ndarray:
    """RGB image -> float64 luma in [0, 1], with the very operations of ``skimage.color.rgb2gray``."""
    arr = np.multiply(np.asarray(image, dtype=np.uint8), 1.0 / 255, dtype=np.float64)
    return arr @ _GREY_WEIGHTS


def _window() -> np.ndarray:
    y, x = np.indices((_WINDOW, _WINDOW)) - _WINDOW // 2
    k = 1 / (2 * np.pi * _WINDOW_SIGMA**2) * np.exp(-(x**2 + y**2) / (2 * _WINDOW_SIGMA**2))
    return k / np.sum(k)


def mscn(image: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (zero-padded 'same' convolution, as the package).

    These are computed op for op as in the package, its convolution's summation order included
    (``window_sum``), not with a faster separable filter: the AGGD fit splits coefficients by sign, and
    in flat regions they are ~1e-17, so a last-bit rounding difference moves pixels between the left and
    right halves. A separable Gaussian shifted a test score by 0.55, and posterised photographs (large
    flat areas, as the editor's anti-aesthetic edits make) by up to 14.7 points.
    """
    kernel = _window()
    mu = window_sum(image, kernel)
    sigma = np.sqrt(np.abs(mu**2 - window_sum(image**2, kernel)))
    return (image - mu) / (sigma + _MSCN_C)


def window_sum(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``scipy.signal.convolve2d(image, kernel, "same")`` (zero fill), bit for bit, about 3x faster.

    Hand-written because no library filter sums in the package's order, and in flat regions that order
    decides the score (see ``mscn``). convolve2d (scipy >= 1.16, built without fused multiply-add, as
    its x86-64 wheels are) computes each output pixel as a sum that starts at 0 and goes over the kernel
    row by row, each row's terms ``kernel[j, k] * image[m + cj - j, n + ck - k]`` (``cj, ck``: the
    kernel's centre, ``(size - 1) // 2``) added four at a time (``((t0 + t1) + t2) + t3``, then the group
    to the running sum) and the rest one by one; outside the image the term is 0. Here each of those
    additions runs as one whole-array numpy operation on shifted views of the zero-padded image, in the
    same order, so every pixel gets the same roundings: a C loop over 49 terms per pixel becomes 98
    vectorised passes. ``tests/test_brisque.py`` checks the bits.
    """
    h, w = image.shape
    kh, kw = kernel.shape
    # Term (j, k) of output (m, n) reads image[m + (kh - 1) // 2 - j, n + (kw - 1) // 2 - k], 0 outside.
    padded = np.pad(image, ((kh - 1, kh - 1), (kw - 1, kw - 1)))
    top, left = (kh - 1) // 2 + kh - 1, (kw - 1) // 2 + kw - 1
    out, group, term = np.zeros((h, w)), np.empty((h, w)), np.empty((h, w))

    def shifted(j: int, k: int) -> np.ndarray:
        return padded[top - j:top - j + h, left - k:left - k + w]

    full = kw - kw % 4  # columns summed in groups of four; the rest one at a time
    for j in range(kh):
        for k0 in range(0, full, 4):
            np.multiply(shifted(j, k0), kernel[j, k0], out=group)
            for k in range(k0 + 1, k0 + 4):
                np.add(group, np.multiply(shifted(j, k), kernel[j, k], out=term), out=group)
            np.add(out, group, out=out)
        for k in range(full, kw):
            np.add(out, np.multiply(shifted(j, k), kernel[j, k], out=term), out=out)
    return out


def aggd_fit(x: np.ndarray) -> tuple[float, float, float, float]:
    """Asymmetric generalised Gaussian fit by moment matching: (alpha, mean, sigma_l, sigma_r)."""
    from scipy import optimize, special

    # The same elements in the same order as x[x < 0] and x[x >= 0] (so the same sums, bit for bit), but
    # np.compress of the flat array is about 4x faster than boolean indexing of a 2-D one.
    flat = x.ravel()
    left, right = np.compress(flat < 0, flat), np.compress(flat >= 0, flat)
    # An empty side gives nan, as in the package; the caller turns non-finite features into an error.
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma_l = float(np.sqrt(np.sum(left**2) / left.size)) if left.size else float("nan")
        sigma_r = float(np.sqrt(np.sum(right**2) / right.size)) if right.size else float("nan")
        r_hat = float((np.sum(np.abs(x)) / np.prod(x.shape)) ** 2 / (np.sum(x**2) / np.prod(x.shape)))
        gamma = sigma_l / sigma_r
        big_r = r_hat * (gamma**3 + 1) * (gamma + 1) / (gamma**2 + 1) ** 2

    def rho(alpha: np.ndarray) -> np.ndarray:
        return special.gamma(2 / alpha) ** 2 / (special.gamma(1 / alpha) * special.gamma(3 / alpha))

    if not np.isfinite(big_r):
        return float("nan"), float("nan"), sigma_l, sigma_r
    alpha = float(optimize.root(lambda a: rho(a) - big_r, [0.2]).x[0])
    mean = (sigma_r - sigma_l) * np.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha)) \
        * special.gamma(2 / alpha) / special.gamma(1 / alpha)
    return alpha, float(mean), sigma_l, sigma_r


def scale_features(image: np.ndarray) -> list[float]:
    """The 18 features of one scale: MSCN (alpha, variance) + 4 neighbour products (alpha, mean, sl², sr²)."""
    m = mscn(image)
    products = (
        m[:, :-1] * m[:, 1:],        # horizontal
        m[:-1, :] * m[1:, :],        # vertical
        m[:-1, :-1] * m[1:, 1:],     # main diagonal
        m[1:, :-1] * m[:-1, 1:],     # secondary diagonal
    )
    alpha, _, sl, sr = aggd_fit(m)
    out = [alpha, (sl**2 + sr**2) / 2]
    for p in products:
        alpha, mean, sl, sr = aggd_fit(p)
        out += [alpha, mean, sl**2, sr**2]
    return out


def brisque_features(image: Image.Image, cv2: Any) -> np.ndarray:
    """The 36 BRISQUE features of an RGB image: full scale, then OpenCV-bicubic half scale."""
    g = grey(image)
    half = cv2.resize(g, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    return np.array(scale_features(g) + scale_features(half), dtype=np.float64)


@register("scorers")
class BrisqueScorer(Scorer):
    """BRISQUE natural-scene-statistics quality; prompt-blind; lower = cleaner, more natural image."""

    name: ClassVar[str] = "brisque"
    description: ClassVar[str] = "BRISQUE no-reference quality (brisque package SVM); lower is better"
    official: ClassVar[str] = "the brisque package's BRISQUE().score (its libsvm SVR model, installed with the package)"
    score_scale: ClassVar[str] = "the SVR's raw output: nominally 0-100, unbounded (-9 to 169 measured); lower is better"
    parity: ClassVar[str] = "tests: the package's own score on the same images, to 1e-6; bit-identical across runs"
    higher_is_better: ClassVar[bool] = False
    score_range: ClassVar[tuple[float | None, float | None]] = (None, None)  # nominal 0-100; the SVR is unbounded
    prompt_aware: ClassVar[bool] = False
    extra: ClassVar[str | None] = "offline"

    def __init__(self) -> None:
        super().__init__()
        self._model: Any = None
        self._cv2: Any = None
        self._threads: Any = None

    def identity(self) -> dict[str, Any]:
        # The SVM and its normalisation ship inside the package: its version pins the weights.
        return {**super().identity(), "weights": f"brisque=={package_version('brisque')}"}

    def _load(self) -> None:
        self._cv2 = require("cv2", "offline", "the BRISQUE scorer")
        with warnings.catch_warnings():
            # brisque imports the deprecated scipy.ndimage.filters module; that is not our user's concern.
            warnings.simplefilter("ignore", DeprecationWarning)
            package = require("brisque", "offline", "the BRISQUE scorer")
        self._model = package.BRISQUE(url=False)
        # after importing brisque, so the OpenMP runtime libsvm links is among the libraries found
        self._threads = require("threadpoolctl", "offline", "the BRISQUE scorer").ThreadpoolController()

    def _score(self, items: list[tuple[Image.Image, str | None]]) -> list[ScoreResult]:
        # one OpenMP thread: libsvm's parallel sum would otherwise make the last digits depend on scheduling
        with self._threads.limit(limits=1, user_api="openmp"):
            return [self._score_one(image) for image, _ in items]

    def _score_one(self, image: Any) -> ScoreResult:
        if isinstance(image, BaseException):
            return ScoreResult(score=None, error=f"no image: {image}")
        if not isinstance(image, Image.Image):
            return ScoreResult(score=None, error=f"no image (got {type(image).__name__})")
        if min(image.size) < MIN_SIDE:
            return ScoreResult(score=None, error=f"image {image.size[0]}x{image.size[1]} is too small for "
                                                 f"BRISQUE (needs at least {MIN_SIDE} px on each side)")
        try:
            features = brisque_features(to_rgb(image), self._cv2)
        except Exception as exc:  # a bad item never fails the batch
            return ScoreResult(score=None, error=f"BRISQUE features failed: {type(exc).__name__}: {exc}")
        if not np.all(np.isfinite(features)):
            return ScoreResult(score=None, error="BRISQUE is undefined for this image: its local contrast "
                                                 "statistics are degenerate (e.g. a flat or constant image)")
        return ScoreResult(score=float(self._model.calculate_image_quality_score(features)))
