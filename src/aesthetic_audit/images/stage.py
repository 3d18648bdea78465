"""The images stage with the editor backend: photo I_o -> anti-aesthetic edit I_a, one record per strength.

For each photo the editor draws ``pairs_per_photo`` sets of dimensions (seeded), picks one transform
per dimension among those the catalogue lists for it, and writes p_a with the template rewriter from
those transforms' own phrasings, so the prompt names exactly the applied effects. The random
parameters of a draw are shared by all its strengths, so strength is the only thing that varies
along a strength series. I_a follows p_a by construction: the pair's label is 1, source
"construction".
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..config import AuditConfig
from ..dimensions import Catalogue
from ..errors import ConfigError, InputError
from ..hashing import canonical_json, spec_hash
from ..records import IMAGES, PROMPTS, failed_item_key, image_pair_key, prompt_key
from ..registry import available
from ..stage import StageSummary
from ..store import Record, RunStore
from ..ui import log, progress
from ..prompts.rewriters.base import Effect, RewriteRequest, word_count
from ..prompts.rewriters.template import TemplateRewriter
from ..prompts.stage import draw_dims, effect_spec
from .decode import from_array, to_array
from .editor.base import Transform


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


def plan_edit(photo_name: str, caption: str, draw: int, supported: dict[str, list[Transform]],
              k_min: int, k_max: int, seed: int, max_words: int = 70) -> EditPlan:
    dims = tuple(draw_dims(list(supported), k_min, k_max, seed, f"{photo_name}#{draw}"))
    rng = random.Random(canonical_json({"seed": seed, "photo": photo_name, "draw": draw, "what": "transforms"}))
    chosen = tuple(rng.choice(supported[d]) for d in dims)
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
    from .photos import iter_photos

    ec = config.images.editor
    supported = editable_dimensions(catalogue, ec.dimensions)
    if not supported:
        raise ConfigError("no dimension the editor can realise was selected")
    summary = StageSummary(IMAGES)
    ok, failed = store.keys(IMAGES, "ok"), store.keys(IMAGES, "failed")
    for photo in progress(iter_photos(ec.photos, max_side=ec.max_side), desc="edit"):
        if isinstance(photo, InputError):
            summary.total += 1
            summary.failed += 1
            store.put(Record.failed(failed_item_key(IMAGES, "photos", photo.item or str(photo)), IMAGES,
                                    photo.item or "photos", str(photo)))
            continue
        store.discard_failed([failed_item_key(IMAGES, "photos", photo.name)])
        original = to_array(photo.image)
        image_o = store.put_image(photo.image)
        for draw in range(ec.pairs_per_photo):
            draw_item = f"{photo.name}#{draw}"
            try:
                plan = plan_edit(photo.name, photo.caption, draw, supported, ec.k_min, ec.k_max, config.seed,
                                 config.prompts.max_words)
            except InputError as exc:
                summary.total += 1
                summary.failed += 1
                store.put(Record.failed(failed_item_key(IMAGES, "photos", draw_item), IMAGES, draw_item, str(exc)))
                continue
            store.discard_failed([failed_item_key(IMAGES, "photos", draw_item)])
            rewriter = {**TemplateRewriter().identity(), "transforms": [t.identity() for t in plan.transforms]}
            pair_id = prompt_key(caption=photo.caption, effects=effect_spec(plan.effects), rewriter=rewriter,
                                 max_words=config.prompts.max_words, seed=config.seed)
            store.put(Record(pair_id, PROMPTS, draw_item, {
                "pair_id": pair_id, "index": None, "source": "photos", "caption_id": photo.name,
                "p_o": photo.caption, "p_a": plan.p_a, "dims": list(plan.dims), "rewriter": "template",
                "seed": config.seed, "words": word_count(plan.p_a)}))
            for strength in ec.strengths:
                summary.total += 1
                backend = {"name": "editor", "transforms": [t.identity() for t in plan.transforms]}
                key = image_pair_key(backend=backend, inputs={"photo": image_o, "pair_id": pair_id,
                                                              "draw": plan.rng_seed, "strength": strength},
                                     seed=config.seed)
                if key in ok:
                    summary.cached += 1
                    continue
                if key in failed and not retry_failed:
                    summary.failed += 1
                    continue
                item = f"{draw_item}@{strength:g}"
                try:
                    edited, applied = apply_plan(original, plan, strength)
                except Exception as exc:  # a transform bug must not take the run down
                    store.put(Record.failed(key, IMAGES, item, f"edit failed: {exc!r}"))
                    summary.failed += 1
                    log.warning("failed: %s: %r", item, exc)
                    continue
                image_a = store.put_image(from_array(edited))
                store.put(Record(key, IMAGES, item, {
                    "image_pair_id": key, "pair_id": pair_id, "p_o": photo.caption, "p_a": plan.p_a,
                    "dims": list(plan.dims), "image_o": image_o, "image_a": image_a, "backend": "editor",
                    "strength": strength, "transforms": applied,
                    "label": {"value": 1, "source": "construction"}, "model": "editor",
                    "source_item": photo.name}))
                summary.new += 1
    return summary
