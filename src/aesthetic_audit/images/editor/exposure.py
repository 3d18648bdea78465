"""Colour brightness: underexposure, done in linear light as a camera would."""

from __future__ import annotations

import numpy as np

from ._ops import linear_to_srgb, srgb_to_linear
from .base import transform

MAX_STOPS = 4.0  # 1/16 of the light at strength 1
MAX_BLACK_POINT = 0.003  # linear level crushed to black at strength 1 (about sRGB 0.04)


@transform("underexposure", "color brightness",
           ("very dark, underexposed lighting", "murky shadows and crushed blacks", "a dim, underexposed look"))
def underexposure(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Take ``4 * strength`` stops of light away (linear values x 2^-stops), then crush the deepest
    shadows to black by a black point that grows with strength."""
    stops, black = MAX_STOPS * strength, MAX_BLACK_POINT * strength
    params = {"stops": float(stops), "black_point_linear": float(black)}
    if strength == 0:
        return img.copy(), params
    lin = srgb_to_linear(img) * np.float32(2.0 ** -stops)
    lin = np.maximum(lin - black, 0.0) / (1.0 - black)
    return linear_to_srgb(lin), params
