"""Clarity: optical blurs (defocus disc, linear motion)."""

from __future__ import annotations

import numpy as np

from ._ops import convolve_fft
from .base import transform

DEFOCUS_MAX_RADIUS = 0.03  # disc radius at strength 1, as a share of the longest side
MOTION_MAX_LENGTH = 0.06  # streak length at strength 1, as a share of the longest side


def disc_kernel(radius: float) -> np.ndarray:
    """A normalised, anti-aliased disc: edge pixels are weighted by their coverage, so the kernel
    (and the blur) grows continuously with the radius instead of in whole-pixel steps."""
    half = int(np.ceil(radius + 0.5))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    k = np.clip(radius + 0.5 - np.hypot(yy, xx), 0.0, 1.0)
    return (k / k.sum()).astype(np.float32)


def line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A normalised straight streak of ``length`` pixels, splatted bilinearly at sub-pixel steps."""
    half = int(np.ceil(length / 2)) + 1
    k = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float64)
    t = np.linspace(-length / 2, length / 2, max(2, int(np.ceil(length * 4)) + 1))
    theta = np.deg2rad(angle_deg)
    ys, xs = half - t * np.sin(theta), half + t * np.cos(theta)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(k, (y0 + dy, x0 + dx), w)
    return (k / k.sum()).astype(np.float32)


@transform("defocus_blur", "clarity",
           ("a heavy out-of-focus blur", "soft defocused edges everywhere", "nothing in sharp focus"))
def defocus_blur(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Lens defocus: convolution with a uniform disc whose radius grows with strength."""
    radius = strength * DEFOCUS_MAX_RADIUS * max(img.shape[:2])
    if radius < 0.05:
        return img.copy(), {"radius_px": 0.0, "kernel": "disc"}
    return convolve_fft(img, disc_kernel(radius)), {"radius_px": float(radius), "kernel": "disc"}


@transform("motion_blur", "clarity",
           ("heavy motion blur streaking across the frame", "streaky camera-shake blur",
            "smeared motion streaks everywhere"))
def motion_blur(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Camera shake: convolution with a straight streak at a random angle; its length grows with strength."""
    angle = float(rng.uniform(0.0, 180.0))  # drawn first so every strength of one seed shares the angle
    length = strength * MOTION_MAX_LENGTH * max(img.shape[:2])
    params = {"length_px": float(length), "angle_deg": angle}
    if length < 0.1:
        return img.copy(), params
    return convolve_fft(img, line_kernel(length, angle)), params
