"""Shared machinery of the torch reward models: options, device/dtype, preprocessing, batching, reuse.

Subclasses are one file per family; their variants (weights repo, revision, files, preprocessing)
are rows of data in ``variants`` and each row is registered as its own scorer name by
``register_variants``. Constructing a scorer loads nothing. ``_load`` resolves and reads weights.

Four-combination reuse: a dual encoder (CLIP-like) embeds each distinct image and each distinct
prompt of a call once, then scores every requested (image, prompt) from the embeddings: for a pair's
four combinations that is 2 image + 2 text encodings instead of 4 + 4. A cross-encoder encodes each
distinct image once and runs all its (image, prompt) combinations through the joint model in batches,
shortest prompts together, each batch padded to its own longest prompt. Images count as equal by content
(``Scorer.score`` merges equal images before they get here).

Speed options that change numbers enter ``identity()`` only when set, so the default fp32 key stays as it
was: ``dtype`` (bf16/fp16 weights; fast on GPUs and on CPUs with bf16 instructions) and ``quantize="int8"``
(dynamic int8 ``nn.Linear`` layers on the CPU; the benchmark prints its speed and deviation from fp32).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
from PIL import Image

from ..errors import AuditError, ConfigError, InputError, require
from ..registry import register
from ._weights import Resolver, WeightsError, WeightsSource, first_line
from .base import Scorer, ScoreResult

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DTYPES = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16"}
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
QUANTIZE = ("int8",)


def torch():
    return require("torch", "models", "the torch reward models")


def resolve_device(device: str | None) -> str:
    t = torch()
    if device in (None, "auto"):
        if t.cuda.is_available():
            return "cuda"
        if getattr(t.backends, "mps", None) is not None and t.backends.mps.is_available():
            return "mps"
        return "cpu"
    return device


def dtype_name(dtype: str | None) -> str | None:
    """The canonical short name of a dtype option: "float32" and "fp32" are one setting, so one record key."""
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


def resolve_dtype(dtype: str | None):
    return getattr(torch(), TORCH_DTYPES[dtype_name(dtype) or "fp32"])


def torch_dtype_name(dtype: Any) -> str:
    """fp32/bf16/fp16 for a torch dtype (its own name for any other)."""
    name = str(dtype).removeprefix("torch.")
    return next((short for short, full in TORCH_DTYPES.items() if full == name), name)


def unit(x):
    """Float32, L2-normalised rows: the cosine is taken in float32 whatever the model dtype (a bf16
    normalisation would round every score to ~3 significant digits)."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, length: int, device: Any):
    """Token id rows right-padded to ``length`` with ``pad_id``, and their attention mask (1 = token)."""
    t = torch()
    ids = t.full((len(rows), length), pad_id, dtype=t.long)
    mask = t.zeros((len(rows), length), dtype=t.long)
    for k, row in enumerate(rows):
        ids[k, :len(row)] = t.tensor(list(row), dtype=t.long)
        mask[k, :len(row)] = 1
    return ids.to(device), mask.to(device)


def skip_init():
    """transformers' context that skips random initialisation (every weight is loaded right after it);
    where this transformers has none, weights are initialised first (slower, same result)."""
    for where in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            return getattr(importlib.import_module(where), "no_init_weights")()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


AESTHETIC_MLP_LINEARS = (0, 2, 4, 6, 7)  # nn.Sequential indices of the Linear layers
AESTHETIC_MLP_DROPOUTS = {1: 0.2, 3: 0.2, 5: 0.1}


def aesthetic_mlp(dims: Sequence[int]):
    """The LAION improved-aesthetic-predictor MLP, which ImageReward reuses: ``layers`` = Linear, Dropout(0.2),
    Linear, Dropout(0.2), Linear, Dropout(0.1), Linear, Linear (no activations; the official code has its
    ReLUs commented out), state-dict keys ``layers.{0,2,4,6,7}.{weight,bias}``; ``dims`` are the 6 widths."""
    nn = torch().nn
    if len(dims) != len(AESTHETIC_MLP_LINEARS) + 1:
        raise ValueError(f"the aesthetic MLP has {len(AESTHETIC_MLP_LINEARS)} linear layers; got widths {dims}")
    widths = iter(zip(dims[:-1], dims[1:]))
    head = nn.Module()
    head.layers = nn.Sequential(*(nn.Linear(*next(widths)) if i in AESTHETIC_MLP_LINEARS
                                  else nn.Dropout(AESTHETIC_MLP_DROPOUTS[i])
                                  for i in range(AESTHETIC_MLP_LINEARS[-1] + 1)))
    return head


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize + centre crop + normalise, reproducing torchvision's PIL path exactly without torchvision.

    ``resize="shortest"``: the short side becomes ``size`` and the long side int(size * long / short)
    (torchvision.transforms.Resize(int)); ``resize="square"``: resized to size x size
    (Resize((size, size))). Resampling is PIL bicubic. Centre crop offsets are
    int(round((h - size) / 2)) like torchvision's CenterCrop (``crop_offset="round"``), or
    (h - size) // 2 like transformers' image processors (``crop_offset="floor"``); the two differ by
    one pixel when h - size is odd.
    """

    size: int = 224
    resize: str = "shortest"
    crop: bool = True
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    crop_offset: str = "round"

    def offset(self, extent: int) -> int:
        """Where a centre crop of ``size`` starts along an axis of length ``extent``."""
        if self.crop_offset == "floor":
            return (extent - self.size) // 2
        if self.crop_offset == "round":
            return int(round((extent - self.size) / 2.0))
        raise ValueError(f"unknown crop_offset {self.crop_offset!r}")

    def pil(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> float32 CHW array, normalised."""
        image = image.convert("RGB")
        w, h = image.size
        if self.resize == "square":
            new = (self.size, self.size)
        elif self.resize == "shortest":
            if w <= h:
                new = (self.size, int(self.size * h / w))
            else:
                new = (int(self.size * w / h), self.size)
        else:
            raise ValueError(f"unknown resize mode {self.resize!r}")
        if new != (w, h):
            image = image.resize(new, Image.BICUBIC)
        if self.crop:
            w, h = image.size
            top, left = self.offset(h), self.offset(w)
            image = image.crop((left, top, left + self.size, top + self.size))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return arr.transpose(2, 0, 1)

    def batch(self, images: Sequence[Image.Image]):
        return torch().from_numpy(np.stack([self.pil(im) for im in images]))

    def tensor(self, images):
        """Differentiable path for a float tensor [B, 3, H, W] in [0, 1] (training loops).

        A tensor already at the target size gives exactly the PIL path's pixels (interpolating to the same
        size returns the input). Other sizes are resized with antialiased bicubic interpolation: close to,
        not bit-equal with, PIL's resampling.
        """
        t = torch()
        F = t.nn.functional
        _, _, h, w = images.shape
        if self.resize == "square":
            new = (self.size, self.size)
        else:
            new = (int(self.size * h / w), self.size) if w <= h else (self.size, int(self.size * w / h))
            new = (max(new[0], self.size), max(new[1], self.size))
        x = F.interpolate(images, size=new, mode="bicubic", antialias=True, align_corners=False)
        if self.crop:
            top, left = self.offset(x.shape[2]), self.offset(x.shape[3])
            x = x[:, :, top:top + self.size, left:left + self.size]
        mean = t.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = t.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x.clamp(0, 1) - mean) / std


@dataclass(frozen=True)
class TextEncoding:
    """Token ids ready for a model, with the untruncated token count and whether it was cut."""

    input_ids: Any
    attention_mask: Any
    tokens: list[int]
    truncated: list[bool]


class TorchScorer(Scorer):
    """Base of the model-based scorers.

    Options: ``variant`` (a row of ``variants``), ``weights`` (a local file/folder overriding the hub),
    ``revision``, ``device`` (auto/cpu/cuda/mps), ``dtype`` (fp32/bf16/fp16; default ``default_dtype``),
    ``batch_size``, ``allow_pickle``, ``offline``, ``quantize`` (None, or "int8": the model's ``nn.Linear``
    layers, ``fp32_modules`` aside, become dynamically quantised int8 layers; CPU and float32 only; an
    injected model is copied first, never changed); ``model`` / ``processor`` / ``tokenizer`` inject ready
    objects (tests, or two scorers sharing one backbone).

    An injected model is used as it is: it is put in eval mode but never cast or moved, since another
    scorer (or a training loop) may hold it. It runs in its own dtype and on its own device, and a
    ``dtype`` or ``device`` option that disagrees with them is an error. The modules named in
    ``fp32_modules`` (attribute paths from the scorer, e.g. ``model.mlp``) stay float32 when a loaded
    model is cast to a lower precision, as the official reward heads do.
    """

    extra = "models"
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    default_variant: ClassVar[str | None] = None
    default_dtype: ClassVar[str] = "fp32"
    fp32_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, variant: str | None = None, *, weights: str | None = None, revision: str | None = None,
                 device: str | None = None, dtype: str | None = None, batch_size: int = 16,
                 allow_pickle: bool = False, offline: bool | None = None, model: Any = None,
                 processor: Any = None, tokenizer: Any = None, quantize: str | None = None):
        variant = variant or self.default_variant
        if self.variants and variant not in self.variants:
            raise ConfigError(f"unknown variant {variant!r}; variants: {', '.join(self.variants)}")
        if quantize is not None and quantize not in QUANTIZE:
            raise ConfigError(f"quantize {quantize!r} is not one of {', '.join(QUANTIZE)} (or unset)")
        if quantize and (dtype_name(dtype) or self.default_dtype) != "fp32":
            raise ConfigError(f"quantize={quantize} quantises float32 weights: set dtype: fp32")
        self.quantize = quantize
        super().__init__(variant=variant, weights=weights, revision=revision, dtype=dtype)
        self.variant = variant
        self.spec: dict[str, Any] = dict(self.variants.get(variant, {})) if variant else {}
        self.weights, self.revision = weights, revision or self.spec.get("revision")
        self.device_option, self.dtype_option = device, dtype_name(dtype)
        self.batch_size, self.allow_pickle = int(batch_size), allow_pickle
        self.resolver = Resolver(offline=offline)
        self.model, self.processor, self.tokenizer = model, processor, tokenizer
        self.injected = model is not None
        self.tokenizer_injected = tokenizer is not None
        self.processor_injected = processor is not None
        self._injected_identity: dict[str, Any] | None = None
        if self.injected:
            self._check_injected_dtype()

    # -- identity -------------------------------------------------------------------------------
    def source(self, role: str = "model") -> WeightsSource:
        """The variant's repo at its revision, or the ``weights`` folder, as the source of ``role``'s files."""
        return WeightsSource(repo=self.spec.get("repo"), revision=self.revision, local=self.weights, role=role)

    def files(self) -> list[tuple[WeightsSource, str]]:
        """Every file this scorer reads when nothing is injected: by default the variant's ``files``
        ({role: names}) from its repo (or ``weights``)."""
        return [(self.source(role), name) for role, names in self.spec.get("files", {}).items() for name in names]

    def weight_files(self) -> list[tuple[WeightsSource, str]]:
        """The files still read: an injected model, tokenizer or processor replaces its role's files."""
        skip = {role for role, given in (("model", self.injected), ("tokenizer", self.tokenizer_injected),
                                         ("processor", self.processor_injected)) if given}
        return [(src, name) for src, name in self.files() if src.role not in skip]

    def identity(self) -> dict[str, Any]:
        """Name, version, variant, dtype and the SHA-256 of every file read (no model is built); injected
        objects are described by their content (a model by a hash of its parameters).

        The device is left out on purpose: a score computed on a GPU and one computed on the CPU share a
        record key, as they differ only by float rounding (like scores from different batch sizes)."""
        ident = {"name": self.name, "version": self.version, "variant": self.variant, "dtype": self.dtype_label(),
                 "weights": self.files_identity(self.weight_files())}
        if self.quantize:  # only when set: the default key stays the one records were made with
            ident["quantize"] = self.quantize
        if self.injected or self.tokenizer_injected or self.processor_injected:
            if self._injected_identity is None:  # once: hashing a model is slow, and loading must not change the key
                self._injected_identity = {
                    **({"model": parameters_hash(self.model)} if self.injected else {}),
                    **({"tokenizer": describe_injected(self.tokenizer)} if self.tokenizer_injected else {}),
                    **({"processor": describe_injected(self.processor)} if self.processor_injected else {})}
            found = dict(self._injected_identity)
            if "model" in found:
                ident["weights"] = {"injected": found.pop("model"), **ident["weights"]}
            ident.update(found)
        return ident

    def files_identity(self, files: list[tuple[WeightsSource, str]]) -> dict[str, str]:
        """``{role/file: sha256}``: content and role, not location, so the same files moved to another folder,
        taken from the hub cache instead of a local copy, or from a mirror repo keep their records' keys."""
        self.resolver.files(files)  # every missing file named in one error, not one per attempt
        return {f"{src.role}/{name}" if src.role else name: self.resolver.sha256(src, name) for src, name in files}

    def weights_manifest(self) -> dict[str, Any]:
        return self.resolver.manifest()

    def dtype_label(self) -> str:
        """The short name of the dtype the model computes in (an injected model's own)."""
        if self.injected:
            return torch_dtype_name(self._model_dtype())
        return self.dtype_option or self.default_dtype

    # -- loading --------------------------------------------------------------------------------
    def load(self) -> "TorchScorer":
        if not self._loaded:
            if self.injected:
                self.device, self.dtype = self._injected_device(), self._model_dtype()
            else:
                self.device = resolve_device(self.device_option)
                self.dtype = resolve_dtype(self.dtype_option or self.default_dtype)
            self.resolver.files(self.weight_files())  # all missing files in one error, before any is read
            try:
                self._load()
            except AuditError:
                raise
            except Exception as exc:  # e.g. a damaged file read by transformers: this scorer fails, not the run
                files = ", ".join(str(f.path) for f in self.resolver.resolved.values()) or "injected parts"
                raise WeightsError(f"cannot build the model from {files}: {type(exc).__name__}: "
                                   f"{first_line(exc)}") from exc
            self._place()
            if self.quantize:
                self._quantize()
            self._loaded = True
        return self

    def _module(self, path: str) -> Any:
        """The object at a dotted attribute path from the scorer (None where a part is missing)."""
        obj: Any = self
        for part in path.split("."):
            obj = getattr(obj, part, None)
        return obj

    def _place(self) -> None:
        """Cast, move and freeze a loaded model (an injected one is left as it is, flags included);
        ``fp32_modules`` stay float32. Frozen: every parameter has ``requires_grad=False``, so a reward
        back-propagated through a training-loop call (``__call__``) reaches the input pixels and leaves no
        gradient in the reward model; to fine-tune it, ``scorer.model.requires_grad_(True)`` (or a part)."""
        t = torch()
        inside = set(map(id, self.model.modules())) if self.injected else set()
        keep = [m for m in map(self._module, self.fp32_modules) if m is not None and id(m) not in inside]
        # .to() replaces tensors rather than writing into them, so these hold the float32 values
        saved = [m.state_dict() for m in keep]
        if not self.injected:
            self.model.to(device=self.device, dtype=self.dtype)
            self.model.requires_grad_(False)
        self.model.eval()
        for module, state in zip(keep, saved):
            module.to(device=self.device, dtype=t.float32).eval()
            module.load_state_dict(state)

    def _quantize(self) -> None:
        """Swap the model's float32 ``nn.Linear`` layers (``fp32_modules`` aside) for dynamically quantised int8
        ones: weights int8 per output channel, activations quantised per batch. torch's eager dynamic
        quantisation (x86/fbgemm kernels) is used as it is; it runs on the CPU only. torch has announced its
        removal (in favour of the torchao package); a torch without it gets a ConfigError here."""
        t = torch()
        if str(self.device) != "cpu" or self.dtype != t.float32:
            raise ConfigError(f"quantize={self.quantize} runs on the CPU in float32; this scorer is on {self.device} "
                              f"in {torch_dtype_name(self.dtype)}: set device: cpu and dtype: fp32")
        quantization = getattr(getattr(t, "ao", None), "quantization", None)
        if quantization is None or not hasattr(quantization, "quantize_dynamic"):
            raise ConfigError(f"quantize={self.quantize} needs torch.ao.quantization.quantize_dynamic, which torch "
                              f"{t.__version__} lacks")
        if self.injected:
            self.identity()  # the injected model's hash is taken from the float weights before they are swapped
        heads = [m for m in map(self._module, self.fp32_modules) if m is not None]
        keep = {id(sub) for head in heads for sub in head.modules()}
        spec: dict[Any, Any] = {t.nn.Linear: quantization.per_channel_dynamic_qconfig}
        spec.update({name: None for name, sub in self.model.named_modules() if id(sub) in keep})
        with warnings.catch_warnings():  # its deprecation notices (see the docstring) are not the user's to act on
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            self.model = quantization.quantize_dynamic(self.model, spec, dtype=t.qint8, inplace=not self.injected)

    def _model_dtype(self):
        """The dtype most of an injected model's parameters are in (``fp32_modules`` aside)."""
        kept = {id(p) for m in map(self._module, self.fp32_modules) if m is not None for p in m.parameters()}
        sizes: dict[Any, int] = {}
        for p in self.model.parameters():
            if p.is_floating_point() and id(p) not in kept:
                sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
        return max(sizes, key=sizes.get) if sizes else torch().float32

    def _check_injected_dtype(self) -> None:
        have = torch_dtype_name(self._model_dtype())
        if self.dtype_option is not None and self.dtype_option != have:
            raise ConfigError(f"the injected model is {have} but dtype={self.dtype_option}; an injected "
                              f"model is never cast (it may be shared): cast it first, or leave dtype unset")

    def _injected_device(self) -> str:
        t = torch()
        have = next(iter(self.model.parameters())).device
        if self.device_option not in (None, "auto"):
            want = t.device(self.device_option)
            if want.type != have.type or want.index not in (None, have.index):
                raise ConfigError(f"the injected model is on {have} but device={self.device_option}; an "
                                  "injected model is never moved (it may be shared): move it first, or leave device "
                                  "unset")
        return str(have)

    # -- scoring --------------------------------------------------------------------------------
    def _score(self, items: list[tuple[Image.Image, str | None]]) -> list[ScoreResult]:
        results: list[ScoreResult | None] = [None] * len(items)
        good = []
        for i, (img, prompt) in enumerate(items):
            if not isinstance(img, Image.Image):
                results[i] = ScoreResult(None, error=f"no image ({img!r})" if not isinstance(img, Exception)
                                         else f"image failed: {img}")
            elif self.prompt_aware and not (prompt or "").strip():
                results[i] = ScoreResult(None, error="empty prompt")
            else:
                good.append(i)
        if good:
            with torch().inference_mode():
                try:
                    scored = self.score_batch([items[i][0] for i in good], [items[i][1] for i in good])
                except Exception:  # one item broke the batch: score each alone, so only that one fails
                    scored = [self._score_alone(*items[i]) for i in good]
            for i, res in zip(good, scored):
                results[i] = res
        return results  # type: ignore[return-value]

    def _score_alone(self, image: Image.Image, prompt: str | None) -> ScoreResult:
        try:
            return self.score_batch([image], [prompt])[0]
        except Exception as exc:  # any model or preprocessing error is this item's failure, not the run's
            message = str(exc).strip().splitlines()
            return ScoreResult(None, error=f"scoring failed: {type(exc).__name__}: {message[0] if message else ''}")

    def score_batch(self, images: list[Image.Image], prompts: list[str | None]) -> list[ScoreResult]:
        raise NotImplementedError

    def pixels(self, images: list[Image.Image]):
        """Images through ``self.preprocess`` as one batch on the model's device, in its dtype."""
        return self.preprocess.batch(images).to(device=self.device, dtype=self.dtype)


def parameters_hash(model: Any) -> str:
    """A content hash of an injected model's parameters (small models: tests, custom backbones)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def describe_injected(obj: Any) -> Any:
    """What an injected tokenizer or processor puts into the record key: its settings where they can be read
    (a dataclass's fields, a hash of a tokenizer's vocabulary or a processor's config), else its type."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"type": type(obj).__name__, **dataclasses.asdict(obj)}
    for read in ("get_vocab", "to_dict"):
        try:
            content = json.dumps(getattr(obj, read)(), sort_keys=True, default=str)
        except Exception:  # not readable this way: try the next, or fall back to the type
            continue
        return f"injected {type(obj).__name__} {read} sha256:{hashlib.sha256(content.encode()).hexdigest()}"
    return f"injected {type(obj).__name__}"


def unique(seq: Sequence[Any], key=id) -> tuple[list[Any], list[int]]:
    """Distinct elements (by ``key``) in first-seen order, and each element's index among them."""
    index: dict[Any, int] = {}
    distinct, where = [], []
    for x in seq:
        k = key(x)
        if k not in index:
            index[k] = len(distinct)
            distinct.append(x)
        where.append(index[k])
    return distinct, where


def batched(seq: Sequence[Any], size: int):
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


class DualEncoderScorer(TorchScorer):
    """Scores from separately computed image and text embeddings, each distinct input encoded once.

    Subclasses set ``self.preprocess`` in ``_load`` and implement ``encode_pixels`` (and, when prompt-aware,
    ``encode_texts``) and ``combine``.
    """

    def encode_pixels(self, pixel_values):
        """Preprocessed pixels, already on the model's device and in its dtype -> image embeddings [N, D]."""
        raise NotImplementedError

    def encode_images(self, images: list[Image.Image]):
        return self.encode_pixels(self.pixels(images))

    def encode_texts(self, prompts: list[str]) -> tuple[Any, list[int], list[bool]]:
        raise NotImplementedError

    def combine(self, image_emb, text_emb):
        """Per-row score from matched image/text embeddings (both [N, D])."""
        raise NotImplementedError

    def score_batch(self, images, prompts):
        t = torch()
        imgs, img_idx = unique(images)
        img_emb = t.cat([self.encode_images(list(b)) for b in batched(imgs, self.batch_size)])
        if not self.prompt_aware:
            scores = self.combine(img_emb[img_idx], None)
            return [ScoreResult(float(s)) for s in scores.float().cpu()]
        texts, txt_idx = unique(prompts, key=lambda p: p)
        parts = [self.encode_texts(list(b)) for b in batched(texts, self.batch_size)]
        txt_emb = t.cat([p[0] for p in parts])
        tokens = [n for p in parts for n in p[1]]
        truncated = [c for p in parts for c in p[2]]
        scores = self.combine(img_emb[img_idx], txt_emb[txt_idx]).float().cpu()
        return [ScoreResult(float(s), tokens=tokens[j], truncated=truncated[j]) for s, j in zip(scores, txt_idx)]

    def __call__(self, images, prompts: Sequence[str] | None = None):
        """Training-loop API: PIL images or a float tensor [B, 3, H, W] in [0, 1] -> a score tensor [B].

        With a tensor input the graph is kept (no inference mode), so the score can be a reward to
        back-propagate through; preprocessing then uses the differentiable tensor path, in float32 (CPU
        has no bf16/fp16 antialiased bicubic, and resampling in low precision loses detail), and the
        pixels are cast to the model's dtype after it. Embeddings of PIL images and of prompts carry no
        graph (no_grad, not inference mode, so a head with trainable weights can still take them).
        """
        self.load()
        t = torch()
        if isinstance(images, t.Tensor):
            pixels = self.preprocess.tensor(images.to(device=self.device, dtype=t.float32))
            img_emb = self.encode_pixels(pixels.to(self.dtype))
        else:
            with t.no_grad():
                img_emb = self.encode_images(list(images))
        if not self.prompt_aware:
            return self.combine(img_emb, None)
        with t.no_grad():
            txt_emb = self.encode_texts(list(prompts or []))[0]
        return self.combine(img_emb, txt_emb)


def register_variants(cls: type[TorchScorer]) -> type[TorchScorer]:
    """Register one scorer name per variant row: the default under ``cls.name``, others under their key."""
    register("scorers", cls.name)(cls)
    for key in cls.variants:
        if key != cls.default_variant and key != cls.name:
            row = cls.variants[key]
            described = {k: row.get(k, getattr(cls, k)) for k in ("description", "official", "score_scale", "parity")}
            sub = type(cls.__name__ + "_" + "".join(c if c.isalnum() else "_" for c in key), (cls,),
                       {"name": key, "default_variant": key, "__module__": cls.__module__, **described})
            register("scorers", key)(sub)
    return cls


def training_batch(scorer: TorchScorer, images: Any, prompts: Any) -> tuple[Any, list[str]]:
    """Checks the inputs of a prompt-aware scorer's training-loop call (``__call__``): a float tensor
    [B, 3, H, W] or a sequence of PIL images, and exactly one non-empty prompt per image. Returns the
    images (a tensor as given, else a list) and the prompts as a list; any mismatch is an InputError
    naming the item. Int8-quantised scorers refuse a tensor: their layers have no gradient."""
    t = torch()
    if isinstance(images, t.Tensor):
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise InputError(f"{scorer.name}: images must be a float tensor [B, 3, H, W] in [0, 1]; got "
                             f"{str(images.dtype).removeprefix('torch.')} of shape {tuple(images.shape)}")
        if scorer.quantize:
            raise ConfigError(f"{scorer.name}: quantize={scorer.quantize} layers have no gradient, so the tensor "
                              "path cannot give a differentiable reward: build the scorer without quantize")
        count = int(images.shape[0])
    else:
        images = list(images)
        for k, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise InputError(f"{scorer.name}: image {k} is a {type(image).__name__}, not a PIL image",
                                 item=str(k))
        count = len(images)
    if count == 0:
        raise InputError(f"{scorer.name}: no images to score")
    if prompts is None or isinstance(prompts, str):
        raise InputError(f"{scorer.name} is prompt-aware: pass a list of {count} prompts, one per image")
    prompts = list(prompts)
    if len(prompts) != count:
        raise InputError(f"{scorer.name}: {len(prompts)} prompts for {count} images; pass one prompt per image")
    for k, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{scorer.name}: prompt {k} is empty or not text ({prompt!r})", item=str(k))
    return images, prompts


class CrossEncoderScorer(TorchScorer):
    """Scores from a joint image-text model (BLIP-like).

    Distinct images go through the image tower ``batch_size`` at a time; the distinct (image, prompt)
    combinations of each such group then go through the joint part in batches of ``batch_size``, shortest
    prompts together and each batch padded to its own longest prompt (padding is masked, so it changes no
    score), reading their images' states. Only one group's states are held at a time.

    Subclasses set ``self.preprocess`` in ``_load``, implement ``encode_pixels`` and ``joint`` and set
    ``self.max_length`` (tokens kept per prompt, special tokens included). What ``encode_pixels`` returns
    is whatever the joint part needs per image: its hidden states, or work derived from them alone
    (ImageReward keeps every cross-attention layer's keys and values, which would otherwise be recomputed
    for each prompt).

    A model this class loads is frozen (``TorchScorer._place``), so a reward back-propagated through
    ``__call__`` reaches the input pixels and leaves no gradient in the model; to fine-tune the reward
    model itself, set ``scorer.model.requires_grad_(True)``. An injected model keeps its owner's flags.
    """

    max_length: int = 512

    def encode_pixels(self, pixel_values):
        """Preprocessed pixels [N, 3, S, S], on the model's device and in its dtype -> their states for the
        joint part, [N, ...]."""
        raise NotImplementedError

    def encode_images(self, images: list[Image.Image]):
        """Distinct images -> their states for the joint part, [N, ...] on the model's device."""
        return self.encode_pixels(self.pixels(images))

    def joint(self, states, rows, input_ids, attention_mask):
        """Per-row score [B] of token rows [B, L] against the image states ``states[rows]``."""
        raise NotImplementedError

    def tokenize(self, prompts: list[str]) -> tuple[list[list[int]], list[int], list[bool]]:
        """Distinct prompts -> (ids cut at max_length, untruncated counts incl. special tokens, cut flags)."""
        full = self.tokenizer(prompts, verbose=False)["input_ids"]  # no warning: over-long is expected
        cut = self.tokenizer(prompts, truncation=True, max_length=self.max_length)["input_ids"]
        return [list(c) for c in cut], [len(f) for f in full], [len(f) > self.max_length for f in full]

    def collate(self, rows: list[list[int]]):
        return pad_rows(rows, self.tokenizer.pad_token_id or 0, max(len(r) for r in rows), self.device)

    def score_batch(self, images, prompts):
        t = torch()
        imgs, img_idx = unique(images)
        texts, txt_idx = unique(prompts, key=lambda p: p)
        ids, tokens, truncated = self.tokenize(texts)
        combos, combo_idx = unique(list(zip(img_idx, txt_idx)), key=lambda c: c)
        scores = [0.0] * len(combos)
        for first in range(0, len(imgs), self.batch_size):
            states = self.encode_images(imgs[first:first + self.batch_size])
            group = sorted((c for c, (i, _) in enumerate(combos) if first <= i < first + self.batch_size),
                           key=lambda c: len(ids[combos[c][1]]))
            for part in batched(group, self.batch_size):
                input_ids, mask = self.collate([ids[combos[c][1]] for c in part])
                rows = t.tensor([combos[c][0] - first for c in part], dtype=t.long, device=self.device)
                for c, value in zip(part, self.joint(states, rows, input_ids, mask).float().cpu().tolist()):
                    scores[c] = value
        return [ScoreResult(scores[c], tokens=tokens[j], truncated=truncated[j]) for c, j in zip(combo_idx, txt_idx)]

    def __call__(self, images, prompts: Sequence[str]):
        """Training-loop API, as ``DualEncoderScorer.__call__``: PIL images or a float tensor [B, 3, H, W] in
        [0, 1], and one prompt per image -> a score tensor [B] (the values ``score()`` gives, to float rounding).

        With a tensor input the image tower and the joint part run with autograd, so the score is a
        differentiable reward; preprocessing uses ``self.preprocess.tensor`` in float32 (identical to the
        PIL path for a tensor already at the model's input size, otherwise torch's antialiased bicubic
        interpolation, close to but not bit-equal with PIL's resampling) and the pixels are cast to the
        model's dtype after it. PIL images are encoded without a graph. Prompts are tokenised and cut at
        ``max_length`` as ``score()`` cuts them; the whole batch runs at once, padded to its longest prompt.
        """
        self.load()
        t = torch()
        images, prompts = training_batch(self, images, prompts)
        if isinstance(images, t.Tensor):
            if not hasattr(self.preprocess, "tensor"):
                raise ConfigError(f"{self.name}: the injected processor has no tensor() path; inject an "
                                  "ImagePreprocess to score tensors")
            pixels = self.preprocess.tensor(images.to(device=self.device, dtype=t.float32))
            states = self.encode_pixels(pixels.to(self.dtype))
        else:
            with t.no_grad():
                states = self.encode_images(images)
        ids = self.tokenize(prompts)[0]
        input_ids, mask = self.collate(ids)
        rows = t.arange(len(ids), dtype=t.long, device=self.device)
        return self.joint(states, rows, input_ids, mask)
