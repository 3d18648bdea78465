"""The judge stage: every distinct image of the run's pairs, per judge, judged on every dimension."""

from __future__ import annotations

from ..dimensions import Catalogue
from ..errors import InputError
from ..images.decode import decode_image
from ..records import IMAGES, JUDGE, judge_key
from ..registry import get
from ..stage import StageSummary
from ..store import Record, RunStore
from ..ui import log, progress
from .base import Judge


def run_images(store: RunStore) -> list[str]:
    """Distinct image hashes of the run's ok image pairs, in first-seen order."""
    seen: dict[str, None] = {}
    for r in store.records(IMAGES):
        seen.setdefault(r.data["image_o"])
        seen.setdefault(r.data["image_a"])
    return list(seen)


def run_judge(store: RunStore, judge: Judge, catalogue: Catalogue, *, batch_size: int = 16,
              retry_failed: bool = False) -> StageSummary:
    dims = catalogue.keys()
    identity = judge.identity()
    images = run_images(store)
    keys = {sha: judge_key(judge=identity, image=sha, dims=dims) for sha in images}
    done = store.keys(JUDGE, "ok" if retry_failed else None)
    todo = [sha for sha in images if keys[sha] not in done]
    summary = StageSummary(f"{JUDGE}:{judge.name}", total=len(images), cached=len(images) - len(todo))
    for start in progress(range(0, len(todo), batch_size), total=-(-len(todo) // batch_size), desc=judge.name):
        batch = todo[start:start + batch_size]
        decoded, ok = [], []
        for sha in batch:
            try:
                decoded.append(decode_image(store.image_path(sha), name=sha[:12]))
                ok.append(sha)
            except InputError as exc:
                summary.failed += store.put(Record.failed(keys[sha], JUDGE, sha[:12], str(exc), judge=judge.name,
                                                          image=sha))
        for sha, result in zip(ok, judge.judge(decoded, dims) if decoded else []):
            if result.error:
                log.warning("failed: judge %s on %s: %s", judge.name, sha[:12], result.error)
                summary.failed += store.put(Record.failed(keys[sha], JUDGE, sha[:12], result.error,
                                                          judge=judge.name, image=sha))
                continue
            summary.new += store.put(Record(keys[sha], JUDGE, sha[:12], {
                "judge": judge.name, "image": sha, "scores": result.scores,
                "covered": [d for d, v in result.scores.items() if v is not None], **result.extra}))
    return summary


def make_judge(name: str) -> Judge:
    return get("judges", name)()
