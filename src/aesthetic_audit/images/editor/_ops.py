"""Small numpy/scipy building blocks shared by the editor transforms (not transforms themselves).

The module name starts with an underscore so registry discovery skips it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# scipy.ndimage is imported inside the functions that use it: every command discovers the backends,
# and a rerun with nothing to compute should not pay for loading it.

# Rec.709 / sRGB primaries: the luminance weights of linear R, G, B.
REC709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 sRGB decoding, values in [0, 1]."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 sRGB encoding, values in [0, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


def luma(img: np.ndarray) -> np.ndarray:
    """Rec.709-weighted luma of gamma-encoded RGB, shape (H, W)."""
    return img @ REC709


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the spatial axes only; sigma in pixels."""
    from scipy import ndimage
    if sigma <= 0:
        return img.astype(np.float32, copy=True)
    sig = (sigma, sigma) + (0,) * (img.ndim - 2)
    return ndimage.gaussian_filter(img, sig, mode="reflect").astype(np.float32)


def convolve_fft(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel with ``kernel`` (odd-sized, sums to 1) using reflect padding.

    FFT keeps large blur kernels (tens of pixels) within the editor's time budget, where a direct
    convolution would take seconds.
    """
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    h, w = img.shape[:2]
    padded = np.pad(img, ((ph, ph), (pw, pw), (0, 0)), mode="reflect")
    shape = (padded.shape[0] + kh - 1, padded.shape[1] + kw - 1)
    spec_k = np.fft.rfft2(kernel, shape)
    out = np.fft.irfft2(np.fft.rfft2(padded, shape, axes=(0, 1)) * spec_k[..., None], shape, axes=(0, 1))
    # The full linear convolution is offset by the kernel half-size plus the padding.
    return out[2 * ph:2 * ph + h, 2 * pw:2 * pw + w].astype(np.float32)


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Lanczos resize of a float image without 8-bit rounding (PIL's 32-bit float mode per channel)."""
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32), mode="F")
                        .resize((width, height), Image.Resampling.LANCZOS)) for c in range(img.shape[2])]
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0).astype(np.float32)


def warp(img: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str = "nearest") -> np.ndarray:
    """Sample ``img`` at fractional coordinates (bilinear), one channel at a time."""
    from scipy import ndimage
    coords = np.stack([rows, cols])
    return np.stack([ndimage.map_coordinates(img[..., c], coords, order=1, mode=mode)
                     for c in range(img.shape[2])], axis=-1).astype(np.float32)
