"""The report's charts as inline SVG strings, drawn with matplotlib (no JavaScript, no network).

Each function returns one ``<svg>`` element, or None when the analysis has nothing to draw. The SVG
is deterministic: ids are salted with a fixed string, text stays text (``svg.fonttype = none``, so a
browser renders it in its own font and a reader can search and copy the numbers) and the metadata
carries no date, so the same analysis gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ..analysis.audit import NO_STRENGTH, RunData

_RC = {"svg.hashsalt": "aesthetic-audit", "svg.fonttype": "none", "font.size": 11,
       "axes.spines.top": False, "axes.spines.right": False}
_COLOURS = ("#3168b0", "#c42d2d", "#2f8f5b", "#8a5cb8", "#d08a1c", "#4a9fb5", "#7a7a7a", "#b84a7d")


def to_svg(fig: Figure, title: str) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog), with ``title`` as its accessible name."""
    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Title": title})
    text = buf.getvalue()
    svg = text[text.index("<svg"):]
    # matplotlib numbers its ids per figure (figure_1, patch_1, ...): prefixed with the chart's own
    # name, so several charts on one page never share an id (a shared clip-path id clips the wrong chart)
    prefix = "c" + hashlib.sha256(title.encode()).hexdigest()[:8] + "-"
    svg = svg.replace(' id="', f' id="{prefix}').replace("url(#", f"url(#{prefix}").replace('href="#', f'href="#{prefix}')
    return svg.replace("<svg ", f'<svg role="img" aria-label="{_attr(title)}" ', 1)


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(_RC):
        return Figure(figsize=(width, height), layout="constrained")


def _reward_models(scorers: dict[str, Any]) -> dict[str, Any]:
    """The scorer blocks of reward models: a safety classifier's "preference" is no aesthetic one."""
    return {name: s for name, s in scorers.items() if s.get("reward_model", True)}


def _groups(analysis: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Scorer blocks per group: one group per generator when the run has several, else the whole run."""
    by_model = analysis.get("by_model") or {}
    if len(by_model) > 1:
        return {m: _reward_models(b["scorers"]) for m, b in by_model.items()}
    return {"all pairs": _reward_models(analysis.get("scorers", {}))}


def share_chart(analysis: dict[str, Any]) -> str | None:
    """Horizontal bars: per scorer (and generator), the strict share preferring the original under
    p_a with its bootstrap interval as an error bar; a line marks 0.5 (indifferent)."""
    groups = _groups(analysis)
    scorers = list(dict.fromkeys(n for block in groups.values() for n in block))
    if not scorers:
        return None
    with matplotlib.rc_context(_RC):
        fig = _figure(6.0, 0.9 + 0.32 * len(scorers) * len(groups))
        ax = fig.add_subplot()
        height = 0.8 / len(groups)
        for g, (label, block) in enumerate(groups.items()):
            y, est, lo, hi = [], [], [], []
            for i, name in enumerate(scorers):
                cell = (block.get(name) or {}).get("prefer_original_share") or {}
                if cell.get("estimate") is None:
                    continue
                y.append(i + (g - (len(groups) - 1) / 2) * height)
                est.append(cell["estimate"])
                lo.append(cell["estimate"] - (cell["low"] if cell.get("low") is not None else cell["estimate"]))
                hi.append((cell["high"] if cell.get("high") is not None else cell["estimate"]) - cell["estimate"])
            ax.barh(y, est, height=height * 0.9, color=_COLOURS[g % len(_COLOURS)], label=label,
                    xerr=[lo, hi], error_kw={"ecolor": "#1d2330", "capsize": 3, "elinewidth": 1})
        ax.axvline(0.5, color="#5f6b7a", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(scorers)), scorers)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of pairs preferring the original image under p_a (strict; bars: CI)")
        if len(groups) > 1:
            ax.legend(title="generator", loc="lower right", fontsize=8)
        return to_svg(fig, "Share of pairs preferring the original, per scorer")


def delta_values(data: RunData) -> dict[str, dict[str, list[float]]]:
    """Per reward model, per group (generator, or "all pairs"), the per-pair Δr = r(I_a, p_o) − r(I_o, p_o)
    over the pairs with both scores."""
    several = len(data.models) > 1
    out: dict[str, dict[str, list[float]]] = {}
    for name in data.scorers:
        if not data.reward_model.get(name, True):
            continue
        groups: dict[str, list[float]] = {}
        for pair in data.pairs:
            r = data.combos(name, pair)
            if r["diop"] is None or r["oiop"] is None:
                continue
            key = (pair.model or "editor") if several else "all pairs"
            groups.setdefault(key, []).append(r["diop"] - r["oiop"])
        if groups:
            out[name] = groups
    return out


def delta_chart(data: RunData) -> str | None:
    """One panel per scorer (scores have their own units): a box plot of per-pair Δr per group, with
    every pair drawn as a point over it; a line marks Δr = 0."""
    values = delta_values(data)
    if not values:
        return None
    with matplotlib.rc_context(_RC):
        fig = _figure(6.0, 0.9 + 1.1 * len(values))
        axes = fig.subplots(len(values), 1, squeeze=False)[:, 0]
        # Fixed seed: the strip plot's vertical jitter must not change the bytes between reports.
        rng = np.random.default_rng(0)
        for ax, (name, groups) in zip(axes, values.items()):
            labels = list(groups)
            ax.boxplot([groups[k] for k in labels], orientation="horizontal", widths=0.6,
                       showfliers=False, medianprops={"color": "#c42d2d"})
            for i, k in enumerate(labels, start=1):
                v = np.asarray(groups[k])
                ax.plot(v, i + rng.uniform(-0.18, 0.18, v.size), "o", markersize=2.5, alpha=0.5,
                        color=_COLOURS[0])
            ax.axvline(0, color="#5f6b7a", linestyle="--", linewidth=1)
            ax.set_yticks(range(1, len(labels) + 1), [f"{k} (n = {len(groups[k])})" for k in labels])
            ax.set_title(name, loc="left", fontsize=9)
        axes[-1].set_xlabel("Δr = r(I_a, p_o) − r(I_o, p_o), per pair, in each scorer's own units")
        return to_svg(fig, "Per-pair Δr per scorer")


def strength_chart(analysis: dict[str, Any]) -> str | None:
    """Per scorer, the share preferring the original against the edit strength, with its interval
    as a band; None unless some scorer has pairs at two or more strengths."""
    series = {}
    for name, s in _reward_models(analysis.get("scorers", {})).items():
        points = [(float(k), b["prefer_original_share"]) for k, b in s.get("by_strength", {}).items()
                  if k != NO_STRENGTH and (b.get("prefer_original_share") or {}).get("estimate") is not None]
        if len(points) >= 2:
            series[name] = sorted(points, key=lambda p: p[0])
    return _share_curves(series, "edit strength", "Share preferring the original against edit strength")


def adapter_chart(analysis: dict[str, Any]) -> str | None:
    """Per LoRA adapter rendered at several scales and per reward model, the share preferring the
    original against the adapter's scale with its interval as a band (the study's "user-controllable
    strength of aesthetic alignment"); None unless some adapter has two scales."""
    series = {}
    for adapter, block in (analysis.get("adapter_scale") or {}).items():
        label = "/".join(block["models"]) if len(block["models"]) <= 2 else adapter
        names = dict.fromkeys(n for sc in block["scales"].values() for n in _reward_models(sc["scorers"]))
        for name in names:
            points = [(float(k), sc["scorers"][name]["prefer_original_share"]) for k, sc in block["scales"].items()
                      if (sc["scorers"].get(name, {}).get("prefer_original_share") or {}).get("estimate") is not None]
            if len(points) >= 2:
                series[f"{name} · {label}"] = sorted(points, key=lambda p: p[0])
    return _share_curves(series, "LoRA scale (strength of aesthetic alignment)",
                         "Share preferring the original against the adapter's scale")


def lambda_chart(analysis: dict[str, Any]) -> str | None:
    """Per intent-aware scorer, curves against the aesthetic strength λ of its sweep, each with its
    interval as a band: the share preferring the image that ignored the request under p_a (want it
    low), and the share preferring the conventional image under p_o (want it high), on every pair and on
    the pairs whose p_o asks for nothing. None when no scorer has a sweep."""
    series = {}
    for name, s in analysis.get("scorers", {}).items():
        points = (s.get("lambda_sweep") or {}).get("points") or []
        for key, what in (("prefer_original_share", "ignores the request, under p_a"),
                          ("prefer_original_under_p_o", "conventional image, under p_o"),
                          ("prefer_original_under_plain_p_o", "conventional image, under a p_o asking nothing")):
            curve = [(float(pt["lambda"]), pt[key]) for pt in points if (pt.get(key) or {}).get("estimate") is not None]
            if len(curve) >= 2:
                series[f"{name}: {what}"] = curve
    return _share_curves(series, "aesthetic strength λ", "Intent-aware reward: shares against the aesthetic strength")


def success_chart(analysis: dict[str, Any]) -> str | None:
    """Per generator, the success rate (I_a preferred for p_a by the reference labels) against the
    conventional score of its anti-aesthetic images (AA = mean r(I_a, p_o)), one panel per reward model,
    with both intervals as error bars: does a generator that scores higher on conventional aesthetics
    follow anti-aesthetic requests less often? None unless two generators have a success rate."""
    rows = (analysis.get("generation") or {}).get("by_model") or {}
    rows = {m: r for m, r in rows.items() if (r.get("success_rate") or {}).get("estimate") is not None}
    if len(rows) < 2:
        return None
    scorers = list(dict.fromkeys(n for r in rows.values() for n, b in (r.get("reward_models") or {}).items()
                                 if (b.get("aa") or {}).get("estimate") is not None))
    if not scorers:
        return None
    with matplotlib.rc_context(_RC):
        fig = _figure(3.2 * min(len(scorers), 3), 3.0 * -(-len(scorers) // 3))
        for k, name in enumerate(scorers):
            ax = fig.add_subplot(-(-len(scorers) // 3), min(len(scorers), 3), k + 1)
            for i, (model, r) in enumerate(rows.items()):
                aa = (r.get("reward_models") or {}).get(name, {}).get("aa") or {}
                if aa.get("estimate") is None:
                    continue
                sr = r["success_rate"]
                ax.errorbar([aa["estimate"]], [sr["estimate"]], fmt="o", color=_COLOURS[i % len(_COLOURS)],
                            label=model, capsize=3, elinewidth=1,
                            xerr=[[aa["estimate"] - _or(aa, "low")], [_or(aa, "high") - aa["estimate"]]],
                            yerr=[[sr["estimate"] - _or(sr, "low")], [_or(sr, "high") - sr["estimate"]]])
            ax.set_ylim(0, 1)
            ax.set_xlabel(f"{name}: AA = mean r(I_a, p_o)")
            ax.set_ylabel("success rate")
            if k == 0:
                ax.legend(title="generator", fontsize=7)
        return to_svg(fig, "Success rate against the conventional score of I_a, per generator")


def _or(cell: dict[str, Any], key: str) -> float:
    return cell[key] if cell.get(key) is not None else cell["estimate"]


def _share_curves(series: dict[str, list[tuple[float, dict[str, Any]]]], xlabel: str, title: str) -> str | None:
    """One line per series of (x, share cell) points, its interval as a band, a dashed line at 0.5."""
    if not series:
        return None
    with matplotlib.rc_context(_RC):
        fig = _figure(6.0, 3.2)
        ax = fig.add_subplot()
        for i, (name, points) in enumerate(series.items()):
            colour = _COLOURS[i % len(_COLOURS)]
            x = [p for p, _ in points]
            ax.plot(x, [c["estimate"] for _, c in points], "o-", color=colour, label=name)
            ax.fill_between(x, _bound(points, "low"), _bound(points, "high"), color=colour, alpha=0.15,
                            linewidth=0)
        ax.axhline(0.5, color="#5f6b7a", linestyle="--", linewidth=1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("prefers original (share)")
        ax.legend(fontsize=8, loc="best")
        return to_svg(fig, title)


def _bound(points: Sequence[tuple[float, dict[str, Any]]], key: str) -> list[float]:
    return [_or(c, key) for _, c in points]
