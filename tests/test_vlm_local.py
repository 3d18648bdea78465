"""The local transformers VLM backend on tiny random-weight Qwen2-VL / Qwen2.5-VL / Qwen3-VL folders.

The reference is transformers' own pipeline, independent of ours: the official processor class
(``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor``) with the PIL image processor
(``Qwen2VLImageProcessorPil``) builds ``input_ids``, ``pixel_values``, ``image_grid_thw`` and
``mm_token_type_ids`` from the chat text, the model is loaded with ``from_pretrained`` in float32, and
the answer probabilities are a softmax computed here from ``model(**inputs).logits`` at the last
position -- one plain full forward per prompt. The processor classes also want a video processor,
which needs torchvision; the test subclass declares the image processor and tokenizer as its only
parts, so the official ``__call__`` (placeholder expansion, tokenisation, image processing) runs as is.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from aesthetic_audit.errors import ConfigError  # noqa: E402
from aesthetic_audit.scorers._weights import WeightsError  # noqa: E402
from aesthetic_audit.vlm import qwen  # noqa: E402
from aesthetic_audit.vlm.base import Prompt  # noqa: E402
from aesthetic_audit.vlm.local import LocalVLM  # noqa: E402
from tiny.qwen_vl import build, model_class  # noqa: E402

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
PROCESSORS = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}
ANSWERS = ("0", "1", "2")
DIMS = ["background", "clarity", "color aesthetic", "color brightness", "detail realism", "detail refinement",
        "emotion", "lighting distinction", "main object", "object pairing", "richness"]


def noise(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    return image if mode == "RGBA" else image.convert(mode)


# three sizes: each family resizes them to different grids, so one call mixes image-token counts
IMAGES = [noise(300, 200, 0), noise(256, 256, 1), noise(170, 330, 2)]


def image_first(image, dim):
    return Prompt((image, f"Rate the {dim} of this picture: 0 poor, 1 neutral, 2 good. Answer with one digit."))


def text_first(image, dim):  # the study's judge prompt shape: the question, then the image
    return Prompt((f"How would you rate the {dim} of the following image? Reply with one number.", image))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen_vl")
    return {family: build(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="module")
def backends(folders):
    return {family: LocalVLM(str(folder), device="cpu", dtype="fp32") for family, folder in folders.items()}


class Reference:
    """transformers' processor and model, run the plain way: one full forward per prompt."""

    def __init__(self, folder, family):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        official = getattr(transformers, PROCESSORS[family])

        class ImageOnly(official):  # see the module doc: no video processor without torchvision
            @classmethod
            def get_attributes(cls):
                return ["image_processor", "tokenizer"]

        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        template = (folder / "chat_template.jinja").read_text() if (folder / "chat_template.jinja").exists() else (
            json.loads((folder / "chat_template.json").read_text())["chat_template"]
            if (folder / "chat_template.json").exists() else tokenizer.chat_template)
        try:
            self.processor = ImageOnly(image_processor=Qwen2VLImageProcessorPil.from_pretrained(str(folder)),
                                       tokenizer=tokenizer, chat_template=template)
        except Exception as exc:  # a transformers release whose processor cannot run without torchvision
            pytest.skip(f"the official {PROCESSORS[family]} cannot be built here: {type(exc).__name__}: {exc}")
        self.model = model_class(family).from_pretrained(str(folder), dtype=torch.float32).eval()
        self.answer_ids = tokenizer.convert_tokens_to_ids(list(ANSWERS))

    def inputs(self, prompt: Prompt):
        content = [{"type": "image"} if isinstance(p, Image.Image) else {"type": "text", "text": p}
                   for p in prompt.parts]
        messages = ([{"role": "system", "content": prompt.system}] if prompt.system else []) + [
            {"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.processor(text=[text], images=prompt.images or None, return_tensors="pt")

    def logits(self, prompt: Prompt):
        with torch.no_grad():
            return self.model(**self.inputs(prompt)).logits[0, -1].double()

    def probs(self, prompt: Prompt) -> np.ndarray:
        return torch.softmax(self.logits(prompt)[self.answer_ids], dim=0).numpy()


@pytest.fixture(scope="module")
def reference(folders):
    """``reference(family)``: the family's Reference, built once per module."""
    built: dict[str, Reference] = {}

    def get(family: str) -> Reference:
        if family not in built:
            built[family] = Reference(folders[family], family)
        return built[family]

    return get


# -- preprocessing -----------------------------------------------------------------------------------
def test_smart_resize_rules_by_hand():
    # a 12 x 2000 sliver at factor 28, budget 3136..12845056: transformers rounds the short side to 0,
    # falls under the budget and scales up by sqrt(3136 / 24000) = 0.3615 -> 28 x ceil(25.82) * 28 = 728;
    # qwen-vl-utils keeps one factor (28) when rounding, and 28 x 1988 is within the budget.
    assert qwen.smart_resize(12, 2000, 28, 3136, 12845056) == (28, 728)
    assert qwen.smart_resize(12, 2000, 28, 3136, 12845056, rule="qwen-vl-utils") == (28, 1988)
    # 512 x 512 at Qwen3-VL's factor 32 and budget 65536..16777216 stays 512 x 512 (256 image tokens)
    assert qwen.smart_resize(512, 512, 32, 65536, 16777216) == (512, 512)
    with pytest.raises(ValueError, match="aspect ratio"):
        qwen.smart_resize(10, 2500, 28, 3136, 12845056)


def test_smart_resize_equals_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    rng = np.random.default_rng(0)
    for h, w in rng.integers(20, 3000, (300, 2)):
        for factor, low, high in ((28, 3136, 12845056), (32, 65536, 16777216), (28, 200704, 200704)):
            if max(h, w) / min(h, w) <= 200:
                assert qwen.smart_resize(int(h), int(w), factor, low, high) == smart_resize(int(h), int(w), factor,
                                                                                            low, high)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_patches_equal_the_transformers_image_processor(folders, family):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil.from_pretrained(str(folders[family]))
    ours = qwen.QwenVLPreprocess.from_config(json.loads((folders[family] / "preprocessor_config.json").read_text()))
    for image in IMAGES + [noise(97, 41, 3, "L"), noise(120, 90, 4, "RGBA")]:  # grey; transparency on white
        ref = processor(images=[image], return_tensors="np")
        patches, grid = ours.pil(image)
        assert grid == tuple(ref["image_grid_thw"][0])
        np.testing.assert_allclose(patches, ref["pixel_values"], rtol=0, atol=1e-6)


def test_pixel_budget_from_either_config_style_and_overrides():
    old = qwen.QwenVLPreprocess.from_config({"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14})
    new = qwen.QwenVLPreprocess.from_config({"size": {"shortest_edge": 65536, "longest_edge": 16777216},
                                             "patch_size": 16, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    assert (old.min_pixels, old.max_pixels, old.factor) == (3136, 12845056, 28)
    assert (new.min_pixels, new.max_pixels, new.factor, new.mean) == (65536, 16777216, 32, (0.5, 0.5, 0.5))
    small = qwen.QwenVLPreprocess.from_config({"size": {"shortest_edge": 65536, "longest_edge": 16777216},
                                               "patch_size": 16}, min_pixels=1024, max_pixels=128 * 128)
    assert small.pil(noise(512, 512, 0))[1] == (1, 8, 8)  # 512^2 over 128^2 pixels -> 128 x 128
    with pytest.raises(ConfigError, match="resample"):
        qwen.QwenVLPreprocess.from_config({"resample": 2})


def test_mrope_positions_hand_values():
    # text x2, an image on a 2 x 3 merged grid (patch grid 4 x 6, merge 2), text x2
    ids = [5, 6] + [9] * 6 + [7, 8]
    pos = qwen.mrope_positions(ids, 9, [(1, 4, 6)], 2)
    assert pos[:, :2].tolist() == [[0, 1]] * 3
    assert pos[0, 2:8].tolist() == [2] * 6
    assert pos[1, 2:8].tolist() == [2, 2, 2, 3, 3, 3]
    assert pos[2, 2:8].tolist() == [2, 3, 4, 2, 3, 4]
    assert pos[:, 8:].tolist() == [[5, 6]] * 3  # 2 + max(2, 3)


# -- inputs as the official processor builds them ------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_tokens_and_positions_equal_the_official_processor(backends, reference, family):
    ref = reference(family)
    vlm = backends[family]
    vlm.load()
    prompts = [image_first(IMAGES[0], "clarity"), text_first(IMAGES[2], "emotion"),
               Prompt(("First ", IMAGES[1], " then ", IMAGES[0], " which is better?"), system="Be brief."),
               Prompt(("no image at all",))]
    rows, errors, _ = vlm._prepare(prompts)
    assert errors == {}
    for prompt, row in zip(prompts, rows):
        inputs = ref.inputs(prompt)
        assert row.ids == inputs["input_ids"][0].tolist()
        positions, _ = ref.model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                      image_grid_thw=inputs.get("image_grid_thw"))
        if prompt.images:  # (text-only prompts get plain positions from the model itself)
            np.testing.assert_array_equal(row.positions, positions[:, 0].numpy())


# -- (a) answer probabilities are the model's own -------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_answer_probs_are_a_softmax_of_the_models_logits(backends, reference, family):
    ref = reference(family)
    prompts = [image_first(IMAGES[0], "clarity"), text_first(IMAGES[1], "richness"),
               Prompt(("Is it good?", IMAGES[2]), system="You judge pictures.")]
    results = backends[family].answer_probs(prompts, ANSWERS)
    for prompt, res in zip(prompts, results):
        assert res.ok and res.answers == ANSWERS and res.tokens == ANSWERS
        logits = ref.logits(prompt)[ref.answer_ids]
        expected = torch.softmax(logits, dim=0).numpy()
        np.testing.assert_allclose(res.probs, expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(res.logits, logits.numpy(), rtol=0, atol=1e-4)
        assert sum(res.probs) == pytest.approx(1.0, abs=1e-12)


# -- (b) shared prefixes and batching give the separate forwards' answers -------------------------------
@pytest.mark.parametrize("template", [image_first, text_first], ids=["image-first", "text-first"])
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_eleven_dimensions_equal_eleven_full_forwards(backends, reference, family, template):
    ref = reference(family)
    prompts = [template(image, dim) for image in IMAGES for dim in DIMS]  # D = 11 per image, three sizes
    got = np.array([r.probs for r in backends[family].answer_probs(prompts, ANSWERS)])
    expected = np.array([ref.probs(p) for p in prompts])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.ptp(expected, axis=0).max() > 0.05  # the tiny model tells the questions apart


def test_batch_size_and_call_composition_do_not_change_answers(backends):
    vlm = backends["qwen3_vl"]
    prompts = [image_first(IMAGES[k % 3], DIMS[k]) for k in range(11)] + [text_first(IMAGES[1], "emotion")]
    together = np.array([r.probs for r in vlm.answer_probs(prompts, ANSWERS)])
    one_row = LocalVLM(vlm.model_option, device="cpu", dtype="fp32", batch_size=1)
    alone = np.array([one_row.answer_probs([p], ANSWERS)[0].probs for p in prompts])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)


# -- (c) the vision tower and the prefix run once per image ---------------------------------------------
class Counter:
    def __init__(self, vlm):
        self.vlm, self.images, self.vision_calls, self.image_tokens, self.calls = vlm, 0, 0, 0, []

    def __enter__(self):
        inner = self.vlm.model.model
        lm = inner.language_model

        def vision(module, args, kwargs, out):
            self.vision_calls += 1
            self.images += int(kwargs["grid_thw"].shape[0])

        def embed(module, args, out):
            self.image_tokens += int((args[0] == self.vlm.model.config.image_token_id).sum())

        def decoder(module, args, kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = cache.get_seq_length() if cache is not None else 0
            self.calls.append((int(kwargs["inputs_embeds"].shape[0]), past))

        self.hooks = [inner.visual.register_forward_hook(vision, with_kwargs=True),
                      lm.embed_tokens.register_forward_hook(embed),
                      lm.register_forward_pre_hook(decoder, with_kwargs=True)]
        return self

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_vision_once_per_image_and_prefix_once_per_image(backends, reference, family):
    ref = reference(family)
    vlm = backends[family]
    tokens = [int(ref.inputs(Prompt((im,)))["image_grid_thw"].prod()) // 4 for im in IMAGES]  # per image
    with Counter(vlm) as seen:
        assert all(r.ok for r in vlm.answer_probs([image_first(im, d) for im in IMAGES for d in DIMS], ANSWERS))
    assert (seen.vision_calls, seen.images) == (1, 3)
    assert seen.image_tokens == sum(tokens)  # each image's tokens went through the decoder once
    assert [rows for rows, past in seen.calls if past == 0] == [3]  # one forward: the three image prefixes
    assert sum(rows for rows, past in seen.calls if past > 0) == 33  # then only the 11 x 3 suffixes

    with Counter(vlm) as seen:  # text first: the rows part before the image
        assert all(r.ok for r in vlm.answer_probs([text_first(im, d) for im in IMAGES for d in DIMS], ANSWERS))
    assert (seen.vision_calls, seen.images) == (1, 3)  # features computed once, reused by all 33 rows
    assert seen.image_tokens == 11 * sum(tokens)
    assert [rows for rows, past in seen.calls if past == 0] == [3]  # the shared opening text, once per image
    assert sum(rows for rows, past in seen.calls if past > 0) == 33


# -- (d) a bad item fails alone --------------------------------------------------------------------------
def test_bad_images_and_prompts_fail_only_their_own_items(backends):
    vlm = backends["qwen3_vl"]
    buffer = io.BytesIO()
    IMAGES[0].save(buffer, format="PNG")
    truncated = Image.open(io.BytesIO(buffer.getvalue()[:400]))  # decoding fails on first use
    sliver = noise(2500, 10, 5)  # aspect ratio 250 > 200
    prompts = [image_first(truncated, "clarity"), image_first(IMAGES[1], "clarity"), text_first(sliver, "emotion"),
               Prompt(("a text that smuggles <|image_pad|> in", IMAGES[1])), text_first(IMAGES[2], "emotion"),
               Prompt((IMAGES[1], truncated, "compare"))]
    results = vlm.answer_probs(prompts, ANSWERS)
    assert "image preprocessing failed" in results[0].error and results[0].probs is None
    assert "aspect ratio" in results[2].error
    assert "image tokens" in results[3].error
    assert "image preprocessing failed" in results[5].error
    for k in (1, 4):
        assert results[k].ok
        np.testing.assert_allclose(results[k].probs, vlm.answer_probs([prompts[k]], ANSWERS)[0].probs, atol=1e-6)
    replies = vlm.generate([prompts[2], prompts[1]], max_tokens=3)
    assert "aspect ratio" in replies[0].error and replies[1].ok


# -- (e) generation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_greedy_generation_equals_transformers_generate(backends, reference, family):
    ref = reference(family)
    vlm = backends[family]
    prompts = [Prompt((IMAGES[0], "Which is better, A or B? Reply in JSON.")), text_first(IMAGES[2], "clarity")]
    replies = vlm.generate(prompts, max_tokens=12)
    assert all(r.ok and r.text for r in replies)
    assert [r.text for r in vlm.generate(prompts, max_tokens=12)] == [r.text for r in replies]  # deterministic
    for prompt, reply in zip(prompts, replies):  # batched rows of different lengths equal HF's one-by-one
        inputs = ref.inputs(prompt)
        with torch.no_grad():
            out = ref.model.generate(**inputs, do_sample=False, max_new_tokens=12)
        new = out[0, inputs["input_ids"].shape[1]:]
        assert reply.text == ref.processor.tokenizer.decode(new, skip_special_tokens=True)


def test_sampling_is_seeded_per_prompt(backends):
    vlm = backends["qwen3_vl"]
    prompts = [text_first(IMAGES[k], "richness") for k in range(3)]
    first = [r.text for r in vlm.generate(prompts, max_tokens=8, temperature=1.0, seed=7)]
    assert [r.text for r in vlm.generate(prompts, max_tokens=8, temperature=1.0, seed=7)] == first
    assert [r.text for r in vlm.generate(prompts, max_tokens=8, temperature=1.0, seed=8)] != first
    assert vlm.generate(prompts[:1], max_tokens=8, temperature=1.0, seed=7)[0].text == first[0]


# -- settings, files and identity -------------------------------------------------------------------------
def test_answers_must_be_single_tokens(backends):
    vlm = backends["qwen2_vl"]
    with pytest.raises(ConfigError, match="'10'"):
        vlm.answer_probs([image_first(IMAGES[0], "clarity")], ("0", "10"))
    yes_no = vlm.answer_probs([image_first(IMAGES[0], "clarity")], ("Yes", "No"))[0]  # the checklist answers
    assert yes_no.ok and yes_no.tokens == ("Yes", "No")


def test_unsupported_model_type_is_named(folders, tmp_path):
    folder = tmp_path / "llava"
    shutil.copytree(folders["qwen2_vl"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
    vlm = LocalVLM(str(folder), device="cpu")
    with pytest.raises(ConfigError, match="'llava'.*qwen2_vl, qwen2_5_vl, qwen3_vl"):
        vlm.answer_probs([image_first(IMAGES[0], "clarity")], ANSWERS)


def test_missing_template_and_files_are_named(folders, tmp_path):
    folder = tmp_path / "no_template"
    shutil.copytree(folders["qwen3_vl"], folder)
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(ConfigError, match="no chat template"):
        LocalVLM(str(folder), device="cpu").load()
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(WeightsError, match="preprocessor_config.json"):
        LocalVLM(str(folder), device="cpu").identity()
    with pytest.raises(ConfigError, match="no such folder"):
        LocalVLM(str(tmp_path / "absent"), device="cpu").identity()


def test_weights_only_folder_with_a_processor_folder(folders, backends, tmp_path):
    """The study's judge: weights from a fine-tune, tokenizer / template / preprocessor from the base."""
    weights = tmp_path / "finetune"
    weights.mkdir()
    for path in folders["qwen3_vl"].iterdir():
        if path.name.startswith("model") or path.name in ("config.json", "generation_config.json"):
            shutil.copy(path, weights / path.name)
    with pytest.raises(WeightsError, match="processor="):
        LocalVLM(str(weights), device="cpu").identity()
    split = LocalVLM(str(weights), processor=str(folders["qwen3_vl"]), device="cpu", dtype="fp32")
    prompts = [text_first(IMAGES[0], "clarity")]
    np.testing.assert_allclose(split.answer_probs(prompts, ANSWERS)[0].probs,
                               backends["qwen3_vl"].answer_probs(prompts, ANSWERS)[0].probs, atol=1e-7)
    assert split.identity()["files"] == backends["qwen3_vl"].identity()["files"]  # same bytes, same roles


def test_identity_hashes_every_file_read_and_not_the_device(folders):
    folder = folders["qwen3_vl"]
    vlm = LocalVLM(str(folder), device="cpu", dtype="fp32")
    ident = vlm.identity()
    assert vlm.model is None  # identified without loading
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    expected = {f"model/{name}" for name in ["config.json", "model.safetensors.index.json", "generation_config.json",
                                              *shards]}
    expected |= {f"processor/{name}" for name in ["tokenizer.json", "vocab.json", "merges.txt",
                                                  "tokenizer_config.json", "chat_template.jinja",
                                                  "preprocessor_config.json"]}
    assert set(ident["files"]) == expected
    assert ident["files"]["model/config.json"] == hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    assert (ident["model_type"], ident["dtype"], ident["min_pixels"], ident["max_pixels"]) == (
        "qwen3_vl", "fp32", 65536, 16777216)
    assert "cpu" not in json.dumps(ident) and str(folder) not in json.dumps(ident)
    other = LocalVLM(str(folder), device="cpu", dtype="bf16", max_pixels=256 * 256).identity()
    assert (other["dtype"], other["max_pixels"]) == ("bf16", 65536)


def test_pixel_budget_override_changes_the_image_tokens(folders):
    small = LocalVLM(str(folders["qwen3_vl"]), device="cpu", min_pixels=32 * 32, max_pixels=64 * 64)
    small.load()
    rows, _, _ = small._prepare([image_first(IMAGES[1], "clarity")])
    assert rows[0].ids.count(small.image_id) == 4  # 256 x 256 over a 64 x 64 budget: 4 x 4 patches, 2 x 2 merged


def test_a_hub_id_is_resolved_when_used_not_when_built(monkeypatch):
    vlm = LocalVLM("someone/judge-model", device="cpu")  # builds without asking the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="someone/judge-model.*hf download someone/judge-model"):
        vlm.identity()


def test_bad_options_are_config_errors():
    for options in ({"dtype": "int8"}, {"batch_size": 0}, {"device": "tpu"}, {"min_pixels": 10, "max_pixels": 5}):
        with pytest.raises(ConfigError):
            LocalVLM("some/model", **options)


def test_old_transformers_is_refused_in_one_line(folders, monkeypatch):
    monkeypatch.setattr("transformers.__version__", "4.56.2")  # the module object now in sys.modules
    with pytest.raises(ConfigError, match=r"transformers >= 4\.57 \(found 4\.56\.2\)"):
        LocalVLM(str(folders["qwen2_vl"]), device="cpu").load()
