"""Tiny random diffusers pipelines in the hub layout: FLUX.1, SD3 and SDXL.

Each builder writes what a diffusers repo holds (model_index.json, one subfolder per component with its
config and safetensors weights, tokenizer files, scheduler config) through the pipeline's own
``save_pretrained``, so the backend loads them the way it loads a downloaded model. Widths are a few
dozen and every tower has one or two layers: a 32x32 image in 2 steps takes milliseconds on a CPU.

CLIP tokenizers are the tiny byte-level BPE of ``tiny/clip.py``; the T5 tokenizer is a small unigram
vocabulary (T5's real one is a sentencepiece model, which this environment cannot read).
"""

from __future__ import annotations

import json
from pathlib import Path

from .clip import WORDS, tokenizer_files, write_tokenizer

SIZE = 32  # pixels; every test image is SIZE x SIZE
T5_LENGTH = 16  # max_sequence_length the tests call with (the real models use 256/512)


def seeded(seed: int):
    import torch

    torch.manual_seed(seed)


def clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def t5_tokenizer():
    from transformers import T5TokenizerFast

    # pad, eos, unk first: the ids T5's config names; whole words, then single letters as a fallback
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in WORDS]
    pieces += [(c, -5.0) for c in "\u2581abcdefghijklmnopqrstuvwxyz,."]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def clip_text_config():
    from transformers import CLIPTextConfig

    vocab, _ = tokenizer_files()
    return CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, max_position_embeddings=77, hidden_act="gelu", projection_dim=32,
                          bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=1)


def t5_encoder(d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    vocab_size = len(t5_tokenizer())
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                   eos_token_id=1, decoder_start_token_id=0))


def build_flux(folder: Path, *, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    seeded(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
    vae = AutoencoderKL(sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(4,),
                        layers_per_block=1, latent_channels=1, norm_num_groups=1, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                        text_encoder=CLIPTextModel(clip_text_config()),
                        tokenizer=clip_tokenizer(folder / "_tok"), text_encoder_2=t5_encoder(),
                        tokenizer_2=t5_tokenizer(), transformer=transformer)
    return save(pipe, folder)


def build_sd3(folder: Path, *, seed: int = 0) -> Path:
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextModelWithProjection

    seeded(seed)
    transformer = SD3Transformer2DModel(sample_size=SIZE, patch_size=1, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
    vae = AutoencoderKL(sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(4,),
                        layers_per_block=1, latent_channels=4, norm_num_groups=1, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    tok = clip_tokenizer(folder / "_tok")
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
        text_encoder=CLIPTextModelWithProjection(clip_text_config()), tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(clip_text_config()), tokenizer_2=tok,
        text_encoder_3=t5_encoder(), tokenizer_3=t5_tokenizer())
    return save(pipe, folder)


def build_sdxl(folder: Path, *, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    seeded(seed)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=SIZE // 2,
                                in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
                                projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64,
                                norm_num_groups=1)
    vae = AutoencoderKL(sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(4, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, latent_channels=4, norm_num_groups=1)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    tok = clip_tokenizer(folder / "_tok")
    pipe = StableDiffusionXLPipeline(
        vae=vae, unet=unet, scheduler=scheduler, text_encoder=CLIPTextModel(clip_text_config()),
        tokenizer=tok, text_encoder_2=CLIPTextModelWithProjection(clip_text_config()),
        tokenizer_2=tok)
    return save(pipe, folder)


def save(pipe, folder: Path) -> Path:
    import shutil

    pipe.save_pretrained(str(folder), safe_serialization=True)
    shutil.rmtree(folder / "_tok", ignore_errors=True)
    return folder


PIPELINE_BUILDERS = {"flux": build_flux, "sd3": build_sd3, "sdxl": build_sdxl}
PIPELINES = {"flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline", "sdxl": "StableDiffusionXLPipeline"}


def denoiser(folder: Path):
    """The pipeline folder's transformer (or UNet) and its component name."""
    import diffusers

    index = json.loads((folder / "model_index.json").read_text())
    component = "transformer" if "transformer" in index else "unet"
    return component, getattr(diffusers, index[component][1]).from_pretrained(str(folder / component))


def write_lora(pipeline: Path, out: Path, *, kind: str, seed: int = 5, rank: int = 4) -> Path:
    """A random LoRA on the attention projections of the pipeline's denoiser, in the diffusers LoRA format
    (written by the pipeline class's ``save_lora_weights``); returns the weights file.

    peft starts B at zero (a LoRA that changes nothing): here both A and B are random, so it does change
    the output, and its effect scales with the adapter weight."""
    import diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    component, model = denoiser(pipeline)
    seeded(seed)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = get_peft_model_state_dict(model)
    getattr(diffusers, PIPELINES[kind]).save_lora_weights(str(out), **{f"{component}_lora_layers": layers})
    return out / "pytorch_lora_weights.safetensors"


def write_finetune(pipeline: Path, out: Path, *, seed: int = 7, scale: float = 0.05, folder: bool = False) -> Path:
    """The pipeline's denoiser with every weight nudged by random noise: a stand-in for a fine-tuned checkpoint
    (DanceFlux, PrefGRPO-Flux). Saved as one safetensors file in the diffusers key layout, or with
    ``folder`` as a diffusers model folder (config.json + weights)."""
    import torch
    from safetensors.torch import save_file

    _, model = denoiser(pipeline)
    gen = torch.Generator().manual_seed(seed)
    state = {k: (v + scale * torch.randn(v.shape, generator=gen) * v.float().std().nan_to_num(1.0)).contiguous()
             if v.is_floating_point() and v.numel() > 1 else v.contiguous() for k, v in model.state_dict().items()}
    if folder:
        model.load_state_dict(state)
        model.save_pretrained(str(out))
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    return out


def write_peft_lora(pipeline: Path, out: Path, *, seed: int = 6, rank: int = 4, alpha: int = 8) -> Path:
    """A random LoRA on the denoiser's attention projections as PEFT saves it (``get_peft_model`` +
    ``save_pretrained``: adapter_model.safetensors with keys ``base_model.model.*`` and adapter_config.json
    with lora_alpha and r), the format of the SD3.5M Flow-GRPO adapters; returns the weights file. Its scale
    alpha / r is 2, so an adapter loaded without it would have half the effect."""
    from peft import LoraConfig, get_peft_model

    _, model = denoiser(pipeline)
    seeded(seed)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False,
                                                  target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    peft_model.save_pretrained(str(out))
    return out / "adapter_model.safetensors"
