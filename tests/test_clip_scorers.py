"""CLIP-family scorers (clip, pickscore, laion-aesthetic) on tiny checkpoints written in the hub layouts.

The reference for every score is computed here without the scorers' helpers: pixels from a numpy/PIL
preprocessing written below (checked against transformers' own PIL CLIP image processor), token ids
from a hand-written CLIP BPE, features from a CLIPModel that transformers' from_pretrained reads from the
same folder, and the aesthetic head applied by hand in numpy.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from aesthetic_audit.errors import ConfigError  # noqa: E402
from aesthetic_audit.registry import get  # noqa: E402
from aesthetic_audit.scorers._weights import WeightsError  # noqa: E402
from tiny.clip import (BUILDERS, HEAD_FILE, IMAGE_SIZE, OPENAI_MEAN, OPENAI_STD, build_clip,  # noqa: E402
                       byte_symbols, write_preprocessor)

LONG = " ".join(["a grainy washed out photo of the empty background with harsh light and red sky"] * 8)
PROMPTS = ["a blurry photo of a cat", "A  DARK painting of the dog!", LONG, "x7 cat's sky"]


def _images() -> list[Image.Image]:
    """Sizes that need no resize, a down- and an up-scale, and crops whose offset rounds differently."""
    rng = np.random.default_rng(0)
    sizes = [(35, 32), (32, 32), (47, 61), (20, 27), (80, 33)]
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    y, x = np.mgrid[0:45, 0:39]
    out.append(Image.fromarray(np.stack([x * 6, y * 5, (x + y) * 3], -1).astype(np.uint8)))
    return out


# -- independent references -------------------------------------------------------------------------
def ref_pixels(image: Image.Image, *, size=IMAGE_SIZE, mean=OPENAI_MEAN, std=OPENAI_STD, offset="floor"):
    """Short side to `size` (PIL bicubic), centre crop (floor: transformers; round: torchvision), normalise."""
    img = image.convert("RGB")
    w, h = img.size
    short = min(w, h)
    new = (size, h * size // w) if w == short else (w * size // h, size)
    if new != (w, h):
        img = img.resize(new, Image.BICUBIC)
    w, h = img.size
    if offset == "floor":
        left, top = (w - size) // 2, (h - size) // 2
    else:
        left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
    arr = np.array(img.crop((left, top, left + size, top + size)), dtype=np.float64) / 255.0
    arr = (arr - np.array(mean)) / np.array(std)
    return torch.tensor(arr.transpose(2, 0, 1), dtype=torch.float32)


def ref_token_ids(text: str, folder) -> list[int]:
    """CLIP BPE by hand: clean whitespace, lower, split words, byte symbols with </w>, merge by rank."""
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    rank = {tuple(line.split()): i for i, line in enumerate(lines) if line}
    symbol = byte_symbols()
    text = " ".join(text.split()).lower()
    ids = [vocab["<|startoftext|>"]]
    for word in re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+", text):
        parts = [symbol[b] for b in word.encode("utf-8")]
        parts[-1] += "</w>"
        while len(parts) > 1:
            pairs = [(rank.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, i = min(pairs)
            if best == 1 << 30:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids += [vocab[p] for p in parts]
    return ids + [vocab["<|endoftext|>"]]


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def ref_clip_embeddings(folder, images, prompts, tok_folder=None, offset="floor", mean=OPENAI_MEAN,
                        std=OPENAI_STD):
    """Unit image/text embeddings and logit scale of transformers' own load of the folder; 77-token cut."""
    model = transformers.CLIPModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        px = torch.stack([ref_pixels(im, offset=offset, mean=mean, std=std) for im in images])
        img = _features(model.get_image_features(pixel_values=px)).double()
        txt = []
        for p in prompts or []:
            ids = ref_token_ids(p, tok_folder or folder)
            ids = ids[:76] + ids[-1:] if len(ids) > 77 else ids
            txt.append(_features(model.get_text_features(input_ids=torch.tensor([ids]))).double()[0])
    img = img / img.norm(dim=-1, keepdim=True)
    txt = torch.stack(txt) / torch.stack(txt).norm(dim=-1, keepdim=True) if txt else None
    return img, txt, float(model.logit_scale.detach().exp())


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("clipzoo")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def clip(built):
    return get("scorers", "clip")(**built["clip"], batch_size=4).load()


def _grid(images, prompts):
    return [(im, p) for im in images for p in prompts]


# -- numbers against the references -------------------------------------------------------------------
def test_clip_is_100_cos_of_independent_embeddings(built, clip):
    images = _images()
    results = clip.score(_grid(images, PROMPTS))
    img, txt, _ = ref_clip_embeddings(Path(built["clip"]["weights"]), images, PROMPTS)
    # cosines to 1e-6: float32 rounding of 100 * cos alone is ~1e-5
    np.testing.assert_allclose(np.array([r.score for r in results]) / 100, (img @ txt.T).flatten().numpy(),
                               rtol=0, atol=1e-6)
    assert all(r.ok for r in results) and clip.max_prompt_tokens == 77


def test_pickscore_is_logit_scale_times_cos_with_the_second_repos_processor(built):
    opts = built["pickscore"]
    scorer = get("scorers", "pickscore")(**opts)
    images = _images()[:4]
    results = scorer.score(_grid(images, PROMPTS))
    img, txt, scale = ref_clip_embeddings(Path(opts["weights"]), images, PROMPTS,
                                          tok_folder=Path(opts["processor_weights"]))
    assert scale == pytest.approx(np.exp(4.1), rel=1e-6)  # read from the checkpoint, not assumed 100
    np.testing.assert_allclose(np.array([r.score for r in results]) / scale, (img @ txt.T).flatten().numpy(),
                               rtol=0, atol=1e-6)


def test_laion_aesthetic_is_the_head_by_hand_on_the_normalised_embedding(built):
    opts = built["laion-aesthetic"]
    scorer = get("scorers", "laion-aesthetic")(**opts)
    images = _images()
    results = scorer.score([(im, None) for im in images])
    img, _, _ = ref_clip_embeddings(Path(opts["clip_weights"]), images, None, offset="round")
    state = torch.load(Path(opts["weights"]) / HEAD_FILE, weights_only=True)
    x = img.numpy()
    for i in (0, 2, 4, 6, 7):  # Linear layers; the dropouts between them do nothing at inference
        x = x @ state[f"layers.{i}.weight"].double().numpy().T + state[f"layers.{i}.bias"].double().numpy()
    np.testing.assert_allclose([r.score for r in results], x[:, 0], rtol=0, atol=1e-5)
    assert all(r.tokens is None for r in results) and np.ptp([r.score for r in results]) > 0.01


def test_clip_preprocessing_equals_transformers_pil_processor(built, clip, tmp_path):
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    folder = Path(built["clip"]["weights"])
    proc = cls.from_pretrained(str(folder))
    for im in _images():
        hf = proc(images=[im], return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(clip.preprocess.pil(im), hf, rtol=0, atol=1e-6)
        np.testing.assert_allclose(clip.preprocess.pil(im), ref_pixels(im).numpy(), rtol=0, atol=1e-6)
    # (35, 32): offset 1.5 -> transformers 1, torchvision 2; the CLIP repos' processors use the former
    assert not np.allclose(ref_pixels(_images()[0]).numpy(), ref_pixels(_images()[0], offset="round").numpy())
    # mean/std/size are read from the file, in either config style
    custom = tmp_path / "custom"
    shutil.copytree(folder, custom)
    write_preprocessor(custom, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    cfg = json.loads((custom / "preprocessor_config.json").read_text())
    cfg.update(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    (custom / "preprocessor_config.json").write_text(json.dumps(cfg))
    scorer = get("scorers", "clip")(weights=str(custom)).load()
    im = _images()[2]
    np.testing.assert_allclose(scorer.preprocess.pil(im), cls.from_pretrained(str(custom))(
        images=[im], return_tensors="np")["pixel_values"][0], rtol=0, atol=1e-6)


def test_laion_preprocessing_is_the_clip_packages_torchvision_crop(built):
    scorer = get("scorers", "laion-aesthetic")(**built["laion-aesthetic"]).load()
    for im in _images():
        np.testing.assert_allclose(scorer.preprocess.pil(im), ref_pixels(im, offset="round").numpy(),
                                   rtol=0, atol=1e-6)


# -- tokens ---------------------------------------------------------------------------------------------
def test_token_counts_and_truncation_match_a_hand_written_bpe(built, clip):
    folder = Path(built["clip"]["weights"])
    image = _images()[1]
    results = clip.score([(image, p) for p in PROMPTS])
    for prompt, res in zip(PROMPTS, results):
        ids = ref_token_ids(prompt, folder)
        assert clip.tokenizer(prompt)["input_ids"] == ids
        assert res.tokens == len(ids) and res.truncated is (len(ids) > 77)
    assert results[2].tokens > 77 and results[2].truncated and not results[0].truncated
    # the cut keeps the start token, the first 75 tokens and the end token, like truncation=True
    hf = clip.tokenizer([LONG], truncation=True, max_length=77)["input_ids"][0]
    ids = ref_token_ids(LONG, folder)
    assert hf == ids[:76] + ids[-1:] and len(hf) == 77


# -- reuse, batching, failures ------------------------------------------------------------------------
def _count_rows(model, method, counts, key, monkeypatch):
    original = getattr(model, method)

    def counted(**kwargs):
        counts[key] += len(next(iter(kwargs.values())))
        return original(**kwargs)

    monkeypatch.setattr(model, method, counted)


def test_four_combinations_encode_two_images_and_two_prompts(built, monkeypatch):
    for name in ("clip", "pickscore"):
        scorer = get("scorers", name)(**built[name]).load()
        counts = {"image": 0, "text": 0}
        _count_rows(scorer.model, "get_image_features", counts, "image", monkeypatch)
        _count_rows(scorer.model, "get_text_features", counts, "text", monkeypatch)
        i_o, i_a = _images()[:2]
        p_o, p_a = "a photo of a cat", "a blurry dark photo of a cat"
        results = scorer.score([(i_o, p_o), (i_o, p_a), (i_a, p_o), (i_a, p_a)])
        assert all(r.ok for r in results) and counts == {"image": 2, "text": 2}
    scorer = get("scorers", "laion-aesthetic")(**built["laion-aesthetic"]).load()
    counts = {"image": 0}
    _count_rows(scorer.model, "forward", counts, "image", monkeypatch)
    results = scorer.score([(i_o, None), (i_a, None), (i_o, None), (i_a, None)])
    assert counts["image"] == 2 and results[0].score == results[2].score


@pytest.mark.parametrize("name", ["clip", "pickscore", "laion-aesthetic"])
def test_batched_equals_one_at_a_time(built, name):
    scorer = get("scorers", name)(**built[name], batch_size=3)
    items = _grid(_images()[:4], PROMPTS[:3] if scorer.prompt_aware else [None])
    batched = scorer.score(items)
    single = [scorer.score([it])[0] for it in items]
    # batch composition changes float32 summation order only: relative differences ~3e-7
    np.testing.assert_allclose([r.score for r in batched], [r.score for r in single], rtol=1e-6, atol=1e-5)
    assert [r.tokens for r in batched] == [r.tokens for r in single]


@pytest.mark.parametrize("name", ["clip", "pickscore", "laion-aesthetic"])
def test_a_bad_item_fails_alone(built, name):
    scorer = get("scorers", name)(**built[name])
    good = _images()[0]
    empty = Image.new("RGB", (0, 8))  # decodes, but its resize divides by a zero width inside the model step
    results = scorer.score([(None, "a cat"), (good, "a cat"), (good, ""), (empty, "a cat"), (good, "a cat")])
    assert results[0].error and results[0].score is None
    assert results[3].score is None and "ZeroDivisionError" in results[3].error
    assert results[1].ok and results[4].ok and results[1].score == pytest.approx(results[4].score, abs=1e-6)
    assert results[1].score == pytest.approx(scorer.score([(good, "a cat")])[0].score, abs=1e-6)
    if scorer.prompt_aware:
        assert results[2].error == "empty prompt"
        assert results[1].tokens == scorer.score([(good, "a cat")])[0].tokens
    else:
        assert results[2].ok  # a prompt-blind scorer does not need one


# -- files ----------------------------------------------------------------------------------------------
def test_pickle_checkpoints_need_the_opt_in(built, clip, tmp_path):
    opts = build_clip(tmp_path, pickle=True)
    item = [(_images()[2], "a red sky")]
    with pytest.raises(WeightsError, match="pytorch_model.bin.*allow_pickle"):
        get("scorers", "clip")(**opts).score(item)
    assert get("scorers", "clip")(**opts, allow_pickle=True).score(item)[0].score == pytest.approx(
        clip.score(item)[0].score, abs=1e-5)
    head = built["laion-aesthetic"]
    with pytest.raises(WeightsError, match="linearMSE.pth.*allow_pickle"):
        get("scorers", "laion-aesthetic")(**{**head, "allow_pickle": False}).load()


def test_a_safetensors_head_loads_without_pickles(built, tmp_path):
    from safetensors.torch import save_file

    head = built["laion-aesthetic"]
    state = torch.load(Path(head["weights"]) / HEAD_FILE, weights_only=True)
    converted = tmp_path / "sac+logos+ava1-l14-linearMSE.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(converted))
    items = [(im, None) for im in _images()[:3]]
    expected = [r.score for r in get("scorers", "laion-aesthetic")(**head).score(items)]
    for weights in (converted, tmp_path):  # the file itself, or a folder holding it
        scorer = get("scorers", "laion-aesthetic")(weights=str(weights), clip_weights=head["clip_weights"])
        assert [r.score for r in scorer.score(items)] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("missing", ["model.safetensors", "merges.txt", "config.json"])
def test_a_missing_file_is_named(built, tmp_path, missing):
    folder = tmp_path / "clip"
    shutil.copytree(Path(built["clip"]["weights"]), folder)
    (folder / missing).unlink()
    with pytest.raises(WeightsError, match=re.escape(missing)):
        get("scorers", "clip")(weights=str(folder)).load()


def test_a_missing_head_is_named(built, tmp_path):
    with pytest.raises(WeightsError, match=re.escape(HEAD_FILE)):
        get("scorers", "laion-aesthetic")(**{**built["laion-aesthetic"], "weights": str(tmp_path)}).load()


def test_identity_hashes_every_source_without_loading(built):
    import hashlib
    for name, expected in (("pickscore", ["config.json", "model.safetensors", "vocab.json", "merges.txt",
                                          "preprocessor_config.json"]),
                           ("laion-aesthetic", [HEAD_FILE, "config.json", "model.safetensors"])):
        scorer = get("scorers", name)(**built[name])
        ident = scorer.identity()
        assert scorer.model is None and not scorer._loaded
        assert [Path(k).name for k in ident["weights"]] == expected
        files = {Path(v["path"]).name: v["path"] for v in scorer.weights_manifest().values()}
        for key, digest in ident["weights"].items():
            assert hashlib.sha256(Path(files[Path(key).name]).read_bytes()).hexdigest() == digest
    # keyed by role and file name, not by where the files sit or which repo they came from, so moving them
    # (or reading them from the hub cache or a mirror) keeps the record keys
    roles = {str(Path(k).parent) for k in get("scorers", "pickscore")(**built["pickscore"]).identity()["weights"]}
    assert roles == {"model", "tokenizer", "processor"}


def test_default_sources_are_the_pinned_official_repos():
    files = [(s.repo, s.revision, f) for s, f in get("scorers", "pickscore")().weight_files()]
    assert files == [("yuvalkirstain/PickScore_v1", "dc2ed378e35ed7046987c680120123faa75b4559", "config.json"),
                     ("yuvalkirstain/PickScore_v1", "dc2ed378e35ed7046987c680120123faa75b4559", "model.safetensors"),
                     *[("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "94a64189c3535c1cb44acfcccd7b0908c1c8eb23", f)
                       for f in ("vocab.json", "merges.txt", "preprocessor_config.json")]]
    files = [(s.repo, f) for s, f in get("scorers", "laion-aesthetic")().weight_files()]
    assert files == [("camenduru/improved-aesthetic-predictor", HEAD_FILE),
                     ("openai/clip-vit-large-patch14", "config.json"),
                     ("openai/clip-vit-large-patch14", "model.safetensors")]
    clip = get("scorers", "clip")(repo="openai/clip-vit-base-patch32")
    assert clip.model_source().repo == "openai/clip-vit-base-patch32" and clip.model_source().revision is None
    assert get("scorers", "clip")().model_source().revision == "32bd64288804d66eefd0ccbe215aa642df71cc41"


def test_an_offline_cache_miss_names_the_repo_and_file(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine has
    with pytest.raises(WeightsError, match=r"openai/clip-vit-large-patch14@32bd6428\w+: config\.json, "
                                           r"model\.safetensors, vocab\.json, merges\.txt, preprocessor_config\.json "
                                           r"\(hub access is off: the scorer's offline option\)"):
        get("scorers", "clip")(offline=True).load()


# -- sharing and the training-loop path ---------------------------------------------------------------
def test_the_aesthetic_head_can_share_the_clip_scorers_backbone(built, clip):
    head = built["laion-aesthetic"]  # its backbone folder holds the same weights as the clip folder
    items = [(im, None) for im in _images()]
    shared = get("scorers", "laion-aesthetic")(**head, model=clip.model)
    own = get("scorers", "laion-aesthetic")(**head)
    assert [r.score for r in shared.score(items)] == pytest.approx([r.score for r in own.score(items)], abs=1e-6)
    assert "injected" in shared.identity()["weights"] and any(HEAD_FILE in k for k in shared.identity()["weights"])


def test_a_tensor_batch_gives_a_differentiable_score(clip):
    image = _images()[1]  # 32 x 32: no resize, so the tensor path sees the same pixels as the PIL one
    x = torch.tensor(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].requires_grad_(True)
    score = clip(x, ["a photo of a cat"])
    score.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert float(score[0].detach()) == pytest.approx(clip.score([(image, "a photo of a cat")])[0].score, abs=1e-4)


def test_a_shared_backbone_is_never_cast_and_its_identity_is_stable(built, clip):
    head = built["laion-aesthetic"]
    before = {p.dtype for p in clip.model.parameters()}
    with pytest.raises(ConfigError, match="injected model is fp32 but dtype=bf16"):
        get("scorers", "laion-aesthetic")(**head, model=clip.model, dtype="bf16")
    shared = get("scorers", "laion-aesthetic")(**head, model=clip.model)
    ident = shared.identity()
    assert ident["dtype"] == "fp32"
    shared.score([(_images()[0], None)])
    assert {p.dtype for p in clip.model.parameters()} == before == {torch.float32}
    assert shared.identity() == ident
    elsewhere = "cpu" if clip.model.device.type != "cpu" else "cuda"
    with pytest.raises(ConfigError, match=f"injected model is on {clip.model.device.type}.* but device={elsewhere}"):
        get("scorers", "laion-aesthetic")(**head, model=clip.model, device=elsewhere).load()


def test_an_injected_bf16_model_runs_as_it_is_with_a_stable_identity(built, clip):
    import copy

    model = copy.deepcopy(clip.model).to(torch.bfloat16)
    scorer = get("scorers", "clip")(**built["clip"], model=model)
    ident = scorer.identity()
    assert ident["dtype"] == "bf16" and "injected" in ident["weights"]
    assert get("scorers", "clip")(**built["clip"], model=model, dtype="bfloat16").identity() == ident
    items = _grid(_images()[:2], PROMPTS[:2])
    low = scorer.score(items)
    assert scorer.identity() == ident  # loading and scoring do not change the record key
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    # bf16 rounding of a random tiny model: ~0.3 on the x100 scale
    assert [r.score for r in low] == pytest.approx([r.score for r in clip.score(items)], abs=1.0)


def test_equivalent_dtype_names_give_one_identity(built):
    def ident(dtype):
        return get("scorers", "clip")(**built["clip"], dtype=dtype).identity()

    assert ident("bfloat16") == ident("bf16") and ident("bf16")["dtype"] == "bf16"
    assert ident("float32") == ident("fp32") == ident(None) and ident(None)["dtype"] == "fp32"
    assert ident("float16") == ident("fp16") != ident("fp32")
    with pytest.raises(ConfigError, match="dtype 'int8'"):
        ident("int8")


def test_injected_parts_are_in_the_identity_and_replace_only_their_files(built, clip):
    opts = built["clip"]
    files = get("scorers", "clip")(**opts).identity()["weights"]
    assert set(files) == {"model/config.json", "model/model.safetensors", "tokenizer/vocab.json",
                          "tokenizer/merges.txt", "processor/preprocessor_config.json"}
    shared = get("scorers", "clip")(**opts, model=clip.model).identity()
    # the tokenizer and preprocessor files are still read, so still hashed
    assert {k: v for k, v in shared["weights"].items() if k != "injected"} == {
        k: v for k, v in files.items() if not k.startswith("model/")}
    everything = get("scorers", "clip")(**opts, model=clip.model, tokenizer=clip.tokenizer,
                                        processor=clip.preprocess).identity()
    assert set(everything["weights"]) == {"injected"}  # no unused hub file is hashed
    assert everything["processor"]["size"] == IMAGE_SIZE and everything["processor"]["crop_offset"] == "floor"
    assert everything["tokenizer"].startswith("injected CLIPTokenizer")
    other = get("scorers", "clip")(**opts, model=clip.model, processor=clip.preprocess.__class__(size=IMAGE_SIZE))
    assert other.identity()["processor"] != everything["processor"]


@pytest.mark.parametrize("name", ["clip", "laion-aesthetic"])
def test_the_tensor_path_runs_in_bf16(built, clip, name):
    image = _images()[2]  # 47 x 61: resized, so the antialiased bicubic runs (no bf16 kernel on CPU)
    x = torch.tensor(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].requires_grad_(True)
    prompts = ["a photo of a cat"] if name == "clip" else None
    low = get("scorers", name)(**built[name], dtype="bf16")
    score = low(x.to(torch.bfloat16), prompts)
    score.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    full = float(get("scorers", name)(**built[name])(x.detach(), prompts).detach()[0])
    # bf16 rounding of the tiny random models: ~0.35 on CLIP's x100 scale, ~0.01 for the aesthetic head
    assert float(score.detach().float()[0]) == pytest.approx(full, abs=1.0 if name == "clip" else 0.05)


def test_the_aesthetic_head_takes_pil_images_in_the_training_api(built):
    scorer = get("scorers", "laion-aesthetic")(**built["laion-aesthetic"])
    images = _images()[:3]
    out = scorer(images)
    assert out.shape == (3,) and out.requires_grad  # the head's own weights stay trainable
    out.sum().backward()
    assert scorer.head.layers[0].weight.grad is not None
    assert out.detach().tolist() == pytest.approx([r.score for r in scorer.score([(im, None) for im in images])],
                                                  abs=1e-5)
