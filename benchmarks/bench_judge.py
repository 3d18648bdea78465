"""The local VLM judge backend vs one full forward per (image, dimension), measured side by side in one run.

For each model and prompt template it times one call of our backend (``LocalVLM.answer_probs``) on N
images x 11 dimension questions, against the naive way: every question its own full forward (vision
tower, then the decoder over the whole sequence), which is our backend given one prompt per call. It
prints CPU time (this process, all threads) and wall time, ours / naive (goal: <= 0.3x at 11
dimensions), and the largest difference between the two ways' answer probabilities.

Models (random weights, written to a temporary folder in the hub layout and loaded through the user
path; timings do not depend on the values):

  tiny       the tests' tiny Qwen3-VL (tests/tiny/qwen_vl.py): vision 3 blocks of width 32, decoder 2
             layers of width 64
  4b-vision  Qwen3-VL-4B-Instruct's vision tower at full size (24 blocks, width 1024, 16 heads, MLP 4096,
             patch 16, 2x2 merge into width 2560, deepstack features after blocks 5, 11 and 17, 2304
             learned positions) with a 2-layer decoder of the 4B's width (2560; 32 query and 8 key-value
             heads of 128; MLP 2560 instead of 9728); 512 x 512 images, 256 image tokens each

Templates: ``image-first`` (the image, then the question: every question about an image shares the
image's prefix, which runs once) and ``text-first`` (the study's judge prompt shape: the question, then
the image; only the opening text is shared, each row's decoder pass carries the image tokens, the
vision tower still runs once per image).

The 4b-vision naive cost is measured on ``--naive-dims`` of the 11 questions of each image and scaled
to 11: each naive question is the same work (one full forward of the same image with a question of
about the same length). ``--naive-dims 11`` measures them all (a vision forward takes 10-20 s on 2 CPU
cores).

Last, an estimate in multiply-adds (not timed) of the same ratios for the full Qwen3-VL-4B (36 decoder
layers, MLP 9728) from the questions' token counts: with a text-first prompt the decoder must read the
256 image tokens once per question, because their keys and values depend on the question before them,
so that ratio stays near the decoder's share of the work whatever the implementation; with an
image-first prompt it does not. The tiny tokenizer (768 byte-pair merges) cuts English into about
twice as many tokens as Qwen's 151k vocabulary, so the estimate is also shown with half the text tokens.

    python benchmarks/bench_judge.py                         # both models, both templates (~3 min, 2 CPUs)
    python benchmarks/bench_judge.py --models tiny --images 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aesthetic_audit.vlm.base import Prompt
from aesthetic_audit.vlm.local import LocalVLM, shared_prefix

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny.qwen_vl import TOKEN_IDS, build  # noqa: E402

DIMS = ["background", "clarity", "color aesthetic", "color brightness", "detail realism", "detail refinement",
        "emotion", "lighting distinction", "main object", "object pairing", "richness"]
ANSWERS = ("0", "1", "2")

# Qwen3-VL-4B-Instruct's published sizes (config.json): vision tower as is, the decoder cut to 2 layers
VISION_4B = {"model_type": "qwen3_vl", "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
             "out_hidden_size": 2560, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
             "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17],
             "hidden_act": "gelu_pytorch_tanh", "in_channels": 3}
DECODER_4B = {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128}


def config_4b_vision() -> dict:
    text = {**DECODER_4B, "num_hidden_layers": 2, "intermediate_size": 2560, "model_type": "qwen3_vl_text",
            "vocab_size": 832, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "tie_word_embeddings": True,
            "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
            "rope_theta": 5000000, "bos_token_id": 768, "eos_token_id": 770}
    return {"model_type": "qwen3_vl", "architectures": ["Qwen3VLForConditionalGeneration"], **TOKEN_IDS,
            "tie_word_embeddings": True, "text_config": text, "vision_config": VISION_4B}


def rubric(dim: str) -> str:
    return (f"0 means the {dim} is deliberately poor, as a user asking for it would want; 1 means it is "
            f"neither good nor bad; 2 means the {dim} is what a conventional photographer would aim for")


def image_first(image: Image.Image, dim: str) -> Prompt:
    return Prompt((image, f"Rate the {dim} of this picture. {rubric(dim)}. Answer with a single digit."))


def text_first(image: Image.Image, dim: str) -> Prompt:
    return Prompt((f"How good is the {dim} of this picture? Guideline: {rubric(dim)}. Answer with a single digit.",
                   image))


def images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size // 16, size // 16, 3)) * 255).astype(np.uint8)).resize(
        (size, size), Image.BICUBIC) for _ in range(n)]


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """The best CPU and wall times of ``repeats`` runs, and the last run's result."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        out = fn()
        best_cpu, best_wall = min(best_cpu, time.process_time() - cpu), min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall, out


def bench(name: str, vlm: LocalVLM, pics: list[Image.Image], naive_dims: int, repeats: int) -> None:
    vlm.answer_probs([image_first(pics[0], "warm-up")], ANSWERS)  # load, first-call allocations
    tokens = vlm._prepare([text_first(pics[0], DIMS[0])])[0][0].ids
    n_image = tokens.count(vlm.image_id)
    print(f"\n== {name}: {len(pics)} images x {len(DIMS)} dimensions, {n_image} image tokens + "
          f"{len(tokens) - n_image} text tokens per question, batch size {vlm.batch_size}, "
          f"{torch.get_num_threads()} threads, best of {repeats}")
    for template in (image_first, text_first):
        prompts = [template(image, dim) for image in pics for dim in DIMS]
        cpu, wall, ours = timed(lambda: vlm.answer_probs(prompts, ANSWERS), repeats)
        sample = [p for i in range(len(pics)) for p in prompts[i * len(DIMS):i * len(DIMS) + naive_dims]]
        n_cpu, n_wall, naive = timed(lambda: [vlm.answer_probs([p], ANSWERS)[0] for p in sample], repeats)
        scale = len(DIMS) / naive_dims
        diff = max(abs(a - b) for o, n in zip([ours[i * len(DIMS) + j] for i in range(len(pics))
                                               for j in range(naive_dims)], naive) for a, b in zip(o.probs, n.probs))
        measured = "" if naive_dims == len(DIMS) else f" ({naive_dims} of 11 per image measured, x{scale:.1f})"
        print(f"{template.__name__:11s} ours: cpu {cpu:7.2f} s  wall {wall:7.2f} s | naive{measured}: cpu "
              f"{n_cpu * scale:7.2f} s  wall {n_wall * scale:7.2f} s | ratio cpu {cpu / (n_cpu * scale):.3f}x  "
              f"wall {wall / (n_wall * scale):.3f}x (goal <= 0.3x) | max |dp| {diff:.1e}")


def full_4b_estimate(vlm: LocalVLM) -> None:
    """Multiply-adds per image of the naive and our paths for the full Qwen3-VL-4B, from the token counts
    of this tokenizer's 512 x 512 questions (weights only; attention scores add little at these lengths)."""
    v, d = VISION_4B, DECODER_4B
    vision_block = 4 * v["hidden_size"] ** 2 + 2 * v["hidden_size"] * v["intermediate_size"]
    merger = (4 * v["hidden_size"]) ** 2 + 4 * v["hidden_size"] * v["out_hidden_size"]
    layer = (2 * d["hidden_size"] * d["num_attention_heads"] * d["head_dim"] + 3 * d["hidden_size"] * d[
        "intermediate_size"] + 2 * d["hidden_size"] * d["num_key_value_heads"] * d["head_dim"])
    per_token = d["num_hidden_layers"] * layer
    picture = images(1, 512)[0]
    print("\n== full Qwen3-VL-4B (36 decoder layers, MLP 9728), estimated multiply-adds per image, not timed:")
    for template in (image_first, text_first):
        rows = [r.ids for r in vlm._prepare([template(picture, dim) for dim in DIMS])[0]]
        n_image = rows[0].count(vlm.image_id)
        vision = 4 * n_image * v["depth"] * vision_block + n_image * merger * (1 + len(v["deepstack_visual_indexes"]))
        prefix = shared_prefix(rows)

        def ratio(text_scale: float) -> float:
            """ours / naive with the text tokens scaled (the image tokens are what they are)."""
            def tokens(n: int, images: int) -> float:
                return images + (n - images) * text_scale
            shared = tokens(prefix, min(n_image, prefix))
            naive = sum(vision + tokens(len(r), n_image) * per_token for r in rows)
            suffixes = sum(tokens(len(r), n_image) - shared for r in rows)
            return (vision + (shared + suffixes) * per_token) / naive

        print(f"{template.__name__:11s} vision {vision / 1e9:4.0f} G, decoder {len(rows[0]) * per_token / 1e9:4.0f} G "
              f"per {len(rows[0])}-token question ({n_image} image tokens), {prefix} tokens shared -> ratio "
              f"{ratio(1):.3f}x; {ratio(0.5):.3f}x with half the text tokens (about what Qwen's tokenizer counts)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "4b-vision"], choices=["tiny", "4b-vision"])
    p.add_argument("--images", type=int, default=None, help="images per run (default: 4 tiny, 1 4b-vision)")
    p.add_argument("--naive-dims", type=int, default=2, help="4b-vision: naive questions measured per image")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="tiny: best of this many runs (4b-vision: one run)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            start = time.perf_counter()
            if model == "tiny":
                folder = build(Path(tmp) / model, "qwen3_vl")
                pics, naive_dims = images(args.images or 4, 256), len(DIMS)
            else:
                folder = build(Path(tmp) / model, "qwen3_vl", config=config_4b_vision(), save_dtype="bfloat16")
                pics, naive_dims = images(args.images or 1, 512), min(max(args.naive_dims, 1), len(DIMS))
            vlm = LocalVLM(str(folder), device="cpu", dtype="fp32", batch_size=args.batch_size)
            vlm.load()
            print(f"\n({model}: built and loaded in {time.perf_counter() - start:.1f} s)")
            bench(model, vlm, pics, naive_dims, max(args.repeats, 1) if model == "tiny" else 1)
            if model == args.models[-1]:
                full_4b_estimate(vlm)  # the same tokenizer and preprocessor in both models
            vlm.unload()


if __name__ == "__main__":
    main()
