"""The study's two tests outside the image-pair audit (design §6): the emotion test and real-art placement.

Emotion test: images of one scene that differ only in the emotion they express. For each emotion e
other than the reference (e.g. neutral) and each scene, does a scorer rate the emotion image higher
than the reference image under the prompt that asks for e, i.e. s(I_e, p_e) > s(I_ref, p_e)? A
reward model that has learnt "pleasant is better" prefers the reference image although the prompt
asks for the emotion.

Real-art placement: scores of real artworks against the distribution of one generator's images in
an existing run (z-scores, a one-sided Mann-Whitney U test with effect size), and each artwork's place
on a published leaderboard (raw r, relative s, rank R).

Both read small user files, decode images through ``images.decode`` and score with a registered
scorer; neither writes to a run. Bad inputs are ``InputError`` naming the row.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from ..errors import InputError
from ..hashing import spec_hash
from ..images.decode import decode_image
from ..images.photos import IMAGE_SUFFIXES
from ..records import IMAGES, SCORE, has_pixels
from ..scorers.base import Scorer
from ..store import RunStore
from ..textio import jsonl_objects, read_text
from .intervals import wilson_interval
from .stats import bootstrap_ci, leaderboard_placement, mann_whitney_one_sided, zscores

EMOTION_COLUMNS = ("scene", "emotion", "image", "prompt")


# -- reading user files -----------------------------------------------------------------------------

def read_table(path: str | Path, what: str) -> list[tuple[str, dict[str, Any]]]:
    """The rows of a CSV or JSONL file as (``"<file>:row N"``, fields); empty CSV cells are None."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise InputError(f"{what} {path}: expected a .csv or .jsonl file")
    text = read_text(path, what)
    rows: list[tuple[str, dict[str, Any]]] = []
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            for n, raw in enumerate(reader, start=1):
                rows.append((f"{path.name}:row {n}",
                             {k.strip(): (v if v != "" else None) for k, v in raw.items() if k is not None}))
        except csv.Error as exc:
            raise InputError(f"{path.name}:{reader.line_num}: malformed CSV ({exc})") from None
        return rows
    return jsonl_objects(text, path.name)


def _field(fields: dict[str, Any], column: str, item: str, *, required: bool = True) -> str | None:
    value = fields.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        if required:
            raise InputError(f"{item}: {column} is missing or empty")
        return None
    return str(value).strip()


def image_inside(value: str, base: Path, item: str) -> Path:
    """``base / value`` when it resolves (symlinks followed) inside ``base``: the importer's rule, so a
    manifest from elsewhere cannot make the command read other files."""
    path = base / value
    if Path(value).is_absolute() or not path.resolve().is_relative_to(base.resolve()):
        raise InputError(f"{item}: image {value!r} leads outside {base}; give paths relative to the manifest's "
                         "folder, inside it")
    return path


def _decode(path: Path, item: str) -> Image.Image:
    try:
        return decode_image(path)
    except InputError as exc:
        raise InputError(f"{item}: {exc}") from None


# -- scoring ----------------------------------------------------------------------------------------

def score_many(scorer: Scorer, items: Sequence[tuple[Image.Image, str | None]],
               chunk_size: int = 64) -> list[tuple[float | None, str | None]]:
    """(score oriented so that higher is better, None) or (None, error) per item, in chunks."""
    sign = 1.0 if scorer.higher_is_better else -1.0
    out: list[tuple[float | None, str | None]] = []
    for start in range(0, len(items), chunk_size):
        chunk = list(items[start:start + chunk_size])
        try:
            results = scorer.score(chunk)
        except Exception as exc:  # a model error fails this chunk's items, not the command
            out.extend((None, f"scorer error: {exc!r}") for _ in chunk)
            continue
        out.extend((sign * float(r.score), None) if r.ok else (None, r.error or "no score") for r in results)
    return out


# -- emotion test -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EmotionRow:
    item: str
    scene: str
    emotion: str
    path: Path
    prompt: str | None


def read_emotion_manifest(path: str | Path, reference: str = "neutral",
                          emotions: Iterable[str] | None = None) -> dict[str, dict[str, EmotionRow]]:
    """scene -> emotion -> row, from a CSV/JSONL manifest with columns scene, emotion, image (a path
    relative to the manifest's folder) and prompt (the prompt naming that emotion; the reference
    row's may be empty). Errors name the row: a missing field, an image path outside the folder, a
    (scene, emotion) given twice; a scene without a reference image, or with no other emotion, is an
    error naming the scene. ``emotions`` keeps only those emotions (besides the reference)."""
    path = Path(path)
    rows = read_table(path, "emotion manifest")
    if not rows:
        raise InputError(f"emotion manifest {path} has no rows")
    columns = set().union(*(fields.keys() for _, fields in rows))
    missing = [c for c in EMOTION_COLUMNS if c not in columns]
    if missing:
        raise InputError(f"emotion manifest {path.name}: missing column(s) {', '.join(missing)}; it has "
                         f"{', '.join(sorted(columns)) or 'none'}")
    present = {str(fields.get("emotion") or "").strip() for _, fields in rows} - {""}
    if reference not in present:
        raise InputError(f"emotion manifest {path.name}: no row has emotion {reference!r} (the reference; present: "
                         f"{', '.join(sorted(present))}); set it with --reference")
    keep = set(emotions) if emotions else None
    scenes: dict[str, dict[str, EmotionRow]] = {}
    for item, fields in rows:
        scene, emotion = _field(fields, "scene", item), _field(fields, "emotion", item)
        if keep is not None and emotion != reference and emotion not in keep:
            continue
        prompt = _field(fields, "prompt", item, required=emotion != reference)
        image = image_inside(_field(fields, "image", item), path.parent, item)
        if emotion in scenes.setdefault(scene, {}):
            raise InputError(f"{item}: scene {scene!r} has emotion {emotion!r} twice "
                             f"(also {scenes[scene][emotion].item})")
        scenes[scene][emotion] = EmotionRow(item, scene, emotion, image, prompt)
    for scene, by_emotion in scenes.items():
        if reference not in by_emotion:
            raise InputError(f"emotion manifest {path.name}: scene {scene!r} has no {reference!r} image "
                             "(the reference emotion; set it with --reference)")
        if len(by_emotion) == 1:
            raise InputError(f"emotion manifest {path.name}: scene {scene!r} has only its {reference!r} image")
    if keep is not None:
        absent = sorted(keep - {e for s in scenes.values() for e in s})
        if absent:
            raise InputError(f"emotion manifest {path.name}: no rows for emotion(s) {', '.join(absent)}")
    return scenes


def _share_block(wins: np.ndarray, losses: np.ndarray, clusters: Sequence[str] | None,
                 n_boot: int, seed: int) -> dict[str, Any]:
    n = int(wins.size)
    k = int(wins.sum())
    share = bootstrap_ci(wins.astype(float), n_resamples=n_boot, seed=seed, clusters=clusters)
    wilson = wilson_interval(k, n)
    return {"n": n, "prefers_emotion": k / n if n else math.nan, "prefers_emotion_ci": [share.low, share.high],
            "prefers_emotion_wilson": [wilson.low, wilson.high],
            "prefers_reference": int(losses.sum()) / n if n else math.nan,
            "ties": n - k - int(losses.sum())}


def emotion_test(scenes: dict[str, dict[str, EmotionRow]], scorers: Sequence[Scorer], reference: str = "neutral",
                 *, n_boot: int = 2000, seed: int = 0, chunk_size: int = 64) -> dict[str, Any]:
    """For each scorer and emotion e, over the scenes holding e: the strict share of scenes with
    s(I_e, p_e) > s(I_ref, p_e) (s oriented so that higher is better), the strict share the other way,
    the ties, n, a percentile bootstrap CI over scenes and a Wilson interval. ``all`` pools every
    emotion, bootstrapped by scene (a scene's comparisons stay together). A comparison whose image the
    scorer could not score is left out and listed under ``failures``."""
    # Decode each image once; items are (image, prompt) deduplicated per scorer (prompt None when blind).
    images = {row.path: _decode(row.path, row.item) for by_e in scenes.values() for row in by_e.values()}
    comparisons = [(scene, e, row, by_e[reference]) for scene, by_e in scenes.items()
                   for e, row in by_e.items() if e != reference]
    emotions = sorted({e for _, e, _, _ in comparisons})
    out: dict[str, Any] = {"reference": reference, "emotions": emotions, "n_scenes": len(scenes), "scorers": {},
                           "failures": []}
    for scorer in scorers:
        def key(row: EmotionRow, prompt: str | None) -> tuple[Path, str | None]:
            return row.path, prompt if scorer.prompt_aware else None

        items = list(dict.fromkeys(k for _, _, row, ref in comparisons for k in (key(row, row.prompt),
                                                                               key(ref, row.prompt))))
        scored = dict(zip(items, score_many(scorer, [(images[p], q) for p, q in items], chunk_size)))
        per: dict[str, dict[str, list]] = defaultdict(lambda: {"win": [], "loss": [], "scene": []})
        for scene, e, row, ref in comparisons:
            (s_e, err_e), (s_ref, err_ref) = scored[key(row, row.prompt)], scored[key(ref, row.prompt)]
            if s_e is None or s_ref is None:
                bad = row if s_e is None else ref
                out["failures"].append({"scorer": scorer.name, "scene": scene, "emotion": e, "item": bad.item,
                                        "error": err_e if s_e is None else err_ref})
                continue
            for group in (e, "all"):
                per[group]["win"].append(s_e > s_ref)
                per[group]["loss"].append(s_e < s_ref)
                per[group]["scene"].append(scene)
        block = {}
        for group in [*emotions, "all"]:
            d = per[group]
            block[group] = _share_block(np.array(d["win"], dtype=bool), np.array(d["loss"], dtype=bool),
                                        d["scene"] if group == "all" else None, n_boot, seed)
        out["scorers"][scorer.name] = {"higher_is_better": scorer.higher_is_better,
                                       "prompt_aware": scorer.prompt_aware, "emotions": block}
    return out


def format_emotion_table(result: dict[str, Any]) -> str:
    lines = [f"emotion test: s(I_e, p_e) > s(I_{result['reference']}, p_e), {result['n_scenes']} scenes",
             f"{'scorer':16} {'emotion':12} {'n':>4} {'prefers e':>10} {'95% CI':>15} {'Wilson':>15} "
             f"{'prefers ref':>11} {'ties':>4}"]
    for name, block in result["scorers"].items():
        for group, b in block["emotions"].items():
            lines.append(f"{name:16} {group:12} {b['n']:4d} {_pct(b['prefers_emotion']):>10} "
                         f"{_interval(b['prefers_emotion_ci']):>15} {_interval(b['prefers_emotion_wilson']):>15} "
                         f"{_pct(b['prefers_reference']):>11} {b['ties']:4d}")
        if not block["prompt_aware"]:
            lines.append(f"{'':16} ({name} is prompt-blind: the prompt cannot change its choice)")
    for f in result["failures"]:
        lines.append(f"failed: {f['scorer']} on {f['item']}: {f['error']}")
    return "\n".join(lines)


# -- real-art placement -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Artwork:
    item: str
    name: str
    path: Path
    prompt: str | None


def read_artworks(source: str | Path, default_prompt: str | None = None) -> list[Artwork]:
    """Artworks from a folder (every image file, sorted by name; prompt ``default_prompt``) or a
    CSV/JSONL manifest with column image (relative to the manifest's folder) and optional prompt and
    title (a row without a prompt gets ``default_prompt``)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"artworks folder {source} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return [Artwork(p.name, p.name, p, default_prompt) for p in files]
    rows = read_table(source, "artworks manifest")
    if not rows:
        raise InputError(f"artworks manifest {source} has no rows")
    out = []
    for item, fields in rows:
        image = _field(fields, "image", item)
        title = _field(fields, "title", item, required=False)
        prompt = _field(fields, "prompt", item, required=False) or default_prompt
        out.append(Artwork(item, title or image, image_inside(image, source.parent, item), prompt))
    return out


def read_leaderboard(path: str | Path) -> dict[str, float]:
    """name -> score from a CSV/JSONL table with columns name and score."""
    board: dict[str, float] = {}
    for item, fields in read_table(path, "leaderboard"):
        name, raw = _field(fields, "name", item), _field(fields, "score", item)
        try:
            value = float(raw)
        except ValueError:
            raise InputError(f"{item}: score {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise InputError(f"{item}: score {raw!r} is not a finite number")
        if name in board:
            raise InputError(f"{item}: {name!r} is listed twice")
        board[name] = value
    if not board:
        raise InputError(f"leaderboard {path} has no rows")
    return board


def reference_scores(store: RunStore, scorer: Scorer, generator: str, side: str = "o") -> np.ndarray:
    """Raw scores of one generator's images from a run: r(I_o, p_o) (``side="o"``) or r(I_a, p_a)
    (``"a"``) by this scorer with these options (its ``scorer_id``), each (image, prompt) once."""
    if side not in ("o", "a"):
        raise ValueError(f"side must be 'o' or 'a', got {side!r}")
    models = set()
    wanted: dict[tuple[str, str | None], None] = {}
    for r in store.records(IMAGES):
        d = r.data
        models.add(d.get("model"))
        if d.get("model") == generator and has_pixels(d[f"image_{side}"]):
            wanted.setdefault((d[f"image_{side}"], d[f"p_{side}"] if scorer.prompt_aware else None))
    if not wanted:
        known = ", ".join(sorted(str(m) for m in models if m)) or "none"
        raise InputError(f"run {store.root} has no image pairs of generator {generator!r} (generators: {known})")
    scorer_id = spec_hash(scorer.identity())
    found: dict[tuple[str, str | None], float] = {}
    other_ids = set()
    for r in store.records(SCORE):
        d = r.data
        if d.get("scorer") != scorer.name:
            continue
        if d.get("scorer_id") != scorer_id:
            other_ids.add(d.get("scorer_id"))
            continue
        k = (d["image"], d.get("prompt"))
        if k in wanted:
            found[k] = float(d["score"])
    if not found:
        why = (" (its scores there were made with other options or weights)" if other_ids
               else f"; run `aesthetic-audit score {store.root} --scorers {scorer.name}` first")
        raise InputError(f"run {store.root} has no {scorer.name} scores of {generator!r}'s I_{side} images{why}")
    return np.array([found[k] for k in wanted if k in found])


def real_art_test(artworks: Sequence[Artwork], scorer: Scorer, *, reference: np.ndarray | None = None,
                  reference_label: str | None = None, leaderboard: dict[str, float] | None = None,
                  chunk_size: int = 64) -> dict[str, Any]:
    """Each artwork's raw r; against ``reference`` (raw scores of AI images) its z = (r - mean) / sd
    (sd with ddof 1) and a one-sided Mann-Whitney U test over all artworks, H1: artworks score worse
    than the AI images (on scores oriented so that higher is better), with the rank-biserial effect
    size (negative: artworks worse); on ``leaderboard`` each artwork's and the artworks' mean's
    relative s = (r - r_min) / (r_max - r_min) and rank R (1 = best, ties share the better rank). An
    artwork the scorer fails is listed under ``failures`` and left out."""
    if scorer.prompt_aware:
        blank = [a.item for a in artworks if a.prompt is None]
        if blank:
            raise InputError(f"{scorer.name} is prompt-aware and {blank[0]} has no prompt; give a prompt column "
                             "or --prompt")
    images = [_decode(a.path, a.item) for a in artworks]
    scored = score_many(scorer, [(img, a.prompt if scorer.prompt_aware else None)
                                 for img, a in zip(images, artworks)], chunk_size)
    sign = 1.0 if scorer.higher_is_better else -1.0
    rows, failures, raw = [], [], []
    for a, (s, err) in zip(artworks, scored):
        if s is None:
            failures.append({"item": a.item, "error": err})
            continue
        r = sign * s  # back to the scorer's own units
        raw.append(r)
        rows.append({"name": a.name, "item": a.item, "r": r})
    out: dict[str, Any] = {"scorer": scorer.name, "higher_is_better": scorer.higher_is_better,
                           "n_artworks": len(rows), "artworks": rows, "failures": failures}
    art = np.array(raw)
    if reference is not None:
        ref = np.asarray(reference, dtype=float)
        for row, z in zip(rows, zscores(art, ref, ddof=1) if art.size else []):
            row["z"] = float(z)
        mw = mann_whitney_one_sided(sign * art, sign * ref, alternative="less")
        out["reference"] = {"label": reference_label, "n": int(ref.size), "mean": float(ref.mean()),
                            "sd": float(ref.std(ddof=1)) if ref.size > 1 else math.nan,
                            "mann_whitney": {"alternative": "artworks score worse", "U": mw.statistic,
                                             "p": mw.pvalue, "effect_size": mw.effect_size,
                                             "n_artworks": mw.n_x, "n_reference": mw.n_y}}
    if leaderboard is not None:
        for row in rows:
            p = leaderboard_placement(row["r"], leaderboard, scorer.higher_is_better)
            row["relative"], row["rank"] = p.relative, p.rank
        mean = leaderboard_placement(float(art.mean()), leaderboard, scorer.higher_is_better) if art.size else None
        out["leaderboard"] = {"n": len(leaderboard), "r_min": min(leaderboard.values()),
                              "r_max": max(leaderboard.values()),
                              "mean_artwork": None if mean is None else {"r": mean.raw, "relative": mean.relative,
                                                                         "rank": mean.rank}}
    return out


def format_real_art_table(result: dict[str, Any]) -> str:
    direction = "higher is better" if result["higher_is_better"] else "lower is better"
    lines = [f"real-art placement: {result['scorer']} ({direction}), {result['n_artworks']} artworks"]
    ref, board = result.get("reference"), result.get("leaderboard")
    head = f"{'artwork':30} {'r':>10}" + (f" {'z':>7}" if ref else "") + (f" {'s':>7} {'rank':>9}" if board else "")
    lines.append(head)
    for row in result["artworks"]:
        line = f"{row['name'][:30]:30} {row['r']:10.4g}"
        if ref:
            line += f" {row['z']:7.2f}"
        if board:
            line += f" {row['relative']:7.3f} {row['rank']:4d} / {board['n']:<3d}"
        lines.append(line)
    if ref:
        mw = ref["mann_whitney"]
        lines.append(f"AI reference {ref['label']}: n {ref['n']}, mean {ref['mean']:.4g}, sd {ref['sd']:.4g}")
        lines.append(f"Mann-Whitney U (H1: {mw['alternative']}): U {mw['U']:g}, p {mw['p']:.3g}, "
                     f"rank-biserial r {mw['effect_size']:+.3f} (n {mw['n_artworks']} vs {mw['n_reference']})")
    if board and board["mean_artwork"]:
        m = board["mean_artwork"]
        lines.append(f"leaderboard ({board['n']} entries, r {board['r_min']:.4g}..{board['r_max']:.4g}): mean "
                     f"artwork r {m['r']:.4g}, s {m['relative']:.3f}, rank {m['rank']}")
    for f in result["failures"]:
        lines.append(f"failed: {f['item']}: {f['error']}")
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    """The result as JSON, nan (an undefined statistic) written as null so that any JSON reader takes it."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(result), indent=2, allow_nan=False) + "\n"


def _pct(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.0f}%"


def _interval(ci: Sequence[float]) -> str:
    lo, hi = ci
    return "-" if lo is None or math.isnan(lo) else f"[{100 * lo:.0f}, {100 * hi:.0f}]"
