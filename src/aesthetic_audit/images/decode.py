"""Safe image decoding: every image that enters a run comes through here.

Guards: only regular files are read (a FIFO or a device never blocks or floods memory), a file size
limit, a decompression-bomb pixel limit, zero-byte and truncated files, undecodable bytes, malformed
metadata. Normalises: EXIF orientation; an embedded ICC profile (Adobe RGB, Display P3, CMYK press
profiles...) and LAB pixels are converted to sRGB; RGBA/LA/PA (composited on white), P, CMYK, 16-bit,
greyscale and float images become 8-bit RGB. The result carries pixels only, no metadata, so what is
stored is a function of the pixels alone. Errors are ``InputError`` naming the file.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError, features

from ..errors import InputError
from ..ui import log

if TYPE_CHECKING:
    from ..store import RunStore

MAX_PIXELS = 64_000_000  # ~8000 x 8000; larger images are refused as possible decompression bombs
MAX_FILE_BYTES = 256 * 2**20  # far above any photograph; keeps a huge or endless file out of memory
# zlib levels of stored PNGs (``images.png_level``). Level 1 encodes 2.6-4.2x faster than 6 for 7-15% larger
# files; images are keyed by their bytes, so runs made before the setting keep 6 and new runs get 1.
PNG_LEVEL_BEFORE, PNG_LEVEL_NEW = 6, 1
ENCODING = "rgb8-png-v1"  # change it when decode_image or encode_png changes what pixels become which bytes

_SRGB = ImageCms.createProfile("sRGB")
# Modes littlecms converts directly; a palette image is expanded to RGBA first.
_CMS_MODES = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB", "L": "RGB"}
_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


def read_bytes(source: str | os.PathLike, name: str | None = None, *, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (default ``MAX_FILE_BYTES``); anything else
    is an InputError naming it."""
    path = Path(source)
    label = name or str(path)
    max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
    # Non-blocking, so opening a FIFO returns at once; fstat on the open file then decides (no race
    # between a check and the open). O_NOCTTY keeps a terminal device from becoming ours.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputError(f"image {label}: file not found") from None
    except PermissionError:
        raise InputError(f"image {label}: permission denied") from None
    except OSError as exc:
        raise InputError(f"image {label}: cannot be opened ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"image {label}: is a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):
            kind = next((what for test, what in _NOT_REGULAR if test(st.st_mode)), "not a regular file")
            raise InputError(f"image {label}: is {kind}; only regular files are read")
        if st.st_size > max_bytes:
            raise InputError(f"image {label}: {st.st_size / 2**20:.1f} MiB exceeds the file size limit of "
                             f"{max_bytes / 2**20:g} MiB")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(max_bytes + 1)  # the file may have grown since fstat
    except OSError as exc:
        raise InputError(f"image {label}: cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InputError(f"image {label}: exceeds the file size limit of {max_bytes / 2**20:g} MiB")
    return data


def decode_image(source: bytes | str | os.PathLike, *, name: str | None = None,
                 max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode bytes or a file into a fully loaded 8-bit sRGB PIL image without metadata."""
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
    except Exception as exc:  # any other decoder failure is this file's problem, never the stage's
        raise InputError(f"image {label}: cannot decode ({type(exc).__name__}: {exc})") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # Pillow raises TypeError, struct.error, ... rewriting a malformed EXIF block
        raise InputError(f"image {label}: malformed EXIF metadata, so its orientation cannot be applied "
                         f"({type(exc).__name__}: {exc}); re-save the image without EXIF") from None
    try:
        rgb = to_rgb(_to_srgb(img, label))
        # A fresh image holds pixels only: no profile, text, time or EXIF travels on to the store.
        return Image.frombytes("RGB", rgb.size, rgb.tobytes())
    except Exception as exc:
        raise InputError(f"image {label}: cannot convert to RGB ({type(exc).__name__}: {exc})") from None


def _to_srgb(img: Image.Image, label: str) -> Image.Image:
    """Convert pixels described by an embedded ICC profile to sRGB, so that dropping the profile
    keeps what the colours mean. LAB pixels are converted by ``to_rgb`` (Pillow goes through sRGB)."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode == "LAB":  # LAB values are device-independent already
        return img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # palette entries are in the profile's colour space too
    if img.mode not in _CMS_MODES:
        log.warning("image %s: its ICC profile is ignored for %s pixels; colours are read as sRGB", label, img.mode)
        return img
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(img, profile, _SRGB, outputMode=_CMS_MODES[img.mode])
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        # What browsers do with a profile they cannot use: show the pixels as sRGB.
        log.warning("image %s: unusable ICC profile (%s); colours are read as sRGB", label, exc)
        return img


def encode_png(img: Image.Image, level: int = PNG_LEVEL_BEFORE) -> bytes:
    """PNG bytes that depend on the RGB pixels and the zlib ``level`` only: no metadata chunk, fixed
    encoder settings. Images are stored and keyed by these bytes, so a run keeps one level for good."""
    rgb = to_rgb(img)
    buf = io.BytesIO()
    Image.frombytes("RGB", rgb.size, rgb.tobytes()).save(buf, format="PNG", optimize=False, compress_level=level)
    return buf.getvalue()


@cache
def encoder_identity(level: int) -> dict[str, Any]:
    """What determines the stored bytes of given pixels besides the pixels: the PNG level, this module's
    encoding (``ENCODING``) and the libraries that decode and compress (the same zlib level may compress
    differently in another zlib build). A memo of stored hashes is keyed by it."""
    return {"encoding": ENCODING, "png_level": level, "pillow": PIL.__version__,
            "zlib": features.version("zlib"), "zlib_ng": features.version("zlib_ng"),
            "littlecms2": features.version("littlecms2")}


def run_png_level(level: int | None, stored_config: dict[str, Any] | None, *, empty: bool = False) -> int:
    """The PNG level of a run's images: ``level`` when set; else the level its stored config records; else
    1 for a new run (no stored config and, ``empty``, no image stored yet); else 6, the level of every run
    made before the setting existed (its config lacks it), so that such a run keeps its images and keys."""
    if level is not None:
        return level
    stored = ((stored_config or {}).get("images") or {}).get("png_level")
    if isinstance(stored, int) and not isinstance(stored, bool):
        return stored
    return PNG_LEVEL_NEW if empty and not stored_config else PNG_LEVEL_BEFORE


def store_png_level(store: "RunStore", level: int | None = None) -> int:
    """The level a stage writes images at: ``level``, else the one the run's manifest records, else 6 (a
    store without a stored config may hold images of a run made before the setting; ``Run.open`` is what
    starts a new run at 1 and has the manifest record it)."""
    return run_png_level(level, store.read_manifest().get("config"))


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
