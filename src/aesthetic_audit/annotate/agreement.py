"""The live agreement figures of the annotation app, read from the run's records on every request.

The human reference is the raters' majority per pair (``analysis.agreement.majority_vote``: a split vote is
a tie), compared with each labeller source over the pairs both labelled, by ``pair_agreement``; the raters
among themselves by Krippendorff's alpha on the ordinal scale (``alpha_ci``). Labels are read as the
analysis reads them (``RunData.from_store``: only labels of the run's pairs, from a labeller's current
identity), and pairs are taken in the order ``multi_source_agreement`` uses, so the bootstrap intervals
match the analysis's unclustered ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis.agreement import HUMAN_PREFIX, alpha_ci, majority_vote, ordinal, pair_agreement
from ..analysis.audit import RunData
from ..store.run import RunStore

# the page's stat columns -> pair_agreement's fields; "accuracy" is the study's accuracy with tie and
# original merged (design §6), the one pair_agreement reports beside accuracy without ties
STATS = {"mae": "mae", "kappa": "kappa", "accuracy": "accuracy_tie_as_original",
         "accuracy_no_ties": "accuracy_no_ties"}


@dataclass
class LiveAgreement:
    raters: list[str]                                 # human label sources
    rows: dict[str, dict[str, Any] | None]            # labeller source -> pair_agreement (None: no common pair)
    alpha: dict[str, Any] | None                      # alpha_ci over the raters (None: fewer than two)


def live_agreement(store: RunStore, *, n_boot: int = 2000, seed: int = 0) -> LiveAgreement:
    data = RunData.from_store(store)
    in_run = {p.label_key for p in data.pairs}
    labels = {s: {k: v for k, v in values.items() if k in in_run} for s, values in data.labels.items()}
    humans = sorted(s for s, v in labels.items() if s.startswith(HUMAN_PREFIX) and v)
    labellers = sorted(s for s, v in labels.items() if not s.startswith(HUMAN_PREFIX) and v)
    votes: dict[Any, list[int]] = {}
    for h in humans:
        for k, v in labels[h].items():
            votes.setdefault(k, []).append(v)
    reference = {k: majority_vote(v) for k, v in votes.items()}
    rows: dict[str, dict[str, Any] | None] = {}
    for s in labellers:
        keys = sorted(set(reference) & set(labels[s]), key=repr)
        rows[s] = pair_agreement([reference[k] for k in keys], [labels[s][k] for k in keys], n_boot=n_boot,
                                 seed=seed) if keys else None
    alpha = None
    if len(humans) >= 2:
        keys = sorted(votes, key=repr)
        matrix = np.array([[ordinal(labels[h][k]) if k in labels[h] else np.nan for k in keys] for h in humans])
        alpha = alpha_ci(matrix, "ordinal", n_boot=n_boot, seed=seed)
    return LiveAgreement(raters=humans, rows=rows, alpha=alpha)
