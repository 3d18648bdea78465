"""MPS on a tiny random-weight checkpoint pickled as a whole model, as the official file is.

The reference below is an independent forward in plain torch (float64) over the tensors of the pickle,
read with the official classes' stand-ins importable again (as the official code would load it), with
its own preprocessing and hand-written token ids; the scorer goes through the user path (registry name,
``weights`` + ``allow_pickle``, tokenizer files) and never imports the official classes.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
F = torch.nn.functional

from PIL import Image  # noqa: E402

from aesthetic_audit.errors import AuditError, ConfigError  # noqa: E402
from aesthetic_audit.registry import get  # noqa: E402
from aesthetic_audit.scorers._weights import WeightsError  # noqa: E402
from aesthetic_audit.scorers.mps import CONDITIONS  # noqa: E402
from tiny.hpsv2 import vocabulary, write_tokenizer  # noqa: E402
from tiny.mps import CROSS, FILE, TEXT, VISION, build, official_modules, write_official  # noqa: E402

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
V = vocabulary()
SOT, EOT = V["<|startoftext|>"], V["<|endoftext|>"]
PAD = EOT  # the laion ViT-H tokenizer pads with its end token (padding="max_length")


def ids_of(*symbols: str) -> list[int]:
    return [SOT, *(V[s] for s in symbols), EOT]


PROMPTS = {  # token ids worked out by hand from the tiny vocabulary and merges
    "a red cat": ids_of("a</w>", "red</w>", "cat</w>"),
    "  Photo OF a\n blurry   DOG ": ids_of("photo</w>", "of</w>", "a</w>", "blurry</w>", "dog</w>"),
    "cat " * 80: [SOT, *[V["cat</w>"]] * 75, EOT],  # cut at 77 keeping the end token
}


def image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


IMAGES = [image(28, 28, 0), image(50, 36, 1), image(30, 61, 2)]


# -- independent reference ----------------------------------------------------------------------------
def official_state(path) -> dict:
    """The pickle's tensors, loaded the way the official code loads the file (its classes importable)."""
    modules = official_modules()
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)  # our own test file: trusted
    finally:
        for name, old in saved.items():
            sys.modules.pop(name) if old is None else sys.modules.__setitem__(name, old)
    state = model.state_dict()
    # the rotary angle caches the official forward reads (buffers left out of a state_dict)
    state.update({f"{name}.pos_emb": m.pos_emb for name, m in model.named_modules()
                  if getattr(m, "pos_emb", None) is not None})
    return {k: v.double() for k, v in state.items()}


def ref_pixels(img: Image.Image, size: int = VISION["image"]):
    """CLIPImageProcessor: short side to size (int of the long side, PIL bicubic), crop at (h - size) // 2."""
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    img = img.convert("RGB").resize(new, Image.BICUBIC) if new != (w, h) else img.convert("RGB")
    top, left = (img.size[1] - size) // 2, (img.size[0] - size) // 2
    arr = (np.asarray(img.crop((left, top, left + size, top + size)), np.float64) / 255 - MEAN) / STD
    return torch.tensor(arr.transpose(2, 0, 1))[None]


def ref_tower(sd, x, prefix, layers, heads, mask=None):
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    def lin(t, name):
        return t @ sd[name + ".weight"].T + sd[name + ".bias"]

    n, length, d = x.shape
    for i in range(layers):
        p = f"{prefix}{i}."
        h = ln(x, p + "layer_norm1")
        q, k, v = (lin(h, p + f"self_attn.{s}_proj").reshape(n, length, heads, -1).transpose(1, 2) for s in "qkv")
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // heads) + (0 if mask is None else mask)
        x = x + lin((logits.softmax(-1) @ v).transpose(1, 2).reshape(n, length, d), p + "self_attn.out_proj")
        x = x + lin(F.gelu(lin(ln(x, p + "layer_norm2"), p + "mlp.fc1")), p + "mlp.fc2")
    return x


def ref_text_tokens(sd, rows):
    ids = torch.full((len(rows), TEXT["context"]), PAD)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    x = sd["model.text_model.embeddings.token_embedding.weight"][ids] + \
        sd["model.text_model.embeddings.position_embedding.weight"]
    causal = torch.full((TEXT["context"],) * 2, float("-inf"), dtype=torch.float64).triu(1)
    x = ref_tower(sd, x, "model.text_model.encoder.layers.", TEXT["layers"], TEXT["heads"], causal)
    x = F.layer_norm(x, x.shape[-1:], sd["model.text_model.final_layer_norm.weight"],
                     sd["model.text_model.final_layer_norm.bias"], eps=1e-5)
    return x @ sd["model.text_projection.weight"].T, ids


def ref_image_tokens(sd, pixels):
    x = F.conv2d(pixels, sd["model.vision_model.embeddings.patch_embedding.weight"], stride=VISION["patch"])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["model.vision_model.embeddings.class_embedding"].expand(len(x), 1, -1), x], 1)
    x = x + sd["model.vision_model.embeddings.position_embedding.weight"]
    x = F.layer_norm(x, x.shape[-1:], sd["model.vision_model.pre_layrnorm.weight"],
                     sd["model.vision_model.pre_layrnorm.bias"], eps=1e-5)
    x = ref_tower(sd, x, "model.vision_model.encoder.layers.", VISION["layers"], VISION["heads"])
    return x @ sd["model.visual_projection.weight"].T  # every token, no post_layernorm


def swiglu(x):
    a, gate = x.chunk(2, -1)
    return a * gate * torch.sigmoid(gate)


def ref_cross(sd, x, ctx, visible):
    """The official Cross_model: per layer a masked cross-attention and a parallel rotary block, both
    residual; one key/value head shared by the query heads."""
    heads, dh = CROSS["heads"], CROSS["dim_head"]
    n = x.shape[1]
    half = dh // 2

    def angles(i):
        """The stored cache when it covers n positions (as the official block does), else position x freq."""
        cache = sd.get(f"cross_model.layers.{i}.1.fn.pos_emb")
        if cache is not None and cache.shape[0] >= n:
            return cache[:n]
        freqs = torch.arange(n, dtype=torch.float64)[:, None] * sd[f"cross_model.layers.{i}.1.fn.rotary_emb.inv_freq"]
        return torch.cat([freqs, freqs], -1)

    def rot(t, a):
        return t * a.cos() + torch.cat([-t[..., half:], t[..., :half]], -1) * a.sin()

    for i in range(CROSS["layers"]):
        p = f"cross_model.layers.{i}.0.fn."
        h = F.layer_norm(x, x.shape[-1:], sd[p + "norm.weight"], sd[p + "norm.bias"])
        q = (h @ sd[p + "to_q.weight"].T).reshape(1, n, heads, dh).transpose(1, 2) * dh ** -0.5
        k, v = (ctx @ sd[p + "to_kv.weight"].T).split(dh, -1)
        logits = (q @ k.T).masked_fill(~visible, float("-inf"))
        att = (logits.softmax(-1) @ v).transpose(1, 2).reshape(1, n, heads * dh)
        x = x + att @ sd[p + "to_out.weight"].T + swiglu(h @ sd[p + "ff.0.weight"].T) @ sd[p + "ff.2.weight"].T
        p = f"cross_model.layers.{i}.1.fn."
        h = F.layer_norm(x, x.shape[-1:], sd[p + "norm.weight"], sd[p + "norm.bias"])
        q, k, v, ff = (h @ sd[p + "fused_attn_ff_proj.weight"].T).split([heads * dh, dh, dh, sd[p + "ff_out.1.weight"]
                                                                         .shape[1] * 2], -1)
        a = angles(i)
        q = rot(q.reshape(1, n, heads, dh).transpose(1, 2), a) * dh ** -0.5
        att = ((q @ rot(k, a).transpose(-1, -2)).softmax(-1) @ v[:, None]).transpose(1, 2).reshape(1, n, heads * dh)
        x = x + att @ sd[p + "attn_out.weight"].T + swiglu(ff) @ sd[p + "ff_out.1.weight"].T
    return x


def condition_rows(folder: str, text: str) -> list[int]:
    """The condition through the official tokenizer class (transformers' CLIP tokenizer on the same files)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)(text, truncation=True, max_length=77)["input_ids"]


def ref_scores(official, pairs, condition=CONDITIONS["overall"], threshold=0.3, hidden=None) -> list[float]:
    """Scores of (image, prompt) pairs; ``hidden`` collects how many prompt tokens each mask hides."""
    options, sd = official
    cond, _ = ref_text_tokens(sd, [condition_rows(options["weights"], condition)])
    out = []
    for img, prompt in pairs:
        txt, ids = ref_text_tokens(sd, [PROMPTS[prompt]])
        best = (txt[0] @ cond[0].T).max(-1).values
        visible = best / best.max() > threshold
        if hidden is not None:
            hidden.append(int((~visible).sum()))
        feat = ref_cross(sd, ref_image_tokens(sd, ref_pixels(img)), txt[0], visible)[0, 0]
        end = txt[0, ids[0].argmax()]
        out.append(float(sd["model.logit_scale"].exp() * F.cosine_similarity(feat, end, dim=0)))
    return out


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture
def official(tmp_path):
    """(scorer options, the pickle's tensors in float64) of a freshly written tiny official checkpoint."""
    options = build(tmp_path)
    return options, official_state(f"{options['weights']}/{FILE}")


def all_pairs():
    return [(img, p) for img in IMAGES for p in PROMPTS]


FOUR = [(IMAGES[0], "a red cat"), (IMAGES[1], "  Photo OF a\n blurry   DOG "), (IMAGES[2], "cat " * 80),
        (IMAGES[1], "a red cat")]


# -- scores -------------------------------------------------------------------------------------------
def test_scores_match_an_independent_forward(official):
    options, _ = official
    scorer = get("scorers", "mps")(weights=options["weights"], allow_pickle=True, tokenizer=options["weights"])
    pairs = all_pairs()
    results = scorer.score(pairs)
    expected = ref_scores(official, pairs)
    assert all(r.ok for r in results)
    np.testing.assert_allclose([r.score for r in results], expected, atol=1e-5, rtol=0)
    assert np.std(expected) > 0.05  # the random model separates the pairs: the check has teeth
    assert [r.tokens for r in results[:3]] == [5, 7, 82] and [r.truncated for r in results[:3]] == [False, False, True]


def test_the_stored_rotary_cache_is_used_when_it_covers_the_sequence(official):
    """As the official block: the pickled angle cache (here positions 0, 3, 6, ...) when it has at least as
    many positions as there are image tokens, the computed angles when it is shorter or absent."""
    options, sd = official
    pairs = all_pairs()[:6]
    scorer = get("scorers", "mps")(weights=options["weights"], allow_pickle=True, tokenizer=options["weights"])
    cached = [r.score for r in scorer.score(pairs)]
    blocks = [m for m in scorer.model.modules() if hasattr(m, "rotary_emb")]
    assert len(blocks) == 2 and all(b.pos_emb is not None and b.pos_emb.shape[0] == 5 for b in blocks)
    for block in blocks:
        block.pos_emb = block.pos_emb[:4]  # shorter than the 5 image tokens: recomputed
    computed = [r.score for r in scorer.score(pairs)]
    without = {k: v for k, v in sd.items() if not k.endswith(".pos_emb")}
    np.testing.assert_allclose(computed, ref_scores((options, without), pairs), atol=1e-5, rtol=0)
    np.testing.assert_allclose(cached, ref_scores(official, pairs), atol=1e-5, rtol=0)
    assert np.abs(np.array(cached) - np.array(computed)).max() > 1e-3


# The random tiny model's prompt tokens all match some condition token at over 0.6 of the best match, so
# the official 0.3 hides none; at 0.8 the mask hides some tokens and the condition matters.
STRICT = 0.8


def test_mask_threshold_option(official):
    options, _ = official
    default, strict = get("scorers", "mps")(**options), get("scorers", "mps")(mask_threshold=STRICT, **options)
    assert default.identity()["mask_threshold"] == 0.3 and strict.identity()["mask_threshold"] == STRICT
    pairs = FOUR
    hidden_default, hidden_strict = [], []
    ref_scores(official, pairs, hidden=hidden_default)
    expected = ref_scores(official, pairs, threshold=STRICT, hidden=hidden_strict)
    assert sum(hidden_default) == 0 and all(0 < n < 77 for n in hidden_strict)
    got = [r.score for r in strict.score(pairs)]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert max(abs(a - r.score) for a, r in zip(got, default.score(pairs))) > 1e-3


def test_condition_option_changes_score_and_identity(official):
    options, _ = official
    default = get("scorers", "mps")(mask_threshold=STRICT, **options)
    spelled = get("scorers", "mps")(condition=CONDITIONS["overall"], mask_threshold=STRICT, **options)
    other = get("scorers", "mps")(condition="a red cat", mask_threshold=STRICT, **options)
    assert default.identity() == spelled.identity()  # the name and its text are one condition
    assert other.identity() != default.identity() and other.identity()["condition"] == "a red cat"
    assert get("scorers", "mps")(**options).identity()["condition"] == CONDITIONS["overall"]
    pairs = FOUR
    got = [r.score for r in other.score(pairs)]
    np.testing.assert_allclose(got, ref_scores(official, pairs, "a red cat", STRICT), atol=1e-5, rtol=0)
    assert max(abs(a - r.score) for a, r in zip(got, default.score(pairs))) > 1e-3
    with pytest.raises(ConfigError, match="mask_threshold"):
        get("scorers", "mps")(mask_threshold="high", **options)
    with pytest.raises(ConfigError, match="condition"):
        get("scorers", "mps")(condition="  ", **options)
    with pytest.raises(ConfigError, match="mask_threshold"):
        get("scorers", "mps")(mask_threshold="high", **options)
    with pytest.raises(ConfigError, match="condition"):
        get("scorers", "mps")(condition="  ", **options)


def test_four_combinations_encode_each_input_once(official):
    options, _ = official
    scorer = get("scorers", "mps")(**options).load()
    rows = {"image": 0, "text": 0}

    def counter(kind):
        def hook(module, args, kwargs, output):
            rows[kind] += kwargs.get("pixel_values", kwargs.get("input_ids")).shape[0]
        return hook

    scorer.model.model.vision_model.register_forward_hook(counter("image"), with_kwargs=True)
    scorer.model.model.text_model.register_forward_hook(counter("text"), with_kwargs=True)
    pairs = [(IMAGES[0], "a red cat"), (IMAGES[0], "cat " * 80), (IMAGES[1], "a red cat"), (IMAGES[1], "cat " * 80)]
    results = scorer.score(pairs)
    assert rows == {"image": 2, "text": 2 + 1}  # two prompts, and the condition once
    np.testing.assert_allclose([r.score for r in results], ref_scores(official, pairs), atol=1e-5, rtol=0)


# -- the pickle: safe reading, refusal, conversion ----------------------------------------------------
def test_the_reader_collects_every_tensor_without_the_official_classes(official):
    from aesthetic_audit.scorers.mps import read_official_checkpoint

    options, sd = official
    assert not any(name == "trainer" or name.startswith("trainer.") for name in sys.modules)
    config, state = read_official_checkpoint(f"{options['weights']}/{FILE}")
    assert not any(name == "trainer" or name.startswith("trainer.") for name in sys.modules)
    assert set(state) == set(sd)  # state_dict's tensors and names, and the rotary caches the forward reads
    assert sum(k.endswith(".pos_emb") for k in state) == 2
    assert all(torch.equal(state[k].double(), sd[k]) for k in sd)
    assert state["model.logit_scale"].dtype == torch.float16  # as stored
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_attention_heads, text.num_hidden_layers) == (32, 2, 2)
    assert (vision.hidden_size, vision.image_size, vision.patch_size, config.projection_dim) == (40, 28, 14, 24)


class _System:
    """Pickles as a call of os.system: what a malicious checkpoint would hold."""

    def __reduce__(self):
        import os

        return os.system, ("echo pwned > /dev/null",)


def test_a_pickle_naming_a_foreign_function_is_refused(tmp_path):
    write_tokenizer(tmp_path)
    torch.save({"model": _System()}, tmp_path / FILE)
    with pytest.raises(WeightsError) as info:
        get("scorers", "mps")(weights=str(tmp_path), allow_pickle=True).load()
    message = str(info.value)
    assert "system" in message and "refused" in message and "\n" not in message
    with pytest.raises(pickle.UnpicklingError):  # and torch's own weights_only reader refuses it as well
        torch.load(tmp_path / FILE, weights_only=True)


def test_a_state_dict_is_not_an_mps_checkpoint(tmp_path):
    write_tokenizer(tmp_path)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / FILE)
    with pytest.raises(WeightsError, match="not a whole trainer.models.clip_model.CLIPModel"):
        get("scorers", "mps")(weights=str(tmp_path), allow_pickle=True).load()


def test_pickle_needs_allow_pickle(official):
    options, _ = official
    with pytest.raises(WeightsError, match="allow_pickle"):
        get("scorers", "mps")(weights=options["weights"]).load()


def test_missing_files_are_named_before_anything_is_read(tmp_path, monkeypatch):
    import aesthetic_audit.scorers.mps as mps

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the files were checked")

    monkeypatch.setattr(mps, "read_official_checkpoint", never)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=FILE.replace(".", r"\.")):
        get("scorers", "mps")(weights=str(tmp_path / "empty"), allow_pickle=True, tokenizer=str(tmp_path)).load()
    write_official(tmp_path / "no-tokenizer")
    with pytest.raises(WeightsError, match="vocab.json"):
        get("scorers", "mps")(weights=str(tmp_path / "no-tokenizer"), allow_pickle=True,
                              tokenizer=str(tmp_path / "empty")).load()
    with pytest.raises(AuditError, match="not publish the MPS checkpoint"):
        get("scorers", "mps")().identity()


def test_convert_gives_identical_scores(official, tmp_path):
    from aesthetic_audit.cli import main

    options, _ = official
    out = tmp_path / "converted"
    assert main(["convert", f"{options['weights']}/{FILE}", "-o", str(out), "--mps"]) in (0, None)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
    from safetensors.torch import load_file

    keys = set(load_file(str(out / "model.safetensors")))
    assert "cross_model.layers.0.0.fn.to_kv.weight" in keys and "model.visual_projection.weight" in keys
    pairs = all_pairs()
    pickled = get("scorers", "mps")(**options).score(pairs)
    converted = get("scorers", "mps")(weights=str(out)).score(pairs)  # no allow_pickle needed
    by_file = get("scorers", "mps")(weights=str(out / "model.safetensors")).score(pairs[:2])
    assert [r.score for r in converted] == [r.score for r in pickled]
    np.testing.assert_allclose([r.score for r in by_file], [r.score for r in pickled[:2]], atol=1e-6, rtol=0)
    ident = get("scorers", "mps")(weights=str(out)).identity()
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert ident["weights"]["model/model.safetensors"] == digest


def test_module_imports_without_torch():
    code = "import sys, aesthetic_audit.scorers.mps; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.3", True])
def test_a_mask_threshold_that_is_not_a_finite_number_is_refused(bad):
    from aesthetic_audit.errors import ConfigError

    with pytest.raises(ConfigError, match="mask_threshold must be a number"):
        get("scorers", "mps")(mask_threshold=bad)
