"""Lighting distinction: flat, shadowless light."""

from __future__ import annotations

import numpy as np

from ._ops import blur, luma
from .base import transform

LIGHT_SCALE = 0.08  # sigma of the "illumination" blur, share of the longest side
MAX_LIGHT_CUT = 0.85  # share of the large-scale light/shadow variation removed at strength 1
MAX_LOCAL_CUT = 0.5  # share of the finer local contrast removed at strength 1


@transform("flat_light", "lighting distinction",
           ("flat, shadowless lighting", "dull, even light with no shadows", "a flat wash of light without depth"))
def flat_light(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Split luma into a large-scale illumination layer (a wide Gaussian blur) and local detail, pull
    the illumination toward the image mean and soften the detail, and shift every channel by the
    luma change so colours keep their hue."""
    sigma = LIGHT_SCALE * max(img.shape[:2])
    keep_light, keep_local = 1.0 - MAX_LIGHT_CUT * strength, 1.0 - MAX_LOCAL_CUT * strength
    params = {"sigma_px": float(sigma), "light_kept": float(keep_light), "local_contrast_kept": float(keep_local)}
    if strength == 0:
        return img.copy(), params
    y = luma(img)
    light = blur(y, sigma)
    mean = float(y.mean())
    flat = mean + keep_light * (light - mean) + keep_local * (y - light)
    return img + (flat - y)[..., None], params
