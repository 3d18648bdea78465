"""Where a stage's model work runs: in this process (``local``, the default) or on a Ray cluster (``ray``).

A stage is split in three so that both engines run the very same code on the very same batches:

1. **plan** (the driver, this process): read the run's inputs, key every item, drop the keys already
   stored (``stage.Pending``) and cut what is left into batches of the stage's batch size;
2. **compute** (``Job.compute``, on a worker): ``compute(backend, batch, images, state) -> [Record]``,
   one ok or failed record per item, from the loaded backend and the images the batch reads;
3. **write** (the driver): records go to the run store through one ``RecordWriter``, in the order the
   batches were planned, whichever worker finished first.

The run store stays the single source of truth and has a single writer. A rerun plans only the keys not
stored, so it resumes whatever stopped the last one (a kill, a lost worker, a dead endpoint).

``LocalEngine`` runs ``compute`` inline on the backend the stage built; ``engine.ray_engine.RayEngine``
runs it in actor pools, each actor holding one loaded backend (``ray`` config section).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, Sequence

from ..errors import InputError

if TYPE_CHECKING:
    from PIL import Image

    from ..config import AuditConfig
    from ..stage import StageSummary
    from ..store import Record, RunStore

Batch = list  # [(key, item), ...] as planned; items are plain data (they travel to workers)


class Images(Protocol):
    """The images a batch reads and the ones it makes, by content hash."""

    def get(self, sha: str) -> Image.Image:
        """The stored image ``sha``, decoded; an InputError naming it if it cannot be."""

    def put(self, image: Image.Image, png_level: int) -> str:
        """Store ``image`` as a PNG at ``png_level``; its hash."""


@dataclass(frozen=True)
class Job:
    """One backend's work in one stage.

    ``stage`` names it as summaries do (``score:clip``, ``judge:vlm``, ``labels:vlm``,
    ``generate:sdxl-base``): the ``ray.backends`` entry with its pool size and resources has this name.
    ``backend`` is the built, not yet loaded backend (the local engine uses it; a Ray worker builds its
    own with ``factory``, a picklable zero-argument callable, or gets ``backend`` pickled when there is
    none). ``compute`` must be picklable (a module-level function or a dataclass of plain data).
    ``images_of(item)`` lists the hashes an item reads, for workers that get the bytes from the driver.
    ``load``: call ``backend.load()`` before the first batch (generators load on their first call).
    ``needs_backend(item)``: whether an item needs the loaded backend (default: every item does); a batch
    none of whose items does (scores the run already holds) is computed where it is planned, and a stage
    made only of such batches starts no worker.
    """

    stage: str
    backend: Any
    compute: Callable[[Any, Batch, Images, dict], list["Record"]]
    images_of: Callable[[Any], Iterable[str]]
    factory: Callable[[], Any] | None = None
    load: bool = True
    needs_backend: Callable[[Any], bool] | None = None

    def wants_backend(self, batch: Batch) -> bool:
        return self.needs_backend is None or any(self.needs_backend(item) for _, item in batch)


@dataclass
class Done:
    """A batch's outcome, in the order batches were planned: its records, or why it was lost (its worker
    died more often than ``ray.max_retries`` allows; its items are not stored, so a rerun computes them)."""

    batch: Batch
    records: list["Record"] = field(default_factory=list)
    seconds: float = 0.0
    lost: str | None = None
    images: dict[str, bytes] = field(default_factory=dict)  # images made by a worker without the run's folder


class Engine(Protocol):
    name: str

    def map(self, job: Job, store: RunStore, batches: Iterable[Batch]) -> Iterator[Done]:
        """Run ``job.compute`` over ``batches``; outcomes in the order of ``batches``."""

    def close(self) -> None:
        ...


class LocalImages:
    """The run's images read through the process's shared decode cache (``images.shared``)."""

    def __init__(self, store: RunStore):
        self.store = store

    def get(self, sha: str) -> Image.Image:
        from ..images.shared import decode_stored

        return decode_stored(self.store, sha)

    def put(self, image: Image.Image, png_level: int) -> str:
        return self.store.put_image(image, png_level=png_level)


class LocalEngine:
    """Every batch in this process, one after another, on the backend the stage built."""

    name = "local"

    def map(self, job: Job, store: RunStore, batches: Iterable[Batch]) -> Iterator[Done]:
        images, state, loaded = LocalImages(store), {}, False
        for batch in batches:
            if not loaded and job.load:
                job.backend.load()  # only once there is work: a stage with nothing to do loads nothing
            loaded = True
            started = time.monotonic()
            records = job.compute(job.backend, batch, images, state)
            yield Done(batch, records, time.monotonic() - started)

    def close(self) -> None:
        pass


def make_engine(config: AuditConfig) -> Engine:
    """The engine the config's ``engine`` names."""
    if config.engine == "ray":
        from .ray_engine import RayEngine

        return RayEngine(config.ray)
    return LocalEngine()


def drive(engine: Engine, job: Job, store: RunStore, batches: Iterable[Batch], summary: StageSummary, *,
          unit: str = "item") -> int:
    """Run ``job`` over ``batches`` with ``engine`` and write every record through one writer, in planned
    order; count failed records (logged with their reason) and lost batches in ``summary``. A batch that
    took ``SLOW_BATCH_S`` or more is committed at once, so a stall in the next one cannot hold it.
    Returns how many records changed the store. The progress bar is named after the job (``score clip``)."""
    from ..stage import SLOW_BATCH_S
    from ..ui import log, progress_counter

    label = job.stage.replace(":", " ", 1)
    with store.writer() as writer, progress_counter(label, total=_count(batches), unit=unit) as advance:
        for done in engine.map(job, store, batches):
            for data in done.images.values():  # images a worker made and sent back: stored before their records
                store.put_image_bytes(data)
            if done.lost is not None:
                summary.lost += len(done.batch)
                log.warning("lost: %s: a batch of %d items: %s; a rerun computes them", job.stage, len(done.batch),
                            done.lost)
            for record in done.records:
                if record.status == "failed":
                    summary.failed += 1
                    log.warning("failed: %s on %s: %s", job.stage, record.item, record.error)
                writer.put(record)
            if done.seconds >= SLOW_BATCH_S:
                writer.flush()
            advance(len(done.batch))
    return writer.new


def _count(batches: Iterable[Batch]) -> int | None:
    return getattr(batches, "total", None)


class Planned:
    """Batches with their total item count known up front (for the progress bar)."""

    def __init__(self, batches: Iterable[Batch], total: int):
        self._batches, self.total = batches, total

    def __iter__(self) -> Iterator[Batch]:
        return iter(self._batches)


def decode_each(images: Images, shas: Sequence[str]) -> dict[str, Any]:
    """Each distinct hash decoded once: the image, or the InputError that names why it cannot be."""
    out: dict[str, Any] = {}
    for sha in shas:
        if sha not in out:
            try:
                out[sha] = images.get(sha)
            except InputError as exc:
                out[sha] = exc
    return out


def decode_error(decoded: dict[str, Any], shas: Sequence[str]) -> InputError | None:
    """The first of ``shas`` that ``decode_each`` could not decode, as its error; None when all decoded."""
    return next((decoded[sha] for sha in shas if isinstance(decoded[sha], InputError)), None)
