"""HPS v1 (Wu et al. 2023, "Better Aligning Text-to-Image Models with Human Preference"): the study's "HPS".

Official source: github.com/tgxs002/align_sd (README section "Human Preference Classifier" and
``evaluate_hps.py``, its batched version). The classifier is OpenAI's CLIP ViT-L/14 fine-tuned on human
choices; the checkpoint ``hpc.pt`` is read with ``torch.load(path)["state_dict"]`` and loaded strictly
(``model.load_state_dict``) into the model that ``clip.load("ViT-L/14")`` of OpenAI's ``clip`` package
builds. So its state dict has exactly that model's keys, with no ``module.`` prefix and no extra entries:
``visual.conv1.weight``, ``visual.class_embedding``, ``visual.positional_embedding``, ``visual.ln_pre.*``,
``visual.transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj.*, ln_2, mlp.c_fc.*, mlp.c_proj.*}``,
``visual.ln_post.*``, ``visual.proj``, ``token_embedding.weight``, ``positional_embedding``,
``transformer.resblocks.N.*``, ``ln_final.*``, ``text_projection``, ``logit_scale``: the open_clip layout
``_openclip.openclip_to_transformers`` maps onto transformers' ``CLIPModel``. The file is distributed
only through the OneDrive link in that README (the authors keep no hub repository for it, and no copy
elsewhere could be verified here), so ``weights`` must point at it. It is a pickle: pass ``allow_pickle=true`` (read
with ``torch.load(weights_only=True)``), or convert it once with ``aesthetic-audit convert hpc.pt -o FOLDER --openclip
--activation quick_gelu`` (``_openclip.convert_checkpoint(..., activation="quick_gelu")``) into config.json +
model.safetensors and pass that folder.

Architecture (OpenAI CLIP ViT-L/14): vision 24 blocks, width 1024, 16 heads of 64, patch 14, 224 px,
class-token pooling through ln_post, projection 1024 -> 768; text 12 blocks, width 768, 12 heads of 64,
context 77, vocab 49,408, causal mask, pooled at the argmax token id (the end token), projection
768 -> 768; LayerNorm eps 1e-5; QuickGELU, x * sigmoid(1.702 x), in every MLP (OpenAI's ``clip`` model;
exact GELU would change every score), which is why the mapping is called with ``activation="quick_gelu"``.

Preprocessing (``clip.load``'s transform, torchvision on a PIL image): ``Resize(224, BICUBIC)``: the
shorter side becomes 224 and the longer ``int(224 * long / short)``, by PIL's own bicubic resize (PIL
switches palette and 1-bit images to nearest), in the image's OWN mode; ``CenterCrop(224)`` with offsets
``int(round((side - 224) / 2))``; only then conversion to RGB; ToTensor (/255); Normalize with the OpenAI
mean/std. Resizing before the RGB conversion matters for RGBA (PIL resamples premultiplied alpha) and
palette images, so it is kept in that order. The tensor API (``__call__`` on [B, 3, H, W] floats) resizes
with torch's antialiased bicubic instead: close to, not equal with, the PIL path.

Tokens: ``clip.tokenize``: ftfy.fix_text, HTML-unescape twice, whitespace collapsed, lower case, OpenAI's
word regex (its special tokens spelled ``<|startoftext|>``/``<|endoftext|>``), byte-level BPE, start +
ids + end, zero-padded to 77. Over-long prompts: the README's ``clip.tokenize(...)`` raises, and
``evaluate_hps.py`` passes ``truncate=True`` (first 77 tokens, the last replaced by the end token). We
truncate as ``evaluate_hps.py`` does and record each prompt's untruncated token count and a
``truncated`` flag. Vocabulary: vocab.json + merges.txt of ``openai/clip-vit-large-patch14`` at revision
32bd64288804d66eefd0ccbe215aa642df71cc41 (the ``clip`` scorer's pin; the same 49,408 ids as the ``clip``
package's bpe_simple_vocab_16e6.txt.gz), the ``weights`` folder when it holds them, or a ``tokenizer``
folder option.

Score: ``diag(image_features @ text_features.T)`` with both features L2-normalised and no logit scale:
the raw cosine in [-1, 1], as the README and ``evaluate_hps.py`` compute it. The same repository's
``process_diffusion_db.py`` writes 100 x this cosine (and loads hpc.pt into open_clip's ``ViT-L-14``,
which uses exact GELU); we follow the README's scorer. Multiply by 100 to compare with tables on that
scale. Normalisation and the product run in float32 whatever the model dtype.

Deviation from the official code: none on a CPU in float32. ``clip.load`` on a GPU keeps the model in
fp16 (LayerNorm in fp32), so the official GPU scores differ from our fp32 ones by ~1e-3; ``dtype=fp16``
comes closer.

Parity, measured: OpenAI's own ``clip/model.py`` (``build_model``, then ``load_state_dict`` as the README
does, fp32 on the CPU) and ``clip/simple_tokenizer.py`` (from the openai-clip 1.0.1 sdist, imported without
its torchvision-bound ``clip/clip.py``) on the same tiny random hpc.pt the tests build, 4 images x 6
prompts (curly quote, HTML entity, a literal ``<|endoftext|>``, an 82-token prompt): token ids identical,
scores within 5.2e-8 of ours (run outside the project's tests). The preprocessing needs torchvision and
was not part of that run; the tests check it against torchvision's PIL path written out by hand.
How a user checks our scores against the complete official code on the real weights::

    pip install git+https://github.com/openai/CLIP.git ftfy regex
    CUDA_VISIBLE_DEVICES= python - <<'EOF'
    import clip, torch
    from PIL import Image
    from aesthetic_audit.registry import get
    model, preprocess = clip.load("ViT-L/14", device="cpu")        # fp32 on the CPU
    model.load_state_dict(torch.load("hpc.pt", map_location="cpu")["state_dict"])
    ours = get("scorers", "hps")(weights="hpc.pt", allow_pickle=True, device="cpu")
    for path, prompt in [("a.png", "a blurry photo of a cat"), ("b.jpg", "a dark, grainy street")]:
        with torch.no_grad():
            img = model.encode_image(preprocess(Image.open(path)).unsqueeze(0))
            txt = model.encode_text(clip.tokenize([prompt], truncate=True))
        ref = float(torch.nn.functional.cosine_similarity(img, txt))
        mine = ours.score([(Image.open(path), prompt)])[0].score
        print(path, ref, mine, abs(ref - mine))                     # expect < 1e-5
    EOF
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ._openclip import OpenClipTokenizer
from ._openclip_dual import OpenClipDualEncoder
from ._torch import ImagePreprocess, register_variants
from ._weights import MissingWeightsError, Resolver, WeightsError, WeightsSource

CHECKPOINT = "hpc.pt"
OPENAI_VIT_L_REPO = "openai/clip-vit-large-patch14"
OPENAI_VIT_L_REVISION = "32bd64288804d66eefd0ccbe215aa642df71cc41"  # as the clip scorer pins it
WHERE = ("HPS v1's hpc.pt is not on any hub repository: download it from the OneDrive link in the README of "
         "github.com/tgxs002/align_sd (section 'Human Preference Classifier') and pass the file, or its folder, "
         "as the scorer's weights option with allow_pickle=true (or convert it once to safetensors)")
# OpenAI's clip.simple_tokenizer word regex: open_clip's, with OpenAI's spelling of the two special tokens.
OPENAI_SPLIT = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


class OpenAIClipTokenizer(OpenClipTokenizer):
    """``clip.tokenize`` (truncating): open_clip's tokenizer but for the special tokens' spelling, which a
    prompt may contain literally (``<|endoftext|>`` becomes the end token, as in OpenAI's code)."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], context_length: int = 77):
        super().__init__(vocab, merges, context_length)
        self.pattern = self.regex.compile(OPENAI_SPLIT, self.regex.IGNORECASE)
        self._words = {"<|startoftext|>": (self.start_id,), "<|endoftext|>": (self.end_id,)}


@dataclass(frozen=True)
class ClipLoadPreprocess(ImagePreprocess):
    """``clip.load``'s PIL transform: resize (short side) and centre crop in the image's own mode, then RGB.

    ``ImagePreprocess`` converts to RGB first, which gives other pixels for RGBA and palette images; the
    resize and crop are done here in the official order, and the base class then only converts and
    normalises (the crop is already at the model size). Its tensor path is inherited unchanged.
    """

    def pil(self, image: Image.Image) -> np.ndarray:
        w, h = image.size
        # torchvision Resize(int): the long side int(size * long / short), computed in this order
        new = (self.size, int(self.size * h / w)) if w <= h else (int(self.size * w / h), self.size)
        if new != (w, h):
            image = image.resize(new, Image.BICUBIC)
        left, top = self.offset(new[0]), self.offset(new[1])
        return super().pil(image.crop((left, top, left + self.size, top + self.size)))


class _HintingResolver(Resolver):
    """A resolver whose missing-file error says where hpc.pt comes from (no hub repository has it)."""

    def files(self, wanted: list[tuple[WeightsSource, str]]) -> list[Path]:
        try:
            return super().files(wanted)
        except MissingWeightsError as exc:
            if any(m.source.role == "model" for m in exc.missing):
                exc.args = (f"{exc.args[0]}. {WHERE}",)
            raise


@register_variants
class HPSScorer(OpenClipDualEncoder):
    """HPS v1: cosine of the fine-tuned OpenAI CLIP ViT-L/14 image and prompt embeddings.

    Options (besides TorchScorer's): ``weights`` = hpc.pt (the file, any name, or a folder holding
    ``hpc.pt``; needs ``allow_pickle``) or a converted folder (config.json + model.safetensors, converted
    with QuickGELU; preferred when a folder holds both) or its model.safetensors file; ``tokenizer`` = a
    folder with vocab.json + merges.txt (or an injected tokenizer object); ``processor`` = an injected
    preprocessing object.
    """

    name: ClassVar[str] = "hps"
    description: ClassVar[str] = "HPS v1 human preference score: cosine of fine-tuned OpenAI CLIP ViT-L/14 features"
    official: ClassVar[str] = ("tgxs002/align_sd hpc.pt (OneDrive link in its README; OpenAI CLIP ViT-L/14, "
                               "QuickGELU), as the README and evaluate_hps.py compute it")
    score_scale: ClassVar[str] = ("cosine, no logit scale (the README's image_features @ text_features.T); "
                                  "the repo's DiffusionDB script prints x 100")
    parity: ClassVar[str] = ("OpenAI's clip.model and clip.simple_tokenizer on identical random weights, CPU fp32: "
                             "max abs difference 5.2e-8, identical token ids (run outside the project, pixels from "
                             "our PIL path); tests: an independent QuickGELU CLIP forward")
    score_range: ClassVar[tuple[float | None, float | None]] = (-1.0, 1.0)
    max_prompt_tokens: ClassVar[int | None] = 77
    version: ClassVar[str] = "1"
    default_variant: ClassVar[str | None] = "hps"
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "hps": {"checkpoint": CHECKPOINT, "tokenizer_repo": OPENAI_VIT_L_REPO,
                "tokenizer_revision": OPENAI_VIT_L_REVISION, "vision_head_width": 64, "text_head_width": 64,
                "activation": "quick_gelu",
                "description": "HPS v1 human preference score: cosine of fine-tuned OpenAI CLIP ViT-L/14 features"},
    }

    tokenizer_class: ClassVar[type] = OpenAIClipTokenizer

    def __init__(self, variant: str | None = None, **options: Any):
        super().__init__(variant, **options)
        self.resolver = _HintingResolver(offline=self.resolver.offline)

    def default_checkpoint(self) -> WeightsSource:
        raise WeightsError(f"the hps scorer needs the weights option. {WHERE}")

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        ident["preprocess"] = {"resize": "short side, PIL bicubic in the image's mode", "crop": "centre, round",
                               "rgb": "after the crop"}
        return ident

    def make_preprocess(self) -> ClipLoadPreprocess:
        return ClipLoadPreprocess(size=self.model.config.vision_config.image_size)
