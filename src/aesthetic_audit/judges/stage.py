"""The judge stage: every distinct image of the run's pairs, per judge, judged on every dimension."""

from __future__ import annotations

from typing import Any

from ..clients.openai_compat import EndpointUnreachable
from ..dimensions import Catalogue
from ..errors import ConfigError, InputError
from ..hashing import spec_hash
from ..images.decode import decode_image
from ..records import IMAGES, JUDGE, has_pixels, judge_key
from ..registry import get
from ..stage import StageSummary
from ..store import Record, RunStore
from ..ui import log, progress_chunks
from .base import Judge


def run_images(store: RunStore) -> list[str]:
    """Distinct image hashes of the run's ok image pairs (those with pixels), in first-seen order."""
    seen: dict[str, None] = {}
    for r in store.records(IMAGES):
        seen.setdefault(r.data["image_o"])
        seen.setdefault(r.data["image_a"])
    return [sha for sha in seen if has_pixels(sha)]  # pairs imported without images have nothing to judge


def run_judge(store: RunStore, judge: Judge, catalogue: Catalogue, *, batch_size: int = 16,
              retry_failed: bool = False, name: str | None = None) -> StageSummary:
    """``name`` is what the records and tables call this judge (``vlm:gpt`` for a second VLM judge);
    by default the judge's registered name."""
    name = name or judge.name
    dims = catalogue.keys()
    identity = judge.identity()
    images = run_images(store)
    # A judge's records depend on the dimensions it judges, not on every dimension in the catalogue.
    judged = [d for d in dims if d in judge.covers] if judge.covers else dims
    keys = {sha: judge_key(judge=identity, image=sha, dims=judged) for sha in images}
    judge_id = spec_hash(identity)  # tells apart judgements of one judge name under other options
    summary = StageSummary(f"{JUDGE}:{name}", total=len(images))
    pending = summary.pending(keys.values(), store, retry_failed)
    todo = [sha for sha in images if keys[sha] in pending]
    if todo:
        judge.load()
    for chunk in progress_chunks(len(todo), batch_size, desc=f"judge {name}", unit="image"):
        _judge_batch(store, judge, name, dims, todo[chunk.start:chunk.stop], keys, judge_id, summary)
    return summary


def _judge_batch(store: RunStore, judge: Judge, name: str, dims: list[str], batch: list[str],
                 keys: dict[str, str], judge_id: str, summary: StageSummary) -> None:
    decoded, ok = [], []

    def fail(sha: str, reason: str) -> None:
        log.warning("failed: judge %s on %s: %s", name, sha[:12], reason)
        store.put(Record.failed(keys[sha], JUDGE, f"{name}:{sha[:12]}", reason, judge=name, image=sha))
        summary.failed += 1

    for sha in batch:
        try:
            decoded.append(decode_image(store.image_path(sha), name=sha[:12]))
            ok.append(sha)
        except InputError as exc:
            fail(sha, str(exc))
    try:
        results = judge.judge(decoded, dims) if decoded else []
    except EndpointUnreachable:
        raise  # the endpoint is down: stop the stage; what was judged stays stored
    except Exception as exc:  # a model error fails this batch's items, not the run
        for sha in ok:
            fail(sha, f"judge error: {exc!r}")
        return
    for sha, result in zip(ok, results):
        if result.error:
            fail(sha, result.error)
            continue
        summary.new += store.put(Record(keys[sha], JUDGE, sha[:12], {
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
