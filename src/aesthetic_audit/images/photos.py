"""Real photographs with captions: the I_o side of the editor backend.

``"builtin"`` is the set of colour photographs that ship inside scikit-image and matplotlib (no
download), each with a caption written for this project. Any other source is a folder of images
with captions from ``captions.csv`` (columns ``file,caption``, optional ``licence``),
``captions.jsonl`` (``{"file": ..., "caption": ...}`` per line) or a sidecar ``<stem>.txt``.
``iter_photo_sources`` finds the photos and names each by what determines its pixels without decoding
it, so the editor can skip decoding a photo whose edits are all stored.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from ..errors import InputError, require
from ..hashing import bytes_hash, spec_hash
from ..textio import read_text
from .decode import decode_image, read_bytes, to_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Photo:
    name: str
    caption: str
    image: Image.Image = field(compare=False, repr=False)
    origin: str = ""
    licence: str = "unspecified"


@dataclass(frozen=True)
class PhotoSource:
    """A photo found but not decoded: a rerun whose edits are all stored learns the stored image's hash
    from ``identity`` (what determines its pixels) and never decodes it."""

    name: str
    caption: str
    identity: str  # the SHA-256 of the file's bytes, or of a built-in's name and its package's version
    origin: str
    licence: str
    _load: Callable[[], Image.Image] = field(compare=False, repr=False)

    def load(self, max_side: int | None) -> Photo:
        """The decoded photo downscaled to ``max_side``; InputError (naming the file) when it cannot be."""
        return Photo(self.name, self.caption, downscale(self._load(), max_side), self.origin, self.licence)


# name -> (how to load it, caption, origin, licence). Loaders take the two optional modules.
_BUILTIN: dict[str, tuple[Callable, str, str, str]] = {
    "astronaut": (lambda sk, mpl: sk.astronaut(),
                  "A smiling astronaut in an orange flight suit sits beside a helmet, in front of an American "
                  "flag and a model space shuttle.",
                  "skimage.data.astronaut(): NASA portrait of Eileen Collins", "public domain (NASA)"),
    "chelsea": (lambda sk, mpl: sk.chelsea(),
                "A close-up of a tabby cat with green eyes looking straight at the camera.",
                "skimage.data.chelsea(): photograph by Stefan van der Walt", "CC0"),
    "coffee": (lambda sk, mpl: sk.coffee(),
               "A cup of espresso on a red saucer with a small spoon, on a wooden table.",
               "skimage.data.coffee(): photograph by Rachel Michetti", "CC0"),
    "rocket": (lambda sk, mpl: sk.rocket(),
               "A white rocket stands on its launch pad between tall lattice towers under a dusk sky.",
               "skimage.data.rocket(): SpaceX launch photograph of DSCOVR on Falcon 9", "public domain (SpaceX)"),
    "hubble_deep_field": (lambda sk, mpl: sk.hubble_deep_field(),
                          "A dark patch of sky scattered with hundreds of small, colourful distant galaxies.",
                          "skimage.data.hubble_deep_field(): Hubble eXtreme Deep Field, NASA/ESA",
                          "public domain (NASA)"),
    "immunohistochemistry": (lambda sk, mpl: sk.immunohistochemistry(),
                             "A microscope view of stained tissue with brown glands on a pale blue background.",
                             "skimage.data.immunohistochemistry(): colonic glands, IHC staining (CMMI)",
                             "no known copyright restrictions"),
    "retina": (lambda sk, mpl: sk.retina(),
               "A photograph of the back of a human eye with red blood vessels branching across the retina.",
               "skimage.data.retina(): fundus photograph from Wikimedia Commons", "CC0 1.0"),
    "motorcycle": (lambda sk, mpl: sk.stereo_motorcycle()[0],
                   "A red motorcycle parked on a concrete floor in a cluttered garage.",
                   "skimage.data.stereo_motorcycle() left view: Middlebury 2014 stereo benchmark "
                   "(Scharstein et al., GCPR 2014), downsampled by scikit-image",
                   "Middlebury stereo dataset terms; cite Scharstein et al. 2014"),
    "grace_hopper": (lambda sk, mpl: mpl.get_sample_data("grace_hopper.jpg", asfileobj=False),
                     "A portrait of an elderly woman in a navy uniform and cap in front of an American flag.",
                     "matplotlib sample data grace_hopper.jpg: U.S. Navy portrait of Grace Hopper",
                     "public domain (U.S. Navy)"),
}


def downscale(img: Image.Image, max_side: int | None) -> Image.Image:
    """Lanczos-downscale so the longest side is at most ``max_side``; never upscale."""
    if max_side is None or max(img.size) <= max_side:
        return img
    w, h = img.size
    f = max_side / max(w, h)
    return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)


def _builtin(sk, mpl) -> Iterator[PhotoSource]:
    # A built-in photo is a file inside scikit-image or matplotlib: the package versions say which file.
    versions = {name: _version(name) for name in ("scikit-image", "matplotlib")}
    for name, (load, caption, origin, licence) in _BUILTIN.items():
        yield PhotoSource(name, caption, spec_hash({"builtin": name, **versions}), origin, licence,
                          partial(_load_builtin, name, load, sk, mpl))


def _load_builtin(name: str, load: Callable, sk, mpl) -> Image.Image:
    try:
        raw = load(sk, mpl)
        if isinstance(raw, (str, Path)):
            return decode_image(raw, name=name)
        return to_rgb(Image.fromarray(np.asarray(raw)))
    except InputError as exc:
        raise InputError(str(exc), item=name) from None
    except Exception as exc:  # a scikit-image build without this file, or one that wants to download it
        raise InputError(f"built-in photo {name}: cannot be loaded ({type(exc).__name__}: {exc})",
                         item=name) from None


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _caption_table(folder: Path) -> tuple[dict[str, tuple[str, str]], list[InputError]]:
    """Captions (and licences) by file name from captions.csv and captions.jsonl; bad rows become errors."""
    table: dict[str, tuple[str, str]] = {}
    errors: list[InputError] = []

    def add(where: str, row: dict) -> None:
        file, caption = str(row.get("file") or "").strip(), str(row.get("caption") or "").strip()
        if not file:
            errors.append(InputError(f"{where}: no 'file' value"))
            return
        entry = (caption, str(row.get("licence") or "").strip())
        if file in table and table[file][0] != caption:
            errors.append(InputError(f"{where}: {file} already has a different caption; keep one"))
            return
        table[file] = entry

    csv_path, jsonl_path = folder / "captions.csv", folder / "captions.jsonl"
    if csv_path.is_file():
        reader = csv.DictReader(io.StringIO(read_text(csv_path, "captions file", allow_empty=True), newline=""))
        if not reader.fieldnames or not {"file", "caption"} <= set(reader.fieldnames):
            raise InputError(f"{csv_path}: needs the columns file,caption; found {reader.fieldnames}")
        for row in reader:
            add(f"{csv_path}:{reader.line_num}", row)
    if jsonl_path.is_file():
        for lineno, line in enumerate(read_text(jsonl_path, "captions file", allow_empty=True).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(InputError(f"{jsonl_path}:{lineno}: not valid JSON ({exc.msg})"))
                continue
            if not isinstance(row, dict):
                errors.append(InputError(f"{jsonl_path}:{lineno}: expected an object with file and caption"))
                continue
            add(f"{jsonl_path}:{lineno}", row)
    return table, errors


def _folder(folder: Path, table: dict[str, tuple[str, str]],
            errors: list[InputError]) -> Iterator[PhotoSource | InputError]:
    yield from errors
    files = _image_files(folder)
    names = {p.name for p in files}
    for missing in sorted(set(table) - names):
        yield InputError(f"photo {folder / missing}: named in the captions file but not found in the folder",
                         item=missing)
    for path in files:
        caption, licence = table.get(path.name, ("", ""))
        sidecar = path.with_suffix(".txt")
        if not caption and sidecar.is_file():
            try:
                caption = read_text(sidecar, "caption file", allow_empty=True).strip()
            except InputError as exc:
                yield InputError(str(exc), item=path.name)
                continue
        if not caption:
            yield InputError(f"photo {path}: no caption; add it to captions.csv or captions.jsonl, "
                             f"or write it to {sidecar.name}", item=path.name)
            continue
        try:
            data = read_bytes(path)
        except InputError as exc:
            yield InputError(str(exc), item=path.name)
            continue
        # The decoded photo is a function of the file's bytes: their hash names it.
        yield PhotoSource(path.name, caption, bytes_hash(data), str(path), licence or "unspecified",
                          partial(_load_file, data, str(path), path.name))


def _load_file(data: bytes, label: str, name: str) -> Image.Image:
    try:
        return decode_image(data, name=label)
    except InputError as exc:
        raise InputError(str(exc), item=name) from None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def photo_names(source: str = "builtin") -> list[str]:
    """The names of the photo files ``iter_photos(source)`` reads (each yields a Photo or an InputError
    with that ``item``), found without decoding any: what a progress bar counts."""
    if source == "builtin":
        return list(_BUILTIN)
    folder = Path(source)
    return [p.name for p in _image_files(folder)] if folder.is_dir() else []


def iter_photo_sources(source: str = "builtin") -> Iterator[PhotoSource | InputError]:
    """Yield a PhotoSource (caption and identity, not yet decoded), or an InputError naming the file, for
    each photo of ``source``, so one bad file never stops the rest. A source that is neither "builtin" nor
    a folder raises at once."""
    if source == "builtin":
        return _builtin(require("skimage.data", "offline", "the built-in photos"),
                        require("matplotlib.cbook", "offline", "the built-in photos"))
    folder = Path(source)
    if not folder.is_dir():
        raise InputError(f"photo source {source!r}: not 'builtin' and not a folder")
    table, errors = _caption_table(folder)  # a captions file without its columns fails the whole source
    return _folder(folder, table, errors)


def iter_photos(source: str = "builtin", max_side: int | None = 384) -> Iterator[Photo | InputError]:
    """Yield a Photo, or an InputError naming the file, for each photo of ``source``, so one bad file
    never stops the rest. A source that is neither "builtin" nor a folder raises at once."""
    return _loaded(iter_photo_sources(source), max_side)


def _loaded(sources: Iterator[PhotoSource | InputError], max_side: int | None) -> Iterator[Photo | InputError]:
    for item in sources:
        if isinstance(item, InputError):
            yield item
            continue
        try:
            yield item.load(max_side)
        except InputError as exc:
            yield exc


def load_photos(source: str = "builtin", max_side: int | None = 384) -> list[Photo]:
    """All photos of ``source``; raises the first InputError (use ``iter_photos`` to keep going)."""
    photos = []
    for item in iter_photos(source, max_side):
        if isinstance(item, InputError):
            raise item
        photos.append(item)
    return photos
