"""How the analysis draws its intervals: which rows resample together, and Wilson intervals for shares.

Pairs edited from one photo, or rendered from one prompt pair by several generators, are not
independent: a bootstrap that resamples them one by one makes intervals too narrow. The analysis
therefore resamples whole clusters (``stats.bootstrap_ci(clusters=...)``); this module decides the
cluster unit. Beside the bootstrap interval every share gets a Wilson score interval, which is a
closed form but assumes independent pairs.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Mapping, Sequence

from .stats import CI

# The units the analysis can resample by, in the order ``auto`` tries them.
CLUSTER_UNITS = ("source_image", "prompt")
CLUSTER_CHOICES = ("auto", *CLUSTER_UNITS, "none")


def choose_cluster_unit(requested: str, ids: Mapping[str, Sequence[Hashable]]) -> str:
    """The cluster unit to resample by.

    ``ids`` gives, per unit of ``CLUSTER_UNITS``, one id per row. An explicit unit (or ``none``) is
    returned as asked; ``auto`` is the first unit some id of which several rows share, else ``none``
    (every row is its own cluster, the ordinary bootstrap).
    """
    if requested not in CLUSTER_CHOICES:
        raise ValueError(f"cluster unit must be one of {', '.join(CLUSTER_CHOICES)}, got {requested!r}")
    if requested != "auto":
        return requested
    for unit in CLUSTER_UNITS:
        counts = Counter(ids[unit])
        if counts and max(counts.values()) > 1:
            return unit
    return "none"


def wilson_interval(successes: int, n: int, ci: float = 0.95) -> CI:
    """``(k/n, low, high)``: the Wilson score interval of a binomial share at level ``ci``.

    Computed by ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``. Unlike the percentile
    bootstrap it stays inside (0, 1) and is not degenerate at k = 0 or k = n, but it treats the n
    pairs as independent draws. n = 0 gives nan.
    """
    from scipy.stats import binomtest  # lazily: see stats.py

    if n == 0:
        return CI(math.nan, math.nan, math.nan)
    interval = binomtest(int(successes), int(n)).proportion_ci(confidence_level=ci, method="wilson")
    return CI(successes / n, float(interval.low), float(interval.high))
