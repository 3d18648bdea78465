"""Tiny random CLIP-family checkpoints in the hub layouts: `clip`, `pickscore`, `laion-aesthetic`.

A CLIP folder is what transformers-format CLIP repos hold: config.json (text_config / vision_config /
projection_dim), model.safetensors (or pytorch_model.bin) with CLIPModel's state-dict keys, vocab.json +
merges.txt of a byte-level BPE with ``</w>`` word ends and the two special tokens last, and an old-style
preprocessor_config.json (int size / crop_size, resample 3). The aesthetic head is a pickled state dict
with keys layers.{0,2,4,6,7}.{weight,bias}, like sac+logos+ava1-l14-linearMSE.pth.
"""

from __future__ import annotations

import json
from pathlib import Path

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_SIZE = 32
HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
# Words the tiny BPE learns whole; anything else falls apart into byte tokens.
WORDS = ["a", "the", "photo", "of", "cat", "dog", "blurry", "dark", "grainy", "washed", "out", "colors",
         "empty", "background", "harsh", "light", "painting", "red", "sky"]


def byte_symbols() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each byte 0..255, in byte order."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def tokenizer_files() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) in CLIP's order: byte symbols, the same with </w>, merge results, then specials.

    The first 256 entries follow CLIP's own order (printable bytes first), which is what matters for the
    ids; merges grow each word left to right, its last symbol carrying </w>.
    """
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    symbols = byte_symbols()
    base = [symbols[b] for b in keep] + [symbols[b] for b in range(256) if b not in keep]
    tokens = base + [s + "</w>" for s in base]
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        current = parts[0]
        for nxt in parts[1:]:
            pair = (current, nxt)
            current += nxt
            if pair not in merges:
                merges.append(pair)
                if current not in tokens:
                    tokens.append(current)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(folder: Path) -> None:
    vocab, merges = tokenizer_files()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")


def write_preprocessor(folder: Path, *, mean=OPENAI_MEAN, std=OPENAI_STD, size: int = IMAGE_SIZE) -> None:
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(mean), "image_std": list(std),
        "resample": 3, "size": size}, indent=2))


def clip_config(*, act: str = "quick_gelu", legacy_eos: bool = True, logit_scale: float = 2.6592) -> dict:
    vocab, _ = tokenizer_files()
    eos = 2 if legacy_eos else vocab["<|endoftext|>"]  # 2: the pre-2023 configs, pooled at the highest id
    bos = 0 if legacy_eos else vocab["<|startoftext|>"]
    return {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16,
        "logit_scale_init_value": logit_scale, "initializer_factor": 1.0,
        "text_config": {"model_type": "clip_text_model", "hidden_size": 32, "intermediate_size": 64,
                        "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 77,
                        "vocab_size": len(vocab), "hidden_act": act, "bos_token_id": bos, "eos_token_id": eos,
                        "pad_token_id": 1, "projection_dim": 16},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                          "num_attention_heads": 4, "num_hidden_layers": 2, "image_size": IMAGE_SIZE,
                          "patch_size": 8, "hidden_act": act, "projection_dim": 16},
    }


def write_clip(folder: Path, *, seed: int, config: dict | None = None, pickle: bool = False,
               position_ids: bool = True) -> Path:
    """config.json + model weights of a random tiny CLIPModel; returns the folder."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or clip_config(), indent=2))
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig.from_json_file(str(folder / "config.json")))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if position_ids:  # checkpoints written before these buffers became non-persistent still carry them
        state["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
        state["vision_model.embeddings.position_ids"] = torch.arange((IMAGE_SIZE // 8) ** 2 + 1).unsqueeze(0)
    if pickle:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def build_clip(tmp_path: Path, **kw) -> dict:
    folder = write_clip(Path(tmp_path) / "clip-vit-tiny", seed=0, **kw)
    write_tokenizer(folder)
    write_preprocessor(folder)
    return {"weights": str(folder)}


def build_pickscore(tmp_path: Path) -> dict:
    model = write_clip(Path(tmp_path) / "PickScore_tiny", seed=1, position_ids=False,
                       config=clip_config(act="gelu", legacy_eos=False, logit_scale=4.1))
    processor = Path(tmp_path) / "CLIP-ViT-H-14-tiny"
    processor.mkdir(parents=True, exist_ok=True)
    write_tokenizer(processor)
    write_preprocessor(processor)
    return {"weights": str(model), "processor_weights": str(processor)}


def write_head(folder: Path, *, seed: int = 2, width: int = 16) -> Path:
    """A random improved-aesthetic-predictor head, pickled like the official .pth."""
    import torch
    from torch import nn

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    layers = nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                           nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
    with torch.no_grad():  # unit-gain layers, so the score moves with the image; centred near 5
        for i in (0, 2, 4, 6, 7):
            layers[i].weight.normal_(0.0, layers[i].in_features ** -0.5)
            layers[i].bias.normal_(0.0, 0.1)
        layers[7].weight.mul_(4.0)
        layers[7].bias.fill_(5.0)
    state = {f"layers.{k}": v for k, v in layers.state_dict().items()}
    torch.save(state, folder / HEAD_FILE)
    return folder / HEAD_FILE


def build_laion_aesthetic(tmp_path: Path) -> dict:
    clip = write_clip(Path(tmp_path) / "clip-vit-tiny-backbone", seed=0)
    head = write_head(Path(tmp_path) / "improved-aesthetic-predictor")
    return {"weights": str(head.parent), "clip_weights": str(clip), "allow_pickle": True}


BUILDERS = {"clip": build_clip, "pickscore": build_pickscore, "laion-aesthetic": build_laion_aesthetic}
