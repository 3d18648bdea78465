"""Clarity: sensor noise, as from a small sensor at high ISO."""

from __future__ import annotations

import numpy as np

from ._ops import blur, linear_to_srgb, srgb_to_linear
from .base import transform

# At strength 1 a mid-grey pixel (linear 0.21) gets a noise standard deviation of about 0.11 in
# linear light (about 0.12 once sRGB-encoded): very heavy grain. Shadows get relatively more, as in
# a real sensor, because the sRGB curve is steep there.
SHOT_GAIN = 0.045  # variance per unit of linear signal (the Poisson part)
READ_SIGMA = 0.03  # signal-independent floor (read noise)
CHROMA_SHARE = 0.6  # share of the noise amplitude that differs between channels
CHROMA_BLUR = 1.0  # chroma noise is blotchy on real sensors (demosaicing spreads it)


@transform("sensor_noise", "clarity",
           ("thick grainy sensor noise", "speckled colour noise throughout", "heavy digital grain and speckle"))
def sensor_noise(img: np.ndarray, strength: float, rng: np.random.Generator):
    """Signal-dependent (Poisson-like) luminance noise plus blotchy chroma noise, added in linear light."""
    h, w = img.shape[:2]
    z_lum = rng.standard_normal((h, w, 1), dtype=np.float32)
    # Blurring white noise by a Gaussian of sigma s scales its std by 1 / (2 sqrt(pi) s); undo that.
    z_chroma = blur(rng.standard_normal((h, w, 3), dtype=np.float32), CHROMA_BLUR) * (2 * np.sqrt(np.pi) * CHROMA_BLUR)
    z = np.sqrt(1 - CHROMA_SHARE ** 2) * z_lum + CHROMA_SHARE * z_chroma
    gain, read = SHOT_GAIN * strength ** 2, READ_SIGMA * strength
    params = {"shot_gain": float(gain), "read_sigma": float(read), "chroma_share": CHROMA_SHARE,
              "chroma_blur_px": CHROMA_BLUR, "space": "linear"}
    if strength == 0:
        return img.copy(), params
    lin = srgb_to_linear(img)
    noisy = lin + np.sqrt(gain * lin + read ** 2) * z
    return linear_to_srgb(noisy), params
