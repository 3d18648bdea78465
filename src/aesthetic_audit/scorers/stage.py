"""The score stage: r(I, p) for the four combinations of every image pair, per scorer.

Each (scorer, image, prompt) is one record, so work is shared wherever it repeats: a prompt-blind
scorer scores each image once (prompt None) and that score serves all four combinations; pairs that
share an image and a prompt share the record.
"""

from __future__ import annotations

from ..errors import ConfigError, InputError
from ..hashing import spec_hash
from ..images.decode import decode_image
from ..records import IMAGES, SCORE, has_pixels, score_key
from ..registry import get
from ..stage import StageSummary
from ..store import Record, RunStore
from ..ui import log, progress_chunks
from .base import Scorer


def score_items(store: RunStore, scorer: Scorer) -> list[tuple[str, str | None]]:
    """Distinct (image, prompt) items the run's pairs need from this scorer, in first-seen order."""
    items: dict[tuple[str, str | None], None] = {}
    for r in store.records(IMAGES):
        d = r.data
        for image in (d["image_o"], d["image_a"]):
            if not has_pixels(image):  # a pair imported with its scores but not its images
                continue
            for prompt in ((d["p_o"], d["p_a"]) if scorer.prompt_aware else (None,)):
                items.setdefault((image, prompt))
    return list(items)


def run_score(store: RunStore, scorer: Scorer, *, chunk_size: int = 64, retry_failed: bool = False) -> StageSummary:
    identity = scorer.identity()
    items = score_items(store, scorer)
    keys = {it: score_key(scorer=identity, image=it[0], prompt=it[1]) for it in items}
    summary = StageSummary(f"{SCORE}:{scorer.name}", total=len(items))
    pending = summary.pending(keys.values(), store, retry_failed)
    todo = [it for it in items if keys[it] in pending]
    if todo:
        scorer.load()
    # scorer_id tells apart scores of one scorer name under different weights/options in one run
    base = {"scorer": scorer.name, "scorer_id": spec_hash(identity), "higher_is_better": scorer.higher_is_better}

    def fail(key: str, item: str, image: str, prompt: str | None, reason: str) -> None:
        log.warning("failed: %s on %s: %s", scorer.name, item, reason)
        store.put(Record.failed(key, SCORE, item, reason, image=image, prompt=prompt, **base))
        summary.failed += 1

    for chunk in progress_chunks(len(todo), chunk_size, desc=f"score {scorer.name}"):
        batch = todo[chunk.start:chunk.stop]
        cache: dict[str, object] = {}
        ready = []
        for image, prompt in batch:
            item = f"{image[:12]}|{(prompt or '')[:40]}"
            if image not in cache:
                try:
                    cache[image] = decode_image(store.image_path(image), name=image[:12])
                except InputError as exc:
                    cache[image] = exc
            if isinstance(cache[image], InputError):
                fail(keys[(image, prompt)], item, image, prompt, str(cache[image]))
            else:
                ready.append((image, prompt, item))
        try:
            results = scorer.score([(cache[i], p) for i, p, _ in ready]) if ready else []
        except Exception as exc:  # a model error (out of memory, a bug) fails this chunk's items, not the run
            for image, prompt, item in ready:
                fail(keys[(image, prompt)], item, image, prompt, f"scorer error: {exc!r}")
            continue
        for (image, prompt, item), res in zip(ready, results):
            key = keys[(image, prompt)]
            if not res.ok:
                fail(key, item, image, prompt, res.error or "no score")
                continue
            summary.new += store.put(Record(key, SCORE, item, {
                **base, "image": image, "prompt": prompt, "score": float(res.score), "tokens": res.tokens,
                "truncated": res.truncated, **({"extra": res.extra} if res.extra else {})}))
    return summary


def make_scorer(name: str, options: dict | None = None) -> Scorer:
    """The scorer ``name`` built with ``options``. Its errors do not repeat the scorer's name: the caller
    that reports them (``Run.score``, the config check) puts "scorer NAME: " in front once."""
    cls = get("scorers", name)
    try:
        return cls(**(options or {}))
    except TypeError as exc:
        raise ConfigError(f"bad options {sorted(options or {})}: {exc}") from None
