"""The Ray engine against itself and the local engine, measured side by side in one run on this machine.

The job is the ``brisque`` scorer (about 70 ms of single-threaded numpy/scipy per 384 x 288 image, the
same work whichever engine runs it) on a run of --pairs editor pairs (one edit per photo, so 2 x pairs
distinct images). The run is built once through the project's API (``Run.open`` + ``Run.edit`` on a
folder of synthetic photos); each measurement scores a fresh copy of it (``shutil.copytree``, no score
records), and only the ``Run.score(["brisque"])`` call is timed.

1. scaling   the same job on the local engine (in this process), on Ray with 1 worker and with 2
             workers (``ray.workers``, ``ray.num_cpus: 1``), sides rotated round by round, median of
             --repeat rounds. Ray's time includes starting the actors (a new worker process each, which
             imports the package and loads the scorer) and the ``images: auto`` probe; "after start" is
             the same call less that part (timed from the moment the engine's actor pool has answered
             the probe, i.e. every actor is built and loaded). CPU% is the whole machine's busy share
             during the call (/proc/stat), driver CPU this process's CPU time.
             Goal: 2 workers >= 1.7x the throughput of 1 worker.
2. overhead  the same stage on a small job (--small images), local engine against Ray with 1 worker:
             seconds and ratio; ``ray.init`` is timed once, separately, before everything else.

Threads: every side computes on one thread, so the ratio measures parallelism, not thread counts. The
local side runs under ``threadpoolctl.threadpool_limits(1)`` and ``cv2.setNumThreads(1)``; Ray starts with
OMP/OpenBLAS/MKL/OpenCV thread counts of 1 in its workers' environment (``runtime_env``), and a probe
task prints what a worker with ``num_cpus: 1`` actually has. (The scorer itself limits libsvm's OpenMP to
one thread.) Ray is started once (``ray.init(num_cpus=2)``) and reused: the engine joins a Ray that is
already running and leaves it running.

    python benchmarks/bench_ray.py                              # ~3 minutes on 2 CPUs
    python benchmarks/bench_ray.py --pairs 40 --small 10 --repeat 1  # a smoke test, not a measurement
    python benchmarks/bench_ray.py --chunk 64 --in-flight 1 --out ray.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench_pipeline import caption, table, verdict

GOAL_SPEEDUP = 1.7
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                     "OPENCV_FOR_THREADS_NUM")}


def write_photos(folder: Path, n: int, side: int) -> Path:
    """n photos of side x 3/4 side (smooth colour fields with mild noise) and their ``captions.csv``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    w, h = side, side * 3 // 4
    rows = ["file,caption"]
    for i in range(n):
        coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.float64) + rng.normal(0, 8, (h, w, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"p{i:05d}.png")
        rows.append(f"p{i:05d}.png,{caption(i).replace(',', '')}")
    (folder / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def build_run(folder: Path, pairs: int, side: int) -> tuple[Path, float]:
    """A run of ``pairs`` editor pairs (edited, not scored); the seconds it took."""
    from aesthetic_audit.pipeline import Run

    start = time.perf_counter()
    photos = write_photos(folder / "photos", pairs, side)
    run = Run.open(folder / "run", overrides={
        "images.editor.photos": str(photos), "images.editor.pairs_per_photo": 1,
        "images.editor.strengths": [0.7], "images.editor.max_side": side})
    run.edit()
    run.close()
    return folder / "run", time.perf_counter() - start


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def score_once(base: Path, work: Path, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Score a fresh copy of ``base`` with brisque; the call's wall time, the part after the actors were up,
    the machine's busy share, this process's CPU time and the stage's counts."""
    import cv2
    from threadpoolctl import threadpool_limits

    from aesthetic_audit.pipeline import Run

    copy = work / name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(base, copy)
    run = Run.open(copy, overrides={"score.scorers": ["brisque"], **overrides})
    engine = run.engine
    started: list[float] = []
    if engine.name == "ray":
        start_pool = engine._start

        def timed_start(*args):
            pool = start_pool(*args)
            started.append(time.perf_counter())  # the auto probe has been answered: every actor is loaded
            return pool

        engine._start = timed_start
    cv2.setNumThreads(1)
    jiffies = busy_jiffies()
    with threadpool_limits(1):
        cpu, wall = time.process_time(), time.perf_counter()
        summary = run.score(["brisque"])[0]
        end = time.perf_counter()
        cpu = time.process_time() - cpu
    busy, total = (b - a for a, b in zip(jiffies, busy_jiffies()))
    run.close()
    shutil.rmtree(copy)
    if run.errors or summary.failed or summary.new != summary.total:
        raise SystemExit(f"{name}: the stage did not score every item: {summary.line()} {run.errors}")
    return {"wall": end - wall, "after_start": end - started[0] if started else None,
            "start": started[0] - wall if started else None, "cpu_share": busy / max(total, 1),
            "driver_cpu": cpu, "items": summary.total}


def worker_threads(ray) -> dict[str, Any]:
    """What a Ray worker with num_cpus 1 has: thread-related environment and native thread pools."""

    @ray.remote(num_cpus=1)
    def probe() -> dict[str, Any]:
        import cv2
        from threadpoolctl import threadpool_info

        return {"env": {k: os.environ.get(k) for k in ONE_THREAD},
                "pools": sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()}),
                "cv2": cv2.getNumThreads()}

    return ray.get(probe.remote())


def local_threads() -> dict[str, Any]:
    import cv2
    from threadpoolctl import threadpool_info, threadpool_limits

    cv2.setNumThreads(1)
    with threadpool_limits(1):
        pools = sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()})
    return {"pools": pools, "cv2": cv2.getNumThreads()}


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=120, help="editor pairs of section 1 (2x as many images; "
                   "default 120: about 17 s of brisque on one core)")
    p.add_argument("--small", type=int, default=20, help="images of section 2's small job (default 20)")
    p.add_argument("--side", type=int, default=384, help="photo width in px (height 3/4 of it; default 384)")
    p.add_argument("--chunk", type=int, default=16, help="score.chunk_size, the items per batch (default 16)")
    p.add_argument("--in-flight", type=int, default=2, help="ray.in_flight, batches queued per actor (default 2)")
    p.add_argument("--images", choices=("auto", "shared", "send"), default="auto",
                   help="ray.images (default auto; 'after start' is only measured with auto)")
    p.add_argument("--repeat", type=int, default=2, help="rounds; each figure is the median (default 2)")
    p.add_argument("--out", type=Path, help="also write every figure to this JSON file")
    args = p.parse_args()

    import ray

    import aesthetic_audit
    from aesthetic_audit import ui

    ui.configure(0)
    print(f"aesthetic_audit from {Path(aesthetic_audit.__file__).parent}; ray {ray.__version__}; "
          f"{os.cpu_count()} CPUs")
    began = time.perf_counter()
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": ONE_THREAD})
    ray_init = time.perf_counter() - start
    threads = {"worker": worker_threads(ray), "local": local_threads()}
    figures: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "ray_init_s": ray_init,
                               "threads": threads}
    print(f"ray.init: {ray_init:.1f} s")
    print(f"threads: Ray worker (num_cpus 1) env {threads['worker']['env']}, pools {threads['worker']['pools']}, "
          f"cv2 {threads['worker']['cv2']}; local side pools {threads['local']['pools']}, cv2 "
          f"{threads['local']['cv2']}")

    ray_settings = {"engine": "ray", "ray.num_cpus": 1, "ray.in_flight": args.in_flight,
                    "ray.images": args.images, "score.chunk_size": args.chunk}
    sides = {"local": {"engine": "local", "score.chunk_size": args.chunk},
             "ray 1 worker": {**ray_settings, "ray.workers": 1},
             "ray 2 workers": {**ray_settings, "ray.workers": 2}}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp = Path(tmp)
        big, big_s = build_run(tmp / "big", args.pairs, args.side)
        small, small_s = build_run(tmp / "small", (args.small + 1) // 2, args.side)
        print(f"runs built: {args.pairs} pairs in {big_s:.0f} s, {(args.small + 1) // 2} pairs in {small_s:.0f} s")

        # 1. scaling
        rounds: dict[str, list] = {name: [] for name in sides}
        names = list(sides)
        for r in range(args.repeat):
            for name in names[r % 3:] + names[:r % 3]:
                rounds[name].append(score_once(big, tmp, f"big-{r}-{name}", sides[name]))
        items = rounds["local"][0]["items"]
        scaling = {name: {"runs": runs, **{k: median(runs, k) for k in ("wall", "after_start", "start", "cpu_share",
                                                                           "driver_cpu")}}
                   for name, runs in rounds.items()}
        one, two = scaling["ray 1 worker"], scaling["ray 2 workers"]
        speedup = one["wall"] / two["wall"]
        speedup_after = one["after_start"] / two["after_start"] if one["after_start"] and two["after_start"] else None
        figures["scaling"] = {"items": items, "sides": scaling, "speedup": speedup, "speedup_after_start": speedup_after,
                              "ok": speedup >= GOAL_SPEEDUP}
        table(f"1. brisque on {items} images ({args.side} px), chunk {args.chunk}, in_flight {args.in_flight}, "
              f"images {args.images}; median of {args.repeat}",
              ["side", "wall s", "img/s", "start s", "after start s", "img/s after", "CPU%", "driver cpu s"],
              [[name, fmt(s["wall"]), fmt(items / s["wall"], ".1f"), fmt(s["start"]), fmt(s["after_start"]),
                fmt(items / s["after_start"], ".1f") if s["after_start"] else "-", fmt(100 * s["cpu_share"], ".0f"),
                fmt(s["driver_cpu"])] for name, s in scaling.items()])
        print(f"   local engine: in this process, 1 thread; ray: 1 thread per actor; start = actor start-up + load "
              f"+ images probe")
        print(f"   2 workers / 1 worker: {speedup:.2f}x (start-up included), {fmt(speedup_after)}x after start; "
              f"goal >= {GOAL_SPEEDUP}x: {verdict(speedup >= GOAL_SPEEDUP)}")
        print(f"   ray 1 worker / local: {one['wall'] / scaling['local']['wall']:.2f}x wall")

        # 2. overhead on a small job
        small_runs: dict[str, list] = {"local": [], "ray 1 worker": []}
        for r in range(args.repeat):
            for name in (["local", "ray 1 worker"] if r % 2 == 0 else ["ray 1 worker", "local"]):
                small_runs[name].append(score_once(small, tmp, f"small-{r}-{name}", sides[name]))
        local_s, ray_s = median(small_runs["local"], "wall"), median(small_runs["ray 1 worker"], "wall")
        ray_start = median(small_runs["ray 1 worker"], "start")
        n_small = small_runs["local"][0]["items"]
        figures["overhead"] = {"items": n_small, "runs": small_runs, "local_s": local_s, "ray_s": ray_s,
                               "ray_start_s": ray_start, "ratio": ray_s / local_s}
        table(f"2. brisque on {n_small} images: local engine vs Ray, 1 worker; median of {args.repeat}",
              ["side", "wall s", "of which start s"],
              [["local", fmt(local_s), "-"], ["ray 1 worker", fmt(ray_s), fmt(ray_start)],
               ["ray - local", fmt(ray_s - local_s), ""], ["ray / local", f"{ray_s / local_s:.2f}x", ""],
               ["ray.init (once)", fmt(ray_init), ""]])
    ray.shutdown()
    figures["seconds"] = time.perf_counter() - began
    print(f"\n({figures['seconds']:.0f} s in all)")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
