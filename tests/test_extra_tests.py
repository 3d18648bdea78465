"""The emotion test and real-art placement (analysis/extra_tests.py, `aesthetic-audit extra-tests`).

Expected values come from the scorers' own outputs on the same images, then the comparison, shares,
z-scores, Mann-Whitney U, Wilson interval and leaderboard placement are worked out here by hand or
by scipy directly.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import stats

from aesthetic_audit.analysis import extra_tests as x
from aesthetic_audit.errors import InputError
from aesthetic_audit.images.decode import decode_image
from aesthetic_audit.images.importers import pair_record
from aesthetic_audit.scorers.stage import make_scorer, run_score
from aesthetic_audit.store import RunStore

SIZE = 40


def _texture(seed: int, brightness: float = 1.0, blur: float = 0.0) -> Image.Image:
    """A colour gradient with seeded noise; dimmed and blurred on request."""
    rng = np.random.default_rng(seed)
    y, x_ = np.mgrid[0:SIZE, 0:SIZE]
    pixels = np.stack([x_ * 6, y * 6, (x_ + y) * 3], axis=-1) + rng.normal(0, 30, size=(SIZE, SIZE, 3))
    img = Image.fromarray((pixels * brightness).clip(0, 255).astype(np.uint8))
    return img.filter(ImageFilter.GaussianBlur(blur)) if blur else img


def _save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _raw(scorer_name: str, paths: list[Path]) -> list[float]:
    """The scorer's own raw scores of the files (prompt-blind scorers: the prompt plays no part)."""
    results = make_scorer(scorer_name).score([(decode_image(p), None) for p in paths])
    return [r.score for r in results]


@pytest.fixture
def emotion_manifest(tmp_path):
    # 4 scenes x {neutral, sad, angry}. sad images are dim, blurred textures; in scene s3 the angry image
    # is the neutral image itself, so every scorer must call it a tie.
    rows = []
    for i in range(4):
        scene = f"s{i}"
        _save(_texture(10 * i), tmp_path / "img" / f"{scene}_neutral.png")
        _save(_texture(10 * i + 1, brightness=0.25, blur=2), tmp_path / "img" / f"{scene}_sad.png")
        angry = _texture(10 * i) if i == 3 else _texture(10 * i + 2)
        _save(angry, tmp_path / "img" / f"{scene}_angry.png")
        rows += [{"scene": scene, "emotion": "neutral", "image": f"img/{scene}_neutral.png", "prompt": ""},
                 {"scene": scene, "emotion": "sad", "image": f"img/{scene}_sad.png", "prompt": "a sad scene"},
                 {"scene": scene, "emotion": "angry", "image": f"img/{scene}_angry.png", "prompt": "an angry scene"}]
    return _write_csv(tmp_path / "emotions.csv", rows)


def _wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval by its formula, z = Phi^-1(0.975)."""
    z = stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_emotion_test_counts_strict_wins_ties_and_orients_lower_is_better(emotion_manifest):
    base = emotion_manifest.parent / "img"
    scenes = x.read_emotion_manifest(emotion_manifest)
    scorers = [make_scorer("composite"), make_scorer("brisque")]
    result = x.emotion_test(scenes, scorers, n_boot=200, seed=1)
    assert result["emotions"] == ["angry", "sad"] and result["n_scenes"] == 4
    for name, higher in (("composite", True), ("brisque", False)):
        ref = _raw(name, [base / f"s{i}_neutral.png" for i in range(4)])
        block = result["scorers"][name]["emotions"]
        pooled_wins = pooled_losses = 0
        for emotion in ("sad", "angry"):
            raw = _raw(name, [base / f"s{i}_{emotion}.png" for i in range(4)])
            wins = sum((e > r) if higher else (e < r) for e, r in zip(raw, ref))
            losses = sum((e < r) if higher else (e > r) for e, r in zip(raw, ref))
            ties = 4 - wins - losses
            b = block[emotion]
            assert (b["n"], b["ties"]) == (4, ties)
            assert b["prefers_emotion"] == pytest.approx(wins / 4)
            assert b["prefers_reference"] == pytest.approx(losses / 4)
            assert b["prefers_emotion_wilson"] == pytest.approx(list(_wilson(wins, 4)))
            low, high = b["prefers_emotion_ci"]
            assert 0 <= low <= wins / 4 <= high <= 1
            pooled_wins, pooled_losses = pooled_wins + wins, pooled_losses + losses
        assert block["angry"]["ties"] >= 1  # scene s3: the same pixels on both sides
        assert block["all"]["n"] == 8
        assert block["all"]["prefers_emotion"] == pytest.approx(pooled_wins / 8)
        assert block["all"]["ties"] == 8 - pooled_wins - pooled_losses
    # Dim, blurred textures lose on the composite's clarity and brightness terms: nobody prefers sad there.
    assert result["scorers"]["composite"]["emotions"]["sad"]["prefers_emotion"] == 0
    assert result["failures"] == []


def test_emotion_bootstrap_interval_is_degenerate_when_every_scene_agrees(emotion_manifest):
    scenes = x.read_emotion_manifest(emotion_manifest, emotions=["sad"])
    block = x.emotion_test(scenes, [make_scorer("composite")], n_boot=200)["scorers"]["composite"]["emotions"]
    assert list(block) == ["sad", "all"]
    assert block["sad"]["prefers_reference"] == 1.0 and block["sad"]["prefers_emotion_ci"] == [0.0, 0.0]


@pytest.mark.parametrize("row, message", [
    ({"scene": "s0", "emotion": "sad", "image": "../outside.png", "prompt": "sad"}, "emotions.csv:row 4: image"),
    ({"scene": "s0", "emotion": "sad", "image": "/etc/passwd", "prompt": "sad"}, "leads outside"),
    ({"scene": "s0", "emotion": "sad", "image": "a.png", "prompt": ""}, "emotions.csv:row 4: prompt is missing"),
    ({"scene": "s0", "emotion": "angry", "image": "a.png", "prompt": "x"}, "emotions.csv:row 4: scene 's0' has "
                                                                           "emotion 'angry' twice"),
    ({"scene": "s9", "emotion": "sad", "image": "a.png", "prompt": "x"}, "scene 's9' has no 'neutral' image"),
])
def test_a_bad_emotion_row_is_a_one_line_error_naming_it(tmp_path, row, message):
    _save(_texture(0), tmp_path / "a.png")
    rows = [{"scene": "s0", "emotion": "neutral", "image": "a.png", "prompt": ""},
            {"scene": "s0", "emotion": "angry", "image": "a.png", "prompt": "angry"},
            {"scene": "s1", "emotion": "neutral", "image": "a.png", "prompt": ""}, row]
    rows.append({"scene": "s1", "emotion": "sad", "image": "a.png", "prompt": "sad"})
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        x.read_emotion_manifest(_write_csv(tmp_path / "emotions.csv", rows))


def test_a_missing_column_and_an_undecodable_image_are_named(tmp_path):
    bad = _write_csv(tmp_path / "e.csv", [{"scene": "s", "emotion": "neutral", "image": "a.png"}])
    with pytest.raises(InputError, match="missing column.*prompt"):
        x.read_emotion_manifest(bad)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    _save(_texture(0), tmp_path / "a.png")
    ok = _write_csv(tmp_path / "e2.csv", [{"scene": "s", "emotion": "neutral", "image": "a.png", "prompt": ""},
                                          {"scene": "s", "emotion": "sad", "image": "broken.png", "prompt": "sad"}])
    with pytest.raises(InputError, match=r"e2.csv:row 2: image .*broken.png"):
        x.emotion_test(x.read_emotion_manifest(ok), [make_scorer("composite")])


def test_emotion_cli_prints_a_table_and_writes_json(emotion_manifest, cli, tmp_path):
    out = tmp_path / "emotion.json"
    code, stdout, _ = cli("extra-tests", "emotion", emotion_manifest, "--scorers", "composite", "--bootstrap", "100",
                          "-o", out)
    assert code == 0 and "composite" in stdout and "sad" in stdout and "prompt-blind" in stdout
    data = json.loads(out.read_text())
    assert data["scorers"]["composite"]["emotions"]["sad"]["n"] == 4
    code, stdout, _ = cli("extra-tests", "emotion", emotion_manifest, "--scorers", "composite", "--bootstrap", "50",
                          "--format", "json")
    assert code == 0 and json.loads(stdout)["reference"] == "neutral"
    code, _, err = cli("extra-tests", "emotion", emotion_manifest, "--scorers", "composite", "--reference", "calm")
    assert code == 2 and "no row has emotion 'calm' (the reference; present: angry, neutral, sad)" in err


# -- real art ---------------------------------------------------------------------------------------

def _run_with_generator(root: Path, n: int = 6) -> tuple[RunStore, list[Path]]:
    """A run whose pairs come from two generators; g1's I_o files are returned (the reference)."""
    store = RunStore(root)
    files = []
    for i in range(n):
        for model, seed in (("g1", 100 + i), ("g2", 200 + i)):
            io_path = _save(_texture(seed), root.parent / "ai" / f"{model}_{i}_o.png")
            ia_path = _save(_texture(seed + 50, brightness=0.5), root.parent / "ai" / f"{model}_{i}_a.png")
            image_o, image_a = store.put_image(decode_image(io_path)), store.put_image(decode_image(ia_path))
            store.put(pair_record(f"{model}-{i}", image_o=image_o, image_a=image_a, p_o=f"scene {i}",
                                  p_a=f"dark scene {i}", dims=["color brightness"], label=None, model=model))
            if model == "g1":
                files.append(io_path)
    return store, files


@pytest.fixture
def artworks(tmp_path):
    folder = tmp_path / "art"
    paths = [_save(_texture(300 + i, brightness=0.4 + 0.1 * i), folder / f"work{i}.png") for i in range(4)]
    return folder, paths


@pytest.mark.parametrize("name, higher", [("composite", True), ("brisque", False)])
def test_real_art_z_scores_mann_whitney_and_leaderboard(tmp_path, artworks, name, higher):
    store, ai_files = _run_with_generator(tmp_path / "run")
    scorer = make_scorer(name)
    run_score(store, scorer)
    folder, art_files = artworks
    ai, art = np.array(_raw(name, ai_files)), np.array(_raw(name, art_files))

    reference = x.reference_scores(store, make_scorer(name), "g1")
    assert sorted(reference) == pytest.approx(sorted(ai))
    board = {"m1": float(np.min(art)) - 1, "m2": float(np.median(art)), "m3": float(np.max(art)) + 2}
    result = x.real_art_test(x.read_artworks(folder), make_scorer(name), reference=reference, leaderboard=board)

    assert [row["name"] for row in result["artworks"]] == [p.name for p in art_files]
    assert [row["r"] for row in result["artworks"]] == pytest.approx(art)
    z = (art - ai.mean()) / ai.std(ddof=1)
    assert [row["z"] for row in result["artworks"]] == pytest.approx(z)
    mw = result["reference"]["mann_whitney"]
    # H1 "artworks score worse": lower raw scores when higher is better, higher raw scores otherwise.
    expected = stats.mannwhitneyu(art, ai, alternative="less" if higher else "greater")
    assert mw["p"] == pytest.approx(expected.pvalue)
    u_oriented = expected.statistic if higher else art.size * ai.size - expected.statistic
    assert mw["U"] == pytest.approx(u_oriented)
    assert mw["effect_size"] == pytest.approx(2 * u_oriented / (art.size * ai.size) - 1)
    lo, hi = min(board.values()), max(board.values())
    for row, r in zip(result["artworks"], art):
        assert row["relative"] == pytest.approx((r - lo) / (hi - lo))
        better = sum((v > r) if higher else (v < r) for v in board.values())
        assert row["rank"] == 1 + better


def test_real_art_from_a_manifest_with_prompts_and_a_leaderboard_file(tmp_path, artworks, cli):
    folder, paths = artworks
    manifest = _write_csv(folder / "art.csv", [{"image": p.name, "title": f"Work {i}", "prompt": "a painting"}
                                               for i, p in enumerate(paths)])
    board = _write_csv(tmp_path / "board.csv", [{"name": "a", "score": "2"}, {"name": "b", "score": "6"},
                                                {"name": "c", "score": "4"}])
    out = tmp_path / "art.json"
    code, stdout, _ = cli("extra-tests", "real-art", manifest, "--scorer", "composite", "--leaderboard", board,
                          "-o", out)
    assert code == 0 and "Work 0" in stdout
    data = json.loads(out.read_text())
    raw = _raw("composite", paths)
    for row, r in zip(data["artworks"], raw):
        assert row["relative"] == pytest.approx((r - 2) / 4)
        assert row["rank"] == 1 + sum(v > r for v in (2, 4, 6))
    assert data["leaderboard"]["mean_artwork"]["r"] == pytest.approx(np.mean(raw))


def test_real_art_cli_with_a_run_and_its_errors(tmp_path, artworks, cli):
    store, _ = _run_with_generator(tmp_path / "run", n=3)
    folder, _ = artworks
    code, _, err = cli("extra-tests", "real-art", folder, "--scorer", "composite", "--run", tmp_path / "run",
                       "--generator", "g1")
    assert code == 2 and "no composite scores of 'g1'" in err and "aesthetic-audit score" in err
    run_score(store, make_scorer("composite"))
    store.close()
    code, stdout, _ = cli("extra-tests", "real-art", folder, "--scorer", "composite", "--run", tmp_path / "run",
                          "--generator", "g1", "--format", "json")
    assert code == 0 and json.loads(stdout)["reference"]["n"] == 3
    code, _, err = cli("extra-tests", "real-art", folder, "--scorer", "composite", "--run", tmp_path / "run",
                       "--generator", "nope")
    assert code == 2 and "no image pairs of generator 'nope' (generators: g1, g2)" in err
    code, _, err = cli("extra-tests", "real-art", folder, "--scorer", "composite", "--generator", "g1")
    assert code == 2 and "--run and --generator go together" in err
    bad_board = _write_csv(tmp_path / "bad.csv", [{"name": "a", "score": "high"}])
    code, _, err = cli("extra-tests", "real-art", folder, "--scorer", "composite", "--leaderboard", bad_board)
    assert code == 2 and "bad.csv:row 1: score 'high' is not a number" in err
    manifest = _write_csv(folder / "m.csv", [{"image": "../escape.png"}])
    code, _, err = cli("extra-tests", "real-art", manifest, "--scorer", "composite")
    assert code == 2 and "m.csv:row 1: image '../escape.png' leads outside" in err


def test_an_image_the_scorer_fails_is_listed_and_left_out(emotion_manifest):
    from aesthetic_audit.scorers.base import Scorer, ScoreResult

    class DimFails(Scorer):
        """Scores mean brightness; fails on dim images (the sad ones)."""
        name = "dim-fails"
        prompt_aware = False

        def _score(self, items):
            means = [float(np.asarray(img).mean()) for img, _ in items]
            return [ScoreResult(m) if m > 60 else ScoreResult(None, error="too dim") for m in means]

    result = x.emotion_test(x.read_emotion_manifest(emotion_manifest), [DimFails()], n_boot=50)
    assert [(f["emotion"], f["error"]) for f in result["failures"]] == [("sad", "too dim")] * 4
    block = result["scorers"]["dim-fails"]["emotions"]
    assert block["sad"]["n"] == 0 and block["sad"]["prefers_emotion"] is not None  # nan, written as null in JSON
    assert block["angry"]["n"] == 4 and block["all"]["n"] == 4
    assert json.loads(x.to_json(result))["scorers"]["dim-fails"]["emotions"]["sad"]["prefers_emotion"] is None


def test_a_pairwise_scorer_is_refused_in_one_line(emotion_manifest, cli):
    code, _, err = cli("extra-tests", "emotion", emotion_manifest, "--scorers", "vlm-pair",
                       "--set", "score.options={vlm-pair: {url: 'http://127.0.0.1:9/v1', model: m}}")
    assert code == 2 and "vlm-pair compares two images" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
