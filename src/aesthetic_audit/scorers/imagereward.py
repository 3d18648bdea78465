"""ImageReward (THUDM, NeurIPS 2023): a BLIP cross-encoder fine-tuned on human preference rankings.

Official weights: hub repo ``THUDM/ImageReward``, files ``ImageReward.pt`` (a pickled state dict of
the whole model, ~446M parameters in fp32) and ``med_config.json`` (the BERT config of BLIP's text
encoder); tokenizer ``bert-base-uncased`` (only its ``vocab.txt`` is read; lower-casing on). No
revision is pinned: the SHA-256 of every file goes into the record keys instead. ``ImageReward.pt``
is a pickle, so it loads only with ``allow_pickle=True`` (then through
``torch.load(weights_only=True)``); a safetensors file of the same state dict
(``ImageReward.safetensors``, e.g. written once with ``safetensors.torch.save_file`` from the
pickle's tensors) loads without it and is preferred when both sit in the ``weights`` folder.

Architecture (official ``ImageReward/ImageReward.py`` + ``models/BLIP``; we rebuild it in plain torch
with the official state-dict names, so the checkpoint loads key for key):

- ``blip.visual_encoder``: BLIP's ViT-L/16 at 224 px (timm layout): ``patch_embed.proj`` (16x16
  conv, stride 16), ``cls_token``, ``pos_embed`` (197 positions), 24 ``blocks.N`` of pre-norm
  ``norm1 -> attn.qkv / attn.proj`` (fused qkv with bias, 16 heads, scale head_dim^-0.5) and
  ``norm2 -> mlp.fc1 / GELU (erf) / mlp.fc2``, final ``norm``; LayerNorm eps 1e-6.
- ``blip.text_encoder``: BLIP's ``med.py`` BertModel without pooler: ``embeddings`` (word + absolute
  position, no token types, LayerNorm), 12 ``encoder.layer.N`` of bidirectional self-attention
  (``attention``), cross-attention to all image tokens (``crossattention``; key/value width =
  the ViT width 1024: BLIP overrides med_config's ``encoder_width`` with it), ``intermediate`` +
  ``output``; post-norm, LayerNorm eps and activation from med_config (1e-12, erf GELU). Padding is
  masked with -10000 (official) / -inf (here): identical after the softmax.
- the text encoder's last hidden state at position 0 (the [CLS] token: the score path does NOT put
  BLIP's [ENC] token there) -> ``mlp.layers`` Linear 768->1024 (0), ->128 (2), ->64 (4), ->16 (6),
  ->1 (7), dropouts between and no activations (the LAION aesthetic MLP), run in float32 on the
  float32-cast feature as the official code does (``.float()``), whatever ``dtype`` the rest uses.
- score = (mlp - 0.16717362830052426) / 1.0333394966054072 (the authors' mean/std of the raw
  output), higher is better, unbounded. ``blip.vision_proj`` / ``blip.text_proj`` are unused.

Text: ``BertTokenizer`` (bert-base-uncased) plus BLIP's added specials ``[DEC]`` (bos) and ``[ENC]``;
``padding="max_length", truncation=True, max_length=35``: prompts longer than 35 tokens
(33 word pieces) are cut, which we record per score (``tokens``, ``truncated``); we cut the same way but
pad only to the longest prompt of a batch.

Preprocessing (official ``_transform(224)``): Resize(224) of the SHORT side, bicubic, CenterCrop(224),
RGB, ToTensor, Normalize with the OpenAI CLIP mean/std: ``ImagePreprocess(224, "shortest", crop=True)``.
(It is not a square resize: non-square images are centre-cropped.)

Sizes are read from the checkpoint, not hard-coded: ViT width/depth/patch from the state-dict shapes,
image size = patch size x sqrt(positions - 1) (224 for the official file), ViT heads = width / 64
(16 for ViT-L, as in BLIP), text sizes from med_config, MLP sizes from its weights. This is what lets
the tests load a tiny model written in the same layout.

Reuse: each distinct image of a call goes through the ViT once, and the keys and values that every text
layer's cross-attention projects from its tokens (12 layers x 2 projections of 197 x 1024 -> 768, about
6% of an image encoding in multiply-adds) are computed once with it; all its (image, prompt) combinations
then run through the text encoder in batches that read them. Batches are padded to their longest prompt
instead of the official 35 tokens: padded keys are masked, so the [CLS] state does not change (to float
rounding).

Training loop: ``scorer(images, prompts)`` (``CrossEncoderScorer.__call__``) takes PIL images or a float
tensor [B, 3, H, W] in [0, 1] with one prompt per image and returns the normalised rewards [B]. A tensor
runs through ``ImagePreprocess.tensor``, the ViT, the cross-attention key/value cache and the text encoder
with autograd, so the reward back-propagates to the pixels. A tensor already at the checkpoint's input
size (224 x 224) is preprocessed exactly as the PIL path (no resize, the same normalisation): its reward
equals ``score()``'s to float rounding. Any other size is resized by torch's antialiased bicubic
interpolation (short side to 224, then the same centre crop), close to but not bit-equal with PIL's
bicubic resampling. The loaded model is frozen (``requires_grad=False``): no gradient lands in it unless
the user turns it on (``scorer.model.requires_grad_(True)``).

Parity: how a user checks our scores against the official implementation on the same weights (we
cannot run it here: the ``image-reward`` package needs torchvision and timm, and no hub is reachable).
On a machine with ``pip install image-reward`` and the two files downloaded::

    import ImageReward as RM
    from PIL import Image
    from aesthetic_audit.registry import get
    ref = RM.load("ImageReward-v1.0", device="cpu")       # or RM.load("/path/ImageReward.pt", med_config=...)
    ours = get("scorers", "imagereward")(weights="/path/folder", allow_pickle=True, device="cpu")
    for path, prompt in pairs:
        a = ref.score(prompt, Image.open(path).convert("RGB"))
        b = ours.score([(Image.open(path).convert("RGB"), prompt)])[0].score
        assert abs(a - b) < 1e-4

Expect agreement to ~1e-5 in fp32 (float summation order differs); include prompts over 35 tokens
and non-square images.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any, ClassVar

from ..ui import log
from ._torch import (AESTHETIC_MLP_LINEARS, CrossEncoderScorer, ImagePreprocess, aesthetic_mlp, register_variants,
                     torch)
from ._weights import WeightsError, WeightsSource, load_state_dict, read_json

VIT_HEAD_DIM = 64  # BLIP's ViT-B (768/12) and ViT-L (1024/16) both use 64-wide heads
IGNORED_KEYS = re.compile(r"^blip\.(vision_proj|text_proj)\.|position_ids$")


@functools.lru_cache(maxsize=None)
def _modules() -> Any:
    """The model classes, defined on first use so importing this module never imports torch."""
    t = torch()
    nn, F = t.nn, t.nn.functional

    def heads_first(x, heads):  # [B, L, D] -> [B, H, L, D/H]
        b, n, d = x.shape
        return x.view(b, n, heads, d // heads).transpose(1, 2)

    def heads_merged(x):  # [B, H, L, d] -> [B, L, H*d]
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    class PatchEmbed(nn.Module):
        def __init__(self, width: int, patch: int):
            super().__init__()
            self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    class VitAttention(nn.Module):
        def __init__(self, width: int, heads: int):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(width, 3 * width)
            self.proj = nn.Linear(width, width)

        def forward(self, x):
            b, n, d = x.shape
            q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            return self.proj(heads_merged(F.scaled_dot_product_attention(q, k, v)))

    class VitMlp(nn.Module):
        def __init__(self, width: int, hidden: int):
            super().__init__()
            self.fc1 = nn.Linear(width, hidden)
            self.fc2 = nn.Linear(hidden, width)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x)))

    class VitBlock(nn.Module):
        def __init__(self, width: int, heads: int, hidden: int):
            super().__init__()
            self.norm1 = nn.LayerNorm(width, eps=1e-6)
            self.attn = VitAttention(width, heads)
            self.norm2 = nn.LayerNorm(width, eps=1e-6)
            self.mlp = VitMlp(width, hidden)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class VisionTransformer(nn.Module):
        def __init__(self, width: int, depth: int, heads: int, hidden: int, patch: int, positions: int):
            super().__init__()
            self.patch_embed = PatchEmbed(width, patch)
            self.cls_token = nn.Parameter(t.zeros(1, 1, width))
            self.pos_embed = nn.Parameter(t.zeros(1, positions, width))
            self.blocks = nn.ModuleList(VitBlock(width, heads, hidden) for _ in range(depth))
            self.norm = nn.LayerNorm(width, eps=1e-6)

        def forward(self, pixels):
            x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
            x = t.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = x + self.pos_embed[:, :x.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.norm(x)

    class BertHeads(nn.Module):  # BERT's "self" module: query/key/value projections + attention
        def __init__(self, width: int, kv_width: int, heads: int):
            super().__init__()
            self.heads = heads
            self.query = nn.Linear(width, width)
            self.key = nn.Linear(kv_width, width)
            self.value = nn.Linear(kv_width, width)

        def forward(self, x, keys, values, mask):  # keys/values: [B, H, L, D/H]
            q = heads_first(self.query(x), self.heads)
            return heads_merged(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))

    class DenseNorm(nn.Module):  # BERT's SelfOutput / Output: dense, then LayerNorm(dense + residual)
        def __init__(self, fan_in: int, width: int, eps: float):
            super().__init__()
            self.dense = nn.Linear(fan_in, width)
            self.LayerNorm = nn.LayerNorm(width, eps=eps)

        def forward(self, x, residual):
            return self.LayerNorm(self.dense(x) + residual)

    class BertAttention(nn.Module):
        def __init__(self, width: int, kv_width: int, heads: int, eps: float):
            super().__init__()
            self.self = BertHeads(width, kv_width, heads)
            self.output = DenseNorm(width, width, eps)

        def forward(self, x, keys, values, mask=None):
            return self.output(self.self(x, keys, values, mask), x)

    class Intermediate(nn.Module):
        def __init__(self, width: int, hidden: int, act: str):
            super().__init__()
            from transformers.activations import ACT2FN

            self.dense = nn.Linear(width, hidden)
            self.act = ACT2FN[act]

        def forward(self, x):
            return self.act(self.dense(x))

    class BertLayer(nn.Module):
        def __init__(self, cfg: dict, image_width: int):
            super().__init__()
            width, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
            self.attention = BertAttention(width, width, heads, eps)
            self.crossattention = BertAttention(width, image_width, heads, eps)
            self.intermediate = Intermediate(width, cfg["intermediate_size"], cfg["hidden_act"])
            self.output = DenseNorm(cfg["intermediate_size"], width, eps)

        def forward(self, x, image_kv, mask):  # image_kv: [B, 2, H, image tokens, D/H]
            own = self.attention.self
            x = self.attention(x, heads_first(own.key(x), own.heads), heads_first(own.value(x), own.heads), mask)
            x = self.crossattention(x, image_kv[:, 0], image_kv[:, 1])  # every image token is attended
            return self.output(self.intermediate(x), x)

    class Embeddings(nn.Module):
        def __init__(self, cfg: dict):
            super().__init__()
            self.word_embeddings = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
            self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], cfg["hidden_size"])
            self.LayerNorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])

        def forward(self, input_ids):
            positions = t.arange(input_ids.shape[1], device=input_ids.device)
            return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))

    class Encoder(nn.Module):
        def __init__(self, cfg: dict, image_width: int):
            super().__init__()
            self.layer = nn.ModuleList(BertLayer(cfg, image_width) for _ in range(cfg["num_hidden_layers"]))

    class TextEncoder(nn.Module):
        def __init__(self, cfg: dict, image_width: int):
            super().__init__()
            self.embeddings = Embeddings(cfg)
            self.encoder = Encoder(cfg, image_width)

        def image_keys_values(self, image):
            """Every layer's cross-attention keys and values of image states [N, tokens, width]:
            [N, layers, 2, heads, tokens, head width]. They depend on the image alone."""
            layers = self.encoder.layer
            first = layers[0].crossattention.self
            out = image.new_empty(image.shape[0], len(layers), 2, first.heads, image.shape[1],
                                  first.key.out_features // first.heads)
            for i, layer in enumerate(layers):
                cross = layer.crossattention.self
                out[:, i, 0] = heads_first(cross.key(image), cross.heads)
                out[:, i, 1] = heads_first(cross.value(image), cross.heads)
            return out

        def forward(self, input_ids, attention_mask, image_kv, rows):
            """Hidden states of token rows [B, L] cross-attending to the images ``image_kv[rows]``."""
            x = self.embeddings(input_ids)
            mask = attention_mask[:, None, None, :].bool()  # padded keys are never attended
            for i, layer in enumerate(self.encoder.layer):
                x = layer(x, image_kv[rows, i], mask)  # one layer's rows at a time: no copy of the whole cache
            return x

    class Blip(nn.Module):
        def __init__(self, vit: dict, cfg: dict):
            super().__init__()
            self.visual_encoder = VisionTransformer(**vit)
            self.text_encoder = TextEncoder(cfg, vit["width"])

    class ImageRewardModel(nn.Module):
        """The official module tree (``blip.*``, ``mlp.layers.*``); ``reward`` returns the raw MLP output."""

        def __init__(self, vit: dict, cfg: dict, mlp_dims: list[int]):
            super().__init__()
            self.blip = Blip(vit, cfg)
            self.mlp = aesthetic_mlp(mlp_dims)
            self.image_size = vit["patch"] * math.isqrt(vit["positions"] - 1)

        def encode_image(self, pixels):
            return self.blip.visual_encoder(pixels)

        def image_keys_values(self, image_states):
            return self.blip.text_encoder.image_keys_values(image_states)

        def reward_cached(self, image_kv, rows, input_ids, attention_mask):
            """Raw MLP output of token rows against cached images ``image_kv[rows]`` (``image_keys_values``)."""
            features = self.blip.text_encoder(input_ids, attention_mask, image_kv, rows)[:, 0]
            # the head's own precision: float32 unless an injected model holds it lower (official: .float())
            return self.mlp.layers(features.to(self.mlp.layers[0].weight.dtype)).squeeze(-1)

        def reward(self, image_states, input_ids, attention_mask):
            """Raw MLP output of matched rows of image states and token ids, as the official forward computes
            it: the image's keys and values are projected for every row."""
            rows = t.arange(input_ids.shape[0], device=input_ids.device)
            return self.reward_cached(self.image_keys_values(image_states), rows, input_ids, attention_mask)

    return ImageRewardModel


def _shape(state: dict, key: str) -> tuple[int, ...]:
    if key not in state:
        raise WeightsError(f"not an ImageReward checkpoint: key {key!r} is missing "
                           f"(found e.g. {', '.join(list(state)[:4])})")
    return tuple(state[key].shape)


def build_model(state: dict, med_config: dict):
    """An ImageReward model sized from the checkpoint's shapes and med_config, with its weights loaded."""
    vit = "blip.visual_encoder."
    width, _, patch, _ = _shape(state, vit + "patch_embed.proj.weight")
    positions = _shape(state, vit + "pos_embed")[1]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1 or width % VIT_HEAD_DIM:
        raise WeightsError(f"unsupported ViT: {positions} positions, width {width} (expected a square grid "
                           f"+ class token and {VIT_HEAD_DIM}-wide heads)")
    depth = len({k.split(".")[3] for k in state if k.startswith(vit + "blocks.")})
    vit_spec = dict(width=width, depth=depth, heads=width // VIT_HEAD_DIM, patch=patch, positions=positions,
                    hidden=_shape(state, vit + "blocks.0.mlp.fc1.weight")[0])
    cfg = {"hidden_act": "gelu", "layer_norm_eps": 1e-12, **med_config}
    words = _shape(state, "blip.text_encoder.embeddings.word_embeddings.weight")
    cfg["vocab_size"], cfg["max_position_embeddings"] = words[0], _shape(
        state, "blip.text_encoder.embeddings.position_embeddings.weight")[0]
    layers = len({k.split(".")[4] for k in state if k.startswith("blip.text_encoder.encoder.layer.")})
    if (words[1], layers) != (cfg["hidden_size"], cfg["num_hidden_layers"]):
        raise WeightsError(f"med_config.json (hidden_size {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers) "
                           f"does not match the checkpoint (hidden size {words[1]}, {layers} layers)")
    mlp_dims = [_shape(state, f"mlp.layers.{AESTHETIC_MLP_LINEARS[0]}.weight")[1]]
    mlp_dims += [_shape(state, f"mlp.layers.{i}.weight")[0] for i in AESTHETIC_MLP_LINEARS]

    with torch().device("meta"):  # no random init of ~450M parameters: the checkpoint replaces them
        model = _modules()(vit_spec, cfg, mlp_dims)
    wanted = model.state_dict()
    kept = {k: v for k, v in state.items() if not IGNORED_KEYS.search(k)}
    missing = [k for k in wanted if k not in kept]
    if missing:
        raise WeightsError(f"ImageReward checkpoint lacks {len(missing)} weights, e.g. {', '.join(missing[:3])}; "
                           "is med_config.json the one shipped with it?")
    mismatched = [k for k in wanted if tuple(kept[k].shape) != tuple(wanted[k].shape)]
    if mismatched:
        raise WeightsError(f"ImageReward checkpoint shapes do not match med_config.json: {', '.join(mismatched[:3])}")
    model.load_state_dict({k: kept[k] for k in wanted}, assign=True)
    return model


@register_variants
class ImageRewardScorer(CrossEncoderScorer):
    """ImageReward v1.0: BLIP ViT-L + cross-attending BERT + MLP head, normalised reward.

    Options (besides the TorchScorer ones): ``weights`` may be a folder holding ``ImageReward.pt`` or
    ``ImageReward.safetensors`` + ``med_config.json`` (+ optionally bert-base-uncased's ``vocab.txt``;
    otherwise the tokenizer comes from the hub cache), or the checkpoint file itself with those beside it.
    ``tokenizer`` may name another folder holding ``vocab.txt``.
    """

    name: ClassVar[str] = "imagereward"
    description: ClassVar[str] = ("ImageReward v1.0 (THUDM): BLIP cross-encoder preference reward, "
                                  "prompt cut at 35 tokens")
    official: ClassVar[str] = ("THUDM/ImageReward ImageReward.pt + med_config.json with the bert-base-uncased "
                               "vocabulary, as ImageReward.load('ImageReward-v1.0').score(prompt, image) computes it")
    score_scale: ClassVar[str] = "(mlp - 0.16717362) / 1.0333394: standardised on its training set, about -2 to 2"
    parity: ClassVar[str] = ("the official image-reward package on identical random weights, CPU fp32: max abs "
                             "difference 1.3e-6 (run outside the project); tests: an independent BLIP forward")
    higher_is_better: ClassVar[bool] = True
    score_range: ClassVar[tuple[float | None, float | None]] = (None, None)
    prompt_aware: ClassVar[bool] = True
    max_prompt_tokens: ClassVar[int | None] = 35
    version: ClassVar[str] = "1"
    default_variant: ClassVar[str | None] = "imagereward"
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "imagereward": {
            "repo": "THUDM/ImageReward",
            "checkpoints": ("ImageReward.safetensors", "ImageReward.pt"),  # first found in `weights` wins
            "checkpoint": "ImageReward.pt",  # the hub file
            "config": "med_config.json",
            "tokenizer_repo": "google-bert/bert-base-uncased",
            "vocab": "vocab.txt",
            "max_length": 35,
            "mean": 0.16717362830052426,
            "std": 1.0333394966054072,
            "description": description,
        },
    }

    fp32_modules: ClassVar[tuple[str, ...]] = ("model.mlp",)

    def __init__(self, variant: str | None = None, *, tokenizer: Any = None, **options: Any):
        # ``tokenizer`` is a folder holding bert-base-uncased's vocab.txt, or an injected tokenizer object.
        folder = tokenizer if isinstance(tokenizer, (str, Path)) else None
        super().__init__(variant, tokenizer=None if folder else tokenizer, **options)
        self.tokenizer_dir = str(folder) if folder else None

    # -- files ----------------------------------------------------------------------------------
    def _folder(self, role: str) -> WeightsSource:
        if self.weights and Path(self.weights).expanduser().is_file():
            return WeightsSource(repo=self.spec["repo"], local=str(Path(self.weights).expanduser().parent), role=role)
        return self.source(role)

    def _checkpoint(self) -> tuple[WeightsSource, str]:
        if self.weights:
            path = Path(self.weights).expanduser()
            if path.is_file():
                return self._folder("model"), path.name
            for name in self.spec["checkpoints"]:
                if (path / name).is_file():
                    return self._folder("model"), name
        return self._folder("model"), self.spec["checkpoint"]

    def _vocab(self) -> tuple[WeightsSource, str]:
        if self.tokenizer_dir:
            return WeightsSource(local=self.tokenizer_dir, role="tokenizer"), self.spec["vocab"]
        folder = self._folder("tokenizer")
        if folder.local and (Path(folder.local).expanduser() / self.spec["vocab"]).is_file():
            return folder, self.spec["vocab"]
        return WeightsSource(repo=self.spec["tokenizer_repo"], role="tokenizer"), self.spec["vocab"]

    def files(self) -> list[tuple[WeightsSource, str]]:
        return [self._checkpoint(), (self._folder("model"), self.spec["config"]), self._vocab()]

    # -- loading --------------------------------------------------------------------------------
    def _load(self) -> None:
        if self.model is None:
            source, name = self._checkpoint()
            state = load_state_dict(self.resolver.file(source, name), allow_pickle=self.allow_pickle)
            config_path = self.resolver.file(self._folder("model"), self.spec["config"])
            self.model = build_model(state, read_json(config_path))
        if self.tokenizer is None:
            from transformers import BertTokenizer

            source, name = self._vocab()
            if source.local is None and self.weights:  # say so: a folder without vocab.txt is easy to miss
                log.info("imagereward: no %s in the weights folder or a tokenizer option; using %s's from the "
                         "Hugging Face cache (copy it next to the checkpoint to keep the run on local files)",
                         name, source.repo)
            vocab = self.resolver.file(source, name)
            self.tokenizer = BertTokenizer.from_pretrained(str(vocab.parent), do_lower_case=True)
            # BLIP's init_tokenizer: these never occur in ordinary text, but "[ENC]" typed in a prompt
            # must stay one token, as in the official code.
            self.tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        self.max_length = int(self.spec["max_length"])
        # torchvision's CenterCrop, as the official transform: the offset rounds (half to even)
        self.preprocess = self.processor or ImagePreprocess(self.model.image_size, "shortest", crop=True,
                                                            crop_offset="round")

    # -- scoring --------------------------------------------------------------------------------
    def encode_pixels(self, pixel_values):
        """Pixels -> every text layer's cross-attention keys and values of the image (the per-image cache
        the joint part reads); differentiable, so the tensor path of ``__call__`` runs through it too."""
        return self.model.image_keys_values(self.model.encode_image(pixel_values))

    def joint(self, states, rows, input_ids, attention_mask):
        raw = self.model.reward_cached(states, rows, input_ids, attention_mask).float()
        return (raw - self.spec["mean"]) / self.spec["std"]
