"""The classical judge: statistics checked on hand-computed cases, and J checked against the editor."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aesthetic_audit import registry
from aesthetic_audit.images.decode import from_array, to_array
from aesthetic_audit.judges import statistics as st
from aesthetic_audit.judges.base import Judge
from aesthetic_audit.judges.classical import ClassicalJudge, curve, measure, score

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
COVERS = ClassicalJudge.covers
COVERED_TRANSFORMS = sorted(n for n, t in registry.available("transforms").items() if t.dimension in COVERS)


def constant(rgb, shape=(32, 48)) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, dtype=np.float64), shape + (3,)).copy()


# --- statistics on hand-computed cases ------------------------------------------------------------

def test_mean_luma_of_a_constant_image_is_the_rec709_sum():
    assert st.mean_luma(constant((0.2, 0.4, 0.6))) == pytest.approx(0.2126 * 0.2 + 0.7152 * 0.4 + 0.0722 * 0.6)
    assert st.mean_luma(constant((0.2, 0.4, 0.6))) == pytest.approx(0.37192)


def test_crushed_share_counts_pixels_below_the_level():
    y = np.zeros((10, 10))
    y[:3] = 0.5
    assert st.crushed_share(y) == pytest.approx(0.7)


def test_grey_images_have_no_colour():
    grey = constant((0.4, 0.4, 0.4))
    assert st.colourfulness(grey) == 0.0
    assert st.hue_disharmony(grey) == 0.0
    assert st.sickly_chroma(grey) == pytest.approx(0.0, abs=1e-9)
    assert st.vivid_share(grey) == 0.0


def test_colourfulness_of_two_pure_halves_by_hand():
    img = constant((1.0, 0.0, 0.0), (10, 10))
    img[:, 5:] = (0.0, 0.0, 1.0)
    # rg = 255 | 0, yb = 127.5 | -255: sigma_rg = 127.5, sigma_yb = 191.25, mu_rg = 127.5, mu_yb = -63.75
    expected = np.hypot(127.5, 191.25) + 0.3 * np.hypot(127.5, -63.75)
    assert st.colourfulness(img) == pytest.approx(expected)


def test_vivid_share_counts_saturated_visible_pixels():
    img = constant((0.5, 0.5, 0.5), (4, 5))
    img[0] = (1.0, 0.05, 0.0)  # saturated and bright: counts
    img[1, :2] = (0.2, 0.0, 0.0)  # saturated but too dark to see: does not
    assert st.vivid_share(img) == pytest.approx(5 / 20)


def test_laplacian_variance_and_noise_of_a_constant_image_are_zero():
    y = np.full((40, 40), 0.3)
    assert st.laplacian_variance(y) == 0.0
    assert st.noise_sigma(y) == 0.0
    assert st.blur_exponent(y) == 2.0  # nothing is sharp


def test_noise_sigma_recovers_white_noise_in_8bit_levels():
    rng = np.random.default_rng(0)
    y = 0.5 + rng.normal(0.0, 6 / 255, (256, 256))
    # Immerkaer's estimator is unbiased for white noise: the median tile recovers sigma. The 10th
    # percentile tile sits about 1.28 tile-CVs (~0.15) low, the price of ignoring textured tiles.
    assert st.noise_sigma(y, percentile=50) == pytest.approx(6.0, rel=0.05)
    assert 0.75 * 6.0 < st.noise_sigma(y) < 6.0


def test_blur_exponent_is_zero_for_white_noise_and_two_for_smooth_waves():
    rng = np.random.default_rng(1)
    assert st.blur_exponent(rng.random((128, 128))) == pytest.approx(0.0, abs=0.05)
    yy, xx = np.mgrid[0:128, 0:128]
    waves = np.sin(xx / 20.0) + np.cos(yy / 25.0)  # smooth at the 4-pixel scale: D(r) ~ r^2
    assert st.blur_exponent(waves) == pytest.approx(2.0, abs=0.02)


def test_dynamic_range_and_contrast_by_hand():
    y = np.zeros((100, 100))
    y[:, 50:] = 1.0
    assert st.dynamic_range(y) == 1.0
    assert st.light_contrast(np.full((20, 20), 0.7)) == pytest.approx(0.0, abs=1e-12)
    assert st.local_contrast(np.full((20, 20), 0.7)) == pytest.approx(0.0, abs=1e-12)


def test_blockiness_of_a_perfect_block_grid_is_its_block_size():
    rng = np.random.default_rng(2)
    blocks = rng.random((16, 16))
    y = np.kron(blocks, np.ones((8, 8)))  # 128 x 128, every edge on an 8-pixel grid
    grid, period = st.blockiness(y)
    assert period == 8 and grid == pytest.approx(8.0)
    smooth = np.add.outer(np.linspace(0, 1, 128), np.linspace(0, 1, 128))
    assert st.blockiness(smooth + rng.normal(0, 0.01, smooth.shape))[0] < 0.5


def test_blockiness_ignores_a_pattern_that_repeats_along_one_axis():
    stripes = np.tile(np.repeat([0.2, 0.8], 4), 16)[None, :].repeat(128, axis=0)  # a fence, not a grid
    assert st.blockiness(stripes)[0] == 0.0


def _hsv_pixel(h_deg: float) -> tuple[float, float, float]:
    rgb = np.asarray(Image.new("HSV", (1, 1), (round(h_deg / 360 * 255), 255, 255)).convert("RGB"), dtype=float)
    return tuple(rgb[0, 0] / 255)


def palette_image(hues_deg) -> np.ndarray:
    img = np.zeros((10, 10 * len(hues_deg), 3))
    for i, h in enumerate(hues_deg):
        img[:, 10 * i:10 * (i + 1)] = _hsv_pixel(h)
    return img


def test_hue_disharmony_by_template():
    # One hue, complementary pairs and a tetradic square all fit a template (i, I, X): no cost.
    assert st.hue_disharmony(palette_image([30])) == pytest.approx(0.0, abs=1e-6)
    assert st.hue_disharmony(palette_image([0, 180])) == pytest.approx(0.0, abs=1e-6)
    assert st.hue_disharmony(palette_image([20, 110, 200, 290])) == pytest.approx(0.0, abs=1e-6)
    # Five evenly spread hues fit none. Best is X with sectors [-10.8, 82.8] and [169.2, 262.8]: 144
    # and 288 each miss by 25.2 degrees, at weight (chroma 1 - 0.06) on a fifth of the pixels.
    five = st.hue_disharmony(palette_image([0, 72, 144, 216, 288]))
    assert five == pytest.approx(2 * 25.2 * 0.94 / 5)


def test_hue_disharmony_matches_a_brute_force_search():
    rng = np.random.default_rng(3)
    img = rng.random((24, 24, 3))
    x = img
    v, lo = x.max(-1), x.min(-1)
    c = v - lo
    safe = np.where(c > 0, c, 1.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    h = np.where(v == r, ((g - b) / safe) % 6.0, np.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)) * 60.0
    bins = (h.astype(int) % 360).ravel() + 0.5
    w = np.maximum(c - 0.06, 0.0).ravel()
    best = np.inf
    for sectors in st.HUE_TEMPLATES.values():
        for alpha in range(360):
            d = np.full(bins.shape, np.inf)
            for offset, width in sectors:
                ang = np.abs((bins - alpha - offset + 180.0) % 360.0 - 180.0)
                d = np.minimum(d, np.maximum(ang - width / 2, 0.0))
            best = min(best, float((w * d).sum() / c.size))
    assert st.hue_disharmony(img) == pytest.approx(best, rel=1e-6, abs=1e-9)


def test_sickly_chroma_sees_yellow_green_but_not_warm_tones():
    yellow_green = constant((0.6, 0.7, 0.2))
    warm = constant((0.8, 0.5, 0.3))
    assert st.sickly_chroma(yellow_green) > 30
    assert st.sickly_chroma(warm) == 0.0


def test_curve_interpolates_and_holds_its_ends():
    anchors = ((1.0, 2.0), (2.0, 1.0), (3.0, 0.0))
    assert curve(0.0, anchors) == 2.0 and curve(1.5, anchors) == 1.5 and curve(9.0, anchors) == 0.0


# --- the judge --------------------------------------------------------------------------------

def test_judge_is_registered_and_covers_five_dimensions():
    assert registry.get("judges", "classical") is ClassicalJudge
    assert issubclass(ClassicalJudge, Judge)
    assert COVERS == ("clarity", "color brightness", "color aesthetic", "lighting distinction", "detail refinement")


def test_uncovered_dimensions_come_back_none_and_covered_in_range():
    img = from_array(np.random.default_rng(0).random((64, 64, 3)))
    dims = list(COVERS) + ["emotion", "main object", "richness"]
    [res] = ClassicalJudge().judge([img], dims)
    assert res.error is None
    assert all(res.scores[d] is None for d in ("emotion", "main object", "richness"))
    assert all(0.0 <= res.scores[d] <= 2.0 for d in COVERS)
    assert set(res.extra["statistics"]) >= {"blur_exponent", "noise_sigma", "laplacian_variance", "blockiness"}


def test_bad_items_fail_alone():
    good = from_array(np.full((32, 32, 3), 0.5, dtype=np.float32))
    results = ClassicalJudge().judge([None, good, OSError("truncated file x.png")], ["clarity"])
    assert results[0].error and results[0].scores == {"clarity": None}
    assert results[1].error is None and results[1].scores["clarity"] is not None
    assert "truncated file x.png" in results[2].error


def test_too_small_images_are_refused_with_a_reason():
    [res] = ClassicalJudge().judge([Image.new("RGB", (5, 40))], COVERS)
    assert res.scores == {d: None for d in COVERS}
    assert "5x40 pixels is too small" in res.error


def test_judging_is_deterministic_and_mode_independent():
    arr = np.random.default_rng(4).random((80, 60, 3)).astype(np.float32)
    rgb = from_array(arr)
    a = ClassicalJudge().judge([rgb], COVERS)[0].scores
    b = ClassicalJudge().judge([rgb.convert("RGBA")], COVERS)[0].scores
    assert a == b


@pytest.fixture(scope="module")
def edited():
    """J on each covered transform's dimension, per built-in photo (192 px), at each strength."""
    pytest.importorskip("skimage")
    pytest.importorskip("matplotlib")
    from aesthetic_audit.images.photos import load_photos

    transforms = registry.available("transforms")
    photos = load_photos("builtin", max_side=192)
    table = {}
    for name in COVERED_TRANSFORMS:
        t = transforms[name]
        rows = []
        for p in photos:
            edits = [t.apply(to_array(p.image), s, np.random.default_rng(0))[0] for s in STRENGTHS]
            rows.append([score(measure(from_array(e)))[t.dimension] for e in edits])
        table[name] = np.array(rows)
    return table


@pytest.mark.parametrize("name", COVERED_TRANSFORMS)
def test_j_never_rises_with_edit_strength(edited, name):
    js = edited[name]
    assert (np.diff(js, axis=1) <= 0.02).all(), np.round(js, 3)


@pytest.mark.parametrize("name", COVERED_TRANSFORMS)
def test_originals_beat_full_strength_edits_by_a_margin(edited, name):
    js = edited[name]
    drop = js[:, 0] - js[:, -1]
    assert drop.mean() >= 1.2, np.round(js, 3)
    assert (js[:, 0] >= 1.2).sum() >= 7  # "mostly": the deep-field sky is dark, the slide flat-lit
    assert (js[:, -1] <= 0.8).sum() >= 6
