"""Classical image statistics behind the ``classical`` judge (numpy and scipy.ndimage only).

Every function takes an RGB float image in [0, 1] of shape (H, W, 3), or its luma (H, W), and
returns a plain float. Luma is Rec.709-weighted gamma-encoded RGB (Y' = 0.2126 R' + 0.7152 G' +
0.0722 B'), the brightness a viewer sees on an sRGB screen. Which statistic feeds which dimension,
and how it becomes a score, lives in ``classical.py``.
"""

from __future__ import annotations

import numpy as np

# scipy.ndimage is imported inside the functions that use it: every command discovers the backends,
# and a rerun with nothing to compute should not pay for loading it.

REC709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float64)


def luma(img: np.ndarray) -> np.ndarray:
    return np.asarray(img, dtype=np.float64) @ REC709


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage
    return ndimage.gaussian_filter(x, sigma, mode="reflect")


def blur_rgb(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the two spatial axes of an RGB image."""
    from scipy import ndimage
    return ndimage.gaussian_filter(np.asarray(img, dtype=np.float64), (sigma, sigma, 0), mode="reflect")


# --- clarity -----------------------------------------------------------------------------------

def laplacian_variance(y: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian (the common focus measure; depends on content)."""
    lap = y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4.0 * y[1:-1, 1:-1]
    return float(lap.var()) if lap.size else 0.0


def _mean_sq_difference(y: np.ndarray, dy: int, dx: int) -> float:
    h, w = y.shape
    a = y[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    b = y[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return float(((a - b) ** 2).mean())


def blur_exponent(y: np.ndarray, lag: int = 4) -> float:
    """How smooth the image is at the finest scale, in the worst direction.

    The mean squared luma difference between pixels ``r`` apart grows like r^a. Sharp natural
    photos have a of about 0.7-1.2; optical blur makes the image locally linear, pushing a toward 2
    (differences then grow like r^2); noise pulls it toward 0. a is estimated from lags 1 and ``lag``
    along rows, columns and both diagonals; the largest is taken, because motion blur smooths one
    direction only. A flat image returns 2 (nothing is sharp).
    """
    worst = 0.0
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        near, far = _mean_sq_difference(y, dy, dx), _mean_sq_difference(y, lag * dy, lag * dx)
        if near <= 1e-12:
            return 2.0
        worst = max(worst, float(np.log(max(far, 1e-12) / near) / np.log(lag)))
    return min(worst, 2.0)


_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)


def noise_sigma(y: np.ndarray, block: int = 8, percentile: float = 10.0) -> float:
    """Noise standard deviation in 8-bit levels, from the flattest parts of the image.

    Immerkaer's operator (a difference of two Laplacians) cancels smooth image structure and keeps
    noise; sigma = sqrt(pi/2) / 6 * mean |response|. Averaged per ``block`` x ``block`` tile, the
    ``percentile``-th tile stands for the flat areas, where texture does not pass for noise.
    """
    from scipy import ndimage
    r = np.abs(ndimage.convolve(y, _IMMERKAER, mode="reflect"))[1:-1, 1:-1]
    h, w = (r.shape[0] // block) * block, (r.shape[1] // block) * block
    if h == 0 or w == 0:
        return float(np.sqrt(np.pi / 2) / 6 * r.mean() * 255) if r.size else 0.0
    tiles = r[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3))
    return float(np.sqrt(np.pi / 2) / 6 * np.percentile(tiles, percentile) * 255)


# --- brightness --------------------------------------------------------------------------------

def mean_luma(img: np.ndarray) -> float:
    return float(luma(img).mean())


def crushed_share(y: np.ndarray, level: float = 0.04) -> float:
    """Share of pixels whose luma is below ``level`` (about 10 of 255): detail lost in black."""
    return float((y < level).mean())


# --- colour ------------------------------------------------------------------------------------

def srgb_to_lab(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CIELAB (D65 white) from sRGB in [0, 1]."""
    x = np.asarray(img, dtype=np.float64)
    lin = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    d = 6.0 / 29.0
    f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4.0 / 29.0)
    return 116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])


def colourfulness(img: np.ndarray) -> float:
    """Hasler and Suesstrunk (2003) colourfulness M on the 0-255 scale: sigma_rgyb + 0.3 mu_rgyb with
    rg = R - G and yb = (R + G) / 2 - B. About 33 is "moderately", 59 "highly", 82 "extremely" colourful."""
    x = np.asarray(img, dtype=np.float64) * 255.0
    rg = x[..., 0] - x[..., 1]
    yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def vivid_share(img: np.ndarray, saturation: float = 0.9, visible: float = 0.35) -> float:
    """Share of pixels that are visible (max channel >= ``visible``) and at HSV saturation >=
    ``saturation``: nearly pure, channel-clipped colour, the signature of pushed saturation."""
    x = np.asarray(img, dtype=np.float64)
    v = x.max(axis=-1)
    s = (v - x.min(axis=-1)) / np.maximum(v, 1e-12)
    return float(((v >= visible) & (s >= saturation)).mean())


def sickly_chroma(img: np.ndarray) -> float:
    """Mean CIELAB chroma carried by yellow-green hues (hue angle 85-140 degrees, fading out to 60
    and 170): the colour of a sickly, fluorescent-light cast. Warm casts (hue 30-60) do not count."""
    _, a, b = srgb_to_lab(img)
    c = np.hypot(a, b)
    h = np.degrees(np.arctan2(b, a)) % 360.0
    band = np.clip(np.minimum((h - 60.0) / 25.0, (170.0 - h) / 30.0), 0.0, 1.0)
    return float((c * band).mean())


# Matsuda's hue templates as used by Cohen-Or et al. (2006), "Color Harmonization": sectors of the
# hue wheel as (centre offset, width) in degrees. A palette is harmonious when its hues fit inside
# the sectors of some template at some rotation.
HUE_TEMPLATES: dict[str, tuple[tuple[float, float], ...]] = {
    "i": ((0.0, 18.0),),
    "V": ((0.0, 93.6),),
    "L": ((0.0, 18.0), (90.0, 79.2)),
    "I": ((0.0, 18.0), (180.0, 18.0)),
    "T": ((0.0, 180.0),),
    "Y": ((0.0, 93.6), (180.0, 18.0)),
    "X": ((0.0, 93.6), (180.0, 93.6)),
}


def _template_distances() -> np.ndarray:
    centres = np.arange(360) + 0.5
    rows = []
    for sectors in HUE_TEMPLATES.values():
        d = np.full(360, np.inf)
        for offset, width in sectors:
            ang = np.abs((centres - offset + 180.0) % 360.0 - 180.0)
            d = np.minimum(d, np.maximum(ang - width / 2.0, 0.0))
        rows.append(d)
    return np.array(rows)


_TEMPLATE_FFT = np.conj(np.fft.rfft(_template_distances(), axis=-1))


def hue_disharmony(img: np.ndarray, min_chroma: float = 0.06) -> float:
    """Distance from the best-fitting hue template, in degrees x HSV chroma per pixel.

    Each pixel's HSV hue is weighted by its chroma (max - min channel) less ``min_chroma``, so greys,
    dark pixels and faint chroma noise do not count. The cost of a template at rotation alpha is the
    weighted hue distance to its nearest sector; the statistic is the lowest cost over the 7
    templates and 360 rotations (a circular cross-correlation, by FFT). 0 for greys and for any
    palette that fits a template.
    """
    x = np.asarray(img, dtype=np.float64)
    v, lo = x.max(axis=-1), x.min(axis=-1)
    c = v - lo
    safe = np.where(c > 0, c, 1.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    h = np.where(v == r, ((g - b) / safe) % 6.0, np.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)) * 60.0
    weight = np.maximum(c - min_chroma, 0.0)
    hist = np.bincount((h.astype(np.int64) % 360).ravel(), weights=weight.ravel(), minlength=360) / c.size
    cost = np.fft.irfft(np.fft.rfft(hist)[None, :] * _TEMPLATE_FFT, n=360, axis=-1)
    return float(max(cost.min(), 0.0))


# --- lighting ----------------------------------------------------------------------------------

def dynamic_range(y: np.ndarray) -> float:
    """Spread between the 1st and 99th percentile of luma."""
    lo, hi = np.percentile(y, [1.0, 99.0])
    return float(hi - lo)


def light_contrast(y: np.ndarray, scale: float = 0.08) -> float:
    """Standard deviation of the large-scale luma (Gaussian, sigma = ``scale`` x longest side): the
    pattern of light and shadow across the frame, without texture."""
    return float(_blur(y, scale * max(y.shape)).std())


def local_contrast(y: np.ndarray, scale: float = 0.08) -> float:
    """RMS of luma minus its large-scale blur: contrast of form and modelling within regions."""
    return float(np.sqrt(((y - _blur(y, scale * max(y.shape))) ** 2).mean()))


# --- detail ------------------------------------------------------------------------------------

def blockiness(y: np.ndarray, periods: range = range(2, 33), min_cycles: int = 8) -> tuple[float, int]:
    """Grid excess and its period, at the image's own resolution.

    The mean absolute difference between neighbouring columns is averaged down the image and folded
    by a period P into P phases; the excess of the strongest phase over the median phase, relative to
    the overall mean, is P for a perfectly blocky image (every edge on the grid), near 0 for a photo,
    and 1-3 at P = 8 for JPEG at low quality. Rows likewise. The two directions are combined by a
    geometric mean, so a pattern that repeats along one axis only (a fence, a lattice) does not count,
    at the period that best explains a grid (largest excess / (P - 1) x log P). Periods with fewer
    than ``min_cycles`` repeats in the image are skipped as unreliable.
    """
    profiles = (np.abs(np.diff(y, axis=1)).mean(axis=0), np.abs(np.diff(y, axis=0)).mean(axis=1))
    best, best_period, best_fit = 0.0, 0, 0.0
    for p in periods:
        excess = []
        for prof in profiles:
            if prof.size < min_cycles * p or prof.mean() <= 1e-12:
                excess.append(0.0)
                continue
            n = (prof.size // p) * p
            phases = prof[:n].reshape(-1, p).mean(axis=0)
            excess.append(float((phases.max() - np.median(phases)) / prof[:n].mean()))
        grid = float(np.sqrt(excess[0] * excess[1]))
        fit = grid / (p - 1.0) * np.log(p)
        if fit > best_fit:
            best, best_period, best_fit = grid, p, fit
    return best, best_period


def smear_share(y: np.ndarray, level: float = 1.0 / 255.0, min_structure: float = 0.015) -> float:
    """Share of structured pixels that carry no fine detail: the mark of smeared, painterly patches.

    Structured pixels have mid-scale contrast (RMS of the band between Gaussian sigma 0.7 and 3,
    pooled over sigma 3) above ``min_structure``; among them, those whose finest band (luma minus
    its sigma-0.7 blur) is below one 8-bit level are flat. In a photo, texture fills structured areas;
    after smearing, flat patches with hard borders do. With (almost) no structure left, all pixels count.
    """
    fine_base = _blur(y, 0.7)
    fine = np.abs(y - fine_base)
    mid = fine_base - _blur(y, 3.0)
    structure = np.sqrt(_blur(mid * mid, 3.0))
    mask = structure > min_structure
    if mask.sum() < 0.01 * y.size:
        mask = np.ones_like(mask)
    return float((fine[mask] < level).mean())


def flat_share(y: np.ndarray, level: float = 1.5 / 255.0) -> float:
    """Among mid-tone pixels (luma 0.03-0.97), the share whose right and lower neighbours both differ
    by less than ``level``: posterised, pixelated or smeared flats (clipped black and white excluded)."""
    dx = np.abs(np.diff(y, axis=1))[:-1, :]
    dy = np.abs(np.diff(y, axis=0))[:, :-1]
    core = y[:-1, :-1]
    mid = (core > 0.03) & (core < 0.97)
    if mid.sum() == 0:
        return 1.0
    return float(((dx < level) & (dy < level) & mid).sum() / mid.sum())
