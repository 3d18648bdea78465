"""The prompt stage: read captions, sample them, draw dimensions, rewrite, store one record each.

Every random choice is seeded from (config seed, caption): the same config and seed give the same
pairs in the same order, whichever captions were already done. Records are stored as each rewrite
finishes, so a killed run resumes with what it had.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

from ..config import AuditConfig
from ..dimensions import Catalogue
from ..errors import ConfigError
from ..hashing import canonical_json
from ..records import PROMPTS, prompt_key
from ..registry import get
from ..stage import StageSummary
from ..store import Record, RunStore
from ..ui import log, progress
from .rewriters.base import Effect, Rewriter, RewriteRequest, word_count
from .sources import Caption, read_captions


@dataclass(frozen=True)
class PlannedPair:
    key: str
    index: int
    caption: Caption
    dims: tuple[str, ...]
    request: RewriteRequest
    source: str


def sample_captions(captions: Sequence[Caption], n: int | None, seed: int) -> list[Caption]:
    """N captions drawn without replacement (seeded), kept in source order; all when n is None."""
    if n is None or n >= len(captions):
        return list(captions)
    chosen = sorted(random.Random(f"{seed}:captions").sample(range(len(captions)), n))
    return [captions[i] for i in chosen]


_REDRAWS = 100  # before falling back to listing the compatible sets; a few suffice for real catalogues


def draw_dims(pool: Sequence[str], k_min: int, k_max: int, seed: int, caption: str,
              conflicts: Mapping[str, Collection[str]] | None = None) -> list[str]:
    """k ~ U{k_min..k_max} dimensions without replacement, seeded by the seed and the caption.

    With ``conflicts`` (``Catalogue.conflicts()``), the draw is uniform over the sets of k in which
    no two dimensions contradict each other: a draw with a conflict is drawn again, so a draw
    without one is the same as with no conflicts at all.
    """
    if not pool:
        raise ConfigError("no dimensions to draw from")
    conflicts = conflicts or {}

    def compatible(dims: Sequence[str]) -> bool:
        return not any(b in conflicts.get(a, ()) for a, b in itertools.combinations(dims, 2))

    rng = random.Random(canonical_json({"seed": seed, "caption": caption, "draw": "dims"}))
    k = rng.randint(min(k_min, len(pool)), min(k_max, len(pool)))
    for _ in range(_REDRAWS):
        dims = rng.sample(list(pool), k)
        if compatible(dims):
            return dims
    # A pool that is mostly conflicts: choose among the compatible sets themselves.
    sets = [c for c in itertools.combinations(pool, k) if compatible(c)]
    if not sets:
        raise ConfigError(f"no {k} of the dimensions {', '.join(pool)} can go into one prompt: "
                          "some of them conflict (see 'conflicts' in the catalogue); lower k or add dimensions")
    return rng.sample(rng.choice(sets), k)


def effects_for(catalogue: Catalogue, dims: Sequence[str]) -> tuple[Effect, ...]:
    return tuple(Effect(d, catalogue[d].anti, catalogue[d].phrasings) for d in dims)


def effect_spec(effects: Sequence[Effect]) -> list[list]:
    """The part of the effects a rewrite reads: key, description and phrasings (for record keys)."""
    return [[e.dimension, e.anti, list(e.phrasings)] for e in effects]


def make_rewriter(config: AuditConfig) -> Rewriter:
    return get("rewriters", config.prompts.rewriter).from_config(config.prompts)


def plan_prompts(config: AuditConfig, catalogue: Catalogue, rewriter: Rewriter) -> tuple[list[PlannedPair], list[str]]:
    pc = config.prompts
    pool = [d.key for d in catalogue.select(pc.dimensions)]
    captions = read_captions(pc.source, format=pc.format, column=pc.column, filter=pc.filter)
    chosen = sample_captions(captions.captions, pc.n, config.seed)
    identity = rewriter.identity()
    conflicts = catalogue.conflicts()
    plan = []
    for index, cap in enumerate(chosen):
        dims = tuple(draw_dims(pool, pc.k_min, pc.k_max, config.seed, cap.text, conflicts))
        req = RewriteRequest(cap.text, effects_for(catalogue, dims), pc.max_words, config.seed)
        key = prompt_key(caption=cap.text, effects=effect_spec(req.effects), rewriter=identity,
                         max_words=pc.max_words, seed=config.seed)
        plan.append(PlannedPair(key, index, cap, dims, req, captions.source))
    return plan, captions.warnings


def run_prompts(store: RunStore, config: AuditConfig, catalogue: Catalogue, *, rewriter: Rewriter | None = None,
                retry_failed: bool = False) -> StageSummary:
    rewriter = rewriter or make_rewriter(config)
    plan, warnings = plan_prompts(config, catalogue, rewriter)
    for w in warnings:
        log.warning("warning: %s", w)
    summary = StageSummary(PROMPTS, total=len(plan), warnings=warnings)
    todo = summary.pending([p.key for p in plan], store, retry_failed)
    todo = [p for p in plan if p.key in todo]
    identity = rewriter.identity()
    results = rewriter.rewrite_iter([p.request for p in todo])
    for i, result in progress(results, total=len(todo), desc="prompts"):
        p = todo[i]
        common = {"pair_id": p.key, "index": p.index, "origin": "captions", "source": p.source,
                  "caption_id": p.caption.id, "p_o": p.caption.text, "dims": list(p.dims),
                  "rewriter": identity["name"], "seed": config.seed}
        if result.prompt is None:
            store.put(Record.failed(p.key, PROMPTS, p.caption.id, result.error or "rewrite failed", **common))
            log.warning("failed: %s: %s", p.caption.id, result.error)
            summary.failed += 1
        else:
            data = {**common, "p_a": result.prompt, "words": word_count(result.prompt), "meta": result.meta}
            store.put(Record(p.key, PROMPTS, p.caption.id, data))
            summary.new += 1
    return summary
