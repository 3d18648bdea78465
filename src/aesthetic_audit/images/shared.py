"""Decoded images of a run, shared by the stages that read the same pixels in one process.

The judge, each scorer and the labeller all decode a run's stored images. Within one stage a batch
decodes each image once; across stages run by one process (``aesthetic-audit run``, ``demo``, or several
scorers in one ``score``), ``sharing()`` lets them share a bounded least-recently-used cache of decoded
images, keyed by the image's SHA-256 (its stored bytes, so the same key always decodes to the same
pixels). Outside a ``sharing()`` block nothing is kept, so a single stage holds no more than its batch.

The cached images are handed to every stage that asks: consumers must not change them in place (the
project's judges, scorers and labellers only read them or make new images from them).
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from PIL import Image

from .decode import decode_image

if TYPE_CHECKING:
    from ..store import RunStore

DEFAULT_MAX_BYTES = 128 * 2**20  # about 400 images of 384 x 288, or 40 of 1024 x 1024


class DecodedImages:
    """A least-recently-used cache of decoded images holding at most ``max_bytes`` of pixels."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self._images: OrderedDict[str, Image.Image] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def get(self, store: RunStore, sha: str) -> Image.Image:
        """The stored image ``sha`` of ``store``, decoded (an ``InputError`` naming it if it cannot be)."""
        image = self._images.get(sha)
        if image is not None:
            self._images.move_to_end(sha)
            self.hits += 1
            return image
        self.misses += 1
        image = _decode(store, sha)
        size = _size(image)
        if size <= self.max_bytes:
            self._images[sha] = image
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._images.popitem(last=False)
                self._bytes -= _size(old)
        return image

    def __len__(self) -> int:
        return len(self._images)

    @property
    def nbytes(self) -> int:
        return self._bytes


_shared: DecodedImages | None = None


@contextmanager
def sharing(max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[DecodedImages]:
    """Within the block, ``decode_stored`` goes through one cache of at most ``max_bytes`` (a block
    already inside another keeps the outer cache)."""
    global _shared
    if _shared is not None:
        yield _shared
        return
    _shared = DecodedImages(max_bytes)
    try:
        yield _shared
    finally:
        _shared = None


def decode_stored(store: RunStore, sha: str) -> Image.Image:
    """A run's stored image, decoded: from the shared cache inside ``sharing()``, else read anew."""
    return _shared.get(store, sha) if _shared is not None else _decode(store, sha)


def _decode(store: RunStore, sha: str) -> Image.Image:
    return decode_image(store.image_path(sha), name=sha[:12])


def _size(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())
