"""Qwen-VL inputs without torchvision: image patches, image-token counts and M-RoPE positions.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL share one image pipeline (transformers' ``Qwen2VLImageProcessor``,
whose PIL flavour is ``Qwen2VLImageProcessorPil``): convert to RGB, ``smart_resize`` to multiples of
``patch_size * merge_size`` within a pixel budget (aspect ratio kept), PIL bicubic resize, x ``1/255``
(a float64 product cast to float32), normalise with the folder's mean/std in float32, and cut into
``patch_size`` patches, the still frame repeated to the temporal patch, patches ordered in
``merge_size`` x ``merge_size`` groups: ``[grid_h * grid_w, 3 * temporal_patch * patch**2]`` with grid
``(1, grid_h, grid_w)``. The processor then writes ``grid_t * grid_h * grid_w // merge_size**2``
``<|image_pad|>`` tokens in place of each image placeholder of the chat text.

The families differ only in numbers, read from ``preprocessor_config.json``: patch 14 and the OpenAI
CLIP mean/std for Qwen2/2.5-VL, patch 16 and mean/std 0.5 for Qwen3-VL; the pixel budget is either
``min_pixels``/``max_pixels`` (older files) or ``size: {shortest_edge, longest_edge}`` (newer files,
where both mean pixel counts, not edges).

Two details vary between producers of Qwen-VL inputs and are fields here, so each caller states which
one it reproduces: ``resize_rule`` ("processor": transformers' ``smart_resize``; "qwen-vl-utils": the
helper package's variant, which keeps at least one factor per side before checking the budget) and
``alpha`` ("white": transparency composited onto white, as transformers 5 and qwen-vl-utils do;
"drop": ``convert("RGB")``, as transformers 4 did).

Positions: the decoder's multimodal rotary embedding (M-RoPE) gives text tokens the same index in its
three sections (temporal, height, width), counting on from the previous token; an image's tokens get
(start, start + row, start + column) on its merged grid, and the text after it continues at
``start + max(rows, columns)``. ``mrope_positions`` reproduces transformers' ``get_rope_index`` for
still images, so a sequence can be run in pieces (a cached prefix, then suffixes) with the positions
the model gives the whole sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# Qwen2VLImageProcessor's own defaults, used where preprocessor_config.json leaves a value out.
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280
MAX_ASPECT = 200
RESIZE_RULES = ("processor", "qwen-vl-utils")
ALPHA_MODES = ("white", "drop")


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int,
                 rule: str = "processor") -> tuple[int, int]:
    """The (height, width) a Qwen-VL image is resized to: multiples of ``factor``, about min..max pixels.

    Both rules round each side to the factor, then scale down (floor) when over ``max_pixels`` or up
    (ceil) when under ``min_pixels``; "qwen-vl-utils" keeps at least one factor per side when rounding,
    "processor" (transformers) only after scaling down, so they differ for sides under ``factor / 2``.
    """
    if rule not in RESIZE_RULES:
        raise ValueError(f"unknown resize rule {rule!r}; one of {RESIZE_RULES}")
    if min(height, width) < 1:
        raise ValueError(f"image has no pixels ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} exceeds {MAX_ASPECT}, "
                         "which Qwen-VL's preprocessing refuses")
    least_rounded = factor if rule == "qwen-vl-utils" else 0
    least_scaled = factor if rule == "processor" else 0
    h = max(least_rounded, round(height / factor) * factor)
    w = max(least_rounded, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(least_scaled, math.floor(height / beta / factor) * factor)
        w = max(least_scaled, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def to_rgb(image: Image.Image, alpha: str) -> Image.Image:
    """RGB pixels of ``image``; transparency composited onto white (``alpha="white"``) or dropped."""
    if alpha not in ALPHA_MODES:
        raise ValueError(f"unknown alpha mode {alpha!r}; one of {ALPHA_MODES}")
    if alpha == "white" and ("A" in image.getbands() or image.info.get("transparency") is not None):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class QwenVLPreprocess:
    """Qwen-VL image input (see the module doc). Build it from a model folder with ``from_config``."""

    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    rescale_factor: float = 1 / 255
    resize_rule: str = "processor"
    alpha: str = "white"

    @classmethod
    def from_config(cls, cfg: dict[str, Any], *, min_pixels: int | None = None,
                    max_pixels: int | None = None) -> "QwenVLPreprocess":
        """Geometry, normalisation and pixel budget from a ``preprocessor_config.json`` mapping.

        The budget is the caller's ``min_pixels``/``max_pixels`` where given, else the file's top-level
        ``min_pixels``/``max_pixels``, else its ``size`` (``shortest_edge``/``longest_edge``, or the
        older ``min_pixels``/``max_pixels`` inside ``size``), else the processor's defaults -- the
        precedence ``Qwen2VLImageProcessor`` applies when it reads the file.
        """
        for key, ok in (("do_resize", True), ("do_rescale", True), ("do_normalize", True),
                        ("do_convert_rgb", True), ("resample", 3)):
            if key in cfg and cfg[key] != ok:
                raise ConfigError(f"preprocessor_config.json: {key}={cfg[key]!r} is not supported "
                                  "(Qwen-VL converts to RGB, resizes bicubic, rescales and normalises)")
        size = cfg.get("size") or {}
        if not isinstance(size, dict):
            raise ConfigError(f"preprocessor_config.json: size={size!r} is not a mapping")
        if min_pixels is None:
            min_pixels = cfg.get("min_pixels", size.get("shortest_edge", size.get("min_pixels", DEFAULT_MIN_PIXELS)))
        if max_pixels is None:
            max_pixels = cfg.get("max_pixels", size.get("longest_edge", size.get("max_pixels", DEFAULT_MAX_PIXELS)))
        low, high = int(min_pixels), int(max_pixels)
        if not 0 < low <= high:
            raise ConfigError(f"pixel budget min_pixels={low}, max_pixels={high}: need 0 < min_pixels <= max_pixels")
        return cls(min_pixels=low, max_pixels=high,
                   patch_size=int(cfg.get("patch_size", cls.patch_size)),
                   temporal_patch_size=int(cfg.get("temporal_patch_size", cls.temporal_patch_size)),
                   merge_size=int(cfg.get("merge_size", cls.merge_size)),
                   mean=tuple(float(x) for x in cfg.get("image_mean", cls.mean)),
                   std=tuple(float(x) for x in cfg.get("image_std", cls.std)),
                   rescale_factor=float(cfg.get("rescale_factor", cls.rescale_factor)))

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) after ``smart_resize`` for an image of ``width`` x ``height`` pixels."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels, self.resize_rule)

    def resize(self, image: Image.Image) -> Image.Image:
        image = to_rgb(image, self.alpha)
        w, h = image.size
        new_h, new_w = self.target_size(w, h)
        return image.resize((new_w, new_h), Image.BICUBIC) if (new_w, new_h) != (w, h) else image

    def pil(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """One image -> (patches [grid_h * grid_w, C * T * p * p] float32, grid (t, h, w))."""
        arr = np.asarray(self.resize(image), dtype=np.uint8)
        x = (arr.astype(np.float64) * self.rescale_factor).astype(np.float32)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return self.patchify(x.transpose(2, 0, 1))

    def patchify(self, chw: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        c, h, w = chw.shape
        gh, gw = h // p, w // p
        # (C, gh/m, m, p, gw/m, m, p) -> (gh/m, gw/m, m, m, C, p, p): patches in merge groups
        x = chw.reshape(c, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
        # a still image fills the temporal patch with copies of itself
        x = np.broadcast_to(x[:, :, :, :, :, None], x.shape[:5] + (tp,) + x.shape[5:])
        return np.ascontiguousarray(x.reshape(gh * gw, c * tp * p * p)), (1, gh, gw)

    def image_tokens(self, grid: tuple[int, int, int]) -> int:
        """How many ``<|image_pad|>`` tokens the processor writes for an image of this grid."""
        return grid[0] * grid[1] * grid[2] // (self.merge_size ** 2)


def mrope_positions(ids: Sequence[int], image_token_id: int, grids: Sequence[tuple[int, int, int]],
                    merge_size: int) -> np.ndarray:
    """M-RoPE positions [3, len(ids)] of one unpadded token sequence whose image-token runs belong, in
    order, to images of the given patch grids (transformers' ``get_rope_index`` for still images)."""
    ids = np.asarray(ids)
    out = np.empty((3, len(ids)), dtype=np.int64)
    is_image = ids == image_token_id
    grids = iter(grids)
    i, start = 0, 0
    while i < len(ids):
        if not is_image[i]:
            out[:, i] = start
            i, start = i + 1, start + 1
            continue
        t, h, w = next(grids)
        rows, cols = h // merge_size, w // merge_size
        n = t * rows * cols
        if n == 0 or not is_image[i:i + n].all():
            raise ValueError("image tokens do not match the images' grids")
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(rows), np.arange(cols), indexing="ij")
        out[0, i:i + n] = start + tt.reshape(-1)  # a still image has one frame: all at the start
        out[1, i:i + n] = start + hh.reshape(-1)
        out[2, i:i + n] = start + ww.reshape(-1)
        i, start = i + n, start + max(rows, cols)
    return out
