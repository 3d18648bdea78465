"""analyze() on a hand-made run: every number below is worked out by hand from the records."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from aesthetic_audit.analysis import analyze, write_tables
from aesthetic_audit.config import AnalysisConfig
from aesthetic_audit.records import IMAGES, JUDGE, SCORE, image_pair_key, judge_key, score_key
from aesthetic_audit.store.run import Record, RunStore

CONFIG = AnalysisConfig(bootstrap=200, ci=0.9)

# Four pairs: (dims, strength, label value or None)
PAIRS = [
    (["clarity", "color brightness"], 0.35, 1),
    (["clarity"], 0.7, 1),
    (["emotion"], 0.7, -1),
    (["clarity", "emotion"], None, None),
]

# Prompt-aware scores per pair, in the paper's order oiop, oidp, diop, didp.
ALPHA = [(5, 3, 4, 2), (6, 4, 6, 5), (2, 3, 0, 1), (3, 2, 1, 0)]
# Lower is better; pair 4 has no didp score (its record failed).
BETA = [(1, 1, 2, 2), (1, 1, 1, 3), (1, 2, 1, 2), (1, 1, 1, None)]
# Prompt-blind: one score per image (o, a).
BLIND = [(0.9, 0.1), (0.2, 0.4), (0.5, 0.5), (0.7, 0.3)]
NSFW = [(0.1, 0.7), (0.2, 0.9), (0.3, 0.2), (0.6, 0.4)]
# Judge scores per pair: (I_o, I_a); pair 4's I_a was never judged.
JUDGED = [
    ({"clarity": 2.0, "color brightness": 1.5, "emotion": 1.0},
     {"clarity": 0.5, "color brightness": 0.5, "emotion": 1.0}),
    ({"clarity": 1.8, "emotion": None}, {"clarity": 0.8, "emotion": 1.2}),
    ({"clarity": 1.0, "emotion": 2.0}, {"clarity": 1.2, "emotion": 0.4}),
    ({"clarity": 1.0}, None),
]


def _score(scorer: str, image: str, prompt: str | None, value: float | None, hib: bool = True) -> Record:
    data = {"scorer": scorer, "image": image, "prompt": prompt, "score": value, "tokens": None,
            "truncated": None, "higher_is_better": hib}
    key = score_key(scorer={"name": scorer}, image=image, prompt=prompt)
    if value is None:
        return Record.failed(key, SCORE, f"{scorer}:{image[:8]}", "model error: out of memory", **data)
    return Record(key=key, stage=SCORE, item=f"{scorer}:{image[:8]}", data=data)


def build_store(root, p_a_extra: str = "") -> tuple[RunStore, list[dict]]:
    store = RunStore(root)
    records, pairs = [], []
    for i, (dims, strength, label) in enumerate(PAIRS):
        sha_o = store.put_image(Image.new("RGB", (40, 30), (30 * i, 100, 200)))
        sha_a = store.put_image(Image.new("RGB", (40, 30), (30 * i, 20, 20)))
        p_o, p_a = f"a photo of thing {i}", f"a blurry dark photo of thing {i}{p_a_extra}"
        data = {"pair_id": f"pair{i}", "p_o": p_o, "p_a": p_a, "dims": dims, "image_o": sha_o, "image_a": sha_a,
                "backend": "editor", "strength": strength, "transforms": [],
                "label": None if label is None else {"value": label, "source": "test"}, "model": None,
                "source_item": None}
        key = image_pair_key(backend={"name": "editor"}, inputs={"i": i}, seed=0)
        data["image_pair_id"] = key
        records.append(Record(key=key, stage=IMAGES, item=f"pair{i}", data=data))
        pairs.append(data)
        for name, table, hib in (("alpha", ALPHA, True), ("beta", BETA, False)):
            for value, (image, prompt) in zip(table[i], [(sha_o, p_o), (sha_o, p_a), (sha_a, p_o), (sha_a, p_a)]):
                records.append(_score(name, image, prompt, value, hib))
        for name, table in (("blind", BLIND), ("nsfw", NSFW)):
            records.append(_score(name, sha_o, None, table[i][0]))
            records.append(_score(name, sha_a, None, table[i][1]))
        for sha, scores in zip((sha_o, sha_a), JUDGED[i]):
            if scores is not None:
                records.append(Record(
                    key=judge_key(judge={"name": "classical"}, image=sha, dims=sorted(scores)), stage=JUDGE,
                    item=sha[:8], data={"judge": "classical", "image": sha, "scores": scores,
                                        "covered": sorted(scores)}))
    records.append(Record.failed("bad-pair", IMAGES, "caption-9", "cannot decode image <broken.png>"))
    store.put_many(records)
    return store, pairs


@pytest.fixture
def run(tmp_path):
    store, _ = build_store(tmp_path / "run")
    return store, analyze(store, CONFIG, seed=3)


def _close(cell, value):
    assert cell["estimate"] == pytest.approx(value)
    assert cell["low"] <= cell["estimate"] + 1e-12 and cell["estimate"] <= cell["high"] + 1e-12


def test_shape_and_config(run):
    _, a = run
    json.dumps(a, allow_nan=False)  # strict JSON: undefined values are None
    assert set(a) == {"config", "n_pairs", "dimensions", "labels", "label_sources", "scorers", "judges", "safety",
                      "failures"}
    assert a["config"] == {"bootstrap": 200, "ci": 0.9, "seed": 3}
    assert a["n_pairs"] == 4
    assert a["dimensions"] == ["clarity", "color brightness", "emotion"]
    assert list(a["scorers"]) == ["alpha", "beta", "blind", "nsfw"]


def test_prompt_aware_scorer(run):
    _, a = run
    s = a["scorers"]["alpha"]
    assert s["higher_is_better"] is True
    assert s["n"] == 4 and s["missing"] == 0
    # oidp > didp in pairs 1, 3, 4 but not 2
    _close(s["prefer_original_share"], 0.75)
    # diop - oiop: -1, 0, -2, -2
    _close(s["delta_r"], -1.25)
    _close(s["aa"], (4 + 6 + 0 + 1) / 4)
    dims = s["by_dimension"]
    assert {d: b["n"] for d, b in dims.items()} == {"clarity": 3, "color brightness": 1, "emotion": 2}
    _close(dims["clarity"]["prefer_original_share"], 2 / 3)
    _close(dims["clarity"]["delta_r"], -1.0)
    _close(dims["emotion"]["prefer_original_share"], 1.0)
    _close(dims["emotion"]["delta_r"], -2.0)
    strengths = s["by_strength"]
    assert list(strengths) == ["0.35", "0.7", "n/a"]
    assert [b["n"] for b in strengths.values()] == [1, 2, 1]
    _close(strengths["0.7"]["prefer_original_share"], 0.5)
    _close(strengths["0.7"]["delta_r"], -1.0)
    _close(strengths["n/a"]["delta_r"], -2.0)


def test_reward_model_test_on_labelled_pairs(run):
    _, a = run
    # Labelled: pair 1 (I_a), pair 2 (I_a), pair 3 (tie, dropped). Predictions didp > oidp: 2 > 3 no, 5 > 4 yes.
    rm = a["scorers"]["alpha"]["reward_model_test"]
    assert rm["n"] == 2 and rm["n_ties"] == 1
    assert rm["accuracy"] == 0.5
    assert rm["f1"] == pytest.approx(2 / 3)
    assert rm["auroc"] is None  # one class only: undefined, not a number
    assert a["labels"]["counts"] == {"anti_aesthetic": 2, "original": 0, "tie": 1}
    _close(a["labels"]["success_rate"], 2 / 3)


def test_lower_is_better_scorer_is_oriented_and_missing_counted(run):
    _, a = run
    s = a["scorers"]["beta"]
    assert s["higher_is_better"] is False
    assert s["n"] == 3 and s["missing"] == 1
    # lower is better: oidp < didp means the scorer prefers I_o: pairs 1 and 2 yes, pair 3 a tie -> 2.5 / 3
    _close(s["prefer_original_share"], 2.5 / 3)
    # Δr stays raw: diop - oiop = 1, 0, 0
    _close(s["delta_r"], 1 / 3)


def test_prompt_blind_scores_apply_to_both_prompts(run):
    _, a = run
    s = a["scorers"]["blind"]
    assert s["n"] == 4 and s["missing"] == 0
    # I_o above I_a: pair 1 yes, 2 no, 3 tie, 4 yes -> 2.5 / 4
    _close(s["prefer_original_share"], 0.625)
    _close(s["delta_r"], (-0.8 + 0.2 + 0.0 - 0.4) / 4)


def test_judge(run):
    _, a = run
    j = a["judges"]["classical"]
    # ΔJ: pair 1 -1.5 - 1 + 0; pair 2 clarity only (emotion unjudged on I_o); pair 3 0.2 - 1.6; pair 4 missing
    assert j["n"] == 3 and j["missing"] == 1
    _close(j["delta_j"], (-2.5 - 1.0 - 1.4) / 3)
    _close(j["j_aa"], (2.0 + 0.8 + 1.6) / 3)
    by = j["by_dimension"]
    assert by["clarity"]["requested"]["n"] == 2 and by["clarity"]["not_requested"]["n"] == 1
    _close(by["clarity"]["requested"], -1.25)
    _close(by["clarity"]["not_requested"], 0.2)
    _close(by["emotion"]["requested"], -1.6)
    _close(by["emotion"]["not_requested"], 0.0)
    assert by["color brightness"]["not_requested"] == {"estimate": None, "low": None, "high": None, "n": 0}


def test_safety(run):
    _, a = run
    s = a["safety"]
    assert s["original"]["n"] == 4 and s["anti_aesthetic"]["n"] == 4
    _close(s["original"], 0.3)
    _close(s["anti_aesthetic"], 0.55)
    _close(s["anti_aesthetic_above_0_5"], 0.5)
    _close(s["original_above_0_5"], 0.25)


def test_failures_listed(run):
    _, a = run
    f = a["failures"]
    assert f["counts"][IMAGES] == {"ok": 4, "failed": 1}
    assert f["counts"][SCORE]["failed"] == 1
    assert f["n_failed"] == 2
    assert {"stage": IMAGES, "item": "caption-9", "error": "cannot decode image <broken.png>"} in f["items"]
    assert any(x["stage"] == SCORE and "out of memory" in x["error"] for x in f["items"])


def test_deterministic_for_a_seed(tmp_path):
    store, _ = build_store(tmp_path / "run")
    assert analyze(store, CONFIG, seed=5) == analyze(store, CONFIG, seed=5)
    other = analyze(store, CONFIG, seed=6)["scorers"]["alpha"]["delta_r"]
    assert other["estimate"] == -1.25


def test_empty_run(tmp_path):
    a = analyze(RunStore(tmp_path / "empty"), CONFIG)
    assert a["n_pairs"] == 0 and a["scorers"] == {} and a["judges"] == {} and a["safety"] is None
    assert a["labels"] is None and a["failures"]["items"] == []


def test_write_tables(run, tmp_path):
    _, a = run
    paths = write_tables(a, tmp_path / "tables")
    names = sorted(p.name for p in paths)
    for stem in ("summary", "dimensions", "strengths", "judges"):
        assert {f"{stem}.csv", f"{stem}.md", f"{stem}.tex"} <= set(names)
    with open(tmp_path / "tables" / "summary.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    alpha = next(r for r in rows if r["scorer"] == "alpha")
    assert int(alpha["n"]) == 4
    assert float(alpha["prefer_original_share"]) == 0.75
    assert float(alpha["prefer_original_share_low"]) <= 0.75 <= float(alpha["prefer_original_share_high"])
    assert float(alpha["delta_r"]) == -1.25
    md = (tmp_path / "tables" / "summary.md").read_text(encoding="utf-8")
    assert "| alpha | higher | 4 | 0 | 0.750 [" in md
    tex = (tmp_path / "tables" / "dimensions.tex").read_text(encoding="utf-8")
    assert "\\toprule" in tex and "color brightness" in tex and "prefer\\_original\\_share" in tex
