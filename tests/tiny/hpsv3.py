"""A tiny HPSv3 in the official layouts: ``HPSv3.safetensors`` + a Qwen2-VL-7B-Instruct-style base folder.

The checkpoint is what the official training saves (``model.state_dict()`` of the transformers-4.45
``Qwen2VLRewardModelBT``): ``visual.*``, ``model.*`` (decoder), ``lm_head.weight`` and
``rm_head.{0,3,5}.*``; backbone tensors in bf16, the head in fp32, the embedding resized to the
tokenizer + ``<|Reward|>``. Key names and shapes come from transformers' own Qwen2VLForConditionalGeneration
(renamed to the 4.45 layout), values are seeded random numbers. The base folder holds a legacy (flat)
``config.json`` like the hub's, a byte-level BPE tokenizer trained here with Qwen2's pre-tokenizer and the
14 Qwen2-VL special tokens appended in the hub's order (``tokenizer.json`` + ``vocab.json``/``merges.txt`` +
``tokenizer_config.json``), and the hub's ``preprocessor_config.json`` values.

Tiny sizes: decoder width 64 (4 heads of 16, M-RoPE sections 2/3/3), 2 layers; vision width 32, 2 blocks,
14-px patches, 2x2 merge into 64; head 64 -> 1024 -> 16 -> 2 (official 3584 -> 1024 -> 16 -> 2).
"""

from __future__ import annotations

import json
from pathlib import Path

from aesthetic_audit.scorers.hpsv3 import INSTRUCTION, SUFFIX

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
            "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
BPE_SIZE = 768  # ids 0..767; the specials follow (768..781), <|Reward|> becomes 782
EMBED_ROWS = BPE_SIZE + len(SPECIALS) + 1  # resize_token_embeddings(len(tokenizer)) after adding <|Reward|>
CONFIG_VOCAB = 832  # config.json's vocab_size is larger than the tokenizer, as on the hub (152064)
HEAD = (1024, 16, 2)

# Training text: the official instruction (so the tiny BPE compresses it like Qwen's vocabulary does) and
# some prompt words.
CORPUS = [INSTRUCTION, SUFFIX, "a blurry dark photo of a red cat on the grass under a grey sky, very noisy, ugly "
          "colors, an oil painting of a dog, pixelated, empty, unsettling, rough sketch"]


def special_id(token: str) -> int:
    return BPE_SIZE + SPECIALS.index(token)


def config_json() -> dict:
    """The hub's flat Qwen2-VL config format (text fields at the top level), tiny sizes."""
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"], "attention_dropout": 0.0,
        "bos_token_id": special_id("<|endoftext|>"), "eos_token_id": special_id("<|im_end|>"),
        "vision_start_token_id": special_id("<|vision_start|>"), "vision_end_token_id": special_id("<|vision_end|>"),
        "vision_token_id": special_id("<|vision_pad|>"), "image_token_id": special_id("<|image_pad|>"),
        "video_token_id": special_id("<|video_pad|>"), "hidden_act": "silu", "hidden_size": 64,
        "initializer_range": 0.02, "intermediate_size": 128, "max_position_embeddings": 32768,
        "max_window_layers": 2, "model_type": "qwen2_vl", "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.41.2",
        "use_cache": True, "use_sliding_window": False,
        "vision_config": {"depth": 2, "embed_dim": 32, "mlp_ratio": 2, "num_heads": 2, "in_chans": 3,
                          "hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                          "temporal_patch_size": 2},
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vocab_size": CONFIG_VOCAB,
    }


PREPROCESSOR = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
}


def train_tokenizer():
    """Byte-level BPE with Qwen2's normaliser/pre-tokenizer, then the Qwen2-VL specials appended."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    assert tok.get_vocab_size() == BPE_SIZE, tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tok


def write_base(folder: Path) -> Path:
    """The base-model files HPSv3 reads from Qwen/Qwen2-VL-7B-Instruct (no weight shards)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_json(), indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    tok = train_tokenizer()
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))  # vocab.json + merges.txt, as on the hub
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace", "model_max_length": 32768,
        "split_special_tokens": False, "clean_up_tokenization_spaces": False,
        "additional_special_tokens": SPECIALS[1:],
        "added_tokens_decoder": {str(special_id(s)): {"content": s, "lstrip": False, "normalized": False,
                                                      "rstrip": False, "single_word": False, "special": True}
                                 for s in SPECIALS},
    }, indent=2))
    return folder


def legacy_state(seed: int = 0) -> dict:
    """Random tensors under the transformers-4.45 key names HPSv3.safetensors uses."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig.from_dict(config_json())
    config.text_config.vocab_size = EMBED_ROWS
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Qwen2VLForConditionalGeneration(config).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith(("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight", "layernorm.weight")):
            value = 1 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("bias"):
            value = 0.05 * torch.randn(shape, generator=g)
        elif "embed_tokens" in key or key == "lm_head.weight":
            value = torch.randn(shape, generator=g)
        else:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            value = torch.randn(shape, generator=g) * fan_in ** -0.5
        legacy = key.replace("model.visual.", "visual.", 1).replace("model.language_model.", "model.", 1)
        state[legacy] = value.to(torch.bfloat16)
    width = config.text_config.hidden_size
    for index, (fan_in, fan_out) in zip((0, 3, 5), zip((width,) + HEAD[:-1], HEAD)):
        state[f"rm_head.{index}.weight"] = torch.randn(fan_out, fan_in, generator=g) * 2 * fan_in ** -0.5
        state[f"rm_head.{index}.bias"] = 0.1 * torch.randn(fan_out, generator=g)
    return state


def write_checkpoint(folder: Path, state: dict | None = None, name: str = "HPSv3.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = legacy_state() if state is None else state
    path = folder / name
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        import torch

        torch.save(state, str(path))
    return path


def build(tmp_path: Path) -> dict:
    base = write_base(Path(tmp_path) / "Qwen2-VL-7B-Instruct")
    ckpt = write_checkpoint(Path(tmp_path) / "HPSv3")
    return {"weights": str(ckpt.parent), "base": str(base), "dtype": "fp32"}


BUILDERS = {"hpsv3": build}
