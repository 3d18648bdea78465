"""Human pair labels: Label Studio task export, import of Label Studio's JSON export and of CSV/TSV/JSONL rows."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

from aesthetic_audit.errors import InputError
from aesthetic_audit.labels.humans import export_label_studio, import_human_labels
from aesthetic_audit.records import IMAGES, LABELS, failed_item_key, image_pair_key, label_key
from aesthetic_audit.store.run import Record, RunStore

from fake_images import pattern

# What each answer means, worked out by hand: "First" on a task that shows the anti-aesthetic image first
# prefers the anti-aesthetic image (1), and so on; a tie is a tie whatever the order.
EXPECTED = {("o", "First"): 0, ("o", "Second"): 1, ("a", "First"): 1, ("a", "Second"): 0,
            ("o", "Tie"): -1, ("a", "Tie"): -1}


def _run(tmp_path: Path) -> tuple[RunStore, list[dict]]:
    """Six image pairs from two generators; prompt pair P0 is rendered by both, so its pair_id is ambiguous."""
    store = RunStore(tmp_path / "run")
    pairs = []
    for i, (prompt, model) in enumerate([(0, "gen-a"), (0, "gen-b"), (1, "gen-a"), (2, "gen-a"), (3, "gen-b"),
                                         (4, "gen-b")]):
        sha_o = store.put_image(Image.fromarray(pattern(f"o{i}")))
        sha_a = store.put_image(Image.fromarray(pattern(f"a{i}")))
        p_a = f"a blurry, dark photo of thing {prompt}"
        inputs = {"image_o": sha_o, "image_a": sha_a, "p_a": p_a, "model": model}
        key = image_pair_key(backend={"name": "test"}, inputs=inputs, seed=0)
        data = {"image_pair_id": key, "pair_id": f"P{prompt}", "p_o": f"a photo of thing {prompt}", "p_a": p_a,
                "dims": ["clarity"], "image_o": sha_o, "image_a": sha_a, "backend": "test", "strength": None,
                "transforms": [], "label": None, "model": model, "source_item": None}
        store.put(Record(key, IMAGES, f"pair {i}", data))
        pairs.append(data)
    return store, pairs


def _tasks(out: Path) -> list[dict]:
    return json.loads((out / "tasks.json").read_text(encoding="utf-8"))


def _data_url_bytes(url: str) -> tuple[str, bytes]:
    match = re.fullmatch(r"data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)", url)
    assert match, url[:60]
    return match.group(1), base64.b64decode(match.group(2))


def _labels(store: RunStore) -> dict[str, Record]:
    return {r.data["source"] + "|" + r.data["image_pair_id"]: r for r in store.records(LABELS)}


# -- export ----------------------------------------------------------------------------------------

def test_export_tasks_and_config(tmp_path: Path) -> None:
    store, pairs = _run(tmp_path)
    out = export_label_studio(store, tmp_path / "ls", seed=7)
    tasks = _tasks(out)
    assert [t["data"]["image_pair_id"] for t in tasks] == [p["image_pair_id"] for p in pairs]
    by_id = {p["image_pair_id"]: p for p in pairs}
    for task in tasks:
        data, pair = task["data"], by_id[task["data"]["image_pair_id"]]
        assert set(task) == {"data"}
        assert data["prompt"] == pair["p_a"] and data["seed"] == 7
        second = {"o": "a", "a": "o"}[data["first"]]
        # The recorded order is the order shown: the first image's bytes are that side's stored file.
        for field, side in (("image_first", data["first"]), ("image_second", second)):
            mime, raw = _data_url_bytes(data[field])
            assert mime == "image/png"
            assert raw == store.image_path(pair[f"image_{side}"]).read_bytes()
    assert {t["data"]["first"] for t in tasks} == {"o", "a"}  # shuffled, not always one side first

    # Deterministic: the same seed writes the same bytes; another seed changes some orders.
    again = export_label_studio(store, tmp_path / "ls2", seed=7)
    assert (again / "tasks.json").read_bytes() == (out / "tasks.json").read_bytes()
    other = _tasks(export_label_studio(store, tmp_path / "ls3", seed=8))
    assert [t["data"]["first"] for t in other] != [t["data"]["first"] for t in tasks]

    root = ET.fromstring((out / "labeling_config.xml").read_text(encoding="utf-8"))
    assert root.tag == "View"
    choices = root.findall(".//Choices")
    assert len(choices) == 1 and choices[0].get("name") == "choice"
    assert choices[0].get("choice") in ("single", "single-radio")
    options = choices[0].findall("Choice")
    assert [c.get("value") for c in options] == ["First", "Second", "Tie"]
    assert len({c.get("hotkey") for c in options}) == 3 and all(c.get("hotkey") for c in options)
    names = {el.get("name") for el in root.iter() if el.get("name")}
    assert choices[0].get("toName") in names
    assert sorted(el.get("value") for el in root.iter("Image")) == ["$image_first", "$image_second"]
    assert [el.get("value") for el in root.iter("Text")] == ["$prompt"]
    # Label Studio refuses tasks lacking a variable the config names.
    variables = {el.get("value")[1:] for el in root.iter() if (el.get("value") or "").startswith("$")}
    assert all(variables <= set(t["data"]) for t in tasks)


def test_export_image_modes(tmp_path: Path) -> None:
    store, pairs = _run(tmp_path)
    by_id = {p["image_pair_id"]: p for p in pairs}

    tasks = _tasks(export_label_studio(store, tmp_path / "path", images="path"))
    for task in tasks:
        url = urlparse(task["data"]["image_first"])
        assert url.path == "/data/local-files/"
        relative = parse_qs(url.query)["d"][0]
        sha = by_id[task["data"]["image_pair_id"]][f"image_{task['data']['first']}"]
        assert (store.root / relative).resolve() == store.image_path(sha).resolve()
    # A document root above the run: the path below it names the run's folder too.
    task = _tasks(export_label_studio(store, tmp_path / "path2", images="path", document_root=tmp_path))[0]
    relative = parse_qs(urlparse(task["data"]["image_second"]).query)["d"][0]
    assert relative.startswith("run/images/")
    with pytest.raises(InputError, match="document root"):
        export_label_studio(store, tmp_path / "path3", images="path", document_root=tmp_path / "elsewhere")

    tasks = _tasks(export_label_studio(store, tmp_path / "url", images="url", url_prefix="https://h.example/p/"))
    data = tasks[0]["data"]
    sha = by_id[data["image_pair_id"]][f"image_{data['first']}"]
    assert data["image_first"] == f"https://h.example/p/images/{sha[:2]}/{sha}.png"  # the run directory's layout
    assert (store.root / data["image_first"].removeprefix("https://h.example/p/")).is_file()

    with pytest.raises(InputError, match="URL prefix"):
        export_label_studio(store, tmp_path / "x", images="url")
    with pytest.raises(InputError, match="embed, path, url"):
        export_label_studio(store, tmp_path / "x", images="inline")


def test_export_sample_and_models(tmp_path: Path) -> None:
    store, pairs = _run(tmp_path)
    picked = [t["data"]["image_pair_id"] for t in _tasks(export_label_studio(store, tmp_path / "a", pairs=3))]
    assert len(picked) == 3 and len(set(picked)) == 3
    order = [p["image_pair_id"] for p in pairs]
    assert picked == sorted(picked, key=order.index)  # kept in the run's order
    assert picked == [t["data"]["image_pair_id"] for t in _tasks(export_label_studio(store, tmp_path / "b", pairs=3))]
    only_b = _tasks(export_label_studio(store, tmp_path / "c", models=["gen-b"]))
    assert [t["data"]["image_pair_id"] for t in only_b] == [p["image_pair_id"] for p in pairs if p["model"] == "gen-b"]
    with pytest.raises(InputError, match="gen-a, gen-b"):
        export_label_studio(store, tmp_path / "d", models=["gen-z"])


# -- import: Label Studio's JSON export ------------------------------------------------------------

def _annotation(ann_id: int, user, choice: str | None, cancelled: bool = False) -> dict:
    """One annotation as Label Studio's JSON export writes it (guide: Label Studio JSON format of annotated tasks)."""
    result = [] if choice is None else [{
        "id": f"r{ann_id}", "from_name": "choice", "to_name": "prompt", "type": "choices", "origin": "manual",
        "value": {"choices": [choice]}}]
    return {"id": ann_id, "completed_by": user, "result": result, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": "2026-01-05T10:00:00.000000Z", "updated_at": "2026-01-05T10:00:03.000000Z",
            "lead_time": 3.1, "prediction": {}, "result_count": 0, "task": ann_id // 10, "parent_prediction": None,
            "parent_annotation": None, "last_action": None}


def _ls_export(tasks: list[dict], answers: dict[int, list[dict]]) -> list[dict]:
    """Tasks as Label Studio echoes them back in its JSON export, with the given annotations."""
    return [{"id": i, "data": t["data"], "annotations": answers.get(i, []), "predictions": [], "drafts": [],
             "meta": {}, "created_at": "2026-01-05T09:00:00.000000Z", "updated_at": "2026-01-05T10:00:03.000000Z",
             "inner_id": i, "total_annotations": len(answers.get(i, [])), "cancelled_annotations": 0,
             "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None,
             "project": 3, "updated_by": None, "file_upload": "tasks.json", "comment_authors": []}
            for i, t in enumerate(tasks, start=1)]


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    return path


def test_import_label_studio_export(tmp_path: Path) -> None:
    store, pairs = _run(tmp_path)
    tasks = _tasks(export_label_studio(store, tmp_path / "ls", seed=3))
    ann = {"id": 12, "email": "ann@example.org", "first_name": "Ann", "last_name": "Lee"}
    picks = ["First", "Second", "Tie", "Second", "First", "First"]
    answers = {i: [_annotation(10 * i + 1, 10, "First"), _annotation(10 * i + 2, ann, picks[i - 1])]
               for i in range(1, 7)}
    answers[6].append(_annotation(63, 11, "Second", cancelled=True))  # skipped by the rater: no answer
    export = _write_json(tmp_path / "project-3-at-2026-01-05.json", _ls_export(tasks, answers))

    summary = import_human_labels(store, export)
    assert (summary.total, summary.new, summary.cached, summary.failed) == (12, 12, 0, 0)
    assert summary.warnings == []
    labels = _labels(store)
    assert len(labels) == 12
    by_id = {p["image_pair_id"]: p for p in pairs}
    for i, task in enumerate(tasks, start=1):
        first, pair = task["data"]["first"], by_id[task["data"]["image_pair_id"]]
        for rater, pick in (("10", "First"), ("ann@example.org", picks[i - 1])):
            record = labels[f"human:{rater}|{pair['image_pair_id']}"]
            assert record.key == label_key(source=f"human:{rater}", image_o=pair["image_o"],
                                           image_a=pair["image_a"], prompt=pair["p_a"], seed=None)
            selection = {"First": 0, "Second": 1, "Tie": -1}[pick]
            expected = EXPECTED[(first, pick)]
            assert record.data == {
                "source": f"human:{rater}", "labeller": "human", "labeller_id": None,
                "image_pair_id": pair["image_pair_id"], "pair_id": pair["pair_id"], "model": pair["model"],
                "image_o": pair["image_o"], "image_a": pair["image_a"], "p_a": pair["p_a"], "value": expected,
                "answers": [{"first": first, "selection": selection, "value": expected}], "disagree": None,
                "seed": None, "source_item": record.item}
            assert record.item.startswith(f"{export.name}:task {i} annotation ")
    # Both orders occur, so both mappings of "First" were exercised.
    assert {labels[f"human:10|{t['data']['image_pair_id']}"].data["value"] for t in tasks} == {0, 1}

    # Importing the same file again stores nothing new.
    before = list(store.records(LABELS))
    again = import_human_labels(store, export)
    assert (again.total, again.new, again.cached, again.failed, again.warnings) == (12, 0, 12, 0, [])
    assert list(store.records(LABELS)) == before

    # A changed answer keeps the stored label, is counted and warned about, and says how to record it.
    changed = _ls_export(tasks, {**answers, 2: [_annotation(21, 10, "Second"), answers[2][1]]})
    summary = import_human_labels(store, _write_json(tmp_path / "changed.json", changed))
    assert (summary.new, summary.cached, summary.failed) == (0, 12, 0)
    assert len(summary.warnings) == 1
    assert "changed.json:task 2 annotation 1" in summary.warnings[0] and "new rater id" in summary.warnings[0]
    assert list(store.records(LABELS)) == before


def test_label_studio_bad_tasks_fail_alone(tmp_path: Path) -> None:
    store, pairs = _run(tmp_path)
    tasks = _tasks(export_label_studio(store, tmp_path / "ls"))
    foreign = {"data": {"image": "https://example.com/1.jpg"}}   # a task our export did not make
    unknown = {"data": {**tasks[1]["data"], "image_pair_id": "0" * 64}}
    export = _ls_export([tasks[0], foreign, unknown, tasks[3], tasks[4]], {
        1: [_annotation(11, 5, "Tie")],
        2: [_annotation(21, 5, "First")],
        3: [_annotation(31, 5, "First")],
        4: [_annotation(41, 5, None), _annotation(42, 6, "Maybe"), _annotation(43, {"id": 7}, "Second")],
        5: [{**_annotation(51, 5, "First"), "completed_by": None}],
    })
    path = _write_json(tmp_path / "export.json", export)
    summary = import_human_labels(store, path)
    assert (summary.total, summary.new, summary.failed) == (7, 2, 5)
    failed = {r.item: r.error for r in store.records(LABELS, status="failed")}
    assert set(failed) == {"export.json:task 2 annotation 1", "export.json:task 3 annotation 1",
                           "export.json:task 4 annotation 1", "export.json:task 4 annotation 2",
                           "export.json:task 5 annotation 1"}
    assert all(error.startswith(item + ": ") for item, error in failed.items())
    assert "not made by `export --layout label-studio`" in failed["export.json:task 2 annotation 1"]
    assert "is not an image pair of this run" in failed["export.json:task 3 annotation 1"]
    assert "found 0" in failed["export.json:task 4 annotation 1"]
    assert "'Maybe'" in failed["export.json:task 4 annotation 2"]
    assert "completed_by" in failed["export.json:task 5 annotation 1"]
    assert {r.data["source"] for r in store.records(LABELS)} == {"human:5", "human:7"}

    # Label Studio's JSON-MIN export flattens each task and has no annotations: its rows fail, saying why.
    json_min = [{**tasks[0]["data"], "id": 1, "choice": "First", "annotator": 5, "annotation_id": 11}]
    summary = import_human_labels(store, _write_json(tmp_path / "min.json", json_min))
    assert (summary.total, summary.new, summary.failed) == (1, 0, 1)
    assert "JSON-MIN" in store.get(failed_item_key(LABELS, "min.json", "min.json:task 1")).error

    for bad, match in (("[{\"data\": ", "not valid JSON"), ('{"data": {}}', "list of tasks")):
        with pytest.raises(InputError, match=match):
            import_human_labels(store, _write_text(tmp_path / "bad.json", bad))
    with pytest.raises(InputError, match="does not exist"):
        import_human_labels(store, tmp_path / "missing.json")


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- import: CSV, TSV, JSONL -----------------------------------------------------------------------

def test_import_csv_variants(tmp_path: Path) -> None:
    store, pairs = _run(tmp_path)
    p = pairs
    rows = [
        "rater,image_pair_id,pair_id,model,image_o,image_a,choice,answer,first",
        f"  Ann   Lee ,{p[0]['image_pair_id']},,,,,Anti-Aesthetic,,",      # line 2: value 1
        f"bob,,P0,gen-b,,,original,,",                                     # line 3: ambiguous P0, model picks
        f"bob,,P1,,,,TIE,,",                                               # line 4: P1 is one pair
        f"bob,,,,{p[3]['image_o']},{p[3]['image_a']},1,,",                 # line 5: by the two hashes
        f"bob,,,,,,,,",                                                    # line 6: no pair
        f"cy,{p[4]['image_pair_id']},,,,,,Second,A",                       # line 7: answer + first a -> 0
        f"cy,{p[5]['image_pair_id']},,,,,anti,second,o",                   # line 8: both agree -> 1
        f"cy,,P0,,,,tie,,",                                                # line 9: P0 ambiguous without model
        f"cy,,P9,,,,tie,,",                                                # line 10: unknown pair_id
        f"dee,{p[0]['image_pair_id']},,,,,better,,",                       # line 11: unknown choice
        f" ,{p[0]['image_pair_id']},,,,,tie,,",                            # line 12: empty rater
        f"dee,{p[1]['image_pair_id']},,,,,,second,",                       # line 13: answer without first
        f"dee,{p[1]['image_pair_id']},,,,,original,second,o",              # line 14: choice and answer disagree
    ]
    path = _write_text(tmp_path / "answers.csv", "\n".join(rows) + "\n")
    summary = import_human_labels(store, path)
    assert (summary.total, summary.new, summary.failed) == (13, 6, 7)
    labels = _labels(store)
    assert {k: (r.data["value"], r.data["answers"]) for k, r in labels.items()} == {
        f"human:Ann Lee|{p[0]['image_pair_id']}": (1, [{"first": None, "selection": None, "value": 1}]),
        f"human:bob|{p[1]['image_pair_id']}": (0, [{"first": None, "selection": None, "value": 0}]),
        f"human:bob|{p[2]['image_pair_id']}": (-1, [{"first": None, "selection": None, "value": -1}]),
        f"human:bob|{p[3]['image_pair_id']}": (1, [{"first": None, "selection": None, "value": 1}]),
        f"human:cy|{p[4]['image_pair_id']}": (0, [{"first": "a", "selection": 1, "value": 0}]),
        f"human:cy|{p[5]['image_pair_id']}": (1, [{"first": "o", "selection": 1, "value": 1}]),
    }
    failed = {r.item: r.error for r in store.records(LABELS, status="failed")}
    assert sorted(failed) == sorted(f"answers.csv:line {n}" for n in (6, 9, 10, 11, 12, 13, 14))
    assert all(error.startswith(item + ": ") and error.count(item) == 1 for item, error in failed.items())
    assert "no pair" in failed["answers.csv:line 6"]
    assert "gen-a, gen-b" in failed["answers.csv:line 9"] and "model column" in failed["answers.csv:line 9"]
    assert "P9 matches no image pair" in failed["answers.csv:line 10"]
    assert "'better'" in failed["answers.csv:line 11"]
    assert "empty rater" in failed["answers.csv:line 12"]
    assert "first column" in failed["answers.csv:line 13"]
    assert "disagree" in failed["answers.csv:line 14"]

    # Fixing a failed row imports it and removes its failed record; the rest is cached.
    rows[10] = f"dee,{p[0]['image_pair_id']},,,,,original,,"
    summary = import_human_labels(store, _write_text(path, "\n".join(rows) + "\n"))
    assert (summary.new, summary.cached, summary.failed) == (1, 6, 6)
    assert "answers.csv:line 11" not in {r.item for r in store.records(LABELS, status="failed")}
    assert _labels(store)[f"human:dee|{p[0]['image_pair_id']}"].data["value"] == 0

    # The file shortened to its good rows: its earlier failures go too (another file's stay).
    other = _write_text(tmp_path / "other.csv", "rater,image_pair_id,choice\nzed,nope,tie\n")
    assert import_human_labels(store, other).failed == 1
    summary = import_human_labels(store, _write_text(path, "\n".join(rows[:5]) + "\n"))
    assert summary.failed == 0
    assert {r.item for r in store.records(LABELS, status="failed")} == {"other.csv:line 2"}


def test_import_tsv_and_jsonl(tmp_path: Path) -> None:
    store, pairs = _run(tmp_path)
    tsv = _write_text(tmp_path / "a.tsv", "rater\tpair_id\tmodel\tchoice\n"
                      "eve\tP0\tgen-a\tanti-aesthetic\neve\tP2\t\t0\n")
    summary = import_human_labels(store, tsv)
    assert (summary.new, summary.failed) == (2, 0)
    lines = [json.dumps({"rater": 42, "image_pair_id": pairs[4]["image_pair_id"], "answer": "tie", "first": "a"}),
             "",
             "{not json",
             json.dumps({"rater": "bad\u001bname", "image_pair_id": pairs[4]["image_pair_id"], "choice": -1}),
             json.dumps(["rater", "x"]),
             json.dumps({"rater": "fay", "image_pair_id": pairs[5]["image_pair_id"], "choice": -1})]
    summary = import_human_labels(store, _write_text(tmp_path / "b.jsonl", "\n".join(lines) + "\n"))
    assert (summary.total, summary.new, summary.failed) == (5, 2, 3)
    labels = _labels(store)
    assert labels[f"human:eve|{pairs[0]['image_pair_id']}"].data["value"] == 1
    assert labels[f"human:eve|{pairs[3]['image_pair_id']}"].data["value"] == 0
    assert labels[f"human:42|{pairs[4]['image_pair_id']}"].data["answers"] == [
        {"first": "a", "selection": -1, "value": -1}]
    assert labels[f"human:fay|{pairs[5]['image_pair_id']}"].data["value"] == -1
    failed = {r.item: r.error for r in store.records(LABELS, status="failed")}
    assert sorted(failed) == ["b.jsonl:line 3", "b.jsonl:line 4", "b.jsonl:line 5"]
    assert "U+001B" in failed["b.jsonl:line 4"] and "JSON object" in failed["b.jsonl:line 5"]


def test_unreadable_row_files(tmp_path: Path) -> None:
    store, _ = _run(tmp_path)
    with pytest.raises(InputError, match=r"a\.csv: expected the columns rater.*It has: choice, who"):
        import_human_labels(store, _write_text(tmp_path / "a.csv", "who,choice\nann,tie\n"))
    with pytest.raises(InputError, match=r"b\.csv:3: malformed row"):
        import_human_labels(store, _write_text(tmp_path / "b.csv", 'rater,pair_id,choice\nx,P1,tie\nx,"P2,tie\n'))
    with pytest.raises(InputError, match=r"\.xlsx"):
        import_human_labels(store, _write_text(tmp_path / "c.xlsx", "rater\n"))
    with pytest.raises(InputError, match="is empty"):
        import_human_labels(store, _write_text(tmp_path / "d.csv", ""))
    assert list(store.records(LABELS, status=None)) == []
