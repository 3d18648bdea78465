"""The statistics of the study (design §6), as pure functions of arrays.

Every function states its formula. Each is tested against scipy or scikit-learn on the same data and
against small cases worked by hand. Only numpy and scipy are used, so the analysis needs no heavy
dependency. Rank tests compute their own exact null distributions and pick exact or normal p-values
with the same rules as scipy 1.17, so their p-values equal scipy's.
"""

from __future__ import annotations

import math
from typing import Callable, Hashable, Iterator, Mapping, NamedTuple, Sequence, Union

import numpy as np
from scipy import special
from scipy import stats as _st

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

_CHUNK = 2_000_000  # resampled indices held in memory at once


def bootstrap_ci(data: ArrayLike | tuple[ArrayLike, ...],
                 statistic: Callable[..., float] | None = None, n_resamples: int = 2000,
                 ci: float = 0.95, seed: int | Sequence[int] | None = 0, *,
                 clusters: Sequence[Hashable] | None = None) -> CI:
    """Percentile bootstrap: ``(estimate, low, high)``.

    ``data`` is one array, or a tuple of equal-length arrays whose rows are resampled together
    (paired). With ``B`` resamples of ``n`` row indices drawn with replacement,
    ``theta*_b = statistic(data[idx_b])`` and the interval is the ``(1-ci)/2`` and ``(1+ci)/2``
    quantiles (linear interpolation) of ``theta*``; the estimate is ``statistic(data)``.
    ``statistic=None`` is the mean, computed for all resamples at once. Resamples on which the
    statistic is undefined (nan, e.g. AUROC of a one-class resample) are left out of the quantiles.
    The same seed gives the same interval. n = 0 gives nan; n = 1 gives ``low = high = estimate``.

    ``clusters`` (one hashable id per row) makes it a cluster bootstrap: each resample draws the
    ``k`` distinct clusters ``k`` times with replacement and takes all rows of every drawn cluster,
    so rows that are not independent (the dimensions of one image, the pairs of one prompt) stay
    together. One cluster gives ``low = high = estimate``.
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
    codes = cluster_codes(clusters) if clusters is not None else None
    if n == 1 or (codes is not None and codes.max() == 0):
        return CI(estimate, estimate, estimate)
    thetas = np.empty(n_resamples)
    if codes is not None:
        rows, b = np.arange(n), 0
        for counts in cluster_resample_counts(int(codes.max()) + 1, n_resamples, seed):
            for drawn in counts:
                # Row r is taken as many times as its cluster was drawn.
                thetas[b] = stat(*(a[np.repeat(rows, drawn[codes])] for a in arrays))
                b += 1
        return percentile_ci(estimate, thetas, ci)
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK // n)
    for start in range(0, n_resamples, step):
        stop = min(n_resamples, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        if statistic is None:
            thetas[start:stop] = arrays[0][idx].mean(axis=1)
        else:
            for j, row in enumerate(idx):
                thetas[start + j] = stat(*(a[row] for a in arrays))
    return percentile_ci(estimate, thetas, ci)


def cluster_codes(clusters: Sequence[Hashable]) -> np.ndarray:
    """Cluster ids -> codes 0..k-1 in order of first appearance (ids of any hashable type)."""
    index: dict[Hashable, int] = {}
    return np.fromiter((index.setdefault(c, len(index)) for c in clusters), dtype=np.intp, count=len(clusters))


def cluster_resample_counts(k: int, n_resamples: int, seed: int | Sequence[int] | None = 0) -> Iterator[np.ndarray]:
    """The cluster bootstrap's resamples, in chunks: row b of a chunk holds how many times each of the
    ``k`` clusters is drawn when ``k`` are drawn with replacement. ``bootstrap_ci(clusters=...)`` uses
    these same draws, so a statistic computed from per-cluster sums (``counts @ sums``) gives its
    interval exactly, for the same seed."""
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK // max(k, 1))
    for start in range(0, n_resamples, step):
        chunk = np.empty((min(step, n_resamples - start), k), dtype=np.int64)
        for row in chunk:
            row[:] = np.bincount(rng.integers(0, k, size=k), minlength=k)
        yield chunk


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


def binary_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """F1 of the positive class 1: ``2 TP / (2 TP + FP + FN)``; 0 when that denominator is 0."""
    t, p = np.asarray(y_true) == 1, np.asarray(y_pred) == 1
    tp, fp, fn = np.sum(t & p), np.sum(~t & p), np.sum(t & ~p)
    den = 2 * tp + fp + fn
    return float(2 * tp / den) if den else 0.0


def auroc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney): ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``.

    ``R_pos`` is the sum of the positives' average ranks among all scores, so a tied
    positive/negative pair counts one half. nan unless both classes occur.
    """
    t = np.asarray(y_true) == 1
    s = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _st.rankdata(s)
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pairwise_probability(r_a: ArrayLike, r_o: ArrayLike) -> np.ndarray:
    """Bradley-Terry preference for I_a: ``exp(r_a) / (exp(r_a) + exp(r_o)) = 1 / (1 + exp(r_o - r_a))``.

    Computed as the logistic function of ``r_a - r_o``, which never overflows.
    """
    return special.expit(np.asarray(r_a, dtype=float) - np.asarray(r_o, dtype=float))


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

def _signed_rank_sf(ranks2: np.ndarray, t2: int) -> float:
    """P(T >= t2) over the 2^m equally likely sign assignments of the doubled ranks ``ranks2``."""
    counts = np.zeros(int(ranks2.sum()) + 1, dtype=np.int64)
    counts[0] = 1
    for r in ranks2:
        shifted = counts[:counts.size - r].copy()
        counts[r:] += shifted
    return float(counts[max(t2, 0):].sum() / counts.sum())


def wilcoxon_one_sided(x_aligned: ArrayLike, x_base: ArrayLike) -> WilcoxonResult:
    """One-sided Wilcoxon signed-rank test, H1: the aligned values are larger than the base values.

    ``d = x_aligned - x_base``; zero differences are dropped (Wilcoxon's rule), leaving ``n``. The
    ``|d|`` are ranked (ties get average ranks) and the statistic is ``T+ = sum of ranks where d > 0``.
    The p-value ``P(T+ >= observed)`` under random signs is exact (enumerated) when there are at most
    50 pairs and no ties or zeros, or at most 13 pairs; otherwise it is the normal approximation
    ``Z = (T+ - n(n+1)/4) / sqrt(n(n+1)(2n+1)/24 - sum(t^3 - t)/48)`` (t: sizes of tie groups, no
    continuity correction), ``p = 1 - Phi(Z)``. These are scipy's rules, so the p-value equals
    ``scipy.stats.wilcoxon(x_aligned, x_base, alternative="greater")``. The effect size is
    ``r = Z / sqrt(n)`` with Z from that normal approximation whatever way p was computed.
    With no nonzero difference, T+ = 0 and p = 1.
    """
    a, b = np.asarray(x_aligned, dtype=float), np.asarray(x_base, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have equal lengths, got {a.size} and {b.size}")
    n_total = a.size
    if n_total == 0:
        return WilcoxonResult(math.nan, math.nan, math.nan, math.nan, 0)
    d = a - b
    d = d[d != 0]
    n = d.size
    if n == 0:
        return WilcoxonResult(0.0, 1.0, math.nan, math.nan, 0)
    ranks = _st.rankdata(np.abs(d))
    t_plus = float(ranks[d > 0].sum())
    _, tie_sizes = np.unique(np.abs(d), return_counts=True)
    has_ties = bool(np.any(tie_sizes > 1))
    var = n * (n + 1) * (2 * n + 1) / 24 - np.sum(tie_sizes**3 - tie_sizes) / 48
    z = (t_plus - n * (n + 1) / 4) / math.sqrt(var)
    exact = (n_total <= 50 and not has_ties and n == n_total) or n_total <= 13
    if exact:
        # Average ranks are multiples of 1/2: doubling makes every rank sum an integer.
        p = _signed_rank_sf(np.rint(2 * ranks).astype(np.int64), int(round(2 * t_plus)))
    else:
        p = float(special.ndtr(-z))
    return WilcoxonResult(statistic=t_plus, pvalue=p, z=float(z), effect_size=float(z / math.sqrt(n)), n=n)


def mcnemar(success_a: ArrayLike, success_b: ArrayLike, one_sided: bool = True) -> McNemarResult:
    """Exact McNemar test on paired successes (a = aligned, b = base).

    Discordant pairs: ``b`` = a succeeds and base fails, ``c`` = a fails and base succeeds. Under H0
    ``b ~ Binomial(b + c, 1/2)``. One-sided (H1: a succeeds less often): ``p = P(X <= b)``.
    Two-sided: ``p = min(1, 2 min(P(X <= b), P(X >= b)))``. Equals
    ``scipy.stats.binomtest(b, b + c, 0.5, alternative="less" / "two-sided")``. No discordant
    pair gives p = 1.
    """
    sa, sb = np.asarray(success_a, dtype=bool), np.asarray(success_b, dtype=bool)
    if sa.shape != sb.shape:
        raise ValueError(f"paired samples must have equal lengths, got {sa.size} and {sb.size}")
    b, c = int(np.sum(sa & ~sb)), int(np.sum(~sa & sb))
    n = b + c
    if n == 0:
        return McNemarResult(statistic=b, pvalue=1.0, b=b, c=c, n=0)
    lower = float(_st.binom.cdf(b, n, 0.5))
    if one_sided:
        p = lower
    else:
        p = min(1.0, 2 * min(lower, float(_st.binom.sf(b - 1, n, 0.5))))
    return McNemarResult(statistic=b, pvalue=p, b=b, c=c, n=n)


def _mwu_sf(u: int, n1: int, n2: int) -> float:
    """P(U >= u) for the Mann-Whitney U of samples of sizes n1, n2 without ties.

    The number of arrangements with U = k is the coefficient of q^k in the Gaussian binomial
    ``[n1 + n2 choose m]_q = prod_{i=1..m} (1 - q^(N - m + i)) / (1 - q^i)``, m = min(n1, n2);
    every partial product is a polynomial, so exact integer arithmetic suffices.
    """
    m, big = min(n1, n2), max(n1, n2)
    coef = np.zeros(m * big + 1, dtype=object)
    coef[0] = 1
    for i in range(1, m + 1):
        k = big + i
        if k < coef.size:
            coef[k:] = coef[k:] - coef[:coef.size - k]
        for start in range(i):  # divide by (1 - q^i): running sums with stride i
            coef[start::i] = np.cumsum(coef[start::i])
    total = sum(coef)
    return float(sum(coef[max(u, 0):]) / total) if u < coef.size else 0.0


def mann_whitney_one_sided(x: ArrayLike, y: ArrayLike, alternative: str = "greater") -> MannWhitneyResult:
    """One-sided Mann-Whitney U test of x against y, with the rank-biserial effect size.

    Rank x and y together (average ranks); ``U_x = R_x - n_x (n_x + 1) / 2``. For H1 "x tends to be
    greater" the test statistic is ``U = U_x``, for "less" ``U = n_x n_y - U_x``. p = P(U' >= U):
    exact when either sample has at most 8 values and there are no ties, else normal with tie and
    continuity correction, ``Z = (U - n_x n_y / 2 - 1/2) / sqrt(n_x n_y / 12 ((N + 1) - sum(t^3 - t) /
    (N (N - 1))))``, ``p = 1 - Phi(Z)`` (scipy's rules, so p equals ``scipy.stats.mannwhitneyu``).
    Effect size: rank-biserial ``r = 2 U_x / (n_x n_y) - 1`` in [-1, 1], positive when x is larger.
    The returned statistic is ``U_x``, as scipy's.
    """
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n1, n2 = xa.size, ya.size
    if n1 == 0 or n2 == 0:
        return MannWhitneyResult(math.nan, math.nan, math.nan, n1, n2)
    both = np.concatenate([xa, ya])
    ranks = _st.rankdata(both)
    u_x = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    u = u_x if alternative == "greater" else n1 * n2 - u_x
    _, tie_sizes = np.unique(both, return_counts=True)
    has_ties = bool(np.any(tie_sizes > 1))
    if min(n1, n2) <= 8 and not has_ties:
        p = _mwu_sf(int(round(u)), n1, n2)
    else:
        n = n1 + n2
        sd = math.sqrt(n1 * n2 / 12 * ((n + 1) - np.sum(tie_sizes**3 - tie_sizes) / (n * (n - 1))))
        p = float(special.ndtr(-(u - n1 * n2 / 2 - 0.5) / sd)) if sd > 0 else 1.0
    return MannWhitneyResult(statistic=u_x, pvalue=min(max(p, 0.0), 1.0),
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
    p, t = np.asarray(pred, dtype=float), np.asarray(target, dtype=float)
    per_class = [np.mean(np.abs(p[t == c] - c)) for c in classes if np.any(t == c)]
    return float(np.mean(per_class)) if per_class else math.nan


def round_half_up(values: ArrayLike) -> np.ndarray:
    """``floor(v + 1/2)`` as integers: 0.5 -> 1 and 1.5 -> 2 (numpy's round would give 0 and 2)."""
    return np.floor(np.asarray(values, dtype=float) + 0.5).astype(int)


def weighted_f1(pred: ArrayLike, target: ArrayLike) -> float:
    """Support-weighted F1 of ``round_half_up(pred)`` against the integer ``target``.

    Over every class c seen in either: ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)`` (0 when undefined),
    weighted by ``support_c / n`` with support counted in ``target``. Equals
    ``sklearn.metrics.f1_score(target, round_half_up(pred), average="weighted")``.
    """
    p = round_half_up(pred)
    t = np.asarray(target).astype(int)
    if t.size == 0:
        return math.nan
    total = 0.0
    for c in np.union1d(p, t):
        tp = np.sum((p == c) & (t == c))
        fp = np.sum((p == c) & (t != c))
        fn = np.sum((p != c) & (t == c))
        den = 2 * tp + fp + fn
        total += (2 * tp / den if den else 0.0) * np.sum(t == c)
    return float(total / t.size)


def quadratic_weighted_kappa(a: ArrayLike, b: ArrayLike, labels: Sequence[int] | None = None) -> float:
    """Cohen's kappa with quadratic weights: ``1 - sum(W O) / sum(W E)``.

    Categories are ``labels`` or the sorted values seen in a or b; ``O`` is their confusion matrix,
    ``E = outer(row sums, column sums) / n`` and ``W_ij = (i - j)^2`` on the category indices. Equals
    ``sklearn.metrics.cohen_kappa_score(a, b, weights="quadratic")``; nan when ``sum(W E) = 0``.
    """
    x, y = np.asarray(a), np.asarray(b)
    cats = np.asarray(labels) if labels is not None else np.union1d(x, y)
    k = cats.size
    index = {v: i for i, v in enumerate(cats.tolist())}
    obs = np.zeros((k, k))
    for u, v in zip(x.tolist(), y.tolist()):
        if u in index and v in index:
            obs[index[u], index[v]] += 1
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
    scores. Equals ``scipy.stats.zmap(values, reference, ddof=ddof)``.
    """
    x = np.asarray(values, dtype=float)
    ref = x if reference is None else np.asarray(reference, dtype=float)
    return (x - ref.mean()) / ref.std(ddof=ddof)


def leaderboard_placement(r: float, board: Sequence[float] | Mapping[str, float],
                          higher_is_better: bool = True) -> Placement:
    """Where a score would land on a published leaderboard.

    ``relative s = (r - min(board)) / (max(board) - min(board))`` (outside [0, 1] when r is beyond the
    board; nan for a board of one value) and ``rank R = 1 + #(board entries strictly better than r)``,
    so R = 1 is the best and a tie shares the better rank.
    """
    vals = np.asarray(list(board.values()) if isinstance(board, Mapping) else list(board), dtype=float)
    if vals.size == 0:
        raise ValueError("the leaderboard is empty")
    lo, hi = vals.min(), vals.max()
    rel = (r - lo) / (hi - lo) if hi > lo else math.nan
    better = vals > r if higher_is_better else vals < r
    return Placement(raw=float(r), relative=float(rel), rank=int(better.sum()) + 1, n_board=int(vals.size))
