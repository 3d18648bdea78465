"""Editor transforms (every registered one) and the photo sources they edit."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from aesthetic_audit import registry
from aesthetic_audit.dimensions.catalogue import load_catalogue
from aesthetic_audit.errors import InputError, MissingExtraError
from aesthetic_audit.images.decode import from_array, to_array
from aesthetic_audit.images.photos import Photo, iter_photos, load_photos

TRANSFORMS = registry.available("transforms")
NAMES = sorted(TRANSFORMS)
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Transforms that draw from the generator; the others must ignore it.
RANDOM = {"motion_blur", "sensor_noise", "clashing_palette", "geometric_warp", "subject_to_corner", "lopsided_skew"}
# The parameter that measures how strong the edit is, and which way it moves with strength.
STRENGTH_PARAM = {
    "defocus_blur": ("radius_px", 1), "motion_blur": ("length_px", 1), "sensor_noise": ("read_sigma", 1),
    "underexposure": ("stops", 1), "clashing_palette": ("saturation_floor", 1),
    "sickly_cast": ("desaturation", 1), "oversaturation": ("chroma_gain", 1), "flat_light": ("light_kept", -1),
    "pixelation": ("block_px", 1), "compression_artifacts": ("quality", -1), "smearing": ("radius_px", 1),
    "geometric_warp": ("amplitude_px", 1), "subject_to_corner": ("scale", -1),
    "emptied_scene": ("kept_radius_px", -1), "lopsided_skew": ("zoom", 1),
}


def srgb_to_linear(v: float) -> float:
    """IEC 61966-2-1, written out independently of the package."""
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def linear_to_srgb(v: float) -> float:
    return v * 12.92 if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 72 x 96 photo-like test card: smooth colour gradients, a bright disc, fine texture."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:72, 0:96] / 96.0
    img = np.stack([0.2 + 0.6 * xx, 0.3 + 0.5 * yy, 0.6 - 0.4 * xx * yy], axis=-1)
    img[np.hypot(yy - 0.35, xx - 0.6) < 0.15] = (0.9, 0.75, 0.2)
    img += rng.normal(0.0, 0.02, img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def apply(name: str, img: np.ndarray, strength: float, seed: int = 0):
    return TRANSFORMS[name].apply(img, strength, np.random.default_rng(seed))


def test_the_catalogue_and_the_registry_name_the_same_transforms():
    catalogue = load_catalogue()
    referenced = {t: d.key for d in catalogue for t in d.editor}
    assert set(referenced) == set(TRANSFORMS)
    for name, t in TRANSFORMS.items():
        assert t.dimension == referenced[name], name


@pytest.mark.parametrize("name", NAMES)
def test_phrasings_are_short_lower_case_noun_phrases(name):
    phrasings = TRANSFORMS[name].phrasings
    assert 2 <= len(phrasings) <= 4
    for p in phrasings:
        assert p == p.lower().strip() and not p.endswith(".")
        assert 2 <= len(p.split()) <= 8, p


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output(name, image):
    out1, p1 = apply(name, image, 0.6, seed=3)
    out2, p2 = apply(name, image, 0.6, seed=3)
    np.testing.assert_array_equal(out1, out2)
    assert p1 == p2


@pytest.mark.parametrize("name", NAMES)
def test_seed_matters_only_for_random_transforms(name, image):
    outs = [apply(name, image, 0.8, seed=s)[0] for s in range(4)]
    differs = any(not np.array_equal(outs[0], o) for o in outs[1:])
    assert differs == (name in RANDOM)


@pytest.mark.parametrize("name", NAMES)
def test_strength_zero_is_identity(name, image):
    out, _ = apply(name, image, 0.0)
    assert np.abs(out - image).max() < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_type_range_and_json_params(name, image):
    for s in STRENGTHS:
        out, params = apply(name, image, s)
        assert out.shape == image.shape and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
        assert json.loads(json.dumps(params)) == params
        raw, _ = TRANSFORMS[name].fn(image, s, np.random.default_rng(0))
        assert raw.shape == image.shape and np.isfinite(raw).all()


@pytest.mark.parametrize("name", NAMES)
def test_edit_grows_with_strength(name, image):
    key, direction = STRENGTH_PARAM[name]
    values = [apply(name, image, s)[1][key] for s in STRENGTHS[1:]]
    assert all(direction * (b - a) >= 0 for a, b in zip(values, values[1:])), values
    assert direction * (values[-1] - values[0]) > 0
    if name not in {"subject_to_corner", "lopsided_skew", "emptied_scene"}:  # geometry: distance is not size
        dist = [float(np.abs(apply(name, image, s)[0] - image).mean()) for s in STRENGTHS]
        assert all(b >= a - 1e-3 for a, b in zip(dist, dist[1:])), dist


def test_strength_outside_unit_interval_is_refused(image):
    with pytest.raises(ValueError, match="outside"):
        apply("defocus_blur", image, 1.5)


def test_underexposure_takes_light_away_by_stops_in_linear_light():
    grey = np.full((8, 8, 3), 0.5, dtype=np.float32)
    lin_in = srgb_to_linear(0.5)  # 0.21404
    assert lin_in == pytest.approx(0.21404, abs=1e-5)
    for strength, stops in ((0.25, 1.0), (0.5, 2.0), (1.0, 4.0)):
        out, params = apply("underexposure", grey, strength)
        assert params["stops"] == stops
        black = params["black_point_linear"]
        lin_out = srgb_to_linear(float(out[0, 0, 0]))
        # Undo the black-point crush: what is left is the input halved once per stop.
        assert lin_out * (1 - black) + black == pytest.approx(lin_in / 2 ** stops, rel=1e-4)
    out, _ = apply("underexposure", grey, 0.25)
    # One stop, black point 0.00075: (0.10702 - 0.00075) / 0.99925 = 0.10635 linear = sRGB 0.3597.
    assert float(out[0, 0, 0]) == pytest.approx(0.3597, abs=2e-4)
    assert float(out[0, 0, 0]) == pytest.approx(linear_to_srgb((lin_in / 2 - 0.00075) / 0.99925), abs=1e-5)


def test_pixelation_makes_constant_blocks_of_the_recorded_size(image):
    out, params = apply("pixelation", image, 1.0)
    b = params["block_px"]
    assert b == 1 + round(0.055 * 96) == 6
    for top in range(0, image.shape[0], b):
        for left in range(0, image.shape[1], b):
            block = out[top:top + b, left:left + b]
            assert np.ptp(block.reshape(-1, 3), axis=0).max() == 0.0
            np.testing.assert_allclose(block[0, 0], image[top:top + b, left:left + b].reshape(-1, 3).mean(0), atol=1e-6)


def test_compression_artifacts_is_a_real_jpeg_round_trip(image):
    for strength in (0.3, 1.0):
        out, params = apply("compression_artifacts", image, strength)
        assert params["subsampling"] == "4:2:0" and params["passes"] == 1
        buf = io.BytesIO()
        as_8bit = Image.fromarray((image * 255 + 0.5).astype(np.uint8))
        as_8bit.save(buf, "JPEG", quality=params["quality"], subsampling=2)
        expected = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255
        np.testing.assert_array_equal(out, expected)
    assert apply("compression_artifacts", image, 1.0)[1]["quality"] == 5


def test_subject_to_corner_leaves_the_mean_colour_in_the_far_corner(image):
    h, w = image.shape[:2]
    opposite = {"top-left": (h - 1, w - 1), "top-right": (h - 1, 0), "bottom-left": (0, w - 1), "bottom-right": (0, 0)}
    seen = set()
    for seed in range(12):
        out, params = apply("subject_to_corner", image, 1.0, seed)
        canvas = np.asarray(params["canvas_rgb"])
        np.testing.assert_allclose(canvas, image.reshape(-1, 3).mean(0), atol=1e-6)
        np.testing.assert_allclose(out[opposite[params["corner"]]], canvas, atol=1e-6)
        assert params["size_px"] == [round(h * 0.35), round(w * 0.35)]
        seen.add(params["corner"])
    assert len(seen) > 1


def test_filters_leave_a_flat_image_flat():
    flat = np.full((40, 50, 3), (0.3, 0.5, 0.7), dtype=np.float32)
    for name in ("defocus_blur", "motion_blur", "smearing", "pixelation", "geometric_warp", "flat_light"):
        out, _ = apply(name, flat, 1.0)
        np.testing.assert_allclose(out, flat, atol=1e-5, err_msg=name)


def test_oversaturation_scales_chroma_about_luma():
    px = np.array([[[0.5, 0.4, 0.3], [0.6, 0.6, 0.6]]], dtype=np.float32)
    out, params = apply("oversaturation", px, 0.25)
    assert params["chroma_gain"] == 1.75
    y = 0.2126 * 0.5 + 0.7152 * 0.4 + 0.0722 * 0.3  # 0.41404
    np.testing.assert_allclose(out[0, 0], [y + 1.75 * (0.5 - y), y + 1.75 * (0.4 - y), y + 1.75 * (0.3 - y)], atol=1e-6)
    np.testing.assert_allclose(out[0, 1], [0.6, 0.6, 0.6], atol=1e-6)  # grey has no chroma to scale


def test_sickly_cast_tints_grey_yellow_green_at_equal_luminance():
    grey = np.full((4, 4, 3), 0.5, dtype=np.float32)
    out, _ = apply("sickly_cast", grey, 1.0)
    r, g, b = (float(c) for c in out[0, 0])
    assert g > r > b
    lum = sum(w * srgb_to_linear(c) for w, c in zip((0.2126, 0.7152, 0.0722), (r, g, b)))
    assert lum == pytest.approx(srgb_to_linear(0.5), rel=1e-3)


def test_clashing_palette_keeps_brightness_and_spreads_hues(image):
    out, params = apply("clashing_palette", image, 1.0)
    np.testing.assert_allclose(out.max(-1), image.max(-1), atol=1e-5)  # HSV value is kept
    hues = np.asarray(params["region_hues_deg"])
    steps = np.diff(np.sort(np.unique(np.round(hues, 3))))
    np.testing.assert_allclose(steps, 72.0, atol=1e-3)


def test_flat_light_keeps_mean_brightness(image):
    out, _ = apply("flat_light", image, 1.0)
    lum = lambda x: x @ np.array([0.2126, 0.7152, 0.0722])  # noqa: E731
    assert abs(float(lum(out).mean() - lum(image).mean())) < 0.01
    assert lum(out).std() < 0.7 * lum(image).std()


# --- photo sources ---------------------------------------------------------------------------

def test_builtin_photos_load_offline_with_captions():
    pytest.importorskip("skimage")
    pytest.importorskip("matplotlib")
    photos = load_photos("builtin", max_side=128)
    names = [p.name for p in photos]
    assert names == ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                     "retina", "motorcycle", "grace_hopper"]
    for p in photos:
        assert isinstance(p, Photo) and p.image.mode == "RGB" and max(p.image.size) == 128
        assert p.caption.endswith(".") and 6 <= len(p.caption.split()) <= 25
        assert p.origin and p.licence


def test_builtin_photos_name_the_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage.data", None)  # makes the import fail like a missing package
    with pytest.raises(MissingExtraError, match=r"aesthetic-audit\[offline\]"):
        load_photos("builtin")


def _write(path, size=(40, 30), colour=(200, 100, 50)):
    Image.new("RGB", size, colour).save(path)


def test_folder_with_captions_csv_jsonl_and_sidecars(tmp_path):
    _write(tmp_path / "a.png", size=(600, 300))
    _write(tmp_path / "b.jpg")
    _write(tmp_path / "c.webp")
    (tmp_path / "captions.csv").write_text('file,caption,licence\na.png,"A wide, orange card.",CC0\n', "utf-8")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "b.jpg", "caption": "A small card."}) + "\n", "utf-8")
    (tmp_path / "c.txt").write_text("A card from a sidecar.\n", "utf-8")
    (tmp_path / "notes.md").write_text("not an image", "utf-8")
    photos = load_photos(str(tmp_path), max_side=200)
    assert [(p.name, p.caption) for p in photos] == [
        ("a.png", "A wide, orange card."), ("b.jpg", "A small card."), ("c.webp", "A card from a sidecar.")]
    assert photos[0].image.size == (200, 100) and photos[0].licence == "CC0"
    assert photos[1].image.size == (40, 30) and photos[1].licence == "unspecified"


def test_folder_bad_files_become_errors_and_the_rest_load(tmp_path):
    _write(tmp_path / "good.png")
    _write(tmp_path / "nocaption.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    rows = "file,caption\ngood.png,A card.\nbroken.jpg,Broken.\ngone.png,Gone.\n"
    (tmp_path / "captions.csv").write_text(rows, "utf-8")
    items = list(iter_photos(str(tmp_path)))
    photos = [i for i in items if isinstance(i, Photo)]
    errors = [str(i) for i in items if isinstance(i, InputError)]
    assert [p.name for p in photos] == ["good.png"]
    assert len(errors) == 3
    assert any("gone.png" in e and "not found" in e for e in errors)
    assert any("broken.jpg" in e for e in errors)
    assert any("nocaption.png" in e and "no caption" in e for e in errors)
    with pytest.raises(InputError):
        load_photos(str(tmp_path))


def test_a_captions_file_without_its_columns_fails_at_once(tmp_path):
    _write(tmp_path / "a.png")
    (tmp_path / "captions.csv").write_text("name,text\na.png,A card.\n", "utf-8")
    with pytest.raises(InputError, match="needs the columns file,caption"):
        iter_photos(str(tmp_path))


def test_an_unreadable_sidecar_is_an_error_for_that_photo_only(tmp_path):
    _write(tmp_path / "a.png")
    _write(tmp_path / "b.png")
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "b.txt").write_text("Fine.", "utf-8")
    items = list(iter_photos(str(tmp_path)))
    assert isinstance(items[0], InputError) and "a.txt" in str(items[0]) and "UTF-8" in str(items[0])
    assert isinstance(items[1], Photo) and items[1].caption == "Fine."


def test_a_source_that_is_no_folder_is_refused(tmp_path):
    with pytest.raises(InputError, match="not 'builtin' and not a folder"):
        iter_photos(str(tmp_path / "missing"))


def test_photo_round_trip_through_the_editor_keeps_size():
    img = Image.new("RGB", (30, 20), (10, 200, 30))
    out, _ = TRANSFORMS["lopsided_skew"].apply(to_array(img), 0.7, np.random.default_rng(0))
    assert from_array(out).size == (30, 20)


# --- each transform visibly realises its p_a at full strength ------------------------------------

def test_the_warp_at_full_strength_is_a_clearly_visible_wobble():
    # A coordinate grid as an image: channel 0 holds the row, channel 1 the column. Bilinear sampling of
    # a linear ramp is exact, so the output says where every output pixel was taken from.
    n = 192
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    grid = np.stack([yy / (n - 1), xx / (n - 1), np.zeros_like(yy)], axis=-1)
    inner = (slice(n // 8, n - n // 8),) * 2  # away from the border, where sampling reflects
    for seed in range(10):
        out, params = apply("geometric_warp", grid, 1.0, seed)
        dy = (out[..., 0] * (n - 1) - yy)[inner]
        dx = (out[..., 1] * (n - 1) - xx)[inner]
        rms = float(np.sqrt(np.mean(dy ** 2 + dx ** 2)))
        # How fast the displacement changes from pixel to pixel: 0 for a plain shift, which keeps lines
        # straight; a mean of 0.4 turns a straight line by about 22 degrees (atan 0.4) on average.
        strain = float(np.mean(np.sqrt(sum(g ** 2 for d in (dy, dx) for g in np.gradient(d)))))
        # Thresholds: every draw moves pixels by at least 2% of the side (~8 px at the editor's 384 px,
        # several times the width of a fine edge) and bends lines by ~22 degrees on average. The old
        # warp (6x6 field scaled by its largest offset) reached a mean strain of 0.20-0.40.
        assert rms >= 0.02 * n, (seed, rms)
        assert strain >= 0.4, (seed, strain)
        assert params["amplitude_px"] == pytest.approx(0.025 * n)


def _table_with_cup(h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A grainy wooden table with a cup on a saucer in the middle; returns the image and its distance
    to the centre."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:h, 0:w]
    grain = np.sin(xx / 3.0 + yy / 11.0)[..., None]
    img = np.array([0.55, 0.33, 0.18]) + 0.08 * grain + rng.normal(0.0, 0.03, (h, w, 3))
    r = np.hypot(yy - h / 2, xx - w / 2)
    img[r < 30] = (0.7, 0.12, 0.1)     # saucer
    img[r < 20] = (0.95, 0.93, 0.9)    # cup
    img[r < 12] = (0.35, 0.2, 0.1)     # coffee
    return np.clip(img + rng.normal(0.0, 0.02, img.shape), 0, 1).astype(np.float32), r


def test_emptied_scene_keeps_the_subject_and_empties_the_scene_around_it():
    img, r = _table_with_cup()
    subject = r < 30
    assert img[r > 40].std(axis=0).min() > 0.03  # the table has texture to remove
    for strength in (0.5, 1.0):
        out, params = apply("emptied_scene", img, strength)
        unchanged = np.abs(out - img).max(axis=-1) < 1e-6
        assert unchanged[subject].mean() >= 0.95, strength  # the cup and saucer stay as they were
    # At full strength everything beyond the soft edge (0.08 x 96 = 7.7 px) is one flat colour.
    far = r > 30 + 0.08 * 96 + 1
    assert np.ptp(out[far], axis=0).max() < 1e-5
    assert params["subject_share"] == pytest.approx(subject.mean(), abs=0.02)


def test_emptied_scene_keeps_the_espresso_cup_of_the_builtin_coffee_photo():
    skimage_data = pytest.importorskip("skimage.data")
    from aesthetic_audit.images.photos import downscale

    img = to_array(downscale(Image.fromarray(skimage_data.coffee()), 384))  # as the editor sees it
    assert img.shape == (256, 384, 3)
    out, _ = apply("emptied_scene", img, 1.0)
    unchanged = np.abs(out - img).max(axis=-1) < 1e-6
    # Boxes drawn on the photo by hand: the espresso in the cup, and the handle with the spoon.
    assert unchanged[40:100, 120:220].mean() >= 0.95
    assert unchanged[140:220, 80:250].mean() >= 0.9
    for corner in (out[:40, 330:], out[220:, :40]):  # bare table corners: emptied to one colour
        assert np.ptp(corner.reshape(-1, 3), axis=0).max() < 1e-5
