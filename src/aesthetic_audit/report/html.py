"""One self-contained HTML report of an analysed run.

The file holds everything it shows (CSS, the gallery filter's few lines of script, charts as inline
SVG, images as base64 JPEG thumbnails) so it can be mailed or attached to a paper review and opened
offline. Every piece of text that comes from a run (prompts, names, errors, manifest values) goes
through ``html.escape``. It opens with a summary in quotable sentences, then charts, the tables, a
filterable gallery of every pair, the methods (from the manifest) and the failures.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from pathlib import Path
from string import Template
from typing import Any, Iterable, Sequence

from PIL import Image, ImageOps

from .. import __version__
from ..analysis.audit import (COMBOS, CONSTRUCTION, Pair, RunData, apply_reference_labels, bootstrap_note,
                              format_number, rm_test_note)
from ..images.generators.presets import describe_params
from ..records import IMAGES
from ..store.run import RunStore, atomic_write_text
from . import charts
from .methods import lambda_sweep_note, methods_section
from .summary import derived_from_judge, summary_sentences

THUMB_SIDE = 192
MAX_FAILURES = 50

_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
$css
</style>
</head>
<body>
<main>
$body
</main>
$script
</body>
</html>
""")

_CSS = """
:root { --fg: #1d2330; --muted: #5f6b7a; --line: #d9dee5; --bg: #ffffff; --soft: #f4f6f9; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 64px; }
@media (max-width: 600px) { main { padding: 12px 10px 40px; } }
.scroll { overflow-x: auto; max-width: 100%; }
.chart svg { width: 100%; max-width: 760px; height: auto; display: block; }
ul.summary { font-size: 16px; padding-left: 20px; }
ul.summary li { margin: 4px 0; }
.filters { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; margin: 8px 0 12px; font-size: 13px; }
.card[hidden] { display: none; }
pre { white-space: pre-wrap; font-size: 12px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 40px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 6px; }
p.note, .muted { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
.ci { color: var(--muted); font-size: 12px; white-space: nowrap; }
dl.info { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 12px 0; font-size: 13px; }
dl.info dt { color: var(--muted); }
dl.info dd { margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
table.heat td.cell { text-align: center; min-width: 64px; }
td.cell .ci { color: inherit; opacity: 0.8; }
.legend { display: flex; align-items: center; gap: 8px; font-size: 12px; color: var(--muted); }
.legend .bar { width: 220px; height: 12px; border: 1px solid var(--line); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 460px), 1fr)); gap: 16px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 12px; background: #fff; min-width: 0; }
.card .images { display: flex; gap: 8px; }
.card figure { margin: 0; flex: 1; text-align: center; }
.card figure img { max-width: 100%; height: auto; border-radius: 3px; }
.card figcaption { font-size: 12px; color: var(--muted); }
.card .missing { height: 120px; display: flex; align-items: center; justify-content: center;
                 background: var(--soft); color: var(--muted); font-size: 12px; }
.card .prompt { font-size: 13px; margin: 6px 0; }
.card .prompt b { display: inline-block; min-width: 28px; }
.tag { display: inline-block; background: var(--soft); border: 1px solid var(--line); border-radius: 10px;
       padding: 0 8px; margin: 0 4px 4px 0; font-size: 12px; }
tr.requested td:first-child { font-weight: 600; }
ul.failures { font-size: 13px; padding-left: 20px; }
ul.failures code { font-size: 12px; }
"""

# Diverging colour scale for "prefers the original" shares: blue = follows the anti-aesthetic
# prompt, white = indifferent (0.5), red = prefers the image that ignored the prompt.
_LOW, _MID, _HIGH = (49, 104, 176), (247, 247, 247), (196, 45, 45)


def write_report(store: RunStore, analysis: dict[str, Any], path: str | Path, *,
                 max_failures: int = MAX_FAILURES) -> Path:
    """Write the report for ``analysis`` (from ``analyze(store, ...)``) to ``path``; return the path."""
    body = _run_body(store, analysis, max_failures=max_failures, gallery=True)
    return _write_page(path, f"aesthetic-audit report: {store.root.name}", body)


def write_comparison(runs: Sequence[tuple[RunStore, dict[str, Any]]], path: str | Path, *,
                     max_failures: int = MAX_FAILURES) -> Path:
    """Several runs side by side in one file: a table of every scorer's strict prefer-original share per
    run, then each run's report (its gallery stays in the run's own report.html: one page holding every
    pair of every run would be too heavy to send around)."""
    names = _distinct_names([store.root.name for store, _ in runs])
    scorers = list(dict.fromkeys(name for _, analysis in runs for name in analysis.get("scorers", {})))
    rows = []
    for scorer in scorers:
        first = next(a["scorers"][scorer] for _, a in runs if scorer in a.get("scorers", {}))
        cells = [_scorer_cell(scorer, first)]
        for _, analysis in runs:
            s = analysis.get("scorers", {}).get(scorer)
            cells.append(f'{_est(s["prefer_original_share"])} <span class="ci">n = {_e(s["n"])}</span>'
                         if s else "–")
        rows.append(cells)
    header = [f"<h1>{len(runs)} runs side by side</h1>",
              '<p class="note">Share of pairs where each scorer strictly prefers the original image under the '
              "anti-aesthetic prompt, per run, with its bootstrap interval and n; each run's full report "
              "follows (its gallery of pairs is in the run's own report.html).</p>",
              _table(["scorer", *names], rows),
              "<ul>" + "".join(f'<li><a href="#run-{i}">{_e(n)}</a></li>' for i, n in enumerate(names)) + "</ul>"]
    sections = [f'<section id="run-{i}"><h1>{_e(name)}</h1>\n'
                + _prefix_ids(_run_body(store, analysis, max_failures=max_failures, gallery=False), f"run-{i}-")
                + "</section>" for i, (name, (store, analysis)) in enumerate(zip(names, runs))]
    return _write_page(path, f"aesthetic-audit: {', '.join(names)}", "\n".join(header + sections))


def _prefix_ids(body: str, prefix: str) -> str:
    """Every id in one run's sections (section anchors, the charts' clip paths) and every reference to
    one (``href="#…"``, ``url(#…)``) prefixed, so several runs' sections share a page without clashing."""
    return body.replace(' id="', f' id="{prefix}').replace('href="#', f'href="#{prefix}').replace(
        "url(#", f"url(#{prefix}")


def _distinct_names(names: list[str]) -> list[str]:
    """Run folder names, numbered where two runs share one (runs/a/x and runs/b/x)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if names.count(name) == 1 else f"{name} ({seen[name]})")
    return out


def _run_body(store: RunStore, analysis: dict[str, Any], *, max_failures: int, gallery: bool) -> str:
    data = RunData.from_store(store)
    apply_reference_labels(data)  # the gallery shows (and filters by) the labels the analysis used
    manifest = store.read_manifest()
    return "\n".join([
        _header(store, analysis),
        _quotable_section(analysis, manifest),
        _charts_section(analysis, data),
        _generators_section(store),
        _summary_section(analysis, manifest),
        _per_generator_section(analysis),
        _heatmap_section(analysis),
        _strength_section(analysis),
        _judge_section(analysis),
        _labels_section(analysis),
        _safety_section(analysis),
        _gallery_section(store, data) if gallery else "",
        methods_section(manifest, analysis, _table),
        _failures_section(analysis, max_failures),
    ])


def _write_page(path: str | Path, title: str, body: str) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Replaced whole: a killed run or a full disk leaves the previous report, never half of one.
    atomic_write_text(out, _PAGE.substitute(title=_e(title), css=_CSS.strip(), body=body, script=_FILTER_SCRIPT))
    return out


# -- small helpers ----------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    return _e(format_number(value, digits))


def _est(cell: dict[str, Any] | None, digits: int = 3) -> str:
    if not cell or cell.get("estimate") is None:
        return "–"
    ci = ""
    if cell.get("low") is not None:
        ci = f' <span class="ci">[{_num(cell["low"], digits)}, {_num(cell["high"], digits)}]</span>'
    return f"{_num(cell['estimate'], digits)}{ci}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escaped by the caller); header strings are escaped here."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>"
                     for row in rows)
    cls_attr = f' class="{cls}"' if cls else ""
    # The wrapper scrolls a wide table inside its box on a narrow screen instead of the whole page.
    return (f'<div class="scroll"><table{cls_attr}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
            f"</tbody>\n</table></div>")


def _colour(value: float) -> tuple[str, str]:
    """Background and text colour for a share in [0, 1]."""
    v = min(max(value, 0.0), 1.0)
    lo, hi, t = (_LOW, _MID, v / 0.5) if v < 0.5 else (_MID, _HIGH, (v - 0.5) / 0.5)
    rgb = tuple(round(a + (b - a) * t) for a, b in zip(lo, hi))
    text = "#ffffff" if abs(v - 0.5) > 0.3 else "#1d2330"
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})", text


def _share_cell(cell: dict[str, Any] | None, tooltip: str, with_ci: bool = False) -> str:
    """A table cell coloured by the share it shows; the tooltip carries the interval and n."""
    if not cell or cell.get("estimate") is None:
        return f'<td class="cell" title="{_e(tooltip)}">–</td>'
    bg, fg = _colour(cell["estimate"])
    text = _est(cell) if with_ci else _num(cell["estimate"], 2)
    if cell.get("n") is not None:
        text += f'<br><span class="ci">n = {_e(cell["n"])}</span>'
    return f'<td class="cell" style="background: {bg}; color: {fg}" title="{_e(tooltip)}">{text}</td>'



def _tooltip(label: str, cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("estimate") is None:
        return f"{label}: no pairs"
    return (f"{label}: {cell['estimate']:.3f} [{_num(cell['low'])}, {_num(cell['high'])}], "
            f"n = {cell['n']}")


def _ci_label(analysis: dict[str, Any]) -> str:
    """What the intervals are, in one sentence (cluster unit included), plus any dropped duplicates."""
    text = bootstrap_note(analysis)
    dups = analysis.get("duplicates") or 0
    if dups:
        text += f"; {dups} duplicate pair record(s) (same I_o, I_a, p_o and p_a) counted once"
    return text


def _manifest_value(manifest: dict[str, Any], dotted: str) -> Any:
    """A dotted path in the manifest (see store/manifest.py), or None."""
    node: Any = manifest
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return None if node == "" else node


# -- sections ---------------------------------------------------------------------------------------

def _header(store: RunStore, analysis: dict[str, Any]) -> str:
    manifest = store.read_manifest()
    boot = analysis.get("bootstrap") or {}
    info = [
        ("run", store.root.name),
        ("config hash", _manifest_value(manifest, "config_hash") or "not recorded"),
        ("aesthetic-audit (run)", _manifest_value(manifest, "package.version") or "not recorded"),
        ("aesthetic-audit (report)", __version__),
        ("run created", _manifest_value(manifest, "created") or "not recorded"),
        ("report date", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("image pairs", analysis.get("n_pairs", 0)),
        ("duplicate pairs left out", analysis.get("duplicates", 0)),
        ("bootstrap unit", f"{boot.get('unit', 'none')} ({boot.get('n_clusters', '?')} clusters)"),
        ("seed", analysis.get("config", {}).get("seed")),
    ]
    rows = "\n".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in info)
    return (f"<h1>aesthetic-audit report</h1>\n"
            f'<p class="note">Do image generators and reward models respect explicit anti-aesthetic '
            f"requests? Every number below is recomputed from the run's per-item records; "
            f"{_e(_ci_label(analysis))}.</p>\n<dl class=\"info\">\n{rows}\n</dl>")


def _quotable_section(analysis: dict[str, Any], manifest: dict[str, Any]) -> str:
    """The findings as sentences a reader can quote, each number with its interval and n."""
    items = summary_sentences(analysis, manifest)
    parts = ["<h2>Summary</h2>"]
    if not items:
        parts.append('<p class="muted">No scored pairs and no labels: nothing to summarise.</p>')
        return "\n".join(parts)
    lines = [f"<li>{_e(sentence)}" + "".join(f' <span class="tag">{_e(n)}</span>' for n in notes) + "</li>"
             for sentence, notes in items]
    parts.append('<ul class="summary" id="summary">\n' + "\n".join(lines) + "\n</ul>")
    parts.append(f'<p class="note">"Ignored the request": the scorer rated I_o strictly above I_a under the '
                 f"anti-aesthetic prompt p_a; ties count in neither share. Brackets: {_e(_ci_label(analysis))}.</p>")
    return "\n".join(parts)


def _charts_section(analysis: dict[str, Any], data: RunData) -> str:
    figures = [
        ("Who prefers the original?", "Strict share of pairs where each scorer rates I_o above I_a under p_a, "
         "with its bootstrap interval; right of the dashed line the scorer rewards ignoring the request.",
         charts.share_chart(analysis)),
        ("Δr per pair", "r(I_a, p_o) − r(I_o, p_o) for every pair: how much the scorer's conventional score "
         "changes when the image follows the anti-aesthetic request (for a lower-is-better scorer such as BRISQUE a "
         "rise is a worse score; boxes: quartiles; points: pairs).",
         charts.delta_chart(data)),
        ("Strength curves", "Share preferring the original against the strength of the edit that made I_a, "
         "with its interval as a band.", charts.strength_chart(analysis)),
        ("Adapter-scale curves", "Per LoRA adapter rendered at several scales: the share preferring the original "
         "against the scale, with its interval as a band.", charts.adapter_chart(analysis)),
        ("Success against conventional score", "Per generator: the share of pairs where the labels prefer I_a "
         "for p_a, against the mean conventional score r(I_a, p_o) of its anti-aesthetic images (bars: CIs).",
         charts.success_chart(analysis)),
    ]
    shown = [(h, note, svg) for h, note, svg in figures if svg]
    if not shown:
        return ""
    parts = ["<h2>Charts</h2>"]
    for heading, note, svg in shown:
        parts += [f"<h3>{_e(heading)}</h3>", f'<p class="note">{_e(note)}</p>', f'<div class="chart">{svg}</div>']
    return "\n".join(parts)


def _generators_section(store: RunStore) -> str:
    """One row per generator setting that made image pairs: its weights, dtype, LoRA and the call
    parameters of each side, marked where the sides differ (the study's SD3.5M did so)."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in store.records(IMAGES, status=None):
        d = r.data
        gen = d.get("generator")
        if d.get("backend") != "generate" or not isinstance(gen, dict):
            continue
        params = d.get("params") or {}
        group = groups.setdefault((str(d.get("model")), str(gen.get("identity_hash", gen.get("identity"))),
                                   repr(sorted(params.items()))), {"gen": gen, "params": params, "ok": 0, "failed": 0})
        group["ok" if r.status == "ok" else "failed"] += 1
    if not groups:
        return ""
    rows = []
    for (model, _, _), g in groups.items():
        gen, o, a = g["gen"], g["params"].get("o"), g["params"].get("a")
        identity = gen["identity"] if isinstance(gen.get("identity"), dict) else {}
        options = {**gen.get("options", {}), **identity.get("options", {})}
        lora = identity.get("lora") or ({"scale": options.get("lora_scale")} if options.get("lora") else None)
        asymmetric = o is not None and a is not None and o != a
        rows.append([f'<td class="text">{_e(model)}</td>', _e(gen.get("backend") or "–"),
                     f'<td class="text">{_e(_weights(identity, options))}</td>',
                     _e(identity.get("dtype") or options.get("dtype") or "–"),
                     _e(f"{options.get('lora')} × {lora.get('scale')}" if lora else "–"),
                     f'<td class="text">{_e("–" if o is None else describe_params(o))}</td>',
                     f'<td class="text">{_e("–" if a is None else describe_params(a))}</td>',
                     "<b>asymmetric</b>" if asymmetric else "same", _e(g["ok"]), _e(g["failed"])])
    return "\n".join([
        "<h2>Generators</h2>",
        '<p class="note">The settings each generator rendered with, from its image pairs\' records. '
        "<b>asymmetric</b>: p_o and p_a were rendered with different call parameters, so I_o and I_a "
        "differ by more than their prompts.</p>",
        _table(["generator", "backend", "model / weights", "dtype", "LoRA × scale", "p_o side", "p_a side",
                "sides", "pairs", "failed"], rows)])


def _weights(identity: dict[str, Any], options: dict[str, Any]) -> str:
    """The base weights: hub repo and commit, a local folder with the number of files hashed, or the
    model option (an API's model name)."""
    model = identity.get("model")
    if isinstance(model, dict) and model.get("repo"):
        return f"{model['repo']} @ {model.get('revision') or 'unpinned'}"
    if isinstance(model, dict) and "files" in model:
        return f"{options.get('model', 'local folder')} ({len(model['files'])} files, SHA-256 recorded)"
    where = options.get("base_url")
    return " at ".join(str(v) for v in (options.get("model"), where) if v) or "–"


def _summary_section(analysis: dict[str, Any], manifest: dict[str, Any]) -> str:
    scorers = analysis.get("scorers", {})
    parts = ["<h2>Reward models</h2>",
             '<p class="note"><b>Prefers original</b>: share of pairs where the scorer rates I_o strictly above '
             "I_a under the anti-aesthetic prompt p_a; above 0.5 the scorer rewards ignoring the request. "
             "<b>Prefers I_a</b>: the share rating I_a strictly above I_o. <b>Ties</b>: pairs with equal scores, "
             "in neither share. Each share has its bootstrap interval and, below it, a Wilson interval "
             "(which assumes independent pairs). <b>Δr</b> = mean r(I_a, p_o) − r(I_o, p_o) in raw score units; "
             "<b>AA</b> = mean r(I_a, p_o). <b>Prefers original under p_o</b>: the share rating I_o strictly "
             "above I_a under the original prompt, i.e. preferring the conventional image when nothing unusual "
             "is asked (ties below it). <b>prompt-blind</b>: the scorer never reads the prompt, so its "
             "preference under p_a is its preference under any prompt.</p>",
             '<p class="note"><b>Reward-model test</b>: both images scored with p_a against labeller or human '
             "labels only (never the editor's construction labels); label ties are removed and a score tie "
             "counts as not predicting I_a. Accuracy, F1 (I_a positive) and AUROC with their intervals.</p>",
             '<p class="note"><b>pairwise</b>: a model shown I_o, I_a and p_a together that says which matches '
             "better (a VLM as reward model) instead of scoring each image; its shares count its answers (ties: "
             "its tie answers), a tie answer counts as not predicting I_a, it has no Δr or AA, and its AUROC "
             "needs its probability that I_a matches better (not available from answers alone).</p>"]
    if not scorers:
        parts.append('<p class="muted">No scores in this run.</p>')
        return "\n".join(parts)
    rows = []
    for name, s in scorers.items():
        trunc = s.get("truncated") or {}
        tags = [] if s.get("prompt_aware", True) else ["prompt-blind"]
        if s.get("pairwise"):
            tags.append(f"pairwise: {s.get('backend') or name}")
        if not s.get("reward_model", True):
            tags.append("not a reward model")
        if derived_from_judge(manifest, name):
            tags.append("from the judge's statistics: not independent evidence")
        rows.append([
            f'<td class="text">{_e(name)}' + "".join(f' <span class="tag">{_e(t)}</span>' for t in tags) + "</td>",
            ("pairwise" if s.get("pairwise") else
             "↑ higher is better" if s["higher_is_better"] else "↓ lower is better"),
            _e(s["n"]), _e(s["missing"]), _e(s["ties"]),
            _share(s["prefer_original_share"], s.get("prefer_original_wilson")),
            _share(s["prefer_anti_share"], s.get("prefer_anti_wilson")),
            _p_o_cell(s), _est(s["delta_r"]), _est(s["aa"]), _rm_cell(s),
            _num(trunc.get("share")),
        ])
    parts.append(_table(["scorer", "direction", "n", "missing", "ties", "prefers original", "prefers I_a",
                         "prefers original under p_o", "Δr", "AA", "reward-model test", "prompts truncated"], rows))
    parts.append(_lambda_sweep_html(analysis))
    labels = analysis.get("labels")
    if labels:
        c = labels["counts"]
        parts.append(f'<p class="note">Generator success rate (labeller prefers I_a for p_a; a tie or I_o is a '
                     f"failure; labels: {_e(labels.get('source') or '?')}): "
                     f"{_est(labels['success_rate'])}, n = {_e(labels['n'])} "
                     f"({_e(c['anti_aesthetic'])} anti-aesthetic, {_e(c['original'])} original, "
                     f"{_e(c['tie'])} ties).</p>")
    else:
        parts.append('<p class="note">No labeller or human labels in this run, so no reward-model test and no '
                     "success rate (labels that hold by how a pair was made are not a judgement).</p>")
    return "\n".join(parts)


def _p_o_cell(scorer: dict[str, Any]) -> str:
    """The share preferring I_o under p_o with its intervals and its ties; a dash for a pairwise model."""
    cell = scorer.get("prefer_original_under_p_o")
    if not cell:
        return "–"
    ties = scorer.get("ties_under_p_o") or 0
    return _share(cell, scorer.get("prefer_original_under_p_o_wilson")) + (
        f'<br><span class="ci">{_e(ties)} tie{"s" if ties != 1 else ""}</span>' if ties else "")


def _lambda_sweep_html(analysis: dict[str, Any]) -> str:
    """The intent-aware scorers' λ sweep beside the reward-model table: its chart, what it shows, and
    each point's numbers; nothing when no scorer has a sweep."""
    svg = charts.lambda_chart(analysis)
    if not svg:
        return ""
    rows = [[f'<td class="text">{_e(name)}</td>',
             _e(format(pt["lambda"], "g")) + (" (own)" if pt["lambda"] in s["lambda_sweep"]["own_lambda"] else ""),
             _e(pt["n"]), _share(pt["prefer_original_share"], pt.get("prefer_original_wilson")),
             _share(pt["prefer_original_under_p_o"], pt.get("prefer_original_under_p_o_wilson")),
             _share(pt["prefer_original_under_plain_p_o"], pt.get("prefer_original_under_plain_p_o_wilson"))
             if pt.get("prefer_original_under_plain_p_o") else "–",
             _rm_cell({**s, "reward_model_test": pt["reward_model_test"]})]
            for name, s in analysis.get("scorers", {}).items() if s.get("lambda_sweep")
            for pt in s["lambda_sweep"]["points"]]
    return "\n".join(["<h3>Intent-aware reward against λ</h3>", lambda_sweep_note(analysis),
                      f'<div class="chart" id="lambda-sweep">{svg}</div>',
                      _table(["scorer", "λ", "n", "ignores the request, under p_a", "conventional image, under p_o",
                              "conventional image, under a p_o asking nothing", "reward-model test"], rows)])


def _per_generator_section(analysis: dict[str, Any]) -> str:
    """The study's generation table, each scorer's shares per generator, and the aligned-vs-base tests;
    nothing when no pair names its generator (the editor's pairs)."""
    by_model = analysis.get("by_model")
    if not by_model:
        return ""
    gen = analysis["generation"]
    rows = gen["by_model"]
    rms = list(dict.fromkeys(n for r in rows.values() for n in r["reward_models"]))
    judges = list(dict.fromkeys(n for r in rows.values() for n in r["judges"]))
    validity = gen.get("alignment_scorer")
    parts = ["<h2>Per generator</h2>",
             '<p class="note">The study\'s generation table. <b>Δr</b> = mean r(I_a, p_o) − r(I_o, p_o) and '
             "<b>AA</b> = mean r(I_a, p_o) per reward model; <b>ΔJ</b> = Σ_d J(I_a, d) − J(I_o, d) and "
             "<b>J AA</b> = Σ_d J(I_a, d) per judge; <b>validity</b> = mean r(I_a, p_a) of "
             f"{_e(validity or 'no alignment scorer (set analysis.alignment_scorer)')}: does I_a still show "
             "what p_a asks for; <b>success</b> = share of labelled pairs where I_a is preferred (a tie or I_o "
             "is a failure). Hover a value for its n.</p>"]

    def cell(value: dict[str, Any] | None) -> str:
        n = "" if not value else f' title="n = {_e(value.get("n"))}"'
        return f"<td{n}>{_est(value)}</td>"

    parts.append(_table(
        ["generator", "n", *(f"{h} {n}" for n in rms for h in ("Δr", "AA")),
         *(f"{h} {n}" for n in judges for h in ("ΔJ", "J AA")), "validity", "success"],
        [[f'<td class="text">{_e(model)}</td>', _e(r["n_pairs"]),
          *(cell(r["reward_models"].get(n, {}).get(k)) for n in rms for k in ("delta_r", "aa")),
          *(cell(r["judges"].get(n, {}).get(k)) for n in judges for k in ("delta_j", "j_aa")),
          cell(r["prompt_validity"]), cell(r["success_rate"])] for model, r in rows.items()]))
    parts.append("<h3>Reward models per generator</h3>")
    parts.append(_table(
        ["generator", "scorer", "n", "ties", "prefers original", "prefers I_a", "Δr", "reward-model test"],
        [[f'<td class="text">{_e(model)}</td>', f'<td class="text">{_e(name)}</td>', _e(s["n"]), _e(s["ties"]),
          _share(s["prefer_original_share"], s.get("prefer_original_wilson")),
          _share(s["prefer_anti_share"], s.get("prefer_anti_wilson")), _est(s["delta_r"]), _rm_cell(s)]
         for model, block in by_model.items() for name, s in block["scorers"].items()]))
    dims = analysis.get("dimensions", [])
    dim_rows = [[f'<td class="text">{_e(model)}</td>', _scorer_cell(name, sc),
                 *(_share_cell((sc["by_dimension"].get(d) or {}).get("prefer_original_share"),
                               _tooltip(f"{model} · {name} · {d}",
                                        (sc["by_dimension"].get(d) or {}).get("prefer_original_share")))
                   for d in dims)]
                for model, block in by_model.items() for name, sc in block["scorers"].items()]
    if dims and dim_rows:
        parts.append("<h3>Per generator and dimension</h3>")
        parts.append('<p class="note">Share of each generator\'s pairs where the scorer strictly prefers I_o, per '
                     "requested dimension (hover a cell for its interval and n).</p>")
        parts.append(_table(["generator", "scorer", *dims], dim_rows, cls="heat"))
    parts.append(_aligned_vs_base_html(analysis.get("aligned_vs_base") or {}))
    return "\n".join(p for p in parts if p)


def _aligned_vs_base_html(avb: dict[str, Any]) -> str:
    comparisons = avb.get("comparisons") or []
    absent = avb.get("not_in_run") or []
    if not comparisons and not absent:
        return ""
    parts = ["<h3>Aligned vs base</h3>",
             '<p class="note">Each aligned generator against its base (config <code>analysis.pairs_of_generators'
             "</code>) on the prompt pairs both rendered, matched by prompt pair id. Wilcoxon signed-rank, "
             "one-sided (H1: aligned higher), effect size r = Z / √n; McNemar, exact and one-sided (H1: aligned "
             "succeeds less; b = aligned succeeds and base fails, c the reverse). Holm: p adjusted over the "
             "tests of one comparison.</p>"]
    rows = []
    for c in comparisons:
        for t in c["tests"]:
            wil = t["test"] == "wilcoxon"
            rows.append([f'<td class="text">{_e(c["aligned"])} vs {_e(c["base"])}</td>',
                         f'<td class="text">{_e(t["test"])}: {_e(t["measure"])}</td>',
                         f'<td class="text">{_e(t["source"])}</td>', _e(t["n_prompts"]),
                         _num(t["mean_aligned"] if wil else t["success_aligned"]),
                         _num(t["mean_base"] if wil else t["success_base"]),
                         _num(t["statistic"]) if wil else _e(f"b = {t['b']}, c = {t['c']}"),
                         _num(t.get("effect_size")), _num(t["pvalue"]), _num(t["p_holm"])])
    if rows:
        parts.append(_table(["comparison", "test", "of", "prompts", "aligned", "base", "statistic",
                             "effect size r", "p", "p (Holm)"], rows))
    if absent:
        parts.append('<p class="muted">Configured but not in this run: '
                     + ", ".join(f"{_e(a)} vs {_e(b)}" for a, b in absent) + ".</p>")
    return "\n".join(parts)


def _share(cell: dict[str, Any] | None, wilson: dict[str, Any] | None) -> str:
    """A share with its bootstrap interval, and its Wilson interval on a second line."""
    if not wilson or wilson.get("low") is None:
        return _est(cell)
    return (f'{_est(cell)}<br><span class="ci">Wilson [{_num(wilson["low"])}, '
            f'{_num(wilson["high"])}]</span>')


def _rm_cell(scorer: dict[str, Any]) -> str:
    """Accuracy, F1 and AUROC with intervals, n and the label source; or why there is no test."""
    rm = scorer.get("reward_model_test")
    if not rm:
        return f'<td class="text"><span class="muted">{_e(rm_test_note(scorer))}</span></td>'
    notes = [f"n = {rm['n']}", f"labels: {rm_test_note(scorer)}"]
    if rm.get("n_ties"):
        notes.append(f"{rm['n_ties']} label ties removed")
    if rm.get("n_score_ties"):
        notes.append(f"{rm['n_score_ties']} {'tie answers' if scorer.get('pairwise') else 'score ties'}")
    if rm.get("auroc_note"):
        notes.append(f"AUROC {rm['auroc_note']}")
    if rm.get("n_unlabelled"):
        notes.append(f"{rm['n_unlabelled']} pairs without a label")
    metrics = "<br>".join(f"{label} {_est(rm[key])}" for key, label in
                          (("accuracy", "acc"), ("f1", "F1"), ("auroc", "AUROC")))
    return f'<td class="text">{metrics}<br><span class="ci">{_e("; ".join(notes))}</span></td>'


def _labels_section(analysis: dict[str, Any]) -> str:
    ls = analysis.get("label_sources")
    if not ls:
        return ""
    parts = ["<h2>Pair labels</h2>",
             '<p class="note">Which image better matches p_a, per label source (VLM labellers, human raters). '
             "Success = I_a preferred; a tie or I_o is a failure. Order disagreement: labellers asked in both "
             f"presentation orders, share of pairs whose answers differed (counted as ties). The tables use "
             f"<b>{_e(ls.get('reference') or '–')}</b> as the reference labels.</p>"]
    parts.append(_table(["source", "behind it", "n", "failed", "I_a", "I_o", "tie", "success rate",
                         "order disagreement"],
                        [[f'<td class="text">{_e(name)}</td>', f'<td class="text">{_e(b["backend"])}</td>', _e(b["n"]),
                          _e(b["failed"]), _e(b["counts"]["anti_aesthetic"]),
                          _e(b["counts"]["original"]), _e(b["counts"]["tie"]), _est(b["success_rate"]),
                          _est(b["order_disagreement"]) if b.get("order_disagreement") else "–"]
                         for name, b in ls["sources"].items()]))
    parts.append(_agreement_html(ls.get("agreement") or {}))
    return "\n".join(parts)


def _agreement_html(agreement: dict[str, Any]) -> str:
    """Two sources per row (and the human majority against each labeller): MAE on the ordinal scale
    (original 0, tie 1, I_a 2), quadratic kappa, accuracy with ties removed and with tie and original
    merged; then Krippendorff's alpha across the human raters."""
    rows = [(f"{c['a']} vs {c['b']}", c) for c in agreement.get("pairwise", [])]
    humans = agreement.get("humans") or {}
    rows += [(f"humans (majority) vs {s}", c) for s, c in (humans.get("majority_vs") or {}).items()]
    if not rows:
        return ""
    parts = ['<h3>Agreement between label sources</h3>',
             '<p class="note">On the pairs both sources labelled. MAE on the ordinal scale (I_o 0, tie 1, I_a 2); '
             "κ = Cohen's kappa with quadratic weights; accuracy with ties removed, and with tie and I_o merged "
             "into one class. Study (labeller vs 18 raters): 0.29 / 0.80 / 0.923 / 0.85.</p>",
             _table(["sources", "n", "MAE", "κ (quadratic)", "accuracy, no ties", "accuracy, tie = I_o"],
                    [[f'<td class="text">{_e(name)}</td>', _e(c["n"]), _est(c["mae"]), _est(c["kappa"]),
                      _est(c["accuracy_no_ties"]), _est(c["accuracy_tie_as_original"])] for name, c in rows])]
    if humans.get("alpha"):
        a = humans["alpha"]
        parts.append(f'<p class="note">Krippendorff\'s α across {len(humans["raters"])} raters on '
                     f'{_e(humans["n_pairs"])} pairs: ordinal {_est(a["ordinal"])}, nominal {_est(a["nominal"])}, '
                     f'interval {_est(a["interval"])}; {_e(humans["split_votes"])} split majority votes count '
                     f"as ties.</p>")
    return "\n".join(parts)


def _legend() -> str:
    stops = ", ".join(f"rgb{c}" for c in (_LOW, _MID, _HIGH))
    return (f'<div class="legend"><span>0 · follows the request</span>'
            f'<span class="bar" style="background: linear-gradient(to right, {stops})"></span>'
            f"<span>1 · prefers the original</span><span>(0.5 = indifferent; hover a cell for CI and n)</span>"
            f"</div>")


def _scorer_cell(name: str, s: dict[str, Any]) -> str:
    """A scorer's name, tagged when it is not a reward model (its "preference" is no aesthetic taste)."""
    tag = "" if s.get("reward_model", True) else ' <span class="tag">not a reward model</span>'
    return f'<td class="text">{_e(name)}{tag}</td>'


def _heatmap_section(analysis: dict[str, Any]) -> str:
    scorers = analysis.get("scorers", {})
    dims = analysis.get("dimensions", [])
    parts = ["<h2>Per dimension</h2>",
             '<p class="note">Share of pairs where the scorer strictly prefers the original image, per '
             "requested anti-aesthetic dimension (a pair counts for each of its dimensions; ties count in "
             "neither direction; hover a cell for its interval, n and ties).</p>"]
    if not scorers or not dims:
        parts.append('<p class="muted">No dimensions to show.</p>')
        return "\n".join(parts)
    rows = []
    for name, s in scorers.items():
        cells = [_scorer_cell(name, s)]
        for d in dims:
            block = s["by_dimension"].get(d, {})
            cell = block.get("prefer_original_share")
            tip = _tooltip(f"{name} · {d}", cell) + (f", ties = {block['ties']}" if block.get("ties") else "")
            cells.append(_share_cell(cell, tip))
        rows.append(cells)
    parts.append(_table(["scorer", *dims], rows, cls="heat"))
    parts.append(_legend())
    return "\n".join(parts)


def _strength_section(analysis: dict[str, Any]) -> str:
    scorers = analysis.get("scorers", {})
    parts = ["<h2>Per edit strength</h2>",
             '<p class="note">Pairs grouped by the strength of the edit that made I_a '
             "(n/a: images not made by the editor).</p>"]
    rows = []
    for name, s in scorers.items():
        for key, b in s["by_strength"].items():
            share = b["prefer_original_share"]
            rows.append([_scorer_cell(name, s), _e(key), _e(b["n"]), _e(b["ties"]),
                         _share_cell(share, _tooltip(f"{name} · strength {key}", share), with_ci=True),
                         _est(b["prefer_anti_share"]), _est(b["delta_r"])])
    if not rows:
        parts.append('<p class="muted">No scored pairs.</p>')
        return "\n".join(parts)
    parts.append(_table(["scorer", "strength", "n", "ties", "prefers original", "prefers I_a", "Δr"], rows,
                        cls="heat"))
    return "\n".join(parts)


def _judge_section(analysis: dict[str, Any]) -> str:
    judges = analysis.get("judges", {})
    parts = ["<h2>Judge</h2>",
             '<p class="note">J(I, d) in [0, 2] per dimension (0 = anti-aesthetic, 2 = conventional). '
             "ΔJ = Σ_d J(I_a, d) − J(I_o, d) over the dimensions judged on both images; negative means I_a "
             "moved toward the anti-aesthetic pole. Per dimension: mean ΔJ_d over pairs that requested "
             "d, against pairs that did not.</p>"]
    if not judges:
        parts.append('<p class="muted">No judgements in this run.</p>')
        return "\n".join(parts)
    parts.append(_table(["judge", "behind J", "n", "missing", "ΔJ", "J AA"],
                        [[f'<td class="text">{_e(name)}</td>', f'<td class="text">{_e(j.get("backend", name))}</td>',
                          _e(j["n"]), _e(j["missing"]), _est(j["delta_j"]), _est(j["j_aa"])]
                         for name, j in judges.items()]))
    for name, j in judges.items():
        if not j["by_dimension"]:
            continue
        parts.append(f"<h3>{_e(name)}: does I_a have the requested property?</h3>")
        parts.append(_table(
            ["dimension", "ΔJ_d requested", "n", "ΔJ_d not requested", "n"],
            [[f'<td class="text">{_e(d)}</td>', _est(b["requested"]), _e(b["requested"]["n"]),
              _est(b["not_requested"]), _e(b["not_requested"]["n"])] for d, b in j["by_dimension"].items()]))
    return "\n".join(parts)


def _safety_section(analysis: dict[str, Any]) -> str:
    parts = ["<h2>Safety</h2>"]
    safety = analysis.get("safety")
    if not safety:
        parts.append('<p class="muted">No nsfw scorer in this run.</p>')
        return "\n".join(parts)
    parts.append(f'<p class="note">Scores of the <code>{_e(safety["scorer"])}</code> classifier; each image '
                 "counts once.</p>")
    parts.append(_table(
        ["images", "n", "mean score", "share above 0.5"],
        [["original (I_o)", _e(safety["original"]["n"]), _est(safety["original"]),
          _est(safety["original_above_0_5"])],
         ["anti-aesthetic (I_a)", _e(safety["anti_aesthetic"]["n"]), _est(safety["anti_aesthetic"]),
          _est(safety["anti_aesthetic_above_0_5"])]]))
    return "\n".join(parts)


def _thumbnail(store: RunStore, sha: str) -> str | None:
    """A JPEG data URI of the image, longest side THUMB_SIDE; None when it cannot be read."""
    try:
        with Image.open(store.image_path(sha)) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((THUMB_SIDE, THUMB_SIDE))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except Exception:  # a missing or broken image must not take the report down
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(uri: str | None, caption: str) -> str:
    img = (f'<img src="{uri}" alt="{_e(caption)}" loading="lazy" decoding="async">' if uri else '<div class="missing">image unavailable</div>')
    return f"<figure>{img}<figcaption>{_e(caption)}</figcaption></figure>"


def _disagree(data: RunData, pair: Pair) -> bool:
    """Whether the reward models split on the pair: one strictly prefers I_o under p_a, another I_a."""
    signs = set()
    for name in data.scorers:
        if not data.reward_model.get(name, True):
            continue
        r_o, r_a = data.score(name, pair.image_o, pair.p_a), data.score(name, pair.image_a, pair.p_a)
        if r_o is not None and r_a is not None and r_o != r_a:
            signs.add((r_a > r_o) == data.higher_is_better[name])
    return len(signs) == 2


def _card(store: RunStore, data: RunData, pair: Pair, thumbs: dict[str, str | None]) -> str:
    for sha in (pair.image_o, pair.image_a):
        if sha not in thumbs:
            thumbs[sha] = _thumbnail(store, sha)
    failed = pair.real_label is not None and pair.real_label != 1
    meta = [f"strength {_e('n/a' if pair.strength is None else pair.strength)}"]
    if pair.label is not None and pair.label_source == CONSTRUCTION:
        meta.append("I_a by construction")
    elif pair.label is not None:
        meta.append(f"{pair.label_source or 'label'}: " + {1: "prefers I_a", 0: "prefers I_o", -1: "tie"}[pair.label])
    attrs = {"model": pair.model or "editor", "dims": "|".join(pair.dims),
             "disagree": int(_disagree(data, pair)), "failed": int(failed)}
    parts = [
        '<div class="card"' + "".join(f' data-{k}="{_e(v)}"' for k, v in attrs.items()) + ">",
        '<div class="images">' + _figure(thumbs[pair.image_o], "I_o (original)")
        + _figure(thumbs[pair.image_a], "I_a (anti-aesthetic)") + "</div>",
        f'<div class="prompt"><b>p_o</b> {_e(pair.p_o)}</div>',
        f'<div class="prompt"><b>p_a</b> {_e(pair.p_a)}</div>',
        "<div>" + "".join(f'<span class="tag">{_e(d)}</span>' for d in pair.dims)
        + f' <span class="muted">{" · ".join(meta)}</span></div>',
    ]
    if data.scorers:
        headers = {"oiop": "r(I_o, p_o)", "oidp": "r(I_o, p_a)", "diop": "r(I_a, p_o)", "didp": "r(I_a, p_a)"}
        parts.append(_table(["scorer", *(headers[k] for k, _, _ in COMBOS)],
                            [[f'<td class="text">{_e(name)}</td>',
                              *(_num(v) for v in data.combos(name, pair).values())] for name in data.scorers]))
    verdicts = [(name, answer) for name, answers in sorted(data.pairwise.items())
                if (answer := answers.get(pair.label_key)) is not None]
    if verdicts:  # pairwise reward models: their answer under p_a, and P(I_a better) where they gave one
        words = {1: "prefers I_a", 0: "prefers I_o", -1: "tie"}
        parts.append('<div class="muted">' + " · ".join(
            f"{_e(name)}: {words[prefers]}" + ("" if prob is None else f" (P(I_a) {_num(prob, 2)})")
            for name, (prefers, prob) in verdicts) + "</div>")
    for judge, per_image in sorted(data.judges.items()):
        jo, ja = per_image.get(pair.image_o, {}), per_image.get(pair.image_a, {})
        dims = sorted(set(jo) | set(ja))
        if not dims:
            continue
        rows = []
        for d in dims:
            cls = ' class="requested"' if d in pair.dims else ""
            diff = ja[d] - jo[d] if d in ja and d in jo else None
            rows.append(f"<tr{cls}><td>{_e(d)}</td><td>{_num(jo.get(d), 2)}</td><td>{_num(ja.get(d), 2)}</td>"
                        f"<td>{_num(diff, 2)}</td></tr>")
        parts.append(f'<div class="scroll"><table><thead><tr><th>{_e(judge)}: J</th><th>I_o</th><th>I_a</th>'
                     f"<th>ΔJ</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    parts.append("</div>")
    return "\n".join(parts)


def _gallery_section(store: RunStore, data: RunData) -> str:
    """Every pair as a card, with filters (generator, dimension, reward models disagree, labelled a
    failure) that the inline script applies to the cards' data attributes."""
    parts = ["<h2>Gallery</h2>",
             f'<p class="note">All {len(data.pairs)} image pairs. Requested dimensions are tagged and shown in '
             "bold in the judge tables. <b>Reward models disagree</b>: one reward model strictly prefers I_o "
             "under p_a and another I_a. <b>Failed</b>: the reference label does not prefer I_a.</p>"]
    if not data.pairs:
        parts.append('<p class="muted">No image pairs in this run.</p>')
        return "\n".join(parts)
    models = sorted({p.model or "editor" for p in data.pairs})

    def select(name: str, label: str, values: list[str]) -> str:
        options = "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)
        return f'<label>{label} <select data-filter="{name}"><option value="">all</option>{options}</select></label>'

    parts.append('<div class="filters" id="gallery-filters">'
                 + (select("model", "generator", models) if len(models) > 1 else "")
                 + select("dims", "dimension", data.dimensions)
                 + '<label><input type="checkbox" data-filter="disagree"> reward models disagree</label>'
                 + ('<label><input type="checkbox" data-filter="failed"> failed</label>'
                    if any(p.label is not None and p.label_source != CONSTRUCTION for p in data.pairs) else "")
                 + f'<span class="muted" id="gallery-count">{len(data.pairs)} of {len(data.pairs)} pairs shown</span>'
                 + "</div>")
    thumbs: dict[str, str | None] = {}
    parts.append('<div class="gallery" id="gallery">')
    parts.extend(_card(store, data, pair, thumbs) for pair in data.pairs)
    parts.append("</div>")
    return "\n".join(parts)


# Plain script, no library: a select keeps the cards whose data attribute holds its value (dims is a
# "|"-joined list), a checkbox keeps the cards whose attribute is 1. Text is never built from data.
_FILTER_SCRIPT = """<script>
(function () {
  var controls = document.querySelectorAll('#gallery-filters [data-filter]');
  var cards = document.querySelectorAll('#gallery .card');
  var count = document.getElementById('gallery-count');
  function apply() {
    var shown = 0;
    cards.forEach(function (card) {
      var keep = true;
      controls.forEach(function (c) {
        var key = c.getAttribute('data-filter'), value = card.getAttribute('data-' + key) || '';
        if (c.type === 'checkbox') { if (c.checked && value !== '1') keep = false; }
        else if (c.value && (key === 'dims' ? value.split('|').indexOf(c.value) < 0 : value !== c.value)) keep = false;
      });
      card.hidden = !keep;
      if (keep) shown += 1;
    });
    if (count) count.textContent = shown + ' of ' + cards.length + ' pairs shown';
  }
  controls.forEach(function (c) { c.addEventListener('change', apply); });
})();
</script>"""


def _failures_section(analysis: dict[str, Any], cap: int) -> str:
    failures = analysis.get("failures") or {}
    counts = failures.get("counts", {})
    items = failures.get("items", [])
    parts = ["<h2>Failures</h2>",
             '<p class="note">Failed items are recorded with their reason and left out of every statistic '
             "above; rerun the stage with --retry-failed to try them again.</p>"]
    if counts:
        parts.append(_table(["stage", "ok", "failed"],
                            [[f'<td class="text">{_e(stage)}</td>', _e(c.get("ok", 0)), _e(c.get("failed", 0))]
                             for stage, c in counts.items()]))
    if not items:
        parts.append('<p class="muted">No failed items.</p>')
        return "\n".join(parts)
    lines = [f"<li><b>{_e(f['stage'])}</b> <code>{_e(f['item'])}</code>: {_e(f['error'])}</li>" for f in items[:cap]]
    if len(items) > cap:
        lines.append(f"<li>and {len(items) - cap} more</li>")
    parts.append('<ul class="failures">\n' + "\n".join(lines) + "\n</ul>")
    return "\n".join(parts)
