"""Scorer benchmarks on real-size architectures with random weights, measured side by side in one run.

For each architecture it prints three ratios:
  reuse     four-combination scoring of N pairs in one call (each distinct image and prompt encoded
            once) vs a naive loop that scores every (image, prompt) on its own;
  batching  2N distinct images scored in batches vs one image at a time (the official HPSv2 /
            ImageReward style);
  overhead  our scorer (PIL preprocessing, tokenisation, dedupe, result objects) vs the bare model
            forward on the same batch of already-prepared tensors (goal: within 10%).

    python benchmarks/bench_scorers.py                       # CLIP ViT-L/14 and ImageReward geometry
    python benchmarks/bench_scorers.py --arch vit-h14 --pairs 2

Weights are random (no hub here); timings do not depend on the values. CPU threads: --threads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aesthetic_audit.registry import get
from aesthetic_audit.scorers._torch import ImagePreprocess

CLIP_CONFIGS = {
    # OpenAI CLIP ViT-L/14 (quick GELU) and the LAION ViT-H/14 used by HPSv2 and PickScore (GELU)
    "vit-l14": dict(vision=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                intermediate_size=4096, hidden_act="quick_gelu"),
                    text=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, hidden_act="quick_gelu"), projection_dim=768),
    "vit-h14": dict(vision=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                                intermediate_size=5120, hidden_act="gelu"),
                    text=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096, hidden_act="gelu"), projection_dim=1024),
}

P_O = "A man riding a bicycle down a quiet street next to parked cars."
P_A = ("With heavy blur and nothing in sharp focus, murky underexposed darkness, a clashing garish "
       "palette and coarse blocky detail, a scene of a man riding a bicycle down a quiet street next to "
       "parked cars, the subject tiny in a far corner of an empty frame.")


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.random((24, 32, 3)) * 255
        out.append(Image.fromarray(base.astype(np.uint8)).resize((384, 288), Image.BICUBIC))
    return out


def clip_tokenizer(tmp: Path):
    """A byte-level CLIP BPE (no merges): real tokenizer code, every character a token (~77 per prompt)."""
    from aesthetic_audit.scorers._clip_common import load_tokenizer

    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 0
    for b in range(256):
        table[b] = chr(b) if b in keep else chr(256 + (extra := extra + 1) - 1)
    base = [table[b] for b in range(256)]
    tokens = base + [s + "</w>" for s in base] + ["<|startoftext|>", "<|endoftext|>"]
    (tmp / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    return load_tokenizer(tmp / "vocab.json", tmp / "merges.txt")


def clip_setup(arch: str, tmp: Path, batch_size: int):
    from transformers import CLIPConfig, CLIPModel

    c = CLIP_CONFIGS[arch]
    config = CLIPConfig(text_config={**c["text"], "vocab_size": 514, "max_position_embeddings": 77,
                                                "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513},
                        vision_config={**c["vision"], "image_size": 224, "patch_size": 14},
                        projection_dim=c["projection_dim"])
    model = CLIPModel(config).eval()
    tok = clip_tokenizer(tmp)

    def scorer(bs=batch_size):
        return get("scorers", "clip")(model=model, tokenizer=tok, processor=ImagePreprocess(224, crop_offset="floor"),
                                      device="cpu", batch_size=bs)

    def bare(pixels, prompts):
        enc = tok(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        def run():
            model.get_image_features(pixel_values=pixels)
            model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        return run

    return scorer, bare, ImagePreprocess(224, crop_offset="floor")


def imagereward_setup(tmp: Path, batch_size: int):
    from transformers import BertTokenizer

    from aesthetic_audit.scorers import imagereward as ir

    vit = dict(width=1024, depth=24, heads=16, patch=16, positions=197, hidden=4096)
    cfg = {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "hidden_size": 768, "num_hidden_layers": 12,
           "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 30524,
           "max_position_embeddings": 512}
    model = ir._modules()(vit, cfg, [768, 1024, 128, 64, 16, 1]).eval()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(33, 127)]
    words += sorted({w.strip(".,").lower() for w in (P_O + " " + P_A).split()})
    (tmp / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer.from_pretrained(str(tmp), do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})

    def scorer(bs=batch_size):
        return get("scorers", "imagereward")(model=model, tokenizer=tok, device="cpu", batch_size=bs)

    def bare(pixels, prompts):
        enc = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        def run():
            states = model.encode_image(pixels)
            model.reward(states, enc.input_ids, enc.attention_mask)
        return run

    return scorer, bare, ImagePreprocess(224, "shortest", crop=True)


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench(arch: str, pairs: int, repeats: int, batch_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if arch == "imagereward":
            make, bare, prep = imagereward_setup(Path(tmp), batch_size)
        else:
            make, bare, prep = clip_setup(arch, Path(tmp), batch_size)
        print(f"\n== {arch}: built in {time.perf_counter() - t0:.1f} s; {pairs} pairs, batch size {batch_size}, "
              f"{torch.get_num_threads()} threads, best of {repeats}")
        imgs = images(2 * pairs)
        combos = [(imgs[2 * i + a], p) for i in range(pairs) for a in (0, 1) for p in (P_O, P_A)]
        scorer = make()
        scorer.score(combos[:1])  # load + warm up

        ours = timed(lambda: scorer.score(combos), repeats)
        naive = timed(lambda: [scorer.score([c]) for c in combos], repeats)
        same = np.allclose([r.score for r in scorer.score(combos)],
                           [scorer.score([c])[0].score for c in combos], rtol=1e-4, atol=1e-4)
        print(f"reuse     4 combos x {pairs} pairs: one call {ours:.2f} s, naive loop {naive:.2f} s "
              f"-> {naive / ours:.2f}x faster (scores equal: {same})")

        # distinct prompts too, so nothing is deduplicated: batching and overhead measure the model alone
        distinct = [(img, f"{P_O[:-1]}, take {i}.") for i, img in enumerate(imgs)]
        one_by_one = make(bs=1)
        one_by_one.score(distinct[:1])
        batched = timed(lambda: scorer.score(distinct), repeats)
        single = timed(lambda: [one_by_one.score([d]) for d in distinct], repeats)
        print(f"batching  {len(distinct)} distinct images: batched {batched:.2f} s, one at a time {single:.2f} s "
              f"-> {single / batched:.2f}x faster")

        full = make(bs=len(distinct))
        full.score(distinct[:1])
        pixels = prep.batch(imgs)
        bare_run = bare(pixels, [p for _, p in distinct])
        timed(bare_run, 1)  # warm up the same allocations our call already made
        bare_t = timed(bare_run, repeats)
        ours_full = timed(lambda: full.score(distinct), repeats)
        print(f"overhead  same batch of {len(distinct)}: scorer {ours_full:.2f} s, bare forward {bare_t:.2f} s "
              f"-> {100 * (ours_full / bare_t - 1):+.1f}% (goal: within +10%)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["vit-l14", "imagereward"],
                   choices=["vit-l14", "vit-h14", "imagereward"])
    p.add_argument("--pairs", type=int, default=4, help="image pairs (each has 4 combinations)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="best of this many runs per measurement")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for arch in args.arch:
        bench(arch, args.pairs, args.repeats, args.batch_size)


if __name__ == "__main__":
    main()
