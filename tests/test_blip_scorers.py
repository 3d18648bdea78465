"""ImageReward and BLIP-ITM on tiny random-weight models written in the official layouts.

References are computed independently of the scorers' code: ImageReward through transformers'
BlipVisionModel + BlipTextModel (a separate BLIP implementation) with the official weights copied in
by a key table written here, CLIP-style pixels from transformers' CLIPImageProcessorPil, token ids
looked up by hand in the vocabulary, the MLP applied by hand and the published normalisation
constants; BLIP-ITM through the transformers model's own ITM forward on pixels from
BlipImageProcessorPil.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from aesthetic_audit.registry import get  # noqa: E402
from aesthetic_audit.scorers._weights import WeightsError  # noqa: E402
from tiny import blip as tiny  # noqa: E402

IR_MEAN, IR_STD = 0.16717362830052426, 1.0333394966054072
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
PROMPTS = ["a photo of a cat", "a very blurry dark painting of the dog", "the red sky, and blue grass."]
TOL = dict(rtol=1e-5, atol=1e-5)  # numpy
APPROX = dict(rel=1e-5, abs=1e-5)  # pytest.approx, same tolerance


def images() -> list[Image.Image]:
    """Sizes whose short-side resize + centre crop agree between torchvision and HF rounding."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:40, 0:48]
    ramp = np.stack([x * 5, y * 6, (x + y) * 3], -1).astype(np.uint8)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
            Image.fromarray(ramp),                                                   # 48x40 -> 38x32
            Image.fromarray(rng.integers(0, 256, (96, 64, 3), dtype=np.uint8)),      # 64x96 -> 32x48
            Image.new("RGB", (50, 50), (200, 40, 90))]


def hand_ids(prompt: str, limit: int) -> list[int]:
    """[CLS] words [SEP] by vocabulary lookup (prompts here are whole lowercase vocabulary words)."""
    words = prompt.lower().replace(",", " ,").replace(".", " .").split()
    ids = [tiny.VOCAB.index(w) for w in words][:limit - 2]
    return [tiny.VOCAB.index("[CLS]")] + ids + [tiny.VOCAB.index("[SEP]")]


def padded(rows: list[list[int]], length: int):
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, :len(r)], mask[k, :len(r)] = torch.tensor(r), 1
    return ids, mask


def combos() -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(images())) for j in range(len(PROMPTS))]


def count_rows(module):
    """Counts calls and rows through a module's forward with a hook (the module itself is untouched)."""
    from types import SimpleNamespace

    counter = SimpleNamespace(rows=0, calls=0)

    def hook(mod, args, kwargs, out):
        x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        counter.calls += 1
        counter.rows += int(x.shape[0])

    module.register_forward_hook(hook, with_kwargs=True)
    return counter


# ---------------------------------------------------------------- ImageReward ----------------------

@pytest.fixture(scope="module")
def ir_opts(tmp_path_factory):
    return tiny.build_imagereward(tmp_path_factory.mktemp("ir"))


@pytest.fixture(scope="module")
def ir(ir_opts):
    return get("scorers", "imagereward")(**ir_opts, batch_size=4, device="cpu").load()


def ir_reference(folder, pil_images, id_rows, pixels=None):
    """ImageReward scores of every (image, ids) combination via transformers' BLIP modules (pixels from
    transformers' CLIP image processor unless given)."""
    from transformers import (BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel,
                              CLIPImageProcessorPil)

    state = torch.load(f"{folder}/ImageReward.pt", weights_only=True)
    vit, txt = tiny.IR_VIT, tiny.IR_TEXT
    vision = BlipVisionModel(BlipVisionConfig(
        hidden_size=vit["width"], intermediate_size=vit["mlp"], num_hidden_layers=vit["depth"],
        num_attention_heads=vit["width"] // 64, image_size=vit["image"], patch_size=vit["patch"],
        layer_norm_eps=1e-6, hidden_act="gelu")).eval()
    table = {"embeddings.class_embedding": "cls_token", "embeddings.position_embedding": "pos_embed",
             "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
             "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
             "post_layernorm.weight": "norm.weight", "post_layernorm.bias": "norm.bias"}
    for i in range(vit["depth"]):
        for hf, official in (("layer_norm1", "norm1"), ("self_attn.qkv", "attn.qkv"),
                             ("self_attn.projection", "attn.proj"), ("layer_norm2", "norm2"),
                             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for w in ("weight", "bias"):
                table[f"encoder.layers.{i}.{hf}.{w}"] = f"blocks.{i}.{official}.{w}"
    vision.load_state_dict({k: state["blip.visual_encoder." + v] for k, v in table.items()}, strict=True)

    text = BlipTextModel(BlipTextConfig(
        vocab_size=len(tiny.VOCAB) + 2, hidden_size=txt["hidden_size"], encoder_hidden_size=vit["width"],
        intermediate_size=txt["intermediate_size"], num_hidden_layers=txt["num_hidden_layers"],
        num_attention_heads=txt["num_attention_heads"], max_position_embeddings=txt["max_position_embeddings"],
        layer_norm_eps=1e-12, hidden_act="gelu", is_decoder=True, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0, bos_token_id=len(tiny.VOCAB),
        sep_token_id=tiny.VOCAB.index("[SEP]")), add_pooling_layer=False).eval()
    prefix = "blip.text_encoder."
    text.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                          if k.startswith(prefix) and not k.endswith("position_ids")}, strict=True)

    proc = CLIPImageProcessorPil(size={"shortest_edge": vit["image"]}, crop_size={"height": vit["image"],
                                 "width": vit["image"]}, do_center_crop=True, resample=3,
                                 image_mean=OPENAI_MEAN, image_std=OPENAI_STD)
    if pixels is None:
        pixels = proc(images=pil_images, return_tensors="pt")["pixel_values"]
    ids, mask = padded(id_rows, 35)  # official: padding="max_length", max_length=35
    with torch.no_grad():
        image_states = vision(pixel_values=pixels).last_hidden_state
        out = torch.empty(len(pil_images), len(id_rows))
        for i in range(len(pil_images)):
            states = image_states[i:i + 1].expand(len(id_rows), -1, -1)
            h = text(input_ids=ids, attention_mask=mask, encoder_hidden_states=states,
                     encoder_attention_mask=torch.ones(states.shape[:2], dtype=torch.long),
                     is_decoder=False).last_hidden_state[:, 0]
            for layer in (0, 2, 4, 6, 7):  # the MLP by hand: linear layers only
                h = h @ state[f"mlp.layers.{layer}.weight"].T + state[f"mlp.layers.{layer}.bias"]
            out[i] = (h[:, 0] - IR_MEAN) / IR_STD
    return out.numpy()


def test_imagereward_matches_an_independent_blip_forward(ir, ir_opts):
    imgs = images()
    results = ir.score([(imgs[i], PROMPTS[j]) for i, j in combos()])
    ref = ir_reference(ir_opts["weights"], imgs, [hand_ids(p, 35) for p in PROMPTS])
    assert all(r.ok for r in results)
    np.testing.assert_allclose([r.score for r in results], [ref[i, j] for i, j in combos()], **TOL)
    assert np.std([r.score for r in results]) > 0.05  # the tiny model is not degenerate
    assert [r.tokens for r in results[:3]] == [len(hand_ids(p, 99)) for p in PROMPTS]
    assert not any(r.truncated for r in results)


def test_imagereward_crops_with_torchvisions_rounded_offset(ir, ir_opts):
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (64, 70, 3), dtype=np.uint8))  # -> 35 x 32: offset (35-32)/2 = 1.5

    def by_hand(left):  # Resize(32) bicubic, CenterCrop(32) at column `left`, ToTensor, Normalize
        arr = np.asarray(img.resize((35, 32), Image.BICUBIC), dtype=np.float64)[:, left:left + 32] / 255
        return ((arr - OPENAI_MEAN) / OPENAI_STD).transpose(2, 0, 1)

    # torchvision: int(round(1.5)) = 2; transformers' processors: 1
    np.testing.assert_allclose(ir.preprocess.pil(img), by_hand(2), rtol=0, atol=1e-6)
    assert not np.allclose(by_hand(1), by_hand(2), atol=1e-3)
    res = ir.score([(img, PROMPTS[0])])[0]
    pixels = torch.tensor(by_hand(2), dtype=torch.float32)[None]
    ref = ir_reference(ir_opts["weights"], [img], [hand_ids(PROMPTS[0], 35)], pixels=pixels)
    assert res.score == pytest.approx(float(ref[0, 0]), **APPROX)
    shifted = ir_reference(ir_opts["weights"], [img], [hand_ids(PROMPTS[0], 35)],
                           pixels=torch.tensor(by_hand(1), dtype=torch.float32)[None])
    assert abs(float(shifted[0, 0]) - float(ref[0, 0])) > 1e-4  # the check tells the two offsets apart


def test_imagereward_bf16_keeps_the_head_in_float32(ir_opts):
    low = get("scorers", "imagereward")(**ir_opts, device="cpu", dtype="bf16").load()
    assert low.model.blip.visual_encoder.pos_embed.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in low.model.mlp.parameters())
    feats = {}
    low.model.blip.text_encoder.register_forward_hook(lambda m, a, out: feats.update(x=out.detach()))
    res = low.score([(images()[1], PROMPTS[1])])[0]
    assert feats["x"].dtype == torch.bfloat16
    state = torch.load(f"{ir_opts['weights']}/ImageReward.pt", weights_only=True)
    h = feats["x"][0, 0].double()
    for layer in (0, 2, 4, 6, 7):
        h = h @ state[f"mlp.layers.{layer}.weight"].double().T + state[f"mlp.layers.{layer}.bias"].double()
    # a float32 head on the bf16 feature: exact to ~1e-6; a bf16 head rounds to ~1e-2
    assert res.score == pytest.approx((float(h[0]) - IR_MEAN) / IR_STD, abs=1e-5)


def test_imagereward_cuts_prompts_at_35_tokens_and_records_it(ir, ir_opts):
    long = " ".join(["very"] * 20 + ["blurry", "dark", "photo", "of", "a", "cat"] * 3)  # 38 words
    img = images()[1]
    res = ir.score([(img, long), (img, PROMPTS[0])])
    assert (res[0].tokens, res[0].truncated) == (40, True)
    assert (res[1].tokens, res[1].truncated) == (len(hand_ids(PROMPTS[0], 99)), False)
    ref = ir_reference(ir_opts["weights"], [img], [hand_ids(long, 35)])  # [CLS] + 33 words + [SEP]
    assert res[0].score == pytest.approx(float(ref[0, 0]), **APPROX)


def test_imagereward_reuses_image_encodings_and_batches(ir):
    imgs = images()
    vision, text = count_rows(ir.model.blip.visual_encoder), count_rows(ir.model.blip.text_encoder)
    pair = [(imgs[0], PROMPTS[0]), (imgs[0], PROMPTS[1]), (imgs[1], PROMPTS[0]), (imgs[1], PROMPTS[1])]
    four = ir.score(pair)
    assert (vision.rows, text.rows) == (2, 4)  # 2 image encodings, 4 joint passes in one batch
    assert text.calls == 1
    singles = [ir.score([item])[0].score for item in pair]
    np.testing.assert_allclose([r.score for r in four], singles, **TOL)
    items = [(imgs[i], PROMPTS[j]) for i, j in combos()] * 2  # 24 items, 12 distinct, batch_size 4
    vision.rows = text.rows = 0
    batched = ir.score(items)
    assert (vision.rows, text.rows) == (len(imgs), len(combos()))
    np.testing.assert_allclose([r.score for r in batched[:12]], [r.score for r in batched[12:]], atol=0)


def test_imagereward_bad_items_fail_alone(ir):
    imgs = images()
    good = ir.score([(imgs[2], PROMPTS[2])])[0]
    res = ir.score([(None, PROMPTS[0]), (imgs[2], PROMPTS[2]), (imgs[0], ""), (imgs[0], "   ")])
    assert [r.ok for r in res] == [False, True, False, False]
    assert "no image" in res[0].error and "empty prompt" in res[2].error
    assert res[1].score == pytest.approx(good.score, **APPROX)


def test_imagereward_pickle_needs_opt_in_and_safetensors_loads(ir, ir_opts, tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(WeightsError, match="allow_pickle"):
        get("scorers", "imagereward")(weights=ir_opts["weights"]).load()
    folder = tmp_path / "converted"
    folder.mkdir()
    state = torch.load(f"{ir_opts['weights']}/ImageReward.pt", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "ImageReward.safetensors"))
    for name in ("med_config.json", "vocab.txt"):
        shutil.copy(f"{ir_opts['weights']}/{name}", folder / name)
    converted = get("scorers", "imagereward")(weights=str(folder), device="cpu")  # no allow_pickle needed
    assert "ImageReward.safetensors" in " ".join(converted.identity()["weights"])
    as_file = get("scorers", "imagereward")(weights=f"{ir_opts['weights']}/ImageReward.pt", allow_pickle=True,
                                           device="cpu")
    item = [(images()[3], PROMPTS[1])]
    expected = ir.score(item)[0].score
    assert converted.score(item)[0].score == pytest.approx(expected, abs=1e-6)
    assert as_file.score(item)[0].score == pytest.approx(expected, abs=1e-6)


def test_imagereward_missing_files_are_named(ir_opts, tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(ir_opts["weights"], folder)
    (folder / "med_config.json").unlink()
    with pytest.raises(WeightsError, match="med_config.json"):
        get("scorers", "imagereward")(weights=str(folder), allow_pickle=True).load()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="ImageReward.pt"):
        get("scorers", "imagereward")(weights=str(empty)).identity()


def test_imagereward_identity_is_cheap_and_stable(ir_opts):
    scorer = get("scorers", "imagereward")(**ir_opts)
    before = scorer.identity()
    assert scorer._loaded is False and scorer.model is None
    assert {k.rsplit("/", 1)[1] for k in before["weights"]} == {"ImageReward.pt", "med_config.json", "vocab.txt"}
    scorer.load()
    assert scorer.identity() == before


def test_injected_parts_replace_only_their_files_in_the_identity(ir, ir_opts, itm, itm_opts):
    shared = get("scorers", "imagereward")(**ir_opts, model=ir.model)
    assert set(shared.identity()["weights"]) == {"injected", "tokenizer/vocab.txt"}
    own = get("scorers", "imagereward")(**ir_opts).identity()["weights"]
    assert shared.identity()["weights"]["tokenizer/vocab.txt"] == own["tokenizer/vocab.txt"]
    item = [(images()[0], PROMPTS[2])]
    assert shared.score(item)[0].score == pytest.approx(ir.score(item)[0].score, abs=1e-6)
    blip = get("scorers", "blip-itm")(**itm_opts, model=itm.model)
    assert set(blip.identity()["weights"]) == {"injected", "processor/preprocessor_config.json",
                                               "tokenizer/tokenizer_config.json", "tokenizer/vocab.txt"}
    both = get("scorers", "blip-itm")(**itm_opts, model=itm.model, processor=itm.preprocess, tokenizer=itm.tokenizer)
    ident = both.identity()
    assert set(ident["weights"]) == {"injected"} and ident["processor"]["resize"] == "square"
    assert ident["tokenizer"].startswith("injected BertTokenizer get_vocab sha256:")
    assert both.score(item)[0].score == pytest.approx(itm.score(item)[0].score, abs=1e-6)


def test_imagereward_low_precision_runs_and_a_wrong_config_is_refused(ir, ir_opts, tmp_path):
    items = [(images()[i], PROMPTS[j]) for i, j in combos()]
    fp32 = [r.score for r in ir.score(items)]
    bf16 = get("scorers", "imagereward")(**ir_opts, device="cpu", dtype="bf16").score(items)
    np.testing.assert_allclose([r.score for r in bf16], fp32, atol=0.1)
    folder = tmp_path / "wrong"
    shutil.copytree(ir_opts["weights"], folder)
    med = json.loads((folder / "med_config.json").read_text())
    (folder / "med_config.json").write_text(json.dumps({**med, "num_hidden_layers": 1}))
    with pytest.raises(WeightsError, match="does not match the checkpoint"):
        get("scorers", "imagereward")(weights=str(folder), allow_pickle=True).load()


# ---------------------------------------------------------------- BLIP ITM -------------------------

@pytest.fixture(scope="module")
def itm_opts(tmp_path_factory):
    return tiny.build_blip_itm(tmp_path_factory.mktemp("itm"))


@pytest.fixture(scope="module")
def itm(itm_opts):
    return get("scorers", "blip-itm")(**itm_opts, batch_size=4, device="cpu").load()


def itm_reference(folder, pil_images, id_rows):
    from transformers import BlipForImageTextRetrieval, BlipImageProcessorPil

    model = BlipForImageTextRetrieval.from_pretrained(folder).eval()
    pixels = BlipImageProcessorPil.from_pretrained(folder)(images=pil_images, return_tensors="pt")["pixel_values"]
    out = np.empty((len(pil_images), len(id_rows)))
    with torch.no_grad():
        for i in range(len(pil_images)):
            for j, row in enumerate(id_rows):  # one pair per call, unpadded: the plain usage
                ids = torch.tensor([row])
                logits = model(input_ids=ids, pixel_values=pixels[i:i + 1], attention_mask=torch.ones_like(ids),
                               use_itm_head=True).itm_score
                out[i, j] = float(torch.softmax(logits, dim=-1)[0, 1])
    return out


def test_blip_itm_matches_the_models_own_itm_forward(itm, itm_opts):
    imgs = images()
    results = itm.score([(imgs[i], PROMPTS[j]) for i, j in combos()])
    ref = itm_reference(itm_opts["weights"], imgs, [hand_ids(p, 99) for p in PROMPTS])
    scores = np.array([r.score for r in results])
    np.testing.assert_allclose(scores, [ref[i, j] for i, j in combos()], **TOL)
    assert np.all((scores > 0) & (scores < 1)) and np.std(scores) > 0.01


def test_blip_itm_truncates_at_the_tokenizer_limit(itm, itm_opts):
    long = "a very very blurry dark painting of the dog in the blue sky"  # 13 words -> 15 tokens
    img = images()[2]
    res = itm.score([(img, long)])[0]
    assert (res.tokens, res.truncated) == (15, True)
    ref = itm_reference(itm_opts["weights"], [img], [hand_ids(long, tiny.ITM_MAX_TOKENS)])
    assert res.score == pytest.approx(ref[0, 0], **APPROX)


def test_blip_itm_reuse_batching_and_bad_items(itm):
    imgs = images()
    vision, text = count_rows(itm.model.vision_model), count_rows(itm.model.text_encoder)
    pair = [(imgs[0], PROMPTS[0]), (imgs[0], PROMPTS[1]), (imgs[1], PROMPTS[0]), (imgs[1], PROMPTS[1])]
    four = itm.score(pair)
    assert (vision.rows, text.rows) == (2, 4)
    singles = [itm.score([item])[0].score for item in pair]
    np.testing.assert_allclose([r.score for r in four], singles, **TOL)
    res = itm.score([(imgs[0], PROMPTS[0]), (None, PROMPTS[0]), (imgs[1], "")])
    assert [r.ok for r in res] == [True, False, False]
    assert res[0].score == pytest.approx(four[0].score, **APPROX)


def test_blip_itm_missing_file_is_named(itm_opts, tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(itm_opts["weights"], folder)
    (folder / "vocab.txt").unlink()
    with pytest.raises(WeightsError, match="vocab.txt"):
        get("scorers", "blip-itm")(weights=str(folder)).load()


def test_modules_import_without_torch():
    code = ("import sys, aesthetic_audit.scorers.imagereward, aesthetic_audit.scorers.blip_itm; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_imagereward_takes_a_tokenizer_folder(ir, ir_opts, tmp_path):
    """``tokenizer: FOLDER`` reads vocab.txt from that folder (it used to fail every item later)."""
    weights, tok = tmp_path / "weights", tmp_path / "tok"
    shutil.copytree(ir_opts["weights"], weights)
    tok.mkdir()
    shutil.move(str(weights / "vocab.txt"), tok / "vocab.txt")
    scorer = get("scorers", "imagereward")(weights=str(weights), tokenizer=str(tok), allow_pickle=True, device="cpu")
    assert "tokenizer/vocab.txt" in scorer.identity()["weights"]
    item = [(images()[3], PROMPTS[1])]
    assert scorer.score(item)[0].score == pytest.approx(ir.score(item)[0].score, abs=1e-6)
    with pytest.raises(WeightsError, match="vocab.txt"):
        get("scorers", "imagereward")(weights=str(weights), tokenizer=str(tmp_path), allow_pickle=True).load()


def test_imagereward_says_when_vocab_comes_from_the_hub_cache(ir, ir_opts, tmp_path, monkeypatch, caplog):
    """A weights folder without vocab.txt takes bert-base-uncased's from the hub cache, and says so."""
    from aesthetic_audit.scorers._weights import Resolver

    weights = tmp_path / "weights"
    shutil.copytree(ir_opts["weights"], weights)
    cached = tmp_path / "hub-cache"
    cached.mkdir()
    shutil.move(str(weights / "vocab.txt"), cached / "vocab.txt")
    real = Resolver.file

    def from_cache(self, source, filename):  # stands in for the hub cache, which these tests never reach
        return cached / filename if source.repo and not source.local else real(self, source, filename)

    monkeypatch.setattr(Resolver, "file", from_cache)
    scorer = get("scorers", "imagereward")(weights=str(weights), allow_pickle=True, device="cpu")
    with caplog.at_level("INFO", logger="aesthetic_audit"):
        scorer.load()
    assert any("no vocab.txt in the weights folder" in r.getMessage() and "bert-base-uncased" in r.getMessage()
               for r in caplog.records)
    item = [(images()[3], PROMPTS[1])]
    assert scorer.score(item)[0].score == pytest.approx(ir.score(item)[0].score, abs=1e-6)
