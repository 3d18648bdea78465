"""Importing existing pairs: every layout, exact counts, hashes, labels, failures and idempotence."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from aesthetic_audit.errors import InputError
from aesthetic_audit.images.decode import decode_image
from aesthetic_audit.images.importers import ImportSummary, detect_format, import_pairs
from aesthetic_audit.records import IMAGES, image_pair_key
from aesthetic_audit.store.run import RunStore

CORRUPT = b"\x89PNG\r\n\x1a\n this is not really a png"


def _image(seed: int, mode: str = "RGB") -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def _encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _stored_sha(data: bytes) -> str:
    """What the run must store: the decoded RGB pixels re-encoded as PNG, hashed."""
    buf = io.BytesIO()
    decode_image(data).save(buf, format="PNG", optimize=False)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _all(store: RunStore) -> list:
    return list(store.records(IMAGES, status=None))


def _by_item(store: RunStore) -> dict:
    return {r.item: r for r in _all(store)}


def _assert_reimport_adds_nothing(path: Path, store: RunStore, first: ImportSummary) -> None:
    before = _all(store)
    images_before = sorted(p.name for p in store.images_dir.rglob("*.png"))
    again = import_pairs(path, store)
    assert again == ImportSummary(ok=0, failed=first.failed, skipped_existing=first.ok + first.skipped_existing)
    assert _all(store) == before
    assert sorted(p.name for p in store.images_dir.rglob("*.png")) == images_before


# -- folder of original/ + distorted/ ------------------------------------------------------------

def test_folder_pairs(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    a_o, a_a, b_o, b_a, c_o, orphan = (_encoded(_image(i)) for i in range(6))
    _write(root / "original" / "a.png", a_o)
    _write(root / "distorted" / "a.png", a_a)
    b_o = _encoded(_image(2), "JPEG")
    _write(root / "original" / "b.jpg", b_o)               # stems match across extensions
    _write(root / "distorted" / "b.png", b_a)
    _write(root / "original" / "c.png", c_o)
    _write(root / "distorted" / "c.png", CORRUPT)
    _write(root / "original" / "zz_orphan.png", orphan)    # no prompts row names it
    _write(root / "original" / ".DS_Store", b"junk")       # hidden files are not images
    with (root / "prompts.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "p_o", "p_a", "dims", "label"])
        w.writerow(["a.png", "a cat", "a blurry cat", '["clarity", "emotion"]', "1"])
        w.writerow(["b", "a dog", "a dark dog", "color brightness; richness", ""])
        w.writerow(["c.png", "a cow", "a noisy cow", "", "tie"])
        w.writerow(["d.png", "a hen", "a hen", "", ""])     # no such files

    assert detect_format(root) == "folder"
    store = RunStore(tmp_path / "run")
    totals: list[int] = []

    def progress(rows, total):
        totals.append(total)
        return rows

    summary = import_pairs(root, store, progress=progress)
    assert summary == ImportSummary(ok=2, failed=3, skipped_existing=0)
    assert totals == [5]  # four prompts rows and the orphan image, counted before the first is read

    records = _all(store)
    assert [r.item for r in records] == ["prompts.csv:row 1", "prompts.csv:row 2", "prompts.csv:row 3",
                                         "prompts.csv:row 4", "original/zz_orphan.png"]
    a, b, c, d, o = records
    assert a.status == b.status == "ok"
    assert (a.data["p_o"], a.data["p_a"], a.data["dims"]) == ("a cat", "a blurry cat", ["clarity", "emotion"])
    assert a.data["label"] == {"value": 1, "source": "import"}
    assert (a.data["image_o"], a.data["image_a"]) == (_stored_sha(a_o), _stored_sha(a_a))
    assert b.data["dims"] == ["color brightness", "richness"]
    assert b.data["label"] is None and b.data["model"] is None
    assert b.data["image_o"] == _stored_sha(b_o)
    assert (a.data["backend"], a.data["strength"], a.data["transforms"]) == ("import", None, [])
    assert a.data["image_pair_id"] == a.key
    assert a.key == image_pair_key(
        backend={"name": "import", "version": "1"},
        inputs={"image_o": _stored_sha(a_o), "image_a": _stored_sha(a_a), "p_o": "a cat", "p_a": "a blurry cat",
                "dims": ["clarity", "emotion"]}, seed=None)

    assert c.status == "failed" and "distorted/c.png" in c.error and "recognised" in c.error
    assert d.status == "failed" and "original/d.*: file not found" in d.error
    assert o.status == "failed" and "no row in prompts.csv" in o.error
    # The good image of the bad pair c was not stored: only a, b and nothing else.
    assert len(list(store.images_dir.rglob("*.png"))) == 4

    _assert_reimport_adds_nothing(root, store, summary)


def test_folder_pairs_with_io_ia_names_and_jsonl_prompts(tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    _write(root / "I_o" / "x.png", _encoded(_image(10, "L")))
    _write(root / "I_a" / "x.png", _encoded(_image(11, "RGBA")))
    (root / "prompts.jsonl").write_text(json.dumps(
        {"file": "x", "p_o": "po", "p_a": "pa", "dims": ["clarity"], "model": "sdxl", "label": 0}) + "\n")
    store = RunStore(tmp_path / "run")
    assert import_pairs(root, store) == ImportSummary(ok=1, failed=0, skipped_existing=0)
    (record,) = _all(store)
    assert (record.item, record.data["model"], record.data["label"]) == (
        "prompts.jsonl:row 1", "sdxl", {"value": 0, "source": "import"})
    stored = Image.open(store.image_path(record.data["image_a"]))
    assert stored.format == "PNG" and stored.mode == "RGB"


# -- CSV / JSONL manifests ----------------------------------------------------------------------------

def test_csv_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    one_o, one_a, two_o, two_a = (_encoded(_image(20 + i)) for i in range(4))
    _write(folder / "imgs" / "1o.png", one_o)
    _write(folder / "imgs" / "1a.png", one_a)
    _write(folder / "imgs" / "2o.png", two_o)
    two_a_path = _write(folder / "more" / "2a.png", two_a)  # absolute paths inside the folder work too
    manifest = folder / "pairs.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_o", "image_a", "p_o", "p_a", "dims", "model", "label"])
        w.writerow(["imgs/1o.png", "imgs/1a.png", "p one", "p one, ugly", '["clarity"]', "flux", "1"])
        w.writerow(["imgs/2o.png", str(two_a_path), "p two", "p two, dark", "color brightness", "", "tie"])
        w.writerow(["imgs/missing.png", "imgs/1a.png", "p", "q", "", "", ""])
        w.writerow(["imgs/1o.png", "imgs/1a.png", "p", "", "", "", ""])
        w.writerow(["imgs/1o.png", "imgs/1a.png", "p", "q", "", "", "7"])
        w.writerow(["imgs/1o.png", "imgs/1a.png", "p one", "p one, ugly", '["clarity"]', "flux", "1"])  # repeat

    store = RunStore(tmp_path / "run")
    summary = import_pairs(manifest, store)
    assert summary == ImportSummary(ok=2, failed=3, skipped_existing=1)
    items = _by_item(store)
    assert list(items) == [f"pairs.csv:row {n}" for n in range(1, 6)]  # row 6 duplicates row 1
    one, two = items["pairs.csv:row 1"], items["pairs.csv:row 2"]
    assert (one.data["model"], one.data["label"], one.data["dims"]) == ("flux", {"value": 1, "source": "import"},
                                                                        ["clarity"])
    assert (one.data["image_o"], one.data["image_a"]) == (_stored_sha(one_o), _stored_sha(one_a))
    assert (two.data["image_a"], two.data["label"], two.data["dims"]) == (
        _stored_sha(two_a), {"value": -1, "source": "import"}, ["color brightness"])
    assert one.data["source_item"] == "pairs.csv:row 1"
    assert "imgs/missing.png: file not found" in items["pairs.csv:row 3"].error
    assert "p_a is missing" in items["pairs.csv:row 4"].error
    assert "label '7'" in items["pairs.csv:row 5"].error

    _assert_reimport_adds_nothing(manifest, store, summary)


def test_unknown_or_comma_joined_dimensions_fail_their_row(tmp_path: Path) -> None:
    from aesthetic_audit.dimensions import load_catalogue

    folder = tmp_path / "data"
    _write(folder / "o.png", _encoded(_image(1)))
    _write(folder / "a.png", _encoded(_image(2)))
    manifest = folder / "pairs.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_o", "image_a", "p_o", "p_a", "dims"])
        w.writerow(["o.png", "a.png", "p", "q blurry", "clarty"])
        w.writerow(["o.png", "a.png", "p", "q blurry dark", "clarity,color brightness"])
        w.writerow(["o.png", "a.png", "p", "q blurry dark", "clarity;color brightness"])
    store = RunStore(tmp_path / "run")
    summary = import_pairs(manifest, store, dimensions=load_catalogue().keys())
    assert (summary.ok, summary.failed) == (1, 2)
    items = _by_item(store)
    assert "unknown dimension 'clarty'" in items["pairs.csv:row 1"].error
    assert "'clarity,color brightness'" in items["pairs.csv:row 2"].error
    assert "separated by ';'" in items["pairs.csv:row 2"].error
    assert items["pairs.csv:row 3"].data["dims"] == ["clarity", "color brightness"]


def test_jsonl_manifest_with_a_broken_line(tmp_path: Path) -> None:
    _write(tmp_path / "o.png", _encoded(_image(30)))
    _write(tmp_path / "a.png", _encoded(_image(31)))
    good = {"image_o": "o.png", "image_a": "a.png", "p_o": "x", "p_a": "y", "dims": "clarity;emotion"}
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(json.dumps(good) + "\n{not json\n\n" + json.dumps({**good, "p_o": None}) + "\n")
    store = RunStore(tmp_path / "run")
    assert import_pairs(manifest, store) == ImportSummary(ok=1, failed=2, skipped_existing=0)
    items = _by_item(store)
    assert items["pairs.jsonl:row 1"].data["dims"] == ["clarity", "emotion"]
    assert "not valid JSON" in items["pairs.jsonl:row 2"].error
    assert "p_o is missing" in items["pairs.jsonl:row 4"].error  # rows are line numbers


def test_manifest_without_required_columns_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("image_o,p_o,p_a\nx.png,a,b\n")
    store = RunStore(tmp_path / "run")
    with pytest.raises(InputError, match="image_a or image_distorted"):
        import_pairs(manifest, store)
    assert _all(store) == []


def test_unknown_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match="cannot tell the layout"):
        import_pairs(tmp_path / "notes.txt", RunStore(tmp_path / "run"))
    with pytest.raises(InputError, match="does not exist"):
        import_pairs(tmp_path / "nope", RunStore(tmp_path / "run"))


# -- the study's Hugging Face schema: Parquet and save_to_disk --------------------------------------

_HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_HF_SCHEMA = pa.schema([
    ("index", pa.int64()), ("model", pa.string()),
    ("prompt_original", pa.string()), ("prompt_distorted", pa.string()), ("selected_dims", pa.string()),
    ("image_original", _HF_IMAGE), ("image_distorted", _HF_IMAGE), ("llm_selected", pa.int64()),
])


def _hf_rows() -> list[dict]:
    rows = []
    for k, (index, label) in enumerate([(10, -1), (11, 0), (12, 1), (13, None)]):
        rows.append({
            "index": index, "model": f"model-{k % 2}",
            "prompt_original": f"caption {index}", "prompt_distorted": f"caption {index}, washed out",
            "selected_dims": json.dumps(["color aesthetic", "clarity"][: 1 + k % 2]),
            "image_original": {"bytes": _encoded(_image(40 + k), "JPEG"), "path": f"o{index}.jpg"},
            "image_distorted": {"bytes": CORRUPT if index == 12 else _encoded(_image(50 + k)),
                                "path": f"a{index}.png"},
            "llm_selected": label,
        })
    return rows


def _check_hf_import(store: RunStore, summary: ImportSummary, prefix: str) -> None:
    rows = _hf_rows()
    assert summary == ImportSummary(ok=3, failed=1, skipped_existing=0)
    records = _all(store)
    assert [r.item for r in records] == [f"{prefix}:index {i}" for i in (10, 11, 12, 13)]
    for record, row in zip(records, rows):
        if row["index"] == 12:
            assert record.status == "failed"
            assert record.error == f"image image_distorted of {prefix}:index 12: not a recognised image format"
            continue
        assert record.status == "ok"
        assert record.data["p_o"] == row["prompt_original"] and record.data["p_a"] == row["prompt_distorted"]
        assert record.data["dims"] == json.loads(row["selected_dims"])
        assert record.data["model"] == row["model"]
        expected_label = None if row["llm_selected"] is None else {"value": row["llm_selected"],
                                                                    "source": "llm_selected"}
        assert record.data["label"] == expected_label
        assert record.data["image_o"] == _stored_sha(row["image_original"]["bytes"])
        assert record.data["image_a"] == _stored_sha(row["image_distorted"]["bytes"])


def test_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "bench.parquet"
    pq.write_table(pa.Table.from_pylist(_hf_rows(), schema=_HF_SCHEMA), path, row_group_size=3)
    store = RunStore(tmp_path / "run")
    assert detect_format(path) == "parquet"
    summary = import_pairs(path, store)
    _check_hf_import(store, summary, "bench.parquet")
    _assert_reimport_adds_nothing(path, store, summary)


def test_parquet_folder_of_shards_in_order(tmp_path: Path) -> None:
    rows = _hf_rows()
    (tmp_path / "bench" / "data").mkdir(parents=True)
    for n, part in enumerate((rows[:2], rows[2:])):
        pq.write_table(pa.Table.from_pylist(part, schema=_HF_SCHEMA),
                       tmp_path / "bench" / "data" / f"train-{n:05d}-of-00002.parquet")
    store = RunStore(tmp_path / "run")
    summary = import_pairs(tmp_path / "bench", store)
    assert summary == ImportSummary(ok=3, failed=1, skipped_existing=0)
    assert [r.item for r in _all(store)] == [
        "data/train-00000-of-00002.parquet:index 10", "data/train-00000-of-00002.parquet:index 11",
        "data/train-00001-of-00002.parquet:index 12", "data/train-00001-of-00002.parquet:index 13"]


def _save_to_disk(folder: Path, rows: list[dict], shards: int = 2) -> None:
    """What datasets' save_to_disk writes: Arrow IPC streams listed in state.json, plus dataset_info.json."""
    folder.mkdir(parents=True)
    names = [f"data-{n:05d}-of-{shards:05d}.arrow" for n in range(shards)]
    per = -(-len(rows) // shards)
    for n, name in enumerate(names):
        table = pa.Table.from_pylist(rows[n * per:(n + 1) * per], schema=_HF_SCHEMA)
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names],
                                                   "_split": "train"}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))


def test_hf_save_to_disk_folder(tmp_path: Path) -> None:
    folder = tmp_path / "bench"
    _save_to_disk(folder, _hf_rows(), shards=1)
    store = RunStore(tmp_path / "run")
    assert detect_format(folder) == "arrow"
    summary = import_pairs(folder, store)
    _check_hf_import(store, summary, "data-00000-of-00001.arrow")
    _assert_reimport_adds_nothing(folder, store, summary)


def test_hf_dataset_dict_and_the_same_pairs_from_parquet_are_not_imported_twice(tmp_path: Path) -> None:
    root = tmp_path / "bench"
    _save_to_disk(root / "train", _hf_rows(), shards=2)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    store = RunStore(tmp_path / "run")
    first = import_pairs(root, store)
    assert first == ImportSummary(ok=3, failed=1, skipped_existing=0)
    assert [r.item for r in _all(store)][:3] == [
        "train/data-00000-of-00002.arrow:index 10", "train/data-00000-of-00002.arrow:index 11",
        "train/data-00001-of-00002.arrow:index 12"]
    # Keys hash content, not location: the same pairs from another layout are already there.
    parquet = tmp_path / "bench.parquet"
    pq.write_table(pa.Table.from_pylist(_hf_rows(), schema=_HF_SCHEMA), parquet)
    assert import_pairs(parquet, store) == ImportSummary(ok=0, failed=1, skipped_existing=3)


def test_hf_image_given_by_path_only_and_pair_ids_shared_across_models(tmp_path: Path) -> None:
    _write(tmp_path / "imgs" / "o.png", _encoded(_image(60)))
    rows = []
    for model, seed in (("base", 61), ("aligned", 62)):
        rows.append({"model": model, "prompt_original": "a vase", "prompt_distorted": "a vase, cluttered",
                     "selected_dims": '["richness"]', "image_original": {"bytes": None, "path": "imgs/o.png"},
                     "image_distorted": {"bytes": _encoded(_image(seed)), "path": None}})
    schema = pa.schema([f for f in _HF_SCHEMA if f.name not in ("index", "llm_selected")])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "b.parquet")
    store = RunStore(tmp_path / "run")
    assert import_pairs(tmp_path / "b.parquet", store) == ImportSummary(ok=2, failed=0, skipped_existing=0)
    base, aligned = _all(store)
    assert (base.item, aligned.item) == ("b.parquet:row 1", "b.parquet:row 2")
    assert base.data["label"] is None
    assert base.data["image_o"] == _stored_sha(_encoded(_image(60)))
    assert base.key != aligned.key and base.data["pair_id"] == aligned.data["pair_id"]


def test_hf_table_missing_columns_is_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"prompt_original": ["x"]}), tmp_path / "x.parquet")
    with pytest.raises(InputError, match="image_o or image_original"):
        import_pairs(tmp_path / "x.parquet", RunStore(tmp_path / "run"))


# -- what a manifest may make the import read ----------------------------------------------------

def _manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_o", "image_a", "p_o", "p_a"])
        for n, (image_o, image_a) in enumerate(rows):
            w.writerow([image_o, image_a, f"p{n}", f"p{n}, ugly"])
    return path


def test_manifest_paths_read_only_regular_files_inside_its_folder(tmp_path: Path, monkeypatch) -> None:
    from aesthetic_audit.images import decode

    folder = tmp_path / "data"
    good_o, good_a = _write(folder / "o.png", _encoded(_image(70))), _write(folder / "a.png", _encoded(_image(71)))
    outside = _write(tmp_path / "secret.png", _encoded(_image(72)))
    os.mkfifo(folder / "pipe.png")  # nobody writes: a blocking read would hang the import
    (folder / "link.png").symlink_to(outside)  # inside by name, outside once resolved
    big = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    _write(folder / "big.png", _encoded(Image.fromarray(big)))
    monkeypatch.setattr(decode, "MAX_FILE_BYTES", 4096)
    manifest = _manifest(folder / "pairs.csv", [
        ("o.png", "a.png"), ("o.png", "../secret.png"), ("o.png", str(outside)), ("o.png", "/dev/zero"),
        ("o.png", "pipe.png"), ("o.png", "link.png"), ("o.png", "big.png"), ("o.png", "../" * 40 + "etc/passwd")])
    store = RunStore(tmp_path / "run")
    assert import_pairs(manifest, store) == ImportSummary(ok=1, failed=7, skipped_existing=0)
    errors = {int(r.item.split()[-1]): r.error for r in _all(store) if r.status == "failed"}
    for n, shown in ((2, "../secret.png"), (3, str(outside)), (4, "/dev/zero"), (6, "link.png"),
                     (8, "../" * 40 + "etc/passwd")):
        assert errors[n] == (f"image {shown}: resolves outside {folder}; pass --allow-outside "
                             "(allow_outside=True) to read images from elsewhere")
    assert errors[5] == "image pipe.png: is a FIFO; only regular files are read"
    assert errors[7].startswith("image big.png: ") and "exceeds the file size limit of 0.00390625 MiB" in errors[7]
    (ok,) = _all(store)[:1]
    assert (ok.item, ok.data["image_o"], ok.data["image_a"]) == (
        "pairs.csv:row 1", _stored_sha(good_o.read_bytes()), _stored_sha(good_a.read_bytes()))

    # The opt-in reads paths elsewhere; devices, FIFOs and the size limit still hold.
    store = RunStore(tmp_path / "run2")
    assert import_pairs(manifest, store, allow_outside=True) == ImportSummary(ok=4, failed=4, skipped_existing=0)
    errors = {int(r.item.split()[-1]): r.error for r in _all(store) if r.status == "failed"}
    assert errors[4] == "image /dev/zero: is a character device; only regular files are read"
    assert errors[5] == "image pipe.png: is a FIFO; only regular files are read"
    assert "exceeds the file size limit" in errors[7]
    assert errors[8] == "image " + "../" * 40 + "etc/passwd: not a recognised image format"


def _jpeg_exif_pillow_cannot_rewrite() -> bytes:
    """Orientation 6 and an XResolution stored as ASCII: Pillow's exif_transpose raises TypeError."""
    entries = [(0x011A, 2, 8, b"seventy\0"), (0x0112, 3, 1, struct.pack("<H", 6))]
    table = b"".join(struct.pack("<HHI", tag, kind, count) + (struct.pack("<I", 38) if len(v) > 4 else v.ljust(4, b"\0"))
                     for tag, kind, count, v in entries)
    exif = b"Exif\0\0II*\0" + struct.pack("<IH", 8, 2) + table + b"\0\0\0\0" + entries[0][3]
    buf = io.BytesIO()
    _image(80).save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def test_a_jpeg_whose_exif_pillow_cannot_rewrite_fails_its_row_only_also_on_a_rerun(tmp_path: Path) -> None:
    from PIL import ImageOps

    data = _jpeg_exif_pillow_cannot_rewrite()
    with pytest.raises(TypeError):  # the failure on this Pillow that must not escape
        ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    folder = tmp_path / "data"
    _write(folder / "camera.jpg", data)
    _write(folder / "o.png", _encoded(_image(81)))
    _write(folder / "a.png", _encoded(_image(82)))
    manifest = _manifest(folder / "pairs.csv", [("o.png", "camera.jpg"), ("o.png", "a.png")])
    store = RunStore(tmp_path / "run")
    for _ in range(2):
        assert import_pairs(manifest, store).failed == 1
        bad, good = _all(store)
        assert bad.item == "pairs.csv:row 1" and bad.status == "failed"
        assert bad.error.startswith("image camera.jpg: malformed EXIF metadata") and "TypeError" in bad.error
        assert good.status == "ok"


def _lab_tiff() -> bytes:
    buf = io.BytesIO()
    Image.frombytes("LAB", (5, 4), bytes([128, 22, 228]) * 20).save(buf, format="TIFF")  # a* 22, b* -28
    return buf.getvalue()


def test_the_same_lab_tiff_imported_twice_is_one_image_and_one_pair(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    _write(folder / "lab.tif", _lab_tiff())
    _write(folder / "a.png", _encoded(_image(90)))
    manifest = _manifest(folder / "pairs.csv", [("lab.tif", "a.png")])
    store = RunStore(tmp_path / "run")
    assert import_pairs(manifest, store) == ImportSummary(ok=1, failed=0, skipped_existing=0)
    # A copy under another name, in another manifest: the same pixels, so the same pair.
    _write(folder / "copy.tif", _lab_tiff())
    again = _manifest(folder / "again.csv", [("copy.tif", "a.png")])
    assert import_pairs(again, store) == ImportSummary(ok=0, failed=0, skipped_existing=1)
    (record,) = _all(store)
    stored = store.image_path(record.data["image_o"]).read_bytes()
    assert b"iCCP" not in stored and b"tIME" not in stored  # no profile stamped with a creation time
    assert Image.open(io.BytesIO(stored)).getpixel((2, 2)) == decode_image(_lab_tiff()).getpixel((2, 2))
    assert len(list(store.images_dir.rglob("*.png"))) == 2


def test_progress_gets_the_number_of_rows_before_the_first(tmp_path: Path) -> None:
    parquet = tmp_path / "bench.parquet"
    pq.write_table(pa.Table.from_pylist(_hf_rows(), schema=_HF_SCHEMA), parquet, row_group_size=3)
    _save_to_disk(tmp_path / "saved", _hf_rows(), shards=2)
    _write(tmp_path / "m" / "o.png", _encoded(_image(95)))
    manifest = _manifest(tmp_path / "m" / "pairs.csv", [("o.png", "o.png")] * 3)
    for path, rows in ((parquet, 4), (tmp_path / "saved", 4), (manifest, 3)):
        seen: list[tuple[int, int]] = []

        def progress(items, total):
            for n, item in enumerate(items, start=1):
                seen.append((n, total))
                yield item

        import_pairs(path, RunStore(tmp_path / f"run-{path.name}"), progress=progress)
        assert seen == [(n, rows) for n in range(1, rows + 1)], path.name


def test_run_import_shows_a_bar_over_the_rows_and_passes_the_opt_in(tmp_path: Path, monkeypatch) -> None:
    from aesthetic_audit import ui
    from aesthetic_audit.pipeline import Run

    bars = []

    def progress(items, *, total=None, desc="", unit="item"):
        bars.append((desc, total))
        return items

    monkeypatch.setattr(ui, "progress", progress)
    _write(tmp_path / "o.png", _encoded(_image(96)))
    _write(tmp_path / "a.png", _encoded(_image(97)))
    (tmp_path / "data").mkdir()
    manifest = _manifest(tmp_path / "data" / "pairs.csv", [("../o.png", "../a.png"), ("../o.png", "../o.png")])
    run = Run.open(tmp_path / "run")
    assert (run.import_pairs(manifest).failed, bars) == (2, [("import", 2)])
    assert run.import_pairs(manifest, allow_outside=True).new == 2
