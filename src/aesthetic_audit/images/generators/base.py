"""The generator protocol: a batch of generation requests in, one image (or a reason) per request out.

A request is everything that determines its image: the prompt, the negative prompt, the seed, the
call parameters of its side (steps, guidance, size, ...) and, for image-to-image, the input image's
hash and the strength. ``request.spec()`` is its canonical form and goes into the record key with the
generator's ``identity()``, so the same request to the same generator (same weights, options, dtype)
is never computed twice.

Constructing a generator loads nothing; ``load()`` (called on first use) does. Backends register with
``@register("generators")``; presets (``presets.py``) are rows of data naming a backend and its options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from PIL import Image

from ...hashing import canonical_json


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    seed: int
    negative_prompt: str | None = None
    # Call parameters of this side (num_inference_steps, guidance_scale, width, height, true_cfg_scale,
    # ...); JSON values only. Backend options that hold for every call live on the generator instead.
    params: dict[str, Any] = field(default_factory=dict)
    # Image-to-image: the input image (decoded) and its content hash, and how far to move from it.
    init_image: Image.Image | None = field(default=None, compare=False, repr=False)
    init_image_sha: str | None = None
    strength: float | None = None

    def spec(self) -> dict[str, Any]:
        """What determines the image, as JSON: the request part of a record key."""
        out: dict[str, Any] = {"prompt": self.prompt, "seed": self.seed, "params": dict(sorted(self.params.items()))}
        if self.negative_prompt is not None:
            out["negative_prompt"] = self.negative_prompt
        if self.init_image_sha is not None:
            out.update(init_image=self.init_image_sha, strength=self.strength)
        return out

    def key_text(self) -> str:
        return canonical_json(self.spec())


@dataclass(frozen=True)
class GenerationResult:
    image: Image.Image | None
    error: str | None = None
    # Anything worth keeping on the record: the revised prompt an API returned, timings, NaN counts.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.image is not None


# Options that change where and how fast a generator runs, not which image a request gets. Not VAE tiling:
# a tiled decode blends tile seams, so its pixels differ.
RUNTIME_OPTIONS = frozenset({"batch_size", "device", "cpu_offload", "sequential_cpu_offload", "vae_slicing",
                             "concurrency", "timeout_s", "max_retries", "backoff_s", "max_connection_failures",
                             "max_reply_bytes", "offline"})

# Below this standard deviation (0-255 scale, of every channel over all pixels) an image is one flat colour:
# a hosted API's placeholder, or a safety filter's black frame. Real renders, even of fog, sit far above.
BLANK_STD = 2.0


def blank_reason(image: Image.Image, known_placeholders: frozenset[str] = frozenset(), *,
                 tolerance: float = BLANK_STD) -> str | None:
    """Why ``image`` is not a real render (a uniform frame, a known placeholder), or None. A frame is uniform
    when every channel's standard deviation is below ``tolerance``; with 0, only when every channel holds one
    value (a safety filter's frame), so a requested near-black render passes."""
    import numpy as np

    from ...hashing import bytes_hash

    arr = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    # Per channel: a flat blue frame (the study's failure placeholder) has a large spread across channels.
    flat = bool((arr.max(axis=0) == arr.min(axis=0)).all()) if tolerance == 0 else \
        float(arr.std(axis=0).max()) < tolerance
    if flat:
        mean = tuple(int(round(v)) for v in arr.mean(axis=0))
        return f"blank image: one flat colour {mean} (a placeholder or a safety filter's output)"
    if known_placeholders and bytes_hash(arr.astype(np.uint8).tobytes()) in known_placeholders:
        return "a known placeholder image"
    return None


class OutOfMemory(Exception):
    """A batch did not fit; the stage halves the batch and tries again before failing its items."""


class Generator:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    extra: ClassVar[str | None] = None  # the pip extra its dependencies come from
    supports_img2img: ClassVar[bool] = False
    supports_negative_prompt: ClassVar[bool] = False
    # blank_reason's tolerance for this backend's images: a hosted API's placeholders are near-flat; a local
    # model's only blank output is a safety filter's exactly constant frame (0), as a flat render can be asked for.
    blank_tolerance: ClassVar[float] = BLANK_STD

    def __init__(self, **options: Any):
        self.options = options
        self.batch_size = int(options.get("batch_size", 1))
        self._loaded = False

    def identity(self) -> dict[str, Any]:
        """Everything about the generator that changes its images: backend, version, model and revision
        or weight hashes, dtype, options. Not the run-time options (batch size, device, offloading), which
        do not change what a request means; the manifest records them beside the identity."""
        return {"name": self.name, "version": self.version,
                "options": {k: v for k, v in self.options.items() if k not in RUNTIME_OPTIONS}}

    def load(self) -> "Generator":
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def _load(self) -> None:
        """Load weights or check the endpoint's settings; subclasses override."""

    def unload(self) -> None:
        """Release what ``load()`` took (weights, device memory); a later ``generate`` loads again."""
        if self._loaded:
            self._unload()
            self._loaded = False

    def _unload(self) -> None:
        """Drop loaded weights; subclasses that hold any override."""

    def shares_weights(self, other: "Generator") -> bool:
        """Whether ``other`` runs on the weights this generator loaded (then unloading between the two would
        only load them again)."""
        return False

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in order. A bad request gets a result with ``error`` set; it never
        fails the batch. Raises ``OutOfMemory`` when the batch as a whole did not fit."""
        self.load()
        return self._generate(list(requests))

    def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        raise NotImplementedError
