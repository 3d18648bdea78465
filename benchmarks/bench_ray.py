"""The Ray engine against itself and the local engine, measured side by side in one run on this machine.

The job is the ``brisque`` scorer (35-40 ms of single-threaded numpy/scipy per 384 x 288 image, the
same work whichever engine runs it) on a run of --pairs editor pairs (one edit per photo, so 2 x pairs
distinct images). The run is built once through the project's API (``Run.open`` + ``Run.edit`` on a
folder of synthetic photos); each measurement scores a fresh copy of it (``shutil.copytree``, no score
records), and only the ``Run.score(["brisque"])`` call is timed.

1. scaling   the same job on the local engine (in this process), on Ray with 1 worker and with 2
             workers (``ray.workers``, ``ray.num_cpus: 1``), sides rotated round by round, median of
             --repeat rounds. Ray's time includes starting the actors (a new worker process each, which
             imports the package and loads the scorer) and the ``images: auto`` probe; "after start" is
             the same call less that part (timed from the moment the engine's actor pool has answered
             the probe, i.e. every actor is built and loaded). busy% is the whole machine's busy share
             during the call (/proc/stat); CPU seconds during the call are split into this process
             (the driver), its actors (start-up included), its other Ray processes, and others (the
             rest of the machine), sampled from /proc; core/worker is the share of a core each worker
             computed with after start.
             Goal: 2 workers >= 1.7x the throughput of 1 worker once the pools run (after start); the
             whole call's ratio, start-up included, is printed beside it. Below
             the table, the same ratio from the actors' CPU time alone (what it would be with a whole
             core per actor): on a machine that other work also uses, the wall-time ratio measures the
             cores the actors got; the "others" column shows how much CPU that other work took.
2. overhead  the same stage on a small job (--small images), local engine against Ray with 1 worker:
             seconds and ratio; ``ray.init`` is timed once, separately, before everything else.

Threads: every side computes on one thread, so the ratio measures parallelism, not thread counts. The
local side runs under ``threadpoolctl.threadpool_limits(1)`` and ``cv2.setNumThreads(1)``; Ray starts with
OMP/OpenBLAS/MKL/OpenCV thread counts of 1 in its workers' environment (``runtime_env``), and a probe
task prints what a worker with ``num_cpus: 1`` actually has. (The scorer itself limits libsvm's OpenMP to
one thread.) Ray is started once (``ray.init(num_cpus=2)``) and reused: the engine joins a Ray that is
already running and leaves it running.

    python benchmarks/bench_ray.py                              # about 2 minutes on 2 CPUs
    python benchmarks/bench_ray.py --pairs 450                  # long enough for start-up to matter little (~5 min)
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
import threading
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


class CpuSampler:
    """CPU time of this process's descendants (the Ray this script started: its actors, named
    ``ray::Worker...``, and its own services) sampled from /proc every 0.2 s while a call runs, so processes
    that end before the call does (the actors, killed when the stage ends) still count."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.marked: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        parents, cpu, names = {}, {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()[:40].decode(errors="replace")
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            pid = int(entry)
            parents[pid] = int(fields[1])
            cpu[pid] = (int(fields[11]) + int(fields[12])) / self.TICK
            names[pid] = "actor" if cmd.startswith("ray::Worker") else "ray"
        mine, me = {}, os.getpid()
        for pid in cpu:
            p = parents.get(pid)
            while p not in (None, 0, 1, me):
                p = parents.get(p)
            if p == me:
                mine[pid] = (names[pid], cpu[pid])
        return mine

    def _keep(self, snapshot: dict[int, tuple[str, float]]) -> None:
        for pid, (kind, c) in snapshot.items():  # once seen as an actor, always one (its title changes)
            was = self.last.get(pid, ("ray", 0.0))[0]
            self.last[pid] = ("actor" if "actor" in (kind, was) else "ray", c)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._keep(self._snapshot())

    def __enter__(self) -> "CpuSampler":
        self.first = {pid: c for pid, (_, c) in self._snapshot().items()}
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._keep(self._snapshot())

    def mark(self) -> None:
        """Remember the CPU used so far (the actors' start-up), for ``seconds(since_mark=True)``."""
        self._keep(self._snapshot())
        self.marked = dict(self.last)

    def seconds(self, since_mark: bool = False) -> dict[str, float]:
        """CPU seconds used during the call (or since ``mark``) by the actors and the rest of this script's Ray."""
        out = {"actor": 0.0, "ray": 0.0}
        for pid, (kind, c) in self.last.items():
            before = self.marked.get(pid, (kind, self.first.get(pid, 0.0)))[1] if since_mark else \
                self.first.get(pid, 0.0)
            out[kind] += c - before
        return out


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
    sampler = CpuSampler()
    if engine.name == "ray":
        start_pool = engine._start

        def timed_start(*args):
            pool = start_pool(*args)
            started.append(time.perf_counter())  # the auto probe has been answered: every actor is loaded
            sampler.mark()
            return pool

        engine._start = timed_start
    cv2.setNumThreads(1)
    jiffies = busy_jiffies()
    with threadpool_limits(1), sampler:
        cpu, wall = time.process_time(), time.perf_counter()
        summary = run.score(["brisque"])[0]
        end = time.perf_counter()
        cpu = time.process_time() - cpu
    busy, total = (b - a for a, b in zip(jiffies, busy_jiffies()))
    ours, after = sampler.seconds(), sampler.seconds(since_mark=True)
    run.close()
    shutil.rmtree(copy)
    if run.errors or summary.failed or summary.new != summary.total:
        raise SystemExit(f"{name}: the stage did not score every item: {summary.line()} {run.errors}")
    return {"wall": end - wall, "after_start": end - started[0] if started else None,
            "start": started[0] - wall if started else None, "cpu_share": busy / max(total, 1),
            "driver_cpu": cpu, "actor_cpu": ours["actor"],
            "actor_cpu_after_start": after["actor"] if started else None, "ray_cpu": ours["ray"],
            "machine_cpu": busy / CpuSampler.TICK, "items": summary.total}


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


def core_share(side: str, s: dict[str, Any]) -> float | None:
    if s["after_start"] is None:
        return s["driver_cpu"] / s["wall"]
    if s["actor_cpu_after_start"] is None:
        return None
    return s["actor_cpu_after_start"] / (int(side.split()[1]) * s["after_start"])


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=120, help="editor pairs of section 1 (2x as many images; "
                   "default 120: about 9 s of brisque on one core)")
    p.add_argument("--small", type=int, default=20, help="images of section 2's small job (default 20)")
    p.add_argument("--side", type=int, default=384, help="photo width in px (height 3/4 of it; default 384)")
    p.add_argument("--chunk", type=int, default=8, help="score.chunk_size, the items per batch (default 8)")
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
        keys = ("wall", "after_start", "start", "cpu_share", "driver_cpu", "actor_cpu", "actor_cpu_after_start",
                "ray_cpu", "machine_cpu")
        scaling = {name: {"runs": runs, **{k: median(runs, k) for k in keys}} for name, runs in rounds.items()}
        one, two = scaling["ray 1 worker"], scaling["ray 2 workers"]
        speedup = one["wall"] / two["wall"]
        speedup_after = one["after_start"] / two["after_start"] if one["after_start"] and two["after_start"] else None
        figures["scaling"] = {"items": items, "sides": scaling, "speedup": speedup, "speedup_after_start": speedup_after,
                              "ok": speedup >= GOAL_SPEEDUP}
        rows = []
        for name, s in scaling.items():
            others = s["machine_cpu"] - s["driver_cpu"] - s["actor_cpu"] - s["ray_cpu"]
            rows.append([name, fmt(s["wall"]), fmt(items / s["wall"], ".1f"), fmt(s["start"]), fmt(s["after_start"]),
                         fmt(items / s["after_start"], ".1f") if s["after_start"] else "-",
                         fmt(100 * s["cpu_share"], ".0f"), fmt(s["driver_cpu"]), fmt(s["actor_cpu"]),
                         fmt(s["ray_cpu"]), fmt(max(others, 0.0)), fmt(core_share(name, s))])
            s["core_share"] = core_share(name, s)
        table(f"1. brisque on {items} images ({args.side} px), chunk {args.chunk}, in_flight {args.in_flight}, "
              f"images {args.images}; median of {args.repeat}",
              ["side", "wall s", "img/s", "start s", "after start s", "img/s after", "busy%", "cpu s: driver",
               "actors", "ray svc", "others", "core/worker"], rows)
        print("   busy%: both cores' busy share during the call; cpu s: CPU seconds during the call of this process, "
              "its Ray actors (start-up and load included), its other Ray processes, and everything else on the "
              "machine (other users); core/worker: the share of a core each worker computed with (local: this "
              "process's CPU / wall; ray: the actors' CPU after start / (workers x after-start wall))")
        print("   local engine: in this process, 1 thread; ray: 1 thread per actor; start = actor start-up + load "
              "+ images probe")
        # The same ratio from the workers' CPU time alone: what it would be with a whole core per worker.
        cpu_ratio = (2 * one["actor_cpu_after_start"] / two["actor_cpu_after_start"]
                     if one["actor_cpu_after_start"] and two["actor_cpu_after_start"] else None)
        figures["scaling"]["speedup_cpu_bound"] = cpu_ratio
        print(f"   throughput, 2 workers / 1 worker, once the pools run: {fmt(speedup_after)}x "
              f"({verdict((speedup_after or 0) >= GOAL_SPEEDUP)}; goal >= {GOAL_SPEEDUP}x)")
        print(f"   the whole stage call, actor start-up included: {speedup:.2f}x (start-up is a fixed cost per "
              f"stage call: it counts less the longer the stage)")
        print(f"   with a whole core per worker (2 x 1 worker's actor CPU / 2 workers' actor CPU, after start): "
              f"{fmt(cpu_ratio)}x; the workers computed with {fmt(one['core_share'])} and {fmt(two['core_share'])} "
              f"of a core each (1 and 2 workers)")
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
