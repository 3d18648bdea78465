"""A prompt-independent judge from classical image statistics (offline, no model, milliseconds).

It covers the five dimensions a statistic can see: clarity, color brightness, color aesthetic,
lighting distinction and detail refinement; the others come back as None. Each statistic is mapped
to [0, 2] by a piecewise-linear curve through anchor points (x, J); np.interp holds the end values
beyond the first and last anchor. Anchors were calibrated with ``benchmarks/calibrate_judge.py``
on the built-in photos and their editor transforms at strengths 0.25-1; docs/judge-calibration.md
records what it showed. Images are first Lanczos-downscaled to a longest side of 256, so a score
hardly depends on resolution (images much smaller than that, under about 160 px, read less
reliably); blockiness alone is measured at full resolution (up to a 1024-pixel centre crop),
because a compression grid only exists there. Every result carries the raw statistics in
``extra["statistics"]``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
from PIL import Image

from ..images.decode import to_rgb
from ..registry import register
from . import statistics as st
from .base import Judge, JudgeResult

WORK_SIDE = 256
NATIVE_CROP = 1024
MIN_SIDE = 8  # smaller images have too few pixel pairs for the statistics to mean anything
COLOUR_BLUR = 1.0  # Gaussian sigma (working pixels) applied before the colour statistics
LOG_OFFSET = 0.05  # log(luma + offset): keeps near-black noise from dominating the tonal contrast

# Anchors: ((statistic, J), ...) with statistics increasing. Calibrated with
# benchmarks/calibrate_judge.py on the 9 built-in photos at 384 px and their edits (seed 0); the
# ranges quoted are what it printed (min-max over photos), docs/judge-calibration.md the reasoning.
# Clarity, the lower of two. Blur exponent: originals 0.78-1.21; defocus/motion blur at strength 0.25
# already 1.42-1.74, at 1.0 1.62-1.96. Noise (8-bit levels): originals 0.03-2.8; sensor noise at 0.25
# 2.6-5.0, at 1.0 8.6-11.
BLUR_ANCHORS = ((1.25, 2.0), (1.45, 1.0), (1.65, 0.0))
NOISE_ANCHORS = ((3.0, 2.0), (5.5, 1.0), (8.0, 0.0))
# Brightness, the lower of two. Mean luma: originals 0.24-0.64 (0.08 for the deep-field sky, which
# is dark); 4 stops under 0.004-0.15. Crushed share: originals <= 0.23. Blown-out frames lose too.
LUMA_ANCHORS = ((0.04, 0.0), (0.15, 0.75), (0.24, 1.4), (0.32, 2.0), (0.80, 2.0), (0.95, 1.0), (1.0, 0.5))
CRUSHED_ANCHORS = ((0.30, 2.0), (0.50, 1.0), (0.70, 0.0))
# Colour aesthetics: J = 2 minus the sum of four penalties (statistic, penalty). Each starts just
# above the originals' range, so no original is penalised and no edit can lift J by relieving one.
# Colourfulness: originals 8-99; oversaturation at 1.0 27-178. Vivid share: originals <= 0.13,
# oversaturation at 1.0 up to 0.86. Disharmony: originals <= 0.008, clashing palette at 0.5
# 0.04-1.65, at 1.0 0.15-4.0. Sickly chroma: originals <= 5.3, sickly cast at 1.0 7.3-44.
COLOURFUL_PENALTY = ((100.0, 0.0), (140.0, 2.0))
VIVID_PENALTY = ((0.20, 0.0), (0.45, 2.0))
DISHARMONY_PENALTY = ((0.05, 0.0), (0.30, 2.0))
SICKLY_PENALTY = ((7.5, 0.0), (18.0, 2.0))
# Lighting, on log(luma + 0.05): dynamic range + 2 x local contrast + 2 x large-scale light contrast.
# Originals 1.88 (a flat-lit microscope slide) to 5.5; flat light at 1.0 0.65-1.98.
LIGHTING_ANCHORS = ((0.8, 0.0), (1.9, 0.8), (2.4, 1.3), (3.2, 2.0))
# Detail refinement: J = 2 minus the largest of three penalties. Grid excess: originals 0.06-0.49,
# JPEG at quality 5 1.25-3.3, pixelation = its block size (6-22). Smear share: originals 0.14-0.47,
# smearing at 1.0 0.61-1.0. Flat share: originals 0.03-0.57, smearing at 1.0 0.52-0.99.
BLOCK_PENALTY = ((0.55, 0.0), (1.1, 1.2), (1.6, 2.0))
SMEAR_PENALTY = ((0.48, 0.0), (0.60, 1.2), (0.70, 2.0))
FLAT_PENALTY = ((0.60, 0.0), (0.80, 1.2), (0.90, 2.0))


def curve(x: float, anchors: tuple[tuple[float, float], ...]) -> float:
    xs, ys = zip(*anchors)
    return float(np.interp(x, xs, ys))


def prepare(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(working-size RGB float image, full-resolution luma of at most a 1024 x 1024 centre crop)."""
    img = to_rgb(img)
    w, h = img.size
    left, top = max(0, (w - NATIVE_CROP) // 2), max(0, (h - NATIVE_CROP) // 2)
    native = np.asarray(img.crop((left, top, min(w, left + NATIVE_CROP), min(h, top + NATIVE_CROP))),
                        dtype=np.float64) / 255.0
    if max(w, h) > WORK_SIDE:
        f = WORK_SIDE / max(w, h)
        img = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float64) / 255.0, st.luma(native)


def measure(img: Image.Image) -> dict[str, float]:
    """Every statistic the judge uses (plus the Laplacian variance, for reference)."""
    work, native_y = prepare(img)
    y = st.luma(work)
    # Colour is judged region by region, as a viewer sees it: a light blur keeps pixel-level chroma
    # noise from passing for clashing hues or clipped colour.
    colour = st.blur_rgb(work, COLOUR_BLUR)
    # Light and shadow are ratios: contrast is measured on log luma, so darkening the whole picture
    # (a near-multiplicative change of sRGB values) mostly shifts it instead of shrinking it.
    tone = np.log(y + LOG_OFFSET)
    block, period = st.blockiness(native_y)
    return {
        "blur_exponent": st.blur_exponent(y),
        "noise_sigma": st.noise_sigma(y),
        "laplacian_variance": st.laplacian_variance(y),
        "mean_luma": float(y.mean()),
        "crushed_share": st.crushed_share(y),
        "colourfulness": st.colourfulness(colour),
        "vivid_share": st.vivid_share(colour),
        "hue_disharmony": st.hue_disharmony(colour),
        "sickly_chroma": st.sickly_chroma(colour),
        "dynamic_range": st.dynamic_range(tone),
        "local_contrast": st.local_contrast(tone),
        "light_contrast": st.light_contrast(tone),
        "blockiness": block,
        "block_period": float(period),
        "smear_share": st.smear_share(y),
        "flat_share": st.flat_share(y),
    }


def lighting_statistic(m: dict[str, float]) -> float:
    return m["dynamic_range"] + 2.0 * m["local_contrast"] + 2.0 * m["light_contrast"]


def score(m: dict[str, float]) -> dict[str, float]:
    """Map statistics to J in [0, 2] per covered dimension."""
    colour_penalty = (curve(m["colourfulness"], COLOURFUL_PENALTY) + curve(m["vivid_share"], VIVID_PENALTY)
                      + curve(m["hue_disharmony"], DISHARMONY_PENALTY) + curve(m["sickly_chroma"], SICKLY_PENALTY))
    detail_penalty = max(curve(m["blockiness"], BLOCK_PENALTY), curve(m["smear_share"], SMEAR_PENALTY),
                         curve(m["flat_share"], FLAT_PENALTY))
    return {
        "clarity": min(curve(m["blur_exponent"], BLUR_ANCHORS), curve(m["noise_sigma"], NOISE_ANCHORS)),
        "color brightness": min(curve(m["mean_luma"], LUMA_ANCHORS), curve(m["crushed_share"], CRUSHED_ANCHORS)),
        "color aesthetic": max(0.0, 2.0 - colour_penalty),
        "lighting distinction": curve(lighting_statistic(m), LIGHTING_ANCHORS),
        "detail refinement": max(0.0, 2.0 - detail_penalty),
    }


@register("judges")
class ClassicalJudge(Judge):
    """Per-dimension scores from image statistics; blind to the prompt and to content."""

    name: ClassVar[str] = "classical"
    description: ClassVar[str] = "classical image statistics (sharpness, noise, exposure, colour, contrast, blocking)"
    version: ClassVar[str] = "1"  # part of every record key: bump it when a statistic or an anchor changes
    covers: ClassVar[tuple[str, ...]] = ("clarity", "color brightness", "color aesthetic",
                                         "lighting distinction", "detail refinement")

    def judge(self, images: Sequence[Image.Image | BaseException | None], dims: Sequence[str]) -> list[JudgeResult]:
        results = []
        for i, img in enumerate(images):
            if not isinstance(img, Image.Image):
                reason = str(img) if isinstance(img, BaseException) else "no image"
                results.append(JudgeResult({d: None for d in dims}, error=f"image {i}: {reason}"))
                continue
            if min(img.size) < MIN_SIDE:
                results.append(JudgeResult({d: None for d in dims}, error=(
                    f"image {i}: {img.size[0]}x{img.size[1]} pixels is too small to judge; "
                    f"the classical judge needs at least {MIN_SIDE} on each side")))
                continue
            try:
                stats = measure(img)
            except Exception as exc:  # one unreadable image must not fail the batch
                results.append(JudgeResult({d: None for d in dims}, error=f"image {i}: {type(exc).__name__}: {exc}"))
                continue
            scores = score(stats)
            results.append(JudgeResult({d: scores.get(d) for d in dims}, extra={"statistics": stats}))
        return results

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "work_side": WORK_SIDE}
