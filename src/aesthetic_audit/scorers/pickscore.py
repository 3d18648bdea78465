"""PickScore v1 (Kirstain et al. 2023): CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

Official weights: model ``yuvalkirstain/PickScore_v1`` (transformers CLIPModel layout), pinned at revision
dc2ed378e35ed7046987c680120123faa75b4559 (the commit that added ``model.safetensors``); files read:
config.json, model.safetensors. The official inference code takes its processor from a second repo,
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, pinned at 94a64189c3535c1cb44acfcccd7b0908c1c8eb23 (a
revision with merges.txt); files read: vocab.json, merges.txt, preprocessor_config.json. Both sets are
hashed into the scorer's identity. Local copies: ``weights`` (the model folder; ``pytorch_model.bin``
needs ``allow_pickle=true``) and ``processor_weights`` (the processor folder; the PickScore_v1 repo
ships the same processor files, so its own folder also works there).

Architecture: OpenCLIP ViT-H/14 (32-layer ViT-H at 224 pixels, 24-layer text transformer, GELU,
1024-d projections) in transformers' CLIPModel, with a learnt logit scale. Prompts are cut at 77
tokens like the official ``processor(text, padding=True, truncation=True, max_length=77)``; each score
records the untruncated count and whether it was cut.

Preprocessing: the laion repo's CLIPImageProcessor config (RGB, short side 224 PIL bicubic, centre
crop 224 at offset (h - 224) // 2, /255, OpenAI mean/std), reproduced by ImagePreprocess exactly as
transformers' PIL processor computes it (the one AutoProcessor returned when PickScore was released).

Score: ``logit_scale.exp() * cos(image, text)`` of the L2-normalised projected embeddings, exactly the
quantity the official code computes before its softmax over candidate images (≈ 100 * cos for the
released model; typical values around 20). The logit scale is read from the checkpoint in float32.

Parity: how a user checks our scores against the official implementation on the same weights (not run
here: no hub access):
    from transformers import AutoModel, AutoProcessor
    proc = AutoProcessor.from_pretrained("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", use_fast=False)
    model = AutoModel.from_pretrained("yuvalkirstain/PickScore_v1").eval()
    img = model.get_image_features(**proc(images=[image], return_tensors="pt"))
    txt = model.get_text_features(**proc(text=[prompt], padding=True, truncation=True, max_length=77,
                                         return_tensors="pt"))
    # (transformers >= 5: backend="pil" instead of use_fast=False; features are `.pooler_output`)
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    reference = model.logit_scale.exp() * (txt @ img.T)[0]
    ours = get("scorers", "pickscore")().score([(image, prompt)])[0].score
and expect agreement to ~1e-3 in fp32 (the scale is ~100, so this is ~1e-5 in cosine).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._clip_common import LAION_VIT_H_REPO, LAION_VIT_H_REVISION, CLIPDualEncoder
from ._torch import register_variants


@register_variants
class PickScoreScorer(CLIPDualEncoder):
    """PickScore: logit_scale.exp() x cosine of a preference-tuned CLIP ViT-H/14."""

    name: ClassVar[str] = "pickscore"
    description: ClassVar[str] = "PickScore v1 (CLIP ViT-H/14 tuned on Pick-a-Pic): logit scale x cosine"
    official: ClassVar[str] = ("yuvalkirstain/PickScore_v1 (pinned) with the laion/CLIP-ViT-H-14-laion2B-s32B-b79K "
                               "processor, as PickScore's inference snippet runs them")
    score_scale: ClassVar[str] = "exp(logit_scale) x cosine, the checkpoint's scale (about 100); real pairs about 18-24"
    parity: ClassVar[str] = ("tests: logit scale x cos of independently computed embeddings on a tiny random CLIP; "
                             "real weights: the inference-snippet recipe in docs/parity.md (~1e-3)")
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "pickscore": {
            "repo": "yuvalkirstain/PickScore_v1",
            "revision": "dc2ed378e35ed7046987c680120123faa75b4559",
            "weights_file": "model.safetensors",
            "processor_repo": LAION_VIT_H_REPO,
            "processor_revision": LAION_VIT_H_REVISION,
            "crop_offset": "floor",  # transformers' CLIPImageProcessor
            "description": "PickScore v1 (CLIP ViT-H/14 tuned on Pick-a-Pic): logit scale x cosine",
        },
    }
    default_variant: ClassVar[str | None] = "pickscore"

    def scale(self) -> float:
        return self.logit_scale
