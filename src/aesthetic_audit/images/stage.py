"""The images stage with the editor backend: photo I_o -> anti-aesthetic edit I_a, one record per strength.

For each photo the editor draws ``pairs_per_photo`` sets of dimensions (seeded), picks one transform
per dimension among those the catalogue lists for it, and writes p_a with the template rewriter from
those transforms' own phrasings, so the prompt names exactly the applied effects. The draws of a photo
are distinct sets of (dimension, transform); when fewer exist than ``pairs_per_photo``, each is made
once and the stage warns. A pair whose I_o, I_a and p_a are stored already is not stored again. The random
parameters of a draw are shared by all its strengths, so strength is the only thing that varies
along a strength series. I_a follows p_a by construction: the pair's label is 1, source
"construction".

Photos stream one at a time and records are committed in chunks (``RunStore.writer``). Each photo's
stored hash is remembered in the run's memo table, keyed by the photo (its file's bytes, or a built-in's
identity) and everything that makes its PNG (``max_side``, the run's PNG level, the encoder), so a rerun
decodes, resizes and encodes only the photos that still have a pair to make.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..config import AuditConfig
from ..dimensions import Catalogue
from ..errors import ConfigError, InputError
from ..hashing import bytes_hash, canonical_json, spec_hash
from ..records import IMAGES, PROMPTS, failed_item_key, image_pair_key, prompt_key
from ..registry import available
from ..stage import StageSummary
from ..store import Record, RecordWriter, RunStore
from ..ui import log, progress
from ..prompts.rewriters.base import Effect, RewriteRequest, word_count
from ..prompts.rewriters.template import TemplateRewriter
from ..prompts.stage import draw_dims, effect_spec
from .decode import encode_png, encoder_identity, from_array, store_png_level, to_array
from .editor.base import Transform
from .photos import PhotoSource, iter_photo_sources, photo_names


def editable_dimensions(catalogue: Catalogue, wanted: Sequence[str] | None = None) -> dict[str, list[Transform]]:
    """Dimension key -> its registered transforms, for the dimensions a pixel operation realises."""
    transforms = available("transforms")
    out: dict[str, list[Transform]] = {}
    for dim in (catalogue.select(wanted) if wanted else list(catalogue)):
        missing = [name for name in dim.editor if name not in transforms]
        if missing:
            raise ConfigError(f"dimension {dim.key!r} lists unknown editor transform(s) {', '.join(missing)}; "
                              f"known: {', '.join(transforms)}")
        if dim.editor:
            out[dim.key] = [transforms[name] for name in dim.editor]
        elif wanted:
            raise ConfigError(f"dimension {dim.key!r} cannot be realised by a pixel operation (no editor "
                              "transform); the editor does not fake it")
    return out


@dataclass(frozen=True)
class EditPlan:
    dims: tuple[str, ...]
    transforms: tuple[Transform, ...]
    effects: tuple[Effect, ...]
    p_a: str
    rng_seed: int


def count_draws(supported: dict[str, list[Transform]], k_min: int, k_max: int) -> int:
    """How many distinct sets of (dimension, transform) a draw can yield: for each k, the sum over
    k-subsets of dimensions of the product of their transform counts (an elementary symmetric sum)."""
    e = [1] + [0] * len(supported)
    for n, transforms in enumerate(supported.values(), start=1):
        for k in range(n, 0, -1):
            e[k] += e[k - 1] * len(transforms)
    n = len(supported)
    return sum(e[min(k_min, n):min(k_max, n) + 1])  # the k range draw_dims uses


def draw_sets(photo_name: str, supported: dict[str, list[Transform]], k_min: int, k_max: int, seed: int,
              n: int) -> list[tuple[int, tuple[str, ...], tuple[Transform, ...]]]:
    """Up to ``n`` distinct draws for one photo as (draw number, dims, transforms). Draw number i is
    seeded by the photo and i; a draw whose set of (dimension, transform) an earlier draw has, in any
    order, is passed over, so a photo never gets the same edit twice. Ask for at most ``count_draws``."""
    out, seen = [], set()
    # Rejection sampling; the bound only matters when nearly every possible set is asked for and some
    # are rare, and then it leaves a photo short (with a warning) rather than looping for long.
    limit = 1000 + 50 * n
    for draw in range(limit):
        dims = tuple(draw_dims(list(supported), k_min, k_max, seed, f"{photo_name}#{draw}"))
        rng = random.Random(canonical_json({"seed": seed, "photo": photo_name, "draw": draw, "what": "transforms"}))
        chosen = tuple(rng.choice(supported[d]) for d in dims)
        key = frozenset((d, t.name) for d, t in zip(dims, chosen))
        if key not in seen:
            seen.add(key)
            out.append((draw, dims, chosen))
            if len(out) == n:
                return out
    log.warning("edit: photo %s: found %d of %d distinct edits in %d draws", photo_name, len(out), n, limit)
    return out


def plan_edit(photo_name: str, caption: str, draw: int, dims: tuple[str, ...], chosen: tuple[Transform, ...],
              seed: int, max_words: int = 70) -> EditPlan:
    effects = tuple(Effect(d, t.description, t.phrasings) for d, t in zip(dims, chosen))
    request = RewriteRequest(caption, effects, max_words, seed)
    result = TemplateRewriter().rewrite(request)
    if result.prompt is None:
        raise InputError(f"photo {photo_name}: {result.error}")
    rng_seed = int(spec_hash({"seed": seed, "photo": photo_name, "draw": draw})[:15], 16)
    return EditPlan(dims, chosen, effects, result.prompt, rng_seed)


def apply_plan(image: np.ndarray, plan: EditPlan, strength: float) -> tuple[np.ndarray, list[dict]]:
    rng = np.random.default_rng(plan.rng_seed)
    applied = []
    for dim, t in zip(plan.dims, plan.transforms):
        image, params = t.apply(image, strength, rng)
        applied.append({"name": t.name, "dimension": dim, "version": t.version, "params": params})
    return image, applied


def run_edit(store: RunStore, config: AuditConfig, catalogue: Catalogue, *, retry_failed: bool = False) -> StageSummary:
    ec = config.images.editor
    supported = editable_dimensions(catalogue, ec.dimensions)
    if not supported:
        raise ConfigError("no dimension the editor can realise was selected")
    summary = StageSummary(IMAGES)
    distinct = count_draws(supported, ec.k_min, ec.k_max)
    draws = min(ec.pairs_per_photo, distinct)
    if draws < ec.pairs_per_photo:
        message = (f"edit: the dimension(s) {', '.join(supported)}, {ec.k_min}-{ec.k_max} per edit, allow only "
                   f"{distinct} distinct edit(s) of a photo; making {distinct} per photo instead of "
                   f"pairs_per_photo={ec.pairs_per_photo}")
        log.warning("%s", message)
        summary.warnings.append(message)
    names = photo_names(ec.photos)
    # The stage yields once per image pair (made, cached or failed), so the bar counts pairs.
    total = len(names) * draws * len(ec.strengths)
    with store.writer() as writer:
        stage = _EditStage(store, config, supported, draws, summary, retry_failed, writer,
                           store_png_level(store, config.images.png_level))
        for _ in progress(stage.run(set(names)), total=total, desc="edit", unit="pair"):
            pass
    return summary


def _mark(image_o: str, image_a: str, p_a: str) -> bytes:
    """A pair's content (I_o, I_a, p_a) in 16 bytes: the stage remembers every stored pair by it. The
    two hashes hold no newline, so the joined text is unambiguous."""
    return hashlib.blake2b(f"{image_o}\n{image_a}\n{p_a}".encode(), digest_size=16).digest()


@dataclass
class _EditStage:
    store: RunStore
    config: AuditConfig
    supported: dict[str, list[Transform]]
    draws: int
    summary: StageSummary
    retry_failed: bool
    writer: RecordWriter
    png_level: int

    def __post_init__(self) -> None:
        self.ok, self.failed = self.store.keys(IMAGES, "ok"), self.store.keys(IMAGES, "failed")
        self._stored: set[bytes] | None = None
        self.per_photo = self.draws * len(self.config.images.editor.strengths)  # pairs a photo makes

    @property
    def stored(self) -> set[bytes]:
        """The pairs the run holds, by content: the same I_o, I_a and p_a are stored once, whichever draw
        made them. Read on the first new edit, so a rerun with every pair stored parses no record."""
        if self._stored is None:
            self._stored = {_mark(r.data["image_o"], r.data["image_a"], r.data["p_a"])
                            for r in self.store.records(IMAGES)}
        return self._stored

    def run(self, names: set[str]) -> Iterator[None]:
        """Edit every photo; yields once per image pair, and a photo or draw that fails yields for
        each pair it would have made."""
        for source in iter_photo_sources(self.config.images.editor.photos):
            if isinstance(source, InputError):
                self._fail(source.item or str(source), source.item or "photos", str(source))
                if source.item in names:  # a photo the bar counted
                    yield from [None] * self.per_photo
                continue
            yield from self._photo(source)

    def _photo(self, source: PhotoSource) -> Iterator[None]:
        ec, store = self.config.images.editor, self.store
        # The stored I_o is a function of the photo and the settings that make its PNG: remembered, a rerun
        # decodes, resizes and encodes a photo only when one of its pairs is still to be made.
        memo_key = spec_hash({"edit photo": source.identity, "max_side": ec.max_side,
                              "encoder": encoder_identity(self.png_level)})
        image_o = store.memo_get(memo_key)
        pixels: list[np.ndarray] = []  # the photo's pixels, once decoded
        if image_o is None or not store.has_image(image_o):
            try:
                photo = source.load(ec.max_side)
            except InputError as exc:
                self._fail(exc.item or source.name, exc.item or source.name, str(exc))
                yield from [None] * self.per_photo
                return
            image_o = store.put_image(photo.image, png_level=self.png_level)
            store.memo_put_many([(memo_key, image_o)])  # after the file: a remembered hash names a stored image
            pixels.append(to_array(photo.image))

        def original() -> np.ndarray:
            if not pixels:
                pixels.append(to_array(source.load(ec.max_side).image))
            return pixels[0]

        self._discard(failed_item_key(IMAGES, "photos", source.name))
        for draw, dims, chosen in draw_sets(source.name, self.supported, ec.k_min, ec.k_max, self.config.seed,
                                            self.draws):
            draw_item = f"{source.name}#{draw}"
            try:
                plan = plan_edit(source.name, source.caption, draw, dims, chosen, self.config.seed,
                                 self.config.prompts.max_words)
            except InputError as exc:
                self._fail(draw_item, draw_item, str(exc))
                yield from [None] * len(ec.strengths)
                continue
            self._discard(failed_item_key(IMAGES, "photos", draw_item))
            pair_id = self._prompt(source, plan, draw_item)
            for strength in ec.strengths:
                self._pair(source, original, image_o, plan, pair_id, f"{draw_item}@{strength:g}", strength)
                yield

    def _discard(self, key: str) -> None:
        """Remove the failed record of a photo or draw that works now (checked against the failed keys read
        at the start, so a run without failures deletes nothing)."""
        if key in self.failed:
            self.store.discard_failed([key])

    def _fail(self, where: str, item: str, error: str) -> None:
        """A photo or draw that failed before any pair: keyed by ``where`` (a file, a draw, or the
        message when no file is named)."""
        self.summary.total += 1
        self.summary.failed += 1
        self.writer.put(Record.failed(failed_item_key(IMAGES, "photos", where), IMAGES, item, error))

    def _prompt(self, photo: PhotoSource, plan: EditPlan, draw_item: str) -> str:
        config = self.config
        rewriter = {**TemplateRewriter().identity(), "transforms": [t.identity() for t in plan.transforms]}
        pair_id = prompt_key(caption=photo.caption, effects=effect_spec(plan.effects), rewriter=rewriter,
                             max_words=config.prompts.max_words, seed=config.seed)
        self.writer.put(Record(pair_id, PROMPTS, draw_item, {
            "pair_id": pair_id, "index": None, "source": "photos", "caption_id": photo.name,
            "p_o": photo.caption, "p_a": plan.p_a, "dims": list(plan.dims), "rewriter": "template",
            "seed": config.seed, "words": word_count(plan.p_a)}))
        return pair_id

    def _pair(self, photo: PhotoSource, original: Callable[[], np.ndarray], image_o: str, plan: EditPlan,
              pair_id: str, item: str, strength: float) -> None:
        summary = self.summary
        summary.total += 1
        backend = {"name": "editor", "transforms": [t.identity() for t in plan.transforms]}
        key = image_pair_key(backend=backend, inputs={"photo": image_o, "pair_id": pair_id,
                                                      "draw": plan.rng_seed, "strength": strength},
                             seed=self.config.seed)
        if key in self.ok:
            summary.cached += 1
            return
        if key in self.failed and not self.retry_failed:
            summary.failed += 1
            return
        try:
            edited, applied = apply_plan(original(), plan, strength)
        except InputError as exc:  # the photo decoded when its hash was remembered, and no longer does
            self.writer.put(Record.failed(key, IMAGES, item, str(exc)))
            summary.failed += 1
            log.warning("failed: %s: %s", item, exc)
            return
        except Exception as exc:  # a transform bug must not take the run down
            self.writer.put(Record.failed(key, IMAGES, item, f"edit failed: {exc!r}"))
            summary.failed += 1
            log.warning("failed: %s: %r", item, exc)
            return
        png = encode_png(from_array(edited), self.png_level)
        image_a = bytes_hash(png)
        mark = _mark(image_o, image_a, plan.p_a)
        if mark in self.stored:
            summary.cached += 1
            log.debug("%s: this pair (same I_o, I_a and p_a) is stored already", item)
            return
        self.store.put_image_bytes(png, ".png")
        self.stored.add(mark)
        self.writer.put(Record(key, IMAGES, item, {
            "image_pair_id": key, "pair_id": pair_id, "p_o": photo.caption, "p_a": plan.p_a,
            "dims": list(plan.dims), "image_o": image_o, "image_a": image_a, "backend": "editor",
            "strength": strength, "transforms": applied,
            "label": {"value": 1, "source": "construction"}, "model": "editor",
            "source_item": photo.name}))
        summary.new += 1
