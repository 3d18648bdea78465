"""Detail refinement: pixelation, JPEG compression artefacts, smeared detail."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..decode import from_array, to_array
from ._ops import REC709
from .base import transform

PIXEL_MAX_BLOCK = 0.055  # block side at strength 1, share of the longest side (21 px at 384)
JPEG_QUALITY_RANGE = (90, 5)  # quality just above strength 0, and at strength 1
JPEG_SUBSAMPLING = 2  # PIL's code for 4:2:0 chroma subsampling, what cameras and the web use
SMEAR_MAX_RADIUS = 0.025  # Kuwahara radius at strength 1, share of the longest side (10 px at 384)
SMEAR_PASSES = 2  # a second pass flattens the patches the first one leaves, like repeated brushing


def block_size(strength: float, side: int) -> int:
    return 1 + int(round(strength * PIXEL_MAX_BLOCK * side))


@transform("pixelation", "detail refinement",
           ("chunky blocky pixels", "coarse oversized pixel blocks", "a crude, low-resolution pixelated look"))
def pixelation(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Average each ``block`` x ``block`` tile (a box downscale, grid anchored at the top-left; edge
    tiles average what they hold) and paint the tile with its mean (a nearest-neighbour upscale)."""
    h, w = img.shape[:2]
    b = block_size(strength, max(h, w))
    if b == 1:
        return img.copy(), {"block_px": 1}
    rows, cols = np.arange(0, h, b), np.arange(0, w, b)
    sums = np.add.reduceat(np.add.reduceat(img.astype(np.float64), rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, h)), np.diff(np.append(cols, w)))[..., None]
    means = (sums / counts).astype(np.float32)
    return np.repeat(np.repeat(means, b, axis=0), b, axis=1)[:h, :w], {"block_px": b}


def jpeg_round_trip(img: np.ndarray, quality: int, subsampling: int = JPEG_SUBSAMPLING) -> np.ndarray:
    buf = io.BytesIO()
    from_array(img).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    return to_array(Image.open(buf))


@transform("compression_artifacts", "detail refinement",
           ("heavy blocky jpeg compression artefacts", "smeared, blocky compression artefacts",
            "muddy low-quality compression blocks"))
def compression_artifacts(img: np.ndarray, strength: float, rng: np.random.Generator):
    """A real JPEG encode and decode through PIL (4:2:0 chroma subsampling) at a quality falling
    geometrically from 90 to 5 with strength: 8x8 blocking, ringing and colour bleeding."""
    if strength == 0:
        return img.copy(), {"quality": None, "subsampling": "4:2:0", "passes": 0}
    hi, lo = JPEG_QUALITY_RANGE
    # Geometric, because visible damage grows about as fast from 40 to 20 as from 90 to 45.
    quality = int(round(hi * (lo / hi) ** strength))
    return jpeg_round_trip(img, quality), {"quality": quality, "subsampling": "4:2:0", "passes": 1}


def _box_sums(x: np.ndarray, k: int) -> np.ndarray:
    """Sums over every k x k window, indexed by the window's top-left corner (summed-area table)."""
    sat = np.zeros((x.shape[0] + 1, x.shape[1] + 1) + x.shape[2:], dtype=np.float64)
    sat[1:, 1:] = x.cumsum(0).cumsum(1)
    return sat[k:, k:] - sat[:-k, k:] - sat[k:, :-k] + sat[:-k, :-k]


def kuwahara(img: np.ndarray, radius: int) -> np.ndarray:
    """Kuwahara filter: each pixel takes the mean colour of whichever of its four overlapping
    (radius+1)-square quadrants has the lowest luma variance, which flattens texture into painterly
    patches while keeping edges."""
    h, w = img.shape[:2]
    k, r = radius + 1, radius
    pad = np.pad(img.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="reflect")
    y = pad @ REC709.astype(np.float64)
    mean = _box_sums(pad, k) / k ** 2
    mean_y = _box_sums(y, k) / k ** 2
    var = _box_sums(y * y, k) / k ** 2 - mean_y ** 2
    corners = ((0, 0), (0, r), (r, 0), (r, r))  # top-left corners of the four quadrants, per pixel
    variances = np.stack([var[dy:dy + h, dx:dx + w] for dy, dx in corners])
    means = np.stack([mean[dy:dy + h, dx:dx + w] for dy, dx in corners])
    best = variances.argmin(axis=0)
    return np.take_along_axis(means, best[None, ..., None], axis=0)[0].astype(np.float32)


@transform("smearing", "detail refinement",
           ("smudged and smeared fine detail", "blotchy, painterly smearing of textures", "flattened, smudgy detail"))
def smearing(img: np.ndarray, strength: float, rng: np.random.Generator):
    """An edge-preserving, oil-paint-like smear: two passes of a Kuwahara filter whose radius grows
    with strength (to 2.5% of the longest side)."""
    radius = int(round(strength * SMEAR_MAX_RADIUS * max(img.shape[:2])))
    if radius == 0:
        return img.copy(), {"filter": "kuwahara", "radius_px": 0, "passes": 0}
    out = img
    for _ in range(SMEAR_PASSES):
        out = kuwahara(out, radius)
    return out, {"filter": "kuwahara", "radius_px": radius, "passes": SMEAR_PASSES}
