"""The Ray engine: a stage's batches run in a pool of Ray actors, each holding one loaded backend.

The driver (this process) plans the batches, keeps the run store and is its only writer (see
``engine``). For each backend it starts ``workers`` actors with the backend's ``num_cpus`` and
``num_gpus`` (``ray.backends.STAGE:NAME``, else the ``ray`` section's defaults); each actor builds the
backend once (``Job.factory``, or the driver's backend pickled) and loads it. The driver keeps
``in_flight`` batches queued on every actor and writes the outcomes in planned order, so the records, and
the order they are stored in, are those of the local engine.

Images travel by content hash. With ``images: shared`` a worker reads and writes the run's ``images/``
folder itself (a path every node mounts at the same place: NFS, a cluster file system, or one machine);
with ``send`` the driver ships the bytes a batch reads and stores the images a worker made. ``auto``
writes a probe file into the run and uses ``shared`` when every worker reads it back, else ``send``.

A worker that dies (a killed process, a lost node, out of host memory) loses only the batches it held
(the one it was on and the ones queued on it): Ray restarts the actor (which loads the backend again) and
sends each of them again once it is back, up to ``max_retries`` times (Ray's own task retries); past that
a batch's items are left unstored and counted as lost, so a rerun computes them. With ``max_retries: 0``
every batch that reaches the actor while it restarts is lost too. An error that stops the stage in the
local engine (a dead endpoint, a backend that cannot load) stops it here too, with the same one-line
message.

Test hook: ``AESTHETIC_AUDIT_KILL_WORKER=PATH:N`` makes the first worker that reaches its N-th batch
create PATH and exit at once (only one worker, once: the file is created exclusively).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .. import __version__
from ..errors import AuditError, ConfigError, EndpointUnreachable, EngineError, InputError, require
from ..store.run import ImageFolder
from ..ui import log
from . import Batch, Done, Job, LocalImages

if TYPE_CHECKING:
    from ..config import RayConfig
    from ..store import RunStore

KILL_HOOK = "AESTHETIC_AUDIT_KILL_WORKER"
# Errors a worker passes back by name, so the driver raises the same class the local engine would.
_ERRORS = {cls.__name__: cls for cls in (EndpointUnreachable, ConfigError, InputError, AuditError)}


def _ray():
    return require("ray", "ray", "the Ray engine (--engine ray)")


class FolderImages:
    """A worker's view of the run's images on shared storage."""

    def __init__(self, folder: ImageFolder):
        self.folder = folder

    def get(self, sha: str):
        from ..images.decode import decode_image

        return decode_image(self.folder.path(sha), name=sha[:12])

    def put(self, image, png_level: int) -> str:
        return self.folder.put_image(image, png_level=png_level)


class SentImages:
    """The images a batch reads, as bytes the driver sent (or the reason it could not read them); images
    the batch makes are kept to be sent back."""

    def __init__(self, blobs: dict[str, bytes | str]):
        self.blobs = blobs
        self.made: dict[str, bytes] = {}

    def get(self, sha: str):
        from ..images.decode import decode_image

        blob = self.blobs.get(sha)
        if isinstance(blob, str):
            raise InputError(blob)
        if blob is None:
            raise InputError(f"image {sha} was not sent to the worker")
        return decode_image(blob, name=sha[:12])

    def put(self, image, png_level: int) -> str:
        from ..hashing import bytes_hash
        from ..images.decode import encode_png

        data = encode_png(image, png_level)
        sha = bytes_hash(data)
        self.made[sha] = data
        return sha


class Worker:
    """One actor: builds and loads the backend once, then computes the batches it is sent. Errors come
    back as values (class name and message), never as pickled exceptions, so any error reaches the
    driver intact and is raised there as the class the local engine raises."""

    def __init__(self, payload: dict[str, Any]):
        self.error: tuple[str, str] | None = None
        self.runs = 0
        self.hook = payload.get("hook")
        self.job: Job = payload["job"]
        self.folder: ImageFolder | None = payload.get("folder")
        self.state: dict = {}
        # Ray caps OpenMP, BLAS and torch at the actor's num_cpus through OMP_NUM_THREADS; OpenCV (BRISQUE's
        # resize) reads its own variable, read when it is first imported, which is later.
        if os.environ.get("OMP_NUM_THREADS"):
            os.environ.setdefault("OPENCV_FOR_THREADS_NUM", os.environ["OMP_NUM_THREADS"])
        try:
            if (payload["version"], payload["code"]) != (__version__, code_digest()):
                raise AuditError(f"the worker's aesthetic-audit ({__version__}, code {code_digest()}) is not the "
                                 f"driver's ({payload['version']}, code {payload['code']}): install the same version "
                                 "and source on every node")
            self.backend = self.job.factory() if self.job.factory is not None else self.job.backend
            if self.job.load:
                self.backend.load()
        except Exception as exc:  # noqa: BLE001 - reported with the first batch, as the local engine would
            self.error = _as_value(exc)

    def sees(self, probe: str, token: str) -> bool:
        try:
            return Path(probe).read_text(encoding="utf-8") == token
        except OSError:
            return False

    def run(self, batch: Batch, blobs: dict[str, bytes | str] | None) -> tuple:
        if self.error is not None:
            return ("error", *self.error)
        self.runs += 1
        self._maybe_die()
        images = FolderImages(self.folder) if blobs is None else SentImages(blobs)
        started = time.monotonic()
        try:
            records = self.job.compute(self.backend, batch, images, self.state)
        except Exception as exc:  # noqa: BLE001 - stops the stage on the driver, in one line
            return ("error", *_as_value(exc))
        made = images.made if isinstance(images, SentImages) else {}
        return ("ok", records, made, time.monotonic() - started)

    def _maybe_die(self) -> None:
        if not self.hook:
            return
        path, _, n = self.hook.rpartition(":")
        if self.runs != int(n):
            return
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


def _as_value(exc: BaseException) -> tuple[str, str]:
    for name, cls in _ERRORS.items():
        if isinstance(exc, cls):
            return name, str(exc)
    return "", f"{exc!r}"


@dataclass
class _Entry:
    batch: Batch
    blobs: Any = None  # what the worker needs besides the batch: None (shared folder) or the image bytes
    ref: Any = None
    actor: int = -1
    finished: bool = False
    done: Done | None = None  # computed on the driver (a batch of stored answers)


@dataclass
class _Pool:
    actors: list
    load: list[int] = field(default_factory=list)

    def least_loaded(self) -> int:
        return min(range(len(self.actors)), key=self.load.__getitem__)


class RayEngine:
    """Runs each job in its own actor pool on a local Ray or a cluster (see the module docstring)."""

    name = "ray"

    def __init__(self, config: RayConfig):
        _ray()  # a missing extra is said before any stage starts
        self.config = config
        self._started = False  # whether this engine started Ray (and so shuts it down)
        self._mode: str | None = None

    # -- connecting ----------------------------------------------------------------------------
    def connect(self):
        ray = _ray()
        if ray.is_initialized():
            if not self._started:  # not the one this engine started for an earlier stage
                log.info("ray: using the Ray this process is connected to (%s)", _describe(ray))
            return ray
        address = self.config.address or os.environ.get("RAY_ADDRESS") or None
        options = {"include_dashboard": False, "configure_logging": False, "log_to_driver": True}
        if address:
            _check_reachable(address)
        try:
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(num_cpus=self.config.local_cpus, **options)
        except Exception as exc:  # noqa: BLE001 - a wrong address, a cluster that is down: one line
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise EngineError(f"ray: cannot start or join {where}: {_first_line(exc)}") from None
        self._started = True
        log.info("ray: %s (%s)", f"joined the cluster at {address}" if address else "started on this machine, or "
                 "joined the one `ray start` started here", _describe(ray))
        return ray

    def close(self) -> None:
        if self._started:
            _ray().shutdown()
            self._started = False

    # -- running a job -------------------------------------------------------------------------
    def map(self, job: Job, store: RunStore, batches: Iterable[Batch]) -> Iterator[Done]:
        """Outcomes in planned order. Ray is joined and the pool started at the first batch that needs
        the backend: a stage with nothing to do, or only stored answers to write, starts nothing."""
        pool = _Pool([])
        try:
            yield from self._run(job, store, pool, iter(batches))
        finally:
            if pool.actors:
                ray = _ray()
                for actor in pool.actors:
                    ray.kill(actor)

    def _resources(self, stage: str) -> tuple[int, float, float]:
        c = self.config
        own = c.backends.get(stage)
        pick = (lambda k: getattr(own, k) if own is not None and getattr(own, k) is not None else getattr(c, k))
        return pick("workers"), pick("num_cpus"), pick("num_gpus")

    def _start(self, ray, job: Job, store: RunStore, pool: _Pool) -> None:
        """Start the job's actors into ``pool`` (so that they are killed whatever happens next)."""
        workers, num_cpus, num_gpus = self._resources(job.stage)
        self._check_fits(ray, job.stage, workers, num_cpus, num_gpus)
        payload = {"job": job if job.factory is None else Job(job.stage, None, job.compute, job.images_of,
                                                               job.factory, job.load),
                   "version": __version__, "code": code_digest(), "hook": os.environ.get(KILL_HOOK),
                   # absolute: a worker on another node has another working directory
                   "folder": ImageFolder(store.root, Path(store.root).resolve())}
        remote = ray.remote(Worker).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=-1,
                                            max_task_retries=self.config.max_retries, max_concurrency=1)
        try:
            # By value, not through ray.put: a restarted actor needs its arguments, which Ray keeps with
            # the actor's own record this way.
            for _ in range(workers):
                pool.actors.append(remote.remote(payload))
                pool.load.append(0)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot be pickled, in one line
            raise AuditError(f"{job.stage}: cannot be sent to Ray workers: {_first_line(exc)}") from None
        self._images_mode(ray, store, pool)
        log.info("ray: %s on %d actor(s), %g CPU and %g GPU each; images %s", job.stage, workers, num_cpus, num_gpus,
                 self._mode)

    def _check_fits(self, ray, stage: str, workers: int, num_cpus: float, num_gpus: float) -> None:
        """Refuse a pool the cluster can never hold: its actors would wait for resources for ever (Ray
        does not fail them), and so would the stage. Resources other jobs hold only make it wait."""
        total = ray.cluster_resources()
        for what, each, key in (("CPUs", num_cpus, "CPU"), ("GPUs", num_gpus, "GPU")):
            need, have = workers * each, total.get(key, 0)
            if need > have + 1e-9:
                raise EngineError(
                    f"{stage}: {workers} worker(s) x {each:g} {what} = {need:g} {what}, but the Ray cluster has "
                    f"{have:g}; lower ray.workers or ray.num_{key.lower()}s (or ray.backends.{stage}), or add nodes")

    def _images_mode(self, ray, store: RunStore, pool: _Pool) -> None:
        mode = self.config.images
        if mode == "auto":
            token = secrets.token_hex(16)
            folder = Path(store.root).resolve() / "images"
            for old in folder.glob(".probe-*"):  # left by a driver that was killed while probing
                with contextlib.suppress(OSError):
                    if time.time() - old.stat().st_mtime > 600:
                        old.unlink()
            probe = folder / f".probe-{token}"
            probe.write_text(token, encoding="utf-8")
            try:
                seen = ray.get([a.sees.remote(str(probe), token) for a in pool.actors])
            except Exception as exc:  # noqa: BLE001
                raise EngineError(f"ray: the workers did not start: {_first_line(exc)}") from None
            finally:
                probe.unlink(missing_ok=True)
            mode = "shared" if all(seen) else "send"
        self._mode = mode

    def _blobs(self, job: Job, store: RunStore, batch: Batch) -> dict[str, bytes | str] | None:
        if self._mode == "shared":
            return None
        from ..images.decode import read_bytes

        blobs: dict[str, bytes | str] = {}
        for _, item in batch:
            for sha in job.images_of(item):
                if sha in blobs:
                    continue
                try:
                    blobs[sha] = read_bytes(store.image_path(sha), name=sha[:12])
                except InputError as exc:
                    blobs[sha] = str(exc)
        return blobs

    def _run(self, job: Job, store: RunStore, pool: _Pool, batches: Iterator[Batch]) -> Iterator[Done]:
        queue: deque[_Entry] = deque()
        ray = None
        capacity = self.config.in_flight  # until the pool has started
        exhausted = False
        while True:
            # Keep every actor busy; hold at most twice the capacity of finished, unwritten batches.
            while not exhausted and sum(pool.load) < capacity and len(queue) < 2 * capacity:
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                    break
                if not job.wants_backend(batch):  # stored answers only: written in their place, no worker
                    done = Done(batch, job.compute(job.backend, batch, LocalImages(store), {}))
                    queue.append(_Entry(batch, finished=True, done=done))
                    continue
                if ray is None:
                    ray = self.connect()
                    self._start(ray, job, store, pool)
                    capacity = len(pool.actors) * self.config.in_flight
                entry = _Entry(batch, self._blobs(job, store, batch), actor=pool.least_loaded())
                pool.load[entry.actor] += 1
                entry.ref = pool.actors[entry.actor].run.remote(entry.batch, entry.blobs)
                queue.append(entry)
            if not queue:
                return
            head = queue[0]
            if not head.finished:
                waiting = [e.ref for e in queue if not e.finished]
                ready, _ = ray.wait(waiting, num_returns=1)
                for e in queue:
                    if not e.finished and e.ref in ready:
                        e.finished = True
                        pool.load[e.actor] -= 1
                continue
            queue.popleft()
            yield head.done if head.done is not None else self._outcome(ray, job, head)

    def _outcome(self, ray, job: Job, entry: _Entry) -> Done:
        try:
            reply = ray.get(entry.ref)
        except ray.exceptions.RayActorError as exc:  # Ray sent it again max_retries times already
            return Done(entry.batch, lost=f"its worker was lost ({_first_line(exc)})")
        except ray.exceptions.RayError as exc:
            raise EngineError(f"{job.stage}: ray: {_first_line(exc)}") from None
        if reply[0] == "error":
            _, kind, message = reply
            if kind:
                raise _ERRORS[kind](message)
            raise AuditError(f"{job.stage}: worker error: {message}")
        _, records, made, seconds = reply
        return Done(entry.batch, records, seconds, images=made)


@functools.cache
def code_digest() -> str:
    """A digest of the package's source files (names and bytes): a worker runs the driver's code, or says
    it does not, even where the version number is the same (a changed checkout, a dirty tree)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _describe(ray) -> str:
    total = ray.cluster_resources()
    return f"{len(ray.nodes())} node(s), {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs"


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast when nothing listens at a HOST:PORT (or ray://HOST:PORT) address: ``ray.init`` itself
    retries an unreachable cluster for minutes. Other forms (``auto``) are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise EngineError(f"ray: cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with "
                          "`ray start --head` or fix ray.address / RAY_ADDRESS") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return text.splitlines()[0][:300]
