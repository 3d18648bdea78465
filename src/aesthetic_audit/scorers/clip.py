"""CLIP score: the unaligned baseline, 100 x cosine of CLIP's projected image and text embeddings.

Official weights: ``openai/clip-vit-large-patch14`` on the Hugging Face hub, pinned at revision
32bd64288804d66eefd0ccbe215aa642df71cc41 (the snapshot that carries ``model.safetensors``); files read:
config.json, model.safetensors, vocab.json, merges.txt, preprocessor_config.json. Any other CLIP repo in
the transformers layout works through the ``repo`` option (then unpinned unless ``revision`` is
given), and a local folder with the same files through ``weights`` (``pytorch_model.bin`` instead of
the safetensors needs ``allow_pickle=true``).

Architecture: OpenAI CLIP ViT-L/14 at 224 pixels (24-layer ViT, 12-layer causal text transformer,
quick-GELU, 768-d projections), as transformers' CLIPModel. The text embedding is read at the end
token; prompts longer than 77 tokens (start and end tokens included) are cut to the start token, the
first 75 tokens and the end token. Each score records the untruncated count and whether it was cut.

Preprocessing: what transformers' CLIPImageProcessor (the PIL implementation, which is what the hub
repos' processors ran when these baselines were published) does with the repo's
preprocessor_config.json: RGB, short side to 224 with PIL bicubic (long side int(224 * long / short)),
centre crop 224 with the offset (h - 224) // 2, /255, normalised with the OpenAI mean/std. Note the
crop offset: torchvision's CenterCrop rounds (h - 224) / 2 instead, one pixel further when h - 224 is
odd; transformers' torchvision-backed "fast" processor does that and also resizes with antialiased
tensor interpolation instead of PIL, so its pixels differ slightly from ours. A local folder without
preprocessor_config.json gets the same CLIP defaults at the model's image size.

Score: 100 * cos(image, text) of the L2-normalised projected embeddings, in [-100, 100]. This is the
CLIPScore scale of torchmetrics and most generation papers without their clamp at 0. Hessel et al.'s
CLIPScore is w * max(cos, 0) with w = 2.5. We report the unclamped, unweighted value: both conventions
are monotone maps of it (torchmetrics = max(s, 0); Hessel = 2.5 * max(s / 100, 0)), while the clamp
would turn every negative cosine into a tie and bias the pairwise accuracy/AUROC the audit computes.

Parity: how a user checks our scores against the official implementation on the same weights (not run
here: no hub access):
    from transformers import CLIPModel, CLIPProcessor
    model = CLIPModel.from_pretrained("openai/clip-vit-large-patch14", revision=REV).eval()
    proc = CLIPProcessor.from_pretrained("openai/clip-vit-large-patch14", revision=REV, use_fast=False)
    # (transformers >= 5: backend="pil" instead of use_fast=False)
    inputs = proc(text=[prompt], images=[image], return_tensors="pt", padding=True, truncation=True,
                  max_length=77)
    out = model(**inputs)
    reference = 100 * torch.cosine_similarity(out.image_embeds, out.text_embeds)
    ours = get("scorers", "clip")().score([(image, prompt)])[0].score
and expect agreement to ~1e-4 in fp32 (use_fast=False keeps the PIL processor; the fast one differs as
described above).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._clip_common import CLIPDualEncoder
from ._torch import register_variants


@register_variants
class CLIPScorer(CLIPDualEncoder):
    """CLIP-L cosine x 100 (any transformers CLIP repo via ``repo``, or a local folder via ``weights``)."""

    name: ClassVar[str] = "clip"
    description: ClassVar[str] = "CLIP ViT-L/14 image-text cosine x 100 (unaligned baseline)"
    official: ClassVar[str] = ("OpenAI CLIP ViT-L/14, openai/clip-vit-large-patch14 (pinned), as transformers' CLIPModel "
                               "with CLIPProcessor's PIL path computes it")
    score_scale: ClassVar[str] = "100 x cosine (CLIPScore without the clamp at 0); matching pairs about 20-35"
    parity: ClassVar[str] = ("tests: 100 x cos of embeddings and PIL-processor pixels computed independently on a tiny "
                             "random CLIP; real weights: the transformers recipe in docs/parity.md (~1e-4 fp32)")
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "clip": {
            "repo": "openai/clip-vit-large-patch14",
            "revision": "32bd64288804d66eefd0ccbe215aa642df71cc41",
            "weights_file": "model.safetensors",
            "crop_offset": "floor",  # transformers' CLIPImageProcessor
            "description": "CLIP ViT-L/14 image-text cosine x 100 (unaligned baseline)",
        },
    }
    default_variant: ClassVar[str | None] = "clip"

    def scale(self) -> float:
        return 100.0
