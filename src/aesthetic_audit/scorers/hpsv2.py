"""HPSv2 and HPSv2.1 (Wu et al. 2023, "Human Preference Score v2"): one class, two variant rows.

Official weights: Hugging Face repo ``xswu/HPSv2`` (unpinned revision; the file's SHA-256 enters every
record key), files ``HPS_v2_compressed.pt`` (variant ``hpsv2``) and ``HPS_v2.1_compressed.pt``
(variant ``hpsv2.1``): ``torch.save({"state_dict": ...})`` of an open_clip ViT-H-14 CLIP. A pickle, so
loading it needs ``allow_pickle=true`` (read with ``torch.load(weights_only=True)``), or convert it once
with ``aesthetic-audit convert`` (``_openclip.convert_checkpoint``) into config.json +
model.safetensors and pass that folder as ``weights``. Tokenizer files (vocab.json, merges.txt) come
from ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` pinned at the revision PickScore's processor uses (the
standard CLIP BPE vocabulary open_clip ships), from the ``weights`` folder when it holds them, or from a
``tokenizer`` folder option.

Architecture (open_clip ``ViT-H-14``): vision 32 blocks, width 1280, 16 heads (head width 80), patch
14, 224 px, class-token pooling with ln_post; text 24 blocks, width 1024, 16 heads, context 77, vocab
49,408, causal mask, pooled at the argmax token id (the end token); both projected to 1024; exact GELU;
LayerNorm eps 1e-5. Mapped onto transformers' ``CLIPModel`` by ``_openclip.openclip_to_transformers``.

Preprocessing (the official ``hpsv2.score``: ``create_model_and_transforms(..., light_augmentation=True)``
-> open_clip ``image_transform(224, is_train=False, resize_longest_max=True)`` of HPSv2's vendored
open_clip): convert to RGB, ToTensor (/255), then ``ResizeMaxSize``: the LONGER side is scaled to 224
(new size ``round(side * 224 / longer)``, at least 1) by torchvision's tensor resize, i.e. ``F.interpolate(bicubic,
align_corners=False, antialias=True)`` on floats, without clamping, then zero-padded (black, before
normalisation) to 224 x 224, left/top getting ``pad // 2``; then OpenAI mean/std. Not resize-shortest
plus centre crop: the whole image is seen. ``antialias`` follows torchvision >= 0.17, whose default is
True; torchvision < 0.17 resized tensors without antialiasing (scorer option ``antialias=false``
reproduces that).

Score: ``diag(image_features @ text_features.T)`` with both L2-normalised and no logit scale, i.e. the
raw cosine (≈ 0.2-0.35 for matching pairs; the HPD benchmark reports it ×100). Normalisation and the
product run in float32 whatever the model dtype, so a bf16 backbone does not round the score to bf16.

Deviations from the official code, only where it fails: an RGBA image is converted to RGB (alpha
dropped) where the official transform keeps 4 channels and the model then fails; an image whose longer
side is already 224 but is not square is zero-padded to a square, where the official transform leaves
it unpadded and the model fails. The official ``score()`` runs under ``torch.cuda.amp.autocast`` (fp16)
on a GPU; ``dtype=fp16`` comes closest to that, the default fp32 differs from it by ~1e-3.

Parity: how a user checks our scores against the official implementation on the same weights (it
needs torchvision and the ``hpsv2`` package, which cannot run in this project's test environment, so it
has not been run here)::

    pip install hpsv2 ftfy           # official code; ftfy is what open_clip cleans prompts with
    python - <<'EOF'
    import hpsv2, torch
    from PIL import Image
    from aesthetic_audit.registry import get
    imgs, prompt = ["a.png", "b.jpg"], "a blurry photo of a cat"
    ours = get("scorers", "hpsv2")(allow_pickle=True, device="cuda")
    for path in imgs:
        ref = float(hpsv2.score(path, prompt, hps_version="v2.0")[0])   # fp16 autocast on CUDA
        mine = ours.score([(Image.open(path).convert("RGB"), prompt)])[0].score
        print(path, ref, mine, abs(ref - mine))                      # expect < 2e-3 (fp16 vs fp32)
    EOF

Run both on CPU (``CUDA_VISIBLE_DEVICES=``) for an fp32-to-fp32 comparison (expect < 1e-5), and use
``hps_version="v2.1"`` with scorer ``hpsv2.1`` for the second variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ._clip_common import LAION_VIT_H_REPO, LAION_VIT_H_REVISION
from ._openclip import OpenClipTokenizer
from ._openclip_dual import OpenClipDualEncoder
from ._torch import OPENAI_MEAN, OPENAI_STD, register_variants, torch


@dataclass(frozen=True)
class LetterboxPreprocess:
    """HPSv2's eval transform: longer side to ``size`` (tensor bicubic), zero-pad to a square, normalise."""

    size: int = 224
    antialias: bool = True
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    def fit(self, x):
        """[B, 3, H, W] floats in [0, 1] -> [B, 3, size, size], before normalisation."""
        F = torch().nn.functional
        h, w = x.shape[-2:]
        scale = self.size / max(h, w)
        if scale != 1.0:  # a side never rounds to 0 pixels: a 1 x 400 image becomes 1 x 42, not 0 x 42
            h, w = max(1, round(h * scale)), max(1, round(w * scale))
            x = F.interpolate(x, size=[h, w], mode="bicubic", align_corners=False, antialias=self.antialias)
        pad_h, pad_w = self.size - h, self.size - w
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
        return x

    def normalise(self, x):
        t = torch()
        mean = t.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = t.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def pil(self, image: Image.Image):
        """One PIL image -> float32 [3, size, size], as ToTensor then the tensor transforms."""
        arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
        x = torch().from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)
        return self.normalise(self.fit(x[None]))[0]

    def batch(self, images: list[Image.Image]):
        return torch().stack([self.pil(im) for im in images])

    def tensor(self, images):
        """Differentiable path for floats [B, 3, H, W] in [0, 1]: the same operations as for PIL input."""
        return self.normalise(self.fit(images))


@register_variants
class HPSv2Scorer(OpenClipDualEncoder):
    """HPSv2 / HPSv2.1: cosine of open_clip ViT-H-14 image and prompt embeddings.

    Options: those of ``OpenClipDualEncoder`` (``weights``, ``tokenizer``, ``processor``: an injected
    LetterboxPreprocess) and ``antialias`` (default true, as torchvision >= 0.17 resizes tensors).
    """

    name: ClassVar[str] = "hpsv2"
    description: ClassVar[str] = "HPSv2 human preference score: cosine of open_clip ViT-H-14 image/prompt features"
    official: ClassVar[str] = ("xswu/HPSv2 HPS_v2_compressed.pt (open_clip ViT-H-14), as hpsv2.score(..., "
                               "hps_version='v2.0') computes it")
    score_scale: ClassVar[str] = "cosine, no logit scale: about 0.2-0.35 for matching pairs (the HPD benchmark prints x 100)"
    parity: ClassVar[str] = ("the official hpsv2 package on identical random weights, CPU fp32: max abs difference "
                             "3.9e-8 (HPSv2.1, run outside the project); tests: an independent open_clip forward")
    score_range: ClassVar[tuple[float | None, float | None]] = (-1.0, 1.0)
    max_prompt_tokens: ClassVar[int | None] = 77
    version: ClassVar[str] = "1"
    default_variant: ClassVar[str | None] = "hpsv2"
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "hpsv2": {"repo": "xswu/HPSv2", "checkpoint": "HPS_v2_compressed.pt",
                  "tokenizer_repo": LAION_VIT_H_REPO, "tokenizer_revision": LAION_VIT_H_REVISION,
                  "vision_head_width": 80, "text_head_width": 64,
                  "description": "HPSv2 human preference score: cosine of open_clip ViT-H-14 image/prompt features"},
        "hpsv2.1": {"repo": "xswu/HPSv2", "checkpoint": "HPS_v2.1_compressed.pt",
                    "tokenizer_repo": LAION_VIT_H_REPO, "tokenizer_revision": LAION_VIT_H_REVISION,
                    "vision_head_width": 80, "text_head_width": 64,
                    "description": "HPSv2.1 human preference score (retrained HPSv2 weights), cosine of features",
                    "official": ("xswu/HPSv2 HPS_v2.1_compressed.pt (open_clip ViT-H-14), as hpsv2.score(..., "
                                 "hps_version='v2.1') computes it")},
    }

    tokenizer_class: ClassVar[type] = OpenClipTokenizer

    def __init__(self, variant: str | None = None, *, antialias: bool = True, **options: Any):
        super().__init__(variant, **options)
        self.antialias = bool(antialias)

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        ident["preprocess"] = {"resize": "longest side bicubic, zero pad", "antialias": self.antialias}
        return ident

    def make_preprocess(self) -> LetterboxPreprocess:
        return LetterboxPreprocess(size=self.model.config.vision_config.image_size, antialias=self.antialias)
