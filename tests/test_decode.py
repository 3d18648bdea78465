"""The bad-image zoo: every kind of file a user can hand us, and what decode_image must do with it."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aesthetic_audit.errors import InputError
from aesthetic_audit.images.decode import decode_image


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=100, subsampling=0, **kwargs)
    return buf.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but carries one tiny IDAT: a decompression-bomb probe."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _quadrants(w: int = 32, h: int = 16) -> Image.Image:
    """Red top-left quadrant, blue elsewhere: a corner whose movement shows a rotation."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[...] = (0, 0, 255)
    arr[: h // 2, : w // 2] = (255, 0, 0)
    return Image.fromarray(arr, mode="RGB")


# -- files that must be refused with an InputError naming the problem ----------------------------

def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


REFUSED = {
    "zero_byte_file": (lambda t: _write(t, "empty.png", b""), "empty"),
    "truncated_png": (lambda t: _write(t, "cut.png", _png_bytes(_noise(64))[:-200]), "truncated"),
    "truncated_jpeg": (lambda t: _write(t, "cut.jpg", _jpeg_bytes(_noise(64))[: len(_jpeg_bytes(_noise(64))) // 2]),
                       "truncated"),
    "random_bytes": (lambda t: _write(t, "noise.png", np.random.default_rng(0).bytes(4096)), "not a recognised"),
    "png_header_claiming_huge_dimensions": (lambda t: _write(t, "bomb.png", _png_header_claiming(100_000, 100_000)),
                                            "decompression bomb"),
    "directory_path": (lambda t: t, "is a directory"),
    "missing_path": (lambda t: t / "nope.png", "not found"),
}


def _noise(side: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8))


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused(case: str, tmp_path: Path) -> None:
    make, expected = REFUSED[case]
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        decode_image(path)
    message = str(info.value)
    assert expected in message
    assert str(path) in message  # the error names the file


def test_small_image_over_a_low_pixel_limit_is_refused() -> None:
    with pytest.raises(InputError, match="decompression bomb"):
        decode_image(_png_bytes(_noise(64)), name="x.png", max_pixels=1000)


def test_bytes_errors_use_the_given_name() -> None:
    with pytest.raises(InputError, match="row 3 image_o"):
        decode_image(b"", name="row 3 image_o")


# -- files that decode, normalised to 8-bit RGB ---------------------------------------------------

def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the viewer must rotate 90 degrees clockwise
    return _jpeg_bytes(_quadrants(), exif=exif.tobytes())


def _rgba_png() -> bytes:
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[0, 0] = (10, 20, 30, 0)        # fully transparent: must become white
    arr[0, 1] = (10, 20, 30, 255)      # opaque: kept
    arr[1, 0] = (0, 0, 0, 128)         # half black over white: 255 * 127/255 ~ 127
    arr[1, 1] = (255, 0, 0, 255)
    return _png_bytes(Image.fromarray(arr, mode="RGBA"))


def _palette_png() -> bytes:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    return _png_bytes(img)


def _la_png() -> bytes:
    return _png_bytes(Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), mode="LA"))


def _cmyk_jpeg() -> bytes:
    return _jpeg_bytes(Image.new("CMYK", (16, 16), (0, 255, 255, 0)))  # no cyan, full magenta+yellow: red


def _grey16_png() -> bytes:
    return _png_bytes(Image.fromarray(np.array([[65535, 32768, 0]], np.uint16)))


def _bilevel_png() -> bytes:
    img = Image.new("1", (2, 1), 0)
    img.putpixel((1, 0), 1)
    return _png_bytes(img)


def _grey_png() -> bytes:
    return _png_bytes(Image.fromarray(np.array([[0, 100, 255]], np.uint8), mode="L"))


def _colour_key_png(mode: str) -> bytes:
    """A PNG with a tRNS colour key: pixels equal to the key are transparent (found a bug: they stayed opaque)."""
    if mode == "L":
        img, key = Image.fromarray(np.array([[7, 200]], np.uint8), mode="L"), 7
    else:
        img, key = Image.fromarray(np.array([[[1, 2, 3], [9, 8, 7]]], np.uint8), mode="RGB"), (1, 2, 3)
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=key)
    return buf.getvalue()


def _check_exif(img: Image.Image) -> None:
    assert img.size == (16, 32)  # stored 32 x 16; displayed transposed
    arr = np.asarray(img).astype(int)
    # Rotating clockwise moves the stored top-left (red) quadrant to the top-right.
    assert np.abs(arr[2, 13] - (255, 0, 0)).max() <= 8
    assert np.abs(arr[2, 2] - (0, 0, 255)).max() <= 8
    assert np.abs(arr[29, 13] - (0, 0, 255)).max() <= 8


def _check_rgba(img: Image.Image) -> None:
    arr = np.asarray(img)
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert tuple(arr[0, 1]) == (10, 20, 30)
    assert abs(int(arr[1, 0, 0]) - 127) <= 1
    assert tuple(arr[1, 1]) == (255, 0, 0)


DECODED = {
    "exif_orientation_6_jpeg": (_exif_rotated_jpeg, _check_exif),
    "rgba_transparent_on_white": (_rgba_png, _check_rgba),
    "palette_p": (_palette_png, lambda im: np.testing.assert_array_equal(
        np.asarray(im), [[[255, 0, 0], [0, 255, 0]]])),
    "la_grey_alpha": (_la_png, lambda im: np.testing.assert_array_equal(
        np.asarray(im), [[[255, 255, 255], [50, 50, 50]]])),
    "cmyk_jpeg": (_cmyk_jpeg, lambda im: np.testing.assert_allclose(
        np.asarray(im)[8, 8].astype(int), [255, 0, 0], atol=6)),
    "grey_colour_key_trns": (lambda: _colour_key_png("L"), lambda im: np.testing.assert_array_equal(
        np.asarray(im), [[[255, 255, 255], [200, 200, 200]]])),
    "rgb_colour_key_trns": (lambda: _colour_key_png("RGB"), lambda im: np.testing.assert_array_equal(
        np.asarray(im), [[[255, 255, 255], [9, 8, 7]]])),
    "grey16_png": (_grey16_png, lambda im: np.testing.assert_array_equal(
        np.asarray(im)[..., 0], [[255, 128, 0]])),
    "bilevel_1bit": (_bilevel_png, lambda im: np.testing.assert_array_equal(
        np.asarray(im)[..., 0], [[0, 255]])),
    "grey_l": (_grey_png, lambda im: np.testing.assert_array_equal(
        np.asarray(im), np.repeat(np.array([[0, 100, 255]], np.uint8)[..., None], 3, axis=2))),
}


@pytest.mark.parametrize("case", sorted(DECODED))
def test_decoded_to_rgb(case: str, tmp_path: Path) -> None:
    make, check = DECODED[case]
    path = _write(tmp_path, case, make())
    for source in (path, path.read_bytes()):
        img = decode_image(source)
        assert img.mode == "RGB"
        np.asarray(img)  # fully loaded, no lazy file handle
        check(img)
