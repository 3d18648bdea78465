"""The scorer protocol: a batch of (image, prompt) in, one result per item out.

What a caller needs to read a score lives on the class: ``higher_is_better``, ``score_range``,
``prompt_aware``, ``reward_model``, ``max_prompt_tokens``. Constructing a scorer loads nothing;
``load()`` (called on first use) does. ``identity()`` is what goes into every record key: change the
weights, the preprocessing version or an option that changes numbers, and the key changes.

``score`` scores each distinct item of a call once. Images are told apart by content (mode, size, palette
and pixels), not by object: a caller who opens the same file once per combination gets the same reuse as
one who passes one object, as the score stage gets through the store's image hashes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar, Sequence

from PIL import Image


def package_version(dist: str) -> str | None:
    """The installed version of a distribution (for scorers whose weights ship inside a package)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _palette(image: Image.Image) -> bytes:
    palette = image.getpalette() if image.mode in ("P", "PA") else None
    return bytes(palette or b"")


def image_key(image: Image.Image) -> str:
    """A digest of what a scorer can see of an image: mode, size, palette and pixels (not metadata)."""
    h = hashlib.blake2b(f"{image.mode}|{image.size}|".encode(), digest_size=16)
    h.update(_palette(image))
    h.update(image.tobytes())
    return h.hexdigest()


def _probe(image: Image.Image) -> tuple:
    """Mode, size, palette and the first, middle and last rows: images that differ in these cannot be
    equal, so only images whose probes agree are hashed in full (a 1024 x 1024 image takes ~10 ms)."""
    w, h = image.size
    rows = b"".join(image.crop((0, y, w, y + 1)).tobytes() for y in sorted({0, h // 2, max(h - 1, 0)}) if h)
    return image.mode, image.size, _palette(image), rows


def _canonical(images: list[Image.Image]) -> dict[int, Image.Image]:
    """For each image (by object id), the first of ``images`` with equal content. An image that cannot be
    read (a lazily opened broken file) stands for itself, for the scorer to fail."""
    out: dict[int, Image.Image] = {}
    groups: dict[tuple, list[Image.Image]] = {}
    for image in images:
        try:
            groups.setdefault(_probe(image), []).append(image)
        except Exception:  # unreadable: the scorer reports it
            out[id(image)] = image
    for members in groups.values():
        first_by_key: dict[str, Image.Image] = {}
        for image in members:
            out[id(image)] = first_by_key.setdefault(image_key(image), image) if len(members) > 1 else image
    return out


def distinct_items(items: Sequence[tuple[Any, str | None]], prompt_aware: bool = True
                   ) -> tuple[list[tuple[Any, str | None]], list[int]]:
    """The distinct (image, prompt) items of a call in first-seen order, and each item's index among them.

    Equal images (by content, see ``image_key``) become one object, so a scorer that shares work per image
    object shares it across them too. A prompt-blind scorer's items differ by image only. What is not an
    image (None, an exception) is kept as it is, matched by identity, for the scorer to fail.
    """
    objects = {id(im): im for im, _ in items if isinstance(im, Image.Image)}
    canonical = _canonical(list(objects.values()))
    index: dict[tuple[int, str | None], int] = {}
    distinct: list[tuple[Any, str | None]] = []
    where: list[int] = []
    for image, prompt in items:
        image = canonical.get(id(image), image)
        k = (id(image), prompt if prompt_aware else None)
        if k not in index:
            index[k] = len(distinct)
            distinct.append((image, prompt))
        where.append(index[k])
    return distinct, where


@dataclass(frozen=True)
class StoredInput:
    """Something the run already holds about an image that a scorer reuses (the judge stage's J values, for
    the intent-aware reward). ``stored_results`` may answer an image with it instead of a result: the score
    stage reads it on the driver and hands it to the scorer's ``reuse`` beside the decoded image, wherever
    the batch runs, so a Ray worker gets it too."""

    value: Any


@dataclass(frozen=True)
class ScoreResult:
    score: float | None
    error: str | None = None
    tokens: int | None = None
    truncated: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.score is not None


class Scorer:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    score_range: ClassVar[tuple[float | None, float | None]] = (None, None)
    prompt_aware: ClassVar[bool] = True
    # A preference or quality model whose higher score means "better image": the analysis runs the
    # reward-model test on it. False for scorers that measure something else (a safety classifier).
    reward_model: ClassVar[bool] = True
    max_prompt_tokens: ClassVar[int | None] = None
    # What ``ls scorers`` and the README's reward-model table say about a model: the official code and
    # weights it reproduces, what its numbers mean, and how they were checked against the official ones.
    official: ClassVar[str] = ""
    score_scale: ClassVar[str] = ""
    parity: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    extra: ClassVar[str | None] = None  # the pip extra its dependencies come from

    def __init__(self, **options: Any):
        self.options = options
        self._loaded = False

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "options": self.options}

    def load(self) -> "Scorer":
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def _load(self) -> None:
        """Load weights; subclasses override. Nothing heavy may happen before this."""

    def score(self, items: Sequence[tuple[Image.Image, str | None]]) -> list[ScoreResult]:
        """Score a batch. A bad item gets a result with ``error`` set; it never fails the batch.

        Each distinct (image content, prompt) is scored once and its result returned for every copy."""
        self.load()
        distinct, where = distinct_items(list(items), self.prompt_aware)
        results = self._score(distinct)
        return [results[i] for i in where]

    def _score(self, items: list[tuple[Image.Image, str | None]]) -> list[ScoreResult]:
        raise NotImplementedError
