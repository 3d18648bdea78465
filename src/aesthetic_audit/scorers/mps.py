"""MPS (Kwai-Kolors, "Learning Multi-dimensional Human Preference for Text-to-Image Generation", CVPR 2024).

Official source
    Code: github.com/Kwai-Kolors/MPS (``trainer/models/clip_model.py``, ``trainer/models/cross_modeling.py``,
    ``eval_overall_mps_on_{imagereward,hpdv2}.py``). Weights: ``MPS_overall_checkpoint.pth``, linked from
    that README (a Google Drive file, not a hub repository; only the model trained on *overall* preference
    was released). Third-party hub copies (``RE-N-Y/mpsv1``, DiffSynth-Studio's
    ``MPS_overall_checkpoint_diffsynth.safetensors``) use their own layouts and are not read here. So there is
    no default download: ``weights`` must name the file (or its folder) or a converted folder. Tokenizer:
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (vocab.json + merges.txt, pinned as for PickScore), or a
    local folder via ``tokenizer`` (or the ``weights`` folder when it holds those two files).

The checkpoint is a pickled whole model
    The official script saved the module itself (``torch.load(path)`` returns it), so the pickle names the
    model's classes: ``trainer.models.clip_model.CLIPModel`` (the root), ``...XCLIPModel`` (a transformers
    ``CLIPModel`` subclass), the ``trainer.models.cross_modeling`` blocks, transformers' CLIP modules,
    configs and activations, ``torch.nn`` modules and ``torch._C._nn.gelu``. ``torch.load(weights_only=True)``
    refuses such names, and a plain ``torch.load`` would import and run them. ``read_official_checkpoint``
    reads it without running any of it:

    1. ``torch.serialization.get_unsafe_globals_in_checkpoint`` lists every class or function the pickle
       names, by disassembling it (nothing is executed).
    2. Every name must lie in ``trainer.models.``, ``transformers.``, ``torch.nn.`` or ``torch._C._nn.``;
       any other (``posix.system``, ``builtins.eval``, ...) refuses the file before it is unpickled.
    3. Each listed name is bound to a fresh inert stand-in class (``_Pickled``) that only records the
       arguments and state the pickle hands it, and the file is read by ``torch.load(weights_only=True)``
       inside ``torch.serialization.safe_globals`` with those stand-ins. torch's restricted unpickler
       calls nothing but its own tensor-rebuilding allowlist and the stand-ins, so no code of the
       checkpoint, of the official repository or even of transformers runs; the real classes are never
       imported.
    4. The tensors are collected from the recorded module tree (``_parameters`` and persistent
       ``_buffers`` of every ``_modules`` child, as ``nn.Module.state_dict`` names them, plus the rotary
       blocks' ``pos_emb`` angle cache, a non-persistent buffer the pickle holds), and the CLIP
       towers' sizes from the recorded ``CLIPConfig`` (its ``text_config`` / ``vision_config``).

Layout (the official state-dict names, kept as they are)
    - ``model.*``: a transformers ``CLIPModel`` (keys as in transformers 4.27, which the checkpoint was
      made with and which current transformers still uses): ``model.text_model.*``,
      ``model.vision_model.*``, ``model.text_projection.weight``, ``model.visual_projection.weight``,
      ``model.logit_scale`` (``*.embeddings.position_ids`` buffers are dropped: the model builds them).
      Released model: OpenCLIP ViT-H/14 towers (vision 1280 x 32 layers, text 1024 x 24, 16 heads each,
      exact GELU, 1024-d projections).
    - ``cross_model.layers.{i}.0.fn.*``: condition cross-attention, image tokens attending to prompt
      tokens: ``norm.weight`` (+ a zero ``norm.bias`` buffer: a LayerNorm without learnt bias),
      ``to_q.weight`` [heads * dim_head, dim], ``to_kv.weight`` [2 * dim_head, dim] (one key/value head
      shared by all query heads), ``to_out.weight``, and a parallel SwiGLU feed-forward on the normed
      queries ``ff.0.weight`` [2 * ff, dim], ``ff.2.weight`` [dim, ff].
    - ``cross_model.layers.{i}.1.fn.*``: self-attention over the image tokens in parallel with a SwiGLU
      feed-forward: ``norm.weight`` / ``norm.bias`` (buffer), ``rotary_emb.inv_freq`` (rotary positions on
      queries and the single key head), ``fused_attn_ff_proj.weight`` [heads * dim_head + 2 * dim_head +
      2 * ff, dim] (q, k, v, feed-forward input, in that order), ``attn_out.weight``, ``ff_out.1.weight``.
      Both sub-blocks are residual; no bias anywhere. Released: 4 layers, dim 1024, 16 heads of 64,
      ff 4096; all sizes here are read from the tensor shapes. ``pos_emb`` [positions, dim_head], when
      the pickle holds one: the rotary angles cached during training. Not part of a state_dict (a
      non-persistent buffer), but ``torch.save(model)`` pickles it, and the official forward uses it
      instead of recomputing whenever it covers the sequence; a checkpoint saved in fp16 holds it
      rounded to fp16 (hundredths of a radian off the exact angles at the far positions), so we use it too,
      and ``convert --mps`` keeps it under the same key.

    ``aesthetic-audit convert MPS_overall_checkpoint.pth -o DIR --mps`` writes ``config.json`` (the
    ``CLIPConfig`` of the towers) + ``model.safetensors`` (the keys above) and copies vocab.json /
    merges.txt found beside the .pth; the scorer reads that folder without ``allow_pickle``.

Computation (official ``infer_one_sample`` of the evaluation scripts, which produced the published accuracies)
    - prompt and condition: CLIP tokenizer, ``padding="max_length"`` (77), ``truncation=True``, and the
      text tower run with *no* attention mask, so the padding positions' features are context too. The
      padding token is the tokenizer's pad token: ``<|endoftext|>`` as transformers builds the tokenizer
      from vocab.json + merges.txt, which we take to be what the laion repo's tokenizer files declare
      (as openai's CLIP repos do; not checked here: no hub access);
    - text tokens: ``text_projection`` of every position of the text tower's last hidden state (after its
      final LayerNorm); the prompt feature is the one at the end token (argmax of the ids, as
      transformers 4.27 pooled);
    - image tokens: ``visual_projection`` of every position of the vision tower's last hidden state
      (*before* ``post_layernorm``, which only the pooled output gets), 257 tokens for ViT-H/14;
    - condition mask: for each prompt token, its largest dot product with any condition token (padding
      included), divided by the largest such value of the prompt; tokens above ``mask_threshold`` (0.3)
      are visible to the cross-attention, the others get -inf;
    - image feature: the cross model's output at position 0 (the class token);
    - score = ``logit_scale.exp() * cos(image feature, prompt feature)`` (≈ 100 x cosine), higher is
      better; the official code then softmaxes it over candidate images, which the per-image score
      leaves out (as PickScore's does).

Where the official code disagrees with itself or the paper
    - Threshold: the evaluation scripts use 0.3; ``CLIPModel.forward`` (training, and the README's
      ``infer_example``) uses 0.01. Default 0.3; ``mask_threshold: 0.01`` gives the other.
    - Normalisation: the official code divides by the maximum over the whole batch; its inference scores
      one prompt per call, so that is the per-prompt maximum used here (a batch of several prompts would
      otherwise change each other's masks).
    - Condition: the README example and the scripts use "light, color, clarity, tone, style, ambiance,
      artistry, shape, face, hair, hands, limbs, structure, instance, texture, quantity, attributes,
      position, number, location, word, things." for overall preference (the issue's shorter list ending
      in "overall" is not in the code). Per-dimension conditions were never released, nor were models
      trained for them; ``condition`` takes ``overall`` or any free text (e.g. an aesthetics-only word
      list), and enters the record key.
    - Precision: the official code runs the model in fp16 on CUDA (``image_inputs.half()``); the default
      here is fp32, ``dtype: fp16`` on a GPU comes closest to the official numbers.

Preprocessing: the laion repo's CLIPImageProcessor as the official code calls it: RGB, short side 224 (PIL
bicubic, long side ``int(224 * long / short)``), centre crop 224 at offset (h - 224) // 2, /255, OpenAI
mean/std (``ImagePreprocess(..., crop_offset="floor")``, as for PickScore).

Reuse: each distinct image goes through the vision tower once per call; each batch of (image, prompt)
combinations runs each distinct prompt through the text tower once; the condition's features are computed
once per loaded model.

Parity, measured outside the project's tests on identical random weights (the tiny official-layout model
the tests build), CPU fp32: the official classes (``trainer.models.clip_model`` / ``cross_modeling``)
built under transformers 4.27.3 and the evaluation scripts' ``infer_one_sample``, one prompt per call,
thresholds 0.01, 0.3, 0.8 and 0.9, 7 images x 6 prompts (one of 230 tokens): max abs difference 4.5e-7;
the whole tiny pickle loaded with ``torch.load`` and the official classes (so with its stored rotary
cache): 1.0e-7; token ids and pixel values identical. In fp16 on a CPU the official model and ours with
``dtype=fp16`` differ by 1.2e-3 (fp16 rounding). Not measured: the real checkpoint (no hub here) and
whether the laion repo's tokenizer files declare ``<|endoftext|>`` as the pad token, as we assume (padding
positions are context here, so a different pad token would change scores). How a user checks our scores
against the official code on the real file, in a clone of Kwai-Kolors/MPS with ``transformers==4.27.3``,
on a CUDA machine::

    import torch
    from transformers import AutoTokenizer, CLIPImageProcessor
    from PIL import Image
    from eval_overall_mps_on_hpdv2 import infer_one_sample      # needs fire, cv2, matplotlib installed
    laion = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    proc, tok = CLIPImageProcessor.from_pretrained(laion), AutoTokenizer.from_pretrained(laion)
    model = torch.load("MPS_overall_checkpoint.pth", weights_only=False).eval().to("cuda")  # trusted file
    ref = float(infer_one_sample(Image.open("a.png"), "a blurry photo of a cat", model, proc, tok, "cuda"))
    from aesthetic_audit.registry import get
    ours = get("scorers", "mps")(weights="MPS_overall_checkpoint.pth", allow_pickle=True, device="cuda",
                                 dtype="fp16")
    print(ref, ours.score([(Image.open("a.png"), "a blurry photo of a cat")])[0].score)

and expect agreement to fp16 rounding (the scale is ~100; compare several images and prompts, including
one over 77 tokens).
"""

from __future__ import annotations

import functools
import math
import shutil
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError, require
from ..ui import log
from ._clip_common import (CONVERTED_FILES, LAION_VIT_H_REPO, LAION_VIT_H_REVISION, TOKENIZER_FILES,
                           CheckpointFolder, load_tokenizer)
from ._openclip import build_clip_model
from ._torch import (OPENAI_MEAN, OPENAI_STD, CrossEncoderScorer, ImagePreprocess, pad_rows, register_variants,
                     torch, unit)
from ._weights import WeightsError, WeightsSource, first_line, load_state_dict, write_safetensors

OFFICIAL_FILE = "MPS_overall_checkpoint.pth"
# The rotary blocks' angle cache: a non-persistent buffer, so not in a state_dict, but pickled with the whole
# model; the official forward uses a stored cache long enough for the sequence instead of recomputing it.
ROTARY_CACHE = "pos_emb"
ROOT_CLASS = "trainer.models.clip_model.CLIPModel"
# Where the classes and functions a whole-model MPS pickle names come from (see the module docstring).
PICKLE_NAMESPACES = ("trainer.models.", "transformers.", "torch.nn.", "torch._C._nn.")
CONDITIONS = {
    "overall": "light, color, clarity, tone, style, ambiance, artistry, shape, face, hair, hands, limbs, "
               "structure, instance, texture, quantity, attributes, position, number, location, word, things.",
}
MASK_THRESHOLD = 0.3  # the official evaluation scripts' value
SAFE_READER_TORCH = (2, 6)  # get_unsafe_globals_in_checkpoint and (stand-in, name) pairs in safe_globals
TEXT_CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                    "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
                    "pad_token_id", "bos_token_id", "eos_token_id")
VISION_CONFIG_KEYS = ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                      "num_attention_heads", "num_channels", "image_size", "patch_size", "hidden_act",
                      "layer_norm_eps")
NO_DEFAULT_WEIGHTS = ("its authors do not publish the MPS checkpoint on the Hugging Face hub: download "
                      "MPS_overall_checkpoint.pth from the link in the Kwai-Kolors/MPS README and set the scorer "
                      "option weights to it (with allow_pickle: true), or to a folder written by `aesthetic-audit "
                      "convert ... --mps`")


# -- reading the pickled model -------------------------------------------------------------------------
class _Pickled:
    """An inert stand-in for a class or function a checkpoint's pickle names: it records the arguments and
    the state the pickle gives it, and does nothing else."""

    qualname: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Pickled":
        obj = super().__new__(cls)
        obj.args, obj.state = args, {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # called when the pickle "calls" a function
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = state[0]
        self.state = state if isinstance(state, dict) else {}


def _stand_in(name: str) -> type[_Pickled]:
    return type(name.rsplit(".", 1)[-1], (_Pickled,), {"qualname": name})


def _module_tensors(node: Any, prefix: str, out: dict[str, Any], where: Path) -> None:
    """The persistent parameters and buffers of a recorded module tree, named as ``state_dict`` names them."""
    if not isinstance(node, _Pickled):
        raise WeightsError(f"{where.name}: {prefix.rstrip('.') or 'the root'} is not a module "
                           f"({type(node).__name__})")
    state = node.state
    transient = set(state.get("_non_persistent_buffers_set") or ()) - {ROTARY_CACHE}
    for name, p in (state.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach()
    for name, b in (state.get("_buffers") or {}).items():
        if b is not None and name not in transient:
            out[prefix + name] = b
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _module_tensors(child, f"{prefix}{name}.", out, where)


def _clip_config(root: _Pickled, where: Path):
    """A transformers ``CLIPConfig`` from the recorded config of the checkpoint's ``model`` (XCLIPModel)."""
    from transformers import CLIPConfig

    try:
        recorded = root.state["_modules"]["model"].state["config"].state
        towers = {side: recorded[f"{side}_config"].state for side in ("text", "vision")}
    except (KeyError, AttributeError, TypeError):
        raise WeightsError(f"{where.name}: no CLIP config found under model.config (not an MPS checkpoint?)") from None
    picked = {}
    for side, keys in (("text", TEXT_CONFIG_KEYS), ("vision", VISION_CONFIG_KEYS)):
        missing = [k for k in keys if k not in towers[side]]
        if missing:
            raise WeightsError(f"{where.name}: the recorded {side} config lacks {', '.join(missing)}")
        picked[side] = {k: towers[side][k] for k in keys}
    return CLIPConfig(text_config=picked["text"], vision_config=picked["vision"],
                      projection_dim=recorded.get("projection_dim", picked["text"]["projection_dim"]),
                      logit_scale_init_value=recorded.get("logit_scale_init_value", 2.6592))


def read_official_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(``CLIPConfig`` of the towers, official state dict) of ``MPS_overall_checkpoint.pth``, read without
    running any code the pickle names (the module docstring says how, and why that is safe)."""
    t = torch()
    path = Path(path)
    if tuple(int(x) for x in t.__version__.split("+")[0].split(".")[:2]) < SAFE_READER_TORCH:
        raise WeightsError(f"reading {path.name} without running its code needs torch >= 2.6 (named stand-ins "
                           f"for torch.load(weights_only=True)); this is torch {t.__version__}: upgrade torch, or "
                           "convert the file once elsewhere with `aesthetic-audit convert ... --mps`")
    try:
        names = t.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # not a torch.save zip file, truncated, unreadable
        raise WeightsError(f"cannot read {path} as a torch.save checkpoint (damaged or incomplete? download it "
                           f"again): {type(exc).__name__}: {first_line(exc)}") from None
    foreign = sorted(n for n in names if not n.startswith(PICKLE_NAMESPACES))
    if foreign:
        raise WeightsError(f"{path.name} names {', '.join(foreign[:3])}, which no MPS checkpoint holds: refused "
                           "without unpickling it")
    try:
        with t.serialization.safe_globals([(_stand_in(n), n) for n in names]):
            root = t.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a refused construct, or a damaged file
        raise WeightsError(f"cannot read {path} with torch.load(weights_only=True) and inert stand-ins for its "
                           f"classes: {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(root, _Pickled) or root.qualname != ROOT_CLASS:
        found = root.qualname if isinstance(root, _Pickled) else type(root).__name__
        raise WeightsError(f"{path.name} holds {found}, not a whole {ROOT_CLASS} (the official MPS checkpoint)")
    state: dict[str, Any] = {}
    _module_tensors(root, "", state, path)
    return _clip_config(root, path), state


def convert_checkpoint(src: str | Path, dst_dir: str | Path) -> Path:
    """Write the official pickle as ``config.json`` + ``model.safetensors`` (the official key names) in
    ``dst_dir``, with the tokenizer files found beside it; the scorer then needs no ``allow_pickle``."""
    require("safetensors.torch", "models", "writing safetensors")  # a missing extra is said before any reading
    src, dst = Path(src).expanduser(), Path(dst_dir).expanduser()
    if not src.is_file():
        raise WeightsError(f"no checkpoint file at {src}")
    config, state = read_official_checkpoint(src)
    dst.mkdir(parents=True, exist_ok=True)
    write_safetensors(state, dst / CONVERTED_FILES[1], src)
    config.to_json_file(str(dst / CONVERTED_FILES[0]))
    for name in TOKENIZER_FILES:
        if (src.parent / name).is_file() and not ((dst / name).exists() and (dst / name).samefile(src.parent / name)):
            shutil.copyfile(src.parent / name, dst / name)
            log.info("copied %s beside it", name)
    return dst


# -- the model ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _modules() -> Any:
    """The model classes, defined on first use so that importing this module never imports torch."""
    t = torch()
    nn, F = t.nn, t.nn.functional

    class BiasFreeNorm(nn.Module):
        """LayerNorm with a learnt scale and a fixed zero bias (a buffer, so it is in the checkpoint)."""

        def __init__(self, dim: int):
            super().__init__()
            self.weight = nn.Parameter(t.ones(dim))
            self.register_buffer("bias", t.zeros(dim))

        def forward(self, x):
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)

    class SwiGLU(nn.Module):
        def forward(self, x):
            x, gate = x.chunk(2, dim=-1)
            return F.silu(gate) * x

    class Residual(nn.Module):
        def __init__(self, fn: Any):
            super().__init__()
            self.fn = fn

        def forward(self, x, *context):
            return self.fn(x, *context) + x

    class Rotary(nn.Module):
        def __init__(self, dim_head: int):
            super().__init__()
            self.register_buffer("inv_freq", 1.0 / 10000 ** (t.arange(0, dim_head, 2).float() / dim_head))

        def forward(self, n: int):
            """Angles [n, dim_head]: position x frequency, the frequencies repeated for both halves."""
            freqs = t.arange(n, device=self.inv_freq.device, dtype=self.inv_freq.dtype)[:, None] * self.inv_freq
            return t.cat((freqs, freqs), dim=-1)

    def rotate(x, angles):
        """Rotary embedding on halves (a, b) of the last axis: x cos + (-b, a) sin."""
        a, b = x.chunk(2, dim=-1)
        return x * angles.cos() + t.cat((-b, a), dim=-1) * angles.sin()

    def single_kv_attention(q, k, v, bias=None):
        """q [B, H, N, d] (already scaled) against one key/value head k, v [B, M, d] shared by all heads."""
        logits = q @ k.unsqueeze(1).transpose(-1, -2)
        if bias is not None:
            logits = logits + bias
        out = logits.softmax(dim=-1) @ v.unsqueeze(1)
        return out.transpose(1, 2).flatten(2)

    class ConditionCrossAttention(nn.Module):
        """Image tokens attend to the visible prompt tokens; a SwiGLU feed-forward runs beside it."""

        def __init__(self, dim: int, heads: int, dim_head: int, ff: int):
            super().__init__()
            self.heads, self.scale = heads, dim_head ** -0.5
            self.norm = BiasFreeNorm(dim)
            self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
            self.to_kv = nn.Linear(dim, 2 * dim_head, bias=False)
            self.to_out = nn.Linear(heads * dim_head, dim, bias=False)
            self.ff = nn.Sequential(nn.Linear(dim, 2 * ff, bias=False), SwiGLU(), nn.Linear(ff, dim, bias=False))

        def forward(self, x, context, mask):
            x = self.norm(x)  # the prompt tokens (context) are not normalised
            b, n, _ = x.shape
            q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2) * self.scale
            k, v = self.to_kv(context).chunk(2, dim=-1)
            return self.to_out(single_kv_attention(q, k, v, mask[:, None, None, :])) + self.ff(x)

    class ParallelBlock(nn.Module):
        """Self-attention over the image tokens (rotary positions, one key/value head) beside a SwiGLU
        feed-forward, both from one fused projection."""

        def __init__(self, dim: int, heads: int, dim_head: int, ff: int):
            super().__init__()
            self.heads, self.scale = heads, dim_head ** -0.5
            self.norm = BiasFreeNorm(dim)
            self.rotary_emb = Rotary(dim_head)
            self.parts = (heads * dim_head, dim_head, dim_head, 2 * ff)
            self.fused_attn_ff_proj = nn.Linear(dim, sum(self.parts), bias=False)
            self.attn_out = nn.Linear(heads * dim_head, dim, bias=False)
            self.ff_out = nn.Sequential(SwiGLU(), nn.Linear(ff, dim, bias=False))
            self.register_buffer(ROTARY_CACHE, None, persistent=False)  # the checkpoint's, if it has one

        def forward(self, x):
            x = self.norm(x)
            b, n, _ = x.shape
            q, k, v, ff = self.fused_attn_ff_proj(x).split(self.parts, dim=-1)
            # as the official block: the stored angles when they cover n positions (a checkpoint saved in
            # fp16 holds them rounded to fp16, and the official scores use those), else computed
            cache = getattr(self, ROTARY_CACHE)
            angles = cache[:n] if cache is not None and cache.shape[0] >= n else self.rotary_emb(n)
            q = rotate(q.view(b, n, self.heads, -1).transpose(1, 2), angles) * self.scale
            return self.attn_out(single_kv_attention(q, rotate(k, angles), v)) + self.ff_out(ff)

    class CrossModel(nn.Module):
        def __init__(self, dim: int, layers: int, heads: int, dim_head: int, ff: int):
            super().__init__()
            self.layers = nn.ModuleList(
                nn.ModuleList([Residual(ConditionCrossAttention(dim, heads, dim_head, ff)),
                               Residual(ParallelBlock(dim, heads, dim_head, ff))]) for _ in range(layers))

        def forward(self, image_tokens, text_tokens, mask):
            x = image_tokens
            for cross, block in self.layers:
                x = block(cross(x, text_tokens, mask))
            return x

    class MPSModel(nn.Module):
        """``model`` (transformers CLIPModel) + ``cross_model``: the official module names."""

        def __init__(self, clip: Any, cross: Any):
            super().__init__()
            self.model, self.cross_model = clip, cross

        def text_tokens(self, input_ids):
            """Projected features of every position [B, L, D] (no attention mask, as the official code)."""
            return self.model.text_projection(self.model.text_model(input_ids=input_ids).last_hidden_state)

        def image_tokens(self, pixel_values):
            """Projected features of every patch and the class token [B, 1 + P, D], before post_layernorm."""
            return self.model.visual_projection(self.model.vision_model(pixel_values=pixel_values).last_hidden_state)

        @staticmethod
        def condition_mask(text, condition, threshold: float):
            """Additive mask [B, L]: 0 for prompt tokens whose best match among the condition tokens, over the
            prompt's best, exceeds ``threshold``; -inf for the rest."""
            best = (text @ condition.transpose(0, 1)).amax(dim=-1)
            best = best / best.amax(dim=-1, keepdim=True)
            return t.zeros_like(best).masked_fill(best <= threshold, float("-inf"))

    return CrossModel, MPSModel


def _layers(keys: list[str], prefix: str) -> int:
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in keys if k.startswith(prefix)}
    if not found or found != set(range(len(found))):
        raise WeightsError(f"MPS checkpoint: layers under {prefix!r} are missing or not numbered 0..n-1: "
                           f"{sorted(found)}")
    return len(found)


def build_mps(config: Any, state: dict[str, Any]) -> Any:
    """The model holding exactly the checkpoint's tensors; sizes of the cross model from their shapes."""
    CrossModel, MPSModel = _modules()
    clip_state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    cross_state = {k[len("cross_model."):]: v for k, v in state.items() if k.startswith("cross_model.")}
    other = sorted(k for k in state if not k.startswith(("model.", "cross_model.")))
    if other or not cross_state:
        raise WeightsError(f"not an MPS state dict: expected model.* and cross_model.* keys; found "
                           f"{', '.join(other[:4] or list(state)[:4])}")
    try:
        q, kv = cross_state["layers.0.0.fn.to_q.weight"], cross_state["layers.0.0.fn.to_kv.weight"]
        ff = cross_state["layers.0.0.fn.ff.2.weight"].shape[1]
    except KeyError as exc:
        raise WeightsError(f"MPS checkpoint: cross_model.{exc.args[0]} is missing") from None
    dim_head = kv.shape[0] // 2
    cross = CrossModel(dim=q.shape[1], layers=_layers(list(cross_state), "layers."), heads=q.shape[0] // dim_head,
                       dim_head=dim_head, ff=ff)
    caches = {k: cross_state.pop(k) for k in [k for k in cross_state if k.endswith("." + ROTARY_CACHE)]}
    try:
        cross.load_state_dict(cross_state, strict=True)
        for key, cache in caches.items():
            block = cross.get_submodule(key.rsplit(".", 1)[0])
            if not hasattr(block, "rotary_emb") or cache.ndim != 2 or cache.shape[1] != dim_head:
                raise RuntimeError(f"{key}: no rotary block takes a cache of shape {tuple(cache.shape)}")
            setattr(block, ROTARY_CACHE, cache.float())  # cast with the model from here on
    except (RuntimeError, AttributeError) as exc:  # missing, unexpected or misshapen: never keep a random weight
        raise WeightsError(f"MPS cross model weights do not fit: {' '.join(str(exc).split())[:300]}") from None
    return MPSModel(build_clip_model(config, clip_state), cross)


# -- the scorer ---------------------------------------------------------------------------------------
@register_variants
class MPSScorer(CheckpointFolder, CrossEncoderScorer):
    """MPS: ``logit_scale.exp() * cos`` of the prompt's end-token feature and the image's class-token feature
    after condition-masked cross-attention to the prompt.

    Options (besides TorchScorer's): ``weights`` = ``MPS_overall_checkpoint.pth`` (file or folder; needs
    ``allow_pickle``) or a converted folder (config.json + model.safetensors, preferred when a folder holds
    both) or its model.safetensors; ``tokenizer`` = a folder with vocab.json + merges.txt (or an injected
    transformers CLIP tokenizer); ``processor`` = an injected ImagePreprocess; ``condition`` = ``overall``
    (default) or a free condition text; ``mask_threshold`` (default 0.3).
    """

    name: ClassVar[str] = "mps"
    description: ClassVar[str] = ("MPS multi-dimensional preference score (overall condition): CLIP ViT-H/14 + "
                                  "condition cross-attention, logit scale x cosine")
    score_range: ClassVar[tuple[float | None, float | None]] = (-100.0, 100.0)
    official: ClassVar[str] = ("Kwai-Kolors/MPS MPS_overall_checkpoint.pth (a pickled whole model, linked from its "
                               "README; read with inert stand-ins or convert --mps) + the laion ViT-H-14 tokenizer, as "
                               "its evaluation scripts' infer_one_sample computes it")
    score_scale: ClassVar[str] = ("exp(logit_scale) x cosine (about 100 x cos) of the condition-masked image feature "
                                  "and the prompt's end-token feature, before the official softmax over candidates")
    parity: ClassVar[str] = ("the official MPS classes and infer_one_sample on identical random weights, CPU fp32: max "
                             "abs difference 4.5e-7 (transformers 4.27.3), 1.0e-7 on the whole pickle with its rotary "
                             "cache; identical token ids and pixels (run outside the project); tests: an independent "
                             "float64 forward")
    max_prompt_tokens: ClassVar[int | None] = 77
    version: ClassVar[str] = "1"
    default_variant: ClassVar[str | None] = "mps"
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "mps": {"checkpoint": OFFICIAL_FILE, "tokenizer_repo": LAION_VIT_H_REPO,
                "tokenizer_revision": LAION_VIT_H_REVISION, "description": description},
    }

    def __init__(self, variant: str | None = None, *, condition: str = "overall",
                 mask_threshold: float = MASK_THRESHOLD, **options: Any):
        super().__init__(variant, **options)
        if not isinstance(condition, str) or not condition.strip():
            raise ConfigError(f"condition must be 'overall' or a non-empty condition text, not {condition!r}")
        self.condition = CONDITIONS.get(condition, condition)
        if isinstance(mask_threshold, bool) or not isinstance(mask_threshold, (int, float)) \
                or not math.isfinite(mask_threshold):
            raise ConfigError(f"mask_threshold must be a number (official: 0.3, or 0.01), not {mask_threshold!r}")
        self.mask_threshold = float(mask_threshold)
        self._condition_features: Any = None

    # -- files ----------------------------------------------------------------------------------
    def default_checkpoint(self) -> WeightsSource:
        raise WeightsError(NO_DEFAULT_WEIGHTS)

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        ident["condition"] = self.condition
        ident["mask_threshold"] = self.mask_threshold
        ident["preprocess"] = "short side to the model's image size, PIL bicubic, centre crop (floor), OpenAI mean/std"
        return ident

    # -- loading --------------------------------------------------------------------------------
    def _load(self) -> None:
        if self.model is None:
            source, names, converted = self._checkpoint()
            paths = [self.resolver.file(source, f) for f in names]
            if converted:
                from transformers import CLIPConfig

                config, state = CLIPConfig.from_json_file(str(paths[0])), load_state_dict(paths[1])
            elif not self.allow_pickle:
                raise WeightsError(f"{paths[0].name} is a pickled model, which can run code when loaded: convert "
                                   "it once with `aesthetic-audit convert ... --mps`, or opt in with allow_pickle: "
                                   "true (it is then read with torch.load(weights_only=True) and inert stand-ins "
                                   "for its classes)")
            else:
                config, state = read_official_checkpoint(paths[0])
            self.model = build_mps(config, state)
        if self.tokenizer is None:
            source = self._tokenizer_source()
            self.tokenizer = load_tokenizer(*(self.resolver.file(source, f) for f in TOKENIZER_FILES))
        clip = self.model.model
        self.max_length = int(clip.config.text_config.max_position_embeddings)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        self.preprocess = self.processor or ImagePreprocess(clip.config.vision_config.image_size, "shortest", True,
                                                            OPENAI_MEAN, OPENAI_STD, "floor")
        # read before load() casts the model: exp() of a bf16 logit scale would be off by ~1%
        self.logit_scale = float(clip.logit_scale.detach().float().exp())
        self._condition_features = None

    # -- scoring --------------------------------------------------------------------------------
    def collate(self, rows: list[list[int]]):
        # official: padding="max_length" and no attention mask, so padding positions are prompt tokens too
        return pad_rows(rows, self.pad_id, self.max_length, self.device)

    def condition_features(self):
        """The condition text's token features [L, D]: computed once per loaded model for ``score()`` (which
        runs in inference mode), afresh in a training-loop call, where an inference-mode tensor cannot enter
        the graph and a text tower being fine-tuned changes them."""
        t = torch()
        cached = t.is_inference_mode_enabled()
        if self._condition_features is None or not cached:
            rows = self.tokenizer([self.condition], truncation=True, max_length=self.max_length)["input_ids"]
            ids, _ = self.collate([list(rows[0])])
            features = self.model.text_tokens(ids)[0]
            if not cached:
                return features
            self._condition_features = features
        return self._condition_features

    def encode_pixels(self, pixel_values):
        return self.model.image_tokens(pixel_values)

    def joint(self, states, rows, input_ids, attention_mask):
        t = torch()
        texts, which = t.unique(input_ids, dim=0, return_inverse=True)  # each distinct prompt once
        tokens = self.model.text_tokens(texts)
        end = tokens[t.arange(texts.shape[0], device=texts.device), texts.argmax(dim=-1)]  # the end token
        mask = self.model.condition_mask(tokens, self.condition_features(), self.mask_threshold)
        image = self.model.cross_model(states[rows], tokens[which], mask[which])[:, 0]
        return self.logit_scale * (unit(image) * unit(end[which])).sum(dim=-1)
