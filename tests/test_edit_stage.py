"""The editor stage: data-driven dimensions, honest p_a, construction labels, unsupported dimensions."""

import numpy as np
import pytest
from PIL import Image

from aesthetic_audit.errors import ConfigError
from aesthetic_audit.pipeline import Run
from aesthetic_audit.registry import available

PIXELATED = """
dimensions:
  - key: pixelated
    name: Pixelation
    conventional: smooth, full-resolution detail
    anti: coarse square blocks, like a tiny image blown up
    rubric: {0: clearly blocky, 1: slightly blocky, 2: smooth}
    phrasings: [big blocky pixels]
    editor: [pixelation]
"""


def _photos(folder, n=2):
    folder.mkdir()
    rng = np.random.default_rng(0)
    lines = ["file,caption"]
    for i in range(n):
        arr = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).resize((96, 72), Image.BICUBIC).save(folder / f"p{i}.png")
        lines.append(f"p{i}.png,A test photo number {i}.")
    (folder / "captions.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_user_defined_pixelated_dimension_edits_and_describes_exactly_its_effect(tmp_path):
    dims = tmp_path / "dims.yaml"
    dims.write_text(PIXELATED)
    photos = _photos(tmp_path / "photos")
    run = Run.open(tmp_path / "run", overrides={
        "dimensions_file": str(dims), "images.editor.photos": str(photos), "images.editor.dimensions": ["pixelated"],
        "images.editor.strengths": [0.5, 1.0], "images.editor.pairs_per_photo": 1})
    summary = run.edit()
    assert (summary.new, summary.failed) == (4, 0)
    pixelation = available("transforms")["pixelation"]
    for rec in run.store.records("images"):
        d = rec.data
        assert d["dims"] == ["pixelated"] and [t["name"] for t in d["transforms"]] == ["pixelation"]
        assert any(ph in d["p_a"] for ph in pixelation.phrasings) and d["p_a"].endswith("a test photo number "
                                                                                         f"{d['source_item'][1]}.")
        assert d["label"] == {"value": 1, "source": "construction"}
        block = d["transforms"][0]["params"]["block_px"]
        edited = np.asarray(Image.open(run.store.image_path(d["image_a"])))
        assert block >= 2 and (edited[:block, :block] == edited[0, 0]).all()  # constant blocks
    prompts = {r.data["pair_id"]: r.data for r in run.store.records("prompts")}
    assert all(r.data["pair_id"] in prompts for r in run.store.records("images"))


def test_dimensions_no_pixel_operation_realises_are_refused_not_faked(tmp_path):
    run = Run.open(tmp_path / "run", overrides={"images.editor.dimensions": ["emotion"]})
    with pytest.raises(ConfigError, match="'emotion' cannot be realised by a pixel operation"):
        run.edit()


def test_strengths_share_their_random_draw(tmp_path):
    photos = _photos(tmp_path / "photos", n=1)
    run = Run.open(tmp_path / "run", overrides={
        "images.editor.photos": str(photos), "images.editor.dimensions": ["clarity", "color aesthetic"],
        "images.editor.strengths": [0.3, 0.6, 1.0], "images.editor.pairs_per_photo": 2, "seed": 3})
    run.edit()
    by_draw = {}
    for rec in run.store.records("images"):
        by_draw.setdefault(rec.data["pair_id"], []).append(rec.data)
    assert len(by_draw) == 2
    for pairs in by_draw.values():
        assert sorted(p["strength"] for p in pairs) == [0.3, 0.6, 1.0]
        assert len({p["p_a"] for p in pairs}) == 1 and len({tuple(t["name"] for t in p["transforms"])
                                                            for p in pairs}) == 1


def test_a_bad_photo_is_a_failed_record_and_the_rest_go_on(tmp_path):
    photos = _photos(tmp_path / "photos")
    (photos / "p1.png").write_bytes(b"not a png")
    run = Run.open(tmp_path / "run", overrides={"images.editor.photos": str(photos),
                                                "images.editor.strengths": [1.0], "images.editor.pairs_per_photo": 1})
    summary = run.edit()
    assert (summary.new, summary.failed) == (1, 1)
    (failed,) = run.store.records("images", status="failed")
    assert failed.item == "p1.png" and "p1.png" in failed.error


def test_a_caption_over_the_word_limit_fails_its_draws_only_and_a_fix_clears_it(tmp_path):
    photos = _photos(tmp_path / "photos")
    long_caption = " ".join(["word"] * 80)
    (photos / "captions.csv").write_text(f"file,caption\np0.png,A short caption.\np1.png,{long_caption}\n")
    overrides = {"images.editor.photos": str(photos), "images.editor.strengths": [1.0],
                 "images.editor.pairs_per_photo": 1}
    run = Run.open(tmp_path / "run", overrides=overrides)
    summary = run.edit()
    assert (summary.new, summary.failed) == (1, 1)
    (failed,) = run.store.records("images", status="failed")
    assert failed.item == "p1.png#0" and "caption too long" in failed.error
    # the user shortens the caption: the failure is gone, the pair is there
    (photos / "captions.csv").write_text("file,caption\np0.png,A short caption.\np1.png,A shorter one.\n")
    again = Run.open(tmp_path / "run", overrides=overrides).edit()
    assert (again.new, again.cached, again.failed) == (1, 1, 0)
    assert run.store.counts()["images"] == {"ok": 2, "failed": 0}


def test_a_fixed_photo_leaves_no_stale_failure(tmp_path):
    photos = _photos(tmp_path / "photos")
    good = (photos / "p1.png").read_bytes()
    (photos / "p1.png").write_bytes(b"broken")
    overrides = {"images.editor.photos": str(photos), "images.editor.strengths": [1.0],
                 "images.editor.pairs_per_photo": 1}
    run = Run.open(tmp_path / "run", overrides=overrides)
    assert run.edit().failed == 1
    (photos / "p1.png").write_bytes(good)
    assert run.edit().new == 1
    assert run.store.counts()["images"] == {"ok": 2, "failed": 0}
