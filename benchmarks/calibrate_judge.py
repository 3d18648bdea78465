"""Calibrate the classical judge's anchors on the built-in photos and their editor transforms.

For every transform whose dimension the judge covers, each photo is edited at strengths 0, 0.25,
0.5, 0.75 and 1 (seed 0 unless --seed) and measured. Printed, per dimension: each statistic on the
originals and on the edits (min / median / max over photos), the anchors in use, and the resulting
J; then the checks the anchors must pass (J non-increasing in strength, J(original) >= 1.2,
J(strength 1) <= 0.8) and how far J moves on the other covered dimensions.

    python benchmarks/calibrate_judge.py [--max-side 384] [--per-photo] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from aesthetic_audit import registry
from aesthetic_audit.images.decode import from_array, to_array
from aesthetic_audit.images.photos import load_photos
from aesthetic_audit.judges import classical as cj

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
# dimension -> (statistic, anchors, what the anchors map to: J itself or a penalty taken off 2)
STATS_BY_DIM = {
    "clarity": [("blur_exponent", cj.BLUR_ANCHORS, "J"), ("noise_sigma", cj.NOISE_ANCHORS, "J")],
    "color brightness": [("mean_luma", cj.LUMA_ANCHORS, "J"), ("crushed_share", cj.CRUSHED_ANCHORS, "J")],
    "color aesthetic": [("colourfulness", cj.COLOURFUL_PENALTY, "penalty"),
                        ("vivid_share", cj.VIVID_PENALTY, "penalty"),
                        ("hue_disharmony", cj.DISHARMONY_PENALTY, "penalty"),
                        ("sickly_chroma", cj.SICKLY_PENALTY, "penalty")],
    "lighting distinction": [("lighting", cj.LIGHTING_ANCHORS, "J")],
    "detail refinement": [("blockiness", cj.BLOCK_PENALTY, "penalty"), ("smear_share", cj.SMEAR_PENALTY, "penalty"),
                          ("flat_share", cj.FLAT_PENALTY, "penalty")],
}


def spread(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.min():7.3f} {np.median(v):7.3f} {v.max():7.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-side", type=int, default=384)
    ap.add_argument("--per-photo", action="store_true", help="also print every photo's J row")
    ap.add_argument("--seed", type=int, default=0, help="seed of the transforms' random generator")
    args = ap.parse_args()

    t0 = time.perf_counter()
    photos = load_photos("builtin", max_side=args.max_side)
    transforms = {n: t for n, t in registry.available("transforms").items() if t.dimension in cj.ClassicalJudge.covers}
    # stats[transform][photo] = [measure at each strength]
    stats: dict[str, dict[str, list[dict[str, float]]]] = {}
    for name, t in transforms.items():
        stats[name] = {}
        for p in photos:
            x = to_array(p.image)
            row = []
            for s in STRENGTHS:
                out, _ = t.apply(x, s, np.random.default_rng(args.seed))
                m = cj.measure(from_array(out))
                m["lighting"] = cj.lighting_statistic(m)
                row.append(m)
            stats[name][p.name] = row
    elapsed = time.perf_counter() - t0
    originals = next(iter(stats.values()))

    print(f"{len(photos)} photos at max side {args.max_side}; {len(transforms)} transforms; seed {args.seed}; "
          f"measured in {elapsed:.1f} s\n")
    print("statistic on originals and edits: min / median / max over photos")
    for dim, used in STATS_BY_DIM.items():
        print(f"\n=== {dim}")
        for key, anchors, kind in used:
            print(f"  {key}: anchors (x, {kind}) = {anchors}")
            print(f"    {'originals':28s} {spread([r[0][key] for r in originals.values()])}")
            for name, t in transforms.items():
                if t.dimension != dim:
                    continue
                for i, s in enumerate(STRENGTHS[1:], start=1):
                    print(f"    {name + f' @{s:.2f}':28s} {spread([r[i][key] for r in stats[name].values()])}")

    print("\n=== J on the transform's own dimension: min / median / max over photos")
    failures = []
    for name, t in transforms.items():
        js = np.array([[cj.score(m)[t.dimension] for m in row] for row in stats[name].values()])
        cells = "  ".join(f"@{s:.2f} {spread(js[:, i].tolist())}" for i, s in enumerate(STRENGTHS))
        print(f"  {name:22s} ({t.dimension})\n    {cells}")
        for pname, row in zip(stats[name], js):
            if args.per_photo:
                print(f"      {pname:22s} " + " ".join(f"{v:5.2f}" for v in row))
            rises = np.diff(row)
            if (rises > 0.02).any():
                failures.append(f"{name} on {pname}: J rises by {rises.max():.3f} ({np.round(row, 3).tolist()})")
        ok_orig = int((js[:, 0] >= 1.2).sum())
        ok_edit = int((js[:, -1] <= 0.8).sum())
        print(f"    J(original) >= 1.2: {ok_orig}/{len(js)}   J(strength 1) <= 0.8: {ok_edit}/{len(js)}   "
              f"mean drop {np.mean(js[:, 0] - js[:, -1]):.2f}")

    print("\n=== J on the other covered dimensions at strength 1 minus original: mean (max |change|)")
    for name, t in transforms.items():
        cells = []
        for dim in cj.ClassicalJudge.covers:
            if dim == t.dimension:
                continue
            d = np.array([cj.score(row[-1])[dim] - cj.score(row[0])[dim] for row in stats[name].values()])
            cells.append(f"{dim[:12]:12s} {d.mean():+5.2f} ({np.abs(d).max():4.2f})")
        print(f"  {name:22s} " + "  ".join(cells))

    print("\nmonotonicity (tolerance 0.02): " + ("all non-increasing" if not failures else f"{len(failures)} rises"))
    for f in failures:
        print("  " + f)


if __name__ == "__main__":
    main()
