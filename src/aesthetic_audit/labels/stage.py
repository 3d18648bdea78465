"""The labels stage: each VLM labeller labels every distinct (I_o, I_a, p_a) of the run's image pairs.

Pairs with the same two images and the same p_a share one label (their key has no generator or pair
id), so re-importing a pair or rendering it under two names labels it once. The order in which the
labeller sees the two images is drawn from the run's seed and the pair's content and recorded.
"""

from __future__ import annotations

from typing import Any

from ..clients.openai_compat import EndpointUnreachable
from ..errors import ConfigError, InputError
from ..hashing import spec_hash
from ..images.decode import decode_image
from ..records import IMAGES, LABELS, has_pixels, label_key
from ..registry import get
from ..stage import StageSummary
from ..store import Record, RunStore
from ..ui import log, progress_chunks
from .vlm import PairItem


def pair_items(store: RunStore) -> list[dict[str, Any]]:
    """The distinct (image_o, image_a, p_a) of the run's ok image pairs, first-seen order, each with
    the first image pair that has it."""
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for rec in store.records(IMAGES):
        d = rec.data
        if not (has_pixels(d["image_o"]) and has_pixels(d["image_a"])):
            continue  # imported without images: nothing to show a labeller
        seen.setdefault((d["image_o"], d["image_a"], d.get("p_a", "")), {
            "image_pair_id": rec.key, "pair_id": d.get("pair_id"), "model": d.get("model"),
            "image_o": d["image_o"], "image_a": d["image_a"], "p_a": d.get("p_a", "")})
    return list(seen.values())


def run_labels(store: RunStore, labeller: Any, *, seed: int, name: str | None = None, batch_size: int = 8,
               retry_failed: bool = False) -> StageSummary:
    name = name or labeller.name
    identity = labeller.identity()
    labeller_id = spec_hash(identity)
    items = pair_items(store)
    keys = [label_key(source=identity, image_o=it["image_o"], image_a=it["image_a"], prompt=it["p_a"], seed=seed)
            for it in items]
    summary = StageSummary(f"{LABELS}:{name}", total=len(items))
    pending = summary.pending(keys, store, retry_failed)
    todo = [(it, key) for it, key in zip(items, keys) if key in pending]
    if todo:
        labeller.load()
    base = {"source": f"vlm:{name}", "labeller": name, "labeller_id": labeller_id, "labeller_desc": labeller.describe(),
            "seed": seed}

    def fail(it: dict[str, Any], key: str, reason: str) -> None:
        log.warning("failed: labeller %s on pair %s: %s", name, it["image_pair_id"][:12], reason)
        store.put(Record.failed(key, LABELS, f"{name}:{it['image_pair_id'][:12]}", reason, **base, **it))
        summary.failed += 1

    for chunk in progress_chunks(len(todo), batch_size, desc=f"labels {name}", unit="pair"):
        ready, batch = [], []
        for it, key in todo[chunk.start:chunk.stop]:
            try:
                pair = PairItem(decode_image(store.image_path(it["image_o"]), name=it["image_o"][:12]),
                                decode_image(store.image_path(it["image_a"]), name=it["image_a"][:12]),
                                it["p_a"], order_key=spec_hash({"seed": seed, "image_o": it["image_o"],
                                                                "image_a": it["image_a"], "p_a": it["p_a"]}))
            except InputError as exc:
                fail(it, key, str(exc))
                continue
            ready.append((it, key))
            batch.append(pair)
        try:
            results = labeller.label(batch) if batch else []
        except EndpointUnreachable:
            raise  # the endpoint is down: stop; what was labelled stays stored
        except Exception as exc:  # a model error fails this batch's pairs, not the run
            for it, key in ready:
                fail(it, key, f"labeller error: {exc!r}")
            continue
        for (it, key), res in zip(ready, results):
            if res.error or res.value is None:
                fail(it, key, res.error or "no label")
                continue
            summary.new += store.put(Record(key, LABELS, f"{name}:{it['image_pair_id'][:12]}", {
                **base, **it, "value": res.value, "answers": res.answers, "disagree": res.disagree}))
    return summary


def make_labeller(name: str, options: dict[str, Any] | None = None) -> Any:
    """The labeller ``name`` (``NAME`` or ``NAME:ALIAS``) built with ``options``; building loads nothing."""
    cls = get("labellers", name.split(":", 1)[0])
    try:
        return cls(**(options or {}))
    except TypeError as exc:
        raise ConfigError(f"bad options {sorted(options or {})}: {exc}") from None
