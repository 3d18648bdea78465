"""Import the study's published per-row tables: image pairs with their scores, labels and judgements.

The study publishes one row per image pair (JSON list of objects, JSONL, Parquet, or a saved Hugging
Face dataset), images optional:

- prompts ``prompt_original``/``prompt_distorted`` (or ``p_o``/``p_a``), optional ``selected_dims``,
  ``model`` and ``index``; images ``image_original``/``image_distorted`` when the table has them;
- reward fields ``<model>_oiop``, ``_oidp``, ``_diop``, ``_didp`` (o/d: original/distorted image, then
  original/distorted prompt), a number or ``[mu, sigma]`` (HPSv3; mu is the score), either top-level
  or one level down under another field (``{"hpsv3_reward": {"hpsv3_oiop": [mu, sigma], ...}}``) or
  under its own name (``{"hpsv3_oiop": {"hpsv3_oiop": [mu, sigma]}}``);
- ``llm_selected``: the labeller's choice, -1 tie / 0 original / 1 distorted (null: no label);
- ``rater``: ``{"original": {"scores": [...], "preds": [...]}, "distorted": {...}}``, the judge's
  expected level J in [0, 2] and its argmax level, over the study's 11 dimensions in alphabetical order.

Each row becomes an images record (the same record ``import_pairs`` writes for the same pair), score
records of the external scorer ``<model> (imported)`` for the four (image, prompt) combinations,
a labels record of source ``import:llm_selected`` and judge records of ``study-judge (imported)``
for I_o and I_a. Without images, each image gets a stand-in id ``noimage:<hash of the row's model,
index, prompts and dims>``: deterministic, and never a SHA-256 hex digest, so it cannot meet a real
image; the analysis joins by these ids like by hashes, and stages that need pixels fail those items.
Rows without an ``index`` and with the same model, prompts and dims are one pair.

Every key is made of contents (scorer/judge identity naming the import and the field, image ids,
prompts), never of the file's location, so importing again, or from a moved file, adds nothing; a
value that differs on a second import is not replaced (the first stored record is final). A bad row
(a missing field the table has, a non-numeric reward, a ``rater`` list of the wrong length, an
``llm_selected`` outside -1/0/1, an undecodable image) stores nothing but a failed record named
``<file>:row N`` (rows counted from 1), and the rest imports. A table that cannot be read, or that
has only part of a reward family's four fields, is refused before any row is stored. Rows stream and
are written as ``import_pairs`` writes them (``importers.ImportWriter``: chunks, remembered image hashes).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator

from ..dimensions import load_catalogue, parse_dims
from ..errors import InputError
from ..hashing import spec_hash
from ..records import IMAGES, JUDGE, LABELS, NO_IMAGE, SCORE, failed_item_key, judge_key, label_key, score_key
from ..store.run import Record, RunStore
from ..textio import read_text
from .decode import store_png_level
from .importers import (ImportSummary, ImportWriter, _arrow_batches, _arrow_count, _arrow_sources, _column_names,
                        _label_value, _parquet_files, _prompt, _Row, _source, _text, check_dims, pair_record)

COMBOS = ("oiop", "oidp", "diop", "didp")  # the study's order: o/d image, then o/d prompt
_REWARD = re.compile(r"^(?P<model>.+)_(?P<combo>oiop|oidp|diop|didp)$")
SCORER_SUFFIX = " (imported)"
JUDGE_NAME = "study-judge (imported)"
LABEL_SOURCE = "import:llm_selected"
LABELLER = "llm_selected"
STAND_IN = NO_IMAGE  # a SHA-256 hex digest has no ':', so a stand-in id can never equal one
_IMPORT = "study per-row table"
_SIDES = (("o", "original"), ("a", "distorted"))


@dataclass(frozen=True)
class StudyImportSummary(ImportSummary):
    """``ok``: rows that stored something new; ``skipped_existing``: rows whose records were all stored
    already; ``records``: new records per stage (images, score, labels, judge)."""

    records: dict[str, int] = field(default_factory=dict)


@cache
def study_dims() -> tuple[str, ...]:
    """The 11 dimensions the study's judge rates, in the alphabetical order of its ``rater`` lists."""
    return tuple(sorted(load_catalogue().study_keys))


@dataclass(frozen=True)
class _Layout:
    """What a table holds: its columns, reward families and study fields."""

    names: dict[str, str]                                 # canonical field -> column (importers' aliases)
    rewards: dict[str, dict[str, tuple[str, str | None]]]  # model -> combo -> (column, field under it)
    rater: bool
    label: bool

    @property
    def images(self) -> bool:
        return "image_o" in self.names or "image_a" in self.names


def is_study_table(path: str | Path) -> bool:
    """Whether ``path`` is a table with the study's reward or ``rater`` fields (what ``import_pairs``
    routes here). False for anything unreadable: the pair importer then says what is wrong."""
    try:
        layout = _layout(*_columns(Path(path)))
    except (InputError, OSError, ValueError):
        return False
    return bool(layout.rewards) or layout.rater


def import_study_rows(path: str | Path, store: RunStore, *, dimensions: Collection[str] | None = None,
                      model: str | None = None, allow_outside: bool = False,
                      progress: Callable[..., Iterable] | None = None,
                      png_level: int | None = None) -> StudyImportSummary:
    """Import every row of the per-row table at ``path`` into ``store`` (see the module docstring).

    ``dimensions``: the known dimension keys (a row naming another fails); ``model``: the generator of
    rows without a ``model`` field; ``allow_outside``: image paths may lead outside the table's
    folder; ``progress`` wraps the rows as ``progress(rows, total=n)``; ``png_level``: the zlib level
    images are stored at (default: the run's, see ``decode.store_png_level``).
    """
    source = Path(path)
    columns, subfields = _columns(source)
    layout = _layout(columns, subfields)
    if not layout.rewards and not layout.rater:
        raise InputError(f"import: {source.name} has no <model>_oiop/_oidp/_diop/_didp reward fields and no "
                         "rater field, so it is not a table in the study's per-row layout")
    missing = [" or ".join(a) for f, a in (("p_o", ("prompt_original", "p_o")), ("p_a", ("prompt_distorted", "p_a")))
               if f not in layout.names]
    if missing:
        raise InputError(f"import: {source.name}: missing column(s) {', '.join(missing)}")
    rows, total = _rows(source)
    ok = failed = skipped = 0
    new: dict[str, int] = {IMAGES: 0, SCORE: 0, LABELS: 0, JUDGE: 0}
    with ImportWriter(store, store_png_level(store, png_level)) as out:
        for item, base, raw in (progress(rows, total=total) if progress is not None else rows):
            failed_key = failed_item_key(IMAGES, source.name, item)
            try:
                records = _row_records(item, base, raw, layout, out, source.name, dimensions, model, allow_outside)
            except InputError as exc:
                out.put(Record.failed(failed_key, IMAGES, item, str(exc), source_item=item))
                failed += 1
                continue
            out.discard_failed(failed_key)
            added = 0
            for record in records:
                stored = out.put(record)
                new[record.stage] += stored
                added += stored
            ok += added > 0
            skipped += added == 0
    return StudyImportSummary(ok=ok, failed=failed, skipped_existing=skipped, records=new)


# -- one row -> its records -------------------------------------------------------------------------

def _row_records(item: str, base: Path, raw: Any, layout: _Layout, out: ImportWriter, file: str,
                 dimensions: Collection[str] | None, default_model: str | None, allow_outside: bool) -> list[Record]:
    """Every record of one row, all checked before any is returned (images stored last), so a bad row
    leaves nothing but its failed record."""
    if not isinstance(raw, dict):
        raise InputError(raw if isinstance(raw, str) else "the row is not an object")
    f = {name: raw.get(column) for name, column in layout.names.items()}
    p_o, p_a = _prompt(f.get("p_o"), layout.names["p_o"]), _prompt(f.get("p_a"), layout.names["p_a"])
    dims = parse_dims(f.get("dims"))
    check_dims(dims, dimensions)
    model = _text(f.get("model")) or default_model
    index = f.get("index")
    rewards = {name: {combo: _reward(raw, *where) for combo, where in fields.items()}
               for name, fields in layout.rewards.items()}
    label = _label_value(raw.get(LABELLER), LABELLER) if layout.label else None
    judged = _rater(raw.get("rater")) if layout.rater else None

    if layout.images:
        row = _Row(item=item, base=base, columns=layout.names)
        sources = [out.source(*_source(f.get(side), side, row, allow_outside)) for side in ("image_o", "image_a")]
        image_o, image_a = (out.put_image(source) for source in sources)
    else:
        identity = {"model": model, "index": index, "p_o": p_o, "p_a": p_a, "dims": dims}
        image_o, image_a = (STAND_IN + spec_hash({"study_row": identity, "side": side}) for side in ("o", "a"))

    pair = pair_record(item, image_o=image_o, image_a=image_a, p_o=p_o, p_a=p_a, dims=dims, model=model,
                       label=None if label is None else {"value": label, "source": LABELLER})
    images, prompts = {"o": image_o, "a": image_a}, {"o": p_o, "a": p_a}
    records = [pair]
    for name, values in rewards.items():
        scorer = {"name": name + SCORER_SUFFIX, "import": _IMPORT, "field": name}
        for combo, (mu, sigma) in values.items():
            image, prompt = images[combo[0].replace("d", "a")], prompts[combo[2].replace("d", "a")]
            data = {"scorer": scorer["name"], "scorer_id": spec_hash(scorer), "image": image, "prompt": prompt,
                    "score": mu, "tokens": None, "truncated": None, "higher_is_better": True,
                    "field": f"{name}_{combo}", "source_item": item}
            if sigma is not None:
                data["sigma"] = sigma
            records.append(Record(score_key(scorer=scorer, image=image, prompt=prompt), SCORE,
                                  f"{item}|{name}_{combo}", data))
    if label is not None:
        records.append(Record(label_key(source=LABEL_SOURCE, image_o=image_o, image_a=image_a, prompt=p_a, seed=None),
                              LABELS, item, {
                                  "source": LABEL_SOURCE, "labeller": LABELLER, "labeller_id": None,
                                  "labeller_desc": f"{LABELLER} field imported from {file}",
                                  "image_pair_id": pair.key, "pair_id": pair.data["pair_id"], "model": model,
                                  "image_o": image_o, "image_a": image_a, "p_a": p_a, "value": label,
                                  "answers": [], "disagree": None, "seed": None, "source_item": item}))
    if judged is not None:
        judge = {"name": JUDGE_NAME, "import": _IMPORT, "field": "rater", "dims": list(study_dims())}
        for side, _ in _SIDES:
            scores, preds = judged[side]
            records.append(Record(judge_key(judge=judge, image=images[side], dims=study_dims()), JUDGE,
                                  f"{item}|rater.{dict(_SIDES)[side]}", {
                                      "judge": JUDGE_NAME, "judge_id": spec_hash(judge), "image": images[side],
                                      "scores": scores, "covered": list(scores), "argmax": preds,
                                      "judge_desc": f"imported from {file}", "source_item": item}))
    return records


def _reward(raw: dict[str, Any], column: str, sub: str | None) -> tuple[float, float | None]:
    """(score, sigma or None) of one reward field: a number, or HPSv3's [mu, sigma]."""
    name = column if sub is None else f"{column}.{sub}"
    value = raw.get(column)
    if sub is not None:
        value = value.get(sub) if isinstance(value, dict) else None
    if value is None:
        raise InputError(f"{name} is missing")
    sigma = None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise InputError(f"{name} {value!r} is neither a number nor [mu, sigma]")
        value, sigma = value[0], _number(value[1], name)
    return _number(value, name), sigma


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name} {value!r} is not a finite number")
    return float(value)


def _rater(value: Any) -> dict[str, tuple[dict[str, float], dict[str, int]]]:
    """{"o"|"a": ({dim: J}, {dim: argmax level})} from ``rater``'s lists over the study's dimensions."""
    dims = study_dims()
    if not isinstance(value, dict):
        raise InputError("rater is missing" if value is None else "rater is not an object")
    out = {}
    for side, word in _SIDES:
        part = value.get(word)
        if not isinstance(part, dict):
            raise InputError(f"rater.{word} is missing")
        lists = {}
        for key in ("scores", "preds"):
            values = part.get(key)
            if not isinstance(values, (list, tuple)) or len(values) != len(dims):
                got = f"{len(values)} values" if isinstance(values, (list, tuple)) else repr(values)
                raise InputError(f"rater.{word}.{key} must list {len(dims)} values, one per dimension "
                                 f"({', '.join(dims)}); got {got}")
            lists[key] = values
        scores = {d: _number(v, f"rater.{word}.scores[{i}]") for i, (d, v) in enumerate(zip(dims, lists["scores"]))}
        bad = [f"{d}={v}" for d, v in scores.items() if not 0 <= v <= 2]
        if bad:
            raise InputError(f"rater.{word}.scores outside [0, 2]: {', '.join(bad)}")
        preds = {}
        for i, (d, v) in enumerate(zip(dims, lists["preds"])):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v not in (0, 1, 2):
                raise InputError(f"rater.{word}.preds[{i}] {v!r} is not a level 0, 1 or 2")
            preds[d] = int(v)
        out[side] = (scores, preds)
    return out


# -- a table's columns and rows ---------------------------------------------------------------------

def _layout(columns: list[str], subfields: dict[str, list[str]]) -> _Layout:
    """The layout of a table with top-level ``columns``; ``subfields`` are the field names under each
    object-valued column. Refuses a reward family that lacks some of its four fields."""
    rewards: dict[str, dict[str, tuple[str, str | None]]] = {}
    found = [(c, None) for c in columns] + [(c, s) for c, subs in subfields.items() for s in subs]
    for column, sub in found:
        if sub is None and column in subfields.get(column, ()):
            continue  # nested under its own name ({"hpsv3_oiop": {"hpsv3_oiop": [mu, sigma]}}): read the inner one
        m = _REWARD.match(sub or column)
        if m is None:
            continue
        where = rewards.setdefault(m["model"], {})
        if m["combo"] in where:
            raise InputError(f"import: reward field {m[0]} appears twice ({_shown(*where[m['combo']])} and "
                             f"{_shown(column, sub)})")
        where[m["combo"]] = (column, sub)
    for name, fields in rewards.items():
        lacking = [f"{name}_{c}" for c in COMBOS if c not in fields]
        if lacking:
            raise InputError(f"import: reward family {name} lacks {', '.join(lacking)}; the study's layout has "
                             f"all four of {', '.join(f'{name}_{c}' for c in COMBOS)}")
    ordered = {name: {c: rewards[name][c] for c in COMBOS} for name in rewards}
    return _Layout(names=_column_names(columns), rewards=ordered, rater="rater" in columns,
                   label=LABELLER in columns)


def _shown(column: str, sub: str | None) -> str:
    return column if sub is None else f"{column}.{sub}"


def _columns(source: Path) -> tuple[list[str], dict[str, list[str]]]:
    """A table's top-level columns (first seen first) and the fields under its object-valued columns."""
    kind = _kind(source)
    if kind in ("json", "jsonl"):
        columns: dict[str, None] = {}
        subfields: dict[str, dict[str, None]] = {}
        for _, _, raw in _json_rows(source, kind):
            if isinstance(raw, dict):
                for key, value in raw.items():
                    columns.setdefault(key)
                    if isinstance(value, dict):
                        subfields.setdefault(key, {}).update(dict.fromkeys(value))
        return list(columns), {k: list(v) for k, v in subfields.items()}
    import pyarrow as pa

    schemas = ([p.schema_arrow for _, _, p in _parquet_files(source)] if kind == "parquet" else
               [_arrow_schema(path, label) for path, label, _ in _arrow_sources(source)])
    columns, subfields = {}, {}
    for schema in schemas:
        for f in schema:
            columns.setdefault(f.name)
            if pa.types.is_struct(f.type):
                subfields.setdefault(f.name, {}).update(dict.fromkeys(f.type.field(i).name
                                                                      for i in range(f.type.num_fields)))
    return list(columns), {k: list(v) for k, v in subfields.items()}


def _arrow_schema(path: Path, label: str) -> Any:
    """The schema of an Arrow stream (what save_to_disk writes) or file, with its column types."""
    import pyarrow as pa

    if not path.is_file():
        raise InputError(f"import: {label} is listed in state.json but missing")
    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_stream(source).schema
        except pa.ArrowInvalid:
            source.seek(0)
            try:
                return pa.ipc.open_file(source).schema
            except pa.ArrowInvalid as exc:
                raise InputError(f"import: {label} is not an Arrow stream or file ({exc})") from None


def _kind(source: Path) -> str:
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix in (".json", ".jsonl", ".parquet", ".arrow"):
            return suffix[1:]
    elif source.is_dir():
        if (source / "dataset_dict.json").is_file() or any(source.glob("*.arrow")):
            return "arrow"
        if any(source.rglob("*.parquet")):
            return "parquet"
    raise InputError(f"import: {source} is not a .json, .jsonl, .parquet or .arrow table, a saved Hugging Face "
                     "dataset or a folder of .parquet files")


# (row item, folder its image paths resolve against, the row as an object or the reason it is unreadable)
_RawRow = tuple[str, Path, Any]


def _rows(source: Path) -> tuple[Iterator[_RawRow], int]:
    kind = _kind(source)
    if kind == "json":  # one JSON list: parsed whole by nature
        rows = list(_json_rows(source, kind))
        return iter(rows), len(rows)
    if kind == "jsonl":  # parsed line by line as the import goes; counted by its non-blank lines
        return _json_rows(source, kind), sum(1 for line in _lines(read_text(source, "import table")) if line.strip())
    if kind == "parquet":
        files = _parquet_files(source)
        batches = ((label, path.parent, parquet.iter_batches(batch_size=16)) for path, label, parquet in files)
        return _batch_rows(batches), sum(parquet.metadata.num_rows for _, _, parquet in files)
    sources = _arrow_sources(source)
    return _arrow_rows(sources), sum(_arrow_count(path, label) for path, label, _ in sources)


def _json_rows(source: Path, kind: str) -> Iterator[_RawRow]:
    """Rows of a JSON list of objects or of a JSONL file; a line that is not JSON is a row holding the
    reason, so it fails alone."""
    text = read_text(source, "import table")
    if kind == "json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"import: {source.name} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(rows, list):
            raise InputError(f"import: {source.name} must hold a JSON list of row objects")
        for n, raw in enumerate(rows, start=1):
            yield f"{source.name}:row {n}", source.parent, raw
        return
    n = 0
    for line in _lines(text):
        if not line.strip():
            continue
        n += 1
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raw = f"line is not valid JSON ({exc.msg})"
        yield f"{source.name}:row {n}", source.parent, raw


def _lines(text: str) -> Iterator[str]:
    """``text.splitlines()`` one line at a time: a list of every line would double what a big table holds in
    memory. A newline always ends a line, so splitting each newline-ended piece gives the same lines."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        yield from text[start:end].splitlines()
        start = end


def _batch_rows(files: Iterable[tuple[str, Path, Iterator[Any]]]) -> Iterator[_RawRow]:
    for label, base, batches in files:
        n = 0
        for batch in batches:
            names = batch.schema.names
            for i in range(batch.num_rows):
                n += 1
                # One cell at a time: a batch of embedded images can be hundreds of MB as Python objects.
                yield f"{label}:row {n}", base, {name: batch.column(j)[i].as_py() for j, name in enumerate(names)}


def _arrow_rows(sources: list[tuple[Path, str, Path]]) -> Iterator[_RawRow]:
    for path, label, base in sources:
        with _arrow_batches(path, label) as (_, batches):
            yield from _batch_rows([(label, base, batches)])
