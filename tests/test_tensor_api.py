"""The training-loop API of the cross-encoders (ImageReward, BLIP-ITM, HPSv3): ``scorer(images, prompts)``.

Tiny random-weight models in the official layouts (tests/tiny) loaded through the user path. Images sit at
each model's input size (32 x 32 for the tiny BLIPs; for HPSv3 56 x 56 under an injected 56 * 56 pixel
budget, which keeps its tests fast, and once 448 x 448 under the real budget: smart_resize leaves both as
they are), so the tensor path's preprocessing must equal the PIL path's and its scores ``score()``'s.
For ImageReward and BLIP-ITM the scores are also checked against the independent references of
tests/test_blip_scorers.py (transformers' own BLIP modules), and HPSv3's tensor patches against
transformers' Qwen2-VL image processor; gradients are checked for being finite, non-zero, confined to the
image each score belongs to, and absent from the (frozen) model.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from aesthetic_audit.errors import ConfigError, InputError  # noqa: E402
from aesthetic_audit.registry import get  # noqa: E402
from aesthetic_audit.scorers.hpsv3 import QwenVLPreprocess, tensor_patches  # noqa: E402
from test_blip_scorers import hand_ids, ir_reference, itm_reference  # noqa: E402
from tiny import blip as tiny_blip  # noqa: E402
from tiny import hpsv3 as tiny_hpsv3  # noqa: E402
from tiny import mps as tiny_mps  # noqa: E402

PROMPTS = ["a photo of a cat", "a very blurry dark painting of the dog", "the red sky, and blue grass."]
HPS_PROMPTS = ["a red cat", "a blurry, dark photo of a dog", "an oil painting of an empty grey sky"]
SIZE = {"imagereward": 32, "blip-itm": 32, "hpsv3": 56, "mps": tiny_mps.clip_config().vision_config.image_size}
# HPSv3 at a 56 * 56 pixel budget (2 x 2 merged image tokens): injected, as a user may
SMALL = {"hpsv3": {"processor": QwenVLPreprocess(min_pixels=56 * 56, max_pixels=56 * 56)}}
NAMES = tuple(SIZE)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each model's folder options, built once."""
    root = tmp_path_factory.mktemp("tensor-api")
    return {"imagereward": tiny_blip.build_imagereward(root / "ir"),
            "blip-itm": tiny_blip.build_blip_itm(root / "itm"),
            "hpsv3": tiny_hpsv3.build(root / "hpsv3"), "mps": tiny_mps.build(root / "mps")}


@pytest.fixture(scope="module")
def scorers(built):
    return {name: get("scorers", name)(**opts, **SMALL.get(name, {}), device="cpu").load()
            for name, opts in built.items()}


def arrays(name: str, count: int, seed: int = 0, size: int | None = None) -> list[np.ndarray]:
    """Random 8-bit RGB images at the model's input size (or ``size``)."""
    rng = np.random.default_rng(seed)
    side = size or SIZE[name]
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]


def as_tensor(arrs: list[np.ndarray]):
    """[B, 3, H, W] float32 in [0, 1] holding exactly k / 255, with a gradient wanted."""
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255
    return x.requires_grad_(True)


def prompts_for(name: str) -> list[str]:
    return HPS_PROMPTS if name == "hpsv3" else PROMPTS


@pytest.mark.parametrize("name", NAMES)
def test_a_tensor_gets_a_finite_nonzero_gradient(scorers, name):
    x = as_tensor(arrays(name, 1))
    reward = scorers[name](x, prompts_for(name)[:1])
    assert reward.shape == (1,) and reward.dtype == torch.float32 and reward.requires_grad
    reward.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", NAMES)
def test_the_tensor_path_equals_score_and_the_pil_call(scorers, name):
    scorer, arrs, prompts = scorers[name], arrays(name, 3, seed=1), prompts_for(name)
    pil = [Image.fromarray(a) for a in arrs]
    expected = np.array([r.score for r in scorer.score(list(zip(pil, prompts)))])
    got = scorer(as_tensor(arrs), prompts).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scorer(pil, prompts).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert np.ptp(expected) > 1e-3  # distinct images and prompts give distinct scores: the check has teeth


def test_imagereward_tensor_path_matches_an_independent_blip_forward(scorers, built):
    arrs = arrays("imagereward", 3, seed=2)
    got = scorers["imagereward"](as_tensor(arrs), PROMPTS).detach().numpy()
    ref = ir_reference(built["imagereward"]["weights"], [Image.fromarray(a) for a in arrs],
                       [hand_ids(p, 35) for p in PROMPTS])
    np.testing.assert_allclose(got, np.diag(ref), rtol=1e-5, atol=1e-5)


def test_blip_itm_tensor_path_matches_the_models_own_itm_forward(scorers, built):
    arrs = arrays("blip-itm", 3, seed=3)
    got = scorers["blip-itm"](as_tensor(arrs), PROMPTS).detach().numpy()
    ref = itm_reference(built["blip-itm"]["weights"], [Image.fromarray(a) for a in arrs],
                        [hand_ids(p, 99) for p in PROMPTS])
    np.testing.assert_allclose(got, np.diag(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_each_score_of_a_batch_depends_on_its_own_image_only(scorers, name):
    """Several images with distinct prompts (so rows are padded): every image gets a gradient from its own
    score, and none from another row's (padding and the per-row image cache keep rows apart)."""
    x = as_tensor(arrays(name, 3, seed=4))
    reward = scorers[name](x, prompts_for(name))
    for k in range(3):
        (grad,) = torch.autograd.grad(reward[k], x, retain_graph=True)
        assert torch.isfinite(grad).all()
        for j in range(3):
            assert (float(grad[j].abs().sum()) > 0) == (j == k), (k, j)


@pytest.mark.parametrize("name", NAMES)
def test_no_gradient_lands_in_the_frozen_model(scorers, name):
    scorer = scorers[name]
    params = list(scorer.model.parameters())
    assert params and not any(p.requires_grad for p in params)
    x = as_tensor(arrays(name, 2, seed=5))
    scorer(x, prompts_for(name)[:2]).sum().backward()
    assert all(p.grad is None for p in params)
    assert float(x.grad.abs().sum()) > 0


def test_dual_encoders_are_frozen_too(tmp_path):
    from tiny import hps as tiny_hps

    scorer = get("scorers", "hps")(**tiny_hps.build(tmp_path), device="cpu").load()
    params = list(scorer.model.parameters())
    assert params and not any(p.requires_grad for p in params)
    side = scorer.model.config.vision_config.image_size
    x = as_tensor(arrays("hps", 2, seed=7, size=side))
    scorer(x, PROMPTS[:2]).sum().backward()
    assert all(p.grad is None for p in params) and float(x.grad.abs().sum()) > 0


def test_a_user_can_unfreeze_the_model_to_train_it(built):
    scorer = get("scorers", "imagereward")(**built["imagereward"], device="cpu").load()
    scorer.model.mlp.requires_grad_(True)  # the documented switch: only what the user turns on learns
    scorer(as_tensor(arrays("imagereward", 2, seed=6)), PROMPTS[:2]).sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in scorer.model.mlp.parameters())
    assert all(p.grad is None for p in scorer.model.blip.parameters())


def test_an_injected_model_keeps_its_owners_flags(scorers, built):
    loaded = scorers["blip-itm"]
    model = loaded.model
    model.requires_grad_(True)  # as an owner training it would have it
    try:
        scorer = get("scorers", "blip-itm")(weights=built["blip-itm"]["weights"], model=model).load()
        assert all(p.requires_grad for p in model.parameters())
        scorer(as_tensor(arrays("blip-itm", 1)), PROMPTS[:1]).sum().backward()
        assert model.itm_head.weight.grad is not None
    finally:
        model.requires_grad_(False)
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", NAMES)
def test_prompts_must_match_the_batch(scorers, name):
    scorer = scorers[name]
    x = as_tensor(arrays(name, 2))
    with pytest.raises(InputError, match="1 prompts for 2 images; pass one prompt per image"):
        scorer(x, prompts_for(name)[:1])
    with pytest.raises(InputError, match="3 prompts for 2 images"):
        scorer([Image.fromarray(a) for a in arrays(name, 2)], prompts_for(name))
    with pytest.raises(InputError, match="pass a list of 2 prompts"):
        scorer(x, None)
    with pytest.raises(InputError, match="pass a list of 2 prompts"):
        scorer(x, "a cat")
    with pytest.raises(InputError, match="prompt 1 is empty"):
        scorer(x, ["a cat", "  "])


@pytest.mark.parametrize("name", NAMES)
def test_bad_images_are_refused_by_name(scorers, name):
    scorer = scorers[name]
    with pytest.raises(InputError, match=r"float tensor \[B, 3, H, W\].*\(2, 4, 32, 32\)"):
        scorer(torch.zeros(2, 4, 32, 32), ["a", "b"])
    with pytest.raises(InputError, match="uint8"):
        scorer(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), ["a"])
    with pytest.raises(InputError, match="image 1 is a str, not a PIL image"):
        scorer([Image.new("RGB", (32, 32)), "cat.png"], ["a", "b"])
    with pytest.raises(InputError, match="no images"):
        scorer(torch.zeros(0, 3, 32, 32), [])


def test_a_quantised_scorer_refuses_the_tensor_path(built):
    scorer = get("scorers", "imagereward")(**built["imagereward"], device="cpu", quantize="int8")
    with pytest.raises(ConfigError, match="quantize=int8 layers have no gradient"):
        scorer(as_tensor(arrays("imagereward", 1)), PROMPTS[:1])


def test_hpsv3_reserved_tokens_in_a_prompt_are_refused(scorers):
    with pytest.raises(InputError, match=r"prompt 1 contains <\|Reward\|>"):
        scorers["hpsv3"](as_tensor(arrays("hpsv3", 2)), ["a cat", "a <|Reward|> dog"])


def test_hpsv3_refuses_sizes_qwen_refuses(scorers):
    with pytest.raises(InputError, match=r"images of 402x2: aspect ratio 201.0 exceeds 200"):
        scorers["hpsv3"](torch.zeros(1, 3, 2, 402), ["a cat"])
    with pytest.raises(InputError, match=r"image 1: preprocessing failed: aspect ratio 201.0 exceeds 200"):
        scorers["hpsv3"]([Image.new("RGB", (28, 28)), Image.new("RGB", (402, 2))], ["a cat", "a dog"])


def test_hpsv3_tensor_patches_equal_the_pil_path_and_transformers(built):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    arrs = arrays("hpsv3", 2, seed=7, size=448)
    pre = QwenVLPreprocess()  # HPSv3's own budget, 256 * 28 * 28 pixels
    patches, grid = tensor_patches(pre, as_tensor(arrs).detach())
    assert grid == (1, 32, 32)  # 448 / 14
    ours = np.concatenate([pre.pil(Image.fromarray(a))[0] for a in arrs])
    assert np.array_equal(patches.numpy(), ours)  # bit-equal: no resize at the target size
    ref = Qwen2VLImageProcessorPil.from_pretrained(built["hpsv3"]["base"])(
        images=[Image.fromarray(a) for a in arrs], return_tensors="np")
    assert tuple(ref["image_grid_thw"][0]) == grid
    np.testing.assert_allclose(patches.numpy(), ref["pixel_values"], rtol=0, atol=1e-6)


def test_hpsv3_other_sizes_resize_to_the_smart_resize_grid(scorers):
    """300 x 200 (w x h) goes to 560 x 392 (hand-worked in tests/test_hpsv3.py), by torch interpolation:
    the grid is the PIL path's, the values close to PIL's bicubic on a smooth image, and gradients flow."""
    y, x = np.mgrid[0:200, 0:300]
    smooth = np.stack([x * 0.8, y * 1.2, (x + y) * 0.4], -1).astype(np.uint8)
    pre = QwenVLPreprocess()  # HPSv3's own budget
    pixels = as_tensor([smooth])
    patches, grid = tensor_patches(pre, pixels)
    pil_patches, pil_grid = pre.pil(Image.fromarray(smooth))
    assert grid == pil_grid == (1, 392 // 14, 560 // 14)
    assert float(np.abs(patches.detach().numpy() - pil_patches).mean()) < 0.01  # normalised units (0.003 seen)
    patches.sum().backward()
    assert float(pixels.grad.abs().sum()) > 0


def test_hpsv3_at_its_real_pixel_budget(built):
    """The loaded default preprocessing (256 * 28 * 28 pixels): a 448 x 448 tensor scores as score() does."""
    scorer = get("scorers", "hpsv3")(**built["hpsv3"], device="cpu").load()
    arrs = arrays("hpsv3", 1, seed=9, size=448)
    x = as_tensor(arrs)
    reward = scorer(x, HPS_PROMPTS[:1])
    reward.sum().backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    expected = scorer.score([(Image.fromarray(arrs[0]), HPS_PROMPTS[0])])[0].score
    assert float(reward.detach()[0]) == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_the_tensor_path_runs_in_bf16(built, name):
    """Preprocessing in float32, the model in bf16 (HPSv3's default), heads in float32: the reward and its
    gradient are finite, and the reward is score()'s in the same precision (the same operations on the
    same pixels: only the batch layout differs)."""
    scorer = get("scorers", name)(**{**built[name], "dtype": "bf16"}, **SMALL.get(name, {}), device="cpu").load()
    arrs, prompts = arrays(name, 2, seed=8), prompts_for(name)[:2]
    x = as_tensor(arrs)
    reward = scorer(x, prompts)
    reward.sum().backward()
    assert reward.dtype == torch.float32 and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    expected = [r.score for r in scorer.score([(Image.fromarray(a), p) for a, p in zip(arrs, prompts)])]
    np.testing.assert_allclose(reward.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
