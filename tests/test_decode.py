"""The bad-image zoo: every kind of file a user can hand us, and what decode_image must do with it."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from aesthetic_audit.errors import InputError
from aesthetic_audit.images.decode import decode_image, encode_png, read_bytes
from aesthetic_audit.store.run import RunStore


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


# -- malformed EXIF: a named InputError, never a raw exception ------------------------------------

def _raw_exif(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian EXIF block written byte by byte, so a tag can have a type Pillow would never write."""
    data_at = 8 + 2 + 12 * len(entries) + 4
    table, extra = b"", b""
    for tag, kind, count, value in entries:
        if len(value) <= 4:
            table += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
        else:
            table += struct.pack("<HHII", tag, kind, count, data_at + len(extra))
            extra += value
    return b"Exif\0\0II*\0" + struct.pack("<IH", 8, len(entries)) + table + b"\0\0\0\0" + extra


def _jpeg_exif_pillow_cannot_rewrite() -> bytes:
    """Orientation 6 (so the EXIF must be rewritten after rotating) plus an XResolution stored as ASCII
    (type 2) where the standard says RATIONAL: Pillow's exif_transpose raises TypeError on it."""
    exif = _raw_exif([(0x011A, 2, 8, b"seventy\0"), (0x0112, 3, 1, struct.pack("<H", 6))])
    return _jpeg_bytes(_quadrants(), exif=exif)


def test_a_jpeg_whose_exif_pillow_cannot_rewrite_is_a_named_input_error(tmp_path: Path) -> None:
    data = _jpeg_exif_pillow_cannot_rewrite()
    raw = Image.open(io.BytesIO(data))
    with pytest.raises(TypeError):  # the real failure this guards against, on this Pillow
        ImageOps.exif_transpose(raw)
    path = _write(tmp_path, "camera.jpg", data)
    with pytest.raises(InputError, match=r"camera\.jpg: malformed EXIF metadata.*TypeError"):
        decode_image(path)


def _camera_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Camera maker", "Model 7", 6
    exif[0x011A], exif[0x011B], exif[0x0128], exif[0x0132] = 72.0, 72.0, 2, "2020:01:01 10:00:00"
    sub = exif.get_ifd(0x8769)
    sub[0x829A], sub[0x829D], sub[0x8827], sub[0x9003] = 1 / 125, 2.8, 200, "2020:01:01 10:00:00"
    return exif.tobytes()


def test_randomly_mutated_exif_blocks_decode_or_fail_with_an_input_error() -> None:
    base, rng = _camera_exif(), np.random.default_rng(7)
    raw_failures = 0
    for _ in range(300):
        exif = bytearray(base)
        for _ in range(rng.integers(1, 5)):
            exif[rng.integers(6, len(exif))] = rng.integers(256)  # after the "Exif\0\0" marker
        data = _jpeg_bytes(_quadrants(), exif=bytes(exif))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about the tags it skips
            try:
                ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
            except Exception:
                raw_failures += 1
            try:
                img = decode_image(data, name="mutated.jpg")
            except InputError as exc:
                assert "mutated.jpg" in str(exc)
            else:
                assert img.mode == "RGB" and img.size in ((32, 16), (16, 32))
    assert raw_failures >= 1  # the seeded mutations do reach the failure Pillow raises on


# -- stored bytes are a function of the pixels; colours are converted to sRGB first ---------------

ADOBE_RGB_D50 = ((0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087), (0.14919, 0.06322, 0.74457))


def _icc_rgb_profile(colorants, gamma: float, date=(2024, 1, 2, 3, 4, 5)) -> bytes:
    """A minimal ICC v2 display profile: D50-adapted RGB colorants, one gamma for all channels."""
    def xyz(v):
        return b"XYZ \0\0\0\0" + b"".join(struct.pack(">i", round(c * 65536)) for c in v)
    text = b"test profile\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * (4 + 4 + 2 + 1 + 67)
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249)))]
    tags += [(sig, xyz(c)) for sig, c in zip((b"rXYZ", b"gXYZ", b"bXYZ"), colorants)]
    tags += [(sig, curve) for sig in (b"rTRC", b"gTRC", b"bTRC")]
    at = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, tag in tags:
        tag += b"\0" * (-len(tag) % 4)
        table += sig + struct.pack(">II", at + len(body), len(tag))
        body += tag
    header = (struct.pack(">I", at + len(body)) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + struct.pack(">6H", *date) + b"acsp" + b"\0" * 28
              + b"".join(struct.pack(">i", round(c * 65536)) for c in (0.9642, 1.0, 0.8249)) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + body


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    return 255 * np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.abs(linear) ** (1 / 2.4) - 0.055)


# XYZ (D65) -> linear sRGB, IEC 61966-2-1
XYZ_TO_SRGB = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])


def test_an_adobe_rgb_image_is_converted_to_srgb_before_its_profile_is_dropped() -> None:
    pixel = (200, 120, 80)
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), pixel).save(buf, format="PNG", icc_profile=_icc_rgb_profile(ADOBE_RGB_D50, 563 / 256))
    img = decode_image(buf.getvalue())
    # Adobe RGB (1998) by its specification: gamma 563/256, then its D65 RGB -> XYZ matrix, then to sRGB.
    adobe_to_xyz = np.array([[0.57667, 0.18556, 0.18823], [0.29734, 0.62736, 0.07529],
                             [0.02703, 0.07069, 0.99134]])
    expected = _srgb_encode(XYZ_TO_SRGB @ adobe_to_xyz @ ((np.array(pixel) / 255) ** (563 / 256)))
    np.testing.assert_allclose(expected, (223.75, 120.84, 76.54), atol=0.01)
    np.testing.assert_allclose(np.asarray(img)[1, 2], expected, atol=1.0)
    assert img.info == {}


def _lab_tiff(lab: tuple[int, int, int]) -> bytes:
    """A CIELab TIFF; Pillow's LAB mode holds a* and b* as signed bytes, as TIFF does."""
    img = Image.frombytes("LAB", (3, 2), bytes([lab[0], lab[1] & 0xFF, lab[2] & 0xFF]) * 6)
    buf = io.BytesIO()
    img.save(buf, format="TIFF")
    return buf.getvalue()


def test_a_lab_tiff_is_converted_to_srgb() -> None:
    img = decode_image(_lab_tiff((128, 22, -28)))
    # L* = 128/255*100, a* = 22, b* = -28 against the D50 white; to XYZ (CIE 1976), Bradford-adapted
    # to D65, then sRGB.
    l_star, a_star, b_star = 128 / 255 * 100, 22, -28
    fy = (l_star + 16) / 116
    f = np.array([fy + a_star / 500, fy, fy - b_star / 200])
    xyz_d50 = np.array([0.96422, 1.0, 0.82521]) * np.where(f ** 3 > 216 / 24389, f ** 3, (116 * f - 16) * 27 / 24389)
    bradford = np.array([[0.9555766, -0.0230393, 0.0631636], [-0.0282895, 1.0099416, 0.0210077],
                         [0.0122982, -0.0204830, 1.3299098]])
    expected = _srgb_encode(XYZ_TO_SRGB @ bradford @ xyz_d50)
    np.testing.assert_allclose(expected, (138.44, 106.94, 167.63), atol=0.01)
    np.testing.assert_allclose(np.asarray(img)[1, 1], expected, atol=1.0)


def _png_chunks(data: bytes) -> list[bytes]:
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        chunks.append(data[at + 4:at + 8])
        at += 12 + length
    return chunks


def test_stored_bytes_carry_no_metadata_and_depend_on_the_pixels_only(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    pixels = _noise(8)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    copies = []
    for n, year in enumerate((2001, 2031)):
        text = PngImagePlugin.PngInfo()
        text.add_text("Creation Time", f"{year}-01-01")
        # Two sRGB profiles that differ only in their creation date (header bytes 24-35).
        profile = srgb[:24] + struct.pack(">6H", year, 1, 1, 0, 0, n) + srgb[36:]
        buf = io.BytesIO()
        pixels.save(buf, format="PNG", icc_profile=profile, pnginfo=text, dpi=(72 + n, 72))
        copies.append(buf.getvalue())
    assert copies[0] != copies[1]
    store = RunStore(tmp_path / "run")
    shas = {store.put_image(decode_image(data)) for data in copies}
    assert len(shas) == 1
    stored = store.image_path(shas.pop()).read_bytes()
    assert set(_png_chunks(stored)) == {b"IHDR", b"IDAT", b"IEND"}
    assert stored == encode_png(pixels)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(stored))), np.asarray(pixels))


def test_the_same_lab_tiff_decoded_twice_stores_one_image(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    data = _lab_tiff((128, 22, -28))
    first = store.put_image(decode_image(data))
    assert store.put_image(decode_image(data)) == first
    # Pillow converts LAB through an sRGB profile it stamps with the current time; none of it is kept.
    assert set(_png_chunks(store.image_path(first).read_bytes())) == {b"IHDR", b"IDAT", b"IEND"}


# -- only regular files within the size limit are read --------------------------------------------

def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # nobody writes to it: a blocking open or read would hang here
    with pytest.raises(InputError, match=r"pipe\.png: is a FIFO; only regular files are read"):
        decode_image(fifo)


def test_a_device_is_refused() -> None:
    with pytest.raises(InputError, match="/dev/zero: is a character device; only regular files are read"):
        read_bytes("/dev/zero")


def test_a_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "big.png", _png_bytes(_noise(64)))
    assert len(read_bytes(path, max_bytes=len(path.read_bytes()))) == path.stat().st_size
    with pytest.raises(InputError, match=r"big\.png: 0\.0 MiB exceeds the file size limit of 0\.00390625 MiB"):
        read_bytes(path, max_bytes=4096)
