"""The diffusers generator vs a bare pipeline call loop, on the same loaded pipeline and batch.

    python benchmarks/bench_generate.py                          # tiny random SDXL-layout pipeline, 64 px
    python benchmarks/bench_generate.py --kind flux --size 64 --batch 4
    python benchmarks/bench_generate.py --model /models/FLUX.1-dev --device cuda --dtype bf16 \\
        --size 1024 --steps 28 --batch 4 --repeats 3 --extra max_sequence_length=512

Both paths run the same prompts and seeds through the same pipeline object: ours through
DiffusersGenerator.generate (request grouping, one seeded generator per request, the NaN check on the
float output, PIL conversion, the blank-frame check), the bare one as ``pipe(prompt=[...],
generator=[...], output_type="pil", ...)`` under inference_mode as ours. Repeats alternate the two (and
which goes first); the medians give images/s and the overhead ratio (goal: within 5%). Memory: the peak
of Python/numpy allocations per path (tracemalloc), the process's peak RSS growth while loading and
while generating, and on CUDA the peak device memory per path.

Without --model the pipeline is one of the tests' tiny random pipelines (tests/tiny/diffusion.py), built
into a temporary folder; timings do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from aesthetic_audit.images.generators.base import GenerationRequest
from aesthetic_audit.images.generators.diffusers_t2i import DiffusersGenerator

PROMPT = "a blurry dark photo of a cat"  # words the tiny tokenizers know: no truncation warnings


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def parse_extra(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key] = value
    return out


def seconds(fn, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def peaks(fn, cuda: bool) -> tuple[float, float]:
    """(Python/numpy peak MiB, CUDA peak MiB) of one call; a run of its own, as tracing slows the call."""
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak, (torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a diffusers folder (default: build a tiny random pipeline)")
    ap.add_argument("--kind", default="sdxl", choices=["flux", "sd3", "sdxl"], help="tiny pipeline family")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=8, help="prompt pairs for the stage measurement")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    ap.add_argument("--extra", nargs="*", default=[], help="more call params, key=value")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        extra = parse_extra(args.extra)
        if model is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from tiny.diffusion import PIPELINE_BUILDERS, T5_LENGTH

            model = str(PIPELINE_BUILDERS[args.kind](Path(tmp) / args.kind))
            if args.kind != "sdxl":
                extra.setdefault("max_sequence_length", T5_LENGTH)
        rss0 = maxrss_mib()
        gen = DiffusersGenerator(model=model, device=args.device, dtype=args.dtype, batch_size=args.batch)
        gen.load()
        rss_loaded = maxrss_mib()
        pipe = gen.loaded.pipe
        cuda = str(gen.device).startswith("cuda")
        params = {"num_inference_steps": args.steps, "width": args.size, "height": args.size, **extra}
        seeds = list(range(args.batch))
        requests = [GenerationRequest(PROMPT, seed=s, params=params) for s in seeds]

        def ours():
            results = gen.generate(requests)
            assert all(r.ok for r in results), [r.error for r in results]
            return [r.image for r in results]

        def bare():
            with torch.inference_mode():  # as ours: the comparison is then about our work around the call
                return pipe(prompt=[PROMPT] * len(seeds), output_type="pil", **params,
                            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds]).images

        # warm-up (first-call allocations, kernel selection), and a check that both paths do the same work
        same = [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours(), bare())]
        paths = {"ours": ours, "bare": bare}
        runs: dict[str, list[float]] = {"ours": [], "bare": []}
        for r in range(args.repeats):
            for name in (("ours", "bare") if r % 2 == 0 else ("bare", "ours")):  # alternate who goes first
                runs[name].append(seconds(paths[name], cuda))
        memory = {name: peaks(fn, cuda) for name, fn in paths.items()}
        stage = stage_vs_bare(gen, pipe, model, params, args, Path(tmp), cuda)

    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"pipeline {type(pipe).__name__} on {gen.device} {gen.dtype_label()}, {args.size}x{args.size}, "
          f"{args.steps} steps, batch {args.batch}, {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    header = f"{'path':6} {'s/batch':>9} {'images/s':>9} {'py peak MiB':>12}"
    print(header + (f" {'cuda peak MiB':>14}" if cuda else ""))
    for k in ("bare", "ours"):
        line = f"{k:6} {med[k]:9.3f} {args.batch / med[k]:9.2f} {memory[k][0]:12.1f}"
        print(line + (f" {memory[k][1]:14.0f}" if cuda else ""))
    print(f"same images from both paths: {sum(same)} of {len(same)}")
    print(f"overhead: ours / bare = {med['ours'] / med['bare']:.3f} ({(med['ours'] / med['bare'] - 1) * 100:+.1f}%; "
          "goal within 5%)")
    print(f"process peak RSS: +{rss_loaded - rss0:.0f} MiB loading, +{maxrss_mib() - rss_loaded:.0f} MiB generating")
    n_images, t_stage, t_bare = stage
    print(f"the whole generate stage ({n_images // 2} prompt pairs -> {n_images} images, store writes and records "
          f"included) vs a bare loop over the same prompts in batches of {args.batch}:")
    print(f"  stage {n_images / t_stage:.2f} images/s, bare {n_images / t_bare:.2f} images/s, "
          f"stage / bare = {t_stage / t_bare:.3f} ({(t_stage / t_bare - 1) * 100:+.1f}%; goal within 5%)")


def stage_vs_bare(gen, pipe, model: str, params: dict, args, tmp: Path, cuda: bool) -> tuple[int, float, float]:
    """The generate stage (planning, seeds, keys, batching, PNG encoding, store writes) on ``args.pairs``
    prompt pairs, each repeat into a new run, vs the bare pipeline over the same prompts and seeds."""
    from aesthetic_audit.dimensions import load_catalogue
    from aesthetic_audit.images.generate import plan_jobs, run_generate
    from aesthetic_audit.images.generators.presets import generator_specs
    from aesthetic_audit.pipeline import Run
    from aesthetic_audit.prompts.stage import run_prompts

    overrides = {"prompts.n": args.pairs, "images.backend": "generate", "images.generate.generators": ["diffusers"],
                 "images.generate.batch_size": args.batch,
                 "images.generate.options": {"diffusers": {"model": model, "params": params}}}

    def fresh_run(r: int):
        run = Run.open(tmp / f"run{r}", overrides=overrides)
        run_prompts(run.store, run.config, load_catalogue())
        return run

    template = fresh_run(-1)
    spec = generator_specs(template.config.images.generate)[0]
    jobs = plan_jobs(template.store, template.config, spec, gen.identity())
    requests = [req for job in jobs for req in (job.o, job.a)]

    def bare():
        with torch.inference_mode():
            for start in range(0, len(requests), args.batch):
                chunk = requests[start:start + args.batch]
                pipe(prompt=[q.prompt for q in chunk], output_type="pil", **params,
                     generator=[torch.Generator("cpu").manual_seed(q.seed) for q in chunk])

    times = {"stage": [], "bare": []}
    for r in range(args.repeats):
        run = fresh_run(r)
        timed = {"stage": lambda: run_generate(run.store, run.config, spec, generator=gen), "bare": bare}
        for name in (("stage", "bare") if r % 2 == 0 else ("bare", "stage")):
            times[name].append(seconds(timed[name], cuda))
    return len(requests), statistics.median(times["stage"]), statistics.median(times["bare"])


if __name__ == "__main__":
    main()
