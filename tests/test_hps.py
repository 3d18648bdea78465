"""HPS v1 on a tiny random-weight hpc.pt written in the official layout (OpenAI CLIP key names).

The reference below is an independent OpenAI-CLIP forward in plain torch (float64, QuickGELU) over the raw
state dict read from the .pt, with hand-written token ids and its own ``clip.load``-style preprocessing;
the scorer goes through the user path (registry name ``hps``, ``weights``, ``allow_pickle``, a
``tokenizer`` folder), the open_clip -> transformers mapping and transformers' CLIPModel.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
F = torch.nn.functional

from PIL import Image  # noqa: E402

from aesthetic_audit.registry import available, get  # noqa: E402
from aesthetic_audit.scorers._weights import WeightsError  # noqa: E402
from openclip_reference import MEAN, STD, image, image_features, load_official, quick_gelu, text_features  # noqa: E402
from tiny.hps import FILE, TEXT, VISION, build, clip_state_dict, write_checkpoint  # noqa: E402
from tiny.hpsv2 import vocabulary, write_tokenizer  # noqa: E402

V = vocabulary()
SOT, EOT = V["<|startoftext|>"], V["<|endoftext|>"]
SIZE = VISION["image"]


def ids_of(*symbols: str) -> list[int]:
    return [SOT, *(V[s] for s in symbols), EOT]


# Prompts with their tokens worked out by hand from the tiny vocabulary and merges.
PROMPTS = {
    "a red cat": ids_of("a</w>", "red</w>", "cat</w>"),
    "  Photo OF a\n blurry   DOG ": ids_of("photo</w>", "of</w>", "a</w>", "blurry</w>", "dog</w>"),
    # OpenAI's spelling of the end token is one token, even inside a prompt (clip.tokenize does the same)
    "a dog<|endoftext|>cat": [SOT, V["a</w>"], V["dog</w>"], EOT, V["cat</w>"], EOT],
    "cat " * 80: [SOT, *[V["cat</w>"]] * 75, EOT],  # 82 tokens: cut to 77, the last forced to the end token
}


def rgba(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")


IMAGES = [image(42, 42, 0), image(80, 50, 1), image(30, 61, 2), image(120, 90, 3, "L"), rgba(70, 55, 4),
          image(64, 48, 5, "P")]


# -- independent reference ----------------------------------------------------------------------------
def ref_pixels(img: Image.Image, size: int = SIZE):
    """torchvision's Resize(size) + CenterCrop(size) on the PIL image, then RGB, ToTensor, Normalize."""
    w, h = img.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    img = img.crop((left, top, left + size, top + size)).convert("RGB")
    x = torch.tensor(np.asarray(img), dtype=torch.float64).permute(2, 0, 1)[None] / 255
    return (x - MEAN) / STD


def ref_scores(sd: dict, pairs: list[tuple[Image.Image, str]]) -> list[float]:
    """The README's score: diag(image_features @ text_features.T), both normalised, no logit scale."""
    img = image_features(sd, torch.cat([ref_pixels(i) for i, _ in pairs]), VISION, quick_gelu)
    txt = text_features(sd, [PROMPTS[p] for _, p in pairs], TEXT, quick_gelu)
    return (img @ txt.T).diagonal().tolist()


def all_pairs():
    return [(img, p) for img in IMAGES for p in PROMPTS]


@pytest.fixture
def built(tmp_path):
    return build(tmp_path)


@pytest.fixture
def hps(built):
    return get("scorers", "hps")(**built), built


def official(options) -> dict:
    return load_official(f"{options['weights']}/{FILE}")


# -- scores -------------------------------------------------------------------------------------------
def test_scores_match_independent_openai_clip_forward(hps):
    scorer, options = hps
    pairs = all_pairs()
    results = scorer.score(pairs)
    expected = ref_scores(official(options), pairs)
    assert all(r.ok for r in results)
    np.testing.assert_allclose([r.score for r in results], expected, atol=1e-5, rtol=0)
    assert np.std(expected) > 0.05  # the random model separates the pairs: the check has teeth
    assert [r.tokens for r in results[:len(PROMPTS)]] == [5, 7, 6, 82]
    assert [r.truncated for r in results[:len(PROMPTS)]] == [False, False, False, True]


def test_the_activation_is_quick_gelu(hps):
    """The same tensors with exact GELU (the open_clip ViT-H mapping's default) give other scores."""
    from aesthetic_audit.scorers._openclip import build_clip_model, openclip_to_transformers, read_openclip_checkpoint

    scorer, options = hps
    scorer.load()
    assert scorer.model.config.vision_config.hidden_act == scorer.model.config.text_config.hidden_act == "quick_gelu"
    sd = read_openclip_checkpoint(f"{options['weights']}/{FILE}", allow_pickle=True)
    config, state = openclip_to_transformers(sd, activation="gelu")
    exact = get("scorers", "hps")(model=build_clip_model(config, state), tokenizer=options["tokenizer"])
    pairs = all_pairs()[:8]
    ours = np.array([r.score for r in scorer.score(pairs)])
    with_gelu = np.array([r.score for r in exact.score(pairs)])
    assert np.abs(ours - with_gelu).max() > 1e-3


def test_weights_as_a_file_and_tokenizer_in_the_weights_folder(tmp_path):
    folder = tmp_path / "both"
    path = write_checkpoint(folder)
    write_tokenizer(folder)
    renamed = path.rename(folder / "hpc.pth")  # the README's spelling of the file name
    pair = [(IMAGES[1], "a red cat")]
    got = get("scorers", "hps")(weights=str(renamed), allow_pickle=True).score(pair)[0].score
    assert got == pytest.approx(ref_scores(load_official(renamed), pair)[0], abs=1e-5)


# -- preprocessing ------------------------------------------------------------------------------------
def test_preprocessing_by_hand(hps):
    scorer, _ = hps
    scorer.load()
    pre = scorer.preprocess
    assert pre.size == SIZE  # inferred from the checkpoint: 3 x 3 patches of 14 px
    square = IMAGES[0]
    expected = (np.asarray(square, np.float64).transpose(2, 0, 1) / 255 - MEAN[0].numpy()) / STD[0].numpy()
    np.testing.assert_allclose(pre.pil(square), expected, atol=1e-6)  # no resize at the model size
    tall = image(42, 45, 6)  # short side already 42: no resize; crop rows round(1.5) = 2 .. 44 (floor would be 1)
    rows = np.asarray(tall, np.float64)[2:44].transpose(2, 0, 1) / 255
    np.testing.assert_allclose(pre.pil(tall), (rows - MEAN[0].numpy()) / STD[0].numpy(), atol=1e-6)
    for img in IMAGES:
        np.testing.assert_allclose(pre.pil(img), ref_pixels(img)[0].numpy(), atol=1e-6)


def test_rgba_and_palette_images_are_resized_before_the_rgb_conversion(hps):
    """clip.load's transform converts to RGB after Resize/CenterCrop; for RGBA PIL resamples premultiplied
    alpha, so converting first would give other pixels."""
    from aesthetic_audit.scorers._torch import ImagePreprocess

    scorer, _ = hps
    scorer.load()
    converting_first = ImagePreprocess(SIZE, "shortest", crop=True)
    for img in (IMAGES[4], IMAGES[5]):
        ours = scorer.preprocess.pil(img)
        np.testing.assert_allclose(ours, ref_pixels(img)[0].numpy(), atol=1e-6)
        assert np.abs(ours - converting_first.pil(img)).max() > 0.1


# -- tokenizer ----------------------------------------------------------------------------------------
def test_tokens_by_hand_and_truncation(hps):
    scorer, _ = hps
    scorer.load()
    ids, counts, truncated = scorer.tokenizer(list(PROMPTS))
    for row, (prompt, toks) in enumerate(PROMPTS.items()):
        assert ids[row, :len(toks)].tolist() == toks, prompt
        assert ids[row, len(toks):].eq(0).all()
    assert counts == [5, 7, 6, 82] and truncated == [False, False, False, True]
    ids, counts, truncated = scorer.tokenizer(["cat " * 75, "cat " * 76])
    assert counts == [77, 78] and truncated == [False, True]
    assert ids[1, 76] == EOT and ids[1, 75] == V["cat</w>"]
    assert SOT not in scorer.tokenizer.encode("<start_of_text>")  # open_clip's spelling is plain text here


# -- gradients ----------------------------------------------------------------------------------------
def test_tensor_api_gives_gradients_and_the_pil_score(hps):
    scorer, _ = hps
    square, wide = IMAGES[0], IMAGES[1]
    pixels = torch.tensor(np.array(square), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    pixels.requires_grad_(True)
    reward = scorer(pixels, ["a red cat"])
    assert reward.shape == (1,)
    reward.sum().backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    # at the model size neither path resamples: the same score
    assert reward.item() == pytest.approx(scorer.score([(square, "a red cat")])[0].score, abs=1e-5)
    # resized by torch's antialiased bicubic instead of PIL's: close, not equal
    big = torch.tensor(np.array(wide), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    assert scorer(big, ["a red cat"]).item() == pytest.approx(scorer.score([(wide, "a red cat")])[0].score, abs=0.05)


# -- weights: conversion, pickle opt-in, missing files -------------------------------------------------
def test_converted_folder_gives_identical_scores(hps, tmp_path):
    from aesthetic_audit.scorers._openclip import convert_checkpoint

    scorer, options = hps
    src = f"{options['weights']}/{FILE}"
    out = convert_checkpoint(src, tmp_path / "converted", allow_pickle=True, activation="quick_gelu")
    pairs = all_pairs()
    converted = get("scorers", "hps")(weights=str(out), tokenizer=options["tokenizer"])  # no allow_pickle
    assert [r.score for r in converted.score(pairs)] == [r.score for r in scorer.score(pairs)]

    gelu = convert_checkpoint(src, tmp_path / "gelu", allow_pickle=True)  # the default: exact GELU
    with pytest.raises(WeightsError, match="--activation quick_gelu"):
        get("scorers", "hps")(weights=str(gelu), tokenizer=options["tokenizer"]).load()


def test_the_convert_command_writes_a_folder_the_scorer_reads(hps, tmp_path, cli):
    scorer, options = hps
    code, _, err = cli("convert", f"{options['weights']}/{FILE}", "-o", tmp_path / "cli", "--openclip",
                       "--activation", "quick_gelu")
    assert code == 0, err
    converted = get("scorers", "hps")(weights=str(tmp_path / "cli"), tokenizer=options["tokenizer"])
    pairs = all_pairs()
    assert [r.score for r in converted.score(pairs)] == [r.score for r in scorer.score(pairs)]


def test_pickle_refused_without_allow_pickle(built):
    built.pop("allow_pickle")
    with pytest.raises(WeightsError, match="allow_pickle"):
        get("scorers", "hps")(**built).load()


def test_missing_files_are_named_before_anything_is_read(tmp_path, monkeypatch):
    import aesthetic_audit.scorers._openclip as openclip
    import aesthetic_audit.scorers._weights as weights

    def never(*args, **kwargs):
        raise AssertionError("a file was read before every file was checked")

    monkeypatch.setattr(openclip, "read_openclip_checkpoint", never)
    monkeypatch.setattr(weights, "load_state_dict", never)
    (tmp_path / "empty").mkdir()
    scorer = get("scorers", "hps")(weights=str(tmp_path / "empty"), allow_pickle=True,
                                   tokenizer=str(tmp_path / "empty"))
    with pytest.raises(WeightsError) as exc:
        scorer.load()
    message = str(exc.value)
    assert all(name in message for name in ("hpc.pt", "vocab.json", "merges.txt", "tgxs002/align_sd"))
    with pytest.raises(WeightsError, match="weights option.*tgxs002/align_sd"):
        get("scorers", "hps")().load()
    with pytest.raises(WeightsError, match="tgxs002/align_sd"):
        get("scorers", "hps")().identity()


# -- mapping ------------------------------------------------------------------------------------------
def test_mapping_activation_keyword_defaults_to_exact_gelu():
    from aesthetic_audit.scorers._openclip import openclip_to_transformers

    sd = clip_state_dict(0)
    for kwargs, act in (({}, "gelu"), ({"activation": "quick_gelu"}, "quick_gelu")):
        config, _ = openclip_to_transformers(sd, **kwargs)
        assert config.vision_config.hidden_act == config.text_config.hidden_act == act
    with pytest.raises(WeightsError, match="activation"):
        openclip_to_transformers(sd, activation="relu")


def test_mapping_of_real_vit_l_14_shapes():
    """OpenAI CLIP ViT-L/14's shapes (meta tensors, no memory) with the scorer's settings: 16 + 12 heads."""
    from aesthetic_audit.scorers._openclip import openclip_to_transformers

    def blocks(prefix, width, layers):
        shapes = {"ln_1.weight": [width], "ln_1.bias": [width], "attn.in_proj_weight": [3 * width, width],
                  "attn.in_proj_bias": [3 * width], "attn.out_proj.weight": [width, width],
                  "attn.out_proj.bias": [width], "ln_2.weight": [width], "ln_2.bias": [width],
                  "mlp.c_fc.weight": [4 * width, width], "mlp.c_fc.bias": [4 * width],
                  "mlp.c_proj.weight": [width, 4 * width], "mlp.c_proj.bias": [width]}
        return {f"{prefix}{i}.{k}": v for i in range(layers) for k, v in shapes.items()}

    shapes = {"visual.conv1.weight": [1024, 3, 14, 14], "visual.class_embedding": [1024],
              "visual.positional_embedding": [257, 1024], "visual.ln_pre.weight": [1024], "visual.ln_pre.bias": [1024],
              "visual.ln_post.weight": [1024], "visual.ln_post.bias": [1024], "visual.proj": [1024, 768],
              "token_embedding.weight": [49408, 768], "positional_embedding": [77, 768],
              "ln_final.weight": [768], "ln_final.bias": [768], "text_projection": [768, 768],
              **blocks("visual.transformer.resblocks.", 1024, 24), **blocks("transformer.resblocks.", 768, 12)}
    sd = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    sd["logit_scale"] = torch.tensor(math.log(100.0))
    spec = available("scorers")["hps"].variants["hps"]
    config, _ = openclip_to_transformers(sd, vision_head_width=spec["vision_head_width"],
                                         text_head_width=spec["text_head_width"], activation=spec["activation"])
    vc, tc = config.vision_config, config.text_config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads, vc.intermediate_size) == (1024, 24, 16, 4096)
    assert (vc.image_size, vc.patch_size, vc.hidden_act) == (224, 14, "quick_gelu")
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.intermediate_size) == (768, 12, 12, 3072)
    assert (tc.vocab_size, tc.max_position_embeddings, tc.eos_token_id, tc.hidden_act) == (49408, 77, 49407,
                                                                                            "quick_gelu")
    assert config.projection_dim == 768


# -- identity, registry, import cost ------------------------------------------------------------------
def test_identity_hashes_files_without_building_the_model(hps):
    scorer, options = hps
    ident = scorer.identity()
    assert scorer.model is None
    for path in (f"{options['weights']}/{FILE}", f"{options['tokenizer']}/vocab.json",
                 f"{options['tokenizer']}/merges.txt"):
        assert hashlib.sha256(open(path, "rb").read()).hexdigest() in ident["weights"].values(), path
    scorer.load()
    assert scorer.identity() == ident  # the record key does not change once the model is loaded


def test_registered():
    cls = available("scorers")["hps"]
    assert "HPS v1" in cls.description and cls.score_range == (-1.0, 1.0)
    assert cls.max_prompt_tokens == 77 and cls.prompt_aware and cls.higher_is_better


def test_module_imports_without_torch():
    code = ("import sys, aesthetic_audit.scorers.hps; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_convert_refuses_flags_that_do_not_fit_together(hps, tmp_path, cli):
    _, options = hps
    src = f"{options['weights']}/{FILE}"
    for flags, message in ((("--activation", "quick_gelu"), "add --openclip"),
                           (("--mps", "--openclip"), "give one")):
        code, _, err = cli("convert", src, "-o", tmp_path / "x", *flags)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(Exception, match="tokenizer must be a folder"):
        get("scorers", "hps")(weights=options["weights"], tokenizer=5)
