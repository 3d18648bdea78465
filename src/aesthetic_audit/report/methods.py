"""The report's methods section, written from the run's manifest: what ran (each backend with its
identity hash, version and weights), with which seeds and settings, on how many pairs, under which
software versions. Everything shown is read from the manifest and the analysis, none of it typed in."""

from __future__ import annotations

import html
import json
from typing import Any, Callable

from ..hashing import spec_hash
from .summary import derived_from_judge


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _identity(entry: Any) -> dict[str, Any]:
    """A backend's identity: scorers wrap theirs (with their weights files) under ``identity``."""
    if isinstance(entry, dict) and isinstance(entry.get("identity"), dict):
        return entry["identity"]
    return entry if isinstance(entry, dict) else {}


def _weights(identity: dict[str, Any]) -> str:
    """Weights as recorded: a package pin, a hub repo at a revision, or files with their SHA-256."""
    weights = identity.get("weights", identity.get("model"))
    if weights is None:
        return "none (no weights)"
    if isinstance(weights, dict):
        if weights.get("repo"):
            return f"{weights['repo']} @ {weights.get('revision') or 'unpinned'}"
        files = weights.get("files")
        if isinstance(files, dict):
            return "; ".join(f"{k} sha256 {v}" for k, v in sorted(files.items()))
    return json.dumps(weights, sort_keys=True, default=str) if not isinstance(weights, str) else weights


def _imported_rows(backends: dict[str, Any], analysis: dict[str, Any]) -> list[list[str]]:
    """Evidence in the records that no stage of this run produced (an imported study's scores, judge
    results and labels; human raters): listed, so a reader sees every source the tables rest on."""
    found = [("scorer", name, "scores imported with the pairs")
             for name in analysis.get("scorers", {}) if f"scorer:{name}" not in backends]
    found += [("judge", name, j.get("backend") or "judgements imported with the pairs")
              for name, j in (analysis.get("judges") or {}).items() if f"judge:{name}" not in backends]
    sources = ((analysis.get("label_sources") or {}).get("sources")) or {}
    found += [("labels", name, b.get("backend") or "labels imported") for name, b in sources.items()
              if not name.startswith("vlm:")]
    return [[f'<td class="text">{_e(role)}</td>', f'<td class="text">{_e(name)}</td>', "–",
             '<td class="text">–</td>', '<td class="text">–</td>',
             f'<td class="text">{_e(note)}; no stage of this run made these records</td>']
            for role, name, note in found]


def lambda_sweep_note(analysis: dict[str, Any]) -> str:
    """The paragraph beside the λ-sweep chart: the intent-aware reward's formula, what its curves
    mean and the goals they are read against, with the λ each scorer ran with."""
    own = "; ".join(f"{name}: λ = {', '.join(format(v, 'g') for v in s['lambda_sweep']['own_lambda']) or '?'}"
                    for name, s in analysis.get("scorers", {}).items() if s.get("lambda_sweep"))
    return ('<p class="note">The intent-aware reward scores an image I for a prompt p as '
            "<b>r(I, p) = faithfulness(I, p) + λ Σ_d w_d s_d(p) a_d(I)</b>: faithfulness is an image-text "
            "alignment score, a_d(I) the centred aesthetic term of dimension d (from a judge or a quality scorer, "
            "in [−1, 1]), w_d the weight a user gives d (a taste profile), and s_d(p) = −1 when the prompt asks "
            "for the anti-aesthetic pole of d, +1 otherwise; λ sets how much aesthetics count (0: faithfulness "
            "alone). Every point recomputes the scores from the parts the score records store. "
            "<b>Ignores the request, under p_a</b>: the share of pairs with r(I_o, p_a) &gt; r(I_a, p_a), where "
            "the reward prefers the image that did not do what p_a asked; the goal is at most 0.10 on the "
            "editor's pairs. <b>Conventional image, under p_o</b>: the share with r(I_o, p_o) &gt; r(I_a, p_o), "
            "where it still prefers the conventional image when nothing unusual is asked (no regression); the "
            "goal is at least 0.9. A caption often describes its scene in words that are also requests (\u201ca "
            "dark patch of sky\u201d), which the reward then follows, so the share is also given on the pairs "
            "whose p_o the parser read as asking for nothing (<b>under a p_o asking nothing</b>). Shares are strict (ties in neither); bands are the bootstrap intervals; the "
            f"table lambda_sweep.csv adds the reward-model test per λ. Scored with {_e(own)}.</p>")


def methods_section(manifest: dict[str, Any], analysis: dict[str, Any],
                    table: Callable[[list[str], list[list[str]]], str]) -> str:
    """The methods section as HTML; ``table`` renders header + rows of escaped cells."""
    backends = manifest.get("backends") or {}
    scorers = analysis.get("scorers", {})
    rows = []
    for key in sorted(backends):
        identity = _identity(backends[key])
        role, _, name = key.partition(":")
        notes = []
        if role == "scorer":
            s = scorers.get(name) or {}
            if s and not s.get("prompt_aware", True):
                notes.append("prompt-blind")
            if s and not s.get("reward_model", True):
                notes.append("not a reward model")
            if s.get("pairwise"):
                notes.append("pairwise: compares I_o and I_a under p_a, no score r(I, p)")
            judge = derived_from_judge(manifest, name)
            if judge:
                notes.append(f"computed from the {judge} judge: not independent evidence")
        rows.append([f'<td class="text">{_e(role)}</td>', f'<td class="text">{_e(name or identity.get("name", ""))}</td>',
                     _e(identity.get("version", "–")), f'<td class="text">{_e(_weights(identity))}</td>',
                     f'<td class="text"><code>{_e(spec_hash(identity)[:16])}</code></td>',
                     f'<td class="text">{_e(", ".join(notes) or "–")}</td>'])
    rows += _imported_rows(backends, analysis)
    config = manifest.get("config") or {}
    cfg = analysis.get("config") or {}
    boot = analysis.get("bootstrap") or {}
    settings = [
        ("run seed", config.get("seed", "not recorded")),
        ("analysis seed", cfg.get("seed")),
        ("pairs analysed", analysis.get("n_pairs", 0)),
        ("duplicate pairs left out", analysis.get("duplicates", 0)),
        ("bootstrap", f"{cfg.get('bootstrap')} resamples, {round(100 * cfg.get('ci', 0.95))}% percentile interval, "
                      f"unit {boot.get('unit', 'none')} (config: {cfg.get('cluster')}), "
                      f"{boot.get('n_clusters', '?')} clusters"),
        ("config hash", manifest.get("config_hash", "not recorded")),
        ("aesthetic-audit", (manifest.get("package") or {}).get("version", "not recorded")),
        ("python", manifest.get("python", "not recorded")),
    ]
    deps = manifest.get("dependencies") or {}
    parts = ["<h2>Methods</h2>",
             '<p class="note">Written from the run\'s manifest. Identity hash: SHA-256 of the backend\'s '
             "recorded identity (name, version, options, weights), the key its records are cached under.</p>",
             table(["stage", "backend", "version", "weights", "identity hash", "notes"], rows) if rows
             else '<p class="muted">No backends recorded in the manifest.</p>',
             '<dl class="info">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in settings) + "</dl>"]
    if deps:
        parts.append("<h3>Software versions</h3>")
        parts.append('<dl class="info">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>"
                                                  for k, v in sorted(deps.items())) + "</dl>")
    if config:
        parts.append("<details><summary>Resolved configuration</summary><pre>"
                     + _e(json.dumps(config, indent=1, sort_keys=True, default=str)) + "</pre></details>")
    return "\n".join(parts)
