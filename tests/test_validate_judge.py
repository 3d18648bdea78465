"""Judge validation: metrics against scikit-learn on fixed data, every input layout written by the
test, bad rows, the two roundings, and running a judge on a folder of images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aesthetic_audit.analysis import stats
from aesthetic_audit.errors import ConfigError, InputError
from aesthetic_audit.judges.base import Judge, JudgeResult
from aesthetic_audit.judges.validate import format_table, judge_folder, validate, validate_judge

sk = pytest.importorskip("sklearn.metrics")

DIMS = ["clarity", "emotion", "richness"]
# (image, dimension, E[J], argmax, raw VisionReward score); raw -2..2, target = sign(raw) + 1.
ITEMS = [
    ("img0", "clarity", 0.20, 0, -2), ("img0", "emotion", 1.10, 1, 0), ("img0", "richness", 1.80, 2, 1),
    ("img1", "clarity", 1.50, 2, 2), ("img1", "emotion", 0.50, 1, -1), ("img1", "richness", 1.00, 1, 0),
    ("img2", "clarity", 0.90, 1, 1), ("img2", "emotion", 1.95, 2, 1), ("img2", "richness", 0.40, 0, -1),
    ("img3", "clarity", 1.20, 1, -1), ("img3", "emotion", 0.05, 0, -2), ("img3", "richness", 1.60, 2, 2),
    ("img4", "clarity", 0.70, 1, 0), ("img4", "emotion", 1.40, 1, 2), ("img4", "richness", 0.95, 1, 0),
    ("img5", "clarity", 1.85, 2, 1), ("img5", "emotion", 0.60, 0, 0), ("img5", "richness", 0.10, 0, -1),
]


def _target(raw):
    return np.array([(r > 0) - (r < 0) + 1 for r in raw])


def _reference(items, rounding="half-up"):
    """The metrics computed with scikit-learn and plain numpy."""
    score = np.array([it[2] for it in items])
    argmax = np.array([it[3] for it in items])
    target = _target([it[4] for it in items])
    rounded = np.floor(score + 0.5) if rounding == "half-up" else np.round(score)
    per_class = [np.mean(np.abs(score[target == c] - c)) for c in (0, 1, 2) if np.any(target == c)]
    return {
        "mae": sk.mean_absolute_error(target, score),
        "wmae": float(np.mean(per_class)),
        "wf1_rounded": sk.f1_score(target, rounded.astype(int), average="weighted"),
        "wf1_argmax": sk.f1_score(target, argmax, average="weighted"),
        "accuracy_rounded": sk.accuracy_score(target, rounded.astype(int)),
    }


def _check(block, items, rounding="half-up"):
    ref = _reference(items, rounding)
    assert block["n"] == len(items)
    for key, value in ref.items():
        assert block[key]["estimate"] == pytest.approx(value), key
        assert block[key]["low"] <= block[key]["estimate"] <= block[key]["high"], key


def _write_long(tmp_path: Path, items=ITEMS) -> tuple[Path, Path]:
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"image": i, "dimension": d, "score": s, "pred": p}) + "\n"
                            for i, d, s, p, _ in items))
    gt = tmp_path / "gt.csv"
    with gt.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "dimension", "raw"])
        w.writerows([(i, d, r) for i, d, _, _, r in items])
    return pred, gt


def _by_image(items=ITEMS) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for it in items:
        out.setdefault(it[0], []).append(it)
    return out


def test_long_layout_matches_sklearn(tmp_path):
    pred, gt = _write_long(tmp_path)
    r = validate(pred, gt, n_boot=300)
    assert r["n"] == 18 and r["n_images"] == 6 and r["dimensions"] == DIMS
    _check(r["overall"], ITEMS)
    for dim in DIMS:
        _check(r["per_dimension"][dim], [it for it in ITEMS if it[1] == dim])
    assert r["overall"]["support"] == {"0": 6, "1": 5, "2": 7}  # raw < 0: 6, = 0: 5, > 0: 7
    assert r["bootstrap"]["resampled"] == "images" and "together" in r["bootstrap"]["note"]
    assert r["inputs"]["predictions_layout"] == "long" and r["inputs"]["annotations_layout"] == "long"
    assert r["unmatched"]["predictions_only"] == r["unmatched"]["annotations_only"] == 0
    json.dumps(r, allow_nan=False)


def test_every_layout_gives_the_same_result(tmp_path):
    long = validate(*_write_long(tmp_path), n_boot=200)
    # Wide CSV predictions and wide JSONL annotations.
    wide_pred, wide_gt = tmp_path / "wide_pred.csv", tmp_path / "wide_gt.jsonl"
    with wide_pred.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", *[f"{d}_score" for d in DIMS], *[f"{d}_pred" for d in DIMS]])
        for image, its in _by_image().items():
            w.writerow([image, *[it[2] for it in its], *[it[3] for it in its]])
    wide_gt.write_text("".join(json.dumps({"image": image, **{it[1]: it[4] for it in its}}) + "\n"
                               for image, its in _by_image().items()))
    wide = validate(wide_pred, wide_gt, n_boot=200)
    assert wide["inputs"]["predictions_layout"] == "wide" and wide["inputs"]["annotations_layout"] == "wide"
    # A JSON list of long rows.
    json_pred = tmp_path / "pred.json"
    json_pred.write_text(json.dumps([{"image": i, "dimension": d, "score": s, "pred": p} for i, d, s, p, _ in ITEMS]))
    listed = validate(json_pred, tmp_path / "gt.csv", n_boot=200)
    # The authors' combined layout: position i is image i.
    combined = tmp_path / "eval.json"
    images = list(_by_image().values())
    combined.write_text(json.dumps({
        "pred": [{**{f"{it[1]}_score": it[2] for it in its}, **{f"{it[1]}_pred": it[3] for it in its}}
                 for its in images],
        "gt": [{it[1]: it[4] for it in its} for its in images],
    }))
    both = validate(combined, n_boot=200)
    assert both["inputs"]["predictions_layout"] == "combined" and both["n_images"] == 6
    for other in (wide, listed, both):
        for block in ("overall",):
            for key in ("mae", "wmae", "wf1_rounded", "wf1_argmax", "accuracy_rounded"):
                assert other[block][key]["estimate"] == pytest.approx(long[block][key]["estimate"])
        assert other["per_dimension"].keys() == long["per_dimension"].keys()


def test_intervals_are_the_image_cluster_bootstrap(tmp_path):
    # The same resamples as stats.bootstrap_ci with the images as clusters, on the stats functions.
    r = validate(*_write_long(tmp_path), n_boot=400, seed=5)
    images = [it[0] for it in ITEMS]
    score = np.array([it[2] for it in ITEMS])
    target = _target([it[4] for it in ITEMS]).astype(float)
    rounded = stats.round_half_up(score).astype(float)
    argmax = np.array([it[3] for it in ITEMS], dtype=float)
    for key, data, fn in (("mae", (score, target), stats.mae), ("wmae", (score, target), stats.wmae),
                          ("wf1_rounded", (rounded, target), stats.weighted_f1),
                          ("wf1_argmax", (argmax, target), stats.weighted_f1),
                          ("accuracy_rounded", (target, rounded), stats.accuracy)):
        ci = stats.bootstrap_ci(data, fn, 400, 0.95, 5, clusters=images)
        assert (r["overall"][key]["low"], r["overall"][key]["high"]) == pytest.approx((ci.low, ci.high)), key


def test_rounding_modes_differ_exactly_at_one_half(tmp_path):
    # E[J] 0.5 -> 1 half up, 0 half even; 1.5 -> 2 in both; 0.49 and 1.51 round alike.
    items = [("a", "clarity", 0.5, 1, 0), ("b", "clarity", 1.5, 2, 2), ("c", "clarity", 0.49, 0, -1),
             ("d", "clarity", 1.51, 2, 3)]
    pred, gt = _write_long(tmp_path, items)
    up = validate(pred, gt, n_boot=50)["overall"]
    even = validate(pred, gt, n_boot=50, rounding="half-even")["overall"]
    assert up["accuracy_rounded"]["estimate"] == pytest.approx(1.0)
    assert even["accuracy_rounded"]["estimate"] == pytest.approx(0.75)
    _check(up, items, "half-up")
    _check(even, items, "half-even")
    assert up["mae"] == even["mae"]
    off_half = [(i, d, s + 0.001 if s in (0.5, 1.5) else s, p, r) for i, d, s, p, r in items]
    pred, gt = _write_long(tmp_path, off_half)
    a = validate(pred, gt, n_boot=50)["overall"]
    b = validate(pred, gt, n_boot=50, rounding="half-even")["overall"]
    assert a["wf1_rounded"] == b["wf1_rounded"] and a["accuracy_rounded"] == b["accuracy_rounded"]
    with pytest.raises(ConfigError, match="rounding"):
        validate(pred, gt, rounding="banker")


def test_no_resamples_gives_estimates_without_intervals(tmp_path):
    r = validate(*_write_long(tmp_path), n_boot=0)
    assert r["overall"]["mae"]["estimate"] == pytest.approx(_reference(ITEMS)["mae"])
    assert r["overall"]["mae"]["low"] is None and r["overall"]["mae"]["high"] is None
    json.dumps(r, allow_nan=False)


def test_unmatched_rows_are_counted_and_dims_filter(tmp_path):
    items = ITEMS + [("img9", "clarity", 1.0, 1, 0)]
    pred, gt = _write_long(tmp_path, items)
    # One extra prediction, one extra annotation, a dimension only the predictions have.
    with pred.open("a") as fh:
        fh.write(json.dumps({"image": "img0", "dimension": "symmetry", "score": 1.0}) + "\n")
    gt.write_text(gt.read_text().replace("img9,clarity,0", "img8,clarity,0"))
    r = validate(pred, gt, n_boot=50)
    assert r["n"] == 18 and r["dimensions"] == DIMS
    assert r["unmatched"]["predictions_only"] == 1 and r["unmatched"]["annotations_only"] == 1
    assert r["unmatched"]["predictions_only_examples"] == [["img9", "clarity"]]
    assert r["unmatched"]["dimensions_predictions_only"] == ["symmetry"]
    only = validate(pred, gt, dims=["emotion"], n_boot=50)
    assert only["dimensions"] == ["emotion"] and only["n"] == 6
    _check(only["overall"], [it for it in ITEMS if it[1] == "emotion"])
    assert only["unmatched"]["predictions_only"] == 0
    with pytest.raises(InputError, match="'symmetry' is not in the annotations"):
        validate(pred, gt, dims=["symmetry"])


def test_argmax_is_optional(tmp_path):
    pred, gt = _write_long(tmp_path)
    pred.write_text("".join(json.dumps({"image": i, "dimension": d, "score": s}) + "\n" for i, d, s, _, _ in ITEMS))
    r = validate(pred, gt, n_boot=50)
    assert r["overall"]["wf1_argmax"] is None
    assert "–" in format_table(r)


def _bad(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name,text,message", [
    ("p.jsonl", '{"image": "a", "dimension": "clarity", "score": 1}\n{"image": "b", "dimension": "clarity"}\n',
     r"p.jsonl:line 2: missing value for 'score'"),
    ("p.jsonl", '{"image": "a", "dimension": "clarity", "score": 2.5}\n', r"p.jsonl:line 1: score = 2.5 is outside"),
    ("p.jsonl", '{"image": "a", "dimension": "clarity", "score": "high"}\n', r"line 1: score = 'high' is not a number"),
    ("p.jsonl", '{"image": "a", "dimension": "clarity", "score": 1, "pred": 3}\n', r"line 1: pred = 3 is not a level"),
    ("p.jsonl", '{"image": "a", "dimension": "c", "score": 1}\n{"image": "a", "dimension": "c", "score": 0}\n',
     r"p.jsonl:line 2: image 'a', dimension 'c' appears twice \(first at p.jsonl:line 1\)"),
    ("p.jsonl", '{"name": "a", "clarity_score": 1}\n', r"p.jsonl:line 1: no 'image' field"),
    ("p.jsonl", '{"image": "a", "dimension": "c", "score": 1}\n[1]\n', r"p.jsonl:line 2: not a JSON object"),
    ("p.jsonl", '{"image": "a", "dimension": "c", "score": 1}\n{"image": "b", "c_score": 1}\n',
     r"p.jsonl:line 2: mixes layouts"),
    ("p.csv", "image,clarity_score,clarity_pred,prompt\na,1.0,1,x\n", r"p.csv:row 1: column 'prompt' is neither"),
    ("p.csv", "image,clarity_pred\na,1\n", r"p.csv:row 1: clarity_pred has no clarity_score"),
    ("p.csv", "image,clarity_score\na,0.5\nb,\n", r"p.csv:row 2: missing value for 'clarity_score'"),
    ("p.json", '{"predictions": []}', r"p.json: a JSON file must hold a list of rows"),
    ("p.json", '[{"image": "a",', r"p.json:line 1: not valid JSON"),
    ("p.txt", "image,score\n", r"unknown format '.txt'"),
])
def test_bad_prediction_rows(tmp_path, name, text, message):
    _, gt = _write_long(tmp_path)
    with pytest.raises(InputError, match=message):
        validate(_bad(tmp_path, name, text), gt)


@pytest.mark.parametrize("text,message", [
    ("image,dimension,raw\nimg0,clarity,1\nimg1,clarity,1.5\n", r"g.csv:row 2: raw = '1.5' is not an integer"),
    ("image,dimension,raw\nimg0,clarity,\n", r"g.csv:row 1: missing value for 'raw'"),
    ("image,dimension,raw\nimg0,clarity,two\n", r"g.csv:row 1: raw = 'two' is not a number"),
    ("image,clarity,emotion\nimg0,1,0.5\n", r"g.csv:row 1: raw emotion = '0.5' is not an integer"),
    ("image,dimension,raw\nimg0,clarity,1,9\n", r"g.csv:row 1: more cells than the header"),
    ("image,dimension,raw\n", r"g.csv: no rows"),
])
def test_bad_annotation_rows(tmp_path, text, message):
    pred, _ = _write_long(tmp_path)
    with pytest.raises(InputError, match=message):
        validate(pred, _bad(tmp_path, "g.csv", text))


def test_combined_layout_errors(tmp_path):
    pred, gt = _write_long(tmp_path)
    with pytest.raises(InputError, match="holds no annotations"):
        validate(pred)
    combined = _bad(tmp_path, "c.json", json.dumps({"pred": [{"clarity_score": 1.0}], "gt": []}))
    with pytest.raises(InputError, match="'pred' has 1 entries and 'gt' 0"):
        validate(combined)
    with pytest.raises(InputError, match="combined layout"):
        validate(combined, gt)
    bad_gt = _bad(tmp_path, "c2.json", json.dumps({"pred": [{"clarity_score": 1.0}], "gt": [{"clarity": None}]}))
    with pytest.raises(InputError, match=r"c2.json: gt\[0\]: missing value for 'clarity'"):
        validate(bad_gt)
    apart = _bad(tmp_path, "g.jsonl", '{"image": "zzz", "dimension": "clarity", "raw": 1}\n')
    with pytest.raises(InputError, match="no \\(image, dimension\\) item is in both"):
        validate(pred, apart)
    other = _bad(tmp_path, "g2.jsonl", '{"image": "img0", "dimension": "hands", "raw": 1}\n')
    with pytest.raises(InputError, match="share no dimension"):
        validate(pred, other)


def test_format_table(tmp_path):
    r = validate(*_write_long(tmp_path), n_boot=100, rounding="half-even")
    table = format_table(r)
    lines = table.splitlines()
    assert "n = 18 (image, dimension) items from 6 images, 3 dimensions" in lines[0]
    assert "rounded half-even" in lines[1] and "100 resamples of images" in lines[1]
    header = next(line for line in lines if line.startswith("dimension"))
    for title in ("n", "MAE", "WMAE", "WF1 (rounded)", "WF1 (argmax)", "acc (rounded)"):
        assert title in header
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in {"overall", *DIMS}}
    assert set(rows) == {"overall", *DIMS}
    mae = r["overall"]["mae"]
    assert f"{mae['estimate']:.4f} [{mae['low']:.4f}, {mae['high']:.4f}]" in rows["overall"]


# -- running a judge on a folder ---------------------------------------------------------------------

class MeanJudge(Judge):
    """J = 2 * mean red / 255 for clarity, 2 - that for emotion; argmax = the rounded J."""

    name = "mean-test"
    covers = ("clarity", "emotion")

    def judge(self, images, dims):
        out = []
        for img in images:
            red = np.asarray(img)[..., 0].mean() / 255.0
            scores = {"clarity": 2 * red, "emotion": 2 - 2 * red}
            scores = {d: scores.get(d) for d in dims}
            out.append(JudgeResult(scores=scores, extra={"argmax": {d: int(np.floor(v + 0.5)) for d, v in scores.items()
                                                                    if v is not None}}))
        return out


class BrokenJudge(MeanJudge):
    def judge(self, images, dims):
        raise RuntimeError("model exploded")


def _folder(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    folder = tmp_path / "images"
    folder.mkdir()
    reds = {"a": 30, "b": 128, "c": 240}
    for name, red in reds.items():
        Image.new("RGB", (8, 8), (red, 10, 10)).save(folder / f"{name}.png")
    (folder / "bad.png").write_bytes(b"this is not a PNG")
    return folder, reds


def test_judge_folder_counts_undecodable_images(tmp_path):
    folder, reds = _folder(tmp_path)
    images = {name: folder / f"{name}.png" for name in (*reds, "bad")}
    rows, failures = judge_folder(MeanJudge(), images, ["clarity", "emotion"], batch_size=2)
    assert set(failures) == {"bad"} and "bad" in failures["bad"]
    assert len(rows) == 6
    row = next(r for r in rows if r["image"] == "b" and r["dimension"] == "clarity")
    assert row == {"image": "b", "dimension": "clarity", "score": pytest.approx(2 * 128 / 255), "pred": 1}
    rows, failures = judge_folder(BrokenJudge(), images, ["clarity"])
    assert rows == [] and set(failures) == set(images)
    assert all("model exploded" in failures[k] for k in reds)


def test_validate_judge_on_a_folder(tmp_path):
    folder, reds = _folder(tmp_path)
    gt = tmp_path / "gt.jsonl"
    raw = {("a", "clarity"): -1, ("a", "emotion"): 2, ("b.png", "clarity"): 0, ("b.png", "emotion"): 1,
           ("c", "clarity"): 3, ("c", "emotion"): -2, ("bad", "clarity"): 0, ("missing", "clarity"): 1,
           ("a", "hands"): 1}
    gt.write_text("".join(json.dumps({"image": i, "dimension": d, "raw": r}) + "\n" for (i, d), r in raw.items()))
    r = validate_judge(MeanJudge(), folder, gt, n_boot=100)
    assert r["dimensions"] == ["clarity", "emotion"]
    assert r["dimensions_not_judged"] == ["hands"]
    assert "not judged (the judge does not cover them): hands" in format_table(r)
    assert r["failures"]["n"] == 2 and set(r["failures"]["items"]) == {"bad", "missing"}
    assert r["unmatched"]["annotations_only"] == 2
    assert r["judge"]["name"] == "mean-test"
    items = []
    for (image, dim), value in raw.items():
        stem = image.removesuffix(".png")
        if stem in reds and dim != "hands":
            j = 2 * reds[stem] / 255 if dim == "clarity" else 2 - 2 * reds[stem] / 255
            items.append((image, dim, j, int(np.floor(j + 0.5)), value))
    assert r["n"] == len(items) == 6
    _check(r["overall"], items)
    assert "failed images: 2" in format_table(r)
    with pytest.raises(InputError, match="gave no score"):
        validate_judge(BrokenJudge(), folder, gt, n_boot=10)
    with pytest.raises(InputError, match="covers none"):
        validate_judge(MeanJudge(), folder, gt, dims=["hands"])
