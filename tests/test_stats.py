"""The statistics against scipy / scikit-learn on random data, and against cases worked by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as st

from aesthetic_audit.analysis import stats as S

sklearn_metrics = pytest.importorskip("sklearn.metrics")

SEEDS = [0, 1, 2, 3, 4]


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
                       random_state=seed + 100).confidence_interval
    # Different random draws: the bounds agree to Monte-Carlo error, a small fraction of the width.
    width = ref.high - ref.low
    assert abs(ours.low - ref.low) < 0.05 * width
    assert abs(ours.high - ref.high) < 0.05 * width


def test_bootstrap_vectorised_mean_equals_callable_mean():
    x = np.random.default_rng(3).normal(size=50)
    assert S.bootstrap_ci(x, None, 300, seed=1) == pytest.approx(S.bootstrap_ci(x, np.mean, 300, seed=1))


def test_bootstrap_paired_rows_stay_together():
    # x and y are equal row by row, so every paired resample has a zero mean difference.
    x = np.random.default_rng(0).normal(size=25)
    est, low, high = S.bootstrap_ci((x, x.copy()), lambda a, b: np.mean(a - b), n_resamples=200, seed=0)
    assert est == low == high == 0.0


def test_bootstrap_skips_undefined_resamples():
    y = np.array([1, 0, 1, 0, 1, 1])
    s = np.array([0.9, 0.1, 0.8, 0.3, 0.2, 0.7])
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


def test_auroc_by_hand_and_one_class():
    # positives 0.8, 0.5; negatives 0.5, 0.1: pairs win, win, tie (half), win -> 3.5 / 4
    assert S.auroc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.1]) == 0.875
    assert math.isnan(S.auroc([1, 1], [0.2, 0.3]))
    assert S.binary_f1([0, 0], [0, 0]) == 0.0


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

def _wilcoxon_cases():
    rng = np.random.default_rng(42)
    cases = []
    for n in (5, 12, 13, 14, 30, 50, 51, 120):
        a, b = rng.normal(size=n) + 0.3, rng.normal(size=n)
        cases.append((a, b))                                        # no ties: exact up to 50
        cases.append((np.round(a * 2) / 2, np.round(b * 2) / 2))   # ties and zeros
        c = b.copy()
        c[: n // 4] = a[: n // 4]                                    # zeros only
        cases.append((a, c))
    return cases


@pytest.mark.parametrize("case", range(24))
def test_wilcoxon_matches_scipy(case):
    a, b = _wilcoxon_cases()[case]
    ours = S.wilcoxon_one_sided(a, b)
    ref = st.wilcoxon(a, b, alternative="greater")
    assert ours.statistic == pytest.approx(ref.statistic)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-14)
    ref_z = st.wilcoxon(a, b, alternative="greater", method="asymptotic").zstatistic
    assert ours.z == pytest.approx(ref_z)
    assert ours.effect_size == pytest.approx(ours.z / math.sqrt(ours.n))


def test_wilcoxon_by_hand():
    # d = 1, 2, -3, 4: ranks 1..4, T+ = 7. Subsets of {1,2,3,4} summing to >= 7 are the complements
    # of those summing to <= 3: {}, {1}, {2}, {3}, {1,2} -> p = 5/16.
    res = S.wilcoxon_one_sided([1, 2, 0, 4], [0, 0, 3, 0])
    assert res.statistic == 7 and res.n == 4
    assert res.pvalue == 5 / 16
    z = (7 - 4 * 5 / 4) / math.sqrt(4 * 5 * 9 / 24)
    assert res.z == pytest.approx(z) and res.effect_size == pytest.approx(z / 2)
    none = S.wilcoxon_one_sided([1, 2], [1, 2])
    assert none.n == 0 and none.pvalue == 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_mcnemar_matches_binomtest(seed):
    rng = np.random.default_rng(seed)
    sa, sb = rng.random(70) < 0.4, rng.random(70) < 0.6
    res = S.mcnemar(sa, sb)
    b, c = int(np.sum(sa & ~sb)), int(np.sum(~sa & sb))
    assert (res.b, res.c) == (b, c)
    assert res.pvalue == pytest.approx(st.binomtest(b, b + c, 0.5, alternative="less").pvalue)
    two = S.mcnemar(sa, sb, one_sided=False)
    assert two.pvalue == pytest.approx(st.binomtest(b, b + c, 0.5).pvalue)


def test_mcnemar_by_hand():
    # b = 1 (aligned only), c = 5 (base only), 2 concordant: P(X <= 1 | 6, 1/2) = 7 / 64
    sa = [1, 0, 0, 0, 0, 0, 1, 0]
    sb = [0, 1, 1, 1, 1, 1, 1, 0]
    res = S.mcnemar(sa, sb)
    assert (res.b, res.c, res.n) == (1, 5, 6)
    assert res.pvalue == pytest.approx(7 / 64)
    assert S.mcnemar([1, 0], [1, 0]).pvalue == 1.0


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
        assert ours.effect_size == pytest.approx(2 * ref.statistic / (x.size * y.size) - 1)


def test_mann_whitney_by_hand():
    # x above y everywhere: U_x = 4 of 4, rank-biserial 1; exactly 1 of C(4, 2) = 6 orders is as extreme.
    res = S.mann_whitney_one_sided([3, 4], [1, 2])
    assert res.statistic == 4 and res.effect_size == 1.0
    assert res.pvalue == pytest.approx(1 / 6)


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


def test_weighted_f1_with_a_class_never_predicted():
    target, pred = [0, 0, 1, 2], [0.0, 0.1, 0.2, 1.9]  # class 1 never predicted: its F1 is 0
    expected = sklearn_metrics.f1_score(target, [0, 0, 0, 2], average="weighted", zero_division=0)
    assert S.weighted_f1(pred, target) == pytest.approx(expected)


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


# -- real art ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS[:3])
def test_zscores_match_scipy(seed):
    rng = np.random.default_rng(seed)
    art, ai = rng.normal(size=10), rng.normal(loc=1.0, size=100)
    np.testing.assert_allclose(S.zscores(art, ai), st.zmap(art, ai, ddof=1))
    np.testing.assert_allclose(S.zscores(ai, ddof=0), st.zscore(ai))


def test_leaderboard_placement_by_hand():
    board = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 5.0}
    p = S.leaderboard_placement(4.0, board)
    assert p == (4.0, 0.75, 2, 4)
    assert S.leaderboard_placement(6.0, board.values()).relative == 1.25
    assert S.leaderboard_placement(3.0, board).rank == 2  # ties with "c" and shares its rank
    assert S.leaderboard_placement(1.5, board, higher_is_better=False).rank == 2
