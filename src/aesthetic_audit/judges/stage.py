"""The judge stage: every distinct image of the run's pairs, per judge, judged on every dimension.

Images are read from the pairs a page at a time and keyed as they come (``stage.Pending``); the judged
ones are written in chunks (``RunStore.writer``), so a killed run keeps all but the chunk in flight.
"""

from __future__ import annotations

import time
from typing import Any

from ..dimensions import Catalogue
from ..errors import ConfigError, EndpointUnreachable, InputError
from ..hashing import spec_hash
from ..images.shared import decode_stored
from ..records import IMAGES, JUDGE, has_pixels, judge_key_template, json_text
from ..registry import get
from ..stage import SLOW_BATCH_S, Pending, StageSummary, stored_fields
from ..store import Record, RecordWriter, RunStore
from ..ui import log, progress_counter
from .base import Judge


def run_judge(store: RunStore, judge: Judge, catalogue: Catalogue, *, batch_size: int = 16,
              retry_failed: bool = False, name: str | None = None) -> StageSummary:
    """``name`` is what the records and tables call this judge (``vlm:gpt`` for a second VLM judge);
    by default the judge's registered name."""
    name = name or judge.name
    dims = catalogue.keys()
    identity = judge.identity()
    # A judge's records depend on the dimensions it judges, not on every dimension in the catalogue.
    judged = [d for d in dims if d in judge.covers] if judge.covers else dims
    keys = judge_key_template(identity, judged)
    judge_id = spec_hash(identity)  # tells apart judgements of one judge name under other options
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
        if todo:
            judge.load()
        failed_before = summary.failed
        with store.writer() as writer, progress_counter(f"judge {name}", total=todo, unit="image") as advance:
            for batch in pending.batches(batch_size):
                started = time.monotonic()
                _judge_batch(store, writer, judge, name, dims, batch, judge_id, summary)
                if time.monotonic() - started >= SLOW_BATCH_S:
                    writer.flush()
                advance(len(batch))
    # Every failed record written changed the store (its key was pending); the rest are the new ones.
    summary.new = writer.new - (summary.failed - failed_before)
    return summary


def _judge_batch(store: RunStore, writer: RecordWriter, judge: Judge, name: str, dims: list[str],
                 batch: list[tuple[str, str]], judge_id: str, summary: StageSummary) -> None:
    decoded, ok = [], []

    def fail(key: str, sha: str, reason: str) -> None:
        log.warning("failed: judge %s on %s: %s", name, sha[:12], reason)
        writer.put(Record.failed(key, JUDGE, f"{name}:{sha[:12]}", reason, judge=name, image=sha))
        summary.failed += 1

    for key, sha in batch:
        try:
            decoded.append(decode_stored(store, sha))
            ok.append((key, sha))
        except InputError as exc:
            fail(key, sha, str(exc))
    try:
        results = judge.judge(decoded, dims) if decoded else []
    except EndpointUnreachable:
        raise  # the endpoint is down: stop the stage; what was judged stays stored
    except Exception as exc:  # a model error fails this batch's items, not the run
        for key, sha in ok:
            fail(key, sha, f"judge error: {exc!r}")
        return
    for (key, sha), result in zip(ok, results):
        if result.error:
            fail(key, sha, result.error)
            continue
        writer.put(Record(key, JUDGE, sha[:12], {
            "judge": name, "judge_id": judge_id, "image": sha, "scores": result.scores,
            "covered": [d for d, v in result.scores.items() if v is not None], **result.extra}))


def make_judge(name: str, options: dict[str, Any] | None = None) -> Judge:
    """The judge ``name`` (a registered name, or ``NAME:ALIAS`` for a second instance with its own
    options) built with ``options``; building loads nothing."""
    cls = get("judges", name.split(":", 1)[0])
    try:
        return cls(**(options or {}))
    except TypeError as exc:
        raise ConfigError(f"bad options {sorted(options or {})}: {exc}") from None
