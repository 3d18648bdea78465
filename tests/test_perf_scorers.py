"""The scorers' reuse: equal images by content, cached cross-attention keys/values, padding cut to the longest
prompt, and the opt-in int8 mode; fp32 scores stay those of one item per call the official way.

The fp32 reference of each score is the model's forward on that item alone, shaped as the official code
runs it (ImageReward: prompt padded to 35 tokens, the image's keys/values projected for the row; HPSv2: all
77 text positions). Work is counted with forward hooks on tiny models built here in the official layouts.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from aesthetic_audit.errors import ConfigError
from aesthetic_audit.scorers.base import Scorer, ScoreResult, image_key

PROMPTS = ["a photo of a cat", "a very blurry dark painting of the dog", "the red sky, and blue grass.",
           " ".join(["very"] * 20 + ["blurry", "dark", "photo", "of", "a", "cat"] * 3)]  # over 35 tokens


def pictures() -> list[Image.Image]:
    rng = np.random.default_rng(11)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(32, 32), (48, 40),
                                                                                          (64, 96)]]


def reopened(image: Image.Image, path) -> Image.Image:
    """The image written to a PNG file and opened again: equal pixels, another object."""
    image.save(path)
    return Image.open(path)


def counter(module, *, arg: int = 0):
    """Counts forward calls, rows (dim 0 of the first tensor input) and the widest dim 1 seen."""
    seen = SimpleNamespace(calls=0, rows=0, widths=[])

    def hook(mod, args, kwargs, out):
        x = args[arg] if len(args) > arg else next(v for v in kwargs.values() if hasattr(v, "shape"))
        seen.calls += 1
        seen.rows += int(x.shape[0])
        seen.widths.append(int(x.shape[1]) if x.ndim > 1 else None)

    module.register_forward_hook(hook, with_kwargs=True)
    return seen


# -- content de-duplication in the Python API (no torch) ----------------------------------------------------

class Recording(Scorer):
    """Scores an image by its pixel sum plus the prompt's length and records what reached ``_score``."""

    name = "recording"

    def __init__(self, prompt_aware: bool = True):
        super().__init__()
        self.prompt_aware = prompt_aware
        self.calls: list[list] = []

    def _score(self, items):
        self.calls.append(items)
        return [ScoreResult(float(np.asarray(im.convert("RGB"), dtype=np.int64).sum()) + len(p or ""))
                if isinstance(im, Image.Image) else ScoreResult(None, error="no image") for im, p in items]


def test_equal_images_opened_separately_reach_the_scorer_once(tmp_path):
    a, b = pictures()[:2]
    # each combination opens its file again, as a caller looping over (image path, prompt) does
    items = [(reopened(img, tmp_path / f"{n}{k}.png"), p) for n, img in (("a", a), ("b", b))
             for k, p in enumerate(PROMPTS[:2])]
    scorer = Recording()
    res = scorer.score(items + [(None, "x"), (items[0][0].copy(), PROMPTS[0])])
    (seen,) = scorer.calls
    assert len(seen) == 5  # 2 images x 2 prompts + the missing image; the copy is a repeat
    assert len({id(im) for im, _ in seen if im is not None}) == 2  # equal images became one object
    expected = [float(np.asarray(img, dtype=np.int64).sum()) + len(p) for img, p in
                [(a, PROMPTS[0]), (a, PROMPTS[1]), (b, PROMPTS[0]), (b, PROMPTS[1])]]
    assert [r.score for r in res[:4]] == expected
    assert not res[4].ok and res[5].score == expected[0]


def test_a_prompt_blind_scorer_scores_each_image_once(tmp_path):
    a = pictures()[0]
    scorer = Recording(prompt_aware=False)
    res = scorer.score([(a, "one"), (reopened(a, tmp_path / "a.png"), "two"), (a, None)])
    assert len(scorer.calls[0]) == 1 and res[0].score == res[1].score == res[2].score


def test_what_a_scorer_sees_decides_equality():
    indices = np.arange(64, dtype=np.uint8).reshape(8, 8)
    grey, red = Image.fromarray(indices, "P"), Image.fromarray(indices, "P")
    grey.putpalette([v for i in range(256) for v in (i, i, i)])
    red.putpalette([v for i in range(256) for v in (i, 0, 0)])
    tagged = grey.copy()
    tagged.info["comment"] = "metadata is not pixels"
    assert image_key(grey) != image_key(red)  # same indices, other colours
    assert image_key(grey) == image_key(tagged)
    assert image_key(grey.convert("L")) != image_key(grey.convert("RGB"))  # equal values, other modes
    assert image_key(Image.new("RGB", (4, 2))) != image_key(Image.new("RGB", (2, 4)))


# -- ImageReward: keys/values once per image, padding to the longest prompt, fp32 scores unchanged ----------

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from aesthetic_audit.registry import get  # noqa: E402
from tiny import blip as tiny_blip  # noqa: E402
from tiny.hpsv2 import BUILDERS as HPS_BUILDERS  # noqa: E402


@pytest.fixture(scope="module")
def ir_opts(tmp_path_factory):
    return tiny_blip.build_imagereward(tmp_path_factory.mktemp("ir"))


def official_imagereward(scorer, image, prompt) -> float:
    """One item the official way: 35-token max_length padding, keys/values projected for this row."""
    enc = scorer.tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        states = scorer.model.encode_image(scorer.preprocess.batch([image]))
        raw = scorer.model.reward(states, enc.input_ids, enc.attention_mask)
    spec = scorer.spec
    return (float(raw[0]) - spec["mean"]) / spec["std"]


def test_imagereward_projects_each_images_keys_once_and_pads_to_the_longest(ir_opts, tmp_path):
    scorer = get("scorers", "imagereward")(**ir_opts, batch_size=8).load()
    vision = counter(scorer.model.blip.visual_encoder)
    text = counter(scorer.model.blip.text_encoder)
    layers = scorer.model.blip.text_encoder.encoder.layer
    cross_keys = [counter(layer.crossattention.self.key) for layer in layers]
    a, b = pictures()[:2]
    items = [(reopened(img, tmp_path / f"{n}{k}.png"), p) for n, img in (("a", a), ("b", b))
             for k, p in enumerate(PROMPTS[:2])]
    res = scorer.score(items)
    assert vision.rows == 2 and all(k.rows == 2 for k in cross_keys)  # per distinct image, not per item
    lengths = [len(scorer.tokenizer(p)["input_ids"]) for p in PROMPTS[:2]]
    assert text.rows == 4 and text.widths == [max(lengths)] and max(lengths) < 35
    expected = [official_imagereward(scorer, img, p) for img, p in items]
    assert np.max(np.abs(np.array([r.score for r in res]) - expected)) <= 1e-5


def test_imagereward_batched_scores_equal_one_item_per_call_the_official_way(ir_opts):
    scorer = get("scorers", "imagereward")(**ir_opts, batch_size=2).load()
    text = counter(scorer.model.blip.text_encoder)
    imgs = pictures()
    items = [(img, p) for img in imgs for p in PROMPTS]  # 12 combinations, image groups of 2, long prompt cut
    res = scorer.score(items)
    s = sorted(min(len(scorer.tokenizer(p)["input_ids"]), 35) for p in PROMPTS)
    # images 0-1: 8 combinations sorted by length in batches of 2; image 2: 4 combinations
    assert text.rows == 12 and text.widths == [s[0], s[1], s[2], s[3], s[1], s[3]] and s[3] == 35
    expected = [official_imagereward(scorer, img, p) for img, p in items]
    assert np.max(np.abs(np.array([r.score for r in res]) - expected)) <= 1e-5
    assert [r.truncated for r in res[:4]] == [False, False, False, True]


# -- HPSv2: text positions after the longest prompt are left out ---------------------------------------------

def official_hps(scorer, image, prompt) -> float:
    """One item the open_clip way: all 77 text positions, pooled at the end token, cosine."""
    model = scorer.model
    ids = scorer.tokenizer([prompt])[0]
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=scorer.preprocess.batch([image])).pooler_output)
        hidden = model.text_model(input_ids=ids).last_hidden_state
        txt = model.text_projection(hidden[0, int(ids[0].argmax())])[None]
    return float(torch.nn.functional.cosine_similarity(img.double(), txt.double())[0])


def test_hpsv2_runs_the_text_tower_to_the_longest_prompt_only(tmp_path):
    scorer = get("scorers", "hpsv2")(**HPS_BUILDERS["hpsv2"](tmp_path), batch_size=4).load()
    text = counter(scorer.model.text_model)
    vision = counter(scorer.model.vision_model)
    a, b = pictures()[:2]
    items = [(reopened(img, tmp_path / f"{n}{k}.png"), p) for n, img in (("a", a), ("b", b))
             for k, p in enumerate(PROMPTS[:3])]
    res = scorer.score(items)
    counts = scorer.tokenizer(PROMPTS[:3])[1]
    assert vision.rows == 2 and text.rows == 3 and text.widths == [max(counts)] and max(counts) < 77
    expected = [official_hps(scorer, img, p) for img, p in items]
    assert np.max(np.abs(np.array([r.score for r in res]) - expected)) <= 1e-5


# -- the int8 mode: opt-in, in the record key, float heads kept, injected models untouched -------------------

def test_default_identity_is_unchanged_and_int8_changes_it(ir_opts):
    fp32 = get("scorers", "imagereward")(**ir_opts)
    assert set(fp32.identity()) == {"name", "version", "variant", "dtype", "weights"}
    int8 = get("scorers", "imagereward")(**ir_opts, quantize="int8")
    assert int8.identity() == {**fp32.identity(), "quantize": "int8"}


def test_int8_quantises_the_backbone_keeps_the_head_and_stays_close(ir_opts):
    fp32 = get("scorers", "imagereward")(**ir_opts).load()
    int8 = get("scorers", "imagereward")(**ir_opts, quantize="int8").load()
    quantised = torch.ao.nn.quantized.dynamic.Linear
    linears = [m for n, m in fp32.model.named_modules() if isinstance(m, torch.nn.Linear) and not n.startswith("mlp")]
    assert sum(isinstance(m, quantised) for m in int8.model.modules()) == len(linears)
    assert all(type(m) is torch.nn.Linear for m in int8.model.mlp.modules() if hasattr(m, "weight"))
    items = [(img, p) for img in pictures() for p in PROMPTS[:2]]
    a = np.array([r.score for r in fp32.score(items)])
    b = np.array([r.score for r in int8.score(items)])
    # 8-bit weights and activations: about 1% of the scores' spread here, never equal to fp32
    assert 0 < np.max(np.abs(a - b)) < 0.05 * np.ptp(a)


def test_int8_copies_an_injected_model_and_refuses_other_precisions(ir_opts):
    fp32 = get("scorers", "imagereward")(**ir_opts).load()
    before = fp32.identity()
    shared = get("scorers", "imagereward")(model=fp32.model, tokenizer=fp32.tokenizer, quantize="int8").load()
    assert all(type(m) is not torch.ao.nn.quantized.dynamic.Linear for m in fp32.model.modules())
    assert shared.model is not fp32.model and fp32.identity() == before
    assert shared.identity()["quantize"] == "int8"
    with pytest.raises(ConfigError, match="dtype: fp32"):
        get("scorers", "imagereward")(**ir_opts, quantize="int8", dtype="bf16")
    low = get("scorers", "imagereward")(model=copy.deepcopy(fp32.model).to(torch.bfloat16), tokenizer=fp32.tokenizer,
                                        quantize="int8")
    with pytest.raises(ConfigError, match="float32"):
        low.load()
    with pytest.raises(ConfigError, match="quantize 'int4'"):
        get("scorers", "imagereward")(**ir_opts, quantize="int4")
