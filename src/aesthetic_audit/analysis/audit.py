"""The audit: every table of the study recomputed from a run's per-item records (design §6).

``analyze`` never reads a stored aggregate: it joins image pairs with their scores and judgements,
so any number in the report can be bootstrapped and traced back to the items behind it.

Conventions: ``r`` is a scorer's raw score and ``s`` the score oriented so that higher is better
(``s = r`` or ``-r`` by the scorer's ``higher_is_better``). A prompt-blind scorer stores one score per
image (prompt ``None``), used for both prompts of a pair.

Tie policy, the same in every table:

- Shares are strict. ``prefer_original_share`` is the share of pairs with s(I_o, p_a) > s(I_a, p_a),
  ``prefer_anti_share`` the share with s(I_a, p_a) > s(I_o, p_a); the pairs with equal scores are
  counted in ``ties`` and belong to neither share (the two shares and ties/n add up to 1).
- Reward-model test: pairs labelled as a tie (-1) are removed (``n_ties``), pairs without a label are
  left out (``n_unlabelled``), and a score tie s(I_a, p_a) = s(I_o, p_a) counts as not predicting
  I_a (``n_score_ties`` says how many there were). A pairwise reward model (``vlm-pair``) predicts
  I_a when it prefers I_a; its tie answers count as not predicting I_a (``n_score_ties`` counts them).
- Success rate: the share of labelled pairs where I_a is preferred; a tie label is a failure.
- No regression: ``prefer_original_under_p_o`` is the strict share with s(I_o, p_o) > s(I_a, p_o), on
  the same pairs, its ties counted in ``ties_under_p_o``.

Intent-aware scorers (records whose ``extra.intent`` holds the score's parts) also get a
``lambda_sweep``: their shares and reward-model test recomputed for other aesthetic strengths λ.

Labels: only a labeller's or a human's judgement counts (the ``labels`` stage, or an imported
study's label column). The editor's label, which holds by construction (source ``construction``), is
never used by a statistic. The reward-model test runs only on scorers whose class says they are
reward models (not the safety classifier).

Pairwise reward models (scorers whose records say ``pairwise``) give a verdict per (I_o, I_a, p_a)
instead of scores: their row in ``scorers`` has ``pairwise: true``, the strict shares of pairs where
they prefer I_o or I_a (tie answers apart), per dimension and strength too, and the reward-model
test, with AUROC on their P(I_a better) where they give one (else None, ``auroc_note`` says why);
Δr, AA, truncation and the regression on the judge need scores and are None / empty.

Dependence: every bootstrap resamples clusters of pairs (``analysis.cluster``; see
``intervals.choose_cluster_unit``), and exact duplicate pairs (same I_o, I_a, p_o, p_a) count once.
"""

from __future__ import annotations

import copy
import csv
import html
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, NamedTuple, Sequence

import numpy as np

from ..config import AnalysisConfig
from ..hashing import spec_hash
from ..records import IMAGES, JUDGE, LABELS, SCORE
from ..registry import available
from ..store.run import RunStore, atomic_write_text
from ..textio import spreadsheet_safe
from .agreement import majority_vote
from .intervals import choose_cluster_unit, wilson_interval
from .stats import bootstrap_ci, mcnemar, reward_model_test, wilcoxon_one_sided

NSFW_SCORER = "nsfw"
NO_STRENGTH = "n/a"
CONSTRUCTION = "construction"  # label source of pairs whose label holds by how they were made
# The four (image, prompt) combinations, in the paper's key order: o/d image, then o/d prompt.
COMBOS = (("oiop", "o", "o"), ("oidp", "o", "a"), ("diop", "a", "o"), ("didp", "a", "a"))

LabelKey = tuple[str, str, str]  # (image_o, image_a, p_a): what a label is about
# The aesthetic strengths λ at which the intent-aware reward is recomputed (``_lambda_sweep``), beside
# the scorer's own λ.
LAMBDA_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class Pair:
    """One image pair as the images stage recorded it."""

    key: str
    p_o: str
    p_a: str
    dims: tuple[str, ...]
    image_o: str
    image_a: str
    strength: float | None = None
    label: int | None = None
    label_source: str | None = None
    pair_id: str | None = None  # the prompt pair it was made from
    model: str | None = None  # the generator that rendered it; None for the editor's pairs
    # A generator with a LoRA: its weights without the scale (one adapter swept over scales shares it)
    # and the scale, the "user-controllable strength of aesthetic alignment" the study asks for.
    adapter: str | None = None
    adapter_scale: float | None = None

    def image(self, which: str) -> str:
        return self.image_o if which == "o" else self.image_a

    def prompt(self, which: str) -> str:
        return self.p_o if which == "o" else self.p_a

    @property
    def label_key(self) -> LabelKey:
        return (self.image_o, self.image_a, self.p_a)

    @property
    def real_label(self) -> int | None:
        """The label when a labeller or a human gave it; None for none or a construction label."""
        return None if self.label_source == CONSTRUCTION else self.label


class IntentParts(NamedTuple):
    """An intent-aware score r = faithfulness + lam · aesthetic, where aesthetic = Σ_d w_d s_d a_d
    (the record's ``extra.intent``): what the λ sweep recomputes the score from."""

    faithfulness: float
    aesthetic: float
    lam: float
    plain: bool  # the prompt requests no dimension (as the scorer's parser read it)

    def at(self, lam: float, stored: float) -> float:
        """r at strength ``lam``: the stored score itself at the scorer's own λ (so the sweep there
        equals the scorer's row exactly), else faithfulness + lam · aesthetic."""
        return stored if lam == self.lam else self.faithfulness + lam * self.aesthetic


@dataclass
class RunData:
    """A run's per-item records, indexed for the joins the analysis and the report make."""

    pairs: list[Pair] = field(default_factory=list)
    duplicates: int = 0  # image-pair records that repeat a pair already read (same I_o, I_a, p_o, p_a)
    scorers: list[str] = field(default_factory=list)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    prompt_aware: dict[str, bool] = field(default_factory=dict)
    reward_model: dict[str, bool] = field(default_factory=dict)
    scores: dict[tuple[str, str, str | None], float] = field(default_factory=dict)
    truncated: dict[str, list[bool]] = field(default_factory=dict)
    judges: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    judge_desc: dict[str, str] = field(default_factory=dict)
    # label source ("vlm:NAME", "human:RATER") -> (image_o, image_a, p_a) -> -1 tie / 0 original / 1 anti
    labels: dict[str, dict[LabelKey, int]] = field(default_factory=dict)
    disagree: dict[str, dict[LabelKey, bool]] = field(default_factory=dict)  # both-orders labellers
    label_desc: dict[str, str] = field(default_factory=dict)  # what stands behind a VLM label source
    label_failed: dict[str, int] = field(default_factory=dict)  # failed label records per source
    # pairwise reward model -> (image_o, image_a, p_a) -> (prefers 1 / 0 / -1 tie, P(I_a better) or None)
    pairwise: dict[str, dict[LabelKey, tuple[int, float | None]]] = field(default_factory=dict)
    scorer_desc: dict[str, str] = field(default_factory=dict)  # what stands behind a pairwise scorer
    # An intent-aware score's parts, (scorer, image, prompt) -> IntentParts, where they reproduce the
    # score; and the scorers whose records carry parts at all (the ones the λ sweep is run on).
    intent: dict[tuple[str, str, str | None], "IntentParts"] = field(default_factory=dict)
    intent_scorers: set[str] = field(default_factory=set)

    @classmethod
    def from_store(cls, store: RunStore) -> "RunData":
        data = cls()
        seen: set[tuple[str, str, str, str]] = set()
        for rec in store.records(IMAGES):
            d = rec.data
            label = d.get("label")
            value = label.get("value") if isinstance(label, dict) else None
            p_o, p_a = str(d.get("p_o", "")), str(d.get("p_a", ""))
            # The same pair stored twice (imported twice under other ids, say) would count twice.
            if (d["image_o"], d["image_a"], p_o, p_a) in seen:
                data.duplicates += 1
                continue
            seen.add((d["image_o"], d["image_a"], p_o, p_a))
            data.pairs.append(Pair(
                key=rec.key, p_o=p_o, p_a=p_a,
                dims=tuple(d.get("dims") or ()), image_o=d["image_o"], image_a=d["image_a"],
                strength=d.get("strength"),
                label=int(value) if value in (-1, 0, 1) else None,
                label_source=label.get("source") if isinstance(label, dict) else None,
                pair_id=d.get("pair_id"),
                # The editor transforms a photo: it is no generator, whatever its records' model says.
                model=None if d.get("backend") == "editor" or d.get("model") is None else str(d["model"]),
                **_adapter(d.get("generator")),
            ))
        current = _current_ids(store)
        with_prompt: set[str] = set()
        # Scorers that only ever failed still get a row: their pairs all count as missing.
        for rec in store.records(SCORE, status=None):
            name = rec.data.get("scorer")
            if name is None or not _is_current(current, f"scorer:{name}", rec.data.get("scorer_id")):
                continue
            if rec.data.get("pairwise"):
                _read_pairwise(data, name, rec)
                continue
            if name not in data.higher_is_better:
                data.scorers.append(name)
                data.higher_is_better[name] = bool(rec.data.get("higher_is_better", True))
            if rec.data.get("prompt") is not None:
                with_prompt.add(name)
            score = rec.data.get("score")
            if rec.status != "ok" or not isinstance(score, (int, float)) or not math.isfinite(score):
                continue
            data.scores[(name, rec.data["image"], rec.data.get("prompt"))] = float(score)
            _read_intent(data, name, rec.data, float(score))
            if rec.data.get("prompt") is not None and rec.data.get("truncated") is not None:
                data.truncated.setdefault(name, []).append(bool(rec.data["truncated"]))
        if data.scorers:
            registered = available("scorers")
            for name in data.scorers:
                # A scorer this installation does not know (a plugin since removed) is read from its
                # records: prompt-blind when it never scored with a prompt.
                cls_ = registered.get(name.split(":", 1)[0])  # NAME:ALIAS is an instance of NAME
                data.prompt_aware[name] = cls_.prompt_aware if cls_ is not None else name in with_prompt
                data.reward_model[name] = getattr(cls_, "reward_model", True)
        for rec in store.records(JUDGE):
            if not _is_current(current, f"judge:{rec.data['judge']}", rec.data.get("judge_id")):
                continue
            if rec.data.get("judge_desc"):
                data.judge_desc[rec.data["judge"]] = rec.data["judge_desc"]
            per_image = data.judges.setdefault(rec.data["judge"], {}).setdefault(rec.data["image"], {})
            for dim, value in (rec.data.get("scores") or {}).items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    per_image[dim] = float(value)
        for rec in store.records(LABELS, status=None):
            d = rec.data
            if d.get("labeller_desc"):
                data.label_desc[d["source"]] = d["labeller_desc"]
            if rec.status == "failed":
                if d.get("source") and not (d.get("labeller_id") and not _is_current(
                        current, f"labeller:{d.get('labeller')}", d["labeller_id"])):
                    data.label_failed[d["source"]] = data.label_failed.get(d["source"], 0) + 1
                continue
            if d.get("value") not in (-1, 0, 1) or not d.get("source"):
                continue
            if d.get("labeller_id") and not _is_current(current, f"labeller:{d.get('labeller')}", d["labeller_id"]):
                continue
            key = (d["image_o"], d["image_a"], d.get("p_a", ""))
            data.labels.setdefault(d["source"], {})[key] = int(d["value"])
            if d.get("disagree") is not None:
                data.disagree.setdefault(d["source"], {})[key] = bool(d["disagree"])
        return data

    def reference_labels(self) -> tuple[str | None, dict[LabelKey, int]]:
        """The labels the reward-model test and the success rate use, and where they come from: the
        human raters' majority when there are human labels, else the first other source by name (a VLM
        labeller, an imported study's labels). A majority with no single winner is a tie."""
        humans = {s: v for s, v in self.labels.items() if s.startswith("human:")}
        if humans:
            votes: dict[LabelKey, list[int]] = defaultdict(list)
            for values in humans.values():
                for key, value in values.items():
                    votes[key].append(value)
            return "humans (majority)", {k: majority_vote(v) for k, v in votes.items()}
        machine = sorted(s for s in self.labels if not s.startswith("human:"))
        return (machine[0], self.labels[machine[0]]) if machine else (None, {})

    def subset(self, pairs: Sequence[Pair]) -> "RunData":
        """The same run restricted to ``pairs`` (scores, judgements and labels are shared, not copied)."""
        return replace(self, pairs=list(pairs), duplicates=0)

    @property
    def models(self) -> list[str]:
        """The generators that rendered this run's pairs, by name."""
        return sorted({p.model for p in self.pairs if p.model is not None})

    def score(self, scorer: str, image: str, prompt: str) -> float | None:
        """r(image, prompt): the prompt's own score, else the scorer's prompt-blind one."""
        value = self.scores.get((scorer, image, prompt))
        return value if value is not None else self.scores.get((scorer, image, None))

    def combos(self, scorer: str, pair: Pair) -> dict[str, float | None]:
        """The four scores of a pair under the paper's keys (oiop, oidp, diop, didp)."""
        return {k: self.score(scorer, pair.image(i), pair.prompt(p)) for k, i, p in COMBOS}

    @property
    def dimensions(self) -> list[str]:
        return sorted({d for p in self.pairs for d in p.dims})


def _read_pairwise(data: RunData, name: str, rec: Any) -> None:
    """A pairwise scorer's record: its verdict on (I_o, I_a, p_a), when it has one."""
    d = rec.data
    answers = data.pairwise.setdefault(name, {})  # one that only ever failed still gets a row
    if d.get("scorer_desc"):
        data.scorer_desc[name] = d["scorer_desc"]
    prefers, prob = d.get("prefers"), d.get("prob_a")
    if rec.status != "ok" or prefers not in (-1, 0, 1) or isinstance(prefers, bool):
        return
    ok_prob = isinstance(prob, (int, float)) and not isinstance(prob, bool) and math.isfinite(prob)
    answers[(d["image_o"], d["image_a"], d.get("prompt") or "")] = (int(prefers), float(prob) if ok_prob else None)


def _read_intent(data: RunData, name: str, d: dict[str, Any], score: float) -> None:
    """Keep an ok score's intent parts (``extra.intent``) when they reproduce its score; a record whose
    parts are malformed or do not add up counts as missing in the λ sweep, never as a wrong point."""
    intent = d.get("extra").get("intent") if isinstance(d.get("extra"), dict) else None
    if not isinstance(intent, dict):
        return
    data.intent_scorers.add(name)
    parts = _intent_parts(intent)
    if parts is not None and math.isclose(parts.faithfulness + parts.lam * parts.aesthetic, score,
                                          rel_tol=1e-9, abs_tol=1e-9):
        data.intent[(name, d["image"], d.get("prompt"))] = parts


def _intent_parts(intent: dict[str, Any]) -> IntentParts | None:
    """faithfulness, Σ_d weights[d] · signs[d] · terms[d] over the dimensions in ``terms``, and λ; None
    when a field is missing or not a finite number."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    terms, signs, weights = (intent.get(k) for k in ("terms", "signs", "weights"))
    f, lam = intent.get("faithfulness"), intent.get("lambda")
    if not (number(f) and number(lam) and all(isinstance(m, dict) for m in (terms, signs, weights))):
        return None
    products = [(weights.get(dim), signs.get(dim), a) for dim, a in terms.items()]
    if not all(number(w) and number(s) and number(a) for w, s, a in products):
        return None
    return IntentParts(float(f), math.fsum(w * s * a for w, s, a in products), float(lam),
                       not intent.get("requested"))


def analyze(store: RunStore, config: AnalysisConfig, seed: int = 0) -> dict[str, Any]:
    """All the audit's numbers for a run, as a JSON-serialisable dict (undefined values are None).

    Keys: ``config``, ``n_pairs`` (distinct pairs), ``duplicates`` (repeated pair records left out),
    ``bootstrap`` (``{unit, n_clusters}``: what every bootstrap resampled), ``dimensions``,
    ``labels``, ``label_sources``, ``scorers``, ``judges``, ``safety``, ``failures``. Every estimate is
    ``{estimate, low, high, n}`` with a percentile bootstrap interval over clusters of pairs; the
    ``*_wilson`` entries carry Wilson score intervals instead.

    When some pair names the generator that rendered it (``model``), also: ``models``; ``by_model``
    (per generator, the ``labels``, ``scorers`` and ``judges`` blocks on its pairs alone, resampled by
    the run's cluster unit); ``generation`` (the study's generation table, ``_generation``); and
    ``aligned_vs_base`` (the configured aligned/base comparisons, ``_aligned_vs_base``).
    """
    data = RunData.from_store(store)
    apply_reference_labels(data)
    boot = _Bootstrap(config, seed, data.pairs)
    out = {
        "config": {"bootstrap": config.bootstrap, "ci": config.ci, "cluster": config.cluster, "seed": seed},
        "n_pairs": len(data.pairs),
        "duplicates": data.duplicates,
        "bootstrap": {"unit": boot.unit, "n_clusters": boot.n_clusters},
        "dimensions": data.dimensions,
        "labels": _labels(data, boot),
        "label_sources": _label_sources(data, boot),
        "scorers": _scorer_blocks(data, boot),
        "judges": {name: {**_judge(data, name, boot), "backend": data.judge_desc.get(name, name)}
                   for name in sorted(data.judges)},
        "safety": _safety(data, boot) if NSFW_SCORER in data.higher_is_better else None,
        "failures": _failures(store),
    }
    models = data.models
    if models:
        by_model = {m: _model_block(data, [p for p in data.pairs if p.model == m], boot) for m in models}
        out["models"] = models
        out["by_model"] = by_model
        out["generation"] = _generation(data, by_model, boot, config)
        out["aligned_vs_base"] = _aligned_vs_base(data, config)
        adapter = _adapter_scale(data, boot)
        if adapter:
            out["adapter_scale"] = adapter
    return _json_clean(out)


def _adapter(generator: Any) -> dict[str, Any]:
    """``adapter`` and ``adapter_scale`` of a generated pair whose generator loads a LoRA: the
    generator's identity without the scale names the adapter (same base weights, same LoRA file), so
    one adapter rendered at several scales groups together."""
    lora = generator.get("lora") if isinstance(generator, dict) else None
    if not isinstance(lora, dict) or not isinstance(lora.get("scale"), (int, float)):
        return {}
    options = {k: v for k, v in (generator.get("options") or {}).items() if k != "lora_scale"}
    rest = {k: v for k, v in generator.items() if k not in ("lora", "options", "name")}
    ident = {**rest, "options": options, "lora": {k: v for k, v in lora.items() if k != "scale"}}
    return {"adapter": spec_hash(ident), "adapter_scale": float(lora["scale"])}


def _adapter_scale(data: RunData, boot: "_Bootstrap") -> dict[str, Any] | None:
    """Per LoRA adapter rendered at two or more scales: the scales, the generators behind them, and per
    scale the scorers' blocks (strict shares, Δr, RM test) on that scale's pairs: how the bias moves
    with the strength of aesthetic alignment. None when no adapter has two scales."""
    groups: dict[str, dict[float, list[Pair]]] = defaultdict(lambda: defaultdict(list))
    for p in data.pairs:
        if p.adapter is not None:
            groups[p.adapter][p.adapter_scale].append(p)
    out = {}
    for adapter, by_scale in sorted(groups.items()):
        if len(by_scale) < 2:
            continue
        models = sorted({p.model or "?" for pairs in by_scale.values() for p in pairs})
        scales = {}
        for scale in sorted(by_scale):
            pairs = by_scale[scale]
            sub, sboot = data.subset(pairs), boot.restricted(pairs)
            scales[format(scale, "g")] = {"n_pairs": len(pairs), "models": sorted({p.model or "?" for p in pairs}),
                                          "scorers": _scorer_blocks(sub, sboot)}
        out[adapter[:12]] = {"models": models, "scales": scales}
    return out or None


_CLUSTER_OF: dict[str, Callable[[Pair], Hashable]] = {
    "source_image": lambda p: p.image_o,
    "prompt": lambda p: p.pair_id or p.p_o,
}


class _Bootstrap:
    """Every interval of one analysis: the same resamples, level, seed and cluster unit. Each call
    names the pairs behind its rows, so rows of one cluster are always resampled together."""

    def __init__(self, config: AnalysisConfig, seed: int, pairs: Sequence[Pair]):
        self.n_resamples, self.ci, self.seed = config.bootstrap, config.ci, seed
        self.unit = choose_cluster_unit(config.cluster, {u: [f(p) for p in pairs] for u, f in _CLUSTER_OF.items()})
        self._cluster = _CLUSTER_OF.get(self.unit)
        self.n_clusters = len({self.cluster_id(p) for p in pairs})

    def restricted(self, pairs: Sequence[Pair]) -> "_Bootstrap":
        """The same bootstrap (unit, resamples, seed) for a subset of the pairs: one generator's."""
        sub = copy.copy(self)
        sub.n_clusters = len({self.cluster_id(p) for p in pairs})
        return sub

    def cluster_id(self, pair: Pair) -> Hashable:
        return pair.key if self._cluster is None else self._cluster(pair)

    def clusters(self, pairs: Sequence[Pair]) -> list[Hashable] | None:
        return None if self._cluster is None else [self._cluster(p) for p in pairs]

    def mean(self, values: Sequence[float], pairs: Sequence[Pair]) -> dict[str, Any]:
        return self.statistic((values,), None, pairs)

    def statistic(self, columns: tuple[Sequence[float], ...], statistic: Callable[..., float] | None,
                  pairs: Sequence[Pair]) -> dict[str, Any]:
        """``statistic`` (None: the mean) of the columns, whose rows belong to ``pairs``."""
        arrays = tuple(np.asarray(c, dtype=float) for c in columns)
        est, low, high = bootstrap_ci(arrays if len(arrays) > 1 else arrays[0], statistic, self.n_resamples,
                                      self.ci, self.seed, clusters=self.clusters(pairs))
        return {"estimate": est, "low": low, "high": high, "n": len(pairs)}

    def wilson(self, successes: int, n: int) -> dict[str, Any]:
        est, low, high = wilson_interval(successes, n, self.ci)
        return {"estimate": est, "low": low, "high": high, "n": n}


def _current_ids(store: RunStore) -> dict[str, str]:
    """``{"scorer:NAME" | "judge:NAME" | "labeller:NAME": identity hash}`` of the backends the manifest
    says ran last (a scorer's entry wraps its identity with its weights files)."""
    backends = store.read_manifest().get("backends", {})
    out = {key: spec_hash(value["identity"]) for key, value in backends.items()
           if key.startswith("scorer:") and isinstance(value, dict) and "identity" in value}
    out.update({key: spec_hash(value) for key, value in backends.items()
                if key.startswith(("judge:", "labeller:")) and isinstance(value, dict)})
    return out


def apply_reference_labels(data: RunData) -> None:
    """Give every pair the reference label (humans' majority, else a VLM labeller) where one exists.
    A pair without one loses any other label, so one table never mixes label sources; it keeps a
    construction label, which the gallery shows and no statistic uses."""
    source, labels = data.reference_labels()
    if not labels:
        return
    for i, pair in enumerate(data.pairs):
        value = labels.get(pair.label_key)
        if value is not None:
            data.pairs[i] = Pair(**{**pair.__dict__, "label": value, "label_source": source})
        elif pair.label_source != CONSTRUCTION:
            data.pairs[i] = Pair(**{**pair.__dict__, "label": None, "label_source": None})


def _label_counts(labels: Sequence[int]) -> dict[str, int]:
    return {"anti_aesthetic": labels.count(1), "original": labels.count(0), "tie": labels.count(-1)}


def _label_sources(data: RunData, boot: _Bootstrap) -> dict[str, Any] | None:
    """Per label source (each VLM labeller, each human rater): n, counts, the success rate (I_a
    preferred; a tie or I_o is a failure) and, for labellers asked in both orders, how often the two
    orders disagreed; then the agreement between sources (humans vs each labeller, Krippendorff's
    alpha across raters)."""
    from .agreement import multi_source_agreement

    if not data.labels and not data.label_failed:
        return None
    by_key: dict[LabelKey, Pair] = {}
    for pair in data.pairs:
        by_key.setdefault(pair.label_key, pair)
    sources = {}
    for source in sorted(set(data.labels) | set(data.label_failed)):
        labelled = [(by_key[k], v) for k, v in data.labels.get(source, {}).items() if k in by_key]
        labels = [v for _, v in labelled]
        flags = [(by_key[k], f) for k, f in data.disagree.get(source, {}).items() if k in by_key]
        sources[source] = {
            "backend": data.label_desc.get(source, "human rater" if source.startswith("human:") else source),
            "n": len(labels),
            "failed": data.label_failed.get(source, 0),
            "counts": _label_counts(labels),
            "success_rate": boot.mean([float(v == 1) for v in labels], [p for p, _ in labelled]),
            "order_disagreement": (boot.mean([float(f) for _, f in flags], [p for p, _ in flags])
                                   if flags else None),
        }
    reference, _ = data.reference_labels()
    clusters = None if boot.unit == "none" else {k: boot.cluster_id(p) for k, p in by_key.items()}
    agreement = multi_source_agreement({s: {k: v for k, v in vals.items() if k in by_key}
                                        for s, vals in data.labels.items()},
                                       n_boot=boot.n_resamples, seed=boot.seed, ci=boot.ci, clusters=clusters)
    return {"reference": reference, "sources": sources, "agreement": agreement}


def _is_current(current: dict[str, str], backend: str, record_id: str | None) -> bool:
    """A record counts unless it carries an identity other than the one the backend last ran with:
    scores of an older checkpoint or other options in the same run never mix into the tables."""
    return record_id is None or backend not in current or current[backend] == record_id


def _labels(data: RunData, boot: _Bootstrap) -> dict[str, Any] | None:
    """Generator success rate (design §6): share of labelled pairs where I_a is preferred for p_a;
    a tie or an I_o preference is a failure. Construction labels are not a judgement and are left out."""
    labelled = [p for p in data.pairs if p.real_label is not None]
    if not labelled:
        return None
    labels = [p.real_label for p in labelled]
    return {
        "n": len(labels),
        "source": ", ".join(sorted({p.label_source or "?" for p in labelled})),
        "counts": _label_counts(labels),
        "success_rate": boot.mean([float(v == 1) for v in labels], labelled),
    }


class _Row(NamedTuple):
    """One scored pair: oriented scores under p_a, Δr = r(I_a, p_o) − r(I_o, p_o), AA = r(I_a, p_o)."""

    pair: Pair
    s_o: float
    s_a: float
    delta_r: float
    aa: float


def _scorer_blocks(data: RunData, boot: _Bootstrap) -> dict[str, dict[str, Any]]:
    """The ``scorers`` block: each scalar scorer's row, then each pairwise reward model's."""
    return {**{name: _scorer(data, name, boot) for name in data.scorers},
            **{name: _pairwise(data, name, boot) for name in sorted(data.pairwise) if name not in data.scorers}}


def _scorer(data: RunData, name: str, boot: _Bootstrap) -> dict[str, Any]:
    sign = 1.0 if data.higher_is_better[name] else -1.0
    rows: list[_Row] = []
    missing = 0
    for pair in data.pairs:
        r = data.combos(name, pair)
        if any(v is None for v in r.values()):
            missing += 1
            continue
        rows.append(_Row(pair, sign * r["oidp"], sign * r["didp"], r["diop"] - r["oiop"], r["diop"]))

    by_dim, by_strength = _groups(rows)
    flags = data.truncated.get(name, [])
    return {
        "higher_is_better": data.higher_is_better[name],
        "prompt_aware": data.prompt_aware[name],
        "reward_model": data.reward_model[name],
        **_shares(rows, boot),
        **_under_p_o(data, name, rows, boot),
        "missing": missing,
        "aa": boot.mean([row.aa for row in rows], [row.pair for row in rows]),
        "by_dimension": {d: _shares(by_dim[d], boot) for d in sorted(by_dim)},
        "by_strength": {k: _shares(by_strength[k], boot) for k in sorted(by_strength, key=_strength_order)},
        "reward_model_test": _reward_model_test(rows, boot) if data.reward_model[name] else None,
        "truncated": {"n": len(flags), "share": float(np.mean(flags)) if flags else None},
        "regression_on_judge": ({judge: _regression(rows, data.judges[judge]) for judge in sorted(data.judges)}
                                if data.reward_model[name] else {}),
        "lambda_sweep": _lambda_sweep(data, name, boot) if name in data.intent_scorers else None,
    }


def _under_p_o(data: RunData, name: str, rows: Sequence[_Row], boot: _Bootstrap) -> dict[str, Any]:
    """The "no regression" share of a scalar scorer: on the same pairs as its other shares, the strict
    share with s(I_o, p_o) > s(I_a, p_o), i.e. it still prefers the conventional image when the prompt
    asks for nothing unusual (a prompt-blind scorer's p_o scores are its only ones)."""
    sign = 1.0 if data.higher_is_better[name] else -1.0
    return _p_o_shares([(row.pair, sign * data.score(name, row.pair.image_o, row.pair.p_o),
                         sign * data.score(name, row.pair.image_a, row.pair.p_o)) for row in rows], boot)


def _p_o_shares(scored: Sequence[tuple[Pair, float, float]], boot: _Bootstrap) -> dict[str, Any]:
    """From (pair, s(I_o, p_o), s(I_a, p_o)): the strict share preferring I_o (bootstrap and Wilson)
    and the score ties, which belong to no share."""
    pairs = [pair for pair, _, _ in scored]
    original = [float(s_o > s_a) for _, s_o, s_a in scored]
    return {"prefer_original_under_p_o": boot.mean(original, pairs),
            "prefer_original_under_p_o_wilson": boot.wilson(int(sum(original)), len(scored)),
            "ties_under_p_o": sum(1 for _, s_o, s_a in scored if s_o == s_a)}


def _lambda_sweep(data: RunData, name: str, boot: _Bootstrap) -> dict[str, Any]:
    """An intent-aware scorer recomputed at each λ of ``LAMBDA_GRID`` and at its own λ from the parts
    its records store (r = faithfulness + λ Σ_d w_d s_d a_d), on the pairs whose four scores all have
    parts: per λ, the strict shares under p_a (``prefer_original_share``: it prefers the image that
    ignored the request), the share under p_o (``prefer_original_under_p_o``: it still prefers the
    conventional image), the same on the pairs whose p_o the parser read as asking for nothing
    (``prefer_original_under_plain_p_o``, ``n_plain_p_o``), Δr, and the reward-model test. ``own_lambda``: the λ values its records were
    scored with (one, unless records of several settings are mixed); ``missing``: pairs left out."""
    sign = 1.0 if data.higher_is_better[name] else -1.0
    own = sorted({parts.lam for (scorer, _, _), parts in data.intent.items() if scorer == name})

    def parts(image: str, prompt: str) -> tuple[IntentParts, float] | None:
        key = (name, image, prompt) if (name, image, prompt) in data.scores else (name, image, None)
        found = data.intent.get(key)
        return None if found is None else (found, data.scores[key])

    swept = []
    for pair in data.pairs:
        combos = {k: parts(pair.image(i), pair.prompt(p)) for k, i, p in COMBOS}
        if all(v is not None for v in combos.values()):
            swept.append((pair, combos))
    points = []
    for lam in sorted({*LAMBDA_GRID, *own}) if swept else ():
        r = [{k: found.at(lam, stored) for k, (found, stored) in combos.items()} for _, combos in swept]
        rows = [_Row(pair, sign * v["oidp"], sign * v["didp"], v["diop"] - v["oiop"], v["diop"])
                for (pair, _), v in zip(swept, r)]
        under_p_o = [(pair, sign * v["oiop"], sign * v["diop"]) for (pair, _), v in zip(swept, r)]
        # p_o often describes its scene in words that are also requests ("a dark patch of sky"): the share
        # again on the pairs whose p_o the parser read as asking for nothing, the "no regression"
        plain = [row for row, (_, combos) in zip(under_p_o, swept) if combos["oiop"][0].plain]
        points.append({"lambda": lam, **_shares(rows, boot), **_p_o_shares(under_p_o, boot),
                       **{k.replace("under_p_o", "under_plain_p_o"): v for k, v in _p_o_shares(plain, boot).items()},
                       "n_plain_p_o": len(plain),
                       "reward_model_test": _reward_model_test(rows, boot) if data.reward_model[name] else None})
    return {"own_lambda": own, "n": len(swept), "missing": len(data.pairs) - len(swept), "points": points}


def _groups(rows: Sequence[_Row]) -> tuple[dict[str, list[_Row]], dict[str, list[_Row]]]:
    """The rows per requested dimension (a pair counts for each of its dimensions) and per strength."""
    by_dim: dict[str, list[_Row]] = defaultdict(list)
    by_strength: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        for dim in dict.fromkeys(row.pair.dims):
            by_dim[dim].append(row)
        by_strength[_strength_key(row.pair.strength)].append(row)
    return by_dim, by_strength


def _pairwise(data: RunData, name: str, boot: _Bootstrap) -> dict[str, Any]:
    """A pairwise reward model's row, shaped as a scorer's (``_scorer``). Each answered pair becomes a
    row whose margin s_a − s_o is P(I_a better) − 0.5 where the model gave probabilities, else +1 / −1
    / 0 for I_a / I_o / a tie: the strict shares, the prediction (margin > 0, i.e. it prefers I_a; a tie
    answer is not I_a) and the AUROC ranks (on P(I_a better)) are then the scalar path's, unchanged."""
    answered = [(pair, a) for pair in data.pairs if (a := data.pairwise[name].get(pair.label_key)) is not None]
    # AUROC needs a probability on every pair; answers of one identity either all carry one or none do
    has_probs = bool(answered) and all(prob is not None for _, (_, prob) in answered)
    sign = {1: 1.0, 0: -1.0, -1: 0.0}
    rows = [_Row(pair, 0.0, prob - 0.5 if has_probs else sign[prefers], math.nan, math.nan)
            for pair, (prefers, prob) in answered]
    missing = len(data.pairs) - len(rows)
    by_dim, by_strength = _groups(rows)
    rm = _reward_model_test(rows, boot)
    if rm is not None and not has_probs:
        rm["auroc"] = {"estimate": None, "low": None, "high": None, "n": rm["n"]}
        rm["auroc_note"] = "not available: the model gave answers without probabilities"
    return {
        "pairwise": True,
        "backend": data.scorer_desc.get(name, name),
        "higher_is_better": True,
        "prompt_aware": True,
        "reward_model": True,
        "probabilities": has_probs,
        **_shares(rows, boot, delta_r=False),
        "missing": missing,
        "aa": None,
        "by_dimension": {d: _shares(by_dim[d], boot, delta_r=False) for d in sorted(by_dim)},
        "by_strength": {k: _shares(by_strength[k], boot, delta_r=False)
                        for k in sorted(by_strength, key=_strength_order)},
        "reward_model_test": rm,
        "truncated": {"n": 0, "share": None},
        "regression_on_judge": {},
    }


def _regression(rows: Sequence[_Row], judged: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per requested dimension d: least squares of the scorer's Δ = s(I_a, p_a) − s(I_o, p_a) on the
    judge's ΔJ_d (``scipy.stats.linregress``) over the pairs that requested d and were judged on it
    on both images. Does the reward model follow how far I_a moved toward the requested pole? Slope,
    intercept, Pearson r and its two-sided p are None below 3 pairs or when ΔJ_d is constant."""
    from scipy.stats import linregress  # lazily: see stats.py

    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        diffs = _judge_diffs(judged, row.pair)
        for d in dict.fromkeys(row.pair.dims):
            if d in diffs:
                points[d].append((diffs[d], row.s_a - row.s_o))
    out = {}
    for d in sorted(points):
        x, y = np.array(points[d]).T
        fit = {"slope": None, "intercept": None, "r": None, "p": None}
        if x.size >= 3 and np.ptp(x) > 0:
            res = linregress(x, y)
            fit = {"slope": res.slope, "intercept": res.intercept, "r": res.rvalue, "p": res.pvalue}
        out[d] = {**fit, "n": int(x.size)}
    return out


def _shares(rows: Sequence[_Row], boot: _Bootstrap, delta_r: bool = True) -> dict[str, Any]:
    """n, score ties, the strict shares preferring I_o and I_a under p_a (bootstrap and Wilson), and Δr
    (None for a pairwise model, which has no r(I, p_o))."""
    pairs = [row.pair for row in rows]
    original = [float(row.s_o > row.s_a) for row in rows]
    anti = [float(row.s_a > row.s_o) for row in rows]
    k_o, k_a = int(sum(original)), int(sum(anti))
    return {"n": len(rows),
            "ties": len(rows) - k_o - k_a,
            "prefer_original_share": boot.mean(original, pairs),
            "prefer_original_wilson": boot.wilson(k_o, len(rows)),
            "prefer_anti_share": boot.mean(anti, pairs),
            "prefer_anti_wilson": boot.wilson(k_a, len(rows)),
            "delta_r": boot.mean([row.delta_r for row in rows], pairs) if delta_r else None}


def _reward_model_test(rows: Sequence[_Row], boot: _Bootstrap) -> dict[str, Any] | None:
    """The reward-model test (design §6) on the pairs with a real label: accuracy, F1 (I_a positive)
    and AUROC, each with a bootstrap interval; None when no pair has one. Label ties are removed; a
    score tie predicts "not I_a"."""
    labelled = [row for row in rows if row.pair.real_label is not None]
    if not labelled:
        return None
    res = reward_model_test([row.s_a for row in labelled], [row.s_o for row in labelled],
                            [row.pair.real_label for row in labelled])
    kept = [row for row in labelled if row.pair.real_label != -1]
    pairs = [row.pair for row in kept]
    margin = [row.s_a - row.s_o for row in kept]  # > 0 predicts I_a
    truth = [float(row.pair.real_label == 1) for row in kept]

    def metric(estimate: float, statistic: Callable[[np.ndarray, np.ndarray], float]) -> dict[str, Any]:
        cell = boot.statistic((margin, truth), statistic, pairs)
        return {**cell, "estimate": estimate}

    return {
        "accuracy": metric(res.accuracy, _resampled_accuracy),
        "f1": metric(res.f1, _resampled_f1),
        "auroc": metric(res.auroc, _resampled_auroc),
        "n": res.n,
        "n_ties": res.n_ties,
        "n_score_ties": sum(1 for m in margin if m == 0),
        "n_unlabelled": len(rows) - len(labelled),
        "label_source": ", ".join(sorted({row.pair.label_source or "?" for row in labelled})),
    }


# The bootstrap evaluates these once per resample (thousands of times per scorer), on the margins
# directly rather than through stats.reward_model_test (which gives the point estimates): ``margin`` is
# s(I_a, p_a) - s(I_o, p_a) (> 0 predicts I_a) and ``truth`` is 1 where the label is I_a.

def _resampled_accuracy(margin: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean((margin > 0) == (truth == 1)))


def _resampled_f1(margin: np.ndarray, truth: np.ndarray) -> float:
    """F1 of I_a: 2 TP / (2 TP + FP + FN), 0 when no pair is predicted or labelled I_a."""
    pred, true = margin > 0, truth == 1
    tp, fp, fn = np.sum(pred & true), np.sum(pred & ~true), np.sum(~pred & true)
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def _resampled_auroc(margin: np.ndarray, truth: np.ndarray) -> float:
    """AUROC as Mann-Whitney U / (n_pos n_neg): per positive, the negatives below it, plus half those tied
    with it; nan with one class. Counted by binary search in the sorted negatives: the same integers and
    halves the rank-sum formula adds (so the same float), without scipy's rankdata, whose per-call cost
    dominated the bootstrap (it runs once per resample, per scorer and per λ of the intent-aware sweep)."""
    true = truth == 1
    positives, negatives = margin[true], np.sort(margin[~true])
    if not len(positives) or not len(negatives):
        return math.nan
    below = np.searchsorted(negatives, positives, "left")
    tied = np.searchsorted(negatives, positives, "right") - below
    return float((below.sum() + tied.sum() / 2) / (len(positives) * len(negatives)))


def _strength_key(strength: Any) -> str:
    return NO_STRENGTH if strength is None else format(float(strength), "g")


def _strength_order(key: str) -> tuple[int, float]:
    return (1, 0.0) if key == NO_STRENGTH else (0, float(key))


def _judge(data: RunData, name: str, boot: _Bootstrap) -> dict[str, Any]:
    """ΔJ = Σ_d J(I_a, d) − J(I_o, d) over the dims judged on both images; J AA = Σ_d J(I_a, d)."""
    judged = data.judges[name]
    delta, j_aa, judged_pairs = [], [], []
    per_dim: dict[str, dict[bool, list[tuple[Pair, float]]]] = defaultdict(lambda: {True: [], False: []})
    missing = 0
    for pair in data.pairs:
        diffs = _judge_diffs(judged, pair)
        if not diffs:
            missing += 1
            continue
        delta.append(sum(diffs.values()))
        j_aa.append(_j_aa(judged, pair))
        judged_pairs.append(pair)
        for d, diff in diffs.items():
            per_dim[d][d in pair.dims].append((pair, diff))

    def mean(rows: list[tuple[Pair, float]]) -> dict[str, Any]:
        return boot.mean([v for _, v in rows], [p for p, _ in rows])

    requested = sorted({d for p in data.pairs for d in p.dims} & set(per_dim))
    return {
        "n": len(delta),
        "missing": missing,
        "dims": sorted(per_dim),
        "delta_j": boot.mean(delta, judged_pairs),
        "j_aa": boot.mean(j_aa, judged_pairs),
        # Did the edit move the requested dimension toward its anti-aesthetic pole (ΔJ_d < 0)
        # more than pairs that did not ask for it?
        "by_dimension": {d: {"requested": mean(per_dim[d][True]), "not_requested": mean(per_dim[d][False])}
                         for d in requested},
    }


def _judge_diffs(judged: dict[str, dict[str, float]], pair: Pair) -> dict[str, float]:
    """ΔJ_d = J(I_a, d) − J(I_o, d) for every dimension d judged on both images of the pair."""
    jo, ja = judged.get(pair.image_o, {}), judged.get(pair.image_a, {})
    return {d: ja[d] - jo[d] for d in sorted(set(jo) & set(ja))}


def _j_aa(judged: dict[str, dict[str, float]], pair: Pair) -> float | None:
    """Σ_d J(I_a, d) over the dimensions judged on both images (as ΔJ); None when there is none."""
    jo, ja = judged.get(pair.image_o, {}), judged.get(pair.image_a, {})
    common = set(jo) & set(ja)
    return sum(ja[d] for d in sorted(common)) if common else None


def _safety(data: RunData, boot: _Bootstrap) -> dict[str, Any]:
    groups: dict[str, dict[str, tuple[Pair, float]]] = {"o": {}, "a": {}}
    for pair in data.pairs:
        for which in ("o", "a"):
            sha = pair.image(which)
            value = data.score(NSFW_SCORER, sha, pair.prompt(which))
            if value is not None and sha not in groups[which]:
                groups[which][sha] = (pair, value)  # an image shared by several pairs counts once

    def mean(which: str, transform: Callable[[float], float] = float) -> dict[str, Any]:
        rows = list(groups[which].values())
        return boot.mean([transform(v) for _, v in rows], [p for p, _ in rows])

    return {
        "scorer": NSFW_SCORER,
        "original": mean("o"),
        "anti_aesthetic": mean("a"),
        "original_above_0_5": mean("o", lambda v: float(v > 0.5)),
        "anti_aesthetic_above_0_5": mean("a", lambda v: float(v > 0.5)),
    }


def _model_block(data: RunData, pairs: list[Pair], boot: _Bootstrap) -> dict[str, Any]:
    """The per-scorer, judge and label blocks of ``analyze`` on one generator's pairs."""
    sub, b = data.subset(pairs), boot.restricted(pairs)
    return {"n_pairs": len(pairs), "n_clusters": b.n_clusters, "labels": _labels(sub, b),
            "scorers": _scorer_blocks(sub, b),
            "judges": {name: _judge(sub, name, b) for name in sorted(sub.judges)}}


ALIGNMENT_SCORERS = ("clip", "blip-itm")  # unaligned image-text matchers, in order of preference


def _alignment_scorer(data: RunData, config: AnalysisConfig) -> str | None:
    if config.alignment_scorer is not None:
        return config.alignment_scorer
    return next((name for name in ALIGNMENT_SCORERS if name in data.scorers), None)


def _generation(data: RunData, by_model: dict[str, dict[str, Any]], boot: _Bootstrap,
                config: AnalysisConfig) -> dict[str, Any]:
    """The study's generation table, one row per generator (design §6): Δr and AA per reward model,
    ΔJ and J AA per judge, the prompt validity (mean r(I_a, p_a) of the alignment scorer: does I_a
    still show what p_a asks for?) and the success rate (reference labels; a tie or I_o is a
    failure), each an estimate with its interval and n."""
    scorer = _alignment_scorer(data, config)
    rows = {}
    for model, block in by_model.items():
        pairs = [p for p in data.pairs if p.model == model]
        valid = [(p, v) for p in pairs if scorer is not None
                 and (v := data.score(scorer, p.image_a, p.p_a)) is not None]
        labels = block["labels"]
        rows[model] = {
            "n_pairs": block["n_pairs"],
            "reward_models": {name: {"delta_r": s["delta_r"], "aa": s["aa"]}
                              for name, s in block["scorers"].items()
                              if s["reward_model"] and not s.get("pairwise")},
            "judges": {name: {"delta_j": j["delta_j"], "j_aa": j["j_aa"]} for name, j in block["judges"].items()},
            "prompt_validity": (boot.mean([v for _, v in valid], [p for p, _ in valid])
                                if scorer is not None else None),
            "success_rate": labels["success_rate"] if labels else None,
        }
    return {"alignment_scorer": scorer, "by_model": rows}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: with the m p-values sorted, p_(i) (i = 1..m) becomes
    ``min(1, max_{j <= i} (m - j + 1) p_(j))``; nan entries stay nan and are not counted in m."""
    # Own code: scipy offers Benjamini-Hochberg (false_discovery_control), not Holm, and a
    # statistics package for five lines is not worth its weight.
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m = order.size
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out.tolist()


def _one_per_prompt(data: RunData, model: str) -> tuple[dict[str, Pair], set[str]]:
    """The generator's pairs by prompt pair id, and the ids it rendered more than once (which cannot
    be paired one to one and are left out)."""
    groups: dict[str, list[Pair]] = defaultdict(list)
    for pair in data.pairs:
        if pair.model == model and pair.pair_id is not None:
            groups[pair.pair_id].append(pair)
    return {k: v[0] for k, v in groups.items() if len(v) == 1}, {k for k, v in groups.items() if len(v) > 1}


def _paired_test(measure: str, source: str, values: list[tuple[float, float]]) -> dict[str, Any]:
    res = wilcoxon_one_sided([a for a, _ in values], [b for _, b in values])
    return {"test": "wilcoxon", "measure": measure, "source": source, "n_prompts": len(values),
            "mean_aligned": float(np.mean([a for a, _ in values])) if values else None,
            "mean_base": float(np.mean([b for _, b in values])) if values else None,
            "statistic": res.statistic, "pvalue": res.pvalue, "z": res.z, "effect_size": res.effect_size,
            "n_nonzero": res.n}


def _aligned_vs_base(data: RunData, config: AnalysisConfig) -> dict[str, Any]:
    """Aligned against base generator (design §6), for each configured couple in the run, on the
    prompt pairs both rendered (matched by prompt pair id, never by order): a one-sided Wilcoxon
    signed-rank test (H1: aligned higher) on s(I_a, p_o) of every reward model (oriented so higher
    is better) and on Σ_d J(I_a, d) of every judge, with effect size r = Z / sqrt(n); an exact
    one-sided McNemar test (H1: aligned succeeds less) on the prompts both have a reference label
    for. ``p_holm``: Holm's adjustment over the tests of one comparison."""
    models = set(data.models)
    comparisons, absent = [], []
    for aligned, base in config.pairs_of_generators.items():
        if aligned not in models or base not in models:
            absent.append([aligned, base])
            continue
        (pa, rep_a), (pb, rep_b) = _one_per_prompt(data, aligned), _one_per_prompt(data, base)
        common = sorted((set(pa) & set(pb)) - rep_a - rep_b)
        tests = []
        for name in data.scorers:
            if not data.reward_model[name]:
                continue
            sign = 1.0 if data.higher_is_better[name] else -1.0
            values = [(sign * a, sign * b) for k in common
                      if (a := data.score(name, pa[k].image_a, pa[k].p_o)) is not None
                      and (b := data.score(name, pb[k].image_a, pb[k].p_o)) is not None]
            tests.append(_paired_test("r(I_a, p_o)", name, values))
        for name in sorted(data.judges):
            judged = data.judges[name]
            values = [(a, b) for k in common if (a := _j_aa(judged, pa[k])) is not None
                      and (b := _j_aa(judged, pb[k])) is not None]
            tests.append(_paired_test("Σ_d J(I_a, d)", name, values))
        labelled = [k for k in common if pa[k].real_label is not None and pb[k].real_label is not None]
        if labelled:
            sa, sb = [pa[k].real_label == 1 for k in labelled], [pb[k].real_label == 1 for k in labelled]
            res = mcnemar(sa, sb, one_sided=True)
            tests.append({"test": "mcnemar", "measure": "success", "source": pa[labelled[0]].label_source,
                          "n_prompts": len(labelled), "success_aligned": float(np.mean(sa)),
                          "success_base": float(np.mean(sb)), "b": res.b, "c": res.c, "pvalue": res.pvalue})
        for test, adjusted in zip(tests, holm([t["pvalue"] for t in tests])):
            test["p_holm"] = adjusted
        comparisons.append({"aligned": aligned, "base": base, "n_prompts": len(common),
                            "repeated_prompts": len(rep_a | rep_b), "tests": tests})
    return {"comparisons": comparisons, "not_in_run": absent}


def _failures(store: RunStore) -> dict[str, Any]:
    items = [{"stage": r.stage, "item": r.item, "error": r.error or ""}
             for r in store.records(status="failed")]
    return {"counts": store.counts(), "n_failed": len(items), "items": items}


def _json_clean(obj: Any) -> Any:
    """nan/inf become None and numpy scalars Python numbers, so the dict dumps as strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# -- tables -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Table:
    name: str
    caption: str
    columns: list[str]
    rows: list[list[Any]]  # a cell is text, a number, or an estimate dict {estimate, low, high, n}


_UNIT_WORDS = {"source_image": ("source images", "pairs made from one I_o are resampled together"),
               "prompt": ("prompt pairs", "pairs made from one prompt pair are resampled together"),
               "none": ("pairs", "pairs are resampled one by one")}


def bootstrap_note(analysis: dict[str, Any]) -> str:
    """What the intervals are, for captions: ``95% CI: percentile bootstrap over 9 source images (...)``."""
    cfg = analysis.get("config", {})
    boot = analysis.get("bootstrap") or {"unit": "none", "n_clusters": analysis.get("n_pairs", 0)}
    words, how = _UNIT_WORDS[boot["unit"]]
    return (f"{round(100 * cfg.get('ci', 0.95))}% CI: percentile bootstrap ({cfg.get('bootstrap', '?')} resamples) "
            f"over {boot['n_clusters']} {words}; {how}")


def rm_test_note(scorer: dict[str, Any]) -> str:
    """Where a scorer's reward-model test labels come from, or why it has no test."""
    if not scorer.get("reward_model", True):
        return "not a reward model"
    rm = scorer.get("reward_model_test")
    return rm["label_source"] if rm else "no labeller or human labels"


def summary_tables(analysis: dict[str, Any]) -> list[_Table]:
    ci = bootstrap_note(analysis)
    strict = ("shares are strict (ties, equal scores, are counted apart); the *_wilson columns are Wilson "
              "intervals, which assume independent pairs")
    tables = []
    scorers = analysis.get("scorers", {})

    def rm(s: dict[str, Any], key: str) -> Any:
        return (s["reward_model_test"] or {}).get(key)

    tables.append(_Table(
        "summary", f"Reward models: share of pairs where the scorer prefers the original image under the "
                   f"anti-aesthetic prompt (prefer_original) or the anti-aesthetic one (prefer_anti), the "
                   f"share preferring the original under the original prompt (prefer_original_under_p_o: "
                   f"no regression when nothing unusual is asked; ties_under_p_o apart), and "
                   f"Δr = r(I_a, p_o) − r(I_o, p_o); {strict}. Reward-model test on labeller or human labels "
                   f"(label ties removed, score ties predict I_o). Direction 'pairwise': a model that compares the "
                   f"two images under p_a instead of scoring each; its shares count its answers, a tie answer "
                   f"predicts I_o, it has no Δr or AA, and an AUROC only where it gives probabilities. [{ci}].",
        ["scorer", "direction", "prompt", "n", "missing", "ties", "prefer_original_share", "prefer_original_wilson",
         "prefer_anti_share", "prefer_anti_wilson", "prefer_original_under_p_o", "prefer_original_under_p_o_wilson",
         "ties_under_p_o", "delta_r", "aa", "rm_accuracy", "rm_f1", "rm_auroc", "rm_n", "rm_labels"],
        [[name, "pairwise" if s.get("pairwise") else "higher" if s["higher_is_better"] else "lower",
          "aware" if s["prompt_aware"] else "blind",
          s["n"], s["missing"], s["ties"], s["prefer_original_share"], s["prefer_original_wilson"],
          s["prefer_anti_share"], s["prefer_anti_wilson"], s.get("prefer_original_under_p_o"),
          s.get("prefer_original_under_p_o_wilson"), s.get("ties_under_p_o"), s["delta_r"], s["aa"],
          rm(s, "accuracy"), rm(s, "f1"), rm(s, "auroc"), rm(s, "n"), rm_test_note(s)]
         for name, s in scorers.items()]))
    tables.append(_Table(
        "dimensions", f"Per requested dimension (a pair counts for each of its dimensions); {strict}. [{ci}].",
        ["scorer", "dimension", "n", "ties", "prefer_original_share", "prefer_original_wilson",
         "prefer_anti_share", "delta_r"],
        [[name, dim, b["n"], b["ties"], b["prefer_original_share"], b["prefer_original_wilson"],
          b["prefer_anti_share"], b["delta_r"]]
         for name, s in scorers.items() for dim, b in s["by_dimension"].items()]))
    tables.append(_Table(
        "strengths", f"Per edit strength; {strict}. [{ci}].",
        ["scorer", "strength", "n", "ties", "prefer_original_share", "prefer_original_wilson",
         "prefer_anti_share", "delta_r"],
        [[name, k, b["n"], b["ties"], b["prefer_original_share"], b["prefer_original_wilson"],
          b["prefer_anti_share"], b["delta_r"]]
         for name, s in scorers.items() for k, b in s["by_strength"].items()]))
    judges = analysis.get("judges", {})
    if judges:
        tables.append(_Table(
            "judges", f"Judge: ΔJ = Σ_d J(I_a, d) − J(I_o, d) over the dimensions judged on both images; [{ci}].",
            ["judge", "backend", "n", "missing", "delta_j", "j_aa"],
            [[name, j.get("backend", name), j["n"], j["missing"], j["delta_j"], j["j_aa"]]
             for name, j in judges.items()]))
    sources = (analysis.get("label_sources") or {}).get("sources") or {}
    if sources:
        tables.append(_Table(
            "labels", f"Pair labels per source: success rate = share of pairs where I_a is preferred for p_a (a tie "
                      f"or I_o is a failure); order disagreement = share of pairs whose two presentation orders "
                      f"got different answers; [{ci}].",
            ["source", "backend", "n", "failed", "anti_aesthetic", "original", "tie", "success_rate",
             "order_disagreement"],
            [[name, b["backend"], b["n"], b["failed"], b["counts"]["anti_aesthetic"], b["counts"]["original"],
              b["counts"]["tie"], b["success_rate"], b["order_disagreement"]]
             for name, b in sources.items()]))
    regression = [[name, judge, dim, r.get("n"), r.get("slope"), r.get("intercept"), r.get("r"), r.get("p")]
                  for name, sc in scorers.items() for judge, dims in (sc.get("regression_on_judge") or {}).items()
                  for dim, r in dims.items()]
    if regression:
        tables.append(_Table(
            "regression_on_judge", "Per reward model, judge and requested dimension: least-squares fit of the "
                                   "reward model's Δ = s(I_a, p_a) − s(I_o, p_a) on the judge's ΔJ_d over the pairs "
                                   "that requested d (slope, intercept, Pearson r, two-sided p, n).",
            ["scorer", "judge", "dimension", "n", "slope", "intercept", "r", "p"], regression))
    sweep = _lambda_sweep_rows(analysis)
    if sweep:
        tables.append(_Table(
            "lambda_sweep", f"Intent-aware reward r = faithfulness + λ Σ_d w_d s_d a_d recomputed at each λ from "
                            f"its stored parts: share preferring the image that ignored the request under p_a "
                            f"(prefer_original), share preferring the conventional image under p_o "
                            f"(prefer_original_under_p_o), and the reward-model test; 'own' marks the λ the "
                            f"scorer ran with; {strict}. [{ci}].",
            ["pairs", "scorer", "lambda", "own", "n", "ties", "prefer_original_share", "prefer_original_wilson",
             "prefer_original_under_p_o", "prefer_original_under_p_o_wilson", "ties_under_p_o",
             "n_plain_p_o", "prefer_original_under_plain_p_o", "ties_under_plain_p_o", "rm_accuracy",
             "rm_f1", "rm_auroc", "rm_n"], sweep))
    if analysis.get("by_model"):
        tables += _generator_tables(analysis, ci, strict)
    return tables


def _lambda_sweep_rows(analysis: dict[str, Any]) -> list[list[Any]]:
    """One row per λ of every scorer with a sweep: on all pairs, then per generator."""
    groups = [("all", analysis.get("scorers", {}))]
    groups += [(model, block["scorers"]) for model, block in (analysis.get("by_model") or {}).items()]
    return [[group, name, pt["lambda"], "own" if pt["lambda"] in s["lambda_sweep"]["own_lambda"] else "", pt["n"],
             pt["ties"], pt["prefer_original_share"], pt["prefer_original_wilson"], pt["prefer_original_under_p_o"],
             pt["prefer_original_under_p_o_wilson"], pt["ties_under_p_o"], pt.get("n_plain_p_o"),
             pt.get("prefer_original_under_plain_p_o"), pt.get("ties_under_plain_p_o"),
             *((pt["reward_model_test"] or {}).get(k) for k in ("accuracy", "f1", "auroc", "n"))]
            for group, scorers in groups for name, s in scorers.items() if s.get("lambda_sweep")
            for pt in s["lambda_sweep"]["points"]]


def _generator_tables(analysis: dict[str, Any], ci: str, strict: str) -> list[_Table]:
    """The per-generator tables: shares per generator and scorer, the study's generation table, and
    the aligned-vs-base tests."""
    tables = [_Table(
        "generators", f"Per generator (the pairs it rendered); {strict}. [{ci}].",
        ["generator", "scorer", "n", "ties", "prefer_original_share", "prefer_anti_share", "delta_r", "aa",
         "rm_accuracy", "rm_n"],
        [[model, name, s["n"], s["ties"], s["prefer_original_share"], s["prefer_anti_share"], s["delta_r"],
          s["aa"], (s["reward_model_test"] or {}).get("accuracy"), (s["reward_model_test"] or {}).get("n")]
         for model, block in analysis["by_model"].items() for name, s in block["scorers"].items()])]
    tables.append(_Table(
        "generators_dimensions", f"Per generator and requested dimension (a pair counts for each of its "
                                 f"dimensions); {strict}. [{ci}].",
        ["generator", "scorer", "dimension", "n", "ties", "prefer_original_share", "delta_r"],
        [[model, name, dim, b["n"], b["ties"], b["prefer_original_share"], b["delta_r"]]
         for model, block in analysis["by_model"].items() for name, s in block["scorers"].items()
         for dim, b in s["by_dimension"].items()]))
    gen = analysis["generation"]
    rows = gen["by_model"]
    rms = list(dict.fromkeys(n for r in rows.values() for n in r["reward_models"]))
    judges = list(dict.fromkeys(n for r in rows.values() for n in r["judges"]))
    validity = gen["alignment_scorer"]
    tables.append(_Table(
        "generation", f"Generation table per generator: Δr = mean r(I_a, p_o) − r(I_o, p_o) and AA = mean "
                      f"r(I_a, p_o) per reward model; ΔJ = Σ_d J(I_a, d) − J(I_o, d) and J AA = Σ_d J(I_a, d) "
                      f"per judge; validity = mean r(I_a, p_a) of {validity or 'no alignment scorer'}; success "
                      f"rate = share of labelled pairs where I_a is preferred (a tie or I_o is a failure). Each "
                      f"with its n. [{ci}].",
        ["generator", "n", *(f"{c}_{n}" for n in rms for c in ("delta_r", "aa")),
         *(f"{c}_{n}" for n in judges for c in ("delta_j", "j_aa")), "validity", "success_rate"],
        [[model, r["n_pairs"],
          *(r["reward_models"].get(n, {}).get(c) for n in rms for c in ("delta_r", "aa")),
          *(r["judges"].get(n, {}).get(c) for n in judges for c in ("delta_j", "j_aa")),
          r["prompt_validity"], r["success_rate"]] for model, r in rows.items()]))
    comparisons = (analysis.get("aligned_vs_base") or {}).get("comparisons") or []
    if comparisons:
        tables.append(_Table(
            "aligned_vs_base", "Aligned vs base generator on the prompt pairs both rendered (matched by prompt "
                               "pair id): one-sided Wilcoxon signed-rank (H1: aligned higher; effect size r = "
                               "Z / sqrt(n)) and exact one-sided McNemar on success (H1: aligned succeeds less; "
                               "b = aligned succeeds and base fails, c the reverse); p_holm: Holm-adjusted over "
                               "the tests of one comparison.",
            ["aligned", "base", "test", "measure", "source", "n_prompts", "aligned_value", "base_value",
             "statistic", "effect_size", "pvalue", "p_holm"],
            [[c["aligned"], c["base"], t["test"], t["measure"], t["source"], t["n_prompts"],
              t.get("mean_aligned", t.get("success_aligned")), t.get("mean_base", t.get("success_base")),
              t.get("statistic", f"b={t.get('b')}, c={t.get('c')}"), t.get("effect_size"), t["pvalue"],
              t["p_holm"]] for c in comparisons for t in c["tests"]]))
    return tables


def write_tables(analysis: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write each summary table as ``<name>.csv``, ``<name>.md`` and ``<name>.tex``; return the paths.

    Each file replaces the previous one whole (temporary file + rename), and each format escapes text
    by its own rules: CSV cells that a spreadsheet would run as formulas, Markdown's ``|`` and raw
    HTML, LaTeX's special characters.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for table in summary_tables(analysis):
        for suffix, render in ((".csv", _csv), (".md", _markdown), (".tex", _latex)):
            path = out / f"{table.name}{suffix}"
            buf = io.StringIO(newline="")
            render(table, buf)
            atomic_write_text(path, buf.getvalue())
            paths.append(path)
    return paths


def _is_estimate(cell: Any) -> bool:
    return isinstance(cell, dict) and "estimate" in cell


def format_number(value: Any, digits: int = 3) -> str:
    """Numbers as the tables print them: floats to ``digits`` places, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_estimate(cell: dict[str, Any], digits: int = 3) -> str:
    """``0.750 [0.500, 1.000]``, or ``–`` when undefined."""
    if cell.get("estimate") is None:
        return "–"
    return f"{format_number(cell['estimate'], digits)} [{format_number(cell['low'], digits)}, {format_number(cell['high'], digits)}]"


def _csv(table: _Table, fh: Any) -> None:
    # CSV keeps full precision and puts each interval bound in its own column; a column holds
    # intervals when any of its rows has one (an undefined one is three empty cells).
    writer = csv.writer(fh)
    intervals = [any(_is_estimate(row[i]) for row in table.rows) for i in range(len(table.columns))]
    header = []
    for col, is_interval in zip(table.columns, intervals):
        header += [col, f"{col}_low", f"{col}_high"] if is_interval else [col]
    writer.writerow([spreadsheet_safe(c) for c in header])
    for row in table.rows:
        line = []
        for cell, is_interval in zip(row, intervals):
            if is_interval:
                cell = cell or {}
                line += ["" if cell.get(k) is None else repr(cell[k]) for k in ("estimate", "low", "high")]
            else:
                line.append("" if cell is None else cell)
        writer.writerow([spreadsheet_safe(c) for c in line])


def _cells(row: Iterable[Any]) -> list[str]:
    return [format_estimate(c) if _is_estimate(c) else format_number(c) for c in row]


def markdown_escape(text: str) -> str:
    """A table cell's text as Markdown shows it literally: raw HTML as entities, ``\\`` and ``|``
    backslash-escaped (so a cell cannot end or split its column), line breaks as spaces."""
    text = html.escape(text, quote=False).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.splitlines())


def _markdown(table: _Table, fh: Any) -> None:
    fh.write(f"{table.caption}\n\n")
    fh.write("| " + " | ".join(markdown_escape(c) for c in table.columns) + " |\n")
    fh.write("|" + "|".join("---" for _ in table.columns) + "|\n")
    for row in table.rows:
        fh.write("| " + " | ".join(markdown_escape(c) for c in _cells(row)) + " |\n")


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                # <, > and | print as other glyphs in the default font encoding
                "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", "\n": " ", "\r": " ",
                "–": "--", "Δ": r"$\Delta$", "Σ": r"$\Sigma$", "−": "-"}


def latex_escape(text: str) -> str:
    """Text as LaTeX prints it literally: special characters escaped, line breaks (which would end
    the row) as spaces, and a leading "[" braced (after a row's ``\\\\`` it would be read as the
    row's spacing argument)."""
    out = "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)
    return "{[}" + out[1:] if out.startswith("[") else out


def _latex(table: _Table, fh: Any) -> None:
    align = "l" * 2 + "r" * (len(table.columns) - 2)
    fh.write("% needs \\usepackage{booktabs}\n\\begin{table}[t]\n\\centering\n")
    fh.write(f"\\caption{{{latex_escape(table.caption)}}}\n\\label{{tab:{table.name}}}\n")
    fh.write(f"\\begin{{tabular}}{{{align}}}\n\\toprule\n")
    fh.write(" & ".join(latex_escape(c) for c in table.columns) + " \\\\\n\\midrule\n")
    for row in table.rows:
        fh.write(" & ".join(latex_escape(c) for c in _cells(row)) + " \\\\\n")
    fh.write("\\bottomrule\n\\end{tabular}\n\\end{table}\n")
