"""BLIP-L image-text matching (ITM): the paper's unaligned cross-encoder baseline ("BLIP-L").

Official weights: hub repo ``Salesforce/blip-itm-large-coco`` (the transformers port of BLIP's
ViT-L retrieval model fine-tuned on COCO), files ``config.json`` + ``model.safetensors`` (loaded with
``transformers.BlipForImageTextRetrieval``), ``preprocessor_config.json``, and the tokenizer files
``tokenizer_config.json`` + ``vocab.txt`` (``BertTokenizer``, lower-casing, ``model_max_length`` 512).
No revision is pinned; the SHA-256 of every file goes into the record keys.

Architecture: ViT-L/16 at 384 px (577 image tokens, post-LayerNorm output) -> BERT-base text encoder
whose every layer cross-attends to all image tokens -> ``itm_head`` (Linear 768 -> 2) on the state at
position 0. Score = softmax(itm_logits)[:, 1], the probability that image and text match: higher is
better, range (0, 1). This is what the transformers model returns as ``itm_score`` with
``use_itm_head=True`` (the paper's definition).

Text: the repo's tokenizer ([CLS] ... [SEP]); prompts are cut at min(model_max_length,
max_position_embeddings) = 512 tokens, recorded per score. Note: the transformers port puts [CLS] at
position 0; the original Salesforce BLIP/LAVIS ITM code overwrites it with the [ENC] token (id 30523).
We follow the transformers model, as the paper names this hub checkpoint.

Preprocessing (``BlipImageProcessor`` from preprocessor_config.json): RGB, resize to size x size
(a square, aspect ratio not kept) with PIL bicubic, /255, normalise with the OpenAI CLIP mean/std:
``ImagePreprocess(384, "square", crop=False)`` with the config's size/mean/std. No torchvision.

Reuse: the vision tower runs once per distinct image of a call; each (image, prompt) combination then
runs only the text encoder + ITM head, in batches padded to their longest prompt, against that image's
cached tokens.

Training loop: ``scorer(images, prompts)`` (``CrossEncoderScorer.__call__``) takes PIL images or a float
tensor [B, 3, H, W] in [0, 1] with one prompt per image and returns match probabilities [B]. A tensor runs
through ``ImagePreprocess.tensor``, the vision tower, the text encoder and the ITM head with autograd. A
tensor already at the processor's size (384 x 384) is preprocessed exactly as the PIL path: its score
equals ``score()``'s to float rounding. Any other size is resized to the square by torch's antialiased
bicubic interpolation, close to but not bit-equal with PIL's bicubic resampling. The loaded model is
frozen (``requires_grad=False``) unless the user turns it on (``scorer.model.requires_grad_(True)``).

Parity: how a user checks our scores against the official implementation on the same weights (not
run here: no hub access). On a machine with the checkpoint in the Hugging Face cache::

    import torch
    from PIL import Image
    from transformers import BlipForImageTextRetrieval, BlipProcessor
    from aesthetic_audit.registry import get
    repo = "Salesforce/blip-itm-large-coco"
    model, proc = BlipForImageTextRetrieval.from_pretrained(repo).eval(), BlipProcessor.from_pretrained(repo)
    ours = get("scorers", "blip-itm")(device="cpu")
    for path, prompt in pairs:
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            ref = model(**proc(images=image, text=prompt, return_tensors="pt")).itm_score.softmax(-1)[0, 1]
        assert abs(float(ref) - ours.score([(image, prompt)])[0].score) < 1e-4

With torchvision installed, ``BlipProcessor`` picks the torchvision ("fast") image processor, whose
antialiased resize differs slightly from PIL's; pass ``BlipImageProcessorPil`` to compare exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import ConfigError
from ..ui import quiet_libraries
from ._torch import CrossEncoderScorer, ImagePreprocess, register_variants, torch
from ._weights import read_json


def preprocess_from_config(cfg: dict[str, Any]) -> ImagePreprocess:
    """The BlipImageProcessor settings we reproduce: square bicubic resize, /255, mean/std."""
    size = cfg.get("size", 384)
    if isinstance(size, dict):
        if size.get("height") is None or size.get("height") != size.get("width"):
            raise ConfigError(f"preprocessor_config.json: unsupported size {size} (expected a square)")
        size = size["height"]
    unsupported = {k: cfg[k] for k, ok in (("do_resize", True), ("do_normalize", True), ("do_rescale", True),
                                             ("resample", 3), ("do_center_crop", False)) if k in cfg and cfg[k] != ok}
    if abs(cfg.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
        unsupported["rescale_factor"] = cfg["rescale_factor"]
    if unsupported:
        raise ConfigError(f"preprocessor_config.json: unsupported settings {unsupported} "
                          "(BLIP ITM resizes bicubic to a square, rescales by 1/255 and normalises)")
    return ImagePreprocess(int(size), "square", crop=False, mean=tuple(cfg.get("image_mean", ImagePreprocess.mean)),
                           std=tuple(cfg.get("image_std", ImagePreprocess.std)))


@register_variants
class BlipItmScorer(CrossEncoderScorer):
    """BLIP ITM match probability via transformers' BlipForImageTextRetrieval.

    ``weights``: a folder with the repo's files (see ``files``). ``processor``: an injected
    ImagePreprocess (or an object with ``size``/``image_mean``/``image_std``) instead of the config.
    """

    name: ClassVar[str] = "blip-itm"
    description: ClassVar[str] = "BLIP-L ITM match probability (Salesforce/blip-itm-large-coco), unaligned baseline"
    official: ClassVar[str] = ("Salesforce/blip-itm-large-coco (revision not pinned) as transformers' "
                               "BlipForImageTextRetrieval with BlipProcessor computes it (use_itm_head=True)")
    score_scale: ClassVar[str] = "softmax probability 0-1 that image and prompt match (the ITM head's second class)"
    parity: ClassVar[str] = ("tests: the transformers model's own ITM forward on a tiny random BLIP, by hand-tokenised "
                             "ids; real weights: the transformers recipe in docs/parity.md (~1e-4)")
    higher_is_better: ClassVar[bool] = True
    score_range: ClassVar[tuple[float | None, float | None]] = (0, 1)
    prompt_aware: ClassVar[bool] = True
    max_prompt_tokens: ClassVar[int | None] = 512
    version: ClassVar[str] = "1"
    default_variant: ClassVar[str | None] = "blip-itm"
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "blip-itm": {
            "repo": "Salesforce/blip-itm-large-coco",
            "files": {"model": ("config.json", "model.safetensors"), "processor": ("preprocessor_config.json",),
                      "tokenizer": ("tokenizer_config.json", "vocab.txt")},
            "description": description,
        },
    }

    def _load(self) -> None:
        paths = {f: self.resolver.file(s, f) for s, f in self.weight_files()}
        if self.model is None:
            from transformers import BlipForImageTextRetrieval

            folder = paths["model.safetensors"].parent
            with quiet_libraries():
                self.model = BlipForImageTextRetrieval.from_pretrained(str(folder), local_files_only=True)
        if self.tokenizer is None:
            from transformers import BertTokenizer

            self.tokenizer = BertTokenizer.from_pretrained(str(paths["vocab.txt"].parent))
        if self.processor is None:
            self.preprocess = preprocess_from_config(read_json(paths["preprocessor_config.json"]))
        elif isinstance(self.processor, ImagePreprocess):
            self.preprocess = self.processor
        else:
            size = self.processor.size
            self.preprocess = preprocess_from_config({"size": size if isinstance(size, int) else dict(size),
                                                      "image_mean": self.processor.image_mean,
                                                      "image_std": self.processor.image_std})
        self.max_length = min(int(self.tokenizer.model_max_length),
                              int(self.model.config.text_config.max_position_embeddings))

    def encode_pixels(self, pixel_values):
        return self.model.vision_model(pixel_values=pixel_values).last_hidden_state

    def joint(self, states, rows, input_ids, attention_mask):
        t = torch()
        image_states = states[rows]
        image_mask = t.ones(image_states.shape[:-1], dtype=t.long, device=image_states.device)
        text = self.model.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                       encoder_hidden_states=image_states, encoder_attention_mask=image_mask)
        logits = self.model.itm_head(text.last_hidden_state[:, 0, :])
        return logits.float().softmax(dim=-1)[:, 1]
