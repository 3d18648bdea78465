"""The statistics against scipy / scikit-learn on fixed data, and against small cases worked by hand
(exact null distributions enumerated in the test, pairs counted one by one)."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats as st

from aesthetic_audit.analysis import stats as S

sklearn_metrics = pytest.importorskip("sklearn.metrics")

SEEDS = [0, 1, 2, 3, 4]


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


# -- bootstrap ----------------------------------------------------------------------------------------

def test_bootstrap_is_deterministic_for_a_seed_and_varies_with_it():
    x = np.random.default_rng(0).normal(size=40)
    a = S.bootstrap_ci(x, n_resamples=500, seed=7)
    b = S.bootstrap_ci(x, n_resamples=500, seed=7)
    c = S.bootstrap_ci(x, n_resamples=500, seed=8)
    assert a == b
    assert a.estimate == c.estimate and (a.low, a.high) != (c.low, c.high)


@pytest.mark.parametrize("seed", SEEDS)
def test_bootstrap_contains_the_estimate(seed):
    x = np.random.default_rng(seed).exponential(size=30)
    est, low, high = S.bootstrap_ci(x, n_resamples=1000, seed=seed)
    assert est == pytest.approx(x.mean())
    assert low < est < high


def test_bootstrap_narrows_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 200, 2000):
        _, low, high = S.bootstrap_ci(rng.normal(size=n), n_resamples=1000, seed=0)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # The width of a mean's interval shrinks like 1/sqrt(n): about sqrt(10) per step.
    assert 2 < widths[0] / widths[1] < 5


def test_bootstrap_empty_and_single():
    assert all(math.isnan(v) for v in S.bootstrap_ci([], seed=0))
    assert S.bootstrap_ci([3.5], seed=0) == (3.5, 3.5, 3.5)
    assert S.bootstrap_ci(([1.0], [2.0]), lambda a, b: np.mean(a - b), seed=0) == (-1.0, -1.0, -1.0)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_bootstrap_matches_scipy_percentile_interval(seed):
    x = np.random.default_rng(seed).normal(loc=1.0, size=200)
    ours = S.bootstrap_ci(x, np.mean, n_resamples=4000, ci=0.9, seed=seed)
    ref = st.bootstrap((x,), np.mean, n_resamples=4000, confidence_level=0.9, method="percentile",
                       rng=seed + 100).confidence_interval
    # Different random draws: the bounds agree to Monte-Carlo error, a small fraction of the width.
    width = ref.high - ref.low
    assert abs(ours.low - ref.low) < 0.05 * width
    assert abs(ours.high - ref.high) < 0.05 * width


def test_bootstrap_percentiles_of_the_drawn_resamples():
    # The interval is the linear-interpolation quantiles of the statistic over the resamples that
    # cluster_resample_counts draws for the seed (one cluster per row without clusters).
    x = np.random.default_rng(5).normal(size=30)
    counts = np.concatenate(list(S.cluster_resample_counts(x.size, 300, seed=4)))
    assert counts.shape == (300, 30) and np.all(counts.sum(axis=1) == 30)
    thetas = [np.median(np.repeat(x, row)) for row in counts]
    low, high = np.quantile(thetas, [0.05, 0.95])
    assert S.bootstrap_ci(x, np.median, 300, ci=0.9, seed=4) == pytest.approx((np.median(x), low, high))


def test_bootstrap_vectorised_mean_equals_callable_mean():
    x = np.random.default_rng(3).normal(size=50)
    assert S.bootstrap_ci(x, None, 300, seed=1) == pytest.approx(S.bootstrap_ci(x, np.mean, 300, seed=1))
    clusters = np.repeat(np.arange(10), 5)
    assert S.bootstrap_ci(x, None, 300, seed=1, clusters=clusters) == pytest.approx(
        S.bootstrap_ci(x, np.mean, 300, seed=1, clusters=clusters))


def test_bootstrap_without_clusters_is_one_cluster_per_row():
    x = np.random.default_rng(2).normal(size=25)
    rows = [f"row{i}" for i in range(25)]
    assert S.bootstrap_ci(x, np.median, 400, seed=9) == S.bootstrap_ci(x, np.median, 400, seed=9, clusters=rows)


def test_cluster_bootstrap_of_identical_copies_is_the_bootstrap_of_one_copy():
    # Each cluster holds `copies` identical rows, stored interleaved. A resample draws the clusters as
    # the plain bootstrap draws the rows of one copy (same seed, same draws), and a mean or an AUROC
    # is unchanged when every row is repeated equally often, so the intervals are equal.
    rng = np.random.default_rng(11)
    y = np.array([1, 0] * 10)
    s = np.round(rng.normal(size=20) + y, 1)  # rounded: tied scores
    ids = np.tile(np.arange(20), 3)
    one = S.bootstrap_ci(s, None, 500, seed=3)
    many = S.bootstrap_ci(s[ids], None, 500, seed=3, clusters=ids.tolist())
    assert many == pytest.approx(one, rel=1e-12)
    one_auc = S.bootstrap_ci((y, s), S.auroc, 200, seed=3)
    many_auc = S.bootstrap_ci((y[ids], s[ids]), S.auroc, 200, seed=3, clusters=ids.tolist())
    assert many_auc == pytest.approx(one_auc, rel=1e-12)
    # Without the clusters the copies look like independent rows and the interval is too narrow.
    naive = S.bootstrap_ci(s[ids], None, 500, seed=3)
    assert naive.high - naive.low < 0.8 * (one.high - one.low)


def test_bootstrap_paired_rows_stay_together():
    # x and y are equal row by row, so every paired resample has a zero mean difference.
    x = np.random.default_rng(0).normal(size=25)
    est, low, high = S.bootstrap_ci((x, x.copy()), lambda a, b: np.mean(a - b), n_resamples=200, seed=0)
    assert est == low == high == 0.0


def test_bootstrap_skips_undefined_resamples():
    y = np.array([1, 0, 1, 0, 1, 1])
    s = np.array([0.9, 0.1, 0.8, 0.3, 0.2, 0.7])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one-class resamples give nan quietly
        est, low, high = S.bootstrap_ci((y, s), S.auroc, n_resamples=300, seed=0)
    assert est == pytest.approx(sklearn_metrics.roc_auc_score(y, s))
    assert 0 <= low <= est <= high <= 1


# -- classification ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_f1_auroc_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=60)
    pred = rng.integers(0, 2, size=60)
    scores = np.round(rng.normal(size=60) + y, 1)  # rounding creates ties, which count half
    assert S.accuracy(y, pred) == pytest.approx(sklearn_metrics.accuracy_score(y, pred))
    assert S.binary_f1(y, pred) == pytest.approx(sklearn_metrics.f1_score(y, pred))
    assert S.auroc(y, scores) == pytest.approx(sklearn_metrics.roc_auc_score(y, scores))


def test_auroc_with_tied_scores_by_counting_pairs():
    y = [1, 1, 1, 1, 0, 0, 0]
    s = [0.9, 0.5, 0.5, 0.2, 0.5, 0.2, 0.1]
    pos = [v for v, t in zip(s, y) if t == 1]
    neg = [v for v, t in zip(s, y) if t == 0]
    wins = sum(p > q for p in pos for q in neg) + 0.5 * sum(p == q for p in pos for q in neg)
    # 0.9 beats all 3; each 0.5 ties one and beats two; 0.2 ties one and beats one: 8 + 1.5 = 9.5 of 12
    assert wins == 9.5
    assert S.auroc(y, s) == pytest.approx(9.5 / 12)


def test_undefined_classification_metrics_are_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(S.auroc([1, 1], [0.2, 0.3]))
        assert math.isnan(S.auroc([1, 0], [0.2, np.nan]))
        assert S.binary_f1([0, 0], [0, 0]) == 0.0  # no positive anywhere: F1 undefined -> 0
        assert S.binary_f1([], []) == 0.0
        assert S.binary_f1([1, 1], [0, 0]) == 0.0
        assert math.isnan(S.weighted_f1([], []))
        assert math.isnan(S.quadratic_weighted_kappa([1, 1], [1, 1]))
        assert math.isnan(S.quadratic_weighted_kappa([5, 5], [5, 7], labels=[0, 1, 2]))


def test_pairwise_probability_is_stable():
    r_a, r_o = np.array([0.3, 2.0, -1.0]), np.array([0.1, -1.0, 4.0])
    direct = np.exp(r_a) / (np.exp(r_a) + np.exp(r_o))
    np.testing.assert_allclose(S.pairwise_probability(r_a, r_o), direct)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = S.pairwise_probability([1000.0, -1000.0, 800.0], [0.0, 0.0, 800.0])
    np.testing.assert_allclose(p, [1.0, 0.0, 0.5])


def test_reward_model_test_by_hand():
    # Pair 5 is a tie and is dropped. Predictions r_a > r_o: [1, 0, 0, 1]; truth: [1, 0, 1, 0].
    r_a = [2.0, 0.0, 1.0, 0.5, 5.0]
    r_o = [1.0, 1.0, 1.0, 0.0, 4.0]
    labels = [1, 0, 1, 0, -1]
    res = S.reward_model_test(r_a, r_o, labels)
    assert res.n == 4 and res.n_ties == 1
    assert res.accuracy == 0.5
    assert res.f1 == 0.5  # TP 1, FP 1, FN 1
    # r_a - r_o: positives 1, 0; negatives -1, 0.5 -> wins 1>-1, 1>0.5, 0>-1; loss 0<0.5 -> 3/4
    assert res.auroc == 0.75


@pytest.mark.parametrize("seed", SEEDS)
def test_reward_model_test_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    r_a, r_o = rng.normal(size=80), rng.normal(size=80)
    labels = rng.choice([-1, 0, 1], size=80)
    res = S.reward_model_test(r_a, r_o, labels)
    keep = labels != -1
    y = (labels[keep] == 1).astype(int)
    pred = (r_a[keep] > r_o[keep]).astype(int)
    p = S.pairwise_probability(r_a[keep], r_o[keep])
    assert res.n == keep.sum()
    assert res.accuracy == pytest.approx(sklearn_metrics.accuracy_score(y, pred))
    assert res.f1 == pytest.approx(sklearn_metrics.f1_score(y, pred))
    assert res.auroc == pytest.approx(sklearn_metrics.roc_auc_score(y, p))


# -- paired and two-sample tests --------------------------------------------------------------------

def _signed_rank_by_enumeration(d: np.ndarray) -> tuple[float, float]:
    """(T+, P(T+ >= observed)) over all 2^m equally likely signs of the m nonzero differences."""
    nz = d[d != 0]
    ranks = st.rankdata(np.abs(nz))
    signs = (np.arange(2 ** nz.size)[:, None] >> np.arange(nz.size)) & 1
    t_obs = ranks[nz > 0].sum()
    return float(t_obs), float(np.mean(signs @ ranks >= t_obs - 1e-9))


def _signed_rank_z(d: np.ndarray) -> float:
    nz = d[d != 0]
    n = nz.size
    _, t = np.unique(np.abs(nz), return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24 - np.sum(t**3 - t) / 48
    return (st.rankdata(np.abs(nz))[nz > 0].sum() - n * (n + 1) / 4) / math.sqrt(var)


def test_wilcoxon_five_pairs_by_enumerating_the_32_sign_patterns():
    aligned = np.array([2.5, 1.0, 4.0, 6.0, 3.0])
    base = np.array([1.0, 1.5, 2.0, 3.0, 4.0])
    # d = 1.5, -0.5, 2, 3, -1: |d| ranks 3, 1, 4, 5, 2, so T+ = 3 + 4 + 5 = 12
    ranks = [3, 1, 4, 5, 2]
    null = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=5)]
    assert len(null) == 32
    p = sum(t >= 12 for t in null) / 32  # complements sum to <= 3: {}, {1}, {2}, {3}, {1, 2}
    assert p == 5 / 32
    res = S.wilcoxon_one_sided(aligned, base)
    assert (res.statistic, res.n) == (12, 5)
    assert res.pvalue == pytest.approx(p)
    z = (12 - 5 * 6 / 4) / math.sqrt(5 * 6 * 11 / 24)
    assert res.z == pytest.approx(z) and res.effect_size == pytest.approx(z / math.sqrt(5))


def test_wilcoxon_five_pairs_with_a_tie_and_a_zero_is_exact():
    # d = 1, -1, 2, 0, 3: the zero is dropped (n = 4); |d| ties at 1 share rank 1.5; T+ = 1.5 + 3 + 4
    res = S.wilcoxon_one_sided([2, 0, 4, 5, 6], [1, 1, 2, 5, 3])
    ranks = [1.5, 1.5, 3, 4]
    null = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=4)]
    assert (res.statistic, res.n) == (8.5, 4)
    assert res.pvalue == pytest.approx(sum(t >= 8.5 for t in null) / 16)  # 8.5, 10: 3 of 16
    assert res.pvalue == pytest.approx(3 / 16)


def _wilcoxon_cases():
    rng = np.random.default_rng(42)
    cases = []
    for n in (5, 13, 14, 30, 50, 51, 120):
        a, b = rng.normal(size=n) + 0.3, rng.normal(size=n)
        cases.append((a, b))                                        # no ties: exact up to 50
        cases.append((np.round(a * 2) / 2, np.round(b * 2) / 2))   # ties and zeros
        c = b.copy()
        c[: n // 4] = a[: n // 4]                                    # zeros only
        cases.append((a, c))
    return cases


@pytest.mark.parametrize("case", range(21))
def test_wilcoxon_p_value_z_and_effect_size(case):
    a, b = _wilcoxon_cases()[case]
    d = a - b
    ours = S.wilcoxon_one_sided(a, b)
    z = _signed_rank_z(d)
    assert ours.z == pytest.approx(z)
    assert ours.effect_size == pytest.approx(z / math.sqrt(np.count_nonzero(d)))
    exact_without_ties = d.size <= 50 and np.unique(np.abs(d)).size == d.size and np.all(d != 0)
    if d.size <= 13:
        # Exact whether or not there are ties: every sign pattern enumerated here.
        t_plus, p = _signed_rank_by_enumeration(d)
        assert ours.statistic == pytest.approx(t_plus)
        assert ours.pvalue == pytest.approx(p, rel=1e-9)
    elif exact_without_ties:
        ref = st.wilcoxon(a, b, alternative="greater", method="exact")
        assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-14)
    else:
        assert ours.pvalue == pytest.approx(_normal_sf(z), rel=1e-9, abs=1e-14)
    if d.size > 13:  # scipy's default choice of method gives the same p-value
        ref = st.wilcoxon(a, b, alternative="greater")
        assert (ours.statistic, ours.pvalue) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9, abs=1e-14)


def test_wilcoxon_by_hand():
    # d = 1, 2, -3, 4: ranks 1..4, T+ = 7. Subsets of {1,2,3,4} summing to >= 7 are the complements
    # of those summing to <= 3: {}, {1}, {2}, {3}, {1,2} -> p = 5/16.
    res = S.wilcoxon_one_sided([1, 2, 0, 4], [0, 0, 3, 0])
    assert res.statistic == 7 and res.n == 4
    assert res.pvalue == pytest.approx(5 / 16)
    z = (7 - 4 * 5 / 4) / math.sqrt(4 * 5 * 9 / 24)
    assert res.z == pytest.approx(z) and res.effect_size == pytest.approx(z / 2)
    none = S.wilcoxon_one_sided([1, 2], [1, 2])
    assert none.n == 0 and none.pvalue == 1.0
    assert S.wilcoxon_one_sided([], []).n == 0
    with pytest.raises(ValueError, match="equal lengths"):
        S.wilcoxon_one_sided([1, 2], [1])


def test_mcnemar_table_by_hand():
    # Table (aligned rows x base columns): both succeed 3, aligned only b = 2, base only c = 7,
    # neither 4. Under H0 b ~ Binomial(9, 1/2): P(X <= 2) = (1 + 9 + 36) / 512.
    sa = [1] * 3 + [1] * 2 + [0] * 7 + [0] * 4
    sb = [1] * 3 + [0] * 2 + [1] * 7 + [0] * 4
    res = S.mcnemar(sa, sb)
    assert (res.b, res.c, res.n, res.statistic) == (2, 7, 9, 2)
    lower = sum(math.comb(9, i) for i in range(3)) / 2**9
    assert lower == 46 / 512
    assert res.pvalue == pytest.approx(lower)
    # Two-sided: the upper tail P(X >= 2) is larger, so p = 2 P(X <= 2).
    assert S.mcnemar(sa, sb, one_sided=False).pvalue == pytest.approx(2 * lower)
    assert S.mcnemar([1, 0], [1, 0]).pvalue == 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_mcnemar_matches_binomtest(seed):
    rng = np.random.default_rng(seed)
    sa, sb = rng.random(70) < 0.4, rng.random(70) < 0.6
    res = S.mcnemar(sa, sb)
    b, c = int(np.sum(sa & ~sb)), int(np.sum(~sa & sb))
    assert (res.b, res.c) == (b, c)
    assert res.pvalue == pytest.approx(sum(math.comb(b + c, i) for i in range(b + 1)) / 2 ** (b + c))
    two = S.mcnemar(sa, sb, one_sided=False)
    assert two.pvalue == pytest.approx(st.binomtest(b, b + c, 0.5).pvalue)


def test_mann_whitney_exact_by_hand():
    # x = 3, 5, 8 and y = 1, 4: x is larger in 5 of the 6 (x, y) pairs, so U_x = 5 and the
    # rank-biserial r = 2 * 5 / 6 - 1 = 2/3. Under H0 the 3 ranks of x are any 3 of 1..5.
    res = S.mann_whitney_one_sided([3, 5, 8], [1, 4])
    null = [sum(r) - 6 for r in itertools.combinations(range(1, 6), 3)]  # U = R_x - 3 * 4 / 2
    assert len(null) == 10
    assert res.statistic == 5 and res.effect_size == pytest.approx(2 / 3)
    assert res.pvalue == pytest.approx(sum(u >= 5 for u in null) / 10)  # U = 5, 6: 2 of 10
    less = S.mann_whitney_one_sided([3, 5, 8], [1, 4], alternative="less")
    assert less.statistic == 5 and less.pvalue == pytest.approx(sum(u <= 5 for u in null) / 10)


def test_mann_whitney_with_ties_by_hand():
    # Ties: the normal approximation with tie and continuity correction (scipy's choice).
    x, y = [2, 3, 3, 5, 6], [1, 2, 3, 4, 4, 4]
    pairs = [(a, b) for a in x for b in y]
    u = sum(a > b for a, b in pairs) + 0.5 * sum(a == b for a, b in pairs)
    assert u == 18.5  # 2: 1 + 1/2; each 3: 2 + 1/2; 5 and 6: 6 each
    n1, n2 = len(x), len(y)
    big_n = n1 + n2
    _, t = np.unique(x + y, return_counts=True)
    sd = math.sqrt(n1 * n2 / 12 * ((big_n + 1) - np.sum(t**3 - t) / (big_n * (big_n - 1))))
    res = S.mann_whitney_one_sided(x, y)
    assert res.statistic == u and (res.n_x, res.n_y) == (5, 6)
    assert res.pvalue == pytest.approx(_normal_sf((u - n1 * n2 / 2 - 0.5) / sd))
    assert res.effect_size == pytest.approx(2 * u / (n1 * n2) - 1)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sizes", [(5, 7), (8, 30), (12, 15), (40, 60)])
@pytest.mark.parametrize("ties", [False, True])
def test_mann_whitney_matches_scipy(seed, sizes, ties):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=sizes[0]) + 0.4, rng.normal(size=sizes[1])
    if ties:
        x, y = np.round(x), np.round(y)
    for alternative in ("greater", "less"):
        ours = S.mann_whitney_one_sided(x, y, alternative)
        ref = st.mannwhitneyu(x, y, alternative=alternative)
        assert ours.statistic == pytest.approx(ref.statistic)
        assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9)
        wins = np.sum(x[:, None] > y[None, :]) + 0.5 * np.sum(x[:, None] == y[None, :])
        assert ours.effect_size == pytest.approx(2 * wins / (x.size * y.size) - 1)


def test_mann_whitney_edges():
    assert math.isnan(S.mann_whitney_one_sided([], [1.0]).pvalue)
    with pytest.raises(ValueError, match="alternative"):
        S.mann_whitney_one_sided([1], [2], alternative="two-sided")


# -- judge validation and agreement -----------------------------------------------------------------

def test_mae_and_wmae_by_hand():
    pred = [0.2, 0.0, 1.0, 1.5, 1.0, 2.0, 1.0]
    target = [0, 0, 1, 1, 1, 2, 2]
    assert S.mae(pred, target) == pytest.approx(1.7 / 7)
    # per class: 0 -> (0.2 + 0) / 2 = 0.1; 1 -> (0 + 0.5 + 0) / 3 = 1/6; 2 -> (0 + 1) / 2 = 0.5
    assert S.wmae(pred, target) == pytest.approx((0.1 + 1 / 6 + 0.5) / 3)
    # an absent class is skipped, not counted as zero error
    assert S.wmae([0.5, 1.0], [0, 0]) == pytest.approx(0.75)
    assert math.isnan(S.wmae([], []))


def test_round_half_up():
    np.testing.assert_array_equal(S.round_half_up([0.49, 0.5, 1.5, 1.49, 2.0]), [0, 1, 2, 1, 2])


@pytest.mark.parametrize("seed", SEEDS)
def test_weighted_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    target = rng.choice([0, 1, 2], size=90, p=[0.2, 0.5, 0.3])
    pred = np.clip(target + rng.normal(scale=0.7, size=90), 0, 2)
    pred[:5] = [0.5, 1.5, 0.5, 1.5, 0.5]  # exact halves round up
    expected = sklearn_metrics.f1_score(target, S.round_half_up(pred), average="weighted")
    assert S.weighted_f1(pred, target) == pytest.approx(expected)


def test_weighted_f1_by_hand():
    # target 0, 0, 1, 2; rounded pred 0, 0, 0, 2. Class 0: TP 2, FP 1 -> F1 4/5; class 1: never
    # predicted, F1 0; class 2: F1 1. Weighted by support 2, 1, 1 of 4: (1.6 + 0 + 1) / 4.
    assert S.weighted_f1([0.0, 0.1, 0.2, 1.9], [0, 0, 1, 2]) == pytest.approx(0.65)


@pytest.mark.parametrize("seed", SEEDS)
def test_quadratic_kappa_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, size=40)
    b = np.clip(a + rng.integers(-1, 2, size=40), 0, 4)
    assert S.quadratic_weighted_kappa(a, b) == pytest.approx(
        sklearn_metrics.cohen_kappa_score(a, b, weights="quadratic"))


def test_quadratic_kappa_by_hand():
    # O = [[1, 0], [1, 2]], n = 4; E = outer([1, 3], [2, 2]) / 4; W = [[0, 1], [1, 0]]
    # kappa = 1 - (1) / (0.5 + 1.5) = 0.5
    assert S.quadratic_weighted_kappa([0, 1, 1, 1], [0, 0, 1, 1]) == pytest.approx(0.5)
    assert S.quadratic_weighted_kappa([0, 1, 2], [0, 1, 2]) == 1.0
    # labels fix the categories (index distance 2 between 0 and 2 even if 1 is unused) and drop
    # pairs outside them: O = [[1, 1], [0, 1]] on (0, 2); E = outer([2, 1], [1, 2]) / 3; W 0/4/4/0
    assert S.quadratic_weighted_kappa([0, 0, 2, 9], [0, 2, 2, 0], labels=[0, 1, 2]) == pytest.approx(
        1 - 4 / (4 * 4 / 3 + 4 * 1 / 3))


# -- real art ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS[:3])
def test_zscores_by_formula(seed):
    rng = np.random.default_rng(seed)
    art, ai = rng.normal(size=10), rng.normal(loc=1.0, size=100)
    np.testing.assert_allclose(S.zscores(art, ai), (art - ai.mean()) / ai.std(ddof=1))
    np.testing.assert_allclose(S.zscores(ai, ddof=0), (ai - ai.mean()) / ai.std())


def test_leaderboard_placement_by_hand():
    board = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 5.0}
    p = S.leaderboard_placement(4.0, board)
    assert p == (4.0, 0.75, 2, 4)
    assert S.leaderboard_placement(6.0, board.values()).relative == 1.25
    assert S.leaderboard_placement(3.0, board).rank == 2  # ties with "c" and shares its rank
    assert S.leaderboard_placement(1.5, board, higher_is_better=False).rank == 2
