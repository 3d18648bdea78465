"""How well an intent parser finds the dimensions a prompt requests, on prompts whose dimensions are known.

The prompt stage's pairs are the test set: p_a requests exactly its ``dims``, p_o requests nothing. A
parse is a multi-label prediction (the keys of ``Intent.requested``); per dimension this gives precision,
recall, F1 and support (the prompts that request it), the same numbers as scikit-learn's
``precision_recall_fscore_support`` on the label-indicator matrices with ``zero_division=0``. Macro-F1 is
the mean F1 over the dimensions with support; micro pools every (prompt, dimension) decision. The
false-positive rate is the share of prompts that request nothing (p_o) for which the parser requested
something. A prompt the parser could not read counts as requesting nothing and is counted in ``errors``.
Computed here with plain counts so the light core needs no scikit-learn.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from ..records import PROMPTS, prompt_origin
from .base import IntentParser


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def evaluate(parser: IntentParser, prompts_with_dims: Iterable[tuple[str, Sequence[str]]]) -> dict[str, Any]:
    """Per-dimension precision / recall / F1 / support, macro-F1 (dimensions with support), micro, and the
    false-positive rate on prompts that request nothing. ``prompts_with_dims``: (prompt, requested keys)."""
    items = [(p, set(dims)) for p, dims in prompts_with_dims]
    intents = parser.parse([p for p, _ in items])
    predicted = [set(i.requested) if i.ok else set() for i in intents]
    labels = sorted({d for _, dims in items for d in dims} | {d for pred in predicted for d in pred})
    per_dim: dict[str, dict[str, Any]] = {}
    totals = [0, 0, 0]
    for d in labels:
        tp = sum(d in want and d in got for (_, want), got in zip(items, predicted))
        fp = sum(d not in want and d in got for (_, want), got in zip(items, predicted))
        fn = sum(d in want and d not in got for (_, want), got in zip(items, predicted))
        per_dim[d] = {**_prf(tp, fp, fn), "support": tp + fn, "predicted": tp + fp}
        totals = [totals[0] + tp, totals[1] + fp, totals[2] + fn]
    supported = [m["f1"] for m in per_dim.values() if m["support"]]
    empty = [got for (_, want), got in zip(items, predicted) if not want]
    return {
        "n": len(items),
        "errors": sum(not i.ok for i in intents),
        "dimensions": per_dim,
        "macro_f1": sum(supported) / len(supported) if supported else None,
        "micro": _prf(*totals),
        "false_positive_rate": sum(bool(g) for g in empty) / len(empty) if empty else None,
        "n_without_dims": len(empty),
        "parser": parser.identity(),
    }


def from_run(store: Any) -> dict[str, list[tuple[str, list[str]]]]:
    """The prompt stage's pairs of a run, grouped by rewriter (editor and imported pairs under their
    origin): for each pair, (p_a, dims) and (p_o, [])."""
    groups: dict[str, list[tuple[str, list[str]]]] = {}
    for record in store.records(PROMPTS):
        data = record.data
        origin = prompt_origin(data)
        group = groups.setdefault(str(data.get("rewriter")) if origin == "captions" else origin, [])
        if isinstance(data.get("p_a"), str):
            group.append((data["p_a"], list(data.get("dims") or [])))
        if isinstance(data.get("p_o"), str):
            group.append((data["p_o"], []))
    return groups


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """One block per group (rewriter): dimension, P, R, F1, n and how often it was found; then macro-F1,
    micro-F1 and the false-positive rate on prompts that request nothing. A dimension no prompt requests
    (found only by mistake) shows precision 0 and its false finds, with no recall or F1 (it is left out
    of macro-F1)."""
    lines: list[str] = []
    for group, r in results.items():
        lines.append(f"{group}: {r['n']} prompts ({r['n_without_dims']} requesting nothing), "
                     f"{r['errors']} unreadable")
        lines.append(f"  {'dimension':24} {'P':>6} {'R':>6} {'F1':>6} {'n':>5} {'found':>6}")
        for d, m in r["dimensions"].items():
            if m["support"]:
                cells = f"{m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f}"
            else:
                cells = f"{m['precision']:6.3f} {'-':>6} {'-':>6}"
            lines.append(f"  {d:24} {cells} {m['support']:5d} {m['predicted']:6d}")
        macro = "n/a" if r["macro_f1"] is None else f"{r['macro_f1']:.3f}"
        fpr = "n/a" if r["false_positive_rate"] is None else f"{r['false_positive_rate']:.3f}"
        lines.append(f"  macro-F1 {macro}   micro-F1 {r['micro']['f1']:.3f}   "
                     f"false-positive rate on prompts requesting nothing {fpr}")
    return "\n".join(lines)
