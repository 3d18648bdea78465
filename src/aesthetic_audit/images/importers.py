"""Import image pairs that already exist into a run, as images-stage records.

Three layouts, detected from the path:

folder    ``<dir>/original/`` + ``<dir>/distorted/`` (or ``I_o/`` + ``I_a/``) holding files with matching
          stems, and ``<dir>/prompts.csv`` or ``prompts.jsonl`` with columns ``file, p_o, p_a`` and
          optional ``dims, model, label``. An image no prompts row names is a failed record.
manifest  a ``.csv`` / ``.jsonl`` file with ``image_o, image_a`` (paths relative to the manifest),
          ``p_o, p_a`` and optional ``dims, model, label``.
generated a folder of images named ``<pair_id>_o.<ext>`` and ``<pair_id>_a.<ext>`` (what
          ``export --layout generate`` asks for by default; other files beside them are left alone).
hf        the study's published benchmark schema (``image_original``, ``image_distorted`` as Hugging Face
          Image structs {bytes, path}, ``prompt_original``, ``prompt_distorted``, ``selected_dims``,
          ``model``, optional ``index`` and ``llm_selected``), either saved with ``save_to_disk`` (a folder
          of ``.arrow`` streams beside ``state.json``/``dataset_info.json``, or a ``DatasetDict`` of such
          folders) or as Parquet (one file or a folder of them). Read with pyarrow alone.

A ``.json``/``.jsonl``/Parquet/Arrow table whose rows carry the study's reward fields (``<model>_oiop``
...) or ``rater`` judgements is imported by ``study_rows.import_study_rows`` instead, with its scores,
labels and judge results (images optional).

Linking to the run's prompt pairs: a row with a ``pair_id`` (a column, or the generated folder's file
names) is the image pair of that prompt record. Its ``p_o``, ``p_a`` and ``dims`` come from the record;
prompts in the row, when given, must be the record's. A ``pair_id`` the run does not hold fails its row.
The pair's ``model`` (the generator) is the row's ``model``, else the import's ``model`` argument
(``--model``). The exported ``generate`` layout itself is a manifest: ``file_o``/``file_a`` are accepted
for ``image_o``/``image_a``.

Column names of one layout are accepted in the others (``image_original`` in a CSV, ``p_o`` in Parquet).
``dims`` is a JSON list or a ';'-separated string. ``label`` is -1 / 0 / 1 or tie / original /
anti-aesthetic (source "import"); ``llm_selected`` holds the same values (source "llm_selected").

Every image is decoded safely and stored as an RGB PNG of its sRGB pixels without metadata, so a
pair's key (its two content hashes, both prompts and the dims) is the same whichever layout or encoding
it came from, and re-importing adds nothing. Image paths are read only when they name a regular file
(no FIFO or device) within the size limit, inside the folder of the file that names them (the
manifest, the prompts file, the dataset); a path that leads elsewhere (``..``, absolute, a symlink out)
needs ``allow_outside=True`` (``--allow-outside``), since a report made from a run is meant to be
shared. A bad row (missing file, corrupt image, missing prompt, bad label) becomes a failed record
named ``<file>:row N`` (data rows counted from 1) or ``<file>:index I`` (the dataset's own index) and
the import goes on. A layout that cannot be read at all (unknown path, a file with missing columns)
raises ``InputError`` before any row of that file is stored.

Rows stream: records are committed in chunks, and each image file's stored hash is remembered in the
run's memo table (keyed by the hash of its bytes and the PNG encoder), so importing the same files again
reads and hashes them but decodes and encodes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, NamedTuple, NoReturn

from PIL import Image

from ..dimensions import parse_dims
from ..errors import InputError
from ..hashing import bytes_hash, spec_hash
from ..records import IMAGES, PROMPTS, failed_item_key, image_pair_key
from ..store.run import Record, RunStore
from ..textio import read_text, spreadsheet_safe
from ..ui import log
from .decode import decode_image, encoder_identity, read_bytes, store_png_level

IMPORT_BACKEND = {"name": "import", "version": "1"}

# Canonical field <- accepted column names, first match wins.
_ALIASES = {
    "image_o": ("image_o", "image_original", "file_o"),
    "image_a": ("image_a", "image_distorted", "file_a"),
    "p_o": ("p_o", "prompt_original"),
    "p_a": ("p_a", "prompt_distorted"),
    "dims": ("dims", "selected_dims"),
    "model": ("model",),
    "label": ("label",),
    "llm_selected": ("llm_selected",),
    "index": ("index",),
    "file": ("file",),
    "pair_id": ("pair_id",),
}
_REQUIRED = ("image_o", "image_a", "p_o", "p_a")
_FOLDER_PAIRS = (("original", "distorted"), ("I_o", "I_a"))
_LABEL_WORDS = {"tie": -1, "original": 0, "anti-aesthetic": 1}
# What `export --layout generate` names files by default: <pair_id>_o.png, <pair_id>_a.png.
_GENERATED = re.compile(r"^(?P<pair_id>[0-9a-f]{64})_(?P<side>[oa])$")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class ImportSummary:
    ok: int = 0                 # new records stored
    failed: int = 0             # rows that could not be imported (each has a failed record)
    skipped_existing: int = 0   # rows whose pair was already in the run
    warnings: tuple[str, ...] = ()


@dataclass
class _Row:
    item: str                           # what a failed record names, e.g. "pairs.csv:row 7"
    base: Path                          # relative image paths resolve against this folder
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None            # set when the row is bad before any image is read
    columns: dict[str, str] = field(default_factory=dict)  # canonical field -> the source's column name


def import_pairs(path: str | Path, store: RunStore, *, allow_outside: bool = False, model: str | None = None,
                 progress: Callable[..., Iterable] | None = None,
                 dimensions: Collection[str] | None = None, png_level: int | None = None) -> ImportSummary:
    """Import every pair found at ``path`` into ``store``; rows are processed in file order.

    ``allow_outside`` lets image paths lead outside the folder of the file that names them. ``model`` is
    the generator name of rows without a ``model`` column. ``dimensions``: the known dimension keys; a
    row naming another (a typo, or several joined by commas) fails, naming the row, instead of adding
    a dimension to the tables. ``png_level``: the zlib level images are stored at (default: the run's,
    see ``decode.store_png_level``).
    ``progress`` wraps the rows and is called as ``progress(rows, total=n)`` with the number of rows
    (``aesthetic_audit.ui.progress`` fits). ``failed`` counts bad rows on every import, also when
    their failed record was already stored. A row that failed before and imports now has its failed
    record removed.
    """
    source = Path(path)
    from .study_rows import import_study_rows, is_study_table  # imported here: study_rows builds on this module

    if is_study_table(source):
        return import_study_rows(source, store, dimensions=dimensions, model=model, allow_outside=allow_outside,
                                 progress=progress, png_level=png_level)
    ok = failed = skipped = unnamed = 0
    rows, total = _rows(source)
    with ImportWriter(store, store_png_level(store, png_level)) as out:
        for row in (progress(rows, total=total) if progress is not None else rows):
            failed_key = failed_item_key(IMAGES, source.name, row.item)
            record = _record(row, out, failed_key, allow_outside, model, dimensions)
            stored = out.put(record)
            if record.status == "failed":
                failed += 1
            else:
                out.discard_failed(failed_key)
                if stored:
                    ok += 1
                    unnamed += record.data["model"] is None and _text(row.fields.get("pair_id")) is not None
                else:
                    skipped += 1
    warnings = ()
    if unnamed:
        # Linked pairs are generated images; without the generator's name they cannot be told apart per
        # generator, and the key omits the model, so importing them again with --model changes nothing.
        warnings = (f"{unnamed} image pair(s) linked by pair_id were stored without a model name (no 'model' "
                    "column and no --model): the analysis cannot break them down by generator, and importing "
                    "them again with --model will not name them. Import rendered images with --model NAME (the "
                    "generator), or a 'model' column",)
        log.warning("import: %s", warnings[0])
    return ImportSummary(ok=ok, failed=failed, skipped_existing=skipped, warnings=warnings)


class _Source(NamedTuple):
    """A source image on its way into the run: its stored hash when remembered, else its decoded pixels."""

    sha: str | None
    image: Image.Image | None
    memo: str


class ImportWriter:
    """What an import writes through: records committed in chunks (``RunStore.writer``), with whether each
    adds to the run; and source images stored at the run's PNG level, each file's stored hash remembered in
    the memo table (keyed by the SHA-256 of its bytes and the encoder), so importing a file again decodes
    and encodes nothing. Holds at most a chunk of keys and memos, whatever the number of rows.

    Use it as a context manager; leaving the block commits what is buffered."""

    def __init__(self, store: RunStore, png_level: int, *, chunk: int = 512):
        self.store, self.png_level, self.chunk = store, png_level, chunk
        self._encoder = encoder_identity(png_level)
        self._failed = store.keys(IMAGES, "failed")  # where a row's earlier failure may be stored
        self._writer = store.writer()
        self._pending: set[str] = set()  # keys buffered since this writer's last flush
        self._memos: list[tuple[str, str]] = []

    def __enter__(self) -> "ImportWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def put(self, record: Record) -> bool:
        """Buffer ``record``; True when it adds to the run: no ok record with its key is stored or buffered
        (a stored failed record with its key is replaced)."""
        if record.key in self._pending:
            return False
        stored = self.store.get(record.key)
        if stored is not None and stored.status == "ok":
            return False
        self._writer.put(record)
        self._pending.add(record.key)
        if len(self._pending) >= self.chunk:
            self.flush()
        return True

    def flush(self) -> None:
        """Commit the buffered records and remembered hashes."""
        try:
            self._writer.flush()
        finally:
            self.store.memo_put_many(self._memos)
            self._memos, self._pending = [], set()

    def discard_failed(self, key: str) -> None:
        """Remove a failed record of a row that imports now (only looked up where one was stored)."""
        if key in self._failed:
            self.store.discard_failed([key])

    def source(self, data: bytes, label: str) -> _Source:
        """A source image: its stored hash when the run has stored these bytes before (and still holds the
        file), else decoded (InputError naming ``label`` when it cannot be)."""
        memo = spec_hash({"import source image": bytes_hash(data), "encoder": self._encoder})
        sha = self.store.memo_get(memo)
        if sha is not None and self.store.has_image(sha):
            return _Source(sha, None, memo)
        return _Source(None, decode_image(data, name=label), memo)

    def put_image(self, source: _Source) -> str:
        """The stored hash of ``source``, storing its pixels when they are not stored yet."""
        if source.sha is not None:
            return source.sha
        sha = self.store.put_image(source.image, png_level=self.png_level)
        self._memos.append((source.memo, sha))
        if len(self._memos) >= self.chunk:
            self.flush()
        return sha


def detect_format(path: str | Path) -> str:
    """'folder', 'manifest', 'arrow', 'parquet' or 'generated'; InputError naming the accepted layouts
    otherwise."""
    p = Path(path)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in (".csv", ".jsonl"):
            return "manifest"
        if suffix == ".parquet":
            return "parquet"
        if suffix == ".arrow":
            return "arrow"
    elif p.is_dir():
        if (p / "dataset_dict.json").is_file() or any(p.glob("*.arrow")):
            return "arrow"
        if _folder_subdirs(p) is not None:
            return "folder"
        if any(p.rglob("*.parquet")):
            return "parquet"
        if any(_GENERATED.match(f.stem) for f in p.iterdir() if f.is_file()):
            return "generated"
    elif not p.exists():
        raise InputError(f"import: {p} does not exist")
    raise InputError(
        f"import: cannot tell the layout of {p}. Expected a folder with original/ + distorted/ (or I_o/ + I_a/) "
        "and prompts.csv|jsonl, a .csv/.jsonl manifest, a Hugging Face save_to_disk folder (.arrow files), "
        "a .parquet file or folder of them, or a folder of <pair_id>_o.<ext> + <pair_id>_a.<ext> images")


# -- one row -> one record --------------------------------------------------------------------------

def _record(row: _Row, out: ImportWriter, failed_key: str, allow_outside: bool, model: str | None,
            dimensions: Collection[str] | None) -> Record:
    try:
        if row.error is not None:
            raise InputError(row.error)
        return _ok_record(row, out, allow_outside, model, dimensions)
    except InputError as exc:
        # A failed row has no content hashes; its key is where it came from (file name and row), so
        # importing the same bad row again adds nothing.
        return Record.failed(failed_key, IMAGES, row.item, str(exc), source_item=row.item)


def _ok_record(row: _Row, out: ImportWriter, allow_outside: bool, default_model: str | None,
               dimensions: Collection[str] | None) -> Record:
    f = row.fields
    linked = _text(f.get("pair_id"))
    if linked is not None:
        p_o, p_a, dims = _linked_prompts(out.store, linked, f)
    else:
        p_o, p_a = _prompt(f.get("p_o"), "p_o"), _prompt(f.get("p_a"), "p_a")
        dims = parse_dims(f.get("dims"))
    check_dims(dims, dimensions)
    label = _label(f)
    model = _text(f.get("model")) or default_model
    # Decode both before storing either, so a bad I_a leaves no orphan I_o in the run.
    image_o = out.source(*_source(f.get("image_o"), "image_o", row, allow_outside))
    image_a = out.source(*_source(f.get("image_a"), "image_a", row, allow_outside))
    sha_o, sha_a = out.put_image(image_o), out.put_image(image_a)
    return pair_record(row.item, image_o=sha_o, image_a=sha_a, p_o=p_o, p_a=p_a, dims=dims, label=label,
                       model=model, linked=linked)


def pair_record(item: str, *, image_o: str, image_a: str, p_o: str, p_a: str, dims: list[str],
                label: dict[str, Any] | None, model: str | None, linked: str | None = None) -> Record:
    """The images record of an imported pair: keyed by its content only (both image ids, both prompts,
    the dims, the linked prompt pair), with no seed (nothing random happens) and no location."""
    inputs = {"image_o": image_o, "image_a": image_a, "p_o": p_o, "p_a": p_a, "dims": dims}
    if linked is not None:
        inputs["pair_id"] = linked
    key = image_pair_key(backend=IMPORT_BACKEND, inputs=inputs, seed=None)
    data = {
        "image_pair_id": key,
        # Without a prompt record to link to, hashing the prompt pair gives the same prompt the same
        # pair_id across models, so analyses can pair generators per prompt.
        "pair_id": linked or spec_hash({"imported_prompt_pair": {"p_o": p_o, "p_a": p_a, "dims": dims}}),
        "p_o": p_o, "p_a": p_a, "dims": dims,
        "image_o": image_o, "image_a": image_a,
        "backend": IMPORT_BACKEND["name"], "strength": None, "transforms": [],
        "label": label, "model": model, "source_item": item,
    }
    return Record(key=key, stage=IMAGES, item=item, data=data)


def check_dims(dims: list[str], dimensions: Collection[str] | None) -> None:
    """InputError naming the dimensions of ``dims`` that ``dimensions`` (None: any) does not know."""
    unknown = [d for d in dims if dimensions is not None and d not in dimensions]
    if unknown:
        joined = " (several dimensions are separated by ';' or given as a JSON list)" if any(
            "," in d for d in unknown) else ""
        raise InputError(f"unknown dimension {', '.join(map(repr, unknown))}{joined}; known: "
                         f"{', '.join(dimensions)}; add new ones in a dimensions file")


def _linked_prompts(store: RunStore, pair_id: str, fields: dict[str, Any]) -> tuple[str, str, list[str]]:
    """The prompts and dims of the run's prompt record ``pair_id``; prompts the row gives must be its own
    (a CSV cell may carry the export's spreadsheet escaping)."""
    record = store.get(pair_id)
    if record is None or record.stage != PROMPTS or record.status != "ok":
        raise InputError(f"pair_id {pair_id} matches no prompt pair of this run (import into the run the "
                         "prompt pairs were exported from)")
    for column in ("p_o", "p_a"):
        given = fields.get(column)
        if isinstance(given, str) and given.strip() and given not in (record.data[column],
                                                                      spreadsheet_safe(record.data[column])):
            raise InputError(f"{column} differs from the {column} of prompt pair {pair_id}: {given!r} vs "
                             f"{record.data[column]!r}; leave the column out to take the prompt pair's")
    return record.data["p_o"], record.data["p_a"], list(record.data.get("dims") or [])


def _source(value: Any, column: str, row: _Row, allow_outside: bool) -> tuple[bytes, str]:
    """The bytes of a row's image cell (an HF Image struct, bytes or a path) and the label errors name it by."""
    column = row.columns.get(column, column)
    if isinstance(value, dict):  # a Hugging Face Image struct
        if value.get("bytes") is not None:
            return bytes(value["bytes"]), f"{column} of {row.item}"
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), f"{column} of {row.item}"
    if isinstance(value, Path):
        label = _shown(value, row.base)
        return read_bytes(_inside(value, row.base, label, allow_outside), label), label
    if isinstance(value, str) and value.strip():
        label = value.strip()
        return read_bytes(_inside(row.base / label, row.base, label, allow_outside), label), label
    raise InputError(f"{column} is missing")


def _inside(path: Path, base: Path, label: str, allow_outside: bool) -> Path:
    """``path`` when it resolves (symlinks followed) inside ``base``, or when paths outside are allowed."""
    if not allow_outside and not path.resolve().is_relative_to(base.resolve()):
        raise InputError(f"image {label}: resolves outside {base}; pass --allow-outside (allow_outside=True) "
                         "to read images from elsewhere")
    return path


def _shown(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _prompt(value: Any, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"prompt {column} is missing or empty")
    return value


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _label(fields: dict[str, Any]) -> dict[str, Any] | None:
    for column, source in (("label", "import"), ("llm_selected", "llm_selected")):
        value = _label_value(fields.get(column), column)
        if value is not None:
            return {"value": value, "source": source}
    return None


def _label_value(value: Any, column: str) -> int | None:
    raw = value
    if value is None:
        return None
    if isinstance(value, bool):
        _bad_label(raw, column)
    if isinstance(value, str):
        text = value.strip().lower()
        if not text:
            return None
        if text in _LABEL_WORDS:
            return _LABEL_WORDS[text]
        try:
            value = float(text)
        except ValueError:
            _bad_label(raw, column)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if not value.is_integer():
            _bad_label(raw, column)
        value = int(value)
    if isinstance(value, int) and value in (-1, 0, 1):
        return value
    _bad_label(raw, column)


def _bad_label(value: Any, column: str) -> NoReturn:
    raise InputError(f"{column} {value!r} is not -1 (tie), 0 (original) or 1 (anti-aesthetic)")


# -- layouts -> rows --------------------------------------------------------------------------------

def _rows(source: Path) -> tuple[Iterator[_Row], int]:
    """The rows of ``source``, read lazily, and how many there are. A manifest, prompts file or folder is
    read through once first to count its rows, which also refuses a malformed file before any row is
    stored; a dataset is counted from its metadata (its rows hold images)."""
    kind = detect_format(source)
    if kind in ("manifest", "folder", "generated"):
        reader = {"manifest": _manifest_rows, "folder": _folder_rows, "generated": _generated_rows}[kind]
        return reader(source), sum(1 for _ in reader(source))
    if kind == "arrow":
        files = _arrow_sources(source)
        return _arrow_rows(files), sum(_arrow_count(path, label) for path, label, _ in files)
    files = _parquet_files(source)
    return _parquet_rows(files), sum(parquet.metadata.num_rows for _, _, parquet in files)


def _column_names(columns: list[str]) -> dict[str, str]:
    """Canonical field -> the first accepted column name present."""
    present = set(columns)
    return {name: next(a for a in aliases if a in present)
            for name, aliases in _ALIASES.items() if any(a in present for a in aliases)}


def _canonical(raw: dict[str, Any]) -> dict[str, Any]:
    return {name: raw[column] for name, column in _column_names(list(raw)).items()}


def _check_columns(columns: list[str], required: tuple[str, ...], where: str) -> None:
    have = _column_names(columns)
    if "pair_id" in have:  # the prompts come from the linked prompt pair
        required = tuple(r for r in required if r not in ("p_o", "p_a"))
    missing = [" or ".join(_ALIASES[r]) for r in required if r not in have]
    if missing:
        raise InputError(f"{where}: missing column(s) {', '.join(missing)}; it has {', '.join(columns) or 'none'}")


def _table_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(row number from 1, canonical fields or None, error) for each data row of a CSV/JSONL file."""
    text = read_text(path, "import manifest")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            _check_columns(list(reader.fieldnames or []), required, path.name)
            for n, raw in enumerate(reader, start=1):
                yield n, _canonical({k: (v if v != "" else None) for k, v in raw.items() if k is not None}), None
        except csv.Error as exc:
            raise InputError(f"{path.name}:{reader.line_num}: malformed CSV ({exc})") from None
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            yield n, None, f"line is not valid JSON ({exc.msg})"
            continue
        if not isinstance(raw, dict):
            yield n, None, "line is not a JSON object"
            continue
        yield n, _canonical(raw), None


def _manifest_rows(path: Path) -> Iterator[_Row]:
    for n, fields, error in _table_rows(path, _REQUIRED):
        yield _Row(item=f"{path.name}:row {n}", base=path.parent, fields=fields or {}, error=error)


def _folder_subdirs(root: Path) -> tuple[Path, Path] | None:
    for o, a in _FOLDER_PAIRS:
        if (root / o).is_dir() and (root / a).is_dir():
            return root / o, root / a
    return None


def _folder_rows(root: Path) -> Iterator[_Row]:
    dir_o, dir_a = _folder_subdirs(root)  # type: ignore[misc]  # detect_format checked
    prompts = [root / name for name in ("prompts.csv", "prompts.jsonl") if (root / name).is_file()]
    if len(prompts) != 1:
        raise InputError(f"import: {root} needs exactly one prompts.csv or prompts.jsonl "
                         f"(columns file, p_o, p_a, optional dims); found {len(prompts)}")
    prompts_file = prompts[0]
    index_o, index_a = _stem_index(dir_o), _stem_index(dir_a)
    used: set[str] = set()
    for n, fields, error in _table_rows(prompts_file, ("file", "p_o", "p_a")):
        row = _Row(item=f"{prompts_file.name}:row {n}", base=root, fields=fields or {}, error=error)
        if error is None:
            name = _text(row.fields.get("file"))
            if name is None:
                row.error = "file is missing"
            else:
                stem = name if name in index_o or name in index_a else Path(name).stem
                used.add(stem)
                try:
                    row.fields["image_o"] = _find(index_o, dir_o, stem, root)
                    row.fields["image_a"] = _find(index_a, dir_a, stem, root)
                except InputError as exc:
                    row.error = str(exc)
        yield row
    # Images no row names are reported, never silently dropped.
    for folder, index in ((dir_o, index_o), (dir_a, index_a)):
        for stem in sorted(set(index) - used):
            for path in index[stem]:
                yield _Row(item=_shown(path, root), base=root,
                           error=f"no row in {prompts_file.name} names {stem!r}, so this image has no prompts")


def _generated_rows(root: Path) -> Iterator[_Row]:
    """One row per pair_id of a folder of <pair_id>_o.<ext> and <pair_id>_a.<ext> images; an image named
    otherwise, or a pair missing a side, is a failed row. Non-image files (the exported manifest) are
    left alone."""
    found: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(root.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        m = _GENERATED.match(path.stem)
        if m is None:
            yield _Row(item=path.name, base=root, error="the name is not <pair_id>_o.<ext> or <pair_id>_a.<ext>, "
                                                        "so this image belongs to no prompt pair")
            continue
        found.setdefault(m["pair_id"], {}).setdefault(m["side"], []).append(path)
    for pair_id, sides in found.items():
        row = _Row(item=pair_id, base=root, fields={"pair_id": pair_id})
        for side, column in (("o", "image_o"), ("a", "image_a")):
            paths = sides.get(side, [])
            if len(paths) == 1:
                row.fields[column] = paths[0]
            else:
                row.error = (f"image {pair_id}_{side}.*: " + ("file not found" if not paths else
                             f"ambiguous, several files ({', '.join(p.name for p in paths)})"))
        yield row


def _stem_index(folder: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            index.setdefault(path.stem, []).append(path)
    return index


def _find(index: dict[str, list[Path]], folder: Path, stem: str, root: Path) -> Path:
    matches = index.get(stem, [])
    if len(matches) == 1:
        return matches[0]
    where = _shown(folder, root)
    if not matches:
        raise InputError(f"image {where}/{stem}.*: file not found")
    raise InputError(f"image {where}/{stem}.*: ambiguous, several files have this stem "
                     f"({', '.join(p.name for p in matches)})")


def _hf_rows(batches: Iterator[Any], schema_names: list[str], label: str, base: Path) -> Iterator[_Row]:
    _check_columns(schema_names, _REQUIRED, label)
    names = _column_names(schema_names)
    n = 0
    for batch in batches:
        columns = batch.schema.names
        for i in range(batch.num_rows):
            n += 1
            # One cell at a time: a batch of embedded images can be hundreds of MB as Python bytes.
            fields = _canonical({name: batch.column(j)[i].as_py() for j, name in enumerate(columns)})
            index = fields.get("index")
            item = f"{label}:index {index}" if isinstance(index, int) else f"{label}:row {n}"
            yield _Row(item=item, base=base, fields=fields, columns=names)


def _parquet_files(source: Path) -> list[tuple[Path, str, Any]]:
    """(path, label, opened ParquetFile) per file; an unreadable one fails the import before any row."""
    import pyarrow.parquet as pq

    out = []
    for path in [source] if source.is_file() else sorted(source.rglob("*.parquet")):
        label = path.name if path == source else _shown(path, source)
        try:
            out.append((path, label, pq.ParquetFile(path)))
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise InputError(f"import: {label} is not a readable Parquet file ({exc})") from None
    return out


def _parquet_rows(files: list[tuple[Path, str, Any]]) -> Iterator[_Row]:
    for path, label, parquet in files:
        yield from _hf_rows(parquet.iter_batches(batch_size=16), parquet.schema_arrow.names, label, path.parent)


def _arrow_sources(source: Path) -> list[tuple[Path, str, Path]]:
    """(path, label, base folder) of each Arrow file of a file, a save_to_disk folder or a DatasetDict."""
    if source.is_file():
        return [(source, source.name, source.parent)]
    dict_file = source / "dataset_dict.json"
    if dict_file.is_file():  # a DatasetDict: one save_to_disk folder per split
        splits = json.loads(dict_file.read_text(encoding="utf-8")).get("splits", [])
        folders = [source / s for s in splits]
    else:
        folders = [source]
    out = []
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"import: split folder {_shown(folder, source)} named in dataset_dict.json is missing")
        out += [(path, _shown(path, source), folder) for path in _arrow_files(folder)]
    return out


def _arrow_rows(files: list[tuple[Path, str, Path]]) -> Iterator[_Row]:
    for path, label, base in files:
        yield from _arrow_file_rows(path, label, base)


def _arrow_files(folder: Path) -> list[Path]:
    state = folder / "state.json"
    if state.is_file():
        # state.json lists the shards in dataset order.
        names = [f["filename"] for f in json.loads(state.read_text(encoding="utf-8")).get("_data_files", [])]
        if names:
            return [folder / name for name in names]
    return sorted(folder.glob("*.arrow"))


@contextmanager
def _arrow_batches(path: Path, label: str) -> Iterator[tuple[list[str], Iterator[Any]]]:
    """(column names, record batches) of an Arrow stream (what save_to_disk writes) or file, memory-mapped."""
    import pyarrow as pa

    if not path.is_file():
        raise InputError(f"import: {label} is listed in state.json but missing")
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            try:
                reader = pa.ipc.open_file(source)
            except pa.ArrowInvalid as exc:
                raise InputError(f"import: {label} is not an Arrow stream or file ({exc})") from None
        if isinstance(reader, pa.ipc.RecordBatchFileReader):
            batches: Iterator[Any] = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        yield reader.schema.names, batches


def _arrow_count(path: Path, label: str) -> int:
    """Rows of one Arrow file; the batches are memory-mapped, so counting reads no image."""
    with _arrow_batches(path, label) as (_, batches):
        return sum(batch.num_rows for batch in batches)


def _arrow_file_rows(path: Path, label: str, base: Path) -> Iterator[_Row]:
    with _arrow_batches(path, label) as (names, batches):
        yield from _hf_rows(batches, names, label, base)
