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


# -- distinct draws, no duplicate pairs ------------------------------------------------------------

def _pairs(run) -> list[tuple[str, str, str]]:
    return [(r.data["image_o"], r.data["image_a"], r.data["p_a"]) for r in run.store.records("images")]


def test_a_dimension_with_one_possible_edit_makes_it_once_per_photo_and_says_so(tmp_path):
    dims = tmp_path / "dims.yaml"
    dims.write_text(PIXELATED)
    run = Run.open(tmp_path / "run", overrides={
        "dimensions_file": str(dims), "images.editor.photos": str(_photos(tmp_path / "photos", n=3)),
        "images.editor.dimensions": ["pixelated"], "images.editor.strengths": [0.5, 1.0],
        "images.editor.pairs_per_photo": 3})
    summary = run.edit()
    # One dimension with one transform: one possible edit per photo, at two strengths.
    assert (summary.total, summary.new, summary.failed) == (6, 6, 0)
    assert len(set(_pairs(run))) == len(_pairs(run)) == 6
    (warning,) = summary.warnings
    assert "allow only 1 distinct edit(s) of a photo" in warning and "pairs_per_photo=3" in warning


def test_the_draws_of_a_photo_are_distinct_sets_of_dimension_and_transform(tmp_path):
    # clarity has three transforms and color brightness one: with one dimension per edit, four edits exist.
    overrides = {"images.editor.photos": str(_photos(tmp_path / "photos")), "images.editor.strengths": [1.0],
                 "images.editor.dimensions": ["clarity", "color brightness"],
                 "images.editor.k_min": 1, "images.editor.k_max": 1}
    run = Run.open(tmp_path / "run", overrides={**overrides, "images.editor.pairs_per_photo": 4})
    summary = run.edit()
    assert (summary.new, summary.warnings) == (8, [])
    by_photo: dict[str, list[str]] = {}
    for rec in run.store.records("images"):
        by_photo.setdefault(rec.data["source_item"], []).append(rec.data["transforms"][0]["name"])
    for names in by_photo.values():
        assert sorted(names) == ["defocus_blur", "motion_blur", "sensor_noise", "underexposure"]
    # Asking for more than exist makes each once and warns.
    more = Run.open(tmp_path / "run2", overrides={**overrides, "images.editor.pairs_per_photo": 6}).edit()
    assert more.new == 8 and "allow only 4 distinct edit(s)" in more.warnings[0]


def test_the_same_pair_is_never_stored_twice(tmp_path):
    dims = tmp_path / "dims.yaml"
    dims.write_text(PIXELATED)
    photos = _photos(tmp_path / "photos", n=1)
    (photos / "copy.png").write_bytes((photos / "p0.png").read_bytes())
    (photos / "captions.csv").write_text("file,caption\np0.png,A photo.\ncopy.png,A photo.\n")
    overrides = {"dimensions_file": str(dims), "images.editor.photos": str(photos),
                 "images.editor.dimensions": ["pixelated"], "images.editor.strengths": [1.0],
                 "images.editor.pairs_per_photo": 1}
    run = Run.open(tmp_path / "run", overrides=overrides)
    summary = run.edit()
    # Two files, the same pixels and caption: the same I_o, I_a and p_a, stored once.
    assert (summary.total, summary.new, summary.cached) == (2, 1, 1)
    assert len(_pairs(run)) == 1
    again = Run.open(tmp_path / "run", overrides=overrides).edit()
    assert (again.new, again.cached) == (0, 2) and len(_pairs(run)) == 1


def test_a_photo_whose_exif_pillow_cannot_rewrite_fails_alone_also_on_a_rerun(tmp_path):
    import io
    import struct

    from PIL import ImageOps

    photos = _photos(tmp_path / "photos")
    # Orientation 6 plus an XResolution stored as ASCII: Pillow's exif_transpose raises TypeError.
    table = (struct.pack("<HHII", 0x011A, 2, 8, 38) + struct.pack("<HHI", 0x0112, 3, 1) + struct.pack("<HH", 6, 0))
    exif = b"Exif\0\0II*\0" + struct.pack("<IH", 8, 2) + table + b"\0\0\0\0" + b"seventy\0"
    buf = io.BytesIO()
    Image.open(photos / "p1.png").save(buf, format="JPEG", exif=exif)
    with pytest.raises(TypeError):
        ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue())))
    (photos / "p1.png").unlink()
    (photos / "camera.jpg").write_bytes(buf.getvalue())
    (photos / "captions.csv").write_text("file,caption\np0.png,A photo.\ncamera.jpg,A camera photo.\n")
    overrides = {"images.editor.photos": str(photos), "images.editor.strengths": [1.0],
                 "images.editor.pairs_per_photo": 1}
    for _ in range(2):
        summary = Run.open(tmp_path / "run", overrides=overrides).edit()
        assert (summary.failed, summary.new + summary.cached) == (1, 1)
    run = Run.open(tmp_path / "run", overrides=overrides)
    (failed,) = run.store.records("images", status="failed")
    assert failed.item == "camera.jpg" and "malformed EXIF metadata" in failed.error


def test_the_progress_bar_counts_image_pairs_with_a_total(tmp_path, monkeypatch):
    from aesthetic_audit.images import stage

    photos = _photos(tmp_path / "photos", n=3)
    (photos / "p2.png").write_bytes(b"broken")  # a failed photo still moves the bar by its pairs
    bars = []

    def progress(items, total, desc, unit="item"):
        bars.append({"desc": desc, "total": total, "n": 0})
        for item in items:
            bars[-1]["n"] += 1
            yield item

    monkeypatch.setattr(stage, "progress", progress)
    run = Run.open(tmp_path / "run", overrides={"images.editor.photos": str(photos),
                                                "images.editor.strengths": [0.5, 1.0],
                                                "images.editor.pairs_per_photo": 2})
    summary = run.edit()
    assert bars == [{"desc": "edit", "total": 3 * 2 * 2, "n": 12}]
    assert (summary.new, summary.failed) == (8, 1)
