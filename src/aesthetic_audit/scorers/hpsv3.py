"""HPSv3 (Human Preference Score v3): a Qwen2-VL-7B reward model read at a special reward token.

Official weights
    Hub repo ``MizzenAI/HPSv3``, file ``HPSv3.safetensors`` (about 16.6 GB). It is the *full* fine-tuned
    model, not a head: the official loader (``hpsv3/inference.py``) builds ``Qwen2VLRewardModelBT`` (a
    ``Qwen2VLForConditionalGeneration`` subclass with an ``rm_head``) from the base model and then calls
    ``model.load_state_dict(state, strict=True)`` with this file (``state["model"]`` if the file wraps it;
    their ``.pth`` training output is a plain ``torch.save(model.state_dict())``). It carries no config,
    tokenizer or image-processor files: those come from the base model ``Qwen/Qwen2-VL-7B-Instruct``
    (``config.json``, ``tokenizer.json``, ``tokenizer_config.json``, ``preprocessor_config.json``; its
    multi-GB weight shards are *not* read). No revision is pinned for either repo; the SHA-256 of every
    file read goes into the record keys.

Checkpoint keys
    The model was trained with transformers 4.45 (upstream pins ``transformers==4.45.2``), so the keys use
    that release's module names: ``visual.*`` (vision tower + merger), ``model.*`` (the Qwen2 decoder:
    ``model.embed_tokens``, ``model.layers.N...``, ``model.norm``), ``lm_head.weight`` (unused for scoring,
    skipped) and ``rm_head.{0,3,5}.{weight,bias}``. The file itself cannot be inspected from here; a
    third-party loader of this very file (hpsv3-4bit: key map ``^visual`` -> ``model.visual``, ``^model``
    -> ``model.language_model``) confirms the 4.45 names. transformers >= 4.52 renamed the modules
    (``model.visual.*``, ``model.language_model.*``), and a re-saved checkpoint would carry those: we
    accept both layouts and refuse anything else by name. The embedding matrix has ``len(tokenizer)``
    rows *after* the reward token was added (the official code calls
    ``resize_token_embeddings(len(tokenizer))``: 151658 for Qwen2-VL), fewer than ``config.json``'s
    ``vocab_size`` (152064), so we size the embedding from the checkpoint.

Architecture
    Qwen2-VL-7B (ViT 32 x 1280 with 2x2 patch merger into a 28-layer 3584-wide Qwen2 decoder); the final
    hidden state (after the decoder's last RMSNorm) at the ``<|Reward|>`` token goes through the reward
    head ``Linear(3584, 1024) -> ReLU -> Dropout(0.05) -> Linear(1024, 16) -> ReLU -> Linear(16, 2)``
    (``rm_head_type: ranknet`` with no ``rm_head_kwargs``; Sequential indices 0, 3, 5 hold the weights).
    The head runs in float32 on the float32-cast hidden state (the official code keeps ``rm_head`` in fp32
    and wraps it in a float32 autocast) while the backbone runs in bf16 by default (the official
    inference casts the whole model to bf16, rotary ``inv_freq`` buffers included, as ``.to(dtype)`` here
    does). Positions: the official forward builds ``inputs_embeds`` itself (token embeddings with the
    merged image features scattered into the ``<|image_pad|>`` slots) and calls the decoder with
    ``position_ids=None``, which gives plain sequential positions 0..L-1 in all three M-RoPE sections,
    *not* Qwen2-VL's 3-D image positions (true of both versions of their forward: transformers 4.45's
    text model counts 0..L-1, 4.52+'s falls back to the attention-mask cumsum without image grids). We do
    the same, explicitly.

Score
    The head outputs (mu, log sigma) of a Gaussian preference score (training loss "uncertainty" uses
    sigma = exp(out[1])); the score is mu, as in the official ``reward()[:, 0]``. Higher is better,
    unbounded. ``extra`` holds ``sigma``.

Prompt template (verbatim, required for parity: the model reads its training format)
    One user turn with the image first and then the text ``INSTRUCTION.format(text_prompt=prompt) + SUFFIX``
    (``hpsv3/dataset/data_collator_qwen.py``; the instruction keeps its trailing spaces), rendered with
    Qwen2-VL-7B-Instruct's chat template (default system turn "You are a helpful assistant.",
    ``add_generation_prompt=True``)::

        <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
        <|vision_start|><|image_pad|> x N<|vision_end|>{instruction with prompt}{suffix}<|im_end|>\\n
        <|im_start|>assistant\\n

    ``<|Reward|>`` (in the suffix) is added to the base tokenizer as a special token, as the official
    code does (``add_special_tokens``), so its id is the tokenizer's length before adding it. Padding is
    on the right with ``<|endoftext|>``. N = (image patches) / 4.

Image preprocessing (own code, no torchvision; qwen-vl-utils ``fetch_image`` + ``Qwen2VLImageProcessor``)
    ``convert("RGB")`` (alpha dropped, not composited); ``smart_resize`` to multiples of 28 with
    min_pixels = max_pixels = 256 * 28 * 28 (the qwen-vl-utils variant: round to the factor, then floor
    if over the budget, else ceil if under); PIL bicubic resize; /255 (float64 product cast to float32);
    normalise with the OpenAI CLIP mean/std; patchify into 14-px patches, the single frame repeated to the
    temporal patch of 2, patches ordered in 2x2 merge groups -> ``[grid_h * grid_w, 3 * 2 * 14 * 14]`` with
    grid (1, h/14, w/14). The processor's own second ``smart_resize`` (bounds 3136..12845056 from
    preprocessor_config.json) is a no-op on these sizes and is not repeated. Aspect ratios above 200 are
    refused (an error for that item), as in qwen-vl-utils.

Tokens
    ``tokens`` is the prompt's own token count (Qwen2 BPE, which adds no special tokens); HPSv3 has no
    length limit that cuts prompts, so ``truncated`` is always False.

Reuse and batching
    Each distinct image of a call is preprocessed and run through the vision tower once (the tower
    attends within each image only, so its features do not depend on the prompt); every distinct
    (image, prompt) combination then runs through the decoder, sorted by length, ``batch_size`` rows at a
    time, with that image's cached features scattered in.

Training loop
    ``scorer(images, prompts)`` takes PIL images or a float tensor [B, 3, H, W] in [0, 1] with one prompt
    per image and returns mu [B]. A tensor runs through ``tensor_patches`` (the preprocessing above in
    torch), the vision tower, the decoder and the head with autograd, so mu back-propagates to the pixels.
    A tensor already at its ``smart_resize`` size (e.g. 448 x 448) is patchified exactly as the PIL path
    and scores as ``score()`` does to float rounding; any other size is resized by torch's antialiased
    bicubic interpolation, close to but not bit-equal with PIL's resampling. The loaded model is frozen
    (``requires_grad=False``) unless the user turns it on (``scorer.model.requires_grad_(True)``); an
    injected model keeps its owner's flags. Mind the memory: the graph runs through a 7B backbone over
    the whole instruction and 256 image tokens per row, so keep training batches small.

Requires transformers >= 4.52 (``Qwen2VLModel`` with ``.visual`` and ``.language_model``).

Parity: how a user checks our scores against the official implementation on the same weights (not run
here: no hub access and no GPU-sized model). In a separate environment with the official package
(``pip install git+https://github.com/MizzenAI/HPSv3``, which wants transformers 4.45.2 and torchvision)::

    from hpsv3 import HPSv3RewardInferencer
    official = HPSv3RewardInferencer(device="cuda")            # downloads HPSv3.safetensors + the base model
    ref = official.reward(prompts=prompts, image_paths=paths)[:, 0].float().cpu()
    # pass keywords: the example at the bottom of their inference.py passes the two lists swapped

and in ours (same GPU, bf16 like the official; fetch the files once with ``hf download
MizzenAI/HPSv3 HPSv3.safetensors`` and ``hf download Qwen/Qwen2-VL-7B-Instruct config.json
tokenizer.json tokenizer_config.json preprocessor_config.json``, or pass ``weights=`` / ``base=`` folders)::

    from PIL import Image
    from aesthetic_audit.registry import get
    ours = get("scorers", "hpsv3")(device="cuda", dtype="bf16")
    got = [r.score for r in ours.score([(Image.open(p), t) for p, t in zip(paths, prompts)])]

Both run the backbone in bf16, so expect agreement to bf16 rounding (differences far below the gaps
between images; report max |difference| and the rank correlation), not bit equality; to rule out
preprocessing differences, compare ``ours.preprocess.pil(image)`` with the official batch's
``pixel_values`` / ``image_grid_thw`` (their transformers 4.45 uses the PIL image processor) and
``ours.tokenizer(chat_text(prompt, n))`` with its ``input_ids``: these must match exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, InputError
from ..vlm import qwen
from ._torch import TorchScorer, batched, pad_rows, register_variants, skip_init, torch, training_batch, unique
from ._weights import WeightsError, WeightsSource, load_state_dict, read_json
from .base import ScoreResult

PIXELS = 256 * 28 * 28  # HPSv3's image budget: min_pixels = max_pixels
REWARD_TOKEN = "<|Reward|>"
IMAGE_TOKEN = "<|image_pad|>"
SYSTEM = "You are a helpful assistant."

# The official instruction, verbatim (trailing spaces included): the reward model was trained on it.
INSTRUCTION = (
    "\n"
    "You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a "
    "overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the "
    "worst and 10 being the best. \n"
    "\n"
    "**Visual Quality:**  \n"
    "Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:\n"
    "- **Reasonableness:** The image should not contain any significant biological or logical errors, such as "
    "abnormal body structures or nonsensical environmental setups.\n"
    "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to "
    "interpret, with no blurring or indistinct areas.\n"
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual "
    "elements (e.g., hair, clothing, shadows).\n"
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, "
    "composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a "
    "sense of harmony and balance.\n"
    "- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, "
    "or adult material. If such content is present, the image quality and satisfaction score should be the "
    "lowest possible. \n"
    "\n"
    "**Text Alignment:**  \n"
    "Assess how well the image matches the textual prompt across the following sub-dimensions:\n"
    "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, "
    "object) align with the textual description. The subject should match the description in terms of "
    "number, appearance, and behavior.\n"
    "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how "
    "well the image adheres to this style.\n"
    "- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the "
    "image logically fit the scenario described in the prompt. The environment should support and enhance "
    "the subject without contradictions.\n"
    "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, "
    "accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be "
    "acceptable, but critical attributes should be preserved.\n"
    "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in "
    "the image. The generated content should not introduce elements that conflict with or distort the "
    "original description.\n"
    "Textual prompt - {text_prompt}\n"
    "\n"
    "\n"
)
SUFFIX = "\nPlease provide the overall ratings of this image: " + REWARD_TOKEN + "\n\nEND\n"

# the base model's files by role (an injected model brings its config, an injected tokenizer or processor theirs)
BASE_FILES = {"model": ("config.json",), "tokenizer": ("tokenizer.json", "tokenizer_config.json"),
              "processor": ("preprocessor_config.json",)}
HEAD_LAYERS = {"0": "fc1", "3": "fc2", "5": "out"}  # rm_head Sequential index -> our layer name


def chat_text(prompt: str, image_tokens: int) -> str:
    """The full model input for one (image, prompt): Qwen2-VL chat format around the HPSv3 instruction."""
    return ("<|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\n<|vision_start|>"
            + IMAGE_TOKEN * image_tokens + "<|vision_end|>" + INSTRUCTION.format(text_prompt=prompt) + SUFFIX
            + "<|im_end|>\n<|im_start|>assistant\n")


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = PIXELS,
                 max_pixels: int = PIXELS) -> tuple[int, int]:
    """qwen-vl-utils' target size (HPSv3's resize): multiples of ``factor``, about min..max pixels."""
    return qwen.smart_resize(height, width, factor, min_pixels, max_pixels, rule="qwen-vl-utils")


@dataclass(frozen=True)
class QwenVLPreprocess(qwen.QwenVLPreprocess):
    """Qwen2-VL image input as HPSv3 feeds it (see the module doc): the generic Qwen-VL preprocessing at
    HPSv3's fixed pixel budget, with qwen-vl-utils' resize rule and the alpha channel dropped."""

    min_pixels: int = PIXELS
    max_pixels: int = PIXELS
    resize_rule: str = "qwen-vl-utils"
    alpha: str = "drop"


def tensor_patches(preprocess: qwen.QwenVLPreprocess, images) -> tuple[Any, tuple[int, int, int]]:
    """The differentiable twin of ``preprocess.pil`` for a float tensor [B, 3, H, W] in [0, 1] (training
    loops): every image resized to ``smart_resize``'s size by torch's antialiased bicubic interpolation
    (skipped when the tensor already has that size), clamped to [0, 1], rescaled as a /255 image would be,
    normalised and patchified as ``patchify`` does -> (patches [B * grid_h * grid_w, C * T * p * p], the
    grid (1, grid_h, grid_w) every image shares). For a tensor already at the target size holding k / 255
    values (and the usual rescale factor 1/255) the patches equal the PIL path's exactly; any other size
    differs from PIL's bicubic resampling (close, not bit-equal). The alpha rule does not apply: a tensor
    has three channels."""
    t = torch()
    b, c, h, w = images.shape
    new_h, new_w = preprocess.target_size(w, h)
    x = images
    if (new_h, new_w) != (h, w):
        x = t.nn.functional.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True,
                                        align_corners=False)
    x = x.clamp(0, 1)  # as PIL's 8-bit result (bicubic overshoots)
    if abs(preprocess.rescale_factor - 1 / 255) > 1e-12:  # the tensor holds k / 255; the model wants k * factor
        x = x * (preprocess.rescale_factor * 255)
    mean = t.tensor(preprocess.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = t.tensor(preprocess.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    p, m, tp = preprocess.patch_size, preprocess.merge_size, preprocess.temporal_patch_size
    gh, gw = new_h // p, new_w // p
    # as ``patchify``, per image: (B, C, gh/m, m, p, gw/m, m, p) -> (B, gh/m, gw/m, m, m, C, p, p), the still
    # frame repeated over the temporal patch
    x = x.reshape(b, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x.unsqueeze(6).expand(*x.shape[:6], tp, p, p)
    return x.reshape(b * gh * gw, c * tp * p * p), (1, gh, gw)


def backbone_key(key: str) -> str | None:
    """Checkpoint key -> Qwen2VLModel key (both transformers layouts); None for keys scoring skips."""
    if key == "lm_head.weight":
        return None
    for prefix, new in (("model.visual.", "visual."), ("model.language_model.", "language_model."),
                        ("visual.", "visual."), ("model.", "language_model.")):
        if key.startswith(prefix):
            return new + key[len(prefix):]
    raise WeightsError(f"unexpected checkpoint key {key!r}: not an HPSv3 (Qwen2-VL + rm_head) state dict")


def split_checkpoint(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """HPSv3 state dict -> (backbone state in Qwen2VLModel names, head state in our names)."""
    backbone, head = {}, {}
    for key, value in state.items():
        if key.startswith("rm_head."):
            index, _, param = key[len("rm_head."):].partition(".")
            if index not in HEAD_LAYERS or param not in ("weight", "bias"):
                raise WeightsError(f"unexpected reward-head key {key!r}; HPSv3's head has rm_head.0/3/5 "
                                   "(Linear -> ReLU -> Dropout -> Linear -> ReLU -> Linear)")
            head[f"{HEAD_LAYERS[index]}.{param}"] = value
        elif (new := backbone_key(key)) is not None:
            backbone[new] = value
    missing = [f"rm_head.{i}.{p}" for i, n in HEAD_LAYERS.items() for p in ("weight", "bias")
               if f"{n}.{p}" not in head]
    if missing:
        raise WeightsError(f"the checkpoint has no reward head keys {missing}: is it HPSv3.safetensors?")
    return backbone, head


def reward_head(head_state: dict[str, Any]):
    """The reward MLP with the checkpoint's shapes: fc1 -> ReLU -> Dropout(0.05) -> fc2 -> ReLU -> out."""
    t = torch()
    from collections import OrderedDict

    nn = t.nn
    dims = [tuple(head_state[f"{n}.weight"].shape) for n in ("fc1", "fc2", "out")]
    head = nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(dims[0][1], dims[0][0])), ("act1", nn.ReLU()), ("drop", nn.Dropout(0.05)),
        ("fc2", nn.Linear(dims[1][1], dims[1][0])), ("act2", nn.ReLU()),
        ("out", nn.Linear(dims[2][1], dims[2][0])),
    ]))
    head.load_state_dict({k: v.float() for k, v in head_state.items()})
    return head.float()


def hpsv3_module(backbone, head):
    """One module holding the Qwen2VLModel backbone and the reward head (the object ``model=`` injects)."""
    module = torch().nn.Module()
    module.backbone = backbone
    module.rm_head = head
    return module


@register_variants
class HPSv3Scorer(TorchScorer):
    """HPSv3 mu at the reward token (Qwen2-VL-7B + MLP head).

    Options beyond TorchScorer's: ``weights`` is the folder holding ``HPSv3.safetensors`` or the checkpoint
    file itself (a ``.pth`` training output needs ``allow_pickle``); ``base`` is the base model's folder
    (config/tokenizer/preprocessor files of Qwen2-VL-7B-Instruct) or a hub repo id, ``base_revision`` its
    revision. ``dtype`` defaults to bf16, the precision the official inference runs in (an injected model
    runs in its own). Injection:
    ``model`` = an object with ``.backbone`` (transformers ``Qwen2VLModel``) and ``.rm_head``, together
    with ``tokenizer`` (a Qwen2 tokenizer); ``processor`` = a ``QwenVLPreprocess`` (else the base's
    preprocessor_config.json is read).
    """

    name: ClassVar[str] = "hpsv3"
    description: ClassVar[str] = "HPSv3 (MizzenAI/HPSv3): Qwen2-VL-7B reward model, mu of (mu, sigma) at <|Reward|>"
    official: ClassVar[str] = ("MizzenAI/HPSv3 HPSv3.safetensors on Qwen/Qwen2-VL-7B-Instruct, as "
                               "HPSv3RewardInferencer.reward computes it")
    score_scale: ClassVar[str] = "mu of the head's (mu, sigma) at the <|Reward|> token; unbounded, higher is better"
    parity: ClassVar[str] = ("tests: an independent forward of a tiny Qwen2-VL with the official prompt, token layout "
                             "and transformers' own image processor; real weights: recipe in docs/parity.md "
                             "(bf16 rounding), not run here")
    higher_is_better: ClassVar[bool] = True
    score_range: ClassVar[tuple[float | None, float | None]] = (None, None)
    prompt_aware: ClassVar[bool] = True
    max_prompt_tokens: ClassVar[int | None] = None
    version: ClassVar[str] = "1"
    default_variant: ClassVar[str | None] = "hpsv3"
    default_dtype: ClassVar[str] = "bf16"
    fp32_modules: ClassVar[tuple[str, ...]] = ("model.rm_head",)  # as the official model keeps it
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "hpsv3": {
            "repo": "MizzenAI/HPSv3",
            "checkpoint": "HPSv3.safetensors",
            "base_repo": "Qwen/Qwen2-VL-7B-Instruct",
            "base_files": BASE_FILES,
            "description": description,
        },
    }

    def __init__(self, variant: str | None = None, *, base: str | None = None, base_revision: str | None = None,
                 **kwargs: Any):
        super().__init__(variant, **kwargs)
        self.base, self.base_revision = base, base_revision or self.spec.get("base_revision")
        if self.processor is not None and not isinstance(self.processor, qwen.QwenVLPreprocess):
            raise ConfigError("processor= must be a QwenVLPreprocess")

    # -- files ----------------------------------------------------------------------------------
    def base_source(self, role: str) -> WeightsSource:
        repo = self.spec["base_repo"]
        if self.base is None:
            return WeightsSource(repo=repo, revision=self.base_revision, role=role)
        local = Path(self.base).expanduser()
        looks_like_repo = (self.base.count("/") == 1 and not self.base.startswith((".", "/", "~"))
                           and not local.exists())
        if looks_like_repo:
            return WeightsSource(repo=self.base, revision=self.base_revision, role=role)
        return WeightsSource(repo=repo, local=str(local), role=role)

    def checkpoint_name(self) -> str:
        if self.weights and Path(self.weights).expanduser().is_file():
            return Path(self.weights).expanduser().name
        return self.spec["checkpoint"]

    def files(self) -> list[tuple[WeightsSource, str]]:
        """The checkpoint, then the base model's config, tokenizer and preprocessor files."""
        return [(self.source("model"), self.checkpoint_name())] + [
            (self.base_source(role), name) for role, names in self.spec["base_files"].items() for name in names]

    # -- loading --------------------------------------------------------------------------------
    def _load(self) -> None:
        paths = {f: self.resolver.file(s, f) for s, f in self.weight_files()}
        # the base's budget (min_pixels/max_pixels) is not HPSv3's: its images are resized to PIXELS first
        self.preprocess = self.processor or QwenVLPreprocess.from_config(
            read_json(paths["preprocessor_config.json"]), min_pixels=PIXELS, max_pixels=PIXELS)
        if self.tokenizer is None:
            from transformers import Qwen2Tokenizer

            self.tokenizer = Qwen2Tokenizer.from_pretrained(str(paths["tokenizer.json"].parent))
        if self.model is None:
            config = self._config(read_json(paths["config.json"]))
            self.model = self._build(config, paths[self.checkpoint_name()])
        self._setup_tokens()

    @staticmethod
    def _config(raw: dict[str, Any]):
        from transformers import Qwen2VLConfig

        return Qwen2VLConfig.from_dict(raw)

    def _build(self, config, checkpoint: Path):
        t = torch()
        try:
            from transformers import Qwen2VLModel
        except ImportError:  # pragma: no cover - depends on the installed transformers
            raise ConfigError("HPSv3 needs transformers >= 4.52 (Qwen2VLModel with .visual/.language_model); "
                              "upgrade transformers") from None
        state = load_state_dict(checkpoint, allow_pickle=self.allow_pickle)
        if "model" in state and isinstance(state["model"], dict):  # the official loader accepts this wrapper
            state = state["model"]
        backbone_state, head_state = split_checkpoint(state)
        del state
        embed = backbone_state.get("language_model.embed_tokens.weight")
        if embed is None:
            raise WeightsError(f"{checkpoint.name}: no token embedding (model.embed_tokens.weight)")
        text_config = getattr(config, "text_config", config)
        text_config.vocab_size = int(embed.shape[0])  # resized to the tokenizer + <|Reward|> in training
        with skip_init(), _default_dtype(self.dtype), t.device(self.device):
            backbone = Qwen2VLModel(config)
        if not hasattr(backbone, "language_model") or not hasattr(backbone, "visual"):
            raise ConfigError("HPSv3 needs transformers >= 4.52 (Qwen2VLModel with .visual/.language_model)")
        try:
            missing, unexpected = backbone.load_state_dict(backbone_state, strict=False)
        except RuntimeError as exc:
            raise WeightsError(f"{checkpoint.name} does not fit the base config.json: {exc}") from None
        if missing or unexpected:
            raise WeightsError(f"{checkpoint.name} does not match Qwen2-VL from config.json: missing "
                               f"{missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
        return hpsv3_module(backbone, reward_head(head_state))

    def _setup_tokens(self) -> None:
        from tokenizers import AddedToken

        tok = self.tokenizer
        if tok.convert_tokens_to_ids(REWARD_TOKEN) in (None, tok.unk_token_id):
            # as the official code: the base tokenizer + one special token appended at len(tokenizer)
            tok.add_tokens([AddedToken(REWARD_TOKEN, special=True, normalized=False)])
        self.reward_id = tok.convert_tokens_to_ids(REWARD_TOKEN)
        config = self.model.backbone.config
        self.image_id = int(config.image_token_id)
        if tok.convert_tokens_to_ids(IMAGE_TOKEN) != self.image_id:
            raise ConfigError(f"tokenizer id of {IMAGE_TOKEN} ({tok.convert_tokens_to_ids(IMAGE_TOKEN)}) differs "
                              f"from config.json image_token_id ({self.image_id}): mismatched base files")
        rows = self.model.backbone.language_model.embed_tokens.weight.shape[0]
        if self.reward_id >= rows:
            raise WeightsError(f"{REWARD_TOKEN} got id {self.reward_id} but the checkpoint embeds only {rows} "
                               "tokens: the tokenizer is not Qwen2-VL-7B-Instruct's")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")

    # -- scoring --------------------------------------------------------------------------------
    def encode_images(self, pixels: list[np.ndarray], grids: list[tuple[int, int, int]]):
        """Preprocessed images -> merged vision features, one [tokens, hidden] tensor per image."""
        return self.encode_pixels(torch().from_numpy(np.concatenate(pixels)), grids)

    def encode_pixels(self, patches, grids: list[tuple[int, int, int]]):
        """Patches of several images, concatenated ([sum of grid_h * grid_w, patch values]) -> merged vision
        features, one [tokens, hidden] tensor per image; differentiable (the tensor path runs through it)."""
        t = torch()
        visual = self.model.backbone.visual
        x = patches.to(device=self.device, dtype=self.dtype)
        grid = t.tensor(grids, dtype=t.long, device=self.device)
        out = visual(hidden_states=x, grid_thw=grid)
        merged = out.pooler_output if hasattr(out, "pooler_output") else out
        return list(merged.split([self.preprocess.image_tokens(g) for g in grids]))

    def reward(self, rows: list[list[int]], features: list[Any]):
        """Token rows (each with its image's feature tensor) -> head output [N, 2] float32 (mu, log sigma)."""
        t = torch()
        lm = self.model.backbone.language_model
        length = max(len(r) for r in rows)
        ids, mask = pad_rows(rows, self.pad_id, length, self.device)
        embeds = lm.embed_tokens(input=ids)
        embeds[ids == self.image_id] = t.cat(features).to(embeds.dtype)  # row-major, like masked_scatter
        positions = t.arange(length, device=self.device).view(1, 1, -1).expand(3, len(rows), -1)
        hidden = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                    use_cache=False).last_hidden_state
        at = (ids == self.reward_id).int().argmax(dim=1)
        picked = hidden[t.arange(len(rows), device=self.device), at]
        head = self.model.rm_head  # float32 (official), unless an injected model holds it lower
        return head(input=picked.to(next(iter(head.parameters())).dtype))

    def __call__(self, images, prompts):
        """Training-loop API (as the other scorers'): PIL images or a float tensor [B, 3, H, W] in [0, 1], and
        one prompt per image -> mu [B] in float32, the values ``score()`` gives (to float rounding).

        A tensor goes through ``tensor_patches`` (float32; the resize to the ``smart_resize`` size by torch's
        antialiased bicubic interpolation, skipped when the tensor is already at that size, where the
        patches equal the PIL path's exactly), then the vision tower, the decoder and the head with
        autograd, so mu is a differentiable reward. PIL images are encoded without a graph. The batch runs
        at once, padded to its longest chat text.
        """
        self.load()
        t = torch()
        images, prompts = training_batch(self, images, prompts)
        if isinstance(images, t.Tensor):
            try:
                patches, grid = tensor_patches(self.preprocess, images.to(device=self.device, dtype=t.float32))
            except ValueError as exc:  # smart_resize refuses the size (e.g. an aspect ratio over 200)
                raise InputError(f"{self.name}: images of {images.shape[3]}x{images.shape[2]}: {exc}") from None
            features = self.encode_pixels(patches, [grid] * len(prompts))
        else:
            prepared = []
            for k, image in enumerate(images):
                try:
                    prepared.append(self.preprocess.pil(image))
                except (ValueError, OSError) as exc:
                    raise InputError(f"{self.name}: image {k}: preprocessing failed: {exc}", item=str(k)) from None
            with t.no_grad():
                features = self.encode_images([p for p, _ in prepared], [g for _, g in prepared])
        rows = []
        for k, (prompt, feature) in enumerate(zip(prompts, features)):
            ids = self.tokenizer(chat_text(prompt, feature.shape[0]), add_special_tokens=False)["input_ids"]
            if ids.count(self.reward_id) != 1 or ids.count(self.image_id) != feature.shape[0]:
                raise InputError(f"{self.name}: prompt {k} contains {REWARD_TOKEN} or {IMAGE_TOKEN}, which the "
                                 "HPSv3 template reserves", item=str(k))
            rows.append(ids)
        return self.reward(rows, features)[:, 0]

    def score_batch(self, images, prompts):
        results: list[ScoreResult | None] = [None] * len(images)
        imgs, img_idx = unique(images)
        prepared: dict[int, tuple[np.ndarray, tuple[int, int, int]]] = {}
        bad_image: dict[int, str] = {}
        for i, image in enumerate(imgs):
            try:
                prepared[i] = self.preprocess.pil(image)
            except (ValueError, OSError) as exc:
                bad_image[i] = f"image preprocessing failed: {exc}"
        texts, txt_idx = unique(prompts, key=lambda p: p)
        tokens = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

        combos, combo_idx = unique(list(zip(img_idx, txt_idx)), key=lambda c: c)
        rows: dict[int, list[int]] = {}
        bad_combo: dict[int, str] = {}
        todo = [c for c, (i, _) in enumerate(combos) if i in prepared]
        strings = [chat_text(texts[combos[c][1]], self.preprocess.image_tokens(prepared[combos[c][0]][1]))
                   for c in todo]
        for c, ids in zip(todo, self.tokenizer(strings, add_special_tokens=False)["input_ids"] if todo else []):
            want = self.preprocess.image_tokens(prepared[combos[c][0]][1])
            if ids.count(self.reward_id) != 1 or ids.count(self.image_id) != want:
                bad_combo[c] = (f"the prompt contains {REWARD_TOKEN} or {IMAGE_TOKEN}, which the HPSv3 "
                                "template reserves")
            else:
                rows[c] = ids

        needed = sorted({combos[c][0] for c in rows})
        features: dict[int, Any] = {}
        for chunk in batched(needed, self.batch_size):
            feats = self.encode_images([prepared[i][0] for i in chunk], [prepared[i][1] for i in chunk])
            features.update(zip(chunk, feats))

        outputs: dict[int, Any] = {}
        order = sorted(rows, key=lambda c: len(rows[c]), reverse=True)
        for chunk in batched(order, self.batch_size):
            out = self.reward([rows[c] for c in chunk], [features[combos[c][0]] for c in chunk]).float().cpu()
            outputs.update(zip(chunk, out))

        for k, (c, j) in enumerate(zip(combo_idx, txt_idx)):
            i = combos[c][0]
            if i in bad_image or c in bad_combo:
                results[k] = ScoreResult(None, error=bad_image.get(i) or bad_combo[c], tokens=tokens[j],
                                         truncated=False)
            else:
                mu, log_sigma = (float(v) for v in outputs[c][:2])
                results[k] = ScoreResult(mu, tokens=tokens[j], truncated=False,
                                         extra={"sigma": float(np.exp(np.float64(log_sigma)))})
        return results  # type: ignore[return-value]


@contextmanager
def _default_dtype(dtype):
    """Create parameters directly in the target dtype (half the memory of float32 for a bf16 model),
    as ``from_pretrained(torch_dtype=...)`` does in the official loader."""
    t = torch()
    previous = t.get_default_dtype()
    t.set_default_dtype(dtype)
    try:
        yield
    finally:
        t.set_default_dtype(previous)
