"""Editor transforms: time per image at the demo's size, and the share of the edit stage they take.

    python benchmarks/bench_editor.py            # 384 x 384, strengths 0.35 / 0.7 / 1.0, 5 repeats

Prints, per transform, the median milliseconds per image at each strength and the ratio to the
cheapest transform measured in the same run (so a slow transform stands out whatever the machine).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from aesthetic_audit.registry import available


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    image = np.random.default_rng(0).random((args.side, args.side, 3), dtype=np.float32)
    rows = []
    for name, t in available("transforms").items():
        per_strength = []
        for strength in (0.35, 0.7, 1.0):
            times = []
            for r in range(args.repeats):
                t0 = time.perf_counter()
                t.apply(image, strength, np.random.default_rng(r))
                times.append(time.perf_counter() - t0)
            per_strength.append(statistics.median(times) * 1000)
        rows.append((name, per_strength))
    cheapest = min(max(ms) for _, ms in rows) or 1e-9
    print(f"{'transform':24} {'0.35 ms':>9} {'0.7 ms':>9} {'1.0 ms':>9} {'x cheapest':>11}")
    for name, ms in rows:
        print(f"{name:24} {ms[0]:9.1f} {ms[1]:9.1f} {ms[2]:9.1f} {max(ms) / cheapest:11.1f}")


if __name__ == "__main__":
    main()
