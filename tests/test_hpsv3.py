"""HPSv3 on a tiny random-weight Qwen2-VL written in the official layouts (see tests/tiny/hpsv3.py).

The reference is an independent forward written here the way the official ``Qwen2VLRewardModelBT`` runs:
transformers' own ``Qwen2VLForConditionalGeneration`` loaded from the raw safetensors (keys renamed by
hand from the 4.45 layout), transformers' ``Qwen2VLImageProcessorPil`` on an image resized with PIL to
target sizes worked out by hand, the chat text rendered with a Qwen2-VL chat template written here and
the tokenizer with ``<|Reward|>`` added through ``add_special_tokens`` (as the official code does), the
image features scattered into the ``<|image_pad|>`` slots, the decoder called with ``position_ids=None``
(sequential positions), and the reward MLP applied by hand in float64 to the hidden state at the reward
token; the score is its first output (mu).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402

from aesthetic_audit.registry import get  # noqa: E402
from aesthetic_audit.scorers._weights import WeightsError  # noqa: E402
from aesthetic_audit.scorers.hpsv3 import INSTRUCTION, QwenVLPreprocess, chat_text, smart_resize  # noqa: E402
from tiny.hpsv3 import build, legacy_state, write_checkpoint  # noqa: E402

# Qwen2-VL-7B-Instruct's chat template (image and text parts of one user turn; default system turn).
QWEN2VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)
RATING_SUFFIX = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"


def noise(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


# (image, its target size (height, width) worked out by hand from qwen-vl-utils' smart_resize at 256*28*28)
WIDE = noise(300, 200, 0)     # round -> 196x308 = 60368 < 200704 -> x1.829 -> ceil -> 392x560
SQUARE = noise(256, 256, 1)   # round -> 252x252 < budget -> x1.75 -> 448x448
GREY = noise(170, 260, 2, "L")  # round -> 252x168 < budget -> x2.106 -> ceil -> 560x364
SIZES = {id(WIDE): (392, 560), id(SQUARE): (448, 448), id(GREY): (560, 364)}
PROMPTS = ["a red cat", "a blurry, dark photo of a dog {with} braces", "an oil painting of an empty grey sky"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return build(tmp_path_factory.mktemp("hpsv3"))


def make(**options):
    """The user path, on the CPU like the reference (a GPU's TF32 convolutions would blur the comparison)."""
    return get("scorers", "hpsv3")(device="cpu", **options)


@pytest.fixture(scope="module")
def scorer(files):
    return make(**files).load()


@pytest.fixture(scope="module")
def reference(files):
    from safetensors.torch import load_file
    from transformers import Qwen2Tokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    base = Path(files["base"])
    raw = load_file(str(Path(files["weights"]) / "HPSv3.safetensors"))
    head = {k: v.double() for k, v in raw.items() if k.startswith("rm_head.")}
    renamed = {}
    for key, value in raw.items():
        if key.startswith("visual."):
            renamed["model." + key] = value
        elif key.startswith("model."):
            renamed["model.language_model." + key[len("model."):]] = value
        elif key == "lm_head.weight":
            renamed[key] = value
    config = Qwen2VLConfig.from_pretrained(str(base))
    config.text_config.vocab_size = renamed["model.language_model.embed_tokens.weight"].shape[0]
    model = Qwen2VLForConditionalGeneration(config)
    model.load_state_dict(renamed, strict=True)
    model = model.float().eval()
    tokenizer = Qwen2Tokenizer.from_pretrained(str(base))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|Reward|>"]})
    processor = Qwen2VLImageProcessorPil.from_pretrained(str(base))
    reward_id = tokenizer.convert_tokens_to_ids("<|Reward|>")

    def score(image: Image.Image, prompt: str) -> float:
        h, w = SIZES[id(image)]
        resized = image.convert("RGB").resize((w, h), Image.BICUBIC)
        pixels = processor(images=[resized], return_tensors="pt")
        n_image = int(pixels["image_grid_thw"].prod()) // 4
        message = [{"role": "user", "content": [{"type": "image", "image": resized},
                                                {"type": "text", "text": INSTRUCTION.format(text_prompt=prompt)
                                                 + RATING_SUFFIX}]}]
        text = tokenizer.apply_chat_template(message, chat_template=QWEN2VL_TEMPLATE, tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text.replace("<|image_pad|>", "<|image_pad|>" * n_image), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            embeds = model.model.language_model.embed_tokens(ids)
            feats = model.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
            slots = (ids == config.image_token_id).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(slots, feats)
            hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)
                                                ).last_hidden_state
        x = hidden[0][ids[0] == reward_id]
        assert x.shape[0] == 1
        x = x[0].double()
        x = torch.relu(x @ head["rm_head.0.weight"].T + head["rm_head.0.bias"])
        x = torch.relu(x @ head["rm_head.3.weight"].T + head["rm_head.3.bias"])
        out = x @ head["rm_head.5.weight"].T + head["rm_head.5.bias"]
        return float(out[0]), float(out[1])

    return score


# -- preprocessing and template facts ------------------------------------------------------------------
def test_smart_resize_hand_values():
    assert smart_resize(200, 300) == (392, 560)
    assert smart_resize(256, 256) == (448, 448)
    assert smart_resize(1024, 1024) == (448, 448)  # round -> 1036^2 > budget -> /2.286 -> floor -> 448
    assert smart_resize(700, 1000) == (364, 532)   # round -> 700x1008 > budget -> /1.868 -> floor
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500)


def test_patches_match_transformers_image_processor(files):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil.from_pretrained(files["base"])
    ours = QwenVLPreprocess()
    for image in (WIDE, GREY):
        h, w = SIZES[id(image)]
        ref = processor(images=[image.convert("RGB").resize((w, h), Image.BICUBIC)], return_tensors="np")
        patches, grid = ours.pil(image)
        assert grid == tuple(ref["image_grid_thw"][0]) == (1, h // 14, w // 14)
        np.testing.assert_allclose(patches, ref["pixel_values"], rtol=0, atol=1e-6)


def test_prompt_template_is_the_official_one():
    # load-bearing bytes of the official instruction: trailing spaces, both sections, the prompt slot
    assert INSTRUCTION.startswith("\nYou are tasked with evaluating a generated image based on Visual Quality "
                                  "and Text Alignment")
    assert "with 0 being the worst and 10 being the best. \n\n**Visual Quality:**  \nEvaluate" in INSTRUCTION
    assert "the lowest possible. \n\n**Text Alignment:**  \nAssess" in INSTRUCTION
    assert INSTRUCTION.endswith("original description.\nTextual prompt - {text_prompt}\n\n\n")
    text = chat_text("a {cat}", 3)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>\nYou are")
    assert text.endswith("Textual prompt - a {cat}\n\n\n" + RATING_SUFFIX + "<|im_end|>\n<|im_start|>assistant\n")


# -- scores ---------------------------------------------------------------------------------------------
def test_scores_match_independent_forward(scorer, reference):
    items = [(WIDE, PROMPTS[0]), (SQUARE, PROMPTS[1]), (GREY, PROMPTS[2]), (WIDE, PROMPTS[1])]
    results = scorer.score(items)
    for (image, prompt), res in zip(items, results):
        mu, log_sigma = reference(image, prompt)
        assert res.ok, res.error
        assert res.score == pytest.approx(mu, abs=1e-4)
        assert res.extra["sigma"] == pytest.approx(math.exp(log_sigma), rel=1e-3)
    scores = [r.score for r in results]
    assert max(scores) - min(scores) > 1e-2  # the tiny model does tell the inputs apart


def test_four_combinations_encode_each_image_once(scorer):
    seen = {"images": 0, "rows": 0}

    def count_images(module, args, kwargs, out):
        seen["images"] += int(kwargs["grid_thw"].shape[0])

    def count_rows(module, args, kwargs, out):
        seen["rows"] += int(kwargs["inputs_embeds"].shape[0])

    backbone = scorer.model.backbone
    hooks = [backbone.visual.register_forward_hook(count_images, with_kwargs=True),
             backbone.language_model.register_forward_hook(count_rows, with_kwargs=True)]
    try:
        p_o, p_a = PROMPTS[0], PROMPTS[1]
        results = scorer.score([(WIDE, p_o), (WIDE, p_a), (SQUARE, p_o), (SQUARE, p_a)])
    finally:
        for h in hooks:
            h.remove()
    assert all(r.ok for r in results)
    assert seen == {"images": 2, "rows": 4}


def test_batched_equals_one_at_a_time(files, scorer):
    items = [(WIDE, PROMPTS[0]), (SQUARE, PROMPTS[1]), (GREY, PROMPTS[2]), (SQUARE, PROMPTS[0]),
             (WIDE, PROMPTS[2])]
    batched = scorer.score(items)  # batch_size 16: one vision call, one decoder batch (right padding)
    single = make(**files, batch_size=1)
    for item, res in zip(items, batched):
        alone = single.score([item])[0]
        assert res.score == pytest.approx(alone.score, abs=1e-5)
        assert res.tokens == alone.tokens


def test_token_counts_and_no_truncation(scorer, files):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(files["base"]) / "tokenizer.json"))
    long_prompt = "a blurry dark photo of a red cat on the grass, very noisy, ugly colors " * 40
    res_long, res_short = scorer.score([(WIDE, long_prompt), (WIDE, PROMPTS[0])])
    assert res_long.tokens == len(tok.encode(long_prompt, add_special_tokens=False).ids) > 500
    assert res_short.tokens == len(tok.encode(PROMPTS[0], add_special_tokens=False).ids)
    assert res_long.truncated is False and res_short.truncated is False
    assert res_long.ok and res_long.score != pytest.approx(res_short.score, abs=1e-4)


def test_bad_items_fail_alone(scorer):
    sliver = noise(2500, 10, 3)  # aspect ratio 250 > 200: Qwen2-VL's preprocessing refuses it
    items = [(None, PROMPTS[0]), (WIDE, ""), (WIDE, "a cat <|Reward|>"), (sliver, PROMPTS[0]), (WIDE, PROMPTS[0])]
    results = scorer.score(items)
    assert "no image" in results[0].error
    assert "empty prompt" in results[1].error
    assert "<|Reward|>" in results[2].error
    assert "aspect ratio" in results[3].error
    assert results[4].ok and results[4].score == pytest.approx(scorer.score([items[4]])[0].score, abs=1e-5)


# -- loading --------------------------------------------------------------------------------------------
def test_pickle_checkpoint_needs_opt_in(files, scorer, tmp_path):
    state = legacy_state()
    path = write_checkpoint(tmp_path, {"model": state}, name="HPSv3.pth")  # the official loader unwraps "model"
    refused = make(weights=str(path), base=files["base"], dtype="fp32")
    with pytest.raises(WeightsError, match="pickle"):
        refused.score([(WIDE, PROMPTS[0])])
    allowed = make(weights=str(path), base=files["base"], dtype="fp32", allow_pickle=True)
    expected = scorer.score([(WIDE, PROMPTS[0])])[0].score
    assert allowed.score([(WIDE, PROMPTS[0])])[0].score == pytest.approx(expected, abs=1e-6)


def test_transformers_452_key_layout_loads_the_same(files, scorer, tmp_path):
    modern = {("model.visual." + k[len("visual."):] if k.startswith("visual.") else
               "model.language_model." + k[len("model."):] if k.startswith("model.") else k): v
              for k, v in legacy_state().items()}
    write_checkpoint(tmp_path, modern)
    other = make(weights=str(tmp_path), base=files["base"], dtype="fp32")
    expected = scorer.score([(SQUARE, PROMPTS[2])])[0].score
    assert other.score([(SQUARE, PROMPTS[2])])[0].score == pytest.approx(expected, abs=1e-6)


def test_missing_files_are_named(files, tmp_path):
    empty = make(weights=str(tmp_path), base=files["base"], dtype="fp32")
    with pytest.raises(WeightsError, match="HPSv3.safetensors"):
        empty.score([(WIDE, PROMPTS[0])])
    base = tmp_path / "base"
    base.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (base / name).write_bytes((Path(files["base"]) / name).read_bytes())
    no_preprocessor = make(weights=files["weights"], base=str(base), dtype="fp32")
    with pytest.raises(WeightsError, match="preprocessor_config.json"):
        no_preprocessor.score([(WIDE, PROMPTS[0])])


def test_identity_hashes_files_without_building(files):
    scorer = make(**files)
    ident = scorer.identity()
    assert scorer.model is None and ident["dtype"] == "fp32"
    names = sorted(Path(k).name for k in ident["weights"])
    assert names == ["HPSv3.safetensors", "config.json", "preprocessor_config.json", "tokenizer.json",
                     "tokenizer_config.json"]
    assert make(weights=files["weights"], base=files["base"]).identity()["dtype"] == "bf16"


def test_bf16_backbone_keeps_a_float32_head(files, scorer):
    half = make(weights=files["weights"], base=files["base"]).load()  # default dtype: bf16, as upstream runs
    assert half.model.backbone.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert half.model.backbone.visual.patch_embed.proj.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in half.model.rm_head.parameters())
    items = [(WIDE, PROMPTS[0]), (SQUARE, PROMPTS[1])]
    for low, full in zip(half.score(items), scorer.score(items)):
        assert low.ok and low.score == pytest.approx(full.score, abs=0.08)  # bf16 rounding: ~0.02 here


def test_injected_backbone_and_tokenizer(scorer):
    shared = make(model=scorer.model, tokenizer=scorer.tokenizer, processor=scorer.preprocess, dtype="fp32")
    assert shared.weight_files() == [] and "injected" in shared.identity()["weights"]
    item = [(GREY, PROMPTS[1])]
    assert shared.score(item)[0].score == pytest.approx(scorer.score(item)[0].score, abs=1e-6)


def test_an_injected_model_keeps_its_dtype_and_identity(files, scorer):
    from aesthetic_audit.errors import ConfigError

    with pytest.raises(ConfigError, match="injected model is fp32 but dtype=bf16"):
        make(model=scorer.model, tokenizer=scorer.tokenizer, dtype="bf16")
    # no dtype given: the injected model's own (fp32 here), not HPSv3's bf16 default, and it is not cast
    shared = make(model=scorer.model, tokenizer=scorer.tokenizer, base=files["base"])
    ident = shared.identity()
    assert ident["dtype"] == "fp32"
    # the base's preprocessor config is still read (no processor was injected), so it is hashed
    assert set(ident["weights"]) == {"injected", "processor/preprocessor_config.json"}
    item = [(SQUARE, PROMPTS[0])]
    assert shared.score(item)[0].score == pytest.approx(scorer.score(item)[0].score, abs=1e-6)
    assert shared.identity() == ident
    assert all(p.dtype == torch.float32 for p in scorer.model.parameters())
