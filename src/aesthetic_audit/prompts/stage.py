"""The prompt stage: read captions, sample them, draw dimensions, rewrite, store one record each.

Every random choice is seeded from (config seed, caption): the same config and seed give the same
pairs in the same order, whichever captions were already done. The stage streams: captions are read
a line at a time, and the records are written in chunks (``RunStore.writer``), so a killed run keeps
all but the chunk in flight.

A rerun of a finished stage must not draw every caption's dimensions again only to find its key stored
(seeding a generator from a string is most of that cost), so the run's memo table remembers each
caption's key under everything that decides it (``PromptPlanner.memo_prefix``); the rerun then checks
all captions at once against the memo and the stored keys, and reads the source a second time only for
the captions still to do.
"""

from __future__ import annotations

import functools
import itertools
import platform
import random
from dataclasses import dataclass
from typing import Collection, Iterator, Mapping, Sequence

import numpy as np

from ..config import AuditConfig
from ..dimensions import Catalogue
from ..errors import ConfigError
from ..hashing import canonical_json, spec_hash
from ..records import PROMPTS, SpecTemplate, json_text, prompt_key_template
from ..registry import get
from ..stage import Pending, StageSummary, StoredKeys, find, hex_digests
from ..store import Record, RunStore
from ..ui import log, progress_counter
from .rewriters.base import Effect, Rewriter, RewriteRequest, word_count
from .sources import Caption, CaptionStream, open_captions, text_digest

REWRITE_CHUNK = 512  # requests handed to the rewriter at once (an LLM rewriter keeps its concurrency within one)


@dataclass(frozen=True)
class PlannedPair:
    key: str
    index: int
    caption: Caption
    dims: tuple[str, ...]
    request: RewriteRequest
    source: str


def sample_indices(count: int, n: int | None, seed: int) -> list[int] | None:
    """The positions of n of ``count`` captions drawn without replacement (seeded), in source order;
    None for all of them (n is None or not below count)."""
    if n is None or n >= count:
        return None
    return sorted(random.Random(f"{seed}:captions").sample(range(count), n))


def sample_captions(captions: Sequence[Caption], n: int | None, seed: int) -> list[Caption]:
    """N captions drawn without replacement (seeded), kept in source order; all when n is None."""
    chosen = sample_indices(len(captions), n, seed)
    return list(captions) if chosen is None else [captions[i] for i in chosen]


def chosen_captions(captions: CaptionStream, n: int | None, seed: int) -> Iterator[Caption]:
    """``sample_captions`` over a stream: the same captions in the same order, read one at a time."""
    chosen = sample_indices(captions.count, n, seed)
    if chosen is None:
        yield from captions
        return
    wanted = iter(chosen)
    next_i = next(wanted)
    for i, cap in enumerate(captions):
        if i == next_i:
            yield cap
            next_i = next(wanted, None)
            if next_i is None:
                return


_REDRAWS = 100  # before falling back to listing the compatible sets; a few suffice for real catalogues
# Part of what the memo of prompt keys is keyed by: bump it with any change to how draw_dims draws.
DRAW_VERSION = 1


@functools.lru_cache(maxsize=16)
def _draw_seed(seed: int) -> SpecTemplate:
    """The text a caption's draw is seeded with, canonical_json({"seed", "caption", "draw": "dims"}),
    built once per seed."""
    return SpecTemplate({"seed": seed, "caption": None, "draw": "dims"}, ("caption",))


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

    rng = random.Random(_draw_seed(seed).text(caption))
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


class PromptPlanner:
    """Dimensions, requests and record keys of captions under one config, catalogue and rewriter.

    What every caption shares is built once: each dimension's effect and its JSON, and the fixed part of
    the record key (``records.prompt_key_template``). ``memo_prefix`` hashes everything a caption's key
    depends on besides the caption (the draw: seed, pool, k range, conflicts, this Python's ``random``;
    the effects; the rewriter and word limit): the memo remembers a caption's key under this prefix and
    the caption's ``text_digest``.
    """

    def __init__(self, config: AuditConfig, catalogue: Catalogue, rewriter: Rewriter):
        pc = config.prompts
        self.seed, self.k_min, self.k_max = config.seed, pc.k_min, pc.k_max
        self.pool = [d.key for d in catalogue.select(pc.dimensions)]
        conflicts = catalogue.conflicts()
        self.conflicts = {d: conflicts.get(d, frozenset()) for d in self.pool}
        self.effects = {d: e for d, e in zip(self.pool, effects_for(catalogue, self.pool))}
        self._effect_json = {d: canonical_json(effect_spec([e])[0]) for d, e in self.effects.items()}
        identity = rewriter.identity()
        self._keys = prompt_key_template(rewriter=identity, max_words=pc.max_words, seed=config.seed)
        self.max_words = pc.max_words
        plan = {"python": platform.python_version(), "draw": DRAW_VERSION, "seed": config.seed,
                "pool": self.pool, "k": [pc.k_min, pc.k_max],
                "conflicts": {d: sorted(c) for d, c in self.conflicts.items()},
                "effects": [self._effect_json[d] for d in self.pool], "rewriter": identity,
                "max_words": pc.max_words}
        self.memo_prefix = f"prompt key:{spec_hash(plan)[:32]}:"

    def dims(self, caption: str) -> tuple[str, ...]:
        return tuple(draw_dims(self.pool, self.k_min, self.k_max, self.seed, caption, self.conflicts))

    def key(self, caption: str, dims: Sequence[str]) -> str:
        """``records.prompt_key`` of the caption with these dimensions' effects."""
        effects = "[" + ",".join(self._effect_json[d] for d in dims) + "]"
        return self._keys.hash_json(json_text(caption), effects)

    def request(self, caption: str, dims: Sequence[str]) -> RewriteRequest:
        return RewriteRequest(caption, tuple(self.effects[d] for d in dims), self.max_words, self.seed)

    def remembered(self, store: RunStore) -> tuple[np.ndarray, np.ndarray]:
        """The keys the memo holds under ``memo_prefix``: (sorted caption digests, their record keys),
        as ``S16`` and ``S32`` arrays."""
        digests, keys = [], []
        cursor = store.db.execute("SELECT substr(key, ?), value FROM memo WHERE substr(key, 1, ?) = ?",
                                  (len(self.memo_prefix) + 1, len(self.memo_prefix), self.memo_prefix))
        while rows := cursor.fetchmany(8192):
            page_digests = hex_digests([d for d, _ in rows], 16)
            page_keys = hex_digests([k for _, k in rows], 32)
            if page_digests is not None and page_keys is not None:  # the stage writes no other entries
                digests.append(page_digests)
                keys.append(page_keys)
        if not digests:
            return np.zeros(0, dtype="S16"), np.zeros(0, dtype="S32")
        digests_a, keys_a = np.concatenate(digests), np.concatenate(keys)
        order = np.argsort(digests_a)
        return digests_a[order], keys_a[order]


def plan_prompts(config: AuditConfig, catalogue: Catalogue, rewriter: Rewriter) -> tuple[list[PlannedPair], list[str]]:
    """Every pair the config asks for, planned at once (the stage itself streams them)."""
    pc = config.prompts
    planner = PromptPlanner(config, catalogue, rewriter)
    captions = open_captions(pc.source, format=pc.format, column=pc.column, filter=pc.filter)
    plan = []
    for index, cap in enumerate(chosen_captions(captions, pc.n, config.seed)):
        dims = planner.dims(cap.text)
        plan.append(PlannedPair(planner.key(cap.text, dims), index, cap, dims, planner.request(cap.text, dims),
                                captions.source))
    return plan, captions.warnings


def run_prompts(store: RunStore, config: AuditConfig, catalogue: Catalogue, *, rewriter: Rewriter | None = None,
                retry_failed: bool = False) -> StageSummary:
    rewriter = rewriter or make_rewriter(config)
    pc = config.prompts
    planner = PromptPlanner(config, catalogue, rewriter)
    captions = open_captions(pc.source, format=pc.format, column=pc.column, filter=pc.filter)
    for w in captions.warnings:
        log.warning("warning: %s", w)
    summary = StageSummary(PROMPTS, warnings=captions.warnings)
    stored = StoredKeys(store, PROMPTS)
    rest = _check_remembered(summary, captions, planner, stored, store, pc.n, config.seed, retry_failed)
    identity = rewriter.identity()
    with Pending(summary, store, retry_failed=retry_failed, distinct=False, stored=stored) as pending:
        if rest.any():
            _offer(pending, captions, planner, rest, store, pc.n, config.seed)
        todo = pending.finish()
        failed_before = summary.failed
        # A rewriter with its own rewrite_iter answers from elsewhere (an endpoint, a few items a second,
        # maybe stalling): each record is committed as it arrives, so a stall never holds finished work.
        remote = type(rewriter).rewrite_iter is not Rewriter.rewrite_iter
        with store.writer(max_seconds=0.0 if remote else 1.0) as writer, \
                progress_counter("prompts", total=todo) as advance:
            for batch in pending.batches(REWRITE_CHUNK):
                requests = [planner.request(text, dims) for _, (_, _, text, dims) in batch]
                for i, result in rewriter.rewrite_iter(requests):
                    key, (index, caption_id, text, dims) = batch[i]
                    common = {"pair_id": key, "index": index, "origin": "captions", "source": captions.source,
                              "caption_id": caption_id, "p_o": text, "dims": list(dims),
                              "rewriter": identity["name"], "seed": config.seed}
                    if result.prompt is None:
                        writer.put(Record.failed(key, PROMPTS, caption_id, result.error or "rewrite failed", **common))
                        log.warning("failed: %s: %s", caption_id, result.error)
                        summary.failed += 1
                    else:
                        data = {**common, "p_a": result.prompt, "words": word_count(result.prompt),
                                "meta": result.meta}
                        writer.put(Record(key, PROMPTS, caption_id, data))
                    advance(1)
    # Every failed record written changed the store (its key was pending); the rest are the new ones.
    summary.new = writer.new - (summary.failed - failed_before)
    return summary


def _check_remembered(summary: StageSummary, captions: CaptionStream, planner: PromptPlanner, stored: StoredKeys,
                      store: RunStore, n: int | None, seed: int, retry_failed: bool) -> np.ndarray:
    """Count the chosen captions whose key the memo knows and the store holds (cached, or failed unless
    retried); return a mask over the chosen captions of the others."""
    chosen = sample_indices(captions.count, n, seed)
    digests = np.frombuffer(bytes(captions.digests), dtype="S16")
    if chosen is not None:
        digests = digests[np.asarray(chosen, dtype=np.int64)]
    summary.total = len(digests)
    known_digests, known_keys = planner.remembered(store)
    known, at = find(known_digests, digests)
    status = np.full(len(digests), "", dtype="<U6")
    if known.any():
        status[known] = stored.status_of(known_keys[at[known]])
    cached, failed = status == "ok", (status == "failed") & (not retry_failed)
    summary.cached += int(cached.sum())
    summary.failed += int(failed.sum())
    return ~(cached | failed)


def _offer(pending: Pending, captions: CaptionStream, planner: PromptPlanner, rest: np.ndarray, store: RunStore,
           n: int | None, seed: int) -> None:
    """Read the source again for the chosen captions in ``rest``: draw their dimensions, key them, offer
    them to ``pending`` (which finds those stored under a key the memo did not know) and remember
    their keys."""
    last = int(np.flatnonzero(rest)[-1])
    learnt: list[tuple[str, str]] = []
    for index, cap in enumerate(chosen_captions(captions, n, seed)):
        if index > last:
            break
        if not rest[index]:
            continue
        dims = planner.dims(cap.text)
        key = planner.key(cap.text, dims)
        learnt.append((planner.memo_prefix + text_digest(cap.text).hex(), key))
        pending.add(bytes.fromhex(key), [index, cap.id, cap.text, dims])
        if len(learnt) >= 4096:
            store.memo_put_many(learnt)
            learnt = []
    store.memo_put_many(learnt)
