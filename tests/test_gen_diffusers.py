"""The diffusers generator on tiny random FLUX.1, SD3 and SDXL pipelines built by the tests (tiny/diffusion.py),
saved in the hub layout and loaded through ``model=<folder>`` (or a hub id in a Hugging Face cache the
test writes), as a user would."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import weakref

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from aesthetic_audit.errors import ConfigError  # noqa: E402
from aesthetic_audit.images.generators.base import (GenerationRequest, GenerationResult, Generator,  # noqa: E402
                                                     OutOfMemory, blank_reason)
from aesthetic_audit.images.generators.diffusers_t2i import DiffusersGenerator, Loaded  # noqa: E402
from aesthetic_audit.registry import get  # noqa: E402
from aesthetic_audit.scorers._weights import MissingWeightsError, WeightsError  # noqa: E402

from tiny.diffusion import (PIPELINE_BUILDERS, PIPELINES, SIZE, T5_LENGTH, write_finetune, write_lora,  # noqa: E402
                            write_peft_lora)

KINDS = list(PIPELINE_BUILDERS)
PROMPT = "a blurry photo of a cat"


def params(kind: str, steps: int = 2, **extra) -> dict:
    p = {"num_inference_steps": steps, "width": SIZE, "height": SIZE, **extra}
    if kind != "sdxl":
        p["max_sequence_length"] = T5_LENGTH  # the tiny T5 tokenizer's prompts are short
    return p


def req(kind: str, seed: int = 1, prompt: str = PROMPT, **kw) -> GenerationRequest:
    return GenerationRequest(prompt, seed=seed, params=kw.pop("params", None) or params(kind), **kw)


def pixels(result) -> np.ndarray:
    assert result.ok, result.error
    return np.asarray(result.image, dtype=np.float64)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Each family's pipeline folder, built once per session."""
    root = tmp_path_factory.mktemp("diffusion")
    return {kind: build(root / kind) for kind, build in PIPELINE_BUILDERS.items()}


@pytest.fixture(scope="session")
def loras(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {kind: write_lora(tiny[kind], root / kind, kind=kind) for kind in ("flux", "sdxl")}


def test_registered_and_light():
    """`ls generators` finds the backend; importing its module loads neither torch nor diffusers."""
    assert get("generators", "diffusers") is DiffusersGenerator
    code = ("import sys; import aesthetic_audit.images.generators.diffusers_t2i; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("kind", KINDS)
def test_family_loads_and_is_seeded(tiny, kind):
    """Each family loads from its folder through pipeline=auto; same seed -> the same bytes, another seed ->
    another image."""
    gen = DiffusersGenerator(model=str(tiny[kind]), batch_size=2)
    assert gen.identity()["pipeline"] == PIPELINES[kind]
    first = gen.generate([req(kind, seed=1), req(kind, seed=2)])
    again = gen.generate([req(kind, seed=1)])
    assert type(gen.loaded.pipe).__name__ == PIPELINES[kind]
    assert first[0].image.size == (SIZE, SIZE) and first[0].image.mode == "RGB"
    assert np.array_equal(pixels(first[0]), pixels(again[0]))
    assert mad(pixels(first[0]), pixels(first[1])) > 5  # seeds 1 and 2 start from different noise


@pytest.mark.parametrize("kind", KINDS)
def test_image_does_not_depend_on_batch(tiny, kind):
    """An image is the same alone, in a batch of 3 and in batches of 2 (3 requests -> 2 + 1). Batched matrix
    products round differently from single ones (~1e-7), which can flip a pixel by one level after the
    uint8 rounding; anything above that would be a seeding bug (another seed moves pixels by tens of levels)."""
    reqs = [req(kind, seed=s) for s in (11, 12, 13)]
    batch = DiffusersGenerator(model=str(tiny[kind]), batch_size=3).generate(reqs)
    pairs = DiffusersGenerator(model=str(tiny[kind]), batch_size=2).generate(reqs)
    alone = DiffusersGenerator(model=str(tiny[kind]), batch_size=1)
    for i, r in enumerate(reqs):
        single = pixels(alone.generate([r])[0])
        for other in (batch[i], pairs[i]):
            diff = np.abs(pixels(other) - single)
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_mixed_params_are_grouped(tiny):
    """Requests with different steps and negative prompts in one batch get what they get alone; a negative
    prompt with true CFG (Flux true_cfg_scale) changes the image."""
    kind = "flux"
    gen = DiffusersGenerator(model=str(tiny[kind]), batch_size=4)
    plain = req(kind, seed=3)
    more_steps = req(kind, seed=3, params=params(kind, steps=6))
    cfg = params(kind, true_cfg_scale=4.0)
    negative = req(kind, seed=3, params=cfg, negative_prompt="a sharp bright photo")
    no_negative = req(kind, seed=3, params=cfg)
    mixed = gen.generate([plain, more_steps, negative, no_negative])
    for r, got in zip([plain, more_steps, negative, no_negative], mixed):
        assert np.abs(pixels(got) - pixels(gen.generate([r])[0])).max() <= 1
    assert mad(pixels(mixed[0]), pixels(mixed[1])) > 0.3  # 6 steps are not 2
    assert mad(pixels(mixed[2]), pixels(mixed[3])) > 1  # the negative prompt is used


@pytest.mark.parametrize("kind", ["sd3", "sdxl"])
def test_negative_prompt_with_cfg(tiny, kind):
    cfg = params(kind, guidance_scale=5.0)
    gen = DiffusersGenerator(model=str(tiny[kind]), batch_size=2)
    a, b = gen.generate([req(kind, params=cfg), req(kind, params=cfg, negative_prompt="a dark red sky")])
    assert mad(pixels(a), pixels(b)) > 1


@pytest.mark.parametrize("kind", ["flux", "sdxl"])
def test_lora_scale(tiny, loras, kind, tmp_path):
    """The LoRA's effect grows with its scale, about linearly; scale 0 is the base model bit for bit, also
    while generators with the LoRA share the loaded pipeline (a scale sweep loads the model once)."""
    reqs = [req(kind, seed=s) for s in (1, 2)]
    alone = DiffusersGenerator(model=str(shutil.copytree(tiny[kind], tmp_path / kind)), batch_size=2)
    ref = [pixels(r) for r in alone.generate(reqs)]  # the base model on a pipeline of its own
    base = DiffusersGenerator(model=str(tiny[kind]), batch_size=2)
    gens = {s: DiffusersGenerator(model=str(tiny[kind]), lora=str(loras[kind].parent), lora_scale=s, batch_size=2)
            for s in (0, 0.5, 1.0)}
    for gen in [base, *gens.values()]:
        gen.load()  # loading the adapter switches it on: the base generator must switch it off again
    assert all(np.array_equal(pixels(r), b) for r, b in zip(base.generate(reqs), ref))
    out = {s: [pixels(r) for r in gens[s].generate(reqs)] for s in (1.0, 0.5, 0)}
    assert gens[1.0].loaded is gens[0].loaded is base.loaded
    effect = {s: np.mean([mad(o, b) for o, b in zip(out[s], ref)]) for s in out}
    assert all(np.array_equal(o, b) for o, b in zip(out[0], ref))
    assert 0 < effect[0.5] < effect[1.0]
    assert 0.3 < effect[0.5] / effect[1.0] < 0.7
    again = [pixels(r) for r in gens[0.5].generate(reqs)]  # after scale 0 and the base ran in between
    assert all(np.array_equal(a, b) for a, b in zip(again, out[0.5]))
    ident = gens[0.5].identity()["lora"]
    assert ident == {"sha256": hashlib.sha256(loras[kind].read_bytes()).hexdigest(), "scale": 0.5}


def gradient(size: int = SIZE) -> Image.Image:
    x = np.linspace(0, 255, size)
    rgb = np.stack([np.add.outer(x, x) / 2, np.add.outer(x, 255 - x) / 2, np.tile(x, (size, 1))], -1)
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.mark.parametrize("kind", ["flux", "sdxl"])
def test_img2img_strength(tiny, kind):
    """Strength 0 returns the input unchanged; the output moves away from the input as the strength grows.

    The tiny VAE is random, so no output resembles the input itself; "the input as this pipeline renders
    it" is the lightest possible edit (strength 0.05 of 20 steps: one step), and distances are taken to it."""
    init = gradient()
    gen = DiffusersGenerator(model=str(tiny[kind]), img2img=True, batch_size=8)
    steps = params(kind, steps=20)
    strengths = (0, 0.05, 0.5, 1.0)
    out = gen.generate([req(kind, params=steps, init_image=init, init_image_sha="g", strength=s) for s in strengths])
    assert np.array_equal(pixels(out[0]), np.asarray(init, dtype=np.float64))
    lightest = pixels(out[1])
    assert 2 < mad(pixels(out[2]), lightest) < mad(pixels(out[3]), lightest)
    assert type(gen.loaded.img2img).__name__ == PIPELINES[kind].replace("Pipeline", "Img2ImgPipeline")


def test_img2img_requests_that_cannot_run(tiny):
    init = gradient()
    plain = DiffusersGenerator(model=str(tiny["sdxl"]))
    [res] = plain.generate([req("sdxl", init_image=init, init_image_sha="g", strength=0.5)])
    assert not res.ok and "img2img=true" in res.error
    gen = DiffusersGenerator(model=str(tiny["sdxl"]), img2img=True)
    few, wide = gen.generate([req("sdxl", init_image=init, init_image_sha="g", strength=0.2),  # 0.2 x 2 steps < 1
                              req("sdxl", init_image=init, init_image_sha="g", strength=1.5)])
    assert "runs no denoising step" in few.error and "strength must be in [0, 1]" in wide.error
    # SDXL's img2img takes its size from the input: a 48x48 input for a 32x32 request is resized first
    [resized] = gen.generate([req("sdxl", init_image=gradient(48), init_image_sha="g48", strength=1.0)])
    assert resized.image.size == (SIZE, SIZE)


def test_transformer_swap(tiny, tmp_path):
    """A fine-tuned transformer from one safetensors file changes the images and enters the identity by its
    hash; the same weights as a pickle load only with allow_pickle; a checkpoint of another model is refused."""
    kind = "flux"
    file = write_finetune(tiny[kind], tmp_path / "finetune.safetensors")
    base = DiffusersGenerator(model=str(tiny[kind]))
    tuned = DiffusersGenerator(model=str(tiny[kind]), transformer=str(file))
    assert tuned.identity()["transformer"] == {"sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    assert base.identity()["transformer"] is None
    tuned_px = pixels(tuned.generate([req(kind)])[0])
    assert mad(tuned_px, pixels(base.generate([req(kind)])[0])) > 0.3

    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "finetune.pt"
    torch.save(load_file(str(file)), pickled)
    with pytest.raises(WeightsError, match="pickle checkpoint"):
        DiffusersGenerator(model=str(tiny[kind]), transformer=str(pickled)).load()
    opted = DiffusersGenerator(model=str(tiny[kind]), transformer=str(pickled), allow_pickle=True)
    assert np.array_equal(pixels(opted.generate([req(kind)])[0]), tuned_px)

    foreign = write_finetune(tiny["sd3"], tmp_path / "sd3.safetensors")
    with pytest.raises(WeightsError, match=r"sd3.safetensors does not fit flux's transformer .*keys missing"):
        DiffusersGenerator(model=str(tiny[kind]), transformer=str(foreign)).load()


def test_missing_and_corrupt_weights(tiny, tmp_path):
    """Missing files are named together before anything loads; a damaged file fails with its folder named."""
    broken = shutil.copytree(tiny["sdxl"], tmp_path / "sdxl")
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(broken / "tokenizer_2")
    with pytest.raises(MissingWeightsError, match=r"missing weight files in .*sdxl: tokenizer_2/ \(missing\); "
                                                  r"vae/ \(no weights file \(\*\.safetensors\)\)"):
        DiffusersGenerator(model=str(broken)).identity()

    damaged = shutil.copytree(tiny["sdxl"], tmp_path / "sdxl-damaged")
    weights = damaged / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"cannot build AutoPipelineForText2Image from .*sdxl-damaged: OSError: "
                                           r"Unable to load weights .*unet/diffusion_pytorch_model.safetensors"):
        DiffusersGenerator(model=str(damaged)).load()

    with pytest.raises(MissingWeightsError, match="no such folder"):
        DiffusersGenerator(model=str(tmp_path / "nowhere")).identity()
    with pytest.raises(ConfigError, match="is a single file"):
        DiffusersGenerator(model=str(weights)).identity()


def test_identity(tiny, loras, tmp_path):
    """The identity changes with what changes images (LoRA scale, dtype, model) and not with batch size,
    device or where the folder lies; it is the same before and after loading."""
    flux = str(tiny["flux"])

    def ident(**kw):
        return DiffusersGenerator(**{"model": flux, "lora": str(loras["flux"]), **kw}).identity()

    ref = ident(lora_scale=1.0, dtype="fp32")
    assert ident(lora_scale=1.0, dtype="float32", batch_size=8, device="cpu") == ref
    assert ident() == ref  # fp32 is the CPU default, scale 1 the default
    assert ident(lora_scale=0.5) != ref
    assert ident(dtype="bf16") != ref
    assert ident(vae_tiling=True) != ref  # a tiled decode blends its tiles: other pixels
    assert ident(vae_slicing=True, cpu_offload=False) == ref
    assert ident(model=str(tiny["sd3"]), lora=None) != ident(lora=None)
    moved = shutil.copytree(tiny["flux"], tmp_path / "elsewhere")
    assert ident(model=str(moved)) == ref
    assert ref["model"]["files"]["transformer/diffusion_pytorch_model.safetensors"] == hashlib.sha256(
        (tiny["flux"] / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    assert ref["dtype"] == "fp32" and ref["pipeline"] == "FluxPipeline"
    gen = DiffusersGenerator(model=flux, scheduler="FlowMatchEulerDiscreteScheduler", img2img=True)
    before = gen.identity()
    gen.load()
    assert gen.identity() == before
    assert before["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert before["options"] == {"allow_pickle": False, "img2img": True, "vae_tiling": False}


def cache_repo(cache, name: str, commit: str, files) -> None:
    """A repo in the Hugging Face cache layout: snapshots/<commit>/... and refs/main naming the commit."""
    repo = cache / f"models--{name.replace('/', '--')}"
    shutil.copytree(files, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_from_a_warm_cache(tiny, loras, tmp_path, monkeypatch):
    """With HF_HUB_OFFLINE (conftest), hub ids load from the Hugging Face cache: no revision needed, the
    cached commit is recorded, and the images are those of the same files in folders. That holds for the
    model, a transformer in a repo's subfolder and a LoRA. A repo that is not cached is one error with the
    command that fetches it; online, a hub id needs a pinned commit."""
    import huggingface_hub.constants

    commit, tuned_commit = "0123456789abcdef0123456789abcdef01234567", "89abcdef" * 5
    tuned = write_finetune(tiny["sdxl"], tmp_path / "tuned" / "unet", folder=True)
    cache_repo(tmp_path / "hub", "tiny/sdxl", commit, tiny["sdxl"])
    cache_repo(tmp_path / "hub", "tiny/sdxl-tuned", tuned_commit, tuned.parent)
    cache_repo(tmp_path / "hub", "tiny/sdxl-lora", "f" * 40, loras["sdxl"].parent)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    gen = DiffusersGenerator(model="tiny/sdxl")
    assert gen.identity()["model"] == {"repo": "tiny/sdxl", "revision": commit}
    folder = DiffusersGenerator(model=str(tiny["sdxl"]))
    assert np.array_equal(pixels(gen.generate([req("sdxl")])[0]), pixels(folder.generate([req("sdxl")])[0]))

    on_hub = DiffusersGenerator(model="tiny/sdxl", transformer="tiny/sdxl-tuned", transformer_subfolder="unet",
                                lora="tiny/sdxl-lora", lora_scale=0.5)
    local = DiffusersGenerator(model=str(tiny["sdxl"]), transformer=str(tuned), lora=str(loras["sdxl"]),
                               lora_scale=0.5)
    ident = on_hub.identity()
    assert ident["transformer"] == {"repo": "tiny/sdxl-tuned", "revision": tuned_commit, "subfolder": "unet"}
    assert ident["lora"] == local.identity()["lora"]
    hub_px, local_px = pixels(on_hub.generate([req("sdxl")])[0]), pixels(local.generate([req("sdxl")])[0])
    assert np.array_equal(hub_px, local_px) and mad(hub_px, pixels(folder.generate([req("sdxl")])[0])) > 0.3

    with pytest.raises(MissingWeightsError, match=r"tiny/absent@main \(model\) is not in the Hugging Face cache "
                                                  r"\(hub access is off: HF_HUB_OFFLINE is set\).*`hf download "
                                                  r"tiny/absent`"):
        DiffusersGenerator(model="tiny/absent").identity()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    with pytest.raises(ConfigError, match="pin revision to a commit"):
        DiffusersGenerator(model="tiny/sdxl")
    assert DiffusersGenerator(model="tiny/sdxl", revision=commit, offline=True).identity()["model"]["revision"] \
        == commit


def test_failures_per_request(tiny, tmp_path):
    """NaN output and blank frames are failed results with reasons; unknown params fail their requests; an
    out-of-memory error is raised for the stage to halve the batch; any other error fails the batch's items."""
    import torch

    gen = DiffusersGenerator(model=str(shutil.copytree(tiny["sdxl"], tmp_path / "own")), batch_size=2)
    gen.load()  # a pipeline of its own (its own folder), so poking its VAE touches no other test
    conv = gen.loaded.pipe.vae.decoder.conv_out
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(-5.0)  # every pixel -1 before clamping: a black frame
    black = gen.generate([req("sdxl")])[0]
    assert not black.ok and black.error.startswith("blank image: one flat colour (0, 0, 0)")
    with torch.no_grad():
        conv.bias.fill_(float("nan"))
    nan = gen.generate([req("sdxl")])[0]
    assert not nan.ok and f"NaN/inf in {SIZE * SIZE * 3} of {SIZE * SIZE * 3} output values" in nan.error

    bad = gen.generate([req("sdxl", params=params("sdxl", num_frames=3)), req("sdxl", params=params("sdxl", image=1))])
    assert bad[0].error == "bad params: StableDiffusionXLPipeline does not take num_frames"
    assert bad[1].error == "bad params: image is set by the backend, not by params"

    class Raising:
        image_processor = None

        def __init__(self, exc):
            self.exc = exc

        def __call__(self, prompt, generator, output_type, num_inference_steps, width, height):
            raise self.exc

    gen.loaded = Loaded(Raising(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")))
    with pytest.raises(OutOfMemory, match="2 images of 32x32 did not fit"):
        gen.generate([req("sdxl", seed=1), req("sdxl", seed=2)])
    gen.loaded = Loaded(Raising(ValueError("shapes do not match\nmore detail")))
    failed = gen.generate([req("sdxl", seed=1), req("sdxl", seed=2)])
    assert [r.error for r in failed] == ["generation failed: ValueError: shapes do not match"] * 2


def test_options_checked(tiny):
    flux = str(tiny["flux"])
    with pytest.raises(ConfigError, match="needs model"):
        DiffusersGenerator()
    with pytest.raises(ConfigError, match="lora_scale must be a number"):
        DiffusersGenerator(model=flux, lora_scale="strong")
    with pytest.raises(ConfigError, match="dtype 'fp8'"):
        DiffusersGenerator(model=flux, dtype="fp8")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cannot put FluxPipeline on cuda: "):
            DiffusersGenerator(model=flux, device="cuda", dtype="fp32").load()
    with pytest.raises(ConfigError, match="cpu_offload .* needs device cuda or mps"):
        DiffusersGenerator(model=flux, device="cpu", cpu_offload=True).load()
    with pytest.raises(ConfigError, match="pipeline 'NoSuchPipeline' is not a diffusers pipeline class"):
        DiffusersGenerator(model=flux, pipeline="NoSuchPipeline").load()
    with pytest.raises(ConfigError, match="scheduler 'Nope' is not a diffusers scheduler class"):
        DiffusersGenerator(model=flux, scheduler="Nope").load()
    with pytest.raises(ConfigError, match="attention_backend 'bogus': .*must be one of"):
        DiffusersGenerator(model=flux, attention_backend="bogus").load()
    with pytest.raises(ConfigError, match="StableDiffusionXLPipeline's denoiser does not support"):
        DiffusersGenerator(model=str(tiny["sdxl"]), attention_backend="native").load()
    native = DiffusersGenerator(model=flux, attention_backend="native")
    default = DiffusersGenerator(model=flux)
    assert np.array_equal(pixels(native.generate([req("flux")])[0]), pixels(default.generate([req("flux")])[0]))


def test_scheduler_override(tiny):
    """A scheduler named by class replaces the folder's, built from its config (Playground v2.5's EDM
    scheduler is how this is used on SDXL)."""
    gen = DiffusersGenerator(model=str(tiny["sdxl"]), scheduler="EulerAncestralDiscreteScheduler")
    out = pixels(gen.generate([req("sdxl")])[0])
    assert type(gen.loaded.pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert mad(out, pixels(DiffusersGenerator(model=str(tiny["sdxl"])).generate([req("sdxl")])[0])) > 0.2


def test_negative_prompt_on_flux_needs_true_cfg(tiny):
    """FluxPipeline drops a negative prompt unless true_cfg_scale > 1: such requests fail with the fix named
    instead of rendering the same image as without it; with true CFG they render."""
    gen = DiffusersGenerator(model=str(tiny["flux"]), batch_size=4)
    negative = "a sharp bright photo"
    unset, one, four = gen.generate([req("flux", negative_prompt=negative),
                                     req("flux", negative_prompt=negative, params=params("flux", true_cfg_scale=1.0)),
                                     req("flux", negative_prompt=negative, params=params("flux", true_cfg_scale=4.0))])
    assert unset.error == ("FluxPipeline ignores a negative prompt unless true_cfg_scale > 1 (it is 1.0): set "
                           "params.true_cfg_scale > 1, e.g. 4, for negative prompts on Flux")
    assert one.error == unset.error and four.ok
    assert gen.generate([req("flux")])[0].ok  # no negative prompt: nothing to check


def test_peft_adapter_as_peft_loads_it(tiny, tmp_path):
    """A LoRA saved by PEFT (keys base_model.model.*, lora_alpha 8 and r 4 in adapter_config.json: the SD3.5M
    Flow-GRPO format) renders at scale 1 what the same pipeline gives with its transformer wrapped by
    PeftModel.from_pretrained, the study's way; scale 0 is the base model. Its config enters the identity."""
    from peft import PeftModel

    kind = "sd3"
    file = write_peft_lora(tiny[kind], tmp_path / "flowgrpo")
    reqs = [req(kind, seed=s) for s in (1, 2)]
    study = DiffusersGenerator(model=str(shutil.copytree(tiny[kind], tmp_path / "study")), batch_size=2)
    base = [pixels(r) for r in study.generate(reqs)]
    PeftModel.from_pretrained(study.loaded.pipe.transformer, str(file.parent))  # injects the layers in place
    want = [pixels(r) for r in study.generate(reqs)]
    assert min(mad(w, b) for w, b in zip(want, base)) > 1  # the adapter does change the images

    gens = {s: DiffusersGenerator(model=str(tiny[kind]), lora=str(file.parent), weight_name=file.name, lora_scale=s,
                                  batch_size=2) for s in (1.0, 0)}
    for w, got in zip(want, gens[1.0].generate(reqs)):
        diff = np.abs(pixels(got) - w)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # alpha folded into B: float rounding only
    assert all(np.array_equal(pixels(got), b) for got, b in zip(gens[0].generate(reqs), base))
    assert gens[1.0].identity()["lora"]["config_sha256"] == hashlib.sha256(
        (file.parent / "adapter_config.json").read_bytes()).hexdigest()

    (file.parent / "adapter_config.json").unlink()
    with pytest.raises(MissingWeightsError, match="is a PEFT adapter .*adapter_config.json .* must lie beside it"):
        DiffusersGenerator(model=str(tiny[kind]), lora=str(file)).identity()


def test_lora_that_reaches_no_layer_is_an_error(tiny, loras, tmp_path):
    """SD3's loader keeps only keys under transformer.: a LoRA for a UNet (or any other prefix) loads nothing
    without a word; the backend names the file instead of failing later when switching adapters."""
    gen = DiffusersGenerator(model=str(shutil.copytree(tiny["sd3"], tmp_path / "sd3")), lora=str(loras["sdxl"]))
    with pytest.raises(WeightsError, match=r"pytorch_lora_weights.safetensors reached none of "
                                           r"StableDiffusion3Pipeline's layers"):
        gen.load()


def test_only_constant_frames_are_blank_for_a_local_model(tiny):
    """A requested near-black render (std 1 per channel) is an image from a local model, though a hosted API's
    check would call it a placeholder; an exactly constant frame (a safety filter's) is blank for both, in
    the backend and in the stage."""
    from types import SimpleNamespace

    from diffusers.image_processor import VaeImageProcessor

    from aesthetic_audit.images.generate import _Batches

    rng = np.random.default_rng(0)
    dark = np.clip(8 + rng.normal(0, 1, (SIZE, SIZE, 3)), 0, 255).round().astype(np.uint8)
    constant = np.full((SIZE, SIZE, 3), 8, np.uint8)
    assert 0.5 < dark.reshape(-1, 3).std(axis=0).max() < 2
    assert blank_reason(Image.fromarray(dark)) is not None
    assert blank_reason(Image.fromarray(dark), tolerance=0) is None
    assert blank_reason(Image.fromarray(constant), tolerance=0).startswith("blank image: one flat colour (8, 8, 8)")

    class Pipe:
        image_processor = VaeImageProcessor()

        def __call__(self, prompt, generator, output_type, num_inference_steps, width, height):
            return SimpleNamespace(images=np.stack([dark, constant]).astype(np.float32) / 255)

    gen = DiffusersGenerator(model=str(tiny["sdxl"]), batch_size=2)
    gen.load()
    gen.loaded = Loaded(Pipe())
    got_dark, got_constant = gen.generate([req("sdxl", seed=1), req("sdxl", seed=2)])
    assert np.array_equal(np.asarray(got_dark.image), dark)
    assert got_constant.error.startswith("blank image: one flat colour (8, 8, 8)")

    class Hosted(Generator):
        name = "hosted"

    for generator, ok in ((gen, True), (Hosted(), False)):
        image, error = _Batches(generator, None, {}, 1)._checked(GenerationResult(Image.fromarray(dark)), "I_o (p_o)")
        assert (error is None) == ok and (image is not None) == ok
        _, error = _Batches(generator, None, {}, 1)._checked(GenerationResult(Image.fromarray(constant)), "I_o (p_o)")
        assert error.startswith("I_o (p_o): blank image")


def test_run_unloads_each_generator_before_the_next(tiny, loras, tmp_path, monkeypatch):
    """`generate` with several generators holds one pipeline at a time: a generator's pipeline is freed
    before the next generator builds its own, and all are freed at the end; the generators of a LoRA scale
    sweep run on one pipeline, built once, with the adapter loaded once."""
    from aesthetic_audit.pipeline import Run

    folders = {k: shutil.copytree(tiny[k], tmp_path / k) for k in ("sdxl", "flux")}  # pipelines of their own
    refs, builds, lora_loads = [], [], []
    build, add_lora = DiffusersGenerator._build, DiffusersGenerator._add_lora

    def spy_build(self):
        builds.append((self.model.local.name, sum(r() is not None for r in refs)))  # pipelines alive now
        pipe = build(self)
        refs.append(weakref.ref(pipe))
        return pipe

    def spy_add_lora(self):
        known = set(self.loaded.adapters)
        add_lora(self)
        lora_loads.extend(self.loaded.adapters - known)

    monkeypatch.setattr(DiffusersGenerator, "_build", spy_build)
    monkeypatch.setattr(DiffusersGenerator, "_add_lora", spy_add_lora)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"p_o": "A red bicycle.", "p_a": "A blurry red bicycle.", "dims": ["clarity"]}\n')
    config = tmp_path / "gen.yaml"
    common = "device: cpu, dtype: fp32, batch_size: 2"
    config.write_text(f"""
images:
  generate:
    generators: [tiny-sdxl, tiny-flux]
    sweep: {{lora_scale: [0, 0.5, 1.0]}}
    presets:
      - {{name: tiny-sdxl, description: x, backend: diffusers,
         options: {{model: {folders['sdxl']}, lora: {loras['sdxl']}, {common}}},
         params: {{num_inference_steps: 2, width: {SIZE}, height: {SIZE}}}}}
      - {{name: tiny-flux, description: y, backend: diffusers, options: {{model: {folders['flux']}, {common}}},
         params: {{num_inference_steps: 2, width: {SIZE}, height: {SIZE}, max_sequence_length: {T5_LENGTH}}}}}
""")
    run = Run.open(tmp_path / "run", config)
    run.prompts(import_path=pairs)
    summaries = run.generate()
    assert [(s.total, s.new, s.failed) for s in summaries] == [(1, 1, 0)] * 4  # sdxl at 3 scales, then flux
    assert builds == [("sdxl", 0), ("flux", 0)]
    assert len(lora_loads) == 1
    assert [r() for r in refs] == [None, None]
