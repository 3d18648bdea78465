"""A tiny HPS v1 checkpoint in the official layout: ``torch.save({"state_dict": sd}, "hpc.pt")`` where ``sd``
has the key names of the model OpenAI's ``clip.load("ViT-L/14")`` builds (visual.*, transformer.*,
token_embedding, positional_embedding, ln_final, text_projection, logit_scale; no prefix, no mask buffer),
random weights, small shapes. The tokenizer files are the tiny CLIP BPE of ``tiny.hpsv2``.

Vision: width 128 (2 heads of 64, as every OpenAI ViT), 2 blocks, patch 14 on 42-px images (3 x 3 grid).
Text: width 128 (2 heads of 64), 2 blocks, context 77. Projection 32. The MLP biases are large enough that
QuickGELU and exact GELU give clearly different scores.
"""

from __future__ import annotations

import math
from pathlib import Path

from tiny.hpsv2 import vocabulary, write_tokenizer

VISION = {"width": 128, "layers": 2, "patch": 14, "image": 42, "head_width": 64}
TEXT = {"width": 128, "layers": 2, "context": 77, "head_width": 64}
EMBED = 32
FILE = "hpc.pt"


def clip_state_dict(seed: int = 0) -> dict:
    """Random weights under OpenAI CLIP's state-dict key names."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0, mean=0.0):
        return (torch.randn(*shape, generator=g) * std + mean).float()

    def block(prefix: str, width: int) -> dict:
        return {
            f"{prefix}attn.in_proj_weight": rnd(3 * width, width, std=width ** -0.5),
            f"{prefix}attn.in_proj_bias": rnd(3 * width, std=0.1),
            f"{prefix}attn.out_proj.weight": rnd(width, width, std=width ** -0.5),
            f"{prefix}attn.out_proj.bias": rnd(width, std=0.1),
            f"{prefix}ln_1.weight": rnd(width, std=0.1, mean=1.0), f"{prefix}ln_1.bias": rnd(width, std=0.1),
            f"{prefix}mlp.c_fc.weight": rnd(4 * width, width, std=width ** -0.5),
            f"{prefix}mlp.c_fc.bias": rnd(4 * width, std=0.5),
            f"{prefix}mlp.c_proj.weight": rnd(width, 4 * width, std=(4 * width) ** -0.5),
            f"{prefix}mlp.c_proj.bias": rnd(width, std=0.1),
            f"{prefix}ln_2.weight": rnd(width, std=0.1, mean=1.0), f"{prefix}ln_2.bias": rnd(width, std=0.1),
        }

    vw, tw = VISION["width"], TEXT["width"]
    grid = VISION["image"] // VISION["patch"]
    sd = {
        "positional_embedding": rnd(TEXT["context"], tw, std=0.5),
        "text_projection": rnd(tw, EMBED, std=tw ** -0.5),
        "logit_scale": torch.tensor(math.log(100.0)),
        "visual.class_embedding": rnd(vw, std=0.5),
        "visual.positional_embedding": rnd(grid * grid + 1, vw, std=0.5),
        "visual.proj": rnd(vw, EMBED, std=vw ** -0.5),
        "visual.conv1.weight": rnd(vw, 3, VISION["patch"], VISION["patch"], std=0.05),
        "visual.ln_pre.weight": rnd(vw, std=0.1, mean=1.0), "visual.ln_pre.bias": rnd(vw, std=0.1),
    }
    for i in range(VISION["layers"]):
        sd.update(block(f"visual.transformer.resblocks.{i}.", vw))
    sd.update({"visual.ln_post.weight": rnd(vw, std=0.1, mean=1.0), "visual.ln_post.bias": rnd(vw, std=0.1),
               "token_embedding.weight": rnd(len(vocabulary()), tw, std=0.5)})
    for i in range(TEXT["layers"]):
        sd.update(block(f"transformer.resblocks.{i}.", tw))
    sd.update({"ln_final.weight": rnd(tw, std=0.1, mean=1.0), "ln_final.bias": rnd(tw, std=0.1)})
    return sd


def write_checkpoint(folder: Path, seed: int = 0) -> Path:
    """The official container: a pickle holding {"state_dict": OpenAI CLIP state dict}."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE
    torch.save({"state_dict": clip_state_dict(seed)}, path)
    return path


def build(tmp_path: Path) -> dict:
    """hpc.pt in one folder, the tokenizer files in another (the ``tokenizer`` option)."""
    weights, tokenizer = Path(tmp_path) / "hps-official", Path(tmp_path) / "hps-tokenizer"
    write_checkpoint(weights)
    write_tokenizer(tokenizer)
    return {"weights": str(weights), "allow_pickle": True, "tokenizer": str(tokenizer)}


BUILDERS = {"hps": build}
