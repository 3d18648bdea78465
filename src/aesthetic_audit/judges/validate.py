"""Validate a per-dimension judge against VisionReward-style human annotations (design §6).

Each item is one (image, dimension). The annotation is VisionReward's raw integer score; the target
class is ``sign(raw) + 1`` (0 anti-aesthetic, 1 neutral, 2 conventionally good), the judge's rubric
levels. The judge gives ``score`` = E[J] in [0, 2] and, optionally, ``pred`` = its argmax level.
Metrics, overall and per dimension, each with n and a percentile bootstrap interval that resamples
images (all dimensions of one image are drawn together, since they share the image):

- ``mae``: mean |E[J] - target|;
- ``wmae``: class-balanced MAE, the mean over the classes present of each class's MAE;
- ``wf1_rounded``: support-weighted F1 of E[J] rounded to a level (half up by default:
  0.5 -> 1, 1.5 -> 2; ``rounding="half-even"`` is numpy's ``np.round``: 0.5 -> 0, 1.5 -> 2);
- ``wf1_argmax``: support-weighted F1 of the argmax, over the items that have one;
- ``accuracy_rounded``: share of items whose rounded E[J] equals the target.

Input layouts (.json, .jsonl/.ndjson, .csv or .tsv; the format follows the file's suffix):

- **long** (one row per item). Predictions: ``image`` (an id), ``dimension``, ``score`` (E[J]),
  optional ``pred`` (argmax 0/1/2). Annotations: ``image``, ``dimension``, ``raw`` (integer).
  Other fields are ignored. A JSON file holds a list of such objects.
- **wide** (one row per image; a row without a ``dimension`` field). Predictions: ``image`` plus
  ``<dimension>_score`` and optionally ``<dimension>_pred`` columns. Annotations: ``image`` plus one
  column per dimension holding the raw score. Every column must be one of these.
- **combined**: the layout the study's authors published for their rater evaluation, one JSON object
  ``{"pred": [...], "gt": [...]}`` whose two lists are aligned by position: ``pred[i]`` holds
  ``<dimension>_score`` and ``<dimension>_pred``, ``gt[i]`` the raw ``<dimension>`` scores of image i,
  which is identified by its position. Given alone, without an annotations file.

A row with a missing value, a non-integer raw score, a score outside [0, 2], a repeated item or a
layout that fits none of these is an ``InputError`` naming the file and row. Items found on one side
only are counted in ``unmatched``, never fatal.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from ..analysis.stats import CI, cluster_codes, cluster_resample_counts, percentile_ci, round_half_up
from ..errors import ConfigError, InputError
from ..images.decode import decode_image
from ..textio import jsonl_objects, read_text
from .base import Judge

ROUNDING = {"half-up": round_half_up, "half-even": np.round}
_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_EXAMPLES = 5  # unmatched items listed by name in the result
_SLACK = 1e-6  # float noise in a sum of probabilities times levels, clipped back into [0, 2]


class Prediction(NamedTuple):
    score: float
    pred: int | None


Item = tuple[str, str]  # (image, dimension)


class _Side:
    """Items read from one side (predictions or annotations), with where each came from."""

    def __init__(self) -> None:
        self.values: dict[Item, Any] = {}
        self.where: dict[Item, str] = {}

    def add(self, image: str, dim: str, value: Any, loc: str) -> None:
        if (image, dim) in self.values:
            raise InputError(f"{loc}: image {image!r}, dimension {dim!r} appears twice "
                             f"(first at {self.where[(image, dim)]})")
        self.values[(image, dim)] = value
        self.where[(image, dim)] = loc


# -- values -----------------------------------------------------------------------------------------

def _present(row: Mapping[str, Any], field: str, loc: str) -> Any:
    value = row.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{loc}: missing value for {field!r}")
    return value.strip() if isinstance(value, str) else value


def _number(value: Any, field: str, loc: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{loc}: {field} = {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"{loc}: {field} = {value!r} is not a number") from None
    if not math.isfinite(number):
        raise InputError(f"{loc}: {field} = {value!r} is not a finite number")
    return number


def _integer(value: Any, field: str, loc: str) -> int:
    number = _number(value, field, loc)
    if number != int(number):
        raise InputError(f"{loc}: {field} = {value!r} is not an integer")
    return int(number)


def _score(value: Any, field: str, loc: str) -> float:
    score = _number(value, field, loc)
    if not -_SLACK <= score <= 2.0 + _SLACK:
        raise InputError(f"{loc}: {field} = {value!r} is outside [0, 2]; the score is the judge's E[J] "
                         "over the levels 0, 1, 2")
    return min(max(score, 0.0), 2.0)


def _level(value: Any, field: str, loc: str) -> int:
    level = _integer(value, field, loc)
    if level not in (0, 1, 2):
        raise InputError(f"{loc}: {field} = {value!r} is not a level 0, 1 or 2")
    return level


def _image_id(row: Mapping[str, Any], loc: str) -> str:
    if "image" not in row:
        raise InputError(f"{loc}: no 'image' field, so the row fits no known layout (long: image, dimension, "
                         "score/raw; wide: image plus one column per dimension)")
    return str(_present(row, "image", loc))


# -- rows of one file -------------------------------------------------------------------------------

def _read(path: Path, what: str) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any] | None]:
    """(location, row) pairs of a row file, or ``([], obj)`` for a combined-layout JSON object."""
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{what} {path}: unknown format {path.suffix or '(no suffix)'!r}; "
                         f"use one of {', '.join(sorted(_FORMATS))}")
    text = read_text(path, what)
    name = path.name
    if kind in ("csv", "tsv"):
        return _csv_rows(text, name, "\t" if kind == "tsv" else ","), None
    if kind == "jsonl":
        return jsonl_objects(text, name), None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}:line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(obj, dict) and "pred" in obj and "gt" in obj:
        return [], obj
    if not isinstance(obj, list):
        raise InputError(f"{name}: a JSON file must hold a list of rows, or the combined layout "
                         '{"pred": [...], "gt": [...]}')
    rows = []
    for n, row in enumerate(obj, start=1):
        if not isinstance(row, dict):
            raise InputError(f"{name}:row {n}: not a JSON object")
        rows.append((f"{name}:row {n}", row))
    return rows, None


def _csv_rows(text: str, name: str, delimiter: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        for n, row in enumerate(reader, start=1):
            loc = f"{name}:row {n}"
            if None in row:
                raise InputError(f"{loc}: more cells than the header has columns")
            rows.append((loc, dict(row)))
    except csv.Error as exc:
        raise InputError(f"{name}:{reader.line_num}: malformed CSV ({exc})") from None
    return rows


def _layout(rows: list[tuple[str, dict[str, Any]]], name: str) -> str:
    if not rows:
        raise InputError(f"{name}: no rows")
    long = "dimension" in rows[0][1]
    for loc, row in rows:
        if ("dimension" in row) != long:
            raise InputError(f"{loc}: mixes layouts: the first row {'has' if long else 'has no'} a 'dimension' "
                             "field and this one does not match")
    return "long" if long else "wide"


def _wide_predictions(row: Mapping[str, Any], image: str, loc: str, side: _Side) -> None:
    scores, preds = {}, {}
    for column in row:
        if column == "image":
            continue
        if column.endswith("_score"):
            scores[column[:-len("_score")]] = _score(_present(row, column, loc), column, loc)
        elif column.endswith("_pred"):
            preds[column[:-len("_pred")]] = _level(_present(row, column, loc), column, loc)
        else:
            raise InputError(f"{loc}: column {column!r} is neither 'image', '<dimension>_score' nor "
                             "'<dimension>_pred'")
    for dim in preds:
        if dim not in scores:
            raise InputError(f"{loc}: {dim}_pred has no {dim}_score beside it")
    for dim, score in scores.items():
        side.add(image, dim, Prediction(score, preds.get(dim)), loc)


def _wide_annotations(row: Mapping[str, Any], image: str, loc: str, side: _Side) -> None:
    for column in row:
        if column != "image":
            side.add(image, column, _integer(_present(row, column, loc), f"raw {column}", loc), loc)


def _parse_predictions(rows: list[tuple[str, dict[str, Any]]], name: str) -> tuple[_Side, str]:
    side, layout = _Side(), _layout(rows, name)
    for loc, row in rows:
        image = _image_id(row, loc)
        if layout == "wide":
            _wide_predictions(row, image, loc, side)
            continue
        dim = str(_present(row, "dimension", loc))
        pred = row.get("pred")
        has_pred = pred is not None and not (isinstance(pred, str) and not pred.strip())
        side.add(image, dim, Prediction(_score(_present(row, "score", loc), "score", loc),
                                        _level(pred, "pred", loc) if has_pred else None), loc)
    return side, layout


def _parse_annotations(rows: list[tuple[str, dict[str, Any]]], name: str) -> tuple[_Side, str]:
    side, layout = _Side(), _layout(rows, name)
    for loc, row in rows:
        image = _image_id(row, loc)
        if layout == "wide":
            _wide_annotations(row, image, loc, side)
            continue
        dim = str(_present(row, "dimension", loc))
        side.add(image, dim, _integer(_present(row, "raw", loc), "raw", loc), loc)
    return side, layout


def _parse_combined(obj: dict[str, Any], name: str) -> tuple[_Side, _Side]:
    pred, gt = obj["pred"], obj["gt"]
    if not isinstance(pred, list) or not isinstance(gt, list):
        raise InputError(f"{name}: 'pred' and 'gt' must both be lists")
    if len(pred) != len(gt):
        raise InputError(f"{name}: 'pred' has {len(pred)} entries and 'gt' {len(gt)}; they must be aligned")
    predictions, annotations = _Side(), _Side()
    for i, (p, g) in enumerate(zip(pred, gt)):
        for part, row in (("pred", p), ("gt", g)):
            if not isinstance(row, dict):
                raise InputError(f"{name}: {part}[{i}] is not a JSON object")
        _wide_predictions(p, str(i), f"{name}: pred[{i}]", predictions)
        _wide_annotations(g, str(i), f"{name}: gt[{i}]", annotations)
    return predictions, annotations


def read_predictions(path: str | Path) -> tuple[dict[Item, Prediction], str]:
    """Judge outputs from a long or wide file: ``({(image, dimension): Prediction}, layout)``."""
    path = Path(path)
    rows, combined = _read(path, "predictions file")
    if combined is not None:
        raise InputError(f"{path.name}: is the combined layout (predictions and annotations); give it alone")
    side, layout = _parse_predictions(rows, path.name)
    return side.values, layout


def read_annotations(path: str | Path) -> tuple[dict[Item, int], str]:
    """Raw VisionReward scores from a long or wide file: ``({(image, dimension): raw}, layout)``."""
    path = Path(path)
    rows, combined = _read(path, "annotations file")
    if combined is not None:
        raise InputError(f"{path.name}: is the combined layout, which holds predictions too; "
                         "validate it alone, without a second file")
    side, layout = _parse_annotations(rows, path.name)
    return side.values, layout


def predictions_from_rows(rows: Sequence[Mapping[str, Any]], source: str = "judge output") -> dict[Item, Prediction]:
    """Rows in the long prediction layout (as ``judge_folder`` returns them), checked as a file's rows."""
    side, _ = _parse_predictions([(f"{source}:row {n}", dict(r)) for n, r in enumerate(rows, start=1)], source)
    return side.values


# -- metrics ----------------------------------------------------------------------------------------

def _cell(ci: CI, n: int) -> dict[str, Any]:
    """``{estimate, low, high, n}`` with None where undefined, so the result is valid JSON."""
    def clean(v: float) -> float | None:
        return None if math.isnan(v) else float(v)
    return {"estimate": clean(ci.estimate), "low": clean(ci.low), "high": clean(ci.high), "n": n}


_CLASSES = (0, 1, 2)


def _item_terms(score: np.ndarray, target: np.ndarray, rounded: np.ndarray,
                argmax: np.ndarray) -> dict[str, np.ndarray]:
    """Per-item terms whose sums give every metric (see ``_metrics``)."""
    err = np.abs(score - target)
    has = ~np.isnan(argmax)
    terms = {"n": np.ones_like(score), "err": err, "hit": (rounded == target) * 1.0, "n_argmax": has * 1.0}
    for c in _CLASSES:
        is_c = target == c
        terms[f"n{c}"], terms[f"err{c}"] = is_c * 1.0, err * is_c
        for name, pred, mask in (("rounded", rounded, np.ones_like(has)), ("argmax", argmax, has)):
            said_c = pred == c
            terms[f"{name}_tp{c}"] = (said_c & is_c & mask) * 1.0
            terms[f"{name}_fp{c}"] = (said_c & ~is_c & mask) * 1.0
            terms[f"{name}_fn{c}"] = (~said_c & is_c & mask) * 1.0
    return terms


def _weighted_f1(sums: Mapping[str, np.ndarray], name: str, total: np.ndarray) -> np.ndarray:
    f1 = 0.0
    for c in _CLASSES:
        tp, fp, fn = sums[f"{name}_tp{c}"], sums[f"{name}_fp{c}"], sums[f"{name}_fn{c}"]
        den = 2 * tp + fp + fn
        f1 = f1 + np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0) * (tp + fn)  # tp + fn: support
    return f1 / total


def _metrics(sums: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The metrics from summed terms (arrays over resamples). They equal ``stats.mae``, ``stats.wmae``,
    ``stats.weighted_f1`` and ``stats.accuracy`` on the rows the sums are over; computing them from
    sums lets one matrix product per block give every bootstrap resample."""
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.stack([sums[f"err{c}"] / sums[f"n{c}"] for c in _CLASSES])  # nan: class absent
        present = ~np.isnan(per_class)
        return {
            "mae": sums["err"] / sums["n"],
            "wmae": np.where(present, per_class, 0.0).sum(axis=0) / present.sum(axis=0),
            "wf1_rounded": _weighted_f1(sums, "rounded", sums["n"]),
            "wf1_argmax": _weighted_f1(sums, "argmax", sums["n_argmax"]),
            "accuracy_rounded": sums["hit"] / sums["n"],
        }


def _block(score: np.ndarray, target: np.ndarray, argmax: np.ndarray, images: list[str], rounding: str,
           n_boot: int, ci: float, seed: int) -> dict[str, Any]:
    """Metrics with cluster-bootstrap intervals over images: the same resamples as
    ``bootstrap_ci(..., clusters=images)``, computed as (times each image is drawn) @ (per-image sums)."""
    terms = _item_terms(score, target, ROUNDING[rounding](score).astype(float), argmax)
    names = list(terms)
    codes = cluster_codes(images)
    k = int(codes.max()) + 1
    per_image = np.stack([np.bincount(codes, weights=terms[t], minlength=k) for t in names], axis=1)
    estimate = _metrics({t: np.array([per_image[:, j].sum()]) for j, t in enumerate(names)})
    resampled: dict[str, list[np.ndarray]] = {m: [] for m in estimate}
    if k > 1:
        for counts in cluster_resample_counts(k, n_boot, seed):
            sums = counts @ per_image
            for metric, values in _metrics({t: sums[:, j] for j, t in enumerate(names)}).items():
                resampled[metric].append(values)

    def cell(metric: str, n: int) -> dict[str, Any]:
        est = float(estimate[metric][0])
        if k == 1:
            return _cell(CI(est, est, est), n)
        thetas = np.concatenate(resampled[metric]) if resampled[metric] else np.empty(0)
        return _cell(percentile_ci(est, thetas, ci), n)

    n, n_argmax = int(score.size), int(np.sum(~np.isnan(argmax)))
    return {
        "n": n,
        "n_images": k,
        "support": {str(c): int(np.sum(target == c)) for c in _CLASSES},
        "mae": cell("mae", n),
        "wmae": cell("wmae", n),
        "wf1_rounded": cell("wf1_rounded", n),
        "wf1_argmax": cell("wf1_argmax", n_argmax) if n_argmax else None,
        "accuracy_rounded": cell("accuracy_rounded", n),
    }


def evaluate(predictions: Mapping[Item, Prediction], annotations: Mapping[Item, int], *,
             dims: Sequence[str] | None = None, rounding: str = "half-up", n_boot: int = 1000, seed: int = 0,
             ci: float = 0.95) -> dict[str, Any]:
    """The validation metrics of ``predictions`` against ``annotations`` (see the module docstring).

    ``dims``: the dimensions to use (default: every dimension on both sides). Items on one side
    only are counted in ``unmatched``; a dimension on one side only is listed there too.
    """
    if rounding not in ROUNDING:
        raise ConfigError(f"rounding must be one of {', '.join(ROUNDING)}, got {rounding!r}")
    pred_dims = {d for _, d in predictions}
    gt_dims = {d for _, d in annotations}
    if dims is None:
        used = sorted(pred_dims & gt_dims)
        if not used:
            raise InputError(f"predictions and annotations share no dimension (predictions: "
                             f"{', '.join(sorted(pred_dims)) or 'none'}; annotations: "
                             f"{', '.join(sorted(gt_dims)) or 'none'})")
    else:
        used = list(dict.fromkeys(dims))
        for dim in used:
            lacking = [side for side, have in (("predictions", pred_dims), ("annotations", gt_dims)) if dim not in have]
            if lacking:
                raise InputError(f"dimension {dim!r} is not in the {' or the '.join(lacking)}; both have: "
                                 f"{', '.join(sorted(pred_dims & gt_dims)) or 'none'}")
    chosen = set(used)
    matched = sorted(k for k in predictions if k[1] in chosen and k in annotations)
    pred_only = sorted(k for k in predictions if k[1] in chosen and k not in annotations)
    gt_only = sorted(k for k in annotations if k[1] in chosen and k not in predictions)
    if not matched:
        raise InputError("no (image, dimension) item is in both the predictions and the annotations; "
                         "check that both name the images the same way")
    score = np.array([predictions[k].score for k in matched])
    target = np.sign(np.array([annotations[k] for k in matched], dtype=float)) + 1
    argmax = np.array([np.nan if predictions[k].pred is None else predictions[k].pred for k in matched], dtype=float)
    images = [k[0] for k in matched]
    dim_of = np.array([k[1] for k in matched])

    def block(mask: np.ndarray) -> dict[str, Any]:
        return _block(score[mask], target[mask], argmax[mask], [im for im, m in zip(images, mask) if m],
                      rounding, n_boot, ci, seed)

    return {
        "n": len(matched),
        "n_images": len(set(images)),
        "dimensions": used,
        "rounding": rounding,
        "target": "sign(raw) + 1",
        "bootstrap": {"n_resamples": n_boot, "ci": ci, "seed": seed, "method": "percentile",
                      "resampled": "images",
                      "note": "images are resampled with all their dimensions together (cluster bootstrap)"},
        "unmatched": {
            "predictions_only": len(pred_only),
            "annotations_only": len(gt_only),
            "predictions_only_examples": [list(k) for k in pred_only[:_EXAMPLES]],
            "annotations_only_examples": [list(k) for k in gt_only[:_EXAMPLES]],
            "dimensions_predictions_only": sorted(pred_dims - gt_dims),
            "dimensions_annotations_only": sorted(gt_dims - pred_dims),
        },
        "overall": block(np.ones(len(matched), dtype=bool)),
        "per_dimension": {dim: block(dim_of == dim) for dim in used if np.any(dim_of == dim)},
    }


def validate(pred_path: str | Path, gt_path: str | Path | None = None, *, dims: Sequence[str] | None = None,
             rounding: str = "half-up", n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Validate judge outputs in ``pred_path`` against annotations in ``gt_path``; without
    ``gt_path``, ``pred_path`` is a combined-layout file holding both."""
    pred_path = Path(pred_path)
    if gt_path is None:
        rows, combined = _read(pred_path, "predictions file")
        if combined is None:
            raise InputError(f"{pred_path.name}: holds no annotations (not the combined layout "
                             '{"pred": [...], "gt": [...]}); give an annotations file too')
        pred_side, gt_side = _parse_combined(combined, pred_path.name)
        predictions, annotations, layouts = pred_side.values, gt_side.values, ("combined", "combined")
    else:
        predictions, pred_layout = read_predictions(pred_path)
        annotations, gt_layout = read_annotations(gt_path)
        layouts = (pred_layout, gt_layout)
    result = evaluate(predictions, annotations, dims=dims, rounding=rounding, n_boot=n_boot, seed=seed, ci=ci)
    result["inputs"] = {"predictions": str(pred_path), "predictions_layout": layouts[0],
                        "annotations": str(gt_path) if gt_path is not None else str(pred_path),
                        "annotations_layout": layouts[1]}
    return result


# -- running a judge on a labelled image folder -----------------------------------------------------

class FolderJudgement(NamedTuple):
    rows: list[dict[str, Any]]  # the long prediction layout
    failures: dict[str, str]  # image id -> reason


def judge_folder(judge: Judge, images: Mapping[str, str | Path], dims: Sequence[str], *,
                 batch_size: int = 16) -> FolderJudgement:
    """Judge every image on ``dims``; rows ``{image, dimension, score[, pred]}`` in the long layout.

    An image that does not decode, a judge error (its whole batch) or a result with an error is a
    failure with its reason, and the rest go on. A dimension the judge leaves unjudged (None) gives
    no row, so validation counts that annotation as unmatched.
    """
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    ids = list(images)
    for start in range(0, len(ids), batch_size):
        decoded, ok = [], []
        for image_id in ids[start:start + batch_size]:
            try:
                decoded.append(decode_image(images[image_id], name=image_id))
                ok.append(image_id)
            except InputError as exc:
                failures[image_id] = str(exc)
        if not ok:
            continue
        try:
            results = judge.judge(decoded, dims)
            if len(results) != len(ok):
                raise RuntimeError(f"{len(results)} results for {len(ok)} images")
        except Exception as exc:  # a model error fails this batch's images, not the validation
            failures.update({image_id: f"judge error: {exc!r}" for image_id in ok})
            continue
        for image_id, result in zip(ok, results):
            if result.error:
                failures[image_id] = result.error
                continue
            argmax = result.extra.get("argmax") or {}
            for dim in dims:
                score = result.scores.get(dim)
                if score is None:
                    continue
                row: dict[str, Any] = {"image": image_id, "dimension": dim, "score": float(score)}
                if argmax.get(dim) is not None:
                    row["pred"] = int(argmax[dim])
                rows.append(row)
    return FolderJudgement(rows, failures)


def _image_files(folder: Path, ids: Sequence[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """Each id's file in ``folder``: the file of that name, else the one file whose name without its
    suffix is the id. Ids with no such file, several, or a path leading outside are failures."""
    if not folder.is_dir():
        raise InputError(f"image folder {folder} is not a directory")
    root = folder.resolve()
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            by_stem.setdefault(path.stem, []).append(path)
    found, failures = {}, {}
    for image_id in ids:
        exact = folder / image_id
        if not exact.resolve().is_relative_to(root):
            failures[image_id] = f"image {image_id}: the id leads outside {folder}"
        elif exact.is_file():
            found[image_id] = exact
        elif len(by_stem.get(image_id, [])) == 1:
            found[image_id] = by_stem[image_id][0]
        elif image_id in by_stem:
            names = ", ".join(p.name for p in by_stem[image_id])
            failures[image_id] = f"image {image_id}: ambiguous, several files have this name ({names})"
        else:
            failures[image_id] = f"image {image_id}: no file named {image_id} or {image_id}.<ext> in {folder}"
    return found, failures


def validate_judge(judge: Judge, image_dir: str | Path, gt_path: str | Path, *, dims: Sequence[str] | None = None,
                   rounding: str = "half-up", n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                   batch_size: int = 16) -> dict[str, Any]:
    """Run ``judge`` on the annotated images of ``image_dir`` and validate it against ``gt_path``.

    The annotations' ``image`` ids name the files (with or without their suffix). The judged
    dimensions are ``dims``, else the annotated dimensions, less those the judge does not cover
    (listed in ``dimensions_not_judged``). Images that cannot be found, decoded or judged are listed
    in ``failures`` and their annotations count as unmatched.
    """
    annotations, layout = read_annotations(gt_path)
    annotated = sorted({d for _, d in annotations})
    wanted = list(dims) if dims is not None else annotated
    judged = [d for d in wanted if d in judge.covers] if judge.covers else wanted
    if not judged:
        raise InputError(f"judge {judge.name} covers none of the dimensions {', '.join(wanted)}")
    found, failures = _image_files(Path(image_dir), sorted({im for im, _ in annotations}))
    outcome = judge_folder(judge, found, judged, batch_size=batch_size)
    failures.update(outcome.failures)
    if not outcome.rows:
        raise InputError(f"judge {judge.name} gave no score for any annotated image in {image_dir} "
                         f"({len(failures)} failed; first: {next(iter(failures.values()), 'none')})")
    result = evaluate(predictions_from_rows(outcome.rows, f"judge {judge.name}"), annotations, dims=judged,
                      rounding=rounding, n_boot=n_boot, seed=seed, ci=ci)
    result["inputs"] = {"images": str(image_dir), "annotations": str(gt_path), "annotations_layout": layout}
    result["judge"] = judge.identity()
    result["dimensions_not_judged"] = [d for d in wanted if d not in judged]
    result["failures"] = {"n": len(failures), "items": dict(sorted(failures.items()))}
    return result


# -- table ------------------------------------------------------------------------------------------

_COLUMNS = (("MAE", "mae"), ("WMAE", "wmae"), ("WF1 (rounded)", "wf1_rounded"), ("WF1 (argmax)", "wf1_argmax"),
            ("acc (rounded)", "accuracy_rounded"))


def format_table(result: Mapping[str, Any], digits: int = 4) -> str:
    """A plain-text table: a heading that says what was measured and how, the overall line, then one
    line per dimension; every cell is ``estimate [low, high]``."""
    boot = result["bootstrap"]
    unmatched = result["unmatched"]
    lines = [
        f"judge validation: n = {result['n']} (image, dimension) items from {result['n_images']} images, "
        f"{len(result['dimensions'])} dimensions",
        f"target = sign(raw) + 1; E[J] rounded {result['rounding']}; {boot['ci']:.0%} percentile bootstrap "
        f"intervals from {boot['n_resamples']} resamples of images (an image's dimensions stay together)",
        f"unmatched: {unmatched['predictions_only']} predictions without annotation, "
        f"{unmatched['annotations_only']} annotations without prediction",
    ]
    if result.get("dimensions_not_judged"):
        lines.append(f"not judged (the judge does not cover them): {', '.join(result['dimensions_not_judged'])}")
    if "failures" in result:
        lines.append(f"failed images: {result['failures']['n']}")
    header = ["dimension", "n", *(title for title, _ in _COLUMNS)]
    body = [["overall", *_row(result["overall"], digits)]]
    body += [[dim, *_row(block, digits)] for dim, block in result["per_dimension"].items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines += ["", line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]
    return "\n".join(lines)


def _row(block: Mapping[str, Any], digits: int) -> list[str]:
    # Imported here: the registry imports this module with every judge, and the audit module is large.
    from ..analysis.audit import format_estimate

    return [str(block["n"]), *(format_estimate(block[key], digits) if block[key] else "–" for _, key in _COLUMNS)]

