"""What the CLIP-family scorers share: reading a transformers CLIP checkpoint, the BPE tokenizer, the image
preprocessing a CLIP repo declares, and a dual-encoder base that embeds with ``get_image_features`` /
``get_text_features``.

Checkpoints are read in the Hugging Face layout (``config.json`` + ``model.safetensors``, or
``pytorch_model.bin`` with ``allow_pickle``) through our own safe loader, not ``from_pretrained``: the
model is built from its config without random initialisation and every tensor must come from the file
(a missing or unexpected key is an error, so no random weight can survive into a score). Old
checkpoints also store the ``position_ids`` buffers, which the model builds itself; those are skipped.

The tokenizer is built from ``vocab.json`` + ``merges.txt`` (the files every CLIP repo on the hub
ships); its pipeline is the one transformers uses for CLIP (NFC, whitespace collapse, lower case, the
CLIP word regex, byte-level BPE with ``</w>`` word ends). Prompts are counted untruncated (special
tokens included) and cut like ``truncation=True, max_length=77``: start token, the first 75 tokens,
end token. Padding does not change an embedding (causal attention, pooled at the end token).

Nothing here imports torch or transformers at import time.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError, require
from ._torch import (OPENAI_MEAN, OPENAI_STD, DualEncoderScorer, ImagePreprocess, TextEncoding, pad_rows,
                     skip_init, torch, unit)
from ._weights import WeightsError, WeightsSource, load_state_dict, read_json

MODEL_FILES = ("model.safetensors", "pytorch_model.bin")  # preferred first
TOKENIZER_FILES = ("vocab.json", "merges.txt")
PREPROCESSOR_FILE = "preprocessor_config.json"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
PIL_BICUBIC = 3
# OpenCLIP ViT-H/14's tokenizer and processor files, pinned at a revision that has merges.txt (PickScore's
# processor, HPSv2's tokenizer).
LAION_VIT_H_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
LAION_VIT_H_REVISION = "94a64189c3535c1cb44acfcccd7b0908c1c8eb23"


CONVERTED_FILES = ("config.json", "model.safetensors")


class CheckpointFolder:
    """File lookup of the scorers whose official checkpoint is one pickle that ``convert`` turns into a
    transformers-style folder (HPS v1, HPSv2/2.1, MPS), mixed in before their TorchScorer base.

    ``weights`` = the official pickle (a file, or a folder holding the variant's ``checkpoint``; needs
    ``allow_pickle``), a converted folder (config.json + model.safetensors; preferred when a folder holds
    both) or its model.safetensors file; without it, ``default_checkpoint()``. ``tokenizer`` = a folder
    with vocab.json + merges.txt (or an injected tokenizer object); without it the files beside the
    weights, else the variant's ``tokenizer_repo`` at ``tokenizer_revision``.
    """

    def __init__(self, variant: str | None = None, *, tokenizer: Any = None, **options: Any):
        if tokenizer is not None and not isinstance(tokenizer, (str, Path)) and not callable(tokenizer):
            raise ConfigError(f"tokenizer must be a folder with {' + '.join(TOKENIZER_FILES)} (or a tokenizer object "
                              f"from Python); got {tokenizer!r}")
        folder = tokenizer if isinstance(tokenizer, (str, Path)) else None
        super().__init__(variant, tokenizer=None if folder else tokenizer, **options)
        self.tokenizer_dir = str(folder) if folder else None

    # -- files ----------------------------------------------------------------------------------
    def _local(self) -> Path | None:
        return Path(self.weights).expanduser() if self.weights else None

    def default_checkpoint(self) -> WeightsSource:
        """Where the official checkpoint comes from when ``weights`` is not given: the variant's repo."""
        return self.source("model")

    def _checkpoint(self) -> tuple[WeightsSource, list[str], bool]:
        """(source, files, converted): a converted safetensors folder/file, or the official pickle."""
        p = self._local()
        if p is not None and p.is_file():
            if p.suffix == ".safetensors":
                return WeightsSource(local=str(p.parent), role="model"), ["config.json", p.name], True
            return WeightsSource(local=str(p.parent), role="model"), [p.name], False
        if p is not None and all((p / f).is_file() for f in CONVERTED_FILES):
            return WeightsSource(local=str(p), role="model"), list(CONVERTED_FILES), True
        source = WeightsSource(local=str(p), role="model") if p is not None else self.default_checkpoint()
        return source, [self.spec["checkpoint"]], False

    def _tokenizer_source(self) -> WeightsSource:
        if self.tokenizer_dir:
            return WeightsSource(local=self.tokenizer_dir, role="tokenizer")
        p = self._local()
        folder = p.parent if p is not None and p.is_file() else p
        if folder is not None and all((folder / f).is_file() for f in TOKENIZER_FILES):
            return WeightsSource(local=str(folder), role="tokenizer")
        return WeightsSource(repo=self.spec["tokenizer_repo"], revision=self.spec.get("tokenizer_revision"),
                             role="tokenizer")

    def files(self) -> list[tuple[WeightsSource, str]]:
        tokenizer = [(self._tokenizer_source(), f) for f in TOKENIZER_FILES]
        if self.injected:  # an injected model needs no checkpoint, so none has to be found
            return tokenizer
        source, names, _ = self._checkpoint()
        return [(source, f) for f in names] + tokenizer


def transformers():
    return require("transformers", "models", "the CLIP scorers")


def model_file(source: WeightsSource, hub_default: str = MODEL_FILES[0]) -> str:
    """The weights file to read: a local folder's safetensors, else its pickle; on the hub, ``hub_default``."""
    if source.local:
        base = Path(source.local).expanduser()
        for name in MODEL_FILES:
            if (base / name).is_file():
                return name
        return MODEL_FILES[0]  # missing: the resolver's error names it
    return hub_default


def load_clip(config_path: Path, weights_path: Path, *, allow_pickle: bool, vision_only: bool = False):
    """A transformers CLIPModel (or only its vision tower + projection) from config.json + weights file."""
    tf = transformers()
    config = tf.CLIPConfig.from_json_file(str(config_path))
    state = load_state_dict(weights_path, allow_pickle=allow_pickle)
    state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
    if vision_only:
        state = {k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_projection."))}
        vision = config.vision_config
        vision.projection_dim = config.projection_dim
        with skip_init():
            model = tf.CLIPVisionModelWithProjection(vision)
    else:
        with skip_init():
            model = tf.CLIPModel(config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise WeightsError(f"{weights_path.name} does not fit {config_path}: {str(exc).splitlines()[-1]}") from None
    if missing or unexpected:
        raise WeightsError(f"{weights_path.name} is not the CLIP checkpoint {config_path} describes: "
                           f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                           f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    return model.eval()


def load_tokenizer(vocab_path: Path, merges_path: Path):
    """transformers' CLIP BPE tokenizer from vocab.json + merges.txt."""
    tf = transformers()
    vocab = read_json(vocab_path)
    missing = [t for t in (BOS, EOS) if t not in vocab]
    if missing:
        raise WeightsError(f"{vocab_path} is not a CLIP vocabulary: no {', '.join(missing)}")
    if "vocab" in inspect.signature(tf.CLIPTokenizer.__init__).parameters:  # transformers >= 5
        lines = Path(merges_path).read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
        tokenizer = tf.CLIPTokenizer(vocab=vocab, merges=merges)
    else:
        tokenizer = tf.CLIPTokenizerFast(vocab_file=str(vocab_path), merges_file=str(merges_path))
    if tokenizer.eos_token_id != vocab[EOS] or tokenizer.bos_token_id != vocab[BOS]:
        raise WeightsError(f"the tokenizer built from {vocab_path} does not use its special tokens")
    return tokenizer


def tokenize(tokenizer, prompts: list[str], max_tokens: int, device: Any) -> TextEncoding:
    """Token ids padded to the longest prompt, cut at ``max_tokens`` keeping the end token."""
    ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    counts = [len(x) for x in ids]
    eos = tokenizer.eos_token_id
    cut = [x if len(x) <= max_tokens else x[:max_tokens - 1] + [eos] for x in ids]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    input_ids, mask = pad_rows(cut, pad, max(len(x) for x in cut), device)
    return TextEncoding(input_ids, mask, counts, [n > max_tokens for n in counts])


def _side(value: Any, what: str, path: Path) -> tuple[str, int]:
    """('shortest' | 'square', size) from a processor config's size entry (int or dict)."""
    if isinstance(value, int):
        return "shortest", value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return "shortest", int(value["shortest_edge"])
        if value.get("height") is not None and value.get("height") == value.get("width"):
            return "square", int(value["height"])
    raise ConfigError(f"{path}: unsupported {what} {value!r} (expected an int, shortest_edge, or a square)")


def preprocess_from_config(path: Path | None, image_size: int, crop_offset: str) -> ImagePreprocess:
    """The ImagePreprocess equal to a repo's CLIPImageProcessor config (defaults: CLIP's, at image_size)."""
    if path is None:
        return ImagePreprocess(image_size, "shortest", True, OPENAI_MEAN, OPENAI_STD, crop_offset)
    cfg = read_json(path)
    unsupported = []
    if not cfg.get("do_resize", True):
        unsupported.append("do_resize=false")
    if cfg.get("resample", PIL_BICUBIC) != PIL_BICUBIC:
        unsupported.append(f"resample={cfg['resample']} (only 3, bicubic)")
    if cfg.get("do_rescale", True) is False or abs(cfg.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
        unsupported.append("rescaling other than 1/255")
    mode, size = _side(cfg.get("size", image_size), "size", path)
    crop = bool(cfg.get("do_center_crop", True))
    if crop:
        _, crop_size = _side(cfg.get("crop_size", size), "crop_size", path)
        if crop_size != size:
            unsupported.append(f"crop_size {crop_size} != size {size}")
    if unsupported:
        raise ConfigError(f"{path}: preprocessing not supported: {'; '.join(unsupported)}")
    if cfg.get("do_normalize", True):
        mean = tuple(float(x) for x in cfg.get("image_mean", OPENAI_MEAN))
        std = tuple(float(x) for x in cfg.get("image_std", OPENAI_STD))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return ImagePreprocess(size, mode, crop, mean, std, crop_offset)  # type: ignore[arg-type]


def pooled(output: Any):
    """Projected features from get_*_features (a tensor before transformers 5, an output object since)."""
    if isinstance(output, torch().Tensor):
        return output
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise TypeError(f"no features in {type(output).__name__}")


def image_features(model: Any, pixel_values: Any):
    """Projected image features of a CLIPModel or a CLIPVisionModelWithProjection."""
    if hasattr(model, "get_image_features"):
        return pooled(model.get_image_features(pixel_values=pixel_values))
    return model(pixel_values=pixel_values).image_embeds


class CLIPImageTower(DualEncoderScorer):
    """A dual encoder whose image side is a transformers CLIP vision tower + projection, L2-normalised."""

    def encode_pixels(self, pixel_values):
        return unit(image_features(self.model, pixel_values))


class CLIPDualEncoder(CLIPImageTower):
    """A transformers CLIPModel + its tokenizer and preprocessing; the score is ``scale * cos``.

    Sources: the model repo (``repo``/``revision`` in the variant, or the options; ``weights`` for a
    local folder) and the processor repo (tokenizer files + preprocessor_config.json): the model repo
    unless the variant names ``processor_repo``; ``processor_weights`` points at a local folder.
    Injectable: ``model`` (a CLIPModel), ``tokenizer`` (a CLIP tokenizer), ``processor`` (an
    ImagePreprocess).
    """

    score_range: ClassVar[tuple[float | None, float | None]] = (-100.0, 100.0)
    max_prompt_tokens: ClassVar[int | None] = 77

    def __init__(self, variant: str | None = None, *, repo: str | None = None,
                 processor_weights: str | None = None, **options: Any):
        super().__init__(variant, **options)
        if repo is not None:
            self.spec["repo"] = repo
            self.revision = options.get("revision")  # a pinned revision belongs to the variant's repo
        self.processor_weights = processor_weights

    # -- sources ----------------------------------------------------------------------------------
    def model_source(self) -> WeightsSource:
        return self.source("model")

    def processor_source(self, role: str) -> WeightsSource:
        """Where the tokenizer (``role="tokenizer"``) and preprocessor (``"processor"``) files come from."""
        if self.processor_weights:
            return WeightsSource(repo=self.spec.get("processor_repo"), local=self.processor_weights, role=role)
        if self.spec.get("processor_repo"):
            return WeightsSource(repo=self.spec["processor_repo"], revision=self.spec.get("processor_revision"),
                                 role=role)
        return self.source(role)

    def _preprocessor_file(self) -> tuple[WeightsSource, str] | None:
        """The processor config: always read from the hub; from a local folder when it is there."""
        source = self.processor_source("processor")
        if source.local and not (Path(source.local).expanduser() / PREPROCESSOR_FILE).is_file():
            return None
        return source, PREPROCESSOR_FILE

    def model_files(self) -> tuple[tuple[WeightsSource, str], tuple[WeightsSource, str]]:
        source = self.model_source()
        return (source, "config.json"), (source, model_file(source, self.spec.get("weights_file", MODEL_FILES[0])))

    def tokenizer_files(self) -> list[tuple[WeightsSource, str]]:
        return [(self.processor_source("tokenizer"), name) for name in TOKENIZER_FILES]

    def files(self) -> list[tuple[WeightsSource, str]]:
        extra = self._preprocessor_file()
        return [*self.model_files(), *self.tokenizer_files(), *([extra] if extra else [])]

    # -- loading ----------------------------------------------------------------------------------
    def _load(self) -> None:
        if self.model is None:
            config, weights = (self.resolver.file(*f) for f in self.model_files())
            self.model = load_clip(config, weights, allow_pickle=self.allow_pickle)
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(*(self.resolver.file(*f) for f in self.tokenizer_files()))
        vision = self.model.config.vision_config
        if self.processor is not None:
            self.preprocess = self.processor
        else:
            extra = self._preprocessor_file()
            path = self.resolver.file(*extra) if extra else None
            self.preprocess = preprocess_from_config(path, vision.image_size, self.spec.get("crop_offset", "floor"))
        if self.preprocess.crop and self.preprocess.size != vision.image_size:
            raise ConfigError(f"the processor crops to {self.preprocess.size} pixels but the model "
                              f"takes {vision.image_size}")
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)
        # read before load() casts the model: exp() of a bf16 logit scale would be off by ~1%
        self.logit_scale = float(self.model.logit_scale.detach().float().exp())

    # -- encoding ---------------------------------------------------------------------------------
    def encode_texts(self, prompts):
        enc = tokenize(self.tokenizer, prompts, self.max_tokens, self.device)
        feats = pooled(self.model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask))
        return unit(feats), enc.tokens, enc.truncated

    def scale(self) -> float:
        raise NotImplementedError

    def combine(self, image_emb, text_emb):
        return self.scale() * (image_emb * text_emb).sum(dim=-1)
