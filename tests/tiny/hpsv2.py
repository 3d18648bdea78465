"""Tiny HPSv2 checkpoints in the official layout: ``torch.save({"state_dict": sd}, "HPS_v2_compressed.pt")``
with an open_clip ViT CLIP state dict (same key names as ViT-H-14, random weights, small shapes), next
to a tiny CLIP BPE tokenizer (vocab.json + merges.txt in the Hugging Face CLIP format: 256 byte symbols,
the same 256 with ``</w>``, one entry per merge, then the start and end tokens as the last two ids).

Vision: width 160 with 80-wide heads (2 heads, as ViT-H's head width), 2 blocks, patch 14 on 42-px
images (3 x 3 grid). Text: width 128 (2 heads of 64), 2 blocks, context 77. Projection 48.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

VISION = {"width": 160, "layers": 2, "patch": 14, "image": 42, "head_width": 80}
TEXT = {"width": 128, "layers": 2, "context": 77, "head_width": 64}
EMBED = 48
FILES = {"hpsv2": "HPS_v2_compressed.pt", "hpsv2.1": "HPS_v2.1_compressed.pt"}
SEEDS = {"hpsv2": 0, "hpsv2.1": 1}

MERGES = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("r", "e"), ("re", "d</w>"),
          ("p", "h"), ("ph", "o"), ("pho", "t"), ("phot", "o</w>"), ("o", "f</w>"), ("b", "l"), ("bl", "u"),
          ("blu", "r"), ("blur", "r"), ("blurr", "y</w>"), ("a", "n</w>")]


def byte_alphabet() -> list[str]:
    """The 256 CLIP byte symbols in vocabulary order: printable Latin-1 first, the rest from U+0100 up."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def vocabulary() -> dict[str, int]:
    alphabet = byte_alphabet()
    symbols = alphabet + [s + "</w>" for s in alphabet] + [a + b for a, b in MERGES]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(symbols)}


def write_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocabulary(), ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in MERGES) + "\n",
                                       encoding="utf-8")


def openclip_state_dict(seed: int) -> dict:
    """Random weights under open_clip's CLIP key names (visual.*, transformer.*, token_embedding, ...)."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0, mean=0.0):
        return (torch.randn(*shape, generator=g) * std + mean).float()

    def block(prefix: str, width: int) -> dict:
        return {
            f"{prefix}ln_1.weight": rnd(width, std=0.1, mean=1.0), f"{prefix}ln_1.bias": rnd(width, std=0.1),
            f"{prefix}attn.in_proj_weight": rnd(3 * width, width, std=width ** -0.5),
            f"{prefix}attn.in_proj_bias": rnd(3 * width, std=0.1),
            f"{prefix}attn.out_proj.weight": rnd(width, width, std=width ** -0.5),
            f"{prefix}attn.out_proj.bias": rnd(width, std=0.1),
            f"{prefix}ln_2.weight": rnd(width, std=0.1, mean=1.0), f"{prefix}ln_2.bias": rnd(width, std=0.1),
            f"{prefix}mlp.c_fc.weight": rnd(4 * width, width, std=width ** -0.5),
            f"{prefix}mlp.c_fc.bias": rnd(4 * width, std=0.1),
            f"{prefix}mlp.c_proj.weight": rnd(width, 4 * width, std=(4 * width) ** -0.5),
            f"{prefix}mlp.c_proj.bias": rnd(width, std=0.1),
        }

    vw, tw = VISION["width"], TEXT["width"]
    grid = VISION["image"] // VISION["patch"]
    sd = {
        "visual.class_embedding": rnd(vw, std=0.5),
        "visual.positional_embedding": rnd(grid * grid + 1, vw, std=0.5),
        "visual.proj": rnd(vw, EMBED, std=vw ** -0.5),
        "visual.conv1.weight": rnd(vw, 3, VISION["patch"], VISION["patch"], std=0.05),
        "visual.ln_pre.weight": rnd(vw, std=0.1, mean=1.0), "visual.ln_pre.bias": rnd(vw, std=0.1),
        "visual.ln_post.weight": rnd(vw, std=0.1, mean=1.0), "visual.ln_post.bias": rnd(vw, std=0.1),
        "positional_embedding": rnd(TEXT["context"], tw, std=0.5),
        "text_projection": rnd(tw, EMBED, std=tw ** -0.5),
        "logit_scale": torch.tensor(math.log(100.0)),
        "token_embedding.weight": rnd(len(vocabulary()), tw, std=0.5),
        "ln_final.weight": rnd(tw, std=0.1, mean=1.0), "ln_final.bias": rnd(tw, std=0.1),
    }
    for i in range(VISION["layers"]):
        sd.update(block(f"visual.transformer.resblocks.{i}.", vw))
    for i in range(TEXT["layers"]):
        sd.update(block(f"transformer.resblocks.{i}.", tw))
    return sd


def write_checkpoint(folder: Path, variant: str = "hpsv2") -> Path:
    """The official container: a pickle holding {"state_dict": open_clip state dict}."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILES[variant]
    torch.save({"state_dict": openclip_state_dict(SEEDS[variant])}, path)
    return path


def _builder(variant: str):
    def build(tmp_path: Path) -> dict:
        folder = Path(tmp_path) / f"{variant}-official"
        write_checkpoint(folder, variant)
        write_tokenizer(folder)
        return {"weights": str(folder), "allow_pickle": True}

    return build


BUILDERS = {variant: _builder(variant) for variant in FILES}
