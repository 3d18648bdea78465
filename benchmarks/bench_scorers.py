"""Reward-model scoring on real-size architectures (random weights), every side timed interleaved in one run.

For N image pairs, each with its own two prompts (p_o, p_a), the four combinations (4N items: 2N distinct
images, 2N distinct prompts) are scored five ways, one after another in each round (ABCDE, BCDEA, ...), and
each side's wall time and CPU time (this process, all threads) is printed as median and min over the
rounds:

  official   the official packages' way, per combination: preprocess its image, tokenise its prompt padded
             to the official length (ImageReward 35 tokens, open_clip 77), one full forward (image tower,
             then the text side: ImageReward projects the image's cross-attention keys/values for the
             prompt). The bare model, no scorer code: the official-speed proxy.
  one/call   our scorer called once per combination (``score([item])``): everything a caller pays, i.e.
             content hash, preprocessing, tokenisation, forward, result objects; no reuse possible.
  dedup      one call with all 4N items and batch_size 1: each distinct image and prompt is encoded once
             (ImageReward: each image's cross-attention keys/values once), still one at a time.
  batched    the same call with batch_size B (default 8): de-duplication and batching.
  int8       as batched with ``quantize: int8`` (the opt-in fast mode: dynamic int8 linear layers, CPU).
  bf16       (``--fast int8 bf16``) as batched with the weights cast to bf16 (``dtype: bf16``); fast only on
             GPUs and CPUs with bf16 instructions (AVX512-BF16/AMX), several times slower on AVX2-only CPUs.

Ratios: one/call vs official (our per-call overhead), de-duplication (one/call / dedup), batching
(dedup / batched), the fp32 speed-up of batched over one/call and over official (goal: >= 3x), and each
fast mode's speed-up over batched with its largest score difference from fp32. The largest difference
between batched and official scores (same weights, fp32) is printed too.

Architectures (widths, depths, heads, patch sizes and image sizes of the official checkpoints):
  imagereward  BLIP ViT-L/16 at 224 px + 12-layer BERT-base with cross-attention + MLP head
  hpsv2.1      open_clip ViT-H/14 (vision 32 x 1280, 80-wide heads; text 24 x 1024), letterbox preprocessing
  clip         OpenAI CLIP ViT-L/14 (vision 24 x 1024; text 12 x 768), the CLIP-L baseline

Tokenisers are built from the prompts' words (each word one token, as real vocabularies have for common
words), so token counts are realistic: about 15 for p_o, 35-45 for p_a. Weights are random; timings do not
depend on their values, but score differences (int8, bf16) are only indicative: measure them on real
weights with ``--weights imagereward=FOLDER`` (any scorer options work via ``--option name.key=value``).

    python benchmarks/bench_scorers.py                                   # imagereward, 1 pair, 3 rounds
    python benchmarks/bench_scorers.py --arch imagereward hpsv2.1 --pairs 4 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from aesthetic_audit.registry import get

CAPTIONS = ["a man riding a bicycle down a quiet street next to parked cars",
            "two dogs playing with a red ball on a sandy beach",
            "a bowl of fruit on a wooden kitchen table by the window",
            "an old train crossing a stone bridge over a river",
            "a woman reading a book on a park bench under a tree",
            "a plate of pasta with tomato sauce and fresh basil",
            "a small boat tied to a pier at sunset",
            "children flying kites on a green hill"]
EFFECTS = ("with heavy blur and nothing in sharp focus, murky underexposed darkness, a clashing garish palette "
           "and coarse blocky detail, {caption}, the subject tiny in a far corner of an empty frame")

CLIP_L14 = dict(vision=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                            hidden_act="quick_gelu", image_size=224, patch_size=14),
                text=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                          hidden_act="quick_gelu"), projection_dim=768)
VIT_H14 = dict(vision=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120,
                           hidden_act="gelu", image_size=224, patch_size=14, layer_norm_eps=1e-5),
               text=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                         hidden_act="gelu", layer_norm_eps=1e-5), projection_dim=1024)


def pairs_of(n: int) -> list[tuple[Image.Image, Image.Image, str, str]]:
    """n (I_o, I_a, p_o, p_a): smooth random 384 x 288 images, each pair its own caption."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        imgs = [Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).resize((384, 288), Image.BICUBIC)
                for _ in range(2)]
        caption = CAPTIONS[i % len(CAPTIONS)] + ("" if i < len(CAPTIONS) else f" number {i}")
        out.append((imgs[0], imgs[1], caption, EFFECTS.format(caption=caption)))
    return out


def words_of(prompts: list[str]) -> list[str]:
    return sorted({w for p in prompts for w in p.lower().replace(",", " , ").split()})


# -- models, tokenisers and the official-style forward per architecture -----------------------------------

@dataclass
class Setup:
    make: Callable[..., Any]                 # scorer options -> a scorer on the shared model
    official: Callable[[Image.Image, str], float]  # one combination, the official way
    model: Any


def random_init(model) -> Any:
    """Fill a model built on the meta device with small random values (no slow per-layer initialisation)."""
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim <= 1:  # norms' scales (and CLIP's logit scale, unused here)
                p.fill_(1.0)
            else:
                p.normal_(0, p.shape[-1] ** -0.5, generator=g)
        for name, b in model.named_buffers():
            if "position_ids" in name:
                b.copy_(torch.arange(b.shape[-1]).expand_as(b))
    return model.eval()


def loaded(name: str, options: dict) -> dict:
    """Real weights loaded once, then injected into every scorer of the benchmark (one copy in memory)."""
    scorer = get("scorers", name)(**options).load()
    return {"device": options.get("device", "cpu"), "model": scorer.model, "tokenizer": scorer.tokenizer,
            "processor": scorer.preprocess}


def imagereward_setup(tmp: Path, prompts: list[str], options: dict) -> Setup:
    from transformers import BertTokenizer

    from aesthetic_audit.scorers import imagereward as ir

    if options.get("weights"):
        options = loaded("imagereward", options)
        model, tok = options["model"], options["tokenizer"]
    else:
        vit = dict(width=1024, depth=24, heads=16, patch=16, positions=197, hidden=4096)
        cfg = {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "hidden_size": 768, "num_hidden_layers": 12,
               "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 30524,
               "max_position_embeddings": 512}
        with torch.device("meta"):
            model = ir._modules()(vit, cfg, [768, 1024, 128, 64, 16, 1])
        model = random_init(model)
        (tmp / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words_of(prompts)))
        tok = BertTokenizer.from_pretrained(str(tmp), do_lower_case=True)
        tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        options = {**options, "model": model, "tokenizer": tok}
    spec = get("scorers", "imagereward").variants["imagereward"]
    prep = get("scorers", "imagereward")(**options).load().preprocess

    def make(**kw):
        return get("scorers", "imagereward")(**{**options, **kw})

    def official(image, prompt):
        enc = tok(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        raw = model.reward(model.encode_image(prep.batch([image])), enc.input_ids, enc.attention_mask)
        return (float(raw[0]) - spec["mean"]) / spec["std"]

    return Setup(make, official, model)


def word_bpe(tmp: Path, prompts: list[str]) -> tuple[Path, Path]:
    """A CLIP BPE vocabulary in which every word of the prompts is one token (merges spell each word)."""
    from aesthetic_audit.scorers._openclip import byte_symbols

    table = byte_symbols()
    base = [table[b] for b in range(256)]
    vocab = base + [s + "</w>" for s in base]
    merges: list[tuple[str, str]] = []
    seen = set(vocab)
    for word in words_of(prompts):
        symbols = [table[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        left = symbols[0]
        for right in symbols[1:]:
            if left + right not in seen:
                merges.append((left, right))
                seen.add(left + right)
                vocab.append(left + right)
            left += right
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (tmp / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return tmp / "vocab.json", tmp / "merges.txt"


def clip_model(geometry: dict, vocab: int):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(text_config={**geometry["text"], "vocab_size": vocab, "max_position_embeddings": 77,
                                     "bos_token_id": vocab - 2, "eos_token_id": vocab - 1, "pad_token_id": 0},
                        vision_config=geometry["vision"], projection_dim=geometry["projection_dim"])
    with torch.device("meta"):
        model = CLIPModel(config)
    return random_init(model)


def hps_setup(tmp: Path, prompts: list[str], options: dict) -> Setup:
    from aesthetic_audit.scorers._openclip import OpenClipTokenizer

    if options.get("weights"):
        options = loaded("hpsv2.1", options)
        model, tok = options["model"], options["tokenizer"]
    else:
        vocab, merges = word_bpe(tmp, prompts)
        tok = OpenClipTokenizer.from_files(vocab, merges)
        model = clip_model(VIT_H14, len(json.loads(vocab.read_text())))
        options = {**options, "model": model, "tokenizer": tok}
    prep = get("scorers", "hpsv2.1")(**options).load().preprocess

    def make(**kw):
        return get("scorers", "hpsv2.1")(**{**options, **kw})

    def official(image, prompt):
        ids = tok([prompt])[0]  # open_clip: always 77 positions
        img = model.visual_projection(model.vision_model(pixel_values=prep.batch([image])).pooler_output)
        hidden = model.text_model(input_ids=ids).last_hidden_state
        txt = model.text_projection(hidden[torch.arange(1), ids.argmax(dim=-1)])
        return float(torch.nn.functional.cosine_similarity(img, txt)[0])

    return Setup(make, official, model)


def clip_setup(tmp: Path, prompts: list[str], options: dict) -> Setup:
    from aesthetic_audit.scorers._clip_common import load_tokenizer, pooled
    from aesthetic_audit.scorers._torch import ImagePreprocess

    if options.get("weights"):
        options = loaded("clip", options)
        model, tok, prep = options["model"], options["tokenizer"], options["processor"]
    else:
        tok = load_tokenizer(*word_bpe(tmp, prompts))
        model = clip_model(CLIP_L14, len(tok))
        prep = ImagePreprocess(224, crop_offset="floor")
        options = {**options, "model": model, "tokenizer": tok, "processor": prep}

    def make(**kw):
        return get("scorers", "clip")(**{**options, **kw})

    def official(image, prompt):
        enc = tok([prompt], padding=True, truncation=True, max_length=77, return_tensors="pt")
        img = pooled(model.get_image_features(pixel_values=prep.batch([image])))
        txt = pooled(model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask))
        return 100 * float(torch.nn.functional.cosine_similarity(img, txt)[0])

    return Setup(make, official, model)


SETUPS = {"imagereward": imagereward_setup, "hpsv2.1": hps_setup, "clip": clip_setup}


# -- timing -----------------------------------------------------------------------------------------------

def run_side(fn: Callable[[], list[float]]) -> tuple[float, float, list[float]]:
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        scores = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, scores


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} {min(values):7.2f}"


def bench(arch: str, n_pairs: int, rounds: int, batch_size: int, fast: list[str], options: dict) -> None:
    pairs = pairs_of(n_pairs)
    items = [(img, p) for i_o, i_a, p_o, p_a in pairs for img in (i_o, i_a) for p in (p_o, p_a)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        setup = SETUPS[arch](Path(tmp), [p for _, p in items], options)
        scorers = {"one/call": setup.make(batch_size=batch_size), "dedup": setup.make(batch_size=1),
                   "batched": setup.make(batch_size=batch_size)}
        if "int8" in fast:
            scorers["int8"] = setup.make(batch_size=batch_size, quantize="int8")
        if "bf16" in fast:  # an injected model is never cast by the scorer: inject a bf16 copy
            low = copy.deepcopy(setup.model).to(torch.bfloat16)
            if hasattr(low, "mlp"):  # ImageReward's head stays float32, as dtype: bf16 keeps it
                low.mlp.float()
            scorers["bf16"] = setup.make(batch_size=batch_size, model=low)
        for s in scorers.values():
            s.load()
        sides: dict[str, Callable[[], list[float]]] = {
            "official": lambda: [setup.official(img, p) for img, p in items],
            "one/call": lambda: [scorers["one/call"].score([it])[0].score for it in items],
            **{name: (lambda s=s: [r.score for r in s.score(items)])
               for name, s in scorers.items() if name != "one/call"}}
        with torch.inference_mode():  # warm-up: first-call allocations and lazy imports out of the timings
            for name, s in scorers.items():
                if name not in ("one/call", "dedup"):  # these share the batched scorer's model
                    s.score(items[:1])
            setup.official(*items[0])
        print(f"\n== {arch}: {n_pairs} pairs x 4 combinations = {len(items)} items ({2 * n_pairs} images, "
              f"{2 * n_pairs} prompts), batch size {batch_size}, {torch.get_num_threads()} threads, {rounds} rounds "
              f"interleaved; set up in {time.perf_counter() - t0:.0f} s")
        names = list(sides)
        wall = {n: [] for n in names}
        cpu = {n: [] for n in names}
        scores: dict[str, list[float]] = {}
        for r in range(rounds):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]
                w, c, scores[name] = run_side(sides[name])
                wall[name].append(w)
                cpu[name].append(c)
            print(f"   round {r + 1}: " + ", ".join(f"{n} {wall[n][-1]:.1f}/{cpu[n][-1]:.1f}" for n in names)
                  + "  (wall/CPU s)", flush=True)
        print(f"   {'side':10s} {'wall median':>11s} {'min':>7s} {'CPU median':>11s} {'min':>7s}")
        for n in names:
            print(f"   {n:10s} {stats(wall[n]):>19s} {stats(cpu[n]):>19s}")

        def ratio(a: str, b: str) -> str:
            mw = statistics.median(wall[a]) / statistics.median(wall[b])
            mc = statistics.median(cpu[a]) / statistics.median(cpu[b])
            return f"{mw:5.2f}x wall, {mc:5.2f}x CPU"

        def deviation(a: str, b: str) -> float:
            return float(np.max(np.abs(np.array(scores[a]) - np.array(scores[b]))))

        print(f"   one/call vs official  {ratio('one/call', 'official')}   (our per-call cost / the bare forward's; "
              f"1.00 = no overhead)")
        print(f"   de-duplication        {ratio('one/call', 'dedup')}   (one item per call / each distinct input once)")
        print(f"   batching              {ratio('dedup', 'batched')}   (batch size 1 / batch size {batch_size})")
        print(f"   fp32 speed-up         {ratio('one/call', 'batched')}   over one item per call (goal >= 3x)")
        print(f"                         {ratio('official', 'batched')}   over the official-style forward")
        print(f"   fp32 numerics         batched vs official max |diff| {deviation('batched', 'official'):.2e}, "
              f"vs one/call {deviation('batched', 'one/call'):.2e} (scores up to "
              f"{np.max(np.abs(scores['batched'])):.3g})")
        for mode in fast:
            print(f"   fast: {mode:4s}            {ratio('batched', mode)}   over fp32 batched; max |diff| from fp32 "
                  f"{deviation(mode, 'batched'):.2e}" + ("" if options.get("weights") else " (random weights)"))


def parse_options(values: list[str], weights: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in weights:
        name, _, path = item.partition("=")
        out.setdefault(name, {})["weights"] = path
    for item in values:
        key, _, value = item.partition("=")
        name, _, option = key.partition(".")
        out.setdefault(name, {})[option] = json.loads(value) if value[:1] in "0123456789tfn[{\"" else value
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["imagereward"], choices=list(SETUPS))
    p.add_argument("--pairs", type=int, default=1, help="image pairs, each scored in its 4 combinations")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median and min are printed)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fast", nargs="*", default=["int8"], choices=["int8", "bf16"], help="fast modes to compare")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--weights", action="append", default=[], metavar="ARCH=PATH",
                   help="real weights for an architecture (its scorer's weights option)")
    p.add_argument("--option", action="append", default=[], metavar="ARCH.KEY=VALUE", help="a scorer option")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    options = parse_options(args.option, args.weights)
    for arch in args.arch:
        bench(arch, args.pairs, args.rounds, args.batch_size, args.fast, {"device": "cpu", **options.get(arch, {})})


if __name__ == "__main__":
    main()
