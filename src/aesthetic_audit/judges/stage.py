"""The judge stage: every distinct image of the run's pairs, per judge, judged on every dimension.

Images are read from the pairs a page at a time and keyed as they come (``stage.Pending``); the judged
ones are written in chunks (``RunStore.writer``), so a killed run keeps all but the chunk in flight.
The judging itself (``JudgeBatch``) runs on the run's engine (``engine``): in this process, or on Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..dimensions import Catalogue
from ..engine import Batch, Engine, Images, Job, LocalEngine, Planned, decode_each, drive
from ..errors import ConfigError, EndpointUnreachable, InputError
from ..hashing import spec_hash
from ..records import IMAGES, JUDGE, has_pixels, judge_key_template, json_text
from ..registry import get
from ..stage import Pending, StageSummary, stored_fields
from ..store import Record, RunStore
from .base import Judge


def run_judge(store: RunStore, judge: Judge, catalogue: Catalogue, *, batch_size: int = 16,
              retry_failed: bool = False, name: str | None = None, engine: Engine | None = None,
              factory: Callable[[], Judge] | None = None) -> StageSummary:
    """``name`` is what the records and tables call this judge (``vlm:gpt`` for a second VLM judge);
    by default the judge's registered name. ``engine`` runs the batches (default: this process);
    ``factory`` builds the prepared judge on a Ray worker."""
    name = name or judge.name
    dims = catalogue.keys()
    identity = judge.identity()
    # A judge's records depend on the dimensions it judges, not on every dimension in the catalogue.
    judged = [d for d in dims if d in judge.covers] if judge.covers else dims
    keys = judge_key_template(identity, judged)
    summary = StageSummary(f"{JUDGE}:{name}")
    with Pending(summary, store, retry_failed=retry_failed) as pending:
        # Distinct images of the run's ok pairs in first-seen order; pairs imported without their
        # images have nothing to judge.
        for _, images in stored_fields(store, IMAGES, ("image_o", "image_a")):
            for sha in images:
                if isinstance(sha, str) and has_pixels(sha):
                    pending.add(keys.digest_json(json_text(sha)), sha)
        todo = pending.finish()
        summary.total = pending.total
        failed_before = summary.failed
        # judge_id tells apart judgements of one judge name under other options
        job = Job(summary.stage, judge, JudgeBatch(name, spec_hash(identity), tuple(dims)), _judge_images,
                  factory=factory)
        new = drive(engine or LocalEngine(), job, store, Planned(pending.batches(batch_size), todo), summary,
                    unit="image")
    # Every failed record written changed the store (its key was pending); the rest are the new ones.
    summary.new = new - (summary.failed - failed_before)
    return summary


def _judge_images(sha: str) -> list[str]:
    return [sha]


@dataclass(frozen=True)
class JudgeBatch:
    """A batch of images judged on every dimension in one call; runs wherever the engine puts it."""

    name: str
    judge_id: str
    dims: tuple[str, ...]

    def __call__(self, judge: Judge, batch: Batch, images: Images, state: dict) -> list[Record]:
        name, out, ok = self.name, [], []

        def fail(key: str, sha: str, reason: str) -> Record:
            return Record.failed(key, JUDGE, f"{name}:{sha[:12]}", reason, judge=name, image=sha)

        decoded = decode_each(images, [sha for _, sha in batch])
        for key, sha in batch:
            if isinstance(decoded[sha], InputError):
                out.append(fail(key, sha, str(decoded[sha])))
            else:
                ok.append((key, sha))
        try:
            results = judge.judge([decoded[sha] for _, sha in ok], list(self.dims)) if ok else []
        except EndpointUnreachable:
            raise  # the endpoint is down: stop the stage; what was judged stays stored
        except Exception as exc:  # a model error fails this batch's items, not the run
            return out + [fail(key, sha, f"judge error: {exc!r}") for key, sha in ok]
        for (key, sha), result in zip(ok, results):
            if result.error:
                out.append(fail(key, sha, result.error))
                continue
            out.append(Record(key, JUDGE, sha[:12], {
                "judge": name, "judge_id": self.judge_id, "image": sha, "scores": result.scores,
                "covered": [d for d, v in result.scores.items() if v is not None], **result.extra}))
        return out


def make_prepared_judge(name: str, options: dict[str, Any] | None, catalogue: Catalogue,
                        rubric_options: dict[str, list[dict]] | None) -> Judge:
    """``make_judge`` then ``prepare``: what a worker calls to build the judge the driver built."""
    judge = make_judge(name, options)
    judge.prepare(catalogue, rubric_options)
    return judge


def make_judge(name: str, options: dict[str, Any] | None = None) -> Judge:
    """The judge ``name`` (a registered name, or ``NAME:ALIAS`` for a second instance with its own
    options) built with ``options``; building loads nothing."""
    cls = get("judges", name.split(":", 1)[0])
    try:
        return cls(**(options or {}))
    except TypeError as exc:
        raise ConfigError(f"bad options {sorted(options or {})}: {exc}") from None
