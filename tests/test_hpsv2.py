"""HPSv2 / HPSv2.1 on tiny random-weight checkpoints written exactly like the official files.

The reference below is an independent open_clip-style forward in plain torch (float64) over the raw
open_clip state dict read from the .pt, with hand-written tokens and its own letterbox preprocessing;
the scorer goes through the user path (registry name, ``weights`` folder, ``allow_pickle``), the
open_clip -> transformers mapping and transformers' CLIPModel.
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
from openclip_reference import MEAN, STD, image, image_features, load_official, text_features  # noqa: E402
from tiny.hpsv2 import BUILDERS, FILES, TEXT, VISION, vocabulary, write_checkpoint, write_tokenizer  # noqa: E402

V = vocabulary()
SOT, EOT = V["<|startoftext|>"], V["<|endoftext|>"]


def ids_of(*symbols: str) -> list[int]:
    return [SOT, *(V[s] for s in symbols), EOT]


# Prompts with their tokens worked out by hand from the tiny vocabulary and merges.
PROMPTS = {
    "a red cat": ids_of("a</w>", "red</w>", "cat</w>"),
    "  Photo OF a\n blurry   DOG ": ids_of("photo</w>", "of</w>", "a</w>", "blurry</w>", "dog</w>"),
    "cab!! 42 &amp; an cat": ids_of("ca", "b</w>", "!", "!</w>", "4</w>", "2</w>", "&</w>", "an</w>", "cat</w>"),
    "cat " * 80: [SOT, *[V["cat</w>"]] * 75, EOT],  # 82 tokens: cut to 77, the last forced to the end token
}


IMAGES = [image(42, 42, 0), image(80, 50, 1), image(30, 61, 2), image(120, 90, 3, "L")]


# -- independent reference ----------------------------------------------------------------------------
def ref_pixels(img: Image.Image, size: int = VISION["image"], antialias: bool = True):
    """open_clip ToTensor + ResizeMaxSize(size) + Normalize, written out: paste the resized image on black."""
    x = torch.tensor(np.array(img.convert("RGB")), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    h, w = x.shape[-2:]
    scale = size / max(h, w)  # official order of operations: 90 * (42 / 120) rounds to 31, 90 * 42 / 120 to 32
    if scale != 1.0:
        h, w = round(h * scale), round(w * scale)
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=antialias)
    canvas = torch.zeros(1, 3, size, size, dtype=torch.float64)
    top, left = (size - h) // 2, (size - w) // 2
    canvas[:, :, top:top + h, left:left + w] = x.double()
    return (canvas - MEAN) / STD


def ref_scores(sd: dict, pairs: list[tuple[Image.Image, str]], antialias: bool = True) -> list[float]:
    img = image_features(sd, torch.cat([ref_pixels(i, antialias=antialias) for i, _ in pairs]), VISION, F.gelu)
    txt = text_features(sd, [PROMPTS[p] for _, p in pairs], TEXT, F.gelu)
    return (img * txt).sum(-1).tolist()


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(params=list(BUILDERS))
def built(request, tmp_path):
    variant = request.param
    return variant, BUILDERS[variant](tmp_path)


@pytest.fixture
def hps(tmp_path):
    options = BUILDERS["hpsv2"](tmp_path)
    return get("scorers", "hpsv2")(**options), options


def all_pairs():
    return [(img, p) for img in IMAGES for p in PROMPTS]


# -- scores -------------------------------------------------------------------------------------------
def test_scores_match_independent_openclip_forward(built):
    variant, options = built
    scorer = get("scorers", variant)(**options)
    assert scorer.variant == variant
    pairs = all_pairs()
    results = scorer.score(pairs)
    sd = load_official(f"{options['weights']}/{FILES[variant]}")
    expected = ref_scores(sd, pairs)
    assert all(r.ok for r in results)
    np.testing.assert_allclose([r.score for r in results], expected, atol=1e-5, rtol=0)
    assert np.std(expected) > 0.05  # the random model separates the pairs: the check has teeth


def test_variants_read_their_own_file(tmp_path):
    folder = tmp_path / "both"
    for variant in FILES:
        write_checkpoint(folder, variant)
    write_tokenizer(folder)
    pair = [(IMAGES[1], "a red cat")]
    s2 = get("scorers", "hpsv2")(weights=str(folder), allow_pickle=True).score(pair)[0].score
    s21 = get("scorers", "hpsv2.1")(weights=str(folder), allow_pickle=True).score(pair)[0].score
    assert s2 == pytest.approx(ref_scores(load_official(folder / FILES["hpsv2"]), pair)[0], abs=1e-5)
    assert s21 == pytest.approx(ref_scores(load_official(folder / FILES["hpsv2.1"]), pair)[0], abs=1e-5)
    assert abs(s2 - s21) > 1e-3


def test_antialias_off_reproduces_old_torchvision(tmp_path):
    options = BUILDERS["hpsv2"](tmp_path)
    scorer = get("scorers", "hpsv2")(antialias=False, **options)
    pairs = [(IMAGES[1], "a red cat"), (IMAGES[3], "a red cat")]
    sd = load_official(f"{options['weights']}/{FILES['hpsv2']}")
    got = [r.score for r in scorer.score(pairs)]
    np.testing.assert_allclose(got, ref_scores(sd, pairs, antialias=False), atol=1e-5, rtol=0)
    assert not np.allclose(got, ref_scores(sd, pairs, antialias=True), atol=1e-4)


def test_letterbox_preprocessing_by_hand(hps):
    scorer, _ = hps
    scorer.load()
    pre = scorer.preprocess
    assert pre.size == VISION["image"]  # inferred from the checkpoint: 3 x 3 patches of 14 px
    square = IMAGES[0]
    expected = (np.asarray(square, np.float64).transpose(2, 0, 1) / 255 - MEAN[0].numpy()) / STD[0].numpy()
    np.testing.assert_allclose(pre.pil(square).numpy(), expected, atol=1e-6)  # no resize at the model size
    wide = pre.pil(image(84, 42, 5)).numpy()  # -> 42 x 21, padded with 10 rows on top and 11 below
    black = (-MEAN[0] / STD[0]).numpy()
    for rows in (slice(0, 10), slice(31, 42)):
        np.testing.assert_allclose(wide[:, rows, :], np.broadcast_to(black, wide[:, rows, :].shape), atol=1e-6)
    assert not np.allclose(wide[:, 10, :], black[:, 0][:, None])
    tall = pre.pil(image(21, 42, 6)).numpy()  # longer side already 42: padded to a square, not resized
    np.testing.assert_allclose(tall[:, :, :10], np.broadcast_to(black, tall[:, :, :10].shape), atol=1e-6)
    np.testing.assert_allclose(tall[:, :, 31:], np.broadcast_to(black, tall[:, :, 31:].shape), atol=1e-6)


# -- tokenizer ----------------------------------------------------------------------------------------
def test_tokens_by_hand_and_truncation(hps):
    scorer, _ = hps
    scorer.load()
    ids, counts, truncated = scorer.tokenizer(list(PROMPTS))
    for row, (prompt, toks) in enumerate(PROMPTS.items()):
        assert ids[row, :len(toks)].tolist() == toks, prompt
        assert ids[row, len(toks):].eq(0).all()
    assert counts == [5, 7, 11, 82]
    assert truncated == [False, False, False, True]
    ids, counts, truncated = scorer.tokenizer(["cat " * 75, "cat " * 76])
    assert counts == [77, 78] and truncated == [False, True]
    assert ids[0, 76] == EOT and ids[1, 76] == EOT and ids[1, 75] == V["cat</w>"]


def test_prompts_go_through_the_text_fixer(hps, monkeypatch):
    """open_clip runs ftfy.fix_text first (curly quotes -> straight); identity records which fixer ran."""
    import importlib.util

    from aesthetic_audit.scorers import _openclip

    scorer, _ = hps
    assert (scorer.identity()["text_fix"] is None) == (importlib.util.find_spec("ftfy") is None)
    monkeypatch.setattr(_openclip, "text_fixer", lambda: (lambda t: t.replace("\u2019", "'"), "fake 1"))
    scorer.load()
    fixed = _openclip.OpenClipTokenizer.from_files(f"{scorer.weights}/vocab.json", f"{scorer.weights}/merges.txt")
    assert fixed.encode("CAT\u2019s") == [V["cat</w>"], V["'"], V["s</w>"]]  # "'s" split off whole
    assert scorer.tokenizer.encode("cat's") == fixed.encode("CAT\u2019s")


def test_results_record_token_counts(hps):
    scorer, _ = hps
    results = scorer.score([(IMAGES[0], p) for p in PROMPTS])
    assert [r.tokens for r in results] == [5, 7, 11, 82]
    assert [r.truncated for r in results] == [False, False, False, True]


# -- batching, reuse, bad items -----------------------------------------------------------------------
def test_four_combinations_encode_each_input_once(hps):
    scorer, _ = hps
    scorer.load()
    rows = {"image": 0, "text": 0}

    def counter(kind):
        def hook(module, args, kwargs, output):
            inputs = kwargs.get("pixel_values", kwargs.get("input_ids"))
            rows[kind] += inputs.shape[0]
        return hook

    scorer.model.vision_model.register_forward_hook(counter("image"), with_kwargs=True)
    scorer.model.text_model.register_forward_hook(counter("text"), with_kwargs=True)
    i_o, i_a, p_o, p_a = IMAGES[0], IMAGES[1], "a red cat", "  Photo OF a\n blurry   DOG "
    results = scorer.score([(i_o, p_o), (i_o, p_a), (i_a, p_o), (i_a, p_a)])
    assert rows == {"image": 2, "text": 2}
    sd = load_official(f"{scorer.weights}/{FILES['hpsv2']}")
    expected = ref_scores(sd, [(i_o, p_o), (i_o, p_a), (i_a, p_o), (i_a, p_a)])
    np.testing.assert_allclose([r.score for r in results], expected, atol=1e-5, rtol=0)


def test_batched_equals_one_at_a_time(tmp_path):
    options = BUILDERS["hpsv2"](tmp_path)
    pairs = all_pairs()
    batched = get("scorers", "hpsv2")(batch_size=16, **options).score(pairs)
    single = get("scorers", "hpsv2")(batch_size=1, **options)
    one_by_one = [single.score([pair])[0] for pair in pairs]
    np.testing.assert_allclose([r.score for r in batched], [r.score for r in one_by_one], atol=1e-6, rtol=0)
    assert [r.tokens for r in batched] == [r.tokens for r in one_by_one]


def test_bad_items_fail_alone(hps):
    scorer, _ = hps
    results = scorer.score([(IMAGES[0], "a red cat"), (None, "a red cat"), (IMAGES[0], ""),
                            (IMAGES[0], "   "), (IMAGES[1], "a red cat")])
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert "image" in results[1].error and "prompt" in results[2].error and "prompt" in results[3].error


def test_a_sliver_image_is_scored_and_a_broken_one_fails_alone(hps):
    scorer, options = hps
    sliver, broken = image(1, 400, 7), Image.new("RGB", (0, 8))
    results = scorer.score([(IMAGES[1], "a red cat"), (sliver, "a red cat"), (broken, "a red cat"),
                            (IMAGES[0], "a red cat")])
    assert [r.ok for r in results] == [True, True, False, True]
    assert "RuntimeError" in results[2].error
    sd = load_official(f"{options['weights']}/{FILES['hpsv2']}")
    expected = ref_scores(sd, [(IMAGES[1], "a red cat"), (IMAGES[0], "a red cat")])
    np.testing.assert_allclose([results[0].score, results[3].score], expected, atol=1e-5, rtol=0)
    # 1 x 400 -> 1 x 42 (the width would round to 0), centred on black: column 20 of 42
    pixels = scorer.preprocess.pil(sliver).numpy()
    black = (-MEAN[0] / STD[0]).numpy()
    content = np.ones(VISION["image"], bool)
    content[20] = False
    np.testing.assert_allclose(pixels[:, :, content], np.broadcast_to(black, pixels[:, :, content].shape), atol=1e-6)
    assert not np.allclose(pixels[:, :, 20], black[:, 0][:, None])


def test_bf16_features_are_normalised_and_compared_in_float32(tmp_path):
    options = BUILDERS["hpsv2"](tmp_path)
    scorer = get("scorers", "hpsv2")(dtype="bf16", **options).load()
    feats = {}

    def keep(kind):
        def hook(module, args, output):
            feats[kind] = output.detach()
        return hook

    scorer.model.visual_projection.register_forward_hook(keep("image"))
    scorer.model.text_projection.register_forward_hook(keep("text"))
    result = scorer.score([(IMAGES[1], "a red cat")])[0]
    assert feats["image"].dtype == feats["text"].dtype == torch.bfloat16
    img, txt = (F.normalize(feats[k].double(), dim=-1)[0] for k in ("image", "text"))
    # in float32 the cosine of the bf16 features is exact to ~1e-7; normalised in bf16 it is off by ~1e-4 here
    assert result.score == pytest.approx(float(img @ txt), abs=1e-6)


def test_tensor_path_runs_in_bf16(hps):
    scorer, options = hps
    low = get("scorers", "hpsv2")(dtype="bf16", **options)
    pixels = torch.tensor(np.array(IMAGES[2]), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    pixels.requires_grad_(True)
    reward = low(pixels.to(torch.bfloat16), ["a red cat"])  # resized: the antialiased bicubic runs in float32
    reward.float().sum().backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    assert float(reward.detach()[0]) == pytest.approx(scorer.score([(IMAGES[2], "a red cat")])[0].score, abs=0.01)


def test_tensor_path_matches_pil_and_keeps_the_graph(hps):
    scorer, _ = hps
    img = IMAGES[1]
    pixels = torch.tensor(np.array(img), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    pixels.requires_grad_(True)
    reward = scorer(pixels, ["a red cat"])
    assert reward.shape == (1,)
    assert reward.item() == pytest.approx(scorer.score([(img, "a red cat")])[0].score, abs=1e-5)
    reward.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


# -- weights: pickle opt-in, missing files, conversion ------------------------------------------------
def test_pickle_refused_without_allow_pickle(tmp_path):
    options = BUILDERS["hpsv2"](tmp_path)
    options.pop("allow_pickle")
    with pytest.raises(WeightsError, match="allow_pickle"):
        get("scorers", "hpsv2")(**options).score([(IMAGES[0], "a red cat")])


@pytest.mark.parametrize("variant", list(FILES))
def test_missing_weight_file_is_named(tmp_path, variant):
    write_tokenizer(tmp_path)
    with pytest.raises(WeightsError, match=FILES[variant].replace(".", r"\.")):
        get("scorers", variant)(weights=str(tmp_path), allow_pickle=True).load()


def test_convert_round_trip(tmp_path):
    from transformers import CLIPModel

    from aesthetic_audit.scorers._openclip import convert_checkpoint

    options = BUILDERS["hpsv2"](tmp_path)
    src = f"{options['weights']}/{FILES['hpsv2']}"
    with pytest.raises(WeightsError, match="allow_pickle"):
        convert_checkpoint(src, tmp_path / "refused")
    # The real ViT-H width (1280) implies 80-wide heads; the tiny width does not, so it is given.
    out = convert_checkpoint(src, tmp_path / "converted", allow_pickle=True, vision_head_width=VISION["head_width"])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]

    model = CLIPModel.from_pretrained(str(out))  # a plain transformers folder
    vc, tc = model.config.vision_config, model.config.text_config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads) == (160, 2, 2)
    assert (vc.patch_size, vc.image_size, vc.hidden_act, vc.layer_norm_eps) == (14, 42, "gelu", 1e-5)
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads) == (128, 2, 2)
    assert (tc.vocab_size, tc.max_position_embeddings, model.config.projection_dim) == (len(V), 77, 48)

    pairs = all_pairs()
    official = get("scorers", "hpsv2")(**options).score(pairs)
    tok = options["weights"]
    converted = get("scorers", "hpsv2")(weights=str(out), tokenizer=tok).score(pairs)  # no allow_pickle needed
    by_file = get("scorers", "hpsv2")(weights=str(out / "model.safetensors"), tokenizer=tok).score(pairs[:2])
    np.testing.assert_allclose([r.score for r in converted], [r.score for r in official], atol=1e-6, rtol=0)
    np.testing.assert_allclose([r.score for r in by_file], [r.score for r in official[:2]], atol=1e-6, rtol=0)

    from safetensors.torch import load_file, save_file

    state = load_file(str(out / "model.safetensors"))
    del state["text_model.final_layer_norm.bias"]
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(WeightsError, match="final_layer_norm.bias"):  # never a randomly initialised weight
        get("scorers", "hpsv2")(weights=str(out), tokenizer=tok).load()


def test_mapping_infers_shapes_and_checks_keys(tmp_path):
    from aesthetic_audit.scorers._openclip import openclip_to_transformers
    from tiny.hpsv2 import openclip_state_dict

    sd = openclip_state_dict(0)
    ddp = {"module." + k: v for k, v in sd.items()}
    config, hf = openclip_to_transformers(ddp, vision_head_width=80)
    assert config.vision_config.num_attention_heads == 2 and config.text_config.num_attention_heads == 2
    q, k, v = sd["visual.transformer.resblocks.1.attn.in_proj_weight"].chunk(3)
    assert torch.equal(hf["vision_model.encoder.layers.1.self_attn.k_proj.weight"], k)
    assert torch.equal(hf["visual_projection.weight"], sd["visual.proj"].T)
    assert torch.equal(hf["text_projection.weight"], sd["text_projection"].T)
    with pytest.raises(WeightsError, match="head width"):  # 160 is no multiple of the default 64
        openclip_to_transformers(sd)
    with pytest.raises(WeightsError, match="ln_final.weight"):
        openclip_to_transformers({k: v for k, v in sd.items() if k != "ln_final.weight"}, vision_head_width=80)
    extra = {**sd, "visual.transformer.resblocks.0.ls_1.gamma": torch.ones(160)}
    with pytest.raises(WeightsError, match="ls_1.gamma"):
        openclip_to_transformers(extra, vision_head_width=80)


def test_mapping_of_real_vit_h_14_shapes():
    """The open_clip ViT-H-14 shapes (meta tensors, no memory) give the ViT-H-14 config: 16 + 16 heads."""
    from aesthetic_audit.scorers._openclip import openclip_to_transformers

    def blocks(prefix, width, layers):
        shapes = {"ln_1.weight": [width], "ln_1.bias": [width], "attn.in_proj_weight": [3 * width, width],
                  "attn.in_proj_bias": [3 * width], "attn.out_proj.weight": [width, width],
                  "attn.out_proj.bias": [width], "ln_2.weight": [width], "ln_2.bias": [width],
                  "mlp.c_fc.weight": [4 * width, width], "mlp.c_fc.bias": [4 * width],
                  "mlp.c_proj.weight": [width, 4 * width], "mlp.c_proj.bias": [width]}
        return {f"{prefix}{i}.{k}": v for i in range(layers) for k, v in shapes.items()}

    shapes = {"visual.conv1.weight": [1280, 3, 14, 14], "visual.class_embedding": [1280],
              "visual.positional_embedding": [257, 1280], "visual.ln_pre.weight": [1280], "visual.ln_pre.bias": [1280],
              "visual.ln_post.weight": [1280], "visual.ln_post.bias": [1280], "visual.proj": [1280, 1024],
              "token_embedding.weight": [49408, 1024], "positional_embedding": [77, 1024],
              "ln_final.weight": [1024], "ln_final.bias": [1024], "text_projection": [1024, 1024], "logit_scale": [],
              **blocks("visual.transformer.resblocks.", 1280, 32), **blocks("transformer.resblocks.", 1024, 24)}
    sd = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    sd["logit_scale"] = torch.tensor(math.log(100.0))
    config, hf = openclip_to_transformers(sd)
    vc, tc = config.vision_config, config.text_config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads, vc.intermediate_size) == (1280, 32, 16, 5120)
    assert (vc.image_size, vc.patch_size) == (224, 14)
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.intermediate_size) == (1024, 24, 16, 4096)
    assert (tc.vocab_size, tc.max_position_embeddings, tc.eos_token_id) == (49408, 77, 49407)
    assert config.projection_dim == 1024
    assert len(hf) == len(sd) + 2 * 2 * (32 + 24)  # each packed q/k/v weight and bias became three tensors


# -- identity, registry, import cost ------------------------------------------------------------------
def test_identity_hashes_files_without_building_the_model(tmp_path):
    options = BUILDERS["hpsv2"](tmp_path)
    scorer = get("scorers", "hpsv2")(**options)
    ident = scorer.identity()
    assert scorer.model is None
    folder = options["weights"]
    for name in (FILES["hpsv2"], "vocab.json", "merges.txt"):
        digest = hashlib.sha256(open(f"{folder}/{name}", "rb").read()).hexdigest()
        assert digest in ident["weights"].values(), name
    assert ident["variant"] == "hpsv2" and ident["preprocess"]["antialias"] is True
    scorer.load()
    assert scorer.identity() == ident  # the record key does not change once the model is loaded
    assert get("scorers", "hpsv2")(antialias=False, **options).identity() != ident
    BUILDERS["hpsv2.1"](tmp_path)
    other = get("scorers", "hpsv2.1")(weights=str(tmp_path / "hpsv2.1-official"), allow_pickle=True).identity()
    assert other["variant"] == "hpsv2.1" and other["weights"] != ident["weights"]


def test_injected_model_and_tokenizer(hps):
    scorer, options = hps
    pair = [(IMAGES[1], "a red cat")]
    expected = scorer.score(pair)[0].score
    shared = get("scorers", "hpsv2")(model=scorer.model, tokenizer=options["weights"])
    ident = shared.identity()
    # the parameters' hash and the files still read: the tokenizer's vocab.json + merges.txt
    assert set(ident["weights"]) == {"injected", "tokenizer/vocab.json", "tokenizer/merges.txt"}
    assert shared.score(pair)[0].score == pytest.approx(expected, abs=1e-6)
    both = get("scorers", "hpsv2")(model=scorer.model, tokenizer=scorer.tokenizer)
    assert both.score(pair)[0].score == pytest.approx(expected, abs=1e-6)
    assert both.identity()["tokenizer"].startswith("injected")


def test_registered_variants():
    found = available("scorers")
    assert found["hpsv2"].default_variant == "hpsv2"
    assert found["hpsv2.1"].default_variant == "hpsv2.1"
    assert issubclass(found["hpsv2.1"], found["hpsv2"])
    assert found["hpsv2"].max_prompt_tokens == 77 and found["hpsv2"].prompt_aware


def test_module_imports_without_torch():
    code = ("import sys, aesthetic_audit.scorers.hpsv2, aesthetic_audit.scorers._openclip; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_tokenizer_files_are_found_before_the_model_is_read(tmp_path, monkeypatch):
    import aesthetic_audit.scorers._openclip as openclip

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the tokenizer files were checked")

    monkeypatch.setattr(openclip, "read_openclip_checkpoint", never)
    options = BUILDERS["hpsv2"](tmp_path)
    (tmp_path / "no-tokenizer").mkdir()
    with pytest.raises(WeightsError, match="vocab.json"):
        get("scorers", "hpsv2")(**options, tokenizer=str(tmp_path / "no-tokenizer")).load()


def test_loading_prints_no_progress_bar(tmp_path, capfd):
    """The weights are already in memory when transformers builds the model: no "Loading weights" bar."""
    from transformers.utils import logging as hf_logging

    options = BUILDERS["hpsv2"](tmp_path)
    get("scorers", "hpsv2")(**options).load()
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err
    assert hf_logging.is_progress_bar_enabled()  # restored for the caller's own transformers use
