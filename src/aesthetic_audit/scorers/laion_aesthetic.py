"""LAION aesthetic predictor v2 ("improved aesthetic predictor"): a prompt-blind 1-10 aesthetic rating.

Official weights: the head ``sac+logos+ava1-l14-linearMSE.pth`` from github.com/christophschuhmann/
improved-aesthetic-predictor, read from its hub mirror ``camenduru/improved-aesthetic-predictor``
(unpinned: the repo holds nothing else of interest; the file's SHA-256 goes into every record key).
The file is a pickled state dict, so the hub default needs ``allow_pickle=true`` (read with
``torch.load(weights_only=True)``); a safetensors copy with the same keys is read without it. The
backbone is OpenAI CLIP ViT-L/14 from ``openai/clip-vit-large-patch14`` pinned at
32bd64288804d66eefd0ccbe215aa642df71cc41 (config.json, model.safetensors; only the vision tower and
its projection are built). Local copies: ``weights`` (the head file, or a folder holding
``sac+logos+ava1-l14-linearMSE.safetensors`` or ``.pth``) and ``clip_weights`` (the CLIP folder).
``model=`` takes a loaded CLIP (a CLIPModel such as ``get("scorers", "clip")().load().model``, or a
CLIPVisionModelWithProjection), so the CLIP baseline and this head can share one backbone.

Architecture: the head is ``layers`` = Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2),
Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1): state-dict keys layers.{0,2,4,6,7}.
{weight,bias}, no activations (the official code has its ReLUs commented out), dropout inactive at
inference. It reads the L2-normalised 768-d projected CLIP image embedding. Layer widths are taken
from the checkpoint, so heads trained the same way on other CLIP backbones load too.

Preprocessing: the official predictor used the ``clip`` package's transform: Resize(224, bicubic) on the
short side, CenterCrop(224) with torchvision's rounding of the offset, RGB, /255, OpenAI mean/std;
ImagePreprocess reproduces it on PIL without torchvision. (The conversion to RGB comes before the
resize here; for RGB inputs, which is what the pipeline decodes every image to, that changes nothing.)

Score: the head's output, ≈ 1-10, higher is better; nominal range, not clipped. The official script ran
CLIP in fp16 on CUDA and the head in fp32; we run the head in fp32 whatever ``dtype`` the backbone
uses, so ``dtype=fp16`` on CUDA is the closest match to published numbers.

Parity: how a user checks our scores against the official implementation on the same weights (not run
here: no hub access, no `clip` package):
    import clip, torch                      # pip install git+https://github.com/openai/CLIP
    backbone, transform = clip.load("ViT-L/14", device="cuda")
    head = <the official MLP class>(768); head.load_state_dict(torch.load(PTH)); head.cuda().eval()
    f = backbone.encode_image(transform(image).unsqueeze(0).cuda()).float()
    reference = head(f / f.norm(dim=-1, keepdim=True))
    ours = get("scorers", "laion-aesthetic")(allow_pickle=True, device="cuda", dtype="fp16").score(
        [(image, None)])[0].score
and expect agreement to ~1e-2 (fp16 backbone on both sides; ~1e-4 when both run fp32).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ._clip_common import MODEL_FILES, CLIPImageTower, load_clip, model_file
from ._torch import AESTHETIC_MLP_LINEARS, OPENAI_MEAN, OPENAI_STD, ImagePreprocess, aesthetic_mlp, register_variants
from ._weights import WeightsError, WeightsSource, load_state_dict


def build_head(state: dict[str, Any], name: str):
    """The official head's module layout, sized from the checkpoint's tensors."""
    expected = {f"layers.{i}.{p}" for i in AESTHETIC_MLP_LINEARS for p in ("weight", "bias")}
    if set(state) != expected:
        raise WeightsError(f"{name} is not an improved-aesthetic-predictor head: expected keys "
                           f"{sorted(expected)}, found {sorted(state)[:12]}")
    dims = [state["layers.0.weight"].shape[1]] + [state[f"layers.{i}.weight"].shape[0] for i in AESTHETIC_MLP_LINEARS]
    head = aesthetic_mlp(dims)
    try:
        head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{name}: layer shapes do not chain: {str(exc).splitlines()[-1]}") from None
    if dims[-1] != 1:
        raise WeightsError(f"{name}: the last layer has {dims[-1]} outputs, not 1")
    return head.eval()


@register_variants
class LaionAestheticScorer(CLIPImageTower):
    """LAION improved aesthetic predictor v2: MLP on the normalised CLIP ViT-L/14 image embedding."""

    name: ClassVar[str] = "laion-aesthetic"
    description: ClassVar[str] = "LAION aesthetic predictor v2 (MLP on CLIP ViT-L/14), ~1-10, prompt-blind"
    official: ClassVar[str] = ("improved-aesthetic-predictor's sac+logos+ava1-l14-linearMSE.pth on OpenAI CLIP "
                               "ViT-L/14 (its simple_inference script)")
    score_scale: ClassVar[str] = "predicted mean rating, about 1-10 (not clipped); prompt-blind"
    parity: ClassVar[str] = ("tests: the MLP by hand on the normalised embedding, the clip package's crop; real "
                             "weights: the script's recipe in docs/parity.md (~1e-2 against its fp16, ~1e-4 fp32)")
    score_range: ClassVar[tuple[float | None, float | None]] = (1.0, 10.0)  # nominal; not clipped
    prompt_aware: ClassVar[bool] = False
    fp32_modules: ClassVar[tuple[str, ...]] = ("head",)  # as in the official script
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "laion-aesthetic": {
            "repo": "camenduru/improved-aesthetic-predictor",
            "file": "sac+logos+ava1-l14-linearMSE.pth",
            "clip_repo": "openai/clip-vit-large-patch14",
            "clip_revision": "32bd64288804d66eefd0ccbe215aa642df71cc41",
            "description": "LAION aesthetic predictor v2 (MLP on CLIP ViT-L/14), ~1-10, prompt-blind",
        },
    }
    default_variant: ClassVar[str | None] = "laion-aesthetic"

    def __init__(self, variant: str | None = None, *, clip_weights: str | None = None, **options: Any):
        super().__init__(variant, **options)
        self.clip_weights = clip_weights
        self.head = None

    # -- sources ----------------------------------------------------------------------------------
    def head_file(self) -> tuple[WeightsSource, str]:
        source = self.source("head")
        official = self.spec["file"]
        if source.local:
            base = Path(source.local).expanduser()
            if base.is_file():
                return source, base.name
            converted = Path(official).with_suffix(".safetensors").name
            if (base / converted).is_file():
                return source, converted
        return source, official

    def clip_source(self) -> WeightsSource:
        return WeightsSource(repo=self.spec["clip_repo"], revision=self.spec.get("clip_revision"),
                             local=self.clip_weights, role="model")

    def files(self) -> list[tuple[WeightsSource, str]]:
        clip = self.clip_source()
        return [self.head_file(), (clip, "config.json"), (clip, model_file(clip, MODEL_FILES[0]))]

    # -- loading ----------------------------------------------------------------------------------
    def _load(self) -> None:
        head_source, head_name = self.head_file()
        path = self.resolver.file(head_source, head_name)
        self.head = build_head(load_state_dict(path, allow_pickle=self.allow_pickle), path.name)
        if self.model is None:
            clip = self.clip_source()
            self.model = load_clip(self.resolver.file(clip, "config.json"),
                                   self.resolver.file(clip, model_file(clip, MODEL_FILES[0])),
                                   allow_pickle=self.allow_pickle, vision_only=True)
        config = self.model.config
        vision = getattr(config, "vision_config", config)
        width = self.head.layers[0].in_features
        proj = getattr(config, "projection_dim", None)
        if proj is not None and proj != width:
            raise WeightsError(f"{path.name} reads {width}-d embeddings but the CLIP backbone projects to {proj}")
        self.preprocess = self.processor or ImagePreprocess(vision.image_size, "shortest", True, OPENAI_MEAN,
                                                            OPENAI_STD, "round")

    # -- scoring ----------------------------------------------------------------------------------
    def combine(self, image_emb, text_emb):
        return self.head.layers(image_emb).squeeze(-1)  # float32 embeddings (unit) into the float32 head
