import csv
import hashlib
import json
import multiprocessing as mp

import pyarrow.parquet as pq
import pytest
from PIL import Image

from aesthetic_audit.config import AuditConfig
from aesthetic_audit.errors import InputError
from aesthetic_audit.store import Record, RunStore
from aesthetic_audit.store.export import export_stage
from aesthetic_audit.store.manifest import record_stage


def test_same_key_twice_is_a_noop(tmp_path):
    store = RunStore(tmp_path / "run")
    assert store.put(Record("k1", "prompts", "a", {"x": 1})) is True
    assert store.put(Record("k1", "prompts", "a", {"x": 2})) is False
    assert [r.data for r in store.records("prompts")] == [{"x": 1}]


def test_failed_record_is_replaced_by_success_but_never_the_reverse(tmp_path):
    store = RunStore(tmp_path)
    store.put(Record.failed("k", "score", "item 3", "HTTP 500"))
    assert store.counts() == {"score": {"ok": 0, "failed": 1}}
    assert store.put(Record("k", "score", "item 3", {"score": 1.5})) is True
    assert store.get("k").status == "ok" and store.get("k").data == {"score": 1.5}
    assert store.put(Record.failed("k", "score", "item 3", "later failure")) is False
    assert store.get("k").data == {"score": 1.5}


def test_failed_records_keep_reason_and_item(tmp_path):
    store = RunStore(tmp_path)
    store.put(Record.failed("k", "images", "pairs.csv:row 7", "image a.png: file not found", pair=7))
    (rec,) = store.records(status="failed")
    assert (rec.item, rec.error, rec.data) == ("pairs.csv:row 7", "image a.png: file not found", {"pair": 7})


def test_images_are_stored_once_by_sha256(tmp_path):
    store = RunStore(tmp_path)
    data = b"\x89PNG fake bytes"
    sha = store.put_image_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.put_image_bytes(data) == sha
    assert store.image_path(sha).read_bytes() == data
    assert len(list((tmp_path / "images").rglob("*.png"))) == 1
    img = Image.new("RGB", (3, 2), (10, 20, 30))
    sha2 = store.put_image(img)
    assert Image.open(store.image_path(sha2)).getpixel((2, 1)) == (10, 20, 30)
    with pytest.raises(InputError, match="not in run"):
        store.image_path("0" * 64)


def test_open_missing_run_without_create_names_it(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        RunStore(tmp_path / "nope", create=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a run directory"):
        RunStore(tmp_path / "empty", create=False)


def _writer(root, worker, n):
    store = RunStore(root)
    for i in range(n):
        # Overlapping keys across workers: i is shared, the worker id is not part of the key.
        store.put(Record(f"key-{i}", "score", f"item {i}", {"i": i}))
    store.put(Record(f"own-{worker}", "score", "own", {"w": worker}))


def test_several_processes_feed_one_run(tmp_path):
    RunStore(tmp_path).db  # create the schema once
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 60)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = RunStore(tmp_path)
    assert store.counts() == {"score": {"ok": 64, "failed": 0}}
    assert store.keys("score") == {f"key-{i}" for i in range(60)} | {f"own-{w}" for w in range(4)}


def test_manifest_records_config_hash_versions_and_history(tmp_path):
    store = RunStore(tmp_path)
    cfg = AuditConfig()
    record_stage(store, cfg, "prompts", {"rewriter": {"name": "template", "version": "1"}})
    cfg2 = AuditConfig(seed=7)
    m = record_stage(store, cfg2, "judge", {"judges": {"classical": {"name": "classical"}}})
    assert m["config_hash"] == cfg2.hash() != cfg.hash()
    assert m["config"]["seed"] == 7
    assert m["backends"]["rewriter"]["name"] == "template" and "judges" in m["backends"]
    assert [h["stage"] for h in m["history"]] == ["prompts", "judge"]
    assert [h["config_hash"] for h in m["history"]] == [cfg.hash(), cfg2.hash()]
    assert m["dependencies"]["numpy"]
    assert json.loads((tmp_path / "manifest.json").read_text()) == m


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_round_trip(tmp_path, fmt):
    store = RunStore(tmp_path / "run")
    store.put(Record("b", "prompts", "cap 2", {"index": 1, "p_o": "two", "dims": ["clarity"]}))
    store.put(Record("a", "prompts", "cap 1", {"index": 0, "p_o": "one, \"quoted\"", "dims": ["emotion", "richness"]}))
    store.put(Record.failed("c", "prompts", "cap 3", "too long", index=2))
    path = export_stage(store, "prompts", tmp_path / f"out.{fmt}")
    if fmt == "parquet":
        rows = pq.read_table(path).to_pylist()
    elif fmt == "csv":
        rows = list(csv.DictReader(path.open(encoding="utf-8")))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["key"] for r in rows] == ["a", "b", "c"]  # sorted by index, not insertion
    assert rows[0]["p_o"] == 'one, "quoted"'
    dims = rows[0]["dims"] if fmt == "jsonl" else json.loads(rows[0]["dims"])
    assert dims == ["emotion", "richness"]
    assert rows[2]["status"] == "failed" and rows[2]["error"] == "too long"


def test_replace_and_delete_are_for_revisable_records_only(tmp_path):
    """``put`` keeps an ok record final; ``replace`` overwrites it (a rater revising an answer) and ``delete``
    removes records of one stage by key, leaving other stages' records with the same key alone."""
    store = RunStore(tmp_path)
    store.put(Record("k1", "labels", "a", {"value": 0}))
    assert store.put(Record("k1", "labels", "a", {"value": 1})) is False and store.get("k1").data == {"value": 0}
    store.replace(Record("k1", "labels", "a", {"value": 1}))
    assert store.get("k1").data == {"value": 1} and store.counts()["labels"]["ok"] == 1
    store.put(Record("k2", "labels", "b", {"value": -1}))
    store.put(Record("k3", "score", "c", {"score": 1.0}))
    assert store.delete("labels", ["k2", "k3", "missing"]) == 1
    assert store.get("k2") is None and store.get("k3") is not None and store.delete("labels", []) == 0
