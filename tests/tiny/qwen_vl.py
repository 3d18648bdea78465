"""Tiny random-weight Qwen-VL model folders in the official layouts, for the local VLM backend.

Each folder holds what a hub snapshot holds: ``config.json``, the weights (safetensors), the tokenizer
(``tokenizer.json``, ``vocab.json``/``merges.txt``, ``tokenizer_config.json``), a chat template and
``preprocessor_config.json``.

- ``qwen2_vl``: the hub's flat Qwen2-VL config (tests/tiny/hpsv3.py), weights in the transformers-4.45
  key layout the hub files use (``visual.*``, ``model.layers.*``, ``lm_head.weight``) in one
  ``model.safetensors``, the chat template inside ``tokenizer_config.json`` (with Qwen2-VL's default
  system turn), the older ``min_pixels``/``max_pixels`` budget.
- ``qwen2_5_vl``: the same tokenizer, a nested config, windowed vision attention, ``chat_template.json``.
- ``qwen3_vl``: a nested Qwen3-VL config (interleaved M-RoPE, deepstack features from two vision
  layers, tied embeddings like the 4B model), weights as written by ``save_pretrained`` in several
  shards with ``model.safetensors.index.json``, ``chat_template.jinja`` (no default system turn), the
  newer ``size`` budget with Qwen3-VL-4B-Instruct's values (65536..16777216 pixels, patch 16, mean/std 0.5).

The tokenizer is tests/tiny/hpsv3.py's byte-level BPE with the Qwen2-VL special tokens appended: every
byte is one token, so "0", "1" and "2" are single tokens; "Yes" and "No" are added as single tokens too.
Weights are seeded random numbers scaled so the answer logits differ by a few units (the default 0.02
initialisation would give near-uniform answer probabilities, which would make equality checks weak).
"""

from __future__ import annotations

import json
from pathlib import Path

from tiny.hpsv3 import BPE_SIZE, CONFIG_VOCAB, SPECIALS, config_json, special_id, train_tokenizer

# Project-written chat templates in the shape of the Qwen-VL ones: content is a string or a list of
# {"type": "image"} / {"type": "text", "text": ...} parts; images render as the vision-start, image-pad and
# vision-end tokens. Qwen2-VL adds a default system turn; Qwen3-VL does not.
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)
QWEN3_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)

WORDS = ("Yes", "No")
TOKEN_IDS = {"image_token_id": special_id("<|image_pad|>"), "video_token_id": special_id("<|video_pad|>"),
             "vision_start_token_id": special_id("<|vision_start|>"),
             "vision_end_token_id": special_id("<|vision_end|>")}
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": CONFIG_VOCAB, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096,
        "bos_token_id": special_id("<|endoftext|>"), "eos_token_id": special_id("<|im_end|>")}
QWEN2_PREPROCESSOR = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True, "resample": 3,
    "rescale_factor": 0.00392156862745098, "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}
QWEN3_PREPROCESSOR = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True, "resample": 3,
    "rescale_factor": 0.00392156862745098, "image_processor_type": "Qwen2VLImageProcessorFast",
    "processor_class": "Qwen3VLProcessor",
}


def qwen2_5_vl_config() -> dict:
    return {"model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"], **TOKEN_IDS,
            "tie_word_embeddings": False,
            "text_config": {**TEXT, "model_type": "qwen2_5_vl_text", "rope_theta": 1000000.0,
                            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
            "vision_config": {"depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                              "out_hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2,
                              "temporal_patch_size": 2, "window_size": 56, "fullatt_block_indexes": [1, 3]}}


def qwen3_vl_config() -> dict:
    return {"model_type": "qwen3_vl", "architectures": ["Qwen3VLForConditionalGeneration"], **TOKEN_IDS,
            "tie_word_embeddings": True,
            "text_config": {**TEXT, "model_type": "qwen3_vl_text", "head_dim": 16, "tie_word_embeddings": True,
                            "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                             "mrope_interleaved": True}, "rope_theta": 5000000},
            "vision_config": {"model_type": "qwen3_vl", "depth": 3, "hidden_size": 32, "intermediate_size": 64,
                              "num_heads": 2, "out_hidden_size": 64, "patch_size": 16, "spatial_merge_size": 2,
                              "temporal_patch_size": 2, "num_position_embeddings": 64,
                              "deepstack_visual_indexes": [0, 1], "hidden_act": "gelu_pytorch_tanh"}}


def randomize(model, seed: int) -> None:
    """Seeded weights with unit-scale activations: fan-in scaled matrices, norms near 1, small embeddings."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                value = 0.05 * torch.randn(p.shape, generator=g)
            elif p.ndim == 1:  # norm weights
                value = 1 + 0.1 * torch.randn(p.shape, generator=g)
            elif "embed" in name or name == "lm_head.weight":  # logits of a few units, not saturated
                value = 0.25 * torch.randn(p.shape, generator=g)
            else:
                fan_in = p[0].numel()
                value = torch.randn(p.shape, generator=g) * fan_in ** -0.5
            p.copy_(value)


def model_class(model_type: str):
    import transformers

    return getattr(transformers, {"qwen2_vl": "Qwen2VLForConditionalGeneration",
                                  "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                                  "qwen3_vl": "Qwen3VLForConditionalGeneration"}[model_type])


def legacy_key(key: str) -> str:
    """transformers >= 4.52 key -> the 4.45 layout the hub's Qwen2-VL / Qwen2.5-VL files use."""
    return key.replace("model.visual.", "visual.", 1).replace("model.language_model.", "model.", 1)


def write_tokenizer(folder: Path, template: str, where: str) -> None:
    """Tokenizer files as on the hub; the chat template in ``tokenizer_config.json``, ``chat_template.json``
    or ``chat_template.jinja`` (``where``), or nowhere (``where="none"``)."""
    from tokenizers import AddedToken

    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    # the checklist answers as single tokens, as in Qwen's vocabulary (ids after the specials)
    tok.add_tokens([AddedToken(word, normalized=False) for word in WORDS])
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))
    config = {
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace", "model_max_length": 32768,
        "split_special_tokens": False, "clean_up_tokenization_spaces": False,
        "additional_special_tokens": SPECIALS[1:],
        "added_tokens_decoder": {str(BPE_SIZE + i): {"content": s, "lstrip": False, "normalized": False,
                                                     "rstrip": False, "single_word": False, "special": s in SPECIALS}
                                 for i, s in enumerate(SPECIALS + list(WORDS))},
    }
    if where == "tokenizer_config":
        config["chat_template"] = template
    elif where == "json":
        (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    elif where == "jinja":
        (folder / "chat_template.jinja").write_text(template)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def build(folder: Path, model_type: str, *, seed: int = 0, template: str | None = None,
          template_where: str | None = None, config: dict | None = None, save_dtype: str = "float32") -> Path:
    """A complete model folder of ``model_type`` (qwen2_vl, qwen2_5_vl or qwen3_vl) at ``folder``.

    ``config`` replaces the tiny hub-format config (benchmarks build real sizes this way); ``save_dtype``
    is the dtype of the saved weights ("bfloat16" halves a large folder)."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cls = model_class(model_type)
    raw = config or {"qwen2_vl": lambda: {**config_json(), "tie_word_embeddings": False},
                     "qwen2_5_vl": qwen2_5_vl_config, "qwen3_vl": qwen3_vl_config}[model_type]()
    raw = {**raw, "torch_dtype": save_dtype}
    model = cls(cls.config_class.from_dict(raw)).float()
    randomize(model, seed)
    model.to(getattr(torch, save_dtype))
    if model_type == "qwen3_vl":
        # sharded with an index, as the 4B repo (small shards for the tiny model, so it has several)
        model.save_pretrained(str(folder), max_shard_size="100KB" if config is None else "2GB")
        # the config as the hub holds it (written by transformers 4.57), not in this transformers' format
        (folder / "config.json").write_text(json.dumps(raw, indent=2))
    else:
        # the hub's flat config.json and the 4.45 key layout of the published Qwen2(.5)-VL weights
        (folder / "config.json").write_text(json.dumps(raw, indent=2))
        state = {legacy_key(k): v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    template = template or (QWEN3_TEMPLATE if model_type == "qwen3_vl" else QWEN2_TEMPLATE)
    where = template_where or {"qwen2_vl": "tokenizer_config", "qwen2_5_vl": "json",
                               "qwen3_vl": "jinja"}[model_type]
    write_tokenizer(folder, template, where)
    preprocessor = QWEN3_PREPROCESSOR if model_type == "qwen3_vl" else QWEN2_PREPROCESSOR
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return folder
