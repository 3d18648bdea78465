"""Re-analysis of the study's published per-row tables: rewards, labels and judge results, images optional.

Every expected number is worked out here from the hand-written rows (plain Python and scikit-learn),
never read back from the import.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score

from aesthetic_audit.analysis.audit import analyze
from aesthetic_audit.config import AnalysisConfig
from aesthetic_audit.images.importers import import_pairs
from aesthetic_audit.images.study_rows import StudyImportSummary, import_study_rows, is_study_table
from aesthetic_audit.records import IMAGES, JUDGE, LABELS, SCORE
from aesthetic_audit.store.run import RunStore

DIMS = ["background", "clarity", "color aesthetic", "color brightness", "detail realism", "detail refinement",
        "emotion", "lighting distinction", "main object", "object pairing", "richness"]  # alphabetical, as published


def _rater(o: list[float], a: list[float]) -> dict:
    return {"original": {"scores": o, "preds": [round(v) for v in o]},
            "distorted": {"scores": a, "preds": [round(v) for v in a]}}


# index, model, hpsv2 (oiop, oidp, diop, didp), hpsv3 mu of the same, llm_selected, rater Σ shift of I_a
_ROWS = [
    (0, "sd35", (0.30, 0.28, 0.25, 0.27), (7.0, 6.0, 5.0, 6.5), 1),
    (1, "sd35", (0.31, 0.29, 0.27, 0.29), (8.0, 7.5, 7.0, 7.5), 0),    # hpsv2 and hpsv3 tie under p_a
    (2, "sd35", (0.26, 0.24, 0.28, 0.30), (5.0, 4.0, 6.0, 3.0), -1),
    (3, "flux", (0.33, 0.30, 0.22, 0.25), (9.0, 8.0, 4.0, 8.5), 1),
    (4, "flux", (0.29, 0.26, 0.26, 0.26), (6.0, 5.5, 5.0, 5.5), 1),    # hpsv2 and hpsv3 tie under p_a
]


def _row(index: int, model: str, v2: tuple, v3: tuple, label: int) -> dict:
    o = [1.5 - 0.1 * k for k in range(11)]
    a = [max(0.0, v - 0.05 * (index + 1) * (k % 3)) for k, v in enumerate(o)]
    return {
        "index": index, "model": model,
        "prompt_original": f"a bowl of fruit {index}", "prompt_distorted": f"a blurry, dim bowl of fruit {index}",
        "selected_dims": json.dumps(["clarity", "color brightness"]),
        **{f"hpsv2_{c}": v for c, v in zip(("oiop", "oidp", "diop", "didp"), v2)},
        "hpsv3_reward": {f"hpsv3_{c}": [v, 0.5 + index] for c, v in zip(("oiop", "oidp", "diop", "didp"), v3)},
        "llm_selected": label,
        "rater": _rater(o, a),
    }


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def table(tmp_path: Path) -> tuple[Path, list[dict]]:
    rows = [_row(*r) for r in _ROWS]
    return _write_jsonl(tmp_path / "rows.jsonl", rows), rows


def _by_hand(rows: list[dict], family: str) -> dict:
    def v(row: dict, combo: str) -> float:
        if family == "hpsv2":
            return row[f"hpsv2_{combo}"]
        return row["hpsv3_reward"][f"hpsv3_{combo}"][0]

    n = len(rows)
    labelled = [r for r in rows if r["llm_selected"] != -1]
    pred = [int(v(r, "didp") > v(r, "oidp")) for r in labelled]
    truth = [int(r["llm_selected"] == 1) for r in labelled]
    return {
        "delta_r": sum(v(r, "diop") - v(r, "oiop") for r in rows) / n,
        "prefer_original": sum(v(r, "oidp") > v(r, "didp") for r in rows) / n,
        "prefer_anti": sum(v(r, "didp") > v(r, "oidp") for r in rows) / n,
        "ties": sum(v(r, "didp") == v(r, "oidp") for r in rows),
        "accuracy": accuracy_score(truth, pred), "f1": f1_score(truth, pred, zero_division=0.0), "rm_n": len(labelled),
    }


def test_scores_labels_and_judgements_reanalysed_without_images(table, tmp_path: Path) -> None:
    path, rows = table
    store = RunStore(tmp_path / "run")
    summary = import_pairs(path, store)  # routed by its reward/rater fields
    assert summary == StudyImportSummary(ok=5, failed=0, skipped_existing=0,
                                         records={IMAGES: 5, SCORE: 40, LABELS: 5, JUDGE: 10})
    pairs = list(store.records(IMAGES))
    for record in pairs:
        for side in ("image_o", "image_a"):
            assert record.data[side].startswith("noimage:") and len(record.data[side]) == len("noimage:") + 64
    assert sorted(r.data["model"] for r in pairs) == ["flux", "flux", "sd35", "sd35", "sd35"]
    assert all(r.data["dims"] == ["clarity", "color brightness"] for r in pairs)

    analysis = analyze(store, AnalysisConfig(bootstrap=200), seed=0)
    assert analysis["n_pairs"] == 5
    for family in ("hpsv2", "hpsv3"):
        s, want = analysis["scorers"][f"{family} (imported)"], _by_hand(rows, family)
        assert s["n"] == 5 and s["missing"] == 0
        assert s["delta_r"]["estimate"] == pytest.approx(want["delta_r"])
        assert s["ties"] == want["ties"] == 2
        assert s["prefer_original_share"]["estimate"] == pytest.approx(want["prefer_original"])
        assert s["prefer_anti_share"]["estimate"] == pytest.approx(want["prefer_anti"])
        rm = s["reward_model_test"]
        assert rm["n"] == want["rm_n"] == 4 and rm["n_ties"] == 1
        assert rm["accuracy"]["estimate"] == pytest.approx(want["accuracy"])
        assert rm["f1"]["estimate"] == pytest.approx(want["f1"])
    # hpsv2 by hand: Δr = (-0.05 - 0.04 + 0.02 - 0.11 - 0.03) / 5; I_o strictly preferred in rows 0, 3.
    assert _by_hand(rows, "hpsv2")["delta_r"] == pytest.approx(-0.042)
    assert _by_hand(rows, "hpsv2")["prefer_original"] == pytest.approx(0.4)

    judge = analysis["judges"]["study-judge (imported)"]
    delta = [sum(np.subtract(r["rater"]["distorted"]["scores"], r["rater"]["original"]["scores"])) for r in rows]
    assert judge["n"] == 5 and judge["dims"] == DIMS
    assert judge["delta_j"]["estimate"] == pytest.approx(float(np.mean(delta)))
    assert judge["j_aa"]["estimate"] == pytest.approx(float(np.mean([sum(r["rater"]["distorted"]["scores"])
                                                                      for r in rows])))
    labels = analysis["labels"]
    assert labels["n"] == 5 and labels["counts"] == {"anti_aesthetic": 3, "original": 1, "tie": 1}
    assert labels["success_rate"]["estimate"] == pytest.approx(3 / 5)

    judged = {r.data["image"]: r.data for r in store.records(JUDGE)}
    first = next(p for p in pairs if p.data["p_o"] == rows[0]["prompt_original"])
    assert judged[first.data["image_a"]]["argmax"] == dict(zip(DIMS, rows[0]["rater"]["distorted"]["preds"]))
    sigmas = {r.data["field"]: r.data.get("sigma") for r in store.records(SCORE)
              if r.data["image"] == first.data["image_o"]}
    assert sigmas == {"hpsv2_oiop": None, "hpsv2_oidp": None, "hpsv3_oiop": 0.5, "hpsv3_oidp": 0.5}

    before = store.counts()
    again = import_study_rows(path, store)
    assert again == StudyImportSummary(ok=0, failed=0, skipped_existing=5,
                                       records={IMAGES: 0, SCORE: 0, LABELS: 0, JUDGE: 0})
    assert store.counts() == before


def test_a_json_list_of_objects_gives_the_same_pairs(table, tmp_path: Path) -> None:
    path, rows = table
    store = RunStore(tmp_path / "run")
    import_pairs(path, store)
    as_list = tmp_path / "moved" / "rows.json"
    as_list.parent.mkdir()
    as_list.write_text(json.dumps(rows), encoding="utf-8")
    assert is_study_table(as_list)
    assert import_pairs(as_list, store).skipped_existing == 5


def test_a_reward_nested_under_its_own_name_reads_the_same(table, tmp_path: Path) -> None:
    """{"hpsv3_oiop": {"hpsv3_oiop": [mu, sigma]}} (a field nested under its own name) is the same score."""
    path, rows = table
    store = RunStore(tmp_path / "run")
    import_pairs(path, store)
    nested = [{**{k: v for k, v in r.items() if k != "hpsv3_reward"},
               **{k: {k: v} for k, v in r["hpsv3_reward"].items()}} for r in rows]
    (tmp_path / "nested").mkdir()
    other = _write_jsonl(tmp_path / "nested" / "rows.jsonl", nested)
    assert is_study_table(other)
    again = RunStore(tmp_path / "run2")
    import_pairs(other, again)
    scores = lambda st: sorted((r.data["scorer"], r.data["image"], r.data["prompt"], r.data["score"])  # noqa: E731
                               for r in st.records("score"))
    assert scores(again) == scores(store) and any(s[0] == "hpsv3 (imported)" for s in scores(again))


def test_bad_rows_fail_alone_and_a_fixed_row_replaces_its_failure(table, tmp_path: Path) -> None:
    path, rows = table
    missing = {k: v for k, v in _row(5, "flux", (1, 1, 1, 1), (1, 1, 1, 1), 0).items() if k != "hpsv2_didp"}
    short = _row(6, "flux", (1, 1, 1, 1), (1, 1, 1, 1), 0)
    short["rater"]["distorted"]["scores"] = short["rater"]["distorted"]["scores"][:10]
    word = {**_row(7, "flux", (1, 1, 1, 1), (1, 1, 1, 1), 0), "hpsv2_oiop": "high"}
    label = _row(8, "flux", (1, 1, 1, 1), (1, 1, 1, 1), 2)
    _write_jsonl(path, rows[:2] + [missing, short, word, label, "{not json"] + rows[2:])
    store = RunStore(tmp_path / "run")
    summary = import_pairs(path, store)
    assert (summary.ok, summary.failed) == (5, 5)
    failed = {r.item: r.error for r in store.records(status="failed")}
    assert failed == {
        "rows.jsonl:row 3": "hpsv2_didp is missing",
        "rows.jsonl:row 4": "rater.distorted.scores must list 11 values, one per dimension "
                            f"({', '.join(DIMS)}); got 10 values",
        "rows.jsonl:row 5": "hpsv2_oiop 'high' is not a finite number",
        "rows.jsonl:row 6": "llm_selected 2 is not -1 (tie), 0 (original) or 1 (anti-aesthetic)",
        "rows.jsonl:row 7": "line is not valid JSON (Expecting property name enclosed in double quotes)",
    }
    assert store.counts()[SCORE] == {"ok": 40, "failed": 0}
    assert analyze(store, AnalysisConfig(bootstrap=200), seed=0)["n_pairs"] == 5

    assert import_pairs(path, store).failed == 5  # failing again adds nothing
    assert store.counts()[IMAGES] == {"ok": 5, "failed": 5}
    fixed = {**word, "hpsv2_oiop": 0.5}
    _write_jsonl(path, rows[:2] + [missing, short, fixed, label, "{not json"] + rows[2:])
    summary = import_pairs(path, store)
    assert (summary.ok, summary.failed, summary.skipped_existing) == (1, 4, 5)
    assert "rows.jsonl:row 5" not in {r.item for r in store.records(status="failed")}


def test_a_partial_reward_family_is_refused_before_any_row(tmp_path: Path) -> None:
    rows = [{k: v for k, v in _row(*r).items() if k != "hpsv2_diop"} for r in _ROWS]
    path = _write_jsonl(tmp_path / "rows.jsonl", rows)
    store = RunStore(tmp_path / "run")
    with pytest.raises(Exception, match="reward family hpsv2 lacks hpsv2_diop"):
        import_study_rows(path, store)
    assert store.counts() == {}


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_with_images_the_pair_is_the_one_the_pair_importer_stores(tmp_path: Path) -> None:
    rows = [{**{k: v for k, v in _row(*r).items() if k != "hpsv3_reward"},
             "image_original": {"bytes": _png((10 + 10 * r[0], 0, 0)), "path": f"o{r[0]}.png"},
             "image_distorted": {"bytes": _png((0, 10 + 10 * r[0], 0)), "path": f"a{r[0]}.png"}} for r in _ROWS[:2]]
    table = pa.Table.from_pylist(rows)
    study = tmp_path / "study.parquet"
    pq.write_table(table, study)
    plain = tmp_path / "plain.parquet"
    pq.write_table(table.drop_columns([c for c in table.column_names if c.startswith("hpsv2_") or c == "rater"]),
                   plain)
    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    assert import_pairs(study, a).records[SCORE] == 8
    import_pairs(plain, b)
    assert {r.key for r in a.records(IMAGES)} == {r.key for r in b.records(IMAGES)}
    pair = next(a.records(IMAGES))
    assert a.image_path(pair.data["image_o"]).is_file()
    scored = {r.data["image"] for r in a.records(SCORE)}
    assert scored == {p.data[s] for p in a.records(IMAGES) for s in ("image_o", "image_a")}


def test_report_runs_on_a_run_without_images(cli, table, tmp_path: Path) -> None:
    path, _ = table
    run = tmp_path / "run"
    code, _, err = cli("import", run, path)
    assert code == 0, err
    code, _, err = cli("report", run)
    assert code == 0, err
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "hpsv3 (imported)" in text and "study-judge (imported)" in text
    assert "image unavailable" in text
    methods = text[text.index("<h2>Methods</h2>"):]  # every source the tables rest on, imported ones too
    for name in ("hpsv2 (imported)", "hpsv3 (imported)", "study-judge (imported)", "import:llm_selected"):
        assert name in methods and "no stage of this run made these records" in methods


def test_stages_that_read_pixels_skip_pairs_imported_without_images(table, tmp_path, cli):
    """score, judge and labels have nothing to read in a pair imported with its scores only: they
    skip it instead of recording a failure per image."""
    rows, _ = table
    run = tmp_path / "run"
    assert cli("import", run, rows)[0] == 0
    code, _, err = cli("score", run, "--scorers", "composite")
    assert code == 0 and "0 items" in err, err
    code, _, err = cli("judge", run, "--judges", "classical")
    assert code == 0 and "0 items" in err, err
    assert RunStore(run).counts().get("score", {}).get("failed", 0) == 0
