"""Agreement between label sources: against scikit-learn, hand-worked cases, and Krippendorff's
published worked example."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from aesthetic_audit.analysis import agreement as A
from aesthetic_audit.analysis import stats
from aesthetic_audit.errors import InputError

sk = pytest.importorskip("sklearn.metrics")

# The study's ordinal scale, written out independently of the module: original, tie, anti-aesthetic.
SCALE = {0: 0, -1: 1, 1: 2}


def _random_labels(seed: int, n: int, agree: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.choice([-1, 0, 1], size=n, p=[0.2, 0.3, 0.5])
    b = np.where(rng.random(n) < agree, a, rng.choice([-1, 0, 1], size=n))
    return a, b


def test_ordinal_scale():
    assert [A.ordinal(v) for v in (0, -1, 1)] == [0, 1, 2]
    assert A.ordinal(1.0) == 2 and A.ordinal(np.int64(-1)) == 1
    for bad in (2, -2, 0.5, "1", None, True, math.nan):
        with pytest.raises(InputError, match="pair label"):
            A.ordinal(bad)


def test_pair_agreement_worked_by_hand():
    a = [0, 0, 1, 1, -1, 1, 0, -1]
    b = [0, -1, 1, 0, -1, 1, 0, 1]
    r = A.pair_agreement(a, b, n_boot=200)
    # Ordinal a = 0 0 2 2 1 2 0 1, b = 0 1 2 0 1 2 0 2: |a - b| sums to 4 over 8 pairs.
    assert r["n"] == 8 and r["mae"]["estimate"] == pytest.approx(0.5)
    # Confusion (rows a): O00=2 O01=1 O11=1 O12=1 O20=1 O22=2, margins 3 2 3 both ways:
    # sum W O = 1 + 1 + 4 = 6, sum W E = 2 (0.75 + 4.5 + 0.75) = 12, kappa = 1 - 6/12.
    assert r["kappa"]["estimate"] == pytest.approx(0.5)
    # Untied by both: pairs 0 2 3 5 6, of which 3 disagrees.
    assert r["n_no_ties"] == 5 and r["accuracy_no_ties"]["n"] == 5
    assert r["accuracy_no_ties"]["estimate"] == pytest.approx(0.8)
    # Anti-aesthetic or not: pairs 3 and 7 disagree.
    assert r["accuracy_tie_as_original"]["estimate"] == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_agreement_matches_sklearn(seed):
    a, b = _random_labels(seed, 120, agree=0.6)
    x, y = np.array([SCALE[v] for v in a]), np.array([SCALE[v] for v in b])
    r = A.pair_agreement(a.tolist(), b.tolist(), n_boot=300, seed=seed)
    assert r["mae"]["estimate"] == pytest.approx(sk.mean_absolute_error(x, y))
    assert r["kappa"]["estimate"] == pytest.approx(sk.cohen_kappa_score(x, y, weights="quadratic", labels=[0, 1, 2]))
    untied = (a != -1) & (b != -1)
    assert r["n_no_ties"] == int(untied.sum())
    assert r["accuracy_no_ties"]["estimate"] == pytest.approx(sk.accuracy_score(a[untied], b[untied]))
    assert r["accuracy_tie_as_original"]["estimate"] == pytest.approx(sk.accuracy_score(a == 1, b == 1))
    for key in ("mae", "kappa", "accuracy_no_ties", "accuracy_tie_as_original"):
        cell = r[key]
        assert cell["low"] <= cell["estimate"] <= cell["high"]
    assert r["bootstrap"]["resampled"] == "pairs" and r["bootstrap"]["n_resamples"] == 300


def test_pair_agreement_is_symmetric_and_seeded():
    a, b = _random_labels(5, 60, agree=0.7)
    ab = A.pair_agreement(a, b, n_boot=200, seed=3)
    ba = A.pair_agreement(b, a, n_boot=200, seed=3)
    for key in ("mae", "kappa", "accuracy_no_ties", "accuracy_tie_as_original"):
        assert ab[key]["estimate"] == pytest.approx(ba[key]["estimate"])
    assert A.pair_agreement(a, b, n_boot=200, seed=3) == ab


def test_cluster_bootstrap_keeps_copies_together():
    # Each of 40 pairs appears 5 times (e.g. 5 prompts share a source image): resampling the 200
    # rows as if independent gives a far narrower interval than resampling the 40 clusters.
    a, b = _random_labels(7, 40, agree=0.6)
    rep_a, rep_b = np.repeat(a, 5), np.repeat(b, 5)
    clusters = np.repeat(np.arange(40), 5).tolist()
    naive = A.pair_agreement(rep_a, rep_b, n_boot=1000, seed=0)["mae"]
    clustered = A.pair_agreement(rep_a, rep_b, n_boot=1000, seed=0, clusters=clusters)
    once = A.pair_agreement(a, b, n_boot=1000, seed=0)["mae"]
    width = lambda c: c["high"] - c["low"]  # noqa: E731
    assert clustered["mae"]["estimate"] == pytest.approx(once["estimate"])
    assert width(clustered["mae"]) > 1.8 * width(naive)
    assert width(clustered["mae"]) == pytest.approx(width(once), rel=0.25)
    assert clustered["bootstrap"]["resampled"] == "clusters" and clustered["bootstrap"]["n_clusters"] == 40


def test_cluster_bootstrap_draws_whole_clusters():
    # stats.bootstrap_ci(clusters=...): cluster c has c + 1 rows holding the value c, so a resample made
    # of whole clusters holds each value a multiple of c + 1 times, and k clusters in all.
    values = np.repeat(np.arange(6), np.arange(1, 7)).astype(float)
    seen: list[np.ndarray] = []

    def whole(x: np.ndarray) -> float:
        seen.append(x)
        counts = np.bincount(x.astype(int), minlength=6)
        return float(all(counts[c] % (c + 1) == 0 for c in range(6)) and sum(counts // np.arange(1, 7)) == 6)

    ci = stats.bootstrap_ci(values, whole, n_resamples=200, seed=0, clusters=values.astype(int).tolist())
    assert ci == (1.0, 1.0, 1.0) and len(seen) == 201
    assert len({x.size for x in seen}) > 1  # resamples differ in size, as clusters do
    assert stats.bootstrap_ci(values, np.mean, seed=0, clusters=["one"] * values.size) == (values.mean(),) * 3
    with pytest.raises(ValueError, match="one id per row"):
        stats.bootstrap_ci(values, np.mean, clusters=[1, 2])


def test_pair_agreement_undefined_parts_are_none():
    r = A.pair_agreement([-1, -1, 0], [-1, 1, -1], n_boot=50)
    assert r["n_no_ties"] == 0
    assert r["accuracy_no_ties"] == {"estimate": None, "low": None, "high": None, "n": 0}
    json.dumps(r, allow_nan=False)
    with pytest.raises(ValueError, match="same pairs"):
        A.pair_agreement([0, 1], [0])
    with pytest.raises(InputError, match="pair label 3"):
        A.pair_agreement([0, 3], [0, 1])


# -- Krippendorff's alpha ----------------------------------------------------------------------------

N = math.nan
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the worked example with missing
# data: 4 observers (rows) x 12 units (columns).
KRIPPENDORFF_EXAMPLE = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]


@pytest.mark.parametrize("level,published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                             ("ratio", 0.797)])
def test_alpha_reproduces_krippendorffs_worked_example(level, published):
    assert A.krippendorff_alpha(KRIPPENDORFF_EXAMPLE, level) == pytest.approx(published, abs=5e-4)


def _alpha_by_pairs(data: np.ndarray, level: str) -> float:
    """alpha = 1 - D_o / D_e from pairs of values, without a coincidence matrix: D_o averages the
    disagreement of ordered pairs within a unit (each unit weighted 1 / (m_u - 1)), D_e that of all
    ordered pairs of pairable values."""
    units = [col[~np.isnan(col)] for col in data.T]
    units = [u for u in units if u.size >= 2]
    pooled = np.concatenate(units)
    n = pooled.size
    freq = {v: int(np.sum(pooled == v)) for v in np.unique(pooled)}

    def d2(c: float, k: float) -> float:
        if level == "nominal":
            return float(c != k)
        if level == "interval":
            return (c - k) ** 2
        lo, hi = min(c, k), max(c, k)
        return (sum(f for v, f in freq.items() if lo <= v <= hi) - (freq[c] + freq[k]) / 2) ** 2

    d_o = sum(sum(d2(u[i], u[j]) for i, j in itertools.permutations(range(u.size), 2)) / (u.size - 1)
              for u in units) / n
    d_e = sum(d2(pooled[i], pooled[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    return 1 - d_o / d_e


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_alpha_matches_the_pairwise_definition(seed, level):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, size=15)
    data = np.where(rng.random((4, 15)) < 0.7, truth, rng.integers(0, 3, size=(4, 15))).astype(float)
    data[rng.random((4, 15)) < 0.25] = np.nan
    assert A.krippendorff_alpha(data, level) == pytest.approx(_alpha_by_pairs(data, level))


def test_alpha_edge_cases_and_interval():
    assert A.krippendorff_alpha([[0, 1, 2, 1], [0, 1, 2, 1]], "ordinal") == pytest.approx(1.0)
    assert math.isnan(A.krippendorff_alpha([[1, 1, 1], [1, 1, N]], "nominal"))  # no expected disagreement
    assert math.isnan(A.krippendorff_alpha([[1, N], [N, 2]], "nominal"))  # no unit has two values
    with pytest.raises(ValueError, match="level"):
        A.krippendorff_alpha([[1, 2], [1, 2]], "cardinal")
    r = A.alpha_ci(KRIPPENDORFF_EXAMPLE, "interval", n_boot=300)
    assert r["estimate"] == pytest.approx(A.krippendorff_alpha(KRIPPENDORFF_EXAMPLE, "interval"))
    # Unit 12 has a single value, so 11 units and 40 values are pairable.
    assert r["n"] == 11 and r["n_values"] == 40 and r["level"] == "interval"
    assert r["low"] <= r["estimate"] <= r["high"] <= 1.0


# -- several sources ---------------------------------------------------------------------------------

def test_majority_vote():
    assert A.majority_vote([0, 0, 1]) == 0
    assert A.majority_vote([1]) == 1
    assert A.majority_vote([0, 1]) == -1  # split
    assert A.majority_vote([0, 1, -1]) == -1  # three-way split
    assert A.majority_vote([1, 1, -1, -1, 0]) == -1
    assert A.majority_vote([1, 1, -1, 0]) == 1


HUMANS = {
    "human:ann": {"p1": 1, "p2": 0, "p3": 1, "p4": -1, "p5": 1},
    "human:bob": {"p1": 1, "p2": 1, "p3": 1, "p4": 0, "p6": 0},
    "human:cy": {"p1": 0, "p2": 0, "p3": -1, "p5": 1, "p6": 1},
}
LABELLER = {"p1": 1, "p2": 0, "p3": 0, "p4": 1, "p5": 1, "p6": -1, "p7": 0}


def test_multi_source_agreement():
    labels = {**HUMANS, "labeller:vlm": LABELLER}
    r = A.multi_source_agreement(labels, n_boot=200, seed=0)
    assert r["sources"] == {"human:ann": 5, "human:bob": 5, "human:cy": 5, "labeller:vlm": 7}
    pairs = {(p["a"], p["b"]): p for p in r["pairwise"]}
    assert set(pairs) == {tuple(sorted(c)) for c in itertools.combinations(labels, 2)}
    assert pairs[("human:ann", "human:bob")]["n"] == 4  # p1-p4
    assert pairs[("human:ann", "labeller:vlm")]["n"] == 5
    # ann vs bob on p1..p4: ordinal 2,0,2,1 vs 2,2,2,0 -> |d| = 0,2,0,1.
    assert pairs[("human:ann", "human:bob")]["mae"]["estimate"] == pytest.approx(3 / 4)

    humans = r["humans"]
    assert humans["raters"] == ["human:ann", "human:bob", "human:cy"]
    assert humans["n_pairs"] == 6 and humans["n_labels"] == 15
    # Votes: p1 [1,1,0] -> 1; p2 [0,1,0] -> 0; p3 [1,1,-1] -> 1; p4 [-1,0] split -> tie;
    # p5 [1,1] -> 1; p6 [0,1] split -> tie.
    reference = {"p1": 1, "p2": 0, "p3": 1, "p4": -1, "p5": 1, "p6": -1}
    assert humans["split_votes"] == 2
    vs = humans["majority_vs"]["labeller:vlm"]
    assert vs["n"] == 6  # p7 has no human label
    keys = sorted(reference)
    expected = A.pair_agreement([reference[k] for k in keys], [LABELLER[k] for k in keys], n_boot=200, seed=0)
    assert vs == expected
    ref_ord = np.array([SCALE[reference[k]] for k in keys])
    lab_ord = np.array([SCALE[LABELLER[k]] for k in keys])
    assert vs["mae"]["estimate"] == pytest.approx(sk.mean_absolute_error(ref_ord, lab_ord))
    assert set(humans["majority_vs"]) == {"labeller:vlm"}
    # Alpha across the three raters on the ordinal scale, units p1..p6.
    matrix = [[SCALE[HUMANS[h][k]] if k in HUMANS[h] else N for k in keys] for h in humans["raters"]]
    for level in ("nominal", "ordinal", "interval"):
        assert humans["alpha"][level]["estimate"] == pytest.approx(A.krippendorff_alpha(matrix, level))
    json.dumps(r, allow_nan=False)


def test_multi_source_agreement_without_a_human_group():
    r = A.multi_source_agreement({"human:ann": HUMANS["human:ann"], "labeller:vlm": LABELLER}, n_boot=50)
    assert r["humans"] is None and len(r["pairwise"]) == 1


def test_multi_source_agreement_clusters_and_bad_labels():
    labels = {"labeller:a": {"p1": 1, "p2": 0, "p3": 1}, "labeller:b": {"p1": 1, "p2": 1, "p3": -1}}
    r = A.multi_source_agreement(labels, n_boot=50, clusters={"p1": "img1", "p2": "img1", "p3": "img2"})
    assert r["pairwise"][0]["bootstrap"]["n_clusters"] == 2
    with pytest.raises(InputError, match="pair 'p3' has no cluster"):
        A.multi_source_agreement(labels, n_boot=50, clusters={"p1": "img1", "p2": "img1"})
    with pytest.raises(InputError, match="source labeller:b, pair p2: pair label 'yes'"):
        A.multi_source_agreement({**labels, "labeller:b": {"p2": "yes"}}, n_boot=50)
