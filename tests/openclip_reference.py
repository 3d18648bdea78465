"""An independent open_clip-layout CLIP forward in plain float64 torch (the HPS v1 and HPSv2 tests' reference).

It reads the raw state dict as the official .pt files hold it (``visual.transformer.resblocks.N...``,
``token_embedding``, ...) and uses nothing from the package: attention, MLP, class-token pooling through
ln_post, end-token pooling, projections and L2 normalisation are written out here. ``act`` is the MLP
activation: ``F.gelu`` for open_clip's ViT-H-14, ``quick_gelu`` for OpenAI CLIP. Both test files also take
the OpenAI normalisation constants and their seeded noise images from here.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from PIL import Image

F = torch.nn.functional
# OpenAI CLIP's normalisation, which open_clip's and OpenAI's transforms both apply, in float64.
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073], dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711], dtype=torch.float64).view(1, 3, 1, 1)


def image(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Seeded noise of ``w`` x ``h``, in ``mode``: the test images."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def quick_gelu(a):
    return a * torch.sigmoid(1.702 * a)  # OpenAI CLIP's activation


def load_official(path) -> dict:
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v.double() for k, v in sd.items()}


def tower(sd: dict, x, prefix: str, layers: int, heads: int, act: Callable, mask=None):
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    n, length, d = x.shape
    for i in range(layers):
        p = f"{prefix}{i}."
        q, k, v = (ln(x, p + "ln_1") @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).split(d, -1)
        q, k, v = (t.reshape(n, length, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
        if mask is not None:
            logits = logits + mask
        att = (logits.softmax(-1) @ v).transpose(1, 2).reshape(n, length, d)
        x = x + att @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        h = act(ln(x, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"])
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    return x


def image_features(sd: dict, pixels, vision: dict, act: Callable):
    """Normalised image embeddings; ``vision`` holds patch, layers, width and head_width."""
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=vision["patch"]).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = F.layer_norm(x, x.shape[-1:], sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"], eps=1e-5)
    x = tower(sd, x, "visual.transformer.resblocks.", vision["layers"], vision["width"] // vision["head_width"], act)
    x = F.layer_norm(x[:, 0], x.shape[-1:], sd["visual.ln_post.weight"], sd["visual.ln_post.bias"], eps=1e-5)
    return F.normalize(x @ sd["visual.proj"], dim=-1)


def text_features(sd: dict, token_lists: list[list[int]], text: dict, act: Callable):
    """Normalised prompt embeddings from token ids, zero-padded to all ``context`` positions as the official
    tokenizers do; ``text`` holds context, layers, width and head_width."""
    ids = torch.zeros(len(token_lists), text["context"], dtype=torch.long)
    for i, toks in enumerate(token_lists):
        ids[i, :len(toks)] = torch.tensor(toks)
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    causal = torch.full((text["context"], text["context"]), float("-inf"), dtype=torch.float64).triu(1)
    x = tower(sd, x, "transformer.resblocks.", text["layers"], text["width"] // text["head_width"], act, causal)
    x = F.layer_norm(x, x.shape[-1:], sd["ln_final.weight"], sd["ln_final.bias"], eps=1e-5)
    x = x[torch.arange(len(token_lists)), ids.argmax(dim=-1)] @ sd["text_projection"]
    return F.normalize(x, dim=-1)
