"""Human pair labels: pair-labelling tasks for Label Studio out, raters' answers in as ``labels`` records.

Export (``export_label_studio``) writes two files into a folder:

``tasks.json``            Label Studio's JSON import format, a list of tasks ``{"data": {...}}`` whose data keys
                          are the variables the labelling config names (Label Studio guide "Import data" /
                          API "Import tasks": imported data must hold every ``$variable`` of the config).
                          Each task's data: ``image_pair_id``, ``first`` ("o" or "a": which image is shown
                          first, on the left), ``prompt`` (p_a), ``image_first``, ``image_second``, ``seed``.
``labeling_config.xml``   a labelling config (Label Studio tags ``View``, ``Header``, ``Text``, ``Image``,
                          ``Choices``/``Choice``, as in its "Pairwise Regression" template's side-by-side grid):
                          p_a as text, the two images side by side, one required single choice named ``choice``
                          with First / Second / Tie on hotkeys 1 / 2 / 3.

Which image comes first is a fair coin per pair, drawn from ``random.Random(f"{seed}:{image_pair_id}")``, so
the same seed always gives the same tasks, and ``first`` records the order the rater saw. ``first`` is
task data, which Label Studio's Data Manager can show as a column: hide that column from raters.

Images, by ``images=``:

embed  data URLs (``data:image/png;base64,...``) of the stored bytes: one self-contained file, for small studies
       (Label Studio takes at most 200 MB per import request).
path   Label Studio's local-files URLs ``/data/local-files/?d=<path below the document root>`` (guide "Local
       storage"). Start Label Studio with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
       ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<document_root>`` (default: the run directory), add a Local Files
       source storage whose absolute path is the run's ``images/`` folder with import method "Tasks", save it
       without syncing, then import ``tasks.json``.
url    ``url_prefix`` + the image's path inside the run directory (``images/ab/<sha256>.png``): serve the run
       directory (for example ``python -m http.server -d RUN 8000`` and ``url_prefix=http://host:8000/``).

Import (``import_human_labels``) reads

- Label Studio's JSON export (``.json``; guide "Label Studio JSON format of annotated tasks"): a list of tasks,
  each with ``data`` (the exported data above, echoed back) and ``annotations``, each with ``completed_by`` (a
  user id, or a user object with ``email``), ``was_cancelled`` and ``result`` items such as ``{"type":
  "choices", "from_name": "choice", "value": {"choices": ["First"]}}``. Every annotation that was not cancelled
  is one rater's answer; the rater is the user's email, else the user id. A task without ``image_pair_id`` and
  ``first`` in its data was not made by this export, and its annotations fail.
- CSV, TSV or JSONL rows with ``rater``; a pair reference: ``image_pair_id``, or ``pair_id`` (plus ``model``
  where one prompt pair was rendered by several generators), or the ``image_o`` and ``image_a`` hashes; and
  either ``choice`` (original / anti-aesthetic / anti / tie / 0 / 1 / -1, any case) or ``answer`` (first /
  second / tie) with ``first`` (o / a).

Each answer becomes one ``labels`` record (see ``records``) with source ``human:<rater>``: value -1 tie / 0
original preferred / 1 anti-aesthetic preferred, and ``answers`` with the order shown where it is known (a
``choice`` row without ``first`` records ``first`` and ``selection`` as null). Rater ids are stripped, runs of
whitespace become one space, and control characters are refused. A stored label is final: importing the same
answer again counts as cached; a different answer from the same rater for the same pair keeps the stored one,
counts as cached and adds a warning (record a second opinion under a new rater id). A bad row (unknown pair,
unknown choice, empty rater) becomes a failed record named ``<file>:line N`` (``<file>:task N annotation M`` in a
Label Studio export) and the import goes on; a file that cannot be read at all is one ``InputError``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import mimetypes
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote

from ..errors import InputError
from ..records import IMAGES, LABELS, failed_item_key, has_pixels, label_key
from ..stage import StageSummary
from ..store.run import Record, RunStore, atomic_write_text
from ..textio import control_char, from_spreadsheet_cell, read_text
from ..ui import log

IMAGE_MODES = ("embed", "path", "url")
TASKS_FILE, CONFIG_FILE = "tasks.json", "labeling_config.xml"
CHOICE_NAME = "choice"
FIRST, SECOND, TIE = "First", "Second", "Tie"
LABELING_CONFIG = f"""<View>
  <Header value="Which image better matches the prompt? First = left, Second = right."/>
  <Text name="prompt" value="$prompt"/>
  <View style="display: grid; column-gap: 8px; grid-template: auto/1fr 1fr">
    <Image name="image_first" value="$image_first"/>
    <Image name="image_second" value="$image_second"/>
  </View>
  <Choices name="{CHOICE_NAME}" toName="prompt" choice="single-radio" showInline="true" required="true">
    <Choice value="{FIRST}" hotkey="1"/>
    <Choice value="{SECOND}" hotkey="2"/>
    <Choice value="{TIE}" hotkey="3"/>
  </Choices>
</View>
"""
# Label Studio refuses import requests over 200 MB; embedded images reach that at a few hundred pairs.
_IMPORT_LIMIT = 200 * 2**20

_SELECTIONS = {FIRST.lower(): 0, SECOND.lower(): 1, TIE.lower(): -1}
_CHOICES = {"original": 0, "anti-aesthetic": 1, "anti": 1, "tie": -1, "0": 0, "1": 1, "-1": -1}
_SIDES = ("o", "a")
_RETRY_HINT = "fix the rows `status RUN` lists and import again"


def first_side(seed: int, image_pair_id: str) -> str:
    """Which image of a pair a rater sees first, "o" or "a": a fair coin drawn from the seed and the pair."""
    return "a" if random.Random(f"{seed}:{image_pair_id}").random() < 0.5 else "o"


def value_of(selection: int, first: str) -> int:
    """An answer as shown (-1 tie, 0 the first image, 1 the second) as a label: -1 tie, 0 original, 1 anti-aesthetic."""
    if selection == -1:
        return -1
    return selection if first == "o" else 1 - selection


# -- export -------------------------------------------------------------------------------------

def export_label_studio(store: RunStore, out_dir: str | Path, *, images: str = "embed", url_prefix: str | None = None,
                        document_root: str | Path | None = None, seed: int = 0, pairs: int | None = None,
                        models: Sequence[str] | None = None) -> Path:
    """Write ``tasks.json`` and ``labeling_config.xml`` into ``out_dir``; return ``out_dir``.

    ``pairs`` keeps that many image pairs, drawn at random with ``seed`` (in the run's order); ``models`` keeps
    the pairs of these generators. Pairs with the same two images and p_a are one task, since they get one
    label. ``document_root`` (``images="path"``) is Label Studio's local-files document root.
    """
    if images not in IMAGE_MODES:
        raise InputError(f"images={images!r} is not one of {', '.join(IMAGE_MODES)}")
    if images == "url" and not url_prefix:
        raise InputError("images 'url' needs a URL prefix (e.g. http://host:8000/ serving the run directory), to "
                         "which the image's path in the run (images/ab/<sha256>.png) is appended")
    if pairs is not None and pairs < 1:
        raise InputError(f"pairs must be at least 1, not {pairs}")
    root = Path(document_root).resolve() if document_root is not None else store.root.resolve()
    # pairs imported without their images (scores only) cannot be shown to raters
    records = [r for r in store.records(IMAGES) if has_pixels(r.data["image_o"]) and has_pixels(r.data["image_a"])]
    if models is not None:
        wanted = set(models)
        records = [r for r in records if r.data.get("model") in wanted]
    unique: dict[tuple[str, str, str], Record] = {}
    for r in records:
        unique.setdefault((r.data["image_o"], r.data["image_a"], r.data["p_a"]), r)
    chosen = list(unique.values())
    if not chosen:
        held = sorted({str(r.data.get("model")) for r in store.records(IMAGES)})
        which = f" of the models {', '.join(models)} (the run has {', '.join(held) or 'none'})" if models else ""
        raise InputError(f"no image pairs to export{which}")
    if pairs is not None and pairs < len(chosen):
        keep = set(random.Random(f"{seed}:sample").sample(range(len(chosen)), pairs))
        chosen = [r for i, r in enumerate(chosen) if i in keep]

    def source(sha: str) -> str:
        path = store.image_path(sha)
        if images == "embed":
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
        if images == "url":
            return url_prefix.rstrip("/") + "/" + quote(path.resolve().relative_to(store.root.resolve()).as_posix())
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            raise InputError(f"image {resolved} is not below the document root {root}; pass a document root that "
                             "holds the run's images/ folder")
        return "/data/local-files/?d=" + quote(resolved.relative_to(root).as_posix(), safe="/")

    tasks = []
    for r in chosen:
        first = first_side(seed, r.key)
        second = "a" if first == "o" else "o"
        tasks.append({"data": {"image_pair_id": r.key, "first": first, "prompt": r.data["p_a"],
                               "image_first": source(r.data[f"image_{first}"]),
                               "image_second": source(r.data[f"image_{second}"]), "seed": seed}})
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out} ({exc.strerror or exc})") from None
    text = json.dumps(tasks, indent=1, ensure_ascii=False) + "\n"
    if len(text) > _IMPORT_LIMIT:
        log.warning("%s is %.0f MB, over the 200 MB Label Studio takes in one import: export with images 'path' "
                    "or 'url', or fewer pairs", out / TASKS_FILE, len(text) / 2**20)
    atomic_write_text(out / TASKS_FILE, text)
    atomic_write_text(out / CONFIG_FILE, LABELING_CONFIG)
    return out


# -- import -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Answer:
    rater: str
    ref: dict[str, Any]         # image_pair_id, or pair_id (+ model), or image_o + image_a
    value: int
    first: str | None           # the image shown first, when known
    selection: int | None       # as answered: -1 tie, 0 first shown, 1 second shown


def import_human_labels(store: RunStore, path: str | Path) -> StageSummary:
    """Import raters' answers from a Label Studio JSON export or a CSV/TSV/JSONL file as labels records."""
    path = Path(path)
    units = _label_studio_units(path) if path.suffix.lower() == ".json" else _row_units(path)
    pairs = _Pairs(store)
    summary = StageSummary(LABELS, total=len(units), retry_hint=_RETRY_HINT)
    # A new import of a file replaces that file's earlier failures: rows fixed or removed since leave none.
    # (A failed record without its file name goes when its row imports.)
    failed = list(store.records(LABELS, status="failed"))
    store.discard_failed([r.key for r in failed if r.data.get("source_file") == path.name])
    unfiled = {r.key for r in failed if "source_file" not in r.data}
    pending: dict[str, Record] = {}  # labels written since the last flush, which ``store.get`` cannot see yet
    with store.writer() as writer:
        for where, parse in units:
            failed_key = failed_item_key(LABELS, path.name, where)
            try:
                answer = parse()
                pair = pairs.find(answer.ref)
            except InputError as exc:
                reason = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
                writer.put(Record.failed(failed_key, LABELS, where, reason, source_item=where, source_file=path.name))
                summary.failed += 1
                continue
            if failed_key in unfiled:
                store.discard_failed([failed_key])
            source = f"human:{answer.rater}"
            key = label_key(source=source, image_o=pair["image_o"], image_a=pair["image_a"], prompt=pair["p_a"],
                            seed=None)
            stored = pending.get(key) or store.get(key)
            if stored is not None and stored.status == "ok":
                summary.cached += 1
                if stored.data["value"] != answer.value:
                    summary.warnings.append(
                        f"{where}: rater {answer.rater!r} answered {_said(answer.value)} for image pair "
                        f"{pair['image_pair_id']}, but the stored label ({stored.item}) says "
                        f"{_said(stored.data['value'])}; "
                        f"kept the stored label. A stored label is final: to record a second answer, import it "
                        f"under a new rater id (e.g. '{answer.rater}-2')")
                continue
            data = {"source": source, "labeller": "human", "labeller_id": None,
                    "image_pair_id": pair["image_pair_id"], "pair_id": pair.get("pair_id"),
                    "model": pair.get("model"), "image_o": pair["image_o"], "image_a": pair["image_a"],
                    "p_a": pair["p_a"], "value": answer.value,
                    "answers": [{"first": answer.first, "selection": answer.selection, "value": answer.value}],
                    "disagree": None, "seed": None, "source_item": where}
            pending[key] = Record(key, LABELS, where, data)
            writer.put(pending[key])
            summary.new += 1
            if len(pending) >= writer.max_records:
                writer.flush()
                pending.clear()
    return summary


def _said(value: int) -> str:
    return {-1: "tie", 0: "original preferred", 1: "anti-aesthetic preferred"}[value]


class _Pairs:
    """The run's image pairs, found by image_pair_id, by pair_id (+ model) or by their two image hashes."""

    def __init__(self, store: RunStore):
        self.by_id: dict[str, dict[str, Any]] = {}
        self.by_pair: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.by_images: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in store.records(IMAGES):
            data = {**r.data, "image_pair_id": r.key}
            self.by_id[r.key] = data
            self.by_pair[data.get("pair_id")].append(data)
            self.by_images[(data["image_o"], data["image_a"])].append(data)

    def find(self, ref: dict[str, Any]) -> dict[str, Any]:
        if "image_pair_id" in ref:
            pair = self.by_id.get(ref["image_pair_id"])
            if pair is None:
                raise InputError(f"image_pair_id {ref['image_pair_id']} is not an image pair of this run")
            return pair
        model = ref.get("model")
        if "pair_id" in ref:
            what, found = f"pair_id {ref['pair_id']}", self.by_pair.get(ref["pair_id"], [])
        else:
            what, found = (f"image_o {ref['image_o']} + image_a {ref['image_a']}",
                           self.by_images.get((ref["image_o"], ref["image_a"]), []))
        if not found:
            raise InputError(f"{what} matches no image pair of this run")
        if model is not None:
            found = [p for p in found if p.get("model") == model]
            if not found:
                raise InputError(f"{what} has no image pair of model {model!r}")
        # Pairs with the same images and p_a share one label, whichever generator or import brought them.
        distinct = {(p["image_o"], p["image_a"], p["p_a"]): p for p in found}
        if len(distinct) > 1:
            models = sorted({str(p.get("model")) for p in found})
            hint = "add a model column" if model is None and len(models) > 1 else "give its image_pair_id"
            raise InputError(f"{what} matches {len(distinct)} image pairs (models: {', '.join(models)}); {hint}")
        return next(iter(distinct.values()))


# -- Label Studio's JSON export --------------------------------------------------------------------

def _label_studio_units(path: Path) -> list[tuple[str, Callable[[], _Answer]]]:
    text = read_text(path, "Label Studio export")
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); expected Label Studio's JSON "
                         "export") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply") from None
    if not isinstance(tasks, list):
        raise InputError(f"{path}: expected a JSON list of tasks (Label Studio's JSON export), not a "
                         f"{type(tasks).__name__}")
    units: list[tuple[str, Callable[[], _Answer]]] = []
    for i, task in enumerate(tasks, start=1):
        where = f"{path.name}:task {i}"
        annotations = task.get("annotations") if isinstance(task, dict) else None
        if not isinstance(annotations, list):
            units.append((where, _fail("not a Label Studio task with annotations: export the project "
                                                 "in Label Studio's JSON format (not JSON-MIN or CSV)")))
            continue
        for j, annotation in enumerate(annotations, start=1):
            if isinstance(annotation, dict) and annotation.get("was_cancelled"):
                continue  # the rater skipped the task: no answer
            units.append((f"{where} annotation {j}", lambda task=task, annotation=annotation:
                          _label_studio_answer(task, annotation)))
    return units


def _fail(message: str) -> Callable[[], _Answer]:
    def parse() -> _Answer:
        raise InputError(message)

    return parse


def _label_studio_answer(task: dict[str, Any], annotation: Any) -> _Answer:
    data = task.get("data")
    if not isinstance(data, dict) or not data.get("image_pair_id") or data.get("first") not in _SIDES:
        raise InputError("the task has no image_pair_id and first (o or a) in its data, so it was not made by "
                         "`export --layout label-studio`; import answers to other tasks as CSV")
    if not isinstance(annotation, dict):
        raise InputError("annotation is not a JSON object")
    user = annotation.get("completed_by")
    if isinstance(user, dict):  # exports may carry the user object instead of its id
        user = user.get("email") or user.get("id")
    if user is None:
        raise InputError("the annotation has no completed_by: who answered is unknown")
    result = annotation.get("result")
    results = [r for r in (result if isinstance(result, list) else []) if isinstance(r, dict)
               and r.get("type") == "choices"]
    named = [r for r in results if r.get("from_name") == CHOICE_NAME]
    if len(named) != 1 and len(results) != 1:
        raise InputError(f"expected one answer of the '{CHOICE_NAME}' choices, found {len(named or results)}")
    value = (named or results)[0].get("value")
    chosen = value.get("choices") if isinstance(value, dict) else None
    if not (isinstance(chosen, list) and len(chosen) == 1 and isinstance(chosen[0], str)
            and chosen[0].strip().lower() in _SELECTIONS):
        raise InputError(f"choice {chosen!r} is not one of {FIRST}, {SECOND}, {TIE}")
    selection = _SELECTIONS[chosen[0].strip().lower()]
    first = data["first"]
    return _Answer(rater=_rater(user), ref={"image_pair_id": str(data["image_pair_id"])},
                   value=value_of(selection, first), first=first, selection=selection)


# -- CSV, TSV, JSONL rows ---------------------------------------------------------------------------

def _row_units(path: Path) -> list[tuple[str, Callable[[], _Answer]]]:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".ndjson"):
        raise InputError(f"human labels file {path}: expected Label Studio's JSON export (.json) or a .csv, .tsv "
                         "or .jsonl file of rater, pair and choice columns")
    text = read_text(path, "human labels file")
    if suffix in (".jsonl", ".ndjson"):
        units = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                where = f"{path.name}:line {lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    units.append((where, _fail(f"not valid JSON ({exc.msg})")))
                    continue
                except RecursionError:
                    units.append((where, _fail("JSON nested too deeply")))
                    continue
                units.append((where, lambda row=row: _row_answer(row)))
        return units
    # As for prompt pairs: TSV has no quoting; CSV is read strictly, so an unclosed quote is an error instead
    # of a cell that swallows the rows after it.
    tsv = suffix == ".tsv"
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if tsv else ",",
                            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL, strict=True)
    try:
        columns = set(reader.fieldnames or ())
    except csv.Error as exc:
        raise InputError(f"{path}:1: malformed header ({exc})") from None
    refs = ({"image_pair_id"}, {"pair_id"}, {"image_o", "image_a"})
    if "rater" not in columns or not any(ref <= columns for ref in refs) or not (
            "choice" in columns or {"answer", "first"} <= columns):
        raise InputError(f"{path}: expected the columns rater; image_pair_id, pair_id (+ model) or image_o + "
                         f"image_a; and choice, or answer + first. It has: {', '.join(sorted(columns)) or 'none'}")
    units = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return units
        except csv.Error as exc:
            raise InputError(f"{path}:{start}: malformed row ({exc}); an unclosed quote?") from None
        if not tsv:  # undo the spreadsheet escaping of exported CSVs
            row = {k: from_spreadsheet_cell(v) if isinstance(v, str) else v for k, v in row.items()}
        units.append((f"{path.name}:line {start}", lambda row=row: _row_answer(row)))


def _cell(row: dict[str, Any], column: str) -> str | None:
    """A cell as stripped text, or None when empty or absent."""
    value = row.get(column)
    text = "" if value is None else str(value).strip()
    return text or None


def _row_answer(row: Any) -> _Answer:
    if not isinstance(row, dict):
        raise InputError("expected a JSON object")
    rater = _rater(row.get("rater"))
    if _cell(row, "image_pair_id"):
        ref: dict[str, Any] = {"image_pair_id": _cell(row, "image_pair_id")}
    elif _cell(row, "pair_id"):
        ref = {"pair_id": _cell(row, "pair_id")}
    elif _cell(row, "image_o") and _cell(row, "image_a"):
        ref = {"image_o": _cell(row, "image_o"), "image_a": _cell(row, "image_a")}
    else:
        raise InputError("no pair: give image_pair_id, pair_id (+ model), or image_o + image_a")
    if _cell(row, "model"):
        ref["model"] = _cell(row, "model")
    first = _cell(row, "first")
    if first is not None:
        first = first.lower()
        if first not in _SIDES:
            raise InputError(f"first {first!r} is not o or a")
    choice, answer = _cell(row, "choice"), _cell(row, "answer")
    if answer is not None:
        selection = _SELECTIONS.get(answer.lower())
        if selection is None:
            raise InputError(f"answer {answer!r} is not one of first, second, tie")
        if first is None:
            raise InputError("an answer of first/second needs the first column (o or a): which image was shown first")
        value = value_of(selection, first)
        if choice is not None and _CHOICES.get(choice.lower()) != value:
            raise InputError(f"choice {choice!r} and answer {answer!r} with first {first!r} disagree")
        return _Answer(rater=rater, ref=ref, value=value, first=first, selection=selection)
    if choice is None:
        raise InputError("no answer: give choice (original, anti-aesthetic, tie) or answer (first, second, tie) "
                         "with first")
    value = _CHOICES.get(choice.lower())
    if value is None:
        raise InputError(f"choice {choice!r} is not one of original, anti-aesthetic, anti, tie, 0, 1, -1")
    # value_of is its own inverse for a known order: the selection that the value was answered as.
    return _Answer(rater=rater, ref=ref, value=value, first=first,
                   selection=None if first is None else value_of(value, first))


def _rater(raw: Any) -> str:
    """A rater id: text or an integer user id, stripped, runs of whitespace made one space; no control characters."""
    if raw is None or isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise InputError("no rater" if raw is None else f"rater must be text or a user id, not {raw!r}")
    text = str(raw)
    bad = control_char(text)
    if bad:
        raise InputError(f"rater {text!r} contains the control character {bad}")
    rater = " ".join(text.split())
    if not rater:
        raise InputError("empty rater")
    return rater
