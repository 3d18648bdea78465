"""Colour aesthetics: clashing palettes, a sickly cast, harsh oversaturation."""

from __future__ import annotations

import numpy as np

from ._ops import REC709, blur, linear_to_srgb, luma, srgb_to_linear
from .base import transform

CLASH_REGIONS = 10  # Voronoi cells; each palette hue gets two
# Five hues 72 degrees apart (offsets from a random base hue, in turns). No classical harmony template
# (complementary, analogous, triad-like sectors) can hold five evenly spread hues, so they clash.
CLASH_PALETTE = (0.0, 0.2, 0.4, 0.6, 0.8)
CLASH_SATURATION = 0.85  # saturation floor at strength 1, so grey areas take on colour too
CLASH_FEATHER = 0.03  # region-boundary softness, share of the longest side

# Linear-light channel gains of the cast at strength 1 (before luminance normalisation): red a little
# down, green up, blue well down gives a yellow-green near hue 85 degrees.
SICKLY_GAINS = (0.70, 1.10, 0.30)
SICKLY_DESATURATION = 0.75  # share of the original chroma removed at strength 1, so the cast dominates
OVERSAT_MAX_GAIN = 4.0  # chroma multiplier at strength 1


def rgb_to_hsv(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in turns [0, 1), saturation and value in [0, 1]."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    v = img.max(axis=-1)
    c = v - img.min(axis=-1)
    safe = np.where(c > 0, c, 1.0)
    h = np.where(v == r, ((g - b) / safe) % 6.0, np.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h = np.where(c > 0, h / 6.0, 0.0)
    s = np.where(v > 0, c / np.where(v > 0, v, 1.0), 0.0)
    return h.astype(np.float32), s.astype(np.float32), v.astype(np.float32)


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    channels = []
    for n in (5.0, 3.0, 1.0):  # the closed form: R, G, B differ only in this phase
        k = (n + h * 6.0) % 6.0
        channels.append(v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(channels, axis=-1).astype(np.float32)


@transform("clashing_palette", "color aesthetic",
           ("clashing neon colour patches", "garish hues that fight each other", "a jarring, mismatched colour scheme"))
def clashing_palette(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Split the frame into random Voronoi regions, give each a hue from a five-hue palette spread
    evenly round the colour wheel, and move every pixel's colour (hue and saturation, as a vector)
    toward its region's hue at a saturation of at least 0.85; brightness (HSV value) is kept, so the
    scene stays readable under the clashing colours."""
    h_img, w_img = img.shape[:2]
    base = float(rng.uniform(0.0, 1.0))
    seeds = rng.uniform(0.0, 1.0, size=(CLASH_REGIONS, 2))
    assignment = rng.permutation(np.arange(CLASH_REGIONS) % len(CLASH_PALETTE))
    hues = (base + np.asarray(CLASH_PALETTE)[assignment]) % 1.0
    params = {"base_hue_deg": base * 360.0, "region_seeds": seeds.round(6).tolist(),
              "region_hues_deg": (hues * 360.0).round(3).tolist(), "saturation_floor": CLASH_SATURATION * strength}
    if strength == 0:
        return img.copy(), params
    yy, xx = np.mgrid[0:h_img, 0:w_img]
    side = max(h_img, w_img)
    d2 = (yy[..., None] - seeds[:, 0] * h_img) ** 2 + (xx[..., None] - seeds[:, 1] * w_img) ** 2
    onehot = (d2 == d2.min(axis=-1, keepdims=True)).astype(np.float32)
    # The target hue is the angle of the region hues' unit vectors averaged under soft region
    # masks; blurring is linear, so blurring the (cos, sin) field equals blurring each mask first.
    vectors = onehot @ np.stack([np.cos(2 * np.pi * hues), np.sin(2 * np.pi * hues)], axis=-1).astype(np.float32)
    vectors = blur(vectors, CLASH_FEATHER * side)
    target = np.arctan2(vectors[..., 1], vectors[..., 0]) / (2 * np.pi) % 1.0
    h, s, v = rgb_to_hsv(img)
    # Blend saturation-scaled hue vectors rather than hue angles: an angle blend has to pick a way
    # round the wheel, and where the target is opposite the original that choice flips from pixel to
    # pixel in noise (speckles); vectors pass smoothly through a greyer tone instead.
    s_target = np.maximum(s, CLASH_SATURATION)
    x = (1 - strength) * s * np.cos(2 * np.pi * h) + strength * s_target * np.cos(2 * np.pi * target)
    y = (1 - strength) * s * np.sin(2 * np.pi * h) + strength * s_target * np.sin(2 * np.pi * target)
    h_new = np.arctan2(y, x) / (2 * np.pi) % 1.0
    return hsv_to_rgb(h_new, np.clip(np.hypot(x, y), 0.0, 1.0), v), params


@transform("sickly_cast", "color aesthetic",
           ("a sickly yellow-green colour cast", "a queasy greenish tint over everything",
            "a jaundiced, greenish colour tone"))
def sickly_cast(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Multiply linear light by yellow-green channel gains (normalised to keep luminance) and take out
    part of the original chroma so the cast dominates."""
    gains = 1.0 + strength * (np.asarray(SICKLY_GAINS, dtype=np.float32) - 1.0)
    gains = gains / float(gains @ REC709)
    desat = SICKLY_DESATURATION * strength
    params = {"gains_linear": gains.astype(float).tolist(), "desaturation": desat}
    if strength == 0:
        return img.copy(), params
    lin = srgb_to_linear(img)
    y = (lin @ REC709)[..., None]
    lin = (y + (1.0 - desat) * (lin - y)) * gains
    return linear_to_srgb(lin), params


@transform("oversaturation", "color aesthetic",
           ("harshly oversaturated colours", "garish, blown-out colour saturation", "gaudy, overcooked colours"))
def oversaturation(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Multiply every pixel's chroma (its offset from its own luma) by up to 4 and clip, so strong
    colours hit the channel limits and lose their gradations."""
    gain = 1.0 + strength * (OVERSAT_MAX_GAIN - 1.0)
    y = luma(img)[..., None]
    return np.clip(y + gain * (img - y), 0.0, 1.0), {"chroma_gain": float(gain), "clipped": True}
