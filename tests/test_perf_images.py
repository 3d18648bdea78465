"""The image stages' performance changes keep runs exact: the PNG level is fixed per run (old runs keep 6,
new runs get 1), remembered photo and file hashes skip decoding on a rerun without changing a record, and
stages write in chunks yet resume exactly after an interruption."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aesthetic_audit.config import load_config
from aesthetic_audit.dimensions import load_catalogue
from aesthetic_audit.errors import ConfigError, InputError
from aesthetic_audit.images import importers, photos, stage
from aesthetic_audit.images.importers import import_pairs
from aesthetic_audit.pipeline import Run
from aesthetic_audit.prompts.pairs_io import import_prompt_pairs
from aesthetic_audit.store import RunStore

EDIT = {"images.editor.dimensions": ["color brightness"], "images.editor.strengths": [0.5, 1.0],
        "images.editor.pairs_per_photo": 1, "images.editor.max_side": 32}


def _noise(seed: int, size=(40, 30)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def _photos(folder: Path, n: int = 3) -> str:
    folder.mkdir()
    for i in range(n):
        Image.fromarray(_noise(i, (48, 36))).save(folder / f"p{i}.png")
    (folder / "captions.csv").write_text("file,caption\n" + "".join(f"p{i}.png,A photo number {i}.\n"
                                                                    for i in range(n)))
    return str(folder)


def _pairs(folder: Path, n: int = 3) -> Path:
    folder.mkdir()
    rows = []
    for i in range(n):
        Image.fromarray(_noise(10 + i)).save(folder / f"o{i}.png")
        Image.fromarray(_noise(20 + i) // 2).save(folder / f"a{i}.jpg", quality=90)
        rows.append({"image_o": f"o{i}.png", "image_a": f"a{i}.jpg", "p_o": f"picture {i}",
                     "p_a": f"a dark picture {i}", "dims": "color brightness"})
    with open(folder / "pairs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "pairs.csv"


def _records(store: RunStore) -> dict[str, tuple]:
    return {r.key: (r.stage, r.item, r.status, json.dumps(r.data, sort_keys=True)) for r in store.records(status=None)}


def _zlib_level(png: bytes) -> int:
    """The FLEVEL field of the first IDAT's zlib header (RFC 1950): 0 fastest (levels 0-1), 2 default (6)."""
    pos = png.index(b"IDAT") + 4
    return png[pos + 1] >> 6


def _png(pixels: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


# -- the PNG level of a run ---------------------------------------------------------------------------

def test_png_level_is_validated():
    assert load_config().images.png_level is None
    assert load_config(overrides={"images.png_level": 0}).images.png_level == 0
    with pytest.raises(ConfigError, match="png_level"):
        load_config(overrides={"images.png_level": 10})


def test_the_level_of_a_run():
    from aesthetic_audit.images.decode import run_png_level

    assert run_png_level(3, {"images": {"png_level": 1}}) == 3  # set: wins
    assert run_png_level(None, {"images": {"png_level": 9}}) == 9  # recorded by the run
    assert run_png_level(None, {"images": {"backend": "editor"}}, empty=True) == 6  # made before the setting
    assert run_png_level(None, None, empty=True) == 1  # new
    assert run_png_level(None, None) == 6  # images but no recorded config: kept as they were made


def test_a_new_run_stores_level_1_and_records_it(tmp_path):
    run = Run.open(tmp_path / "run", overrides={**EDIT, "images.editor.photos": _photos(tmp_path / "photos")})
    assert run.config.images.png_level == 1
    run.edit()
    run.import_pairs(_pairs(tmp_path / "pairs"))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["images"]["png_level"] == 1
    for path in (tmp_path / "run" / "images").rglob("*.png"):
        data = path.read_bytes()
        pixels = np.asarray(Image.open(io.BytesIO(data)))
        # The stored bytes are what Pillow writes for these pixels at zlib level 1, header says "fastest".
        assert data == _png(pixels, 1) and _zlib_level(data) == 0
    assert Run.open(tmp_path / "run").config.images.png_level == 1  # reopened: the recorded level


def test_a_run_made_before_the_setting_keeps_level_6_and_reruns_with_nothing_new(tmp_path):
    overrides = {**EDIT, "images.editor.photos": _photos(tmp_path / "photos")}
    pairs = _pairs(tmp_path / "pairs")
    run = Run.open(tmp_path / "run", overrides={**overrides, "images.png_level": 6})
    assert run.edit().new == 6 and run.import_pairs(pairs).new == 3
    before = _records(run.store)
    images_before = sorted(p.name for p in run.store.images_dir.rglob("*.png"))
    for name in images_before:  # Pillow's default level: what every run before the setting stored
        data = next(run.store.images_dir.rglob(name)).read_bytes()
        assert data == _png(np.asarray(Image.open(io.BytesIO(data))), 6) and _zlib_level(data) == 2
    # What a run made before the change looks like: a manifest config without the field and no memo.
    manifest = run.store.read_manifest()
    del manifest["config"]["images"]["png_level"]
    run.store.write_manifest(manifest)
    run.store.db.execute("DELETE FROM memo")
    run.store.close()

    again = Run.open(tmp_path / "run", overrides=overrides)
    assert again.config.images.png_level == 6
    edit, imported = again.edit(), again.import_pairs(pairs)
    assert (edit.new, edit.cached, imported.new, imported.cached) == (0, 6, 0, 3)
    assert _records(again.store) == before
    assert sorted(p.name for p in again.store.images_dir.rglob("*.png")) == images_before
    assert again.store.read_manifest()["config"]["images"]["png_level"] == 6


def test_the_direct_api_on_a_store_without_a_manifest_keeps_level_6(tmp_path):
    store = RunStore(tmp_path / "run")
    import_pairs(_pairs(tmp_path / "pairs", 1), store)
    (pair,) = store.records("images")
    data = store.image_path(pair.data["image_o"]).read_bytes()
    assert data == _png(np.asarray(Image.open(io.BytesIO(data))), 6)
    # Asked for explicitly, another level stores other bytes, so another key.
    other = RunStore(tmp_path / "other")
    import_pairs(tmp_path / "pairs" / "pairs.csv", other, png_level=1)
    (pair1,) = other.records("images")
    assert pair1.key != pair.key


# -- remembered hashes: reruns decode nothing -----------------------------------------------------------

def _count_loads(monkeypatch) -> list[str]:
    calls: list[str] = []
    load = photos.PhotoSource.load

    def counting(self, max_side):
        calls.append(self.name)
        return load(self, max_side)

    monkeypatch.setattr(photos.PhotoSource, "load", counting)
    return calls


def test_an_edit_rerun_decodes_only_photos_with_a_pair_to_make(tmp_path, monkeypatch):
    overrides = {**EDIT, "images.editor.photos": _photos(tmp_path / "photos")}
    calls = _count_loads(monkeypatch)
    run = Run.open(tmp_path / "run", overrides=overrides)
    assert run.edit().new == 6 and sorted(calls) == ["p0.png", "p1.png", "p2.png"]
    done = _records(run.store)

    calls.clear()
    summary = Run.open(tmp_path / "run").edit()
    assert (summary.new, summary.cached, calls) == (0, 6, [])

    # One pair lost (a killed run): only its photo is decoded, and the pair comes back as it was.
    lost = next(r for r in run.store.records("images") if r.data["source_item"] == "p1.png")
    run.store.db.execute("DELETE FROM records WHERE key = ?", (lost.key,))
    summary = Run.open(tmp_path / "run").edit()
    assert (summary.new, summary.cached, calls) == (1, 5, ["p1.png"])
    assert _records(run.store) == done

    # A deleted image file is written again, not trusted to the memo.
    calls.clear()
    run.store.image_path(lost.data["image_o"]).unlink()
    assert Run.open(tmp_path / "run").edit().new == 0 and calls == ["p1.png"]
    assert run.store.image_path(lost.data["image_o"]).is_file()

    # Another max_side makes other stored photos: every photo is decoded again.
    calls.clear()
    other = Run.open(tmp_path / "run", overrides={"images.editor.max_side": 40}).edit()
    assert other.new == 6 and sorted(calls) == ["p0.png", "p1.png", "p2.png"]


def test_a_photo_file_that_changes_is_decoded_again(tmp_path, monkeypatch):
    folder = _photos(tmp_path / "photos", 1)
    calls = _count_loads(monkeypatch)
    run = Run.open(tmp_path / "run", overrides={**EDIT, "images.editor.photos": folder})
    run.edit()
    Image.fromarray(_noise(99, (48, 36))).save(Path(folder) / "p0.png")
    calls.clear()
    assert Run.open(tmp_path / "run").edit().new == 2 and calls == ["p0.png"]
    image_o = {r.data["image_o"] for r in run.store.records("images")}
    assert len(image_o) == 2  # the old and the new photo


def test_a_reimport_decodes_no_image(tmp_path, monkeypatch):
    run = Run.open(tmp_path / "run")
    first = run.import_pairs(_pairs(tmp_path / "pairs"))
    before = _records(run.store)

    def refuse(*args, **kwargs):
        raise AssertionError("decoded on a re-import")

    monkeypatch.setattr(importers, "decode_image", refuse)
    again = Run.open(tmp_path / "run").import_pairs(tmp_path / "pairs" / "pairs.csv")
    assert (first.new, again.new, again.cached) == (3, 0, 3)
    assert _records(run.store) == before


# -- chunked writes resume exactly ----------------------------------------------------------------------

def test_an_interrupted_edit_keeps_what_it_made_and_resumes_exactly(tmp_path, monkeypatch):
    overrides = {**EDIT, "images.editor.photos": _photos(tmp_path / "photos")}
    whole = Run.open(tmp_path / "whole", overrides=overrides)
    whole.edit()
    apply, calls = stage.apply_plan, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return apply(*args)

    monkeypatch.setattr(stage, "apply_plan", interrupted)
    run = Run.open(tmp_path / "run", overrides=overrides)
    with pytest.raises(KeyboardInterrupt):
        run.edit()
    assert len(list(run.store.records("images"))) == 3  # committed on the way out
    monkeypatch.setattr(stage, "apply_plan", apply)
    summary = Run.open(tmp_path / "run").edit()
    assert (summary.new, summary.cached) == (3, 3)
    assert {k: v[:3] + (json.loads(v[3]),) for k, v in _records(run.store).items()} == \
        {k: v[:3] + (json.loads(v[3]),) for k, v in _records(whole.store).items()}


def test_an_interrupted_import_resumes_exactly(tmp_path, monkeypatch):
    pairs = _pairs(tmp_path / "pairs", 4)
    whole = Run.open(tmp_path / "whole")
    whole.import_pairs(pairs)
    source, calls = importers._source, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 5:  # the third row's I_o
            raise KeyboardInterrupt
        return source(*args)

    monkeypatch.setattr(importers, "_source", interrupted)
    run = Run.open(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run.import_pairs(pairs)
    assert len(list(run.store.records("images"))) == 2
    monkeypatch.setattr(importers, "_source", source)
    summary = Run.open(tmp_path / "run").import_pairs(pairs)
    assert (summary.new, summary.cached) == (2, 2)
    keys = {k: v[:3] for k, v in _records(run.store).items()}
    assert keys == {k: v[:3] for k, v in _records(whole.store).items()}


def test_duplicate_rows_across_a_chunk_count_once(tmp_path):
    """600 rows, two of which repeat earlier ones (one within the first chunk of 512, one after it)."""
    rows = [{"p_o": f"a cat {i}", "p_a": f"a blurry cat {i}", "dims": "clarity"} for i in range(598)]
    rows.insert(100, dict(rows[3]))
    rows.append(dict(rows[0]))
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = RunStore(tmp_path / "run")
    summary = import_prompt_pairs(store, path, load_catalogue())
    distinct = {(r["p_o"], r["p_a"]) for r in rows}
    assert (summary.total, summary.new, summary.cached, summary.failed) == (600, len(distinct), 2, 0)
    assert len(list(store.records("prompts"))) == len(distinct) == 598
    again = import_prompt_pairs(store, path, load_catalogue())
    assert (again.new, again.cached) == (0, 600)


def test_a_malformed_pairs_file_stores_nothing(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"p_o": "a", "p_a": "b", "dims": "clarity"}\n{"p_o": \n')
    store = RunStore(tmp_path / "run")
    with pytest.raises(InputError, match=r"pairs.jsonl:2: not valid JSON"):
        import_prompt_pairs(store, path, load_catalogue())
    assert list(store.records(status=None)) == []
