"""The images stage with generators: each prompt pair rendered by each generator, I_o from p_o, I_a from p_a.

One image-pair record per (prompt pair, generator). Its key hashes the generator's identity (backend,
model and revision or weight hashes, options, dtype) and both requests (prompt, negative prompt, seed,
call parameters, img2img input and strength), so a rerun computes only what is missing and a changed
setting computes anew. Seeds derive from the config seed, the prompt pair and the side; by default both
sides share one (a paired comparison), so I_o and I_a differ by their prompts only.

Requests are batched across prompt pairs, one side at a time (the sides' call parameters may differ), up
to the generator's batch size; a batch that does not fit in memory is halved and retried, down to one
request, whose items then fail as "out of memory". A failed side, a backend error or a blank image
(a flat frame: an API placeholder or a safety filter's output) makes the pair a failed record with its
reason; the others go on. The generator loads once, on its first batch; a stage with nothing left to do
loads nothing. Records are committed in chunks (``RunStore.writer``: about once a second for a slow
generator), so an interrupted stage keeps what it rendered up to the last commit. The rendering itself
(``GenerateBatch``) runs on the run's engine (``engine``): in this process, or on Ray.

Image-to-image (``images.generate.img2img``): I_a = img2img(I_o, p_a, strength), from the generator's own
I_o ("generated") or from the I_o of the run's edited or imported pairs ("pairs").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from PIL import Image

from ..config import AuditConfig
from ..engine import Batch, Engine, Images, Job, LocalEngine, Planned, drive
from ..errors import AuditError, InputError
from ..hashing import spec_hash
from ..records import IMAGES, PROMPTS, image_pair_key, prompt_origin
from ..stage import StageSummary
from ..store import Record, RunStore
from ..store.manifest import record_stage
from ..ui import log
from .decode import PNG_LEVEL_BEFORE, store_png_level
from .generators.base import (RUNTIME_OPTIONS, GenerationRequest, GenerationResult, Generator, OutOfMemory,
                              blank_reason)
from .generators.presets import GeneratorSpec

BACKEND = "generate"


def side_seed(seed: int, pair_id: str, side: str, paired: bool) -> int:
    """A request's seed: a function of the config seed, the prompt pair and (unless paired) the side."""
    return int(spec_hash({"seed": seed, "pair_id": pair_id, "side": "pair" if paired else side})[:15], 16)


def prompt_records(store: RunStore, origins: Sequence[str]) -> list[Record]:
    """The run's ok prompt pairs of the given origins, in the order they were stored."""
    return [r for r in store.records(PROMPTS) if prompt_origin(r.data) in origins]


def source_pairs(store: RunStore) -> list[Record]:
    """Image pairs whose I_o the img2img "pairs" mode edits: every ok pair not made by a generator, one per
    (I_o, prompt pair) (an edit series at several strengths shares its I_o and prompts)."""
    out, seen = [], set()
    for r in store.records(IMAGES):
        mark = (r.data.get("image_o"), r.data.get("pair_id"), r.data.get("p_a"))
        if r.data.get("backend") != BACKEND and mark not in seen:
            seen.add(mark)
            out.append(r)
    return out


@dataclass
class _Job:
    key: str
    item: str
    data: dict[str, Any]             # the record's data without the images
    o: GenerationRequest | None      # None: I_o exists (img2img of the run's pairs)
    a: GenerationRequest
    image_o: str | None = None       # the existing I_o's hash, for img2img of pairs
    init_from_o: bool = False        # img2img of the generator's own I_o


def plan_jobs(store: RunStore, config: AuditConfig, spec: GeneratorSpec, identity: dict[str, Any]) -> list[_Job]:
    gc = config.images.generate
    ii = gc.img2img
    # The whole identity on every record: the manifest keeps one entry per generator name, overwritten when
    # a later run of the same name changes a setting, so only the record says what made its images.
    generator = {"name": spec.name, "preset": spec.preset, "backend": spec.backend, "identity": identity,
                 "identity_hash": spec_hash(identity),
                 "options": {k: v for k, v in spec.options.items() if k not in RUNTIME_OPTIONS}, "sweep": spec.sweep}
    jobs = []
    if ii.enabled and ii.of == "pairs":
        for r in source_pairs(store):
            d = r.data
            pair_id = d["pair_id"]
            a = GenerationRequest(d["p_a"], side_seed(config.seed, pair_id, "a", gc.paired_seeds), spec.negative["a"],
                                  spec.params["a"], init_image_sha=d["image_o"], strength=ii.strength)
            key = image_pair_key(backend=identity, inputs={"pair_id": pair_id, "o": {"image": d["image_o"]},
                                                           "a": a.spec()}, seed=config.seed)
            data = {"pair_id": pair_id, "p_o": d["p_o"], "p_a": d["p_a"], "dims": d.get("dims", []),
                    "strength": ii.strength, "source_pair": r.key, "source_item": r.item}
            jobs.append(_Job(key, f"{spec.name}:{r.item}", _common(data, spec, generator, None, a), None, a,
                             image_o=d["image_o"]))
        return jobs
    for r in prompt_records(store, gc.origins):
        d = r.data
        pair_id = r.key
        o = GenerationRequest(d["p_o"], side_seed(config.seed, pair_id, "o", gc.paired_seeds), spec.negative["o"],
                              spec.params["o"])
        a = GenerationRequest(d["p_a"], side_seed(config.seed, pair_id, "a", gc.paired_seeds), spec.negative["a"],
                              spec.params["a"])
        a_key = a.spec()
        if ii.enabled:  # I_o is not known before it is rendered: the key says where it comes from
            a_key.update(init_image="o", strength=ii.strength)
        key = image_pair_key(backend=identity, inputs={"pair_id": pair_id, "o": o.spec(), "a": a_key},
                             seed=config.seed)
        data = {"pair_id": pair_id, "p_o": d["p_o"], "p_a": d["p_a"], "dims": d.get("dims", []),
                "strength": ii.strength if ii.enabled else None, "source_item": r.item}
        jobs.append(_Job(key, f"{spec.name}:{r.item}", _common(data, spec, generator, o, a), o, a,
                         init_from_o=ii.enabled))
    return jobs


def _common(data: dict[str, Any], spec: GeneratorSpec, generator: dict[str, Any], o: GenerationRequest | None,
            a: GenerationRequest) -> dict[str, Any]:
    sides = {"o": o, "a": a}
    return {**data, "backend": BACKEND, "transforms": [], "label": None, "model": spec.name, "generator": generator,
            "seeds": {s: r.seed for s, r in sides.items() if r is not None},
            "params": {s: {**r.params, **({"negative_prompt": r.negative_prompt} if r.negative_prompt is not None
                                          else {})} for s, r in sides.items() if r is not None}}


def run_generate(store: RunStore, config: AuditConfig, spec: GeneratorSpec, *, generator: Generator | None = None,
                 retry_failed: bool = False, engine: Engine | None = None,
                 factory: Callable[[], Generator] | None = None) -> StageSummary:
    """Render every pending image pair of one generator; ``generator`` injects a built backend. A Ray
    worker builds its own with ``factory`` (default: ``spec.build`` unless a backend was injected, which
    it then gets pickled)."""
    if factory is None and generator is None:
        factory = spec.build
    generator = generator or spec.build()
    identity = generator.identity()
    record_stage(store, config, f"images:generate:{spec.name}", {f"generator:{spec.name}": spec.manifest(generator)})
    jobs = plan_jobs(store, config, spec, identity)
    summary = StageSummary(f"{IMAGES}:{spec.name}", total=len(jobs))
    pending = summary.pending([j.key for j in jobs], store, retry_failed)
    todo = [(j.key, j) for j in jobs if j.key in pending]
    size = max(1, generator.batch_size)
    compute = GenerateBatch(store_png_level(store, config.images.png_level))
    job = Job(f"generate:{spec.name}", generator, compute, _generate_images, load=False, factory=factory)
    batches = Planned([todo[i:i + size] for i in range(0, len(todo), size)], len(todo))
    failed_before = summary.failed
    new = drive(engine or LocalEngine(), job, store, batches, summary, unit="pair")
    summary.new = new - (summary.failed - failed_before)  # every failed record written was pending
    return summary


def _generate_images(job: _Job) -> list[str]:
    return [job.image_o] if job.image_o is not None else []


@dataclass(frozen=True)
class GenerateBatch:
    """A group of image pairs rendered in as few generator calls as its batch size allows; runs wherever
    the engine puts it. Out-of-memory halves the batch size for the rest of the stage on that worker
    (``state``) and retries, and at one request fails that request."""

    png_level: int = PNG_LEVEL_BEFORE

    def __call__(self, generator: Generator, group: Batch, images: Images, state: dict) -> list[Record]:
        batches = _Batches(generator, images, state, self.png_level)
        return batches.group([job for _, job in group])


class _Batches:
    def __init__(self, generator: Generator, images: Images, state: dict, png_level: int):
        self.generator, self.images, self.state, self.png_level = generator, images, state, png_level
        state.setdefault("batch_size", max(1, generator.batch_size))

    def group(self, group: list[_Job]) -> list[Record]:
        out: list[Record] = []
        images_o: dict[int, tuple[Image.Image | None, str | None]] = {}
        with_o = [i for i, j in enumerate(group) if j.o is not None]
        for i, result in zip(with_o, self._generate([group[i].o for i in with_o])):
            images_o[i] = self._checked(result, "I_o (p_o)")
        for i, job in enumerate(group):
            if job.image_o is not None:
                images_o[i] = self._existing(job.image_o)
        requests_a, index_a = [], []
        for i, job in enumerate(group):
            image, error = images_o[i]
            if error is not None:
                continue
            a = job.a
            if job.init_from_o or job.image_o is not None:
                sha = job.image_o or self.images.put(image, self.png_level)
                a = GenerationRequest(a.prompt, a.seed, a.negative_prompt, a.params, init_image=image,
                                      init_image_sha=sha, strength=job.data["strength"])
            requests_a.append(a)
            index_a.append(i)
        images_a = dict(zip(index_a, (self._checked(r, "I_a (p_a)") for r in self._generate(requests_a))))
        for i, job in enumerate(group):
            (image_o, error_o), (image_a, error_a) = images_o[i], images_a.get(i, (None, None))
            error = error_o or error_a
            if error is not None:
                out.append(Record.failed(job.key, IMAGES, job.item, error, **job.data))
                continue
            sha_o = job.image_o or self.images.put(image_o, self.png_level)
            sha_a = self.images.put(image_a, self.png_level)
            out.append(Record(job.key, IMAGES, job.item, {"image_pair_id": job.key, **job.data,
                                                          "image_o": sha_o, "image_a": sha_a}))
        return out

    def _existing(self, sha: str) -> tuple[Image.Image | None, str | None]:
        try:
            return self.images.get(sha), None
        except InputError as exc:  # a run whose image files were moved or damaged
            return None, f"I_o: {exc}"

    def _checked(self, result: GenerationResult, side: str) -> tuple[Image.Image | None, str | None]:
        if not result.ok:
            return None, f"{side}: {result.error or 'no image'}"
        # backends that know placeholder hashes check those themselves
        reason = blank_reason(result.image, tolerance=self.generator.blank_tolerance)
        if reason:
            return None, f"{side}: {reason}"
        return result.image.convert("RGB"), None

    def _generate(self, requests: list[GenerationRequest]) -> Iterator[GenerationResult]:
        """Results in order, in batches of the current batch size; out-of-memory halves it for the rest of
        the stage and retries, and at one request fails that request."""
        start = 0
        while start < len(requests):
            chunk = requests[start:start + self.state["batch_size"]]
            try:
                results = self.generator.generate(chunk)
            except OutOfMemory:
                if len(chunk) == 1:
                    yield GenerationResult(None, error="out of memory (even one request at a time)")
                    start += 1
                    continue
                self.state["batch_size"] = max(1, len(chunk) // 2)
                log.warning("generate: out of memory with %d requests per call; trying %d", len(chunk),
                            self.state["batch_size"])
                continue
            except AuditError:
                raise  # the backend cannot run at all (missing weights, endpoint down): the stage stops
            except Exception as exc:  # noqa: BLE001 - a backend bug fails this batch's items, not the run
                results = [GenerationResult(None, error=f"generation failed: {exc!r}")] * len(chunk)
            if len(results) != len(chunk):
                results = [GenerationResult(None, error=f"the backend returned {len(results)} results for "
                                                        f"{len(chunk)} requests")] * len(chunk)
            yield from results
            start += len(chunk)
