"""The score stage: r(I, p) for the four combinations of every image pair, per scorer.

Each (scorer, image, prompt) is one record, so work is shared wherever it repeats: a prompt-blind
scorer scores each image once (prompt None) and that score serves all four combinations; pairs that
share an image and a prompt share the record. Items are read from the pairs a page at a time and keyed
as they come (``stage.Pending``); scores are written in chunks (``RunStore.writer``). The scoring itself
(``ScoreBatch``, ``PairwiseBatch``) runs on the run's engine (``engine``): in this process, or on Ray. A scorer with a
``stored_results(store, images)`` method (the composite scorer) gets the chance to answer from records
the run already holds before any image is decoded; it may also answer with a ``StoredInput`` (stored
values the scorer reuses, such as the judge's J for the intent-aware reward), which travels with the batch
to the scorer's ``reuse``.

A pairwise scorer (class attribute ``pairwise``, the VLM of ``vlm_pairwise.py``) has no r(I, p): it
gets one record per distinct (I_o, I_a, p_a) of the run's pairs instead (``run_pairwise``), keyed
like a score with the ordered pair of images as its image (``score_key`` with ``image = [I_o, I_a]``
and ``prompt = p_a``), with ``pairwise: true``, ``image_o``, ``image_a``, ``prefers`` (1 I_a, 0 I_o,
-1 tie), ``prob_a`` (P(I_a better), or null), ``answers`` (per order shown: ``first`` and the raw
answer), ``disagree``, ``discrete`` and ``scorer_desc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..engine import Batch, Engine, Images, Job, LocalEngine, Planned, decode_each, decode_error, drive
from ..errors import ConfigError, EndpointUnreachable, InputError
from ..hashing import spec_hash
from ..records import IMAGES, SCORE, has_pixels, json_text, score_key_template
from ..registry import get
from ..stage import Pending, StageSummary, stored_fields
from ..store import Record, RunStore
from .base import Scorer, ScoreResult, StoredInput


def run_score(store: RunStore, scorer: Scorer, *, chunk_size: int = 64, retry_failed: bool = False,
              engine: Engine | None = None, factory: Callable[[], Scorer] | None = None) -> StageSummary:
    """Score every pending (image, prompt) item with ``scorer`` (built, not loaded) on ``engine`` (default:
    this process); ``factory`` builds the scorer on a Ray worker."""
    if getattr(scorer, "pairwise", False):
        return run_pairwise(store, scorer, chunk_size=chunk_size, retry_failed=retry_failed, engine=engine,
                            factory=factory)
    identity = scorer.identity()
    keys = score_key_template(identity)
    summary = StageSummary(f"{SCORE}:{scorer.name}")
    with Pending(summary, store, retry_failed=retry_failed) as pending:
        # Distinct (image, prompt) items the run's pairs need from this scorer, in first-seen order.
        for _, (image_o, image_a, p_o, p_a) in stored_fields(store, IMAGES, ("image_o", "image_a", "p_o", "p_a")):
            prompts = [(p_o, json_text(p_o)), (p_a, json_text(p_a))] if scorer.prompt_aware else [(None, "null")]
            for image in (image_o, image_a):
                if not (isinstance(image, str) and has_pixels(image)):  # imported without its images
                    continue
                image_json = json_text(image)
                for prompt, prompt_json in prompts:
                    pending.add(keys.digest_json(image_json, prompt_json), [image, prompt])
        todo = pending.finish()
        summary.total = pending.total
        # scorer_id tells apart scores of one scorer name under different weights/options in one run
        base = {"scorer": scorer.name, "scorer_id": spec_hash(identity), "higher_is_better": scorer.higher_is_better}
        stored_results = getattr(scorer, "stored_results", None)

        def batches() -> Iterator[Batch]:
            # Results the run already holds (the composite scorer's judge records) are looked up here, on
            # the driver, which has the store; the batch carries them to be written in their place.
            for batch in pending.batches(chunk_size):
                known = stored_results(store, list({image: None for _, (image, _) in batch})) if stored_results \
                    else {}
                yield [(key, (image, prompt, known.get(image))) for key, (image, prompt) in batch]

        failed_before = summary.failed
        job = Job(summary.stage, scorer, ScoreBatch(base), _score_images, factory=factory, needs_backend=_score_images)
        new = drive(engine or LocalEngine(), job, store, Planned(batches(), todo), summary)
    # Every failed record written changed the store (its key was pending); the rest are the new ones.
    summary.new = new - (summary.failed - failed_before)
    return summary


def _score_images(item: tuple) -> list[str]:
    image, _, known = item
    return [] if isinstance(known, ScoreResult) else [image]


@dataclass(frozen=True)
class ScoreBatch:
    """A chunk of (image, prompt) items scored in one call; runs wherever the engine puts it."""

    base: dict[str, Any]

    def __call__(self, scorer: Scorer, batch: Batch, images: Images, state: dict) -> list[Record]:
        base = self.base
        out: list[Record] = []

        def fail(key: str, item: str, image: str, prompt: str | None, reason: str) -> Record:
            return Record.failed(key, SCORE, item, reason, image=image, prompt=prompt, **base)

        def done(key: str, item: str, image: str, prompt: str | None, res: ScoreResult) -> Record:
            if not res.ok:
                return fail(key, item, image, prompt, res.error or "no score")
            return Record(key, SCORE, item, {
                **base, "image": image, "prompt": prompt, "score": float(res.score), "tokens": res.tokens,
                "truncated": res.truncated, **({"extra": res.extra} if res.extra else {})})

        decoded = decode_each(images, [image for _, (image, _, known) in batch if not isinstance(known, ScoreResult)])
        ready, reused = [], {}
        for key, (image, prompt, known) in batch:
            item = f"{image[:12]}|{(prompt or '')[:40]}"
            if isinstance(known, ScoreResult):
                out.append(done(key, item, image, prompt, known))
            elif isinstance(decoded[image], InputError):
                out.append(fail(key, item, image, prompt, str(decoded[image])))
            else:
                ready.append((key, item, image, prompt))
                if isinstance(known, StoredInput):
                    reused[image] = known.value
        if hasattr(scorer, "reuse"):  # this batch's stored inputs, none from an earlier batch
            scorer.reuse([(decoded[image], value) for image, value in reused.items()])
        try:
            results = scorer.score([(decoded[image], prompt) for _, _, image, prompt in ready]) if ready else []
        except EndpointUnreachable:  # an endpoint behind the scorer (an LLM intent parser) is down: stop
            raise
        except Exception as exc:  # a model error (out of memory, a bug) fails this chunk's items, not the run
            return out + [fail(key, item, image, prompt, f"scorer error: {exc!r}") for key, item, image, prompt in ready]
        out.extend(done(key, item, image, prompt, res) for (key, item, image, prompt), res in zip(ready, results))
        return out


def run_pairwise(store: RunStore, scorer: Any, *, chunk_size: int = 64, retry_failed: bool = False,
                 engine: Engine | None = None, factory: Callable[[], Any] | None = None) -> StageSummary:
    """A pairwise scorer's verdict on every distinct (I_o, I_a, p_a) of the run's pairs (as the labels
    stage reads them: a pair without p_a is asked about "", pairs imported without images are skipped)."""
    identity = scorer.identity()
    keys = score_key_template(identity)
    summary = StageSummary(f"{SCORE}:{scorer.name}")
    with Pending(summary, store, retry_failed=retry_failed) as pending:
        for _, (image_o, image_a, p_a) in stored_fields(store, IMAGES, ("image_o", "image_a", "p_a"),
                                                        defaults={"p_a": ""}):
            if isinstance(image_o, str) and isinstance(image_a, str) and has_pixels(image_o) and has_pixels(image_a):
                pending.add(keys.digest_json(json_text([image_o, image_a]), json_text(p_a)), [image_o, image_a, p_a])
        todo = pending.finish()
        summary.total = pending.total
        base = {"scorer": scorer.name, "scorer_id": spec_hash(identity), "higher_is_better": True, "pairwise": True,
                "scorer_desc": scorer.describe()}
        failed_before = summary.failed
        job = Job(summary.stage, scorer, PairwiseBatch(base), _pair_images, factory=factory)
        new = drive(engine or LocalEngine(), job, store, Planned(pending.batches(chunk_size), todo), summary,
                    unit="pair")
    summary.new = new - (summary.failed - failed_before)
    return summary


def _pair_images(item: list) -> list[str]:
    return item[:2]


@dataclass(frozen=True)
class PairwiseBatch:
    """A chunk of (I_o, I_a, p_a) put to a pairwise scorer in one call."""

    base: dict[str, Any]

    def __call__(self, scorer: Any, batch: Batch, images: Images, state: dict) -> list[Record]:
        from ..labels.vlm import PairItem  # the pairwise question's input; imports nothing heavy

        out: list[Record] = []
        decoded = decode_each(images, [sha for _, item in batch for sha in item[:2]])
        ready, items = [], []
        for key, (image_o, image_a, p_a) in batch:
            item = f"{image_o[:12]}|{image_a[:12]}|{p_a[:40]}"
            fields = {"image_o": image_o, "image_a": image_a, "prompt": p_a}
            error = decode_error(decoded, (image_o, image_a))
            if error is not None:
                out.append(Record.failed(key, SCORE, item, str(error), **self.base, **fields))
                continue
            ready.append((key, item, fields))
            items.append(PairItem(decoded[image_o], decoded[image_a], p_a,
                                  order_key=scorer.order_key(image_o, image_a, p_a)))
        try:
            answers = scorer.compare(items) if items else []
        except EndpointUnreachable:
            raise  # the endpoint is down: stop; what was answered stays stored
        except Exception as exc:  # a model error fails this chunk's pairs, not the run
            return out + [Record.failed(key, SCORE, item, f"scorer error: {exc!r}", **self.base, **fields)
                          for key, item, fields in ready]
        for (key, item, fields), ans in zip(ready, answers):
            if not ans.ok:
                out.append(Record.failed(key, SCORE, item, ans.error or "no answer", **self.base, **fields))
                continue
            out.append(Record(key, SCORE, item, {
                **self.base, **fields, "prefers": ans.prefers, "prob_a": ans.prob_a, "answers": ans.answers,
                "disagree": ans.disagree, "discrete": ans.discrete}))
        return out


def make_scorer(name: str, options: dict | None = None) -> Scorer:
    """The scorer ``name`` (a registered name, or ``NAME:ALIAS`` for another instance with its own options,
    such as two VLMs as pairwise reward models) built with ``options``. An alias is the instance's name:
    its records, identity, manifest entry and table rows carry it. Errors do not repeat the scorer's name:
    the caller that reports them (``Run.score``, the config check) puts "scorer NAME: " in front once."""
    cls = get("scorers", name.split(":", 1)[0])
    try:
        scorer = cls(**(options or {}))
    except TypeError as exc:
        raise ConfigError(f"bad options {sorted(options or {})}: {exc}") from None
    if name != cls.name:
        scorer.name = name  # the instance's own name, shadowing the class's
    return scorer
