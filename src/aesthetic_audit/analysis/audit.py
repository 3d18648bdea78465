"""The audit: every table of the study recomputed from a run's per-item records (design §6).

``analyze`` never reads a stored aggregate: it joins image pairs with their scores and judgements,
so any number in the report can be bootstrapped and traced back to the items behind it.

Conventions: ``r`` is a scorer's raw score and ``s`` the score oriented so that higher is better
(``s = r`` or ``-r`` by the scorer's ``higher_is_better``). A prompt-blind scorer stores one score per
image (prompt ``None``), used for both prompts of a pair.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..config import AnalysisConfig
from ..hashing import spec_hash
from ..records import IMAGES, JUDGE, LABELS, SCORE
from ..store.run import RunStore, atomic_write_text
from ..textio import spreadsheet_safe
from .agreement import majority_vote
from .stats import bootstrap_ci, reward_model_test

NSFW_SCORER = "nsfw"
NO_STRENGTH = "n/a"
# The four (image, prompt) combinations, in the paper's key order: o/d image, then o/d prompt.
COMBOS = (("oiop", "o", "o"), ("oidp", "o", "a"), ("diop", "a", "o"), ("didp", "a", "a"))


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

    def image(self, which: str) -> str:
        return self.image_o if which == "o" else self.image_a

    def prompt(self, which: str) -> str:
        return self.p_o if which == "o" else self.p_a


@dataclass
class RunData:
    """A run's per-item records, indexed for the joins the analysis and the report make."""

    pairs: list[Pair] = field(default_factory=list)
    scorers: list[str] = field(default_factory=list)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    scores: dict[tuple[str, str, str | None], float] = field(default_factory=dict)
    truncated: dict[str, list[bool]] = field(default_factory=dict)
    judges: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    judge_desc: dict[str, str] = field(default_factory=dict)
    # label source ("vlm:NAME", "human:RATER") -> (image_o, image_a, p_a) -> -1 tie / 0 original / 1 anti
    labels: dict[str, dict[tuple[str, str, str], int]] = field(default_factory=dict)
    disagree: dict[str, list[bool]] = field(default_factory=dict)  # both-orders labellers: per pair
    label_desc: dict[str, str] = field(default_factory=dict)  # what stands behind a VLM label source
    label_failed: dict[str, int] = field(default_factory=dict)  # failed label records per source

    @classmethod
    def from_store(cls, store: RunStore) -> "RunData":
        data = cls()
        for rec in store.records(IMAGES):
            d = rec.data
            label = d.get("label")
            value = label.get("value") if isinstance(label, dict) else None
            data.pairs.append(Pair(
                key=rec.key, p_o=str(d.get("p_o", "")), p_a=str(d.get("p_a", "")),
                dims=tuple(d.get("dims") or ()), image_o=d["image_o"], image_a=d["image_a"],
                strength=d.get("strength"),
                label=int(value) if value in (-1, 0, 1) else None,
                label_source=label.get("source") if isinstance(label, dict) else None,
            ))
        current = _current_ids(store)
        # Scorers that only ever failed still get a row: their pairs all count as missing.
        for rec in store.records(SCORE, status=None):
            name = rec.data.get("scorer")
            if name is None or not _is_current(current, f"scorer:{name}", rec.data.get("scorer_id")):
                continue
            if name not in data.higher_is_better:
                data.scorers.append(name)
                data.higher_is_better[name] = bool(rec.data.get("higher_is_better", True))
            score = rec.data.get("score")
            if rec.status != "ok" or not isinstance(score, (int, float)) or not math.isfinite(score):
                continue
            data.scores[(name, rec.data["image"], rec.data.get("prompt"))] = float(score)
            if rec.data.get("prompt") is not None and rec.data.get("truncated") is not None:
                data.truncated.setdefault(name, []).append(bool(rec.data["truncated"]))
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
            data.labels.setdefault(d["source"], {})[(d["image_o"], d["image_a"], d.get("p_a", ""))] = int(d["value"])
            if d.get("disagree") is not None:
                data.disagree.setdefault(d["source"], []).append(bool(d["disagree"]))
        return data

    def reference_labels(self) -> tuple[str | None, dict[tuple[str, str, str], int]]:
        """The labels the reward-model test and the success rate use, and where they come from: the
        human raters' majority when there are human labels, else the first VLM labeller by name. A
        majority with no single winner is a tie."""
        humans = {s: v for s, v in self.labels.items() if s.startswith("human:")}
        if humans:
            votes: dict[tuple[str, str, str], list[int]] = defaultdict(list)
            for values in humans.values():
                for key, value in values.items():
                    votes[key].append(value)
            return "humans (majority)", {k: majority_vote(v) for k, v in votes.items()}
        machine = sorted(s for s in self.labels if not s.startswith("human:"))
        return (machine[0], self.labels[machine[0]]) if machine else (None, {})


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


def analyze(store: RunStore, config: AnalysisConfig, seed: int = 0) -> dict[str, Any]:
    """All the audit's numbers for a run, as a JSON-serialisable dict (undefined values are None).

    Keys: ``config``, ``n_pairs``, ``dimensions``, ``labels``, ``scorers``, ``judges``, ``safety``,
    ``failures``. Every estimate is ``{estimate, low, high, n}`` with a percentile bootstrap interval.
    """
    data = RunData.from_store(store)
    _apply_reference_labels(data)
    boot = _Bootstrap(config.bootstrap, config.ci, seed)
    out = {
        "config": {"bootstrap": config.bootstrap, "ci": config.ci, "seed": seed},
        "n_pairs": len(data.pairs),
        "dimensions": data.dimensions,
        "labels": _labels(data, boot),
        "label_sources": _label_sources(data, boot, config),
        "scorers": {name: _scorer(data, name, boot) for name in data.scorers},
        "judges": {name: {**_judge(data, name, boot), "backend": data.judge_desc.get(name, name)}
                   for name in sorted(data.judges)},
        "safety": _safety(data, boot) if NSFW_SCORER in data.higher_is_better else None,
        "failures": _failures(store),
    }
    return _json_clean(out)


class _Bootstrap:
    def __init__(self, n_resamples: int, ci: float, seed: int):
        self.n_resamples, self.ci, self.seed = n_resamples, ci, seed

    def mean(self, values: Sequence[float]) -> dict[str, Any]:
        est, low, high = bootstrap_ci(np.asarray(values, dtype=float), None, self.n_resamples, self.ci, self.seed)
        return {"estimate": est, "low": low, "high": high, "n": len(values)}


def _current_ids(store: RunStore) -> dict[str, str]:
    """``{"scorer:NAME" | "judge:NAME" | "labeller:NAME": identity hash}`` of the backends the manifest
    says ran last (a scorer's entry wraps its identity with its weights files)."""
    backends = store.read_manifest().get("backends", {})
    out = {key: spec_hash(value["identity"]) for key, value in backends.items()
           if key.startswith("scorer:") and isinstance(value, dict) and "identity" in value}
    out.update({key: spec_hash(value) for key, value in backends.items()
                if key.startswith(("judge:", "labeller:")) and isinstance(value, dict)})
    return out


def _apply_reference_labels(data: RunData) -> None:
    """Give every pair the reference label (humans' majority, else a VLM labeller) where one exists;
    pairs without one keep the label they were built with (an editor pair's construction label)."""
    source, labels = data.reference_labels()
    if not labels:
        return
    for i, pair in enumerate(data.pairs):
        value = labels.get((pair.image_o, pair.image_a, pair.p_a))
        if value is not None:
            data.pairs[i] = Pair(**{**pair.__dict__, "label": value, "label_source": source})
        elif pair.label_source != "construction":
            data.pairs[i] = Pair(**{**pair.__dict__, "label": None, "label_source": None})


def _label_sources(data: RunData, boot: _Bootstrap, config: AnalysisConfig) -> dict[str, Any] | None:
    """Per label source (each VLM labeller, each human rater): n, counts, the success rate (I_a
    preferred; a tie or I_o is a failure) and, for labellers asked in both orders, how often the two
    orders disagreed; then the agreement between sources (humans vs each labeller, Krippendorff's
    alpha across raters)."""
    from .agreement import multi_source_agreement

    if not data.labels and not data.label_failed:
        return None
    keys = {(p.image_o, p.image_a, p.p_a) for p in data.pairs}
    sources = {}
    for source in sorted(set(data.labels) | set(data.label_failed)):
        labels = [v for k, v in data.labels.get(source, {}).items() if k in keys]
        flags = data.disagree.get(source, [])
        sources[source] = {
            "backend": data.label_desc.get(source, "human rater" if source.startswith("human:") else source),
            "n": len(labels),
            "failed": data.label_failed.get(source, 0),
            "counts": {"anti_aesthetic": labels.count(1), "original": labels.count(0), "tie": labels.count(-1)},
            "success_rate": boot.mean([1.0 if v == 1 else 0.0 for v in labels]),
            "order_disagreement": boot.mean([float(f) for f in flags]) if flags else None,
        }
    reference, _ = data.reference_labels()
    agreement = multi_source_agreement({s: {k: v for k, v in vals.items() if k in keys}
                                        for s, vals in data.labels.items()},
                                       n_boot=config.bootstrap, seed=boot.seed)
    return {"reference": reference, "sources": sources, "agreement": agreement}


def _is_current(current: dict[str, str], backend: str, record_id: str | None) -> bool:
    """A record counts unless it carries an identity other than the one the backend last ran with:
    scores of an older checkpoint or other options in the same run never mix into the tables."""
    return record_id is None or backend not in current or current[backend] == record_id


def _labels(data: RunData, boot: _Bootstrap) -> dict[str, Any] | None:
    """Generator success rate (design §6): share of labelled pairs where I_a is preferred for p_a.

    Labels that hold by construction (the editor's pairs) are not a labeller's judgement and are left out.
    """
    labels = [p.label for p in data.pairs if p.label is not None and p.label_source != "construction"]
    if not labels:
        return None
    sources = sorted({p.label_source or "?" for p in data.pairs if p.label is not None
                      and p.label_source != "construction"})
    return {
        "n": len(labels),
        "source": ", ".join(sources),
        "counts": {"anti_aesthetic": labels.count(1), "original": labels.count(0), "tie": labels.count(-1)},
        "success_rate": boot.mean([1.0 if v == 1 else 0.0 for v in labels]),
    }


def _scorer(data: RunData, name: str, boot: _Bootstrap) -> dict[str, Any]:
    sign = 1.0 if data.higher_is_better[name] else -1.0
    rows = []  # (pair, prefer_original indicator, delta_r, aa, s_a, s_o under p_a)
    missing = 0
    for pair in data.pairs:
        r = data.combos(name, pair)
        if any(v is None for v in r.values()):
            missing += 1
            continue
        s_o, s_a = sign * r["oidp"], sign * r["didp"]
        prefer = 1.0 if s_o > s_a else 0.5 if s_o == s_a else 0.0
        rows.append((pair, prefer, r["diop"] - r["oiop"], r["diop"], s_a, s_o))

    def block(selected: list[tuple]) -> dict[str, Any]:
        return {"n": len(selected),
                "prefer_original_share": boot.mean([row[1] for row in selected]),
                "delta_r": boot.mean([row[2] for row in selected])}

    by_dim: dict[str, list[tuple]] = defaultdict(list)
    by_strength: dict[str, list[tuple]] = defaultdict(list)
    for row in rows:
        for dim in dict.fromkeys(row[0].dims):
            by_dim[dim].append(row)
        by_strength[_strength_key(row[0].strength)].append(row)

    labelled = [row for row in rows if row[0].label is not None]
    rm_test = None
    if labelled:
        res = reward_model_test([row[4] for row in labelled], [row[5] for row in labelled],
                                [row[0].label for row in labelled])
        rm_test = {**res._asdict(), "label_source": ", ".join(sorted({row[0].label_source or "?" for row in labelled}))}
    flags = data.truncated.get(name, [])
    return {
        "higher_is_better": data.higher_is_better[name],
        **block(rows),
        "missing": missing,
        "aa": boot.mean([row[3] for row in rows]),
        "by_dimension": {d: block(by_dim[d]) for d in sorted(by_dim)},
        "by_strength": {k: block(by_strength[k]) for k in sorted(by_strength, key=_strength_order)},
        "reward_model_test": rm_test,
        "truncated": {"n": len(flags), "share": float(np.mean(flags)) if flags else None},
    }


def _strength_key(strength: Any) -> str:
    return NO_STRENGTH if strength is None else format(float(strength), "g")


def _strength_order(key: str) -> tuple[int, float]:
    return (1, 0.0) if key == NO_STRENGTH else (0, float(key))


def _judge(data: RunData, name: str, boot: _Bootstrap) -> dict[str, Any]:
    """ΔJ = Σ_d J(I_a, d) − J(I_o, d) over the dims judged on both images; J AA = Σ_d J(I_a, d)."""
    judged = data.judges[name]
    delta, j_aa = [], []
    per_dim: dict[str, dict[bool, list[float]]] = defaultdict(lambda: {True: [], False: []})
    missing = 0
    for pair in data.pairs:
        jo, ja = judged.get(pair.image_o, {}), judged.get(pair.image_a, {})
        common = sorted(set(jo) & set(ja))
        if not common:
            missing += 1
            continue
        delta.append(sum(ja[d] - jo[d] for d in common))
        j_aa.append(sum(ja[d] for d in common))
        for d in common:
            per_dim[d][d in pair.dims].append(ja[d] - jo[d])
    requested = sorted({d for p in data.pairs for d in p.dims} & set(per_dim))
    return {
        "n": len(delta),
        "missing": missing,
        "dims": sorted(per_dim),
        "delta_j": boot.mean(delta),
        "j_aa": boot.mean(j_aa),
        # Did the edit move the requested dimension toward its anti-aesthetic pole (ΔJ_d < 0)
        # more than pairs that did not ask for it?
        "by_dimension": {d: {"requested": boot.mean(per_dim[d][True]),
                             "not_requested": boot.mean(per_dim[d][False])} for d in requested},
    }


def _safety(data: RunData, boot: _Bootstrap) -> dict[str, Any]:
    groups: dict[str, dict[str, float]] = {"o": {}, "a": {}}
    for pair in data.pairs:
        for which in ("o", "a"):
            sha = pair.image(which)
            value = data.score(NSFW_SCORER, sha, pair.prompt(which))
            if value is not None:
                groups[which][sha] = value  # an image shared by several pairs counts once
    orig, anti = list(groups["o"].values()), list(groups["a"].values())
    return {
        "scorer": NSFW_SCORER,
        "original": boot.mean(orig),
        "anti_aesthetic": boot.mean(anti),
        "original_above_0_5": boot.mean([float(v > 0.5) for v in orig]),
        "anti_aesthetic_above_0_5": boot.mean([float(v > 0.5) for v in anti]),
    }


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


def summary_tables(analysis: dict[str, Any]) -> list[_Table]:
    cfg = analysis.get("config", {})
    ci = f"{round(100 * cfg.get('ci', 0.95))}% CI"
    tables = []
    scorers = analysis.get("scorers", {})
    tables.append(_Table(
        "summary", f"Reward models: share of pairs where the scorer prefers the original image under the "
                   f"anti-aesthetic prompt, and Δr = r(I_a, p_o) − r(I_o, p_o); [{ci}].",
        ["scorer", "direction", "n", "missing", "prefer_original_share", "delta_r", "aa",
         "rm_accuracy", "rm_f1", "rm_auroc", "rm_n"],
        [[name, "higher" if s["higher_is_better"] else "lower", s["n"], s["missing"],
          s["prefer_original_share"], s["delta_r"], s["aa"],
          *((s["reward_model_test"] or {}).get(k) for k in ("accuracy", "f1", "auroc", "n"))]
         for name, s in scorers.items()]))
    tables.append(_Table(
        "dimensions", f"Per requested dimension (a pair counts for each of its dimensions); [{ci}].",
        ["scorer", "dimension", "n", "prefer_original_share", "delta_r"],
        [[name, dim, b["n"], b["prefer_original_share"], b["delta_r"]]
         for name, s in scorers.items() for dim, b in s["by_dimension"].items()]))
    tables.append(_Table(
        "strengths", f"Per edit strength; [{ci}].",
        ["scorer", "strength", "n", "prefer_original_share", "delta_r"],
        [[name, k, b["n"], b["prefer_original_share"], b["delta_r"]]
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
            [[name, b["backend"], b["n"], b["failed"], b["counts"]["anti_aesthetic"], b["counts"]["original"], b["counts"]["tie"],
              b["success_rate"], b["order_disagreement"] or {"estimate": None, "low": None, "high": None, "n": 0}]
             for name, b in sources.items()]))
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
    # CSV keeps full precision and puts each interval bound in its own column.
    writer = csv.writer(fh)
    sample = table.rows[0] if table.rows else [None] * len(table.columns)
    header = []
    for col, cell in zip(table.columns, sample):
        header += [col, f"{col}_low", f"{col}_high"] if _is_estimate(cell) else [col]
    writer.writerow([spreadsheet_safe(c) for c in header])
    for row in table.rows:
        line = []
        for cell in row:
            if _is_estimate(cell):
                line += ["" if cell[k] is None else repr(cell[k]) for k in ("estimate", "low", "high")]
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
