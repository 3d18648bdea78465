"""Detail realism: warped, implausible geometry."""

from __future__ import annotations

import numpy as np

# scipy.ndimage is imported inside the functions that use it: every command discovers the backends,
# and a rerun with nothing to compute should not pay for loading it.

from ._ops import warp
from .base import transform

WARP_GRID = 10  # control points per side of the random displacement field: ripples about a tenth of the frame wide
WARP_RMS = 0.025  # root-mean-square displacement at strength 1, share of the longest side (~10 px at 384)


@transform("geometric_warp", "detail realism",
           ("warped, wavy distorted shapes", "bent lines and rippling geometry", "a melted, wobbly distortion"),
           version="2")
def geometric_warp(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Resample the image through a smooth random displacement field (random offsets on a 10x10 grid,
    cubic-interpolated to every pixel), scaled so its root-mean-square displacement is 2.5% of the
    longest side at strength 1: straight lines ripple and shapes wobble as if melted."""
    from scipy import ndimage
    h, w = img.shape[:2]
    control = rng.standard_normal((2, WARP_GRID, WARP_GRID))
    amplitude = strength * WARP_RMS * max(h, w)
    params = {"amplitude_px": float(amplitude), "control_grid": WARP_GRID}
    if amplitude < 0.01:
        return img.copy(), params
    gy, gx = np.meshgrid(np.linspace(0, WARP_GRID - 1, h), np.linspace(0, WARP_GRID - 1, w), indexing="ij")
    field = np.stack([ndimage.map_coordinates(c, [gy, gx], order=3, mode="nearest") for c in control])
    # Scaling by the RMS, not the largest offset, makes every draw equally strong across the frame;
    # by the largest one, a draw with one big bend in a corner barely moved the rest.
    field *= amplitude / np.sqrt((field ** 2).sum(axis=0).mean())
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return warp(img, yy + field[0], xx + field[1], mode="reflect"), params
