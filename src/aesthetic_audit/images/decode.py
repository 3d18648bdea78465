"""Safe image decoding: every image that enters a run comes through here.

Guards: a decompression-bomb pixel limit, zero-byte and truncated files, undecodable bytes.
Normalises: EXIF orientation; RGBA/LA/PA (composited on white), P, CMYK, 16-bit, greyscale and
float images to 8-bit RGB. Errors are ``InputError`` naming the file.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

MAX_PIXELS = 64_000_000  # ~8000 x 8000; larger images are refused as possible decompression bombs


def read_bytes(source: str | os.PathLike, name: str | None = None) -> bytes:
    path = Path(source)
    label = name or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"image {label}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"image {label}: is a directory, not an image file") from None
    except PermissionError:
        raise InputError(f"image {label}: permission denied") from None
    return data


def decode_image(source: bytes | str | os.PathLike, *, name: str | None = None,
                 max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode bytes or a file into a fully loaded 8-bit RGB PIL image."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), name or "<bytes>"
    else:
        data, label = read_bytes(source, name), name or str(source)
    if not data:
        raise InputError(f"image {label}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise InputError(f"image {label}: {w}x{h} pixels exceeds the limit of {max_pixels} "
                                 "(possible decompression bomb)")
            img.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image {label}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise InputError(f"image {label}: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"image {label}: cannot decode ({exc}); the file may be truncated or corrupt") from None
    return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited on white."""
    if img.mode in ("L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")  # a PNG tRNS colour key makes matching pixels transparent
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            hi = 1.0 if arr.max() <= 1.0 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("P", "PA") :
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_array(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> float32 array in [0, 1], shape (H, W, 3)."""
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def from_array(arr: np.ndarray) -> Image.Image:
    """float array in [0, 1], shape (H, W, 3) -> RGB PIL image (rounded, not truncated)."""
    return Image.fromarray(np.clip(np.asarray(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")
