"""Tiny BLIP-family models in the official layouts: ImageReward's pickled state dict + med_config.json +
a BERT vocab.txt, and a transformers BlipForImageTextRetrieval folder with its tokenizer and
preprocessor files.

ImageReward is written key by key from the official module tree (``blip.visual_encoder.*``,
``blip.text_encoder.*``, ``blip.vision_proj/text_proj``, ``mlp.layers.{0,2,4,6,7}``), not through the
scorer's code. Its ViT is tiny: width 128 (two 64-wide heads, the width/64 rule of BLIP's ViTs),
patch 16 on 32-px images (2x2 patches + class token); text width 32, 2 layers.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["a", "an", "the", "photo", "painting", "of", "cat", "dog", "blurry", "dark", "bright", "very", "and",
         "in", "on", "with", "red", "blue", "sky", "grass", "ugly", "noisy", "image", "##s", "##y", ",", ".",
         "[", "]", "enc"]
VOCAB = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS

IR_VIT = {"width": 128, "depth": 2, "patch": 16, "image": 32, "mlp": 256}
IR_TEXT = {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2, "intermediate_size": 64,
           "max_position_embeddings": 40}
IR_MLP = [32, 48, 16, 8, 4, 1]  # official: 768, 1024, 128, 64, 16, 1
IR_PROJ = 16  # vision_proj / text_proj width (official 256; unused by the score)


def write_vocab(folder: Path) -> Path:
    path = folder / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return path


def imagereward_state(seed: int = 0) -> dict:
    """A random state dict with the official ImageReward key names and layout."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix, width, state):
        state[prefix + ".weight"] = 1 + rnd(width, scale=0.1)
        state[prefix + ".bias"] = rnd(width, scale=0.1)

    def linear(prefix, fan_in, fan_out, state, scale=None):
        state[prefix + ".weight"] = rnd(fan_out, fan_in, scale=scale or fan_in ** -0.5)
        state[prefix + ".bias"] = rnd(fan_out, scale=0.1)

    s: dict = {}
    d, p = IR_VIT["width"], IR_VIT["patch"]
    grid = IR_VIT["image"] // p
    v = "blip.visual_encoder."
    s[v + "cls_token"] = rnd(1, 1, d)
    s[v + "pos_embed"] = rnd(1, grid * grid + 1, d)
    s[v + "patch_embed.proj.weight"] = rnd(d, 3, p, p, scale=(3 * p * p) ** -0.5)
    s[v + "patch_embed.proj.bias"] = rnd(d, scale=0.1)
    for i in range(IR_VIT["depth"]):
        b = f"{v}blocks.{i}."
        norm(b + "norm1", d, s)
        linear(b + "attn.qkv", d, 3 * d, s)
        linear(b + "attn.proj", d, d, s)
        norm(b + "norm2", d, s)
        linear(b + "mlp.fc1", d, IR_VIT["mlp"], s)
        linear(b + "mlp.fc2", IR_VIT["mlp"], d, s)
    norm(v + "norm", d, s)

    h, inter = IR_TEXT["hidden_size"], IR_TEXT["intermediate_size"]
    t = "blip.text_encoder."
    s[t + "embeddings.position_ids"] = torch.arange(IR_TEXT["max_position_embeddings"]).expand(1, -1).clone()
    s[t + "embeddings.word_embeddings.weight"] = rnd(len(VOCAB) + 2, h, scale=1.0)  # + [DEC], [ENC]
    s[t + "embeddings.position_embeddings.weight"] = rnd(IR_TEXT["max_position_embeddings"], h, scale=0.5)
    norm(t + "embeddings.LayerNorm", h, s)
    for i in range(IR_TEXT["num_hidden_layers"]):
        layer = f"{t}encoder.layer.{i}."
        for part, kv in (("attention", h), ("crossattention", d)):
            linear(layer + part + ".self.query", h, h, s)
            linear(layer + part + ".self.key", kv, h, s)
            linear(layer + part + ".self.value", kv, h, s)
            linear(layer + part + ".output.dense", h, h, s)
            norm(layer + part + ".output.LayerNorm", h, s)
        linear(layer + "intermediate.dense", h, inter, s)
        linear(layer + "output.dense", inter, h, s)
        norm(layer + "output.LayerNorm", h, s)
    linear("blip.vision_proj", d, IR_PROJ, s)
    linear("blip.text_proj", h, IR_PROJ, s)
    for index, (a, b) in zip((0, 2, 4, 6, 7), zip(IR_MLP[:-1], IR_MLP[1:])):
        linear(f"mlp.layers.{index}", a, b, s)
    return s


def imagereward_med_config() -> dict:
    # The official file says encoder_width 768 although BLIP overrides it with the ViT width (1024);
    # a wrong value here checks that the override is reproduced.
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "model_type": "bert",
            "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(VOCAB) + 2, "encoder_width": 48,
            "add_cross_attention": True, **IR_TEXT}


def build_imagereward(tmp_path: Path) -> dict:
    import torch

    folder = Path(tmp_path) / "imagereward"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(imagereward_state(), folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(imagereward_med_config(), indent=2))
    write_vocab(folder)
    return {"weights": str(folder), "allow_pickle": True}


ITM_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "max_position_embeddings": 24, "vocab_size": len(VOCAB) + 2, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "pad_token_id": 0, "bos_token_id": len(VOCAB),
            "sep_token_id": VOCAB.index("[SEP]")}
ITM_VISION = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 16}
ITM_MAX_TOKENS = 12  # tokenizer_config model_max_length (the real one: 512)


def build_blip_itm(tmp_path: Path) -> dict:
    import torch
    from transformers import BlipConfig, BlipForImageTextRetrieval

    folder = Path(tmp_path) / "blip-itm"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = BlipConfig(text_config=ITM_TEXT, vision_config=ITM_VISION, image_text_hidden_size=16)
    model = BlipForImageTextRetrieval(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger than the default init, so scores differ visibly between inputs
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder)
    write_vocab(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "cls_token": "[CLS]", "do_basic_tokenize": True, "do_lower_case": True, "mask_token": "[MASK]",
        "model_max_length": ITM_MAX_TOKENS, "never_split": None, "pad_token": "[PAD]",
        "processor_class": "BlipProcessor", "sep_token": "[SEP]", "strip_accents": None,
        "tokenize_chinese_chars": True, "tokenizer_class": "BertTokenizer", "unk_token": "[UNK]"}, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "BlipImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711],
        "processor_class": "BlipProcessor", "size": ITM_VISION["image_size"]}, indent=2))
    return {"weights": str(folder)}


BUILDERS = {"imagereward": build_imagereward, "blip-itm": build_blip_itm}
