"""The statistics of the study (design §6), as pure functions of arrays.

Every function states its formula. The tests (Wilcoxon, Mann-Whitney, McNemar, z-scores) are scipy's,
called directly; the code here picks the method, orients the data and keeps the edge cases defined
(nan or 0 where a metric is undefined, never an exception or a warning). Own code remains only where
no library does the job or where a library call is too slow for a bootstrap loop, each saying why:
the percentile bootstrap with clusters, the study's composite metrics (class-balanced MAE,
leaderboard placement), round-half-up, and the classification metrics (equal to scikit-learn's,
checked by the tests).
"""

from __future__ import annotations

import math
from typing import Callable, Hashable, Iterator, Mapping, NamedTuple, Sequence, Union

import numpy as np

# scipy.stats is imported inside the functions that call it: importing it costs about a second, which
# every command that merely imports this module (config checks, `validate-judge`, a rerun whose
# analysis is reused) would otherwise pay.

ArrayLike = Union[Sequence[float], np.ndarray]


class CI(NamedTuple):
    estimate: float
    low: float
    high: float


class RewardModelTest(NamedTuple):
    accuracy: float
    f1: float
    auroc: float
    n: int
    n_ties: int


class WilcoxonResult(NamedTuple):
    statistic: float
    pvalue: float
    z: float
    effect_size: float
    n: int


class McNemarResult(NamedTuple):
    statistic: int
    pvalue: float
    b: int
    c: int
    n: int


class MannWhitneyResult(NamedTuple):
    statistic: float
    pvalue: float
    effect_size: float
    n_x: int
    n_y: int


class Placement(NamedTuple):
    raw: float
    relative: float
    rank: int
    n_board: int


# -- bootstrap --------------------------------------------------------------------------------------
# Own code, not scipy.stats.bootstrap: scipy resamples rows, never clusters; one resample where the
# statistic is undefined (a one-class AUROC) turns its whole interval into nan, where here it is left
# out; and one resampling routine for every caller (judges/validate.py's fast per-image path draws the
# same `cluster_resample_counts`) gives the same draws for the same seed, so an analysis with one
# cluster per row reproduces the unclustered interval exactly. BCa would also cost n (or k) jackknife
# evaluations per interval and is undefined when the bootstrap distribution is degenerate.

_CHUNK = 2_000_000  # resampled counts held in memory at once


def bootstrap_ci(data: ArrayLike | tuple[ArrayLike, ...],
                 statistic: Callable[..., float] | None = None, n_resamples: int = 2000,
                 ci: float = 0.95, seed: int | Sequence[int] | None = 0, *,
                 clusters: Sequence[Hashable] | None = None) -> CI:
    """Percentile bootstrap: ``(estimate, low, high)``.

    ``data`` is one array, or a tuple of equal-length arrays whose rows are resampled together
    (paired). ``clusters`` (one hashable id per row) makes it a cluster bootstrap: each resample draws
    the ``k`` distinct clusters ``k`` times with replacement and takes all rows of every drawn
    cluster, so rows that are not independent (the dimensions of one image, the pairs of one prompt)
    stay together. Without ``clusters`` every row is its own cluster, which is the ordinary bootstrap
    of rows, drawn from the same random stream. With ``B`` resamples,
    ``theta*_b = statistic(rows of resample b)`` and the interval is the ``(1-ci)/2`` and
    ``(1+ci)/2`` quantiles (linear interpolation) of ``theta*``; the estimate is ``statistic(data)``.
    ``statistic=None`` is the mean, computed for all resamples at once as
    ``(counts @ cluster sums) / (counts @ cluster sizes)``. Resamples on which the statistic is
    undefined (nan, e.g. AUROC of a one-class resample) are left out of the quantiles. The same seed
    gives the same interval. n = 0 gives nan; one row or one cluster gives ``low = high = estimate``.
    """
    paired = isinstance(data, tuple)
    arrays = tuple(np.asarray(a, dtype=float) for a in (data if paired else (data,)))
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"paired arrays must have equal lengths, got {[len(a) for a in arrays]}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")

    def stat(*cols: np.ndarray) -> float:
        if statistic is None:
            return float(np.mean(cols[0]))
        return float(statistic(*cols)) if paired else float(statistic(cols[0]))

    if clusters is not None and len(clusters) != n:
        raise ValueError(f"clusters must give one id per row: {len(clusters)} ids for {n} rows")
    if n == 0:
        return CI(math.nan, math.nan, math.nan)
    estimate = stat(*arrays)
    codes = cluster_codes(clusters) if clusters is not None else np.arange(n)
    k = int(codes.max()) + 1
    if k == 1:
        return CI(estimate, estimate, estimate)
    thetas = np.empty(n_resamples)
    rows, b = np.arange(n), 0
    if statistic is None:
        sums, sizes = np.bincount(codes, weights=arrays[0], minlength=k), np.bincount(codes, minlength=k)
    for counts in cluster_resample_counts(k, n_resamples, seed):
        if statistic is None:
            thetas[b:b + len(counts)] = (counts @ sums) / (counts @ sizes)
            b += len(counts)
            continue
        for drawn in counts:
            # Row r is taken as many times as its cluster was drawn.
            thetas[b] = stat(*(a[np.repeat(rows, drawn[codes])] for a in arrays))
            b += 1
    return percentile_ci(estimate, thetas, ci)


def cluster_codes(clusters: Sequence[Hashable]) -> np.ndarray:
    """Cluster ids -> codes 0..k-1 in order of first appearance (ids of any hashable type)."""
    index: dict[Hashable, int] = {}
    return np.fromiter((index.setdefault(c, len(index)) for c in clusters), dtype=np.intp, count=len(clusters))


def cluster_resample_counts(k: int, n_resamples: int, seed: int | Sequence[int] | None = 0) -> Iterator[np.ndarray]:
    """The bootstrap's resamples, in chunks: row b of a chunk holds how many times each of the ``k``
    clusters is drawn when ``k`` are drawn with replacement. ``bootstrap_ci`` uses these same draws
    (with or without clusters), so a statistic computed from per-cluster sums (``counts @ sums``)
    gives its interval exactly, for the same seed."""
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK // max(k, 1))
    for start in range(0, n_resamples, step):
        m = min(step, n_resamples - start)
        draws = rng.integers(0, k, size=(m, k)) + (np.arange(m) * k)[:, None]  # row b's draws offset by b*k
        yield np.bincount(draws.ravel(), minlength=m * k).reshape(m, k)


def percentile_ci(estimate: float, thetas: np.ndarray, ci: float) -> CI:
    """``(estimate, low, high)`` with the ``(1-ci)/2`` and ``(1+ci)/2`` quantiles of the resampled
    values ``thetas``; nan values (resamples where the statistic is undefined) are left out."""
    thetas = np.asarray(thetas, dtype=float)
    thetas = thetas[~np.isnan(thetas)]
    if thetas.size == 0:
        return CI(estimate, math.nan, math.nan)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(thetas, [alpha, 1.0 - alpha])
    return CI(estimate, float(low), float(high))


# -- classification ---------------------------------------------------------------------------------

def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Share of equal entries: ``mean(y_true == y_pred)``; nan when empty."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(t == p)) if t.size else math.nan


# binary_f1, auroc, weighted_f1 and quadratic_weighted_kappa are written out in numpy, not called from
# scikit-learn: they run inside 2000-resample bootstraps (agreement between every two label sources,
# the reward-model test, judge validation), where scikit-learn's input checks cost 2-4 ms per call,
# 10-300x these, and turn an analysis of seconds into minutes. tests/test_stats.py checks each against
# scikit-learn on fixed and random data.

def binary_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """F1 of the positive class 1: ``2 TP / (2 TP + FP + FN)``; 0 when that denominator is 0
    (``sklearn.metrics.f1_score(y_true == 1, y_pred == 1, zero_division=0)``)."""
    t, p = np.asarray(y_true) == 1, np.asarray(y_pred) == 1
    tp, fp, fn = np.sum(t & p), np.sum(~t & p), np.sum(t & ~p)
    den = 2 * tp + fp + fn
    return float(2 * tp / den) if den else 0.0


def auroc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney): ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``
    (``sklearn.metrics.roc_auc_score``). ``R_pos`` is the sum of the positives' average ranks among all
    scores, so a tied positive/negative pair counts one half. nan unless both classes occur, and nan
    when a score is not finite."""
    t = np.asarray(y_true) == 1
    s = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0 or not np.all(np.isfinite(s)):
        return math.nan
    from scipy.stats import rankdata

    ranks = rankdata(s)
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pairwise_probability(r_a: ArrayLike, r_o: ArrayLike) -> np.ndarray:
    """Bradley-Terry preference for I_a: ``exp(r_a) / (exp(r_a) + exp(r_o)) = 1 / (1 + exp(r_o - r_a))``.

    Computed as the logistic function of ``r_a - r_o``, which never overflows.
    """
    from scipy.special import expit

    return expit(np.asarray(r_a, dtype=float) - np.asarray(r_o, dtype=float))


def reward_model_test(r_a: ArrayLike, r_o: ArrayLike, labels: ArrayLike) -> RewardModelTest:
    """Does a reward model agree with the labeller on which image follows p_a? (design §6)

    ``r_a = r(I_a, p_a)``, ``r_o = r(I_o, p_a)`` oriented so that higher is better; ``labels``: 1 = I_a
    preferred, 0 = I_o preferred, -1 = tie. Ties are dropped; the truth is ``label == 1``; the
    prediction is ``r_a > r_o``. Returns accuracy, binary F1 (I_a positive) and the AUROC of
    ``p = pairwise_probability(r_a, r_o)``, which is computed on ``r_a - r_o``: p is strictly
    increasing in it, so the AUROC is the same, without the spurious ties of a saturated logistic.
    """
    a, o, lab = (np.asarray(v, dtype=float) for v in (r_a, r_o, labels))
    keep = lab != -1
    a, o, y = a[keep], o[keep], (lab[keep] == 1).astype(int)
    pred = (a > o).astype(int)
    return RewardModelTest(accuracy=accuracy(y, pred), f1=binary_f1(y, pred) if y.size else math.nan,
                           auroc=auroc(y, a - o), n=int(y.size), n_ties=int((~keep).sum()))


# -- paired and two-sample tests --------------------------------------------------------------------

def wilcoxon_one_sided(x_aligned: ArrayLike, x_base: ArrayLike) -> WilcoxonResult:
    """One-sided Wilcoxon signed-rank test, H1: the aligned values are larger than the base values.

    ``scipy.stats.wilcoxon(x_aligned - x_base, alternative="greater", zero_method="wilcox")``: zero
    differences ``d = x_aligned - x_base`` are dropped, leaving ``n``; the statistic is ``T+``, the
    sum of the ranks of ``|d|`` (ties get average ranks) where ``d > 0``. The method is chosen here as
    scipy's "auto" would, so the p-value is scipy's default one: ``"exact"`` (the exact null
    distribution of T+) for at most 50 pairs without ties or zeros; with ties or zeros and at most 13
    pairs, an exact permutation test over all 2^N sign patterns (scipy's ``PermutationMethod`` with
    every pattern enumerated: deterministic); otherwise ``"asymptotic"``,
    ``Z = (T+ - n(n+1)/4) / sqrt(n(n+1)(2n+1)/24 - sum(t^3 - t)/48)`` (t: sizes of tie groups, no
    continuity correction), ``p = 1 - Phi(Z)``. The effect size is ``r = Z / sqrt(n)`` with that Z
    (scipy's ``zstatistic``), whatever way p was computed. With no nonzero difference, T+ = 0 and p = 1.
    """
    a, b = np.asarray(x_aligned, dtype=float), np.asarray(x_base, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have equal lengths, got {a.size} and {b.size}")
    if a.size == 0:
        return WilcoxonResult(math.nan, math.nan, math.nan, math.nan, 0)
    d = a - b
    nonzero = np.abs(d[d != 0])
    n = nonzero.size
    if n == 0:  # scipy's z and p are 0 / 0 here
        return WilcoxonResult(0.0, 1.0, math.nan, math.nan, 0)
    from scipy import stats as _st

    has_ties_or_zeros = n < d.size or np.unique(nonzero).size < n
    if d.size <= 50 and not has_ties_or_zeros:
        method: str | _st.PermutationMethod = "exact"
    elif d.size <= 13:
        method = _st.PermutationMethod(n_resamples=np.inf)
    else:
        method = "asymptotic"
    # d, not (a, b): scipy then ranks exactly the differences that chose the method.
    res = _st.wilcoxon(d, alternative="greater", zero_method="wilcox", method=method)
    z = float(_st.wilcoxon(d, alternative="greater", zero_method="wilcox", method="asymptotic").zstatistic)
    return WilcoxonResult(statistic=float(res.statistic), pvalue=float(res.pvalue), z=z,
                          effect_size=z / math.sqrt(n), n=n)


def mcnemar(success_a: ArrayLike, success_b: ArrayLike, one_sided: bool = True) -> McNemarResult:
    """Exact McNemar test on paired successes (a = aligned, b = base).

    Discordant pairs: ``b`` = a succeeds and base fails, ``c`` = a fails and base succeeds. Under H0
    ``b ~ Binomial(b + c, 1/2)``: ``scipy.stats.binomtest(b, b + c, 0.5)``, one-sided with
    H1 "a succeeds less often" (``p = P(X <= b)``, ``alternative="less"``) or two-sided. No
    discordant pair gives p = 1.
    """
    sa, sb = np.asarray(success_a, dtype=bool), np.asarray(success_b, dtype=bool)
    if sa.shape != sb.shape:
        raise ValueError(f"paired samples must have equal lengths, got {sa.size} and {sb.size}")
    b, c = int(np.sum(sa & ~sb)), int(np.sum(~sa & sb))
    n = b + c
    if n == 0:  # binomtest needs at least one trial
        return McNemarResult(statistic=b, pvalue=1.0, b=b, c=c, n=0)
    from scipy.stats import binomtest

    p = binomtest(b, n, 0.5, alternative="less" if one_sided else "two-sided").pvalue
    return McNemarResult(statistic=b, pvalue=float(p), b=b, c=c, n=n)


def mann_whitney_one_sided(x: ArrayLike, y: ArrayLike, alternative: str = "greater") -> MannWhitneyResult:
    """One-sided Mann-Whitney U test of x against y, with the rank-biserial effect size.

    ``scipy.stats.mannwhitneyu(x, y, alternative=alternative)``. Rank x and y together (average
    ranks); ``U_x = R_x - n_x (n_x + 1) / 2``, the returned statistic, as scipy's. The method is
    chosen here as scipy's "auto" would: ``"exact"`` when either sample has at most 8 values and
    there are no ties, else ``"asymptotic"``, the normal approximation with tie and continuity
    correction. Effect size: rank-biserial ``r = 2 U_x / (n_x n_y) - 1`` in [-1, 1], positive when
    x tends to be larger (the share of (x, y) pairs where x is larger, ties one half, mapped to [-1, 1]).
    """
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n1, n2 = xa.size, ya.size
    if n1 == 0 or n2 == 0:
        return MannWhitneyResult(math.nan, math.nan, math.nan, n1, n2)
    both = np.concatenate([xa, ya])
    has_ties = np.unique(both).size < both.size
    method = "exact" if min(n1, n2) <= 8 and not has_ties else "asymptotic"
    from scipy.stats import mannwhitneyu

    res = mannwhitneyu(xa, ya, use_continuity=True, alternative=alternative, method=method)
    u_x = float(res.statistic)
    return MannWhitneyResult(statistic=u_x, pvalue=float(res.pvalue),
                             effect_size=2 * u_x / (n1 * n2) - 1, n_x=n1, n_y=n2)


# -- judge validation and agreement -----------------------------------------------------------------

def mae(pred: ArrayLike, target: ArrayLike) -> float:
    """Mean absolute error ``mean |pred - target|``; nan when empty."""
    p, t = np.asarray(pred, dtype=float), np.asarray(target, dtype=float)
    return float(np.mean(np.abs(p - t))) if p.size else math.nan


def wmae(pred: ArrayLike, target: ArrayLike, classes: Sequence[int] = (0, 1, 2)) -> float:
    """Class-weighted MAE: ``mean over classes c present in target of mean_{target = c} |pred - c|``.

    Each class counts equally whatever its support, so a judge cannot hide errors on the rare class.
    Classes absent from ``target`` are skipped; nan when none is present.
    """
    # Own code: the study's class-balanced MAE, which no library offers (scikit-learn's
    # sample_weight would weight rows, not average per-class means over the classes present).
    p, t = np.asarray(pred, dtype=float), np.asarray(target, dtype=float)
    per_class = [np.mean(np.abs(p[t == c] - c)) for c in classes if np.any(t == c)]
    return float(np.mean(per_class)) if per_class else math.nan


def round_half_up(values: ArrayLike) -> np.ndarray:
    """``floor(v + 1/2)`` as integers: 0.5 -> 1 and 1.5 -> 2 (numpy's round would give 0 and 2)."""
    # Own code: numpy and Python round half to even; the study rounds judge scores half up.
    return np.floor(np.asarray(values, dtype=float) + 0.5).astype(int)


def weighted_f1(pred: ArrayLike, target: ArrayLike) -> float:
    """Support-weighted F1 of ``round_half_up(pred)`` against the integer ``target``: over every class c
    seen in either, ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)`` (0 when undefined) weighted by
    ``support_c / n``, support counted in ``target``
    (``sklearn.metrics.f1_score(target, round_half_up(pred), average="weighted", zero_division=0)``).
    nan when empty."""
    p = round_half_up(pred)
    t = np.asarray(target).astype(int)
    if t.size == 0:
        return math.nan
    total = 0.0
    for c in np.union1d(p, t):
        tp = np.sum((p == c) & (t == c))
        den = np.sum(p == c) + np.sum(t == c)  # (TP + FP) + (TP + FN)
        total += (2 * tp / den if den else 0.0) * np.sum(t == c)
    return float(total / t.size)


def quadratic_weighted_kappa(a: ArrayLike, b: ArrayLike, labels: Sequence[int] | None = None) -> float:
    """Cohen's kappa with quadratic weights: ``1 - sum(W O) / sum(W E)``
    (``sklearn.metrics.cohen_kappa_score(a, b, labels=categories, weights="quadratic")``).

    Categories are ``labels`` or the sorted values seen in a or b; ``O`` is their confusion matrix
    (pairs with a value outside ``labels`` are left out), ``E = outer(row sums, column sums) / n`` and
    ``W_ij = (i - j)^2`` on the category indices. nan when ``sum(W E) = 0`` (no pair left, or both
    raters give one and the same category throughout).
    """
    x, y = np.asarray(a), np.asarray(b)
    cats = np.asarray(labels) if labels is not None else np.union1d(x, y)
    k = cats.size
    order = np.argsort(cats)  # a category's index is its position in ``cats`` as given
    ranked = cats[order]
    xi = np.clip(np.searchsorted(ranked, x), 0, k - 1)
    yi = np.clip(np.searchsorted(ranked, y), 0, k - 1)
    keep = (ranked[xi] == x) & (ranked[yi] == y)
    obs = np.zeros((k, k))
    np.add.at(obs, (order[xi[keep]], order[yi[keep]]), 1)
    n = obs.sum()
    if n == 0:
        return math.nan
    expected = np.outer(obs.sum(axis=1), obs.sum(axis=0)) / n
    idx = np.arange(k)
    w = (idx[:, None] - idx[None, :]) ** 2
    den = np.sum(w * expected)
    return float(1 - np.sum(w * obs) / den) if den else math.nan


# -- real art ----------------------------------------------------------------------------------------

def zscores(values: ArrayLike, reference: ArrayLike | None = None, ddof: int = 1) -> np.ndarray:
    """``z = (x - mean(reference)) / std(reference, ddof)``; the reference defaults to the values.

    Placing real artworks against the distribution of AI images: ``reference`` = the AI images'
    scores. ``scipy.stats.zmap(values, reference, ddof=ddof)``.
    """
    from scipy.stats import zmap

    x = np.asarray(values, dtype=float)
    return zmap(x, x if reference is None else np.asarray(reference, dtype=float), ddof=ddof)


def leaderboard_placement(r: float, board: Sequence[float] | Mapping[str, float],
                          higher_is_better: bool = True) -> Placement:
    """Where a score would land on a published leaderboard.

    ``relative s = (r - min(board)) / (max(board) - min(board))`` (outside [0, 1] when r is beyond the
    board; nan for a board of one value) and ``rank R = 1 + #(board entries strictly better than r)``,
    so R = 1 is the best and a tie shares the better rank.
    """
    # Own code: the study's placement (relative score and competition rank), which no library offers.
    vals = np.asarray(list(board.values()) if isinstance(board, Mapping) else list(board), dtype=float)
    if vals.size == 0:
        raise ValueError("the leaderboard is empty")
    lo, hi = vals.min(), vals.max()
    rel = (r - lo) / (hi - lo) if hi > lo else math.nan
    better = vals > r if higher_is_better else vals < r
    return Placement(raw=float(r), relative=float(rel), rank=int(better.sum()) + 1, n_board=int(vals.size))
