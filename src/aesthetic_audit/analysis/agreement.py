"""Agreement between sources of pair labels: labellers, human raters, and humans as a group.

A pair label says which image better matches the anti-aesthetic prompt p_a: -1 tie, 0 the original
I_o, 1 the anti-aesthetic I_a. For agreement the study puts the answers on an ordinal scale with the
tie between the two preferences (``ordinal``): original 0, tie 1, anti-aesthetic 2. Two sources are
compared on the pairs both labelled (design §6, study: labeller vs humans MAE 0.29, kappa 0.80,
accuracy without ties 0.923, accuracy with tie and original merged 0.85); several raters together by
Krippendorff's alpha. Every figure carries a percentile bootstrap interval and its n.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from ..errors import InputError
from .stats import CI, accuracy, bootstrap_ci, mae, quadratic_weighted_kappa

TIE, ORIGINAL, ANTI = -1, 0, 1
_ORDINAL = {ORIGINAL: 0, TIE: 1, ANTI: 2}
ORDINAL_LABELS = (0, 1, 2)
LEVELS = ("nominal", "ordinal", "interval", "ratio")
HUMAN_PREFIX = "human:"


def ordinal(value: Any) -> int:
    """A pair label on the study's ordinal scale: 0 (original preferred) -> 0, -1 (tie) -> 1,
    1 (anti-aesthetic preferred) -> 2. The tie sits between the two preferences, so answering
    "tie" where the other says "original" is half as far off as answering "anti-aesthetic"."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or value not in _ORDINAL:
        raise InputError(f"pair label {value!r} is not one of -1 (tie), 0 (original preferred), "
                         "1 (anti-aesthetic preferred)")
    return _ORDINAL[int(value)]


def _cell(ci: CI, n: int) -> dict[str, Any]:
    """``{estimate, low, high, n}`` with None where undefined, so the result is valid JSON."""
    def clean(v: float) -> float | None:
        return None if math.isnan(v) else float(v)
    return {"estimate": clean(ci.estimate), "low": clean(ci.low), "high": clean(ci.high), "n": n}


def _bootstrap_info(n_boot: int, ci: float, seed: int, clusters: Sequence[Hashable] | None, unit: str) -> dict:
    info: dict[str, Any] = {"n_resamples": n_boot, "ci": ci, "seed": seed, "method": "percentile"}
    if clusters is None:
        info["resampled"] = unit
    else:
        info["resampled"] = "clusters"
        info["n_clusters"] = len(set(clusters))
    return info


def _accuracy_no_ties(x: np.ndarray, y: np.ndarray) -> float:
    keep = (x != 1) & (y != 1)
    return accuracy(x[keep], y[keep])


def _accuracy_merged(x: np.ndarray, y: np.ndarray) -> float:
    # Tie and original become one class, "not the anti-aesthetic image".
    return accuracy(x == 2, y == 2)


def _kappa(x: np.ndarray, y: np.ndarray) -> float:
    return quadratic_weighted_kappa(x, y, labels=ORDINAL_LABELS)


def pair_agreement(a: Sequence[int], b: Sequence[int], *, n_boot: int = 2000, seed: int = 0,
                   clusters: Sequence[Hashable] | None = None, ci: float = 0.95) -> dict[str, Any]:
    """Agreement of two sources' labels on the same pairs (``a[i]`` and ``b[i]`` label pair i).

    On the ordinal scale (``ordinal``): ``mae`` = mean |a - b|; ``kappa`` = Cohen's kappa with
    quadratic weights over the levels 0, 1, 2; ``accuracy_no_ties`` = share of equal answers among
    the ``n_no_ties`` pairs where neither source says tie; ``accuracy_tie_as_original`` = share of
    equal answers once tie and original are one class. All are symmetric in a and b. Intervals:
    percentile bootstrap over pairs, or over ``clusters`` (one id per pair) when pairs share a
    prompt or an image; a resample where a figure is undefined (no untied pair, one category
    only for kappa) is left out of its quantiles.
    """
    if len(a) != len(b):
        raise ValueError(f"the two sources must label the same pairs: {len(a)} and {len(b)} labels")
    x = np.array([ordinal(v) for v in a], dtype=float)
    y = np.array([ordinal(v) for v in b], dtype=float)
    n = int(x.size)
    n_no_ties = int(np.sum((x != 1) & (y != 1)))

    def boot(statistic) -> CI:
        return bootstrap_ci((x, y), statistic, n_boot, ci, seed, clusters=clusters)

    return {
        "n": n,
        "n_no_ties": n_no_ties,
        "mae": _cell(boot(mae), n),
        "kappa": _cell(boot(_kappa), n),
        "accuracy_no_ties": _cell(boot(_accuracy_no_ties), n_no_ties),
        "accuracy_tie_as_original": _cell(boot(_accuracy_merged), n),
        "bootstrap": _bootstrap_info(n_boot, ci, seed, clusters, "pairs"),
    }


# -- Krippendorff's alpha ---------------------------------------------------------------------------
# Hand-written from the coincidence-matrix definition: the maintained `krippendorff` package is
# GPL-3.0 (this project is Apache-2.0) and needs Python >= 3.11 (we support 3.10).

def _value_counts(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """raters x units (nan = missing) -> (units x values counts, sorted distinct values)."""
    values = np.unique(data[~np.isnan(data)])
    counts = np.stack([np.sum(data == v, axis=0) for v in values], axis=1) if values.size else \
        np.zeros((data.shape[1], 0))
    return counts.astype(float), values


def _distance2(values: np.ndarray, n_c: np.ndarray, level: str) -> np.ndarray:
    """Squared difference delta^2 between every two values, by level of measurement."""
    if level == "nominal":
        return 1.0 - np.eye(values.size)
    if level == "ordinal":
        # sum_{g=c..k} n_g - (n_c + n_k)/2 equals the difference of the values' mid-ranks.
        mid = np.cumsum(n_c) - n_c / 2.0
        return (mid[:, None] - mid[None, :]) ** 2
    if level == "interval":
        return (values[:, None] - values[None, :]) ** 2
    total = values[:, None] + values[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(total == 0, 0.0, (values[:, None] - values[None, :]) / total)
    return d ** 2


def _alpha(counts: np.ndarray, values: np.ndarray, level: str) -> float:
    """alpha = 1 - D_o / D_e = 1 - (n - 1) sum(o_ck d2_ck) / sum(n_c n_k d2_ck) from per-unit counts.

    Coincidences: ``o_ck = sum_u (n_uc n_uk - [c = k] n_uc) / (m_u - 1)`` over units with
    ``m_u >= 2`` values; ``n_c = sum_k o_ck``, ``n = sum_c n_c``.
    """
    m = counts.sum(axis=1)
    keep = m >= 2
    counts, m = counts[keep], m[keep]
    if counts.shape[0] == 0:
        return math.nan
    weighted = counts / (m - 1)[:, None]
    o = weighted.T @ counts - np.diag(weighted.sum(axis=0))
    n_c = o.sum(axis=1)
    d2 = _distance2(values, n_c, level)
    expected = np.sum(np.outer(n_c, n_c) * d2)
    if expected == 0:
        return math.nan
    return float(1.0 - (n_c.sum() - 1.0) * np.sum(o * d2) / expected)


def _reliability_matrix(data: Any) -> np.ndarray:
    arr = np.asarray(data, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"reliability data must be raters x units (2-D), got shape {arr.shape}")
    return arr


def krippendorff_alpha(data: Any, level: str = "ordinal") -> float:
    """Krippendorff's alpha of ``data``: raters x units, nan where a rater did not rate a unit.

    ``level`` is nominal, ordinal, interval or ratio (Krippendorff's delta functions). Units with
    fewer than two values are not pairable and drop out. nan when no unit is pairable or all
    pairable values are equal (no expected disagreement).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    counts, values = _value_counts(_reliability_matrix(data))
    return _alpha(counts, values, level)


def alpha_ci(data: Any, level: str = "ordinal", *, n_boot: int = 2000, seed: int = 0,
             ci: float = 0.95) -> dict[str, Any]:
    """``krippendorff_alpha`` with a percentile bootstrap interval over units (the pairable units are
    resampled with replacement); ``n`` = pairable units, ``n_values`` = values in them."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    counts, values = _value_counts(_reliability_matrix(data))
    counts = counts[counts.sum(axis=1) >= 2]
    units = np.arange(counts.shape[0])
    result = bootstrap_ci(units, lambda idx: _alpha(counts[idx.astype(int)], values, level), n_boot, ci, seed)
    return {**_cell(result, int(units.size)), "n_values": int(counts.sum()), "level": level}


# -- several sources --------------------------------------------------------------------------------

def _vote_is_split(votes: Sequence[int]) -> bool:
    """Two or more labels share the highest count."""
    ranked = Counter(votes).most_common(2)
    return len(ranked) > 1 and ranked[0][1] == ranked[1][1]


def majority_vote(votes: Sequence[int]) -> int:
    """The most frequent label; a split vote (two labels equally frequent at the top) is a tie."""
    if not votes:
        raise ValueError("a majority vote needs at least one vote")
    return TIE if _vote_is_split(votes) else Counter(votes).most_common(1)[0][0]


def _sorted_keys(keys: set) -> list:
    # Pair keys may be strings, numbers or tuples; a sort by repr is deterministic for all of them,
    # so the bootstrap draws the same resamples whatever order the sources were read in.
    return sorted(keys, key=repr)


def multi_source_agreement(labels: Mapping[str, Mapping[Hashable, int]], *, n_boot: int = 2000,
                           seed: int = 0, ci: float = 0.95, clusters: Mapping[Hashable, Hashable] | None = None,
                           human_prefix: str = HUMAN_PREFIX) -> dict[str, Any]:
    """Agreement of every two label sources, and of the human raters as a group.

    ``labels`` maps a source name (``labeller:qwen``, ``human:alice``...) to its labels by pair key.
    ``pairwise``: ``pair_agreement`` of every two sources over the pairs both labelled. ``humans``
    (when at least two sources start with ``human_prefix``): the human reference is the majority
    vote of the human labels of each pair (``majority_vote``; ``split_votes`` counts the pairs whose
    vote was split, which count as ties), compared with every other source in ``majority_vs``; and
    ``alpha``, Krippendorff's alpha across the human raters on the ordinal scale, at the nominal,
    ordinal and interval levels. ``clusters`` maps each pair key to its cluster (e.g. its prompt)
    for the bootstrap.
    """
    names = sorted(labels)
    for name in names:
        for key, value in labels[name].items():
            try:
                ordinal(value)
            except InputError as exc:
                raise InputError(f"source {name}, pair {key}: {exc}") from None

    def cluster_ids(keys: list) -> list | None:
        if clusters is None:
            return None
        missing = [k for k in keys if k not in clusters]
        if missing:
            raise InputError(f"pair {missing[0]!r} has no cluster; give every labelled pair a cluster id")
        return [clusters[k] for k in keys]

    def compare(ref: Mapping[Hashable, int], other: Mapping[Hashable, int]) -> dict[str, Any]:
        keys = _sorted_keys(set(ref) & set(other))
        return pair_agreement([ref[k] for k in keys], [other[k] for k in keys], n_boot=n_boot, seed=seed,
                              clusters=cluster_ids(keys), ci=ci)

    result: dict[str, Any] = {
        "sources": {name: len(labels[name]) for name in names},
        "pairwise": [{"a": s, "b": t, **compare(labels[s], labels[t])} for s, t in combinations(names, 2)],
        "humans": None,
    }
    humans = [s for s in names if s.startswith(human_prefix)]
    if len(humans) < 2:
        return result
    keys = _sorted_keys(set().union(*(labels[h] for h in humans)))
    votes = {k: [labels[h][k] for h in humans if k in labels[h]] for k in keys}
    reference = {k: majority_vote(v) for k, v in votes.items()}
    matrix = np.array([[ordinal(labels[h][k]) if k in labels[h] else np.nan for k in keys] for h in humans])
    result["humans"] = {
        "raters": humans,
        "n_pairs": len(keys),
        "n_labels": int(np.sum(~np.isnan(matrix))),
        "split_votes": sum(1 for v in votes.values() if _vote_is_split(v)),
        "majority_vs": {s: compare(reference, labels[s]) for s in names if s not in humans},
        "alpha": {level: alpha_ci(matrix, level, n_boot=n_boot, seed=seed, ci=ci)
                  for level in ("nominal", "ordinal", "interval")},
    }
    return result
