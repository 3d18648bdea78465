"""Composition: subject position, scene richness and balance."""

from __future__ import annotations

import numpy as np

# scipy.ndimage is imported inside the functions that use it: every command discovers the backends,
# and a rerun with nothing to compute should not pay for loading it.

from ._ops import blur, luma, resize
from .base import transform

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
MIN_SCALE = 0.35  # the photo's size at strength 1, share of the frame
CORNER_MARGIN = 0.02  # gap to the frame edges at strength 1, share of the shorter side

KEEP_FEATHER = 0.08  # soft edge around the kept subject and disc, share of the shorter side
FILL_BLUR = 0.12  # sigma of the fill blur, share of the longest side
SUBJECT_BINS = 12  # colour histogram bins per channel of the subject and background colour models
SUBJECT_ROUNDS = 4  # rounds of classify-and-refit; the mask settles after three or four
SUBJECT_FIRST_GUESS = 0.6  # first guess of the subject: the central ellipse of this share of the half-frame
SUBJECT_PRIOR = 0.5  # sigma of the centre prior, share of the half-frame: subjects sit near the centre

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


def _colour_model(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A colour histogram of the weighted pixels, smoothed so that nearby colours count too, as a
    probability per colour code."""
    from scipy import ndimage
    hist = np.bincount(codes.ravel(), weights=weights.ravel().astype(np.float64), minlength=SUBJECT_BINS ** 3)
    hist = ndimage.gaussian_filter(hist.reshape((SUBJECT_BINS,) * 3), 1.0, mode="constant").ravel()
    return hist / max(hist.sum(), 1e-12)


def subject_mask(img: np.ndarray) -> np.ndarray:
    """Where the photo's subject most likely is, as a boolean mask (never empty).

    A colour-model segmentation with a centre prior, GrabCut's idea with a blur in place of its graph
    cut: colour histograms of a central ellipse (subject) and of the rest (background) classify every
    pixel, the classes refit the histograms, for a few rounds. Of the connected regions found, the one
    that weighs most under the centre prior is the subject; it is filled to its row and column spans,
    so that holes and bites (a cup's dark inside, a gap under an arm) belong to it.
    """
    from scipy import ndimage
    h, w = img.shape[:2]
    short = min(h, w)
    q = np.minimum((blur(img, 0.005 * short) * SUBJECT_BINS).astype(np.int64), SUBJECT_BINS - 1)
    codes = (q[..., 0] * SUBJECT_BINS + q[..., 1]) * SUBJECT_BINS + q[..., 2]
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2  # 1 at the edge midpoints
    prior = np.clip(np.exp(-r2 / (2 * SUBJECT_PRIOR ** 2)), 1e-3, 1 - 1e-3)
    first_guess = r2 <= max(SUBJECT_FIRST_GUESS ** 2, r2.min())
    subject = first_guess
    for _ in range(SUBJECT_ROUNDS):
        fg, bg = _colour_model(codes, subject), _colour_model(codes, ~subject)
        score = np.log(fg[codes] + 1e-6) - np.log(bg[codes] + 1e-6) + np.log(prior / (1 - prior))
        subject = blur(score, 0.01 * short) > 0  # neighbours vote: no speckle, smooth outlines
    labels, n = ndimage.label(subject)
    if n == 0:
        return first_guess
    subject = labels == 1 + int(np.argmax(ndimage.sum(prior, labels, index=np.arange(1, n + 1))))
    rows = np.maximum.accumulate(subject, axis=1) & np.maximum.accumulate(subject[:, ::-1], axis=1)[:, ::-1]
    cols = np.maximum.accumulate(subject, axis=0) & np.maximum.accumulate(subject[::-1], axis=0)[::-1]
    return rows & cols


@transform("emptied_scene", "richness",
           ("an empty, featureless setting", "bare surroundings with almost nothing in them",
            "a wide expanse of blank space"), version="2")
def emptied_scene(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Keep the subject and empty the scene around it: outside a disc about the subject that shrinks
    from the whole frame at strength 0 to nothing at strength 1, everything is replaced by a heavy blur
    of the photo fading to the background's flat mean colour. The subject (``subject_mask``) keeps its
    own pixels, so the scene empties and what the caption names stays."""
    from scipy import ndimage
    h, w = img.shape[:2]
    short = min(h, w)
    subject = subject_mask(img)
    cy, cx = ndimage.center_of_mass(subject)
    farthest = max(np.hypot(cy - r, cx - c) for r in (0, h - 1) for c in (0, w - 1))
    radius = (1.0 - strength) * float(farthest)
    feather = KEEP_FEATHER * short
    params = {"subject_share": float(subject.mean()), "subject_center_px": [int(round(cy)), int(round(cx))],
              "kept_radius_px": radius, "feather_px": float(feather), "fill_blur_px": float(FILL_BLUR * max(h, w)),
              "fill_flatness": float(strength)}
    if strength == 0:
        return img.copy(), params
    yy, xx = np.mgrid[0:h, 0:w]
    disc = 1.0 - (np.hypot(yy - cy, xx - cx) - radius) / feather
    around_subject = 1.0 - ndimage.distance_transform_edt(~subject) / feather
    keep = np.clip(np.maximum(disc, around_subject), 0.0, 1.0)[..., None]
    background = img[~subject].mean(axis=0) if not subject.all() else img.reshape(-1, 3).mean(axis=0)
    fill = np.broadcast_to(strength * background, img.shape)
    if strength < 1.0:  # the blur's weight; skipped at full strength, where the fill is flat
        fill = fill + (1.0 - strength) * blur(img, FILL_BLUR * max(h, w))
    return keep * img + (1.0 - keep) * fill, params


@transform("lopsided_skew", "symmetry",
           ("a lopsided, skewed composition", "a crooked, tilted horizon", "a slanted frame that leans to one side"))
def lopsided_skew(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Tilt (rotate), shear and crop in off-centre, all growing with strength; the output keeps the
    input's size and any sliver the tilted crop does not cover is filled by reflection."""
    from scipy import ndimage
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
