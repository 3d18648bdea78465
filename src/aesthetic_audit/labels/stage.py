"""The labels stage: each VLM labeller labels every distinct (I_o, I_a, p_a) of the run's image pairs.

Pairs with the same two images and the same p_a share one label (their key has no generator or pair
id), so re-importing a pair or rendering it under two names labels it once. The order in which the
labeller sees the two images is drawn from the run's seed and the pair's content and recorded.

Pairs are read a page at a time and keyed as they come (``stage.Pending``); labels are written in chunks
(``RunStore.writer``), and at once after a slow batch, so a stalled endpoint holds no finished label.
The labelling itself (``LabelsBatch``) runs on the run's engine (``engine``): in this process, or on Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..engine import Batch, Engine, Images, Job, LocalEngine, Planned, decode_each, decode_error, drive
from ..errors import ConfigError, EndpointUnreachable
from ..hashing import spec_hash
from ..records import IMAGES, LABELS, has_pixels, json_text, label_key_template
from ..registry import get
from ..stage import Pending, StageSummary, stored_fields
from ..store import Record, RunStore
from .vlm import PairItem


def run_labels(store: RunStore, labeller: Any, *, seed: int, name: str | None = None, batch_size: int = 8,
               retry_failed: bool = False, engine: Engine | None = None,
               factory: Callable[[], Any] | None = None) -> StageSummary:
    name = name or labeller.name
    identity = labeller.identity()
    labeller_id = spec_hash(identity)
    keys = label_key_template(identity, seed)
    summary = StageSummary(f"{LABELS}:{name}")
    with Pending(summary, store, retry_failed=retry_failed) as pending:
        # The distinct (image_o, image_a, p_a) of the run's ok image pairs, first-seen order, each with
        # the first image pair that has it; pairs imported without images have nothing to show.
        # A pair without p_a is labelled against "".
        fields = ("image_o", "image_a", "p_a")
        for pair_key, (image_o, image_a, p_a) in stored_fields(store, IMAGES, fields, defaults={"p_a": ""}):
            if isinstance(image_o, str) and isinstance(image_a, str) and has_pixels(image_o) and has_pixels(image_a):
                pending.add(keys.digest_json(json_text(image_o), json_text(image_a), json_text(p_a)),
                            [pair_key, image_o, image_a, p_a])
        todo = pending.finish()
        summary.total = pending.total
        base = {"source": f"vlm:{name}", "labeller": name, "labeller_id": labeller_id,
                "labeller_desc": labeller.describe(), "seed": seed}
        failed_before = summary.failed

        def batches() -> Iterator[Batch]:
            for chunk in pending.batches(batch_size):  # the pair's other fields are read here, on the driver
                yield [(key, _item(store, *values)) for key, values in chunk]

        job = Job(summary.stage, labeller, LabelsBatch(name, base, seed), _label_images, factory=factory)
        new = drive(engine or LocalEngine(), job, store, Planned(batches(), todo), summary, unit="pair")
    # Every failed record written changed the store (its key was pending); the rest are the new ones.
    summary.new = new - (summary.failed - failed_before)
    return summary


def _label_images(item: dict[str, Any]) -> list[str]:
    return [item["image_o"], item["image_a"]]


@dataclass(frozen=True)
class LabelsBatch:
    """A batch of pairs labelled in one call; runs wherever the engine puts it."""

    name: str
    base: dict[str, Any]
    seed: int

    def __call__(self, labeller: Any, chunk: Batch, images: Images, state: dict) -> list[Record]:
        out, ready, batch = [], [], []

        def fail(it: dict[str, Any], key: str, reason: str) -> Record:
            return Record.failed(key, LABELS, f"{self.name}:{it['image_pair_id'][:12]}", reason, **self.base, **it)

        decoded = decode_each(images, [sha for _, it in chunk for sha in (it["image_o"], it["image_a"])])
        for key, it in chunk:
            error = decode_error(decoded, (it["image_o"], it["image_a"]))
            if error is not None:
                out.append(fail(it, key, str(error)))
                continue
            ready.append((it, key))
            batch.append(PairItem(decoded[it["image_o"]], decoded[it["image_a"]], it["p_a"],
                                  order_key=spec_hash({"seed": self.seed, "image_o": it["image_o"],
                                                       "image_a": it["image_a"], "p_a": it["p_a"]})))
        try:
            results = labeller.label(batch) if batch else []
        except EndpointUnreachable:
            raise  # the endpoint is down: stop; what was labelled stays stored
        except Exception as exc:  # a model error fails this batch's pairs, not the run
            return out + [fail(it, key, f"labeller error: {exc!r}") for it, key in ready]
        for (it, key), res in zip(ready, results):
            if res.error or res.value is None:
                out.append(fail(it, key, res.error or "no label"))
                continue
            out.append(Record(key, LABELS, f"{self.name}:{it['image_pair_id'][:12]}", {
                **self.base, **it, "value": res.value, "answers": res.answers, "disagree": res.disagree}))
        return out


def _item(store: RunStore, pair_key: str, image_o: str, image_a: str, p_a: str) -> dict[str, Any]:
    """What a label record copies from the first image pair with its (I_o, I_a, p_a); the pair's other
    fields are read only for the pairs still to label."""
    pair = store.get(pair_key)
    data = pair.data if pair is not None else {}
    return {"image_pair_id": pair_key, "pair_id": data.get("pair_id"), "model": data.get("model"),
            "image_o": image_o, "image_a": image_a, "p_a": p_a}


def make_labeller(name: str, options: dict[str, Any] | None = None) -> Any:
    """The labeller ``name`` (``NAME`` or ``NAME:ALIAS``) built with ``options``; building loads nothing."""
    cls = get("labellers", name.split(":", 1)[0])
    try:
        return cls(**(options or {}))
    except TypeError as exc:
        raise ConfigError(f"bad options {sorted(options or {})}: {exc}") from None
