"""The report's opening sentences: each headline number in words a reader can quote, with its
interval and n ("brisque preferred the image that ignored the request in 61% [55, 67] of 300 pairs")."""

from __future__ import annotations

from typing import Any

from ..analysis.audit import NSFW_SCORER


def percent(cell: dict[str, Any] | None) -> str | None:
    """``61% [55, 67]`` from an estimate dict, or None when undefined."""
    if not cell or cell.get("estimate") is None:
        return None
    text = f"{100 * cell['estimate']:.0f}%"
    if cell.get("low") is not None and cell.get("high") is not None:
        text += f" [{100 * cell['low']:.0f}, {100 * cell['high']:.0f}]"
    return text


def derived_from_judge(manifest: dict[str, Any], scorer: str) -> str | None:
    """The judge a scorer is computed from (its recorded identity embeds one), else None: such a
    scorer restates the judge's statistics and is no independent evidence."""
    entry = (manifest.get("backends") or {}).get(f"scorer:{scorer}")
    identity = entry.get("identity") if isinstance(entry, dict) else None
    judge = identity.get("judge") if isinstance(identity, dict) else None
    return str(judge.get("name", "judge")) if isinstance(judge, dict) else None


def scorer_sentence(name: str, s: dict[str, Any], group: str = "pairs") -> str | None:
    """One sentence for one scorer's strict shares, or None when it scored no pair."""
    share = percent(s.get("prefer_original_share"))
    if share is None:
        return None
    n = s["n"]
    text = f"{name} preferred the image that ignored the request in {share} of {n} {group}"
    anti = percent(s.get("prefer_anti_share"))
    if anti is not None:
        text += f", and the requested image in {anti}"
    ties = s.get("ties") or 0
    return text + (f"; {ties} tie{'s' if ties != 1 else ''}." if ties else ".")


def no_regression_sentence(name: str, s: dict[str, Any]) -> str | None:
    """For an intent-aware scorer (one with a λ sweep): the share of pairs where it still prefers the
    conventional image under p_o, or None when undefined."""
    share = percent(s.get("prefer_original_under_p_o"))
    if share is None or not s.get("lambda_sweep"):
        return None
    lam = ", ".join(format(v, "g") for v in s["lambda_sweep"]["own_lambda"])
    ties = s.get("ties_under_p_o") or 0
    return (f"Under the original prompt p_o, {name}{f' (λ = {lam})' if lam else ''} still preferred the conventional "
            f"image in {share} of {s['n']} pairs" + (f"; {ties} tie{'s' if ties != 1 else ''}." if ties else "."))


def summary_sentences(analysis: dict[str, Any], manifest: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The summary as (sentence, notes) items: per scorer (per generator when there are several), then
    the success rate per generator (or of the run) when there are labeller or human labels. Notes are
    short qualifiers shown beside the sentence (prompt-blind, derived from the judge)."""
    items: list[tuple[str, list[str]]] = []
    by_model = analysis.get("by_model") or {}
    for name, s in analysis.get("scorers", {}).items():
        if name == NSFW_SCORER:
            continue  # a safety classifier has no aesthetic preference to report
        notes = []
        if not s.get("prompt_aware", True):
            notes.append("prompt-blind: it never reads the request")
        judge = derived_from_judge(manifest, name)
        if judge:
            notes.append(f"computed from the {judge} judge's statistics: not independent evidence")
        sentence = scorer_sentence(name, s)
        if sentence:
            items.append((sentence, notes))
        no_regression = no_regression_sentence(name, s)
        if no_regression:
            items.append((no_regression, []))
        if len(by_model) > 1:
            for model, block in by_model.items():
                sub = scorer_sentence(name, block["scorers"].get(name) or {}, f"pairs from {model}")
                if sub:
                    items.append((sub, notes))
    generation = (analysis.get("generation") or {}).get("by_model") or {}
    rates = {m: r["success_rate"] for m, r in generation.items() if r.get("success_rate")}
    if not rates and analysis.get("labels"):
        rates = {"the run": analysis["labels"]["success_rate"]}
    source = (analysis.get("labels") or {}).get("source") or "the reference labels"
    for model, cell in rates.items():
        share = percent(cell)
        if share is not None:
            who = "The anti-aesthetic images I_a" if model == "the run" else f"{model}'s images"
            items.append((f"{who} followed the request (success) in {share} of {cell['n']} labelled pairs, "
                          f"by {source}; a tie or the original counts as a failure.", []))
    return items
