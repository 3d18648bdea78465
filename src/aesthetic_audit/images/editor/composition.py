"""Composition: subject position, scene richness and balance."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._ops import blur, luma, resize
from .base import transform

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
MIN_SCALE = 0.35  # the photo's size at strength 1, share of the frame
CORNER_MARGIN = 0.02  # gap to the frame edges at strength 1, share of the shorter side

KEEP_RADIUS = 0.15  # radius of the kept detail at strength 1, share of the shorter side
KEEP_FEATHER = 0.08  # soft edge of the kept disc, share of the shorter side
FILL_BLUR = 0.12  # sigma of the fill blur, share of the longest side

MAX_TILT = 20.0  # degrees of rotation at strength 1
MAX_SHEAR = 0.15  # horizontal shear at strength 1
MAX_ZOOM = 1.55  # crop-in at strength 1, so the tilted frame still mostly covers the canvas
MAX_SHIFT = 0.08  # off-centre shift of the crop at strength 1, share of the longest side


@transform("subject_to_corner", "main object",
           ("the subject tiny in a far corner", "a small scene squeezed into one corner",
            "an empty frame with a tiny corner subject"))
def subject_to_corner(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Shrink the whole photo (to 35% of the frame at strength 1) and place it in a random corner of
    an otherwise flat canvas filled with the photo's mean colour."""
    h, w = img.shape[:2]
    corner = CORNERS[int(rng.integers(len(CORNERS)))]
    canvas = img.reshape(-1, 3).mean(axis=0)
    scale = 1.0 - strength * (1.0 - MIN_SCALE)
    sh, sw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    margin = int(round(strength * CORNER_MARGIN * min(h, w)))
    params = {"corner": corner, "scale": float(scale), "size_px": [sh, sw], "margin_px": margin,
              "canvas_rgb": canvas.astype(float).tolist()}
    if (sh, sw) == (h, w):
        return img.copy(), params
    out = np.broadcast_to(canvas.astype(np.float32), img.shape).copy()
    top = margin if corner.startswith("top") else h - sh - margin
    left = margin if corner.endswith("left") else w - sw - margin
    out[top:top + sh, left:left + sw] = resize(img, sh, sw)
    return out, params


@transform("emptied_scene", "richness",
           ("an empty, featureless setting", "bare surroundings with almost nothing in them",
            "a wide expanse of blank space"))
def emptied_scene(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Keep a feathered disc of the original around the most detailed spot of the central area and
    replace everything else by a heavy blur of the photo that fades to its flat mean colour; the kept
    disc shrinks from the whole frame to a radius of 15% of the shorter side as strength grows."""
    h, w = img.shape[:2]
    short = min(h, w)
    # The spot with the most edge energy (after a wide blur) within the central 60% of the frame
    # is where the subject most likely is; it stays, the scene around it goes.
    y = luma(img)
    energy = blur(np.hypot(ndimage.sobel(y, 0), ndimage.sobel(y, 1)), 0.05 * short)
    inner = np.zeros_like(energy, dtype=bool)
    inner[int(0.2 * h):int(np.ceil(0.8 * h)), int(0.2 * w):int(np.ceil(0.8 * w))] = True
    cy, cx = np.unravel_index(np.where(inner, energy, -np.inf).argmax(), energy.shape)
    # Geometric interpolation from the farthest corner (nothing removed) down to the smallest disc,
    # so the emptied area grows steadily with strength rather than only near strength 1.
    farthest = max(np.hypot(cy - r, cx - c) for r in (0, h - 1) for c in (0, w - 1))
    radius = float(farthest) ** (1.0 - strength) * (KEEP_RADIUS * short) ** strength
    params = {"kept_center_px": [int(cy), int(cx)], "kept_radius_px": float(radius),
              "feather_px": float(KEEP_FEATHER * short), "fill_blur_px": float(FILL_BLUR * max(h, w)),
              "fill_flatness": float(strength)}
    if strength == 0:
        return img.copy(), params
    yy, xx = np.mgrid[0:h, 0:w]
    keep = np.clip(1.0 - (np.hypot(yy - cy, xx - cx) - radius) / (KEEP_FEATHER * short), 0.0, 1.0)[..., None]
    mean = img.reshape(-1, 3).mean(axis=0)
    fill = (1.0 - strength) * blur(img, FILL_BLUR * max(h, w)) + strength * mean
    return keep * img + (1.0 - keep) * fill, params


@transform("lopsided_skew", "symmetry",
           ("a lopsided, skewed composition", "a crooked, tilted horizon", "a slanted frame that leans to one side"))
def lopsided_skew(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Tilt (rotate), shear and crop in off-centre, all growing with strength; the output keeps the
    input's size and any sliver the tilted crop does not cover is filled by reflection."""
    h, w = img.shape[:2]
    tilt_sign, shear_sign = rng.choice([-1.0, 1.0], size=2)
    shift_dir = rng.uniform(0.0, 2 * np.pi)
    angle = float(tilt_sign * MAX_TILT * strength)
    shear = float(shear_sign * MAX_SHEAR * strength)
    zoom = 1.0 + strength * (MAX_ZOOM - 1.0)
    shift = strength * MAX_SHIFT * max(h, w) * np.array([np.sin(shift_dir), np.cos(shift_dir)])
    params = {"angle_deg": angle, "shear": shear, "zoom": float(zoom), "shift_px": shift.astype(float).tolist()}
    if strength == 0:
        return img.copy(), params
    t = np.deg2rad(angle)
    rotate = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    skew = np.array([[1.0, 0.0], [shear, 1.0]])  # (row, col) coordinates: columns slide with the row
    matrix = rotate @ skew / zoom  # output (row, col) -> input (row, col), about the centre
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre + shift - matrix @ centre
    out = [ndimage.affine_transform(img[..., c], matrix, offset=offset, order=1, mode="reflect")
           for c in range(3)]
    return np.stack(out, axis=-1), params
