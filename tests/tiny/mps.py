"""A tiny MPS checkpoint in the official layout: the whole model pickled with ``torch.save(model)``.

The official classes are stood in for by classes written here with the official module paths and names
(``trainer.models.clip_model.CLIPModel`` holding ``model``, an ``XCLIPModel`` that subclasses transformers'
``CLIPModel``, and ``cross_model``, a ``trainer.models.cross_modeling.Cross_model`` of ``Residual``-wrapped
``CrossAttention`` / ``ParallelTransformerBlock`` layers with their ``LayerNorm``, ``SwiGLU`` and
``RotaryEmbedding`` parts). They exist in ``sys.modules`` only while the file is written, so a reader
that tried to import them afterwards would fail. The weights are random and stored in fp16, as the
released file holds them.

Sizes: text 32 wide (2 layers, 2 heads), vision 40 wide (2 layers, 2 heads, patch 14 on 28-px images:
4 patches + the class token), projections 24; cross model dim 24, 2 layers, 3 heads of 8, feed-forward 48.
The tokenizer is the tiny CLIP BPE of ``tiny.hpsv2``.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

from tiny.hpsv2 import vocabulary, write_tokenizer

TEXT = {"width": 32, "layers": 2, "heads": 2, "mlp": 64, "context": 77}
VISION = {"width": 40, "layers": 2, "heads": 2, "mlp": 80, "patch": 14, "image": 28}
EMBED = 24
CROSS = {"layers": 2, "heads": 3, "dim_head": 8, "ff_mult": 2}
FILE = "MPS_overall_checkpoint.pth"
LOGIT_SCALE = math.log(1.5)  # a small scale keeps float32 rounding of the score near 1e-6


def clip_config():
    from transformers import CLIPConfig

    n = len(vocabulary())
    text = dict(vocab_size=n, hidden_size=TEXT["width"], intermediate_size=TEXT["mlp"],
                num_hidden_layers=TEXT["layers"], num_attention_heads=TEXT["heads"],
                max_position_embeddings=TEXT["context"], hidden_act="gelu", layer_norm_eps=1e-5,
                projection_dim=EMBED, bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=1)
    vision = dict(hidden_size=VISION["width"], intermediate_size=VISION["mlp"], num_hidden_layers=VISION["layers"],
                  num_attention_heads=VISION["heads"], image_size=VISION["image"], patch_size=VISION["patch"],
                  num_channels=3, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=EMBED)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=EMBED)


def official_modules() -> dict[str, types.ModuleType]:
    """Modules named like the official ones, holding stand-ins for the official classes (structure and
    parameter names only: nothing here runs a forward)."""
    import torch
    from torch import nn
    from transformers import CLIPModel as HFCLIPModel

    cross_mod = types.ModuleType("trainer.models.cross_modeling")
    clip_mod = types.ModuleType("trainer.models.clip_model")

    class LayerNorm(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))
            self.register_buffer("bias", torch.zeros(dim))

    class Residual(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

    class RotaryEmbedding(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    class SwiGLU(nn.Module):
        pass

    class ParallelTransformerBlock(nn.Module):
        def __init__(self, dim, dim_head, heads, ff_mult):
            super().__init__()
            self.norm = LayerNorm(dim)
            self.fused_dims = (dim_head * heads, dim_head, dim_head, dim * ff_mult * 2)
            self.heads, self.scale = heads, dim_head ** -0.5
            self.rotary_emb = RotaryEmbedding(dim_head)
            self.fused_attn_ff_proj = nn.Linear(dim, sum(self.fused_dims), bias=False)
            self.attn_out = nn.Linear(dim_head * heads, dim, bias=False)
            self.ff_out = nn.Sequential(SwiGLU(), nn.Linear(dim * ff_mult, dim, bias=False))
            # The rotary angle cache the official block keeps (non-persistent, but pickled with the model). Here
            # it holds the angles of positions 0, 3, 6, ... so a forward that uses it differs from one that
            # recomputes them: the official forward uses it when it covers the sequence (5 image tokens).
            freqs = 3 * torch.arange(5).float()[:, None] * self.rotary_emb.inv_freq
            self.register_buffer("pos_emb", torch.cat([freqs, freqs], -1), persistent=False)

    class CrossAttention(nn.Module):
        def __init__(self, dim, dim_head, heads, ff_mult):
            super().__init__()
            self.heads, self.scale = heads, dim_head ** -0.5
            self.norm = LayerNorm(dim)
            self.context_norm = nn.Identity()
            self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
            self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
            self.to_out = nn.Linear(dim_head * heads, dim, bias=False)
            self.ff = nn.Sequential(nn.Linear(dim, dim * ff_mult * 2, bias=False), SwiGLU(),
                                    nn.Linear(dim * ff_mult, dim, bias=False))

    class Cross_model(nn.Module):  # noqa: N801 - the official class name
        def __init__(self, dim, layer_num, dim_head, heads, ff_mult):
            super().__init__()
            self.layers = nn.ModuleList(
                nn.ModuleList([Residual(CrossAttention(dim, dim_head, heads, ff_mult)),
                               Residual(ParallelTransformerBlock(dim, dim_head, heads, ff_mult))])
                for _ in range(layer_num))

    class XCLIPModel(HFCLIPModel):
        pass

    class CLIPModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = XCLIPModel(clip_config())
            self.cross_model = Cross_model(EMBED, CROSS["layers"], CROSS["dim_head"], CROSS["heads"],
                                           CROSS["ff_mult"])

    for module, classes in ((cross_mod, (LayerNorm, Residual, RotaryEmbedding, SwiGLU, ParallelTransformerBlock,
                                         CrossAttention, Cross_model)),
                            (clip_mod, (XCLIPModel, CLIPModel))):
        for cls in classes:
            cls.__module__, cls.__qualname__ = module.__name__, cls.__name__
            setattr(module, cls.__name__, cls)
    return {"trainer": types.ModuleType("trainer"), "trainer.models": types.ModuleType("trainer.models"),
            cross_mod.__name__: cross_mod, clip_mod.__name__: clip_mod}


def official_model(seed: int = 0):
    """The official module tree with random weights (norm scales near 1, zero norm biases), in fp16."""
    import torch

    modules = official_modules()
    model = modules["trainer.models.clip_model"].CLIPModel()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "model.logit_scale":
                p.fill_(LOGIT_SCALE)
            elif p.ndim == 1 and "norm" in name and name.endswith("weight"):  # every LayerNorm scale
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
    return modules, model.half()


def save_pickled(model, modules: dict[str, types.ModuleType], path: Path) -> None:
    """``torch.save(model)`` with the official module paths importable only for the duration."""
    import torch

    before = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        torch.save(model, str(path))
    finally:
        for name, old in before.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def write_official(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    modules, model = official_model(seed)
    save_pickled(model, modules, folder / FILE)
    return folder / FILE


def build(tmp_path: Path) -> dict:
    folder = tmp_path / "mps-official"
    write_official(folder)
    write_tokenizer(folder)
    return {"weights": str(folder), "allow_pickle": True}


BUILDERS = {"mps": build}
