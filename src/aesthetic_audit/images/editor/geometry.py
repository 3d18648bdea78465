"""Detail realism: warped, implausible geometry."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._ops import warp
from .base import transform

WARP_GRID = 6  # control points per side of the random displacement field: a few broad bends
WARP_MAX_AMPLITUDE = 0.06  # largest displacement at strength 1, share of the longest side


@transform("geometric_warp", "detail realism",
           ("warped, wavy distorted shapes", "bent lines and rippling geometry", "a melted, wobbly distortion"))
def geometric_warp(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Resample the image through a smooth random displacement field (random offsets on a 6x6 grid,
    cubic-interpolated to every pixel, largest offset scaled to the amplitude), bending straight
    lines and shapes."""
    h, w = img.shape[:2]
    control = rng.standard_normal((2, WARP_GRID, WARP_GRID))
    amplitude = strength * WARP_MAX_AMPLITUDE * max(h, w)
    params = {"amplitude_px": float(amplitude), "control_grid": WARP_GRID}
    if amplitude < 0.01:
        return img.copy(), params
    gy, gx = np.meshgrid(np.linspace(0, WARP_GRID - 1, h), np.linspace(0, WARP_GRID - 1, w), indexing="ij")
    field = np.stack([ndimage.map_coordinates(c, [gy, gx], order=3, mode="nearest") for c in control])
    field *= amplitude / np.abs(field).max()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return warp(img, yy + field[0], xx + field[1], mode="reflect"), params
