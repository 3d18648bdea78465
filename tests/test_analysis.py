"""analyze() on a hand-made run: every number below is worked out by hand from the records."""

from __future__ import annotations

import csv
import json
import math

import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from aesthetic_audit.analysis import analyze, write_tables
from aesthetic_audit.analysis.intervals import choose_cluster_unit, wilson_interval
from aesthetic_audit.config import AnalysisConfig
from aesthetic_audit.records import IMAGES, JUDGE, LABELS, SCORE, image_pair_key, judge_key, label_key, score_key
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


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    store, _ = build_store(tmp_path_factory.mktemp("analysis") / "run")
    return store, analyze(store, CONFIG, seed=3)


def _wilson(k: int, n: int, ci: float) -> tuple[float, float]:
    """The Wilson score interval from its formula (z from the normal quantile by bisection on erf)."""
    lo, hi = 0.0, 10.0
    for _ in range(200):
        z = (lo + hi) / 2
        lo, hi = (z, hi) if math.erf(z / math.sqrt(2)) < ci else (lo, z)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def _close(cell, value):
    assert cell["estimate"] == pytest.approx(value)
    assert cell["low"] <= cell["estimate"] + 1e-12 and cell["estimate"] <= cell["high"] + 1e-12


def test_shape_and_config(run):
    _, a = run
    json.dumps(a, allow_nan=False)  # strict JSON: undefined values are None
    assert set(a) == {"config", "n_pairs", "duplicates", "bootstrap", "dimensions", "labels", "label_sources",
                      "scorers", "judges", "safety", "failures"}
    assert a["config"] == {"bootstrap": 200, "ci": 0.9, "cluster": "auto", "seed": 3}
    assert a["n_pairs"] == 4 and a["duplicates"] == 0
    # every pair has its own I_o and prompt pair: nothing to cluster
    assert a["bootstrap"] == {"unit": "none", "n_clusters": 4}
    assert a["dimensions"] == ["clarity", "color brightness", "emotion"]
    assert list(a["scorers"]) == ["alpha", "beta", "blind", "nsfw"]


def test_prompt_aware_scorer(run):
    _, a = run
    s = a["scorers"]["alpha"]
    assert s["higher_is_better"] is True and s["prompt_aware"] is True and s["reward_model"] is True
    assert s["n"] == 4 and s["missing"] == 0
    # oidp > didp in pairs 1, 3, 4; didp > oidp in pair 2; no tie
    _close(s["prefer_original_share"], 0.75)
    _close(s["prefer_anti_share"], 0.25)
    assert s["ties"] == 0
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
    _close(strengths["0.7"]["prefer_anti_share"], 0.5)
    _close(strengths["0.7"]["delta_r"], -1.0)
    _close(strengths["n/a"]["delta_r"], -2.0)


def test_reward_model_test_on_labelled_pairs(run):
    _, a = run
    # Labelled: pair 1 (I_a), pair 2 (I_a), pair 3 (tie, dropped); pair 4 has no label.
    # Predictions didp > oidp: 2 > 3 no, 5 > 4 yes.
    rm = a["scorers"]["alpha"]["reward_model_test"]
    assert rm["n"] == 2 and rm["n_ties"] == 1 and rm["n_score_ties"] == 0 and rm["n_unlabelled"] == 1
    assert rm["label_source"] == "test"
    _close(rm["accuracy"], 0.5)
    _close(rm["f1"], 2 / 3)
    assert rm["accuracy"]["n"] == 2
    # two pairs: a resample holds 0, 1 or 2 correct ones, so the accuracy is 0, 1/2 or 1
    assert rm["accuracy"]["low"] in (0.0, 0.5) and rm["accuracy"]["high"] in (0.5, 1.0)
    assert rm["auroc"]["estimate"] is None  # one class only: undefined, not a number
    assert a["labels"]["counts"] == {"anti_aesthetic": 2, "original": 0, "tie": 1}
    _close(a["labels"]["success_rate"], 2 / 3)  # the tie is a failure


def test_no_reward_model_test_for_a_safety_classifier(run):
    _, a = run
    s = a["scorers"]["nsfw"]
    assert s["reward_model"] is False and s["prompt_aware"] is False
    assert s["reward_model_test"] is None  # although three of its pairs are labelled
    assert a["scorers"]["blind"]["prompt_aware"] is False and a["scorers"]["blind"]["reward_model"] is True


def test_lower_is_better_scorer_is_oriented_and_missing_counted(run):
    _, a = run
    s = a["scorers"]["beta"]
    assert s["higher_is_better"] is False
    assert s["n"] == 3 and s["missing"] == 1
    # lower is better: oidp < didp means the scorer prefers I_o: pairs 1 and 2 yes, pair 3 a tie (2 = 2)
    _close(s["prefer_original_share"], 2 / 3)
    _close(s["prefer_anti_share"], 0.0)
    assert s["ties"] == 1
    # the tie does not count as a wrong prediction of I_a's label... it predicts I_o: pairs 1, 2 -> I_o (wrong)
    rm = s["reward_model_test"]
    assert rm["n"] == 2 and rm["n_score_ties"] == 0
    _close(rm["accuracy"], 0.0)
    # Δr stays raw: diop - oiop = 1, 0, 0
    _close(s["delta_r"], 1 / 3)


def test_prompt_blind_scores_apply_to_both_prompts(run):
    _, a = run
    s = a["scorers"]["blind"]
    assert s["n"] == 4 and s["missing"] == 0
    # I_o above I_a: pair 1 yes, 2 no (I_a above), 3 tie, 4 yes
    _close(s["prefer_original_share"], 0.5)
    _close(s["prefer_anti_share"], 0.25)
    assert s["ties"] == 1
    w = s["prefer_original_wilson"]
    assert (w["estimate"], w["n"]) == (0.5, 4)
    assert (w["low"], w["high"]) == pytest.approx(_wilson(2, 4, 0.9))
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
    assert int(alpha["n"]) == 4 and int(alpha["ties"]) == 0 and alpha["prompt"] == "aware"
    assert float(alpha["prefer_original_share"]) == 0.75 and float(alpha["prefer_anti_share"]) == 0.25
    assert float(alpha["prefer_original_share_low"]) <= 0.75 <= float(alpha["prefer_original_share_high"])
    assert (float(alpha["prefer_original_wilson_low"]), float(alpha["prefer_original_wilson_high"])) == \
        pytest.approx(_wilson(3, 4, 0.9))
    assert float(alpha["delta_r"]) == -1.25
    assert float(alpha["rm_accuracy"]) == 0.5 and alpha["rm_n"] == "2" and alpha["rm_labels"] == "test"
    # a scorer without a test leaves its interval columns empty and says why; the columns stay aligned
    nsfw = next(r for r in rows if r["scorer"] == "nsfw")
    assert nsfw["rm_accuracy"] == nsfw["rm_accuracy_low"] == nsfw["rm_n"] == ""
    assert nsfw["rm_labels"] == "not a reward model" and nsfw["prompt"] == "blind"
    blind = next(r for r in rows if r["scorer"] == "blind")
    assert int(blind["ties"]) == 1 and float(blind["prefer_original_share"]) == 0.5
    md = (tmp_path / "tables" / "summary.md").read_text(encoding="utf-8")
    assert "| alpha | higher | aware | 4 | 0 | 0 | 0.750 [" in md
    assert "bootstrap (200 resamples) over 4 pairs" in md and "Wilson" in md
    tex = (tmp_path / "tables" / "dimensions.tex").read_text(encoding="utf-8")
    assert "\\toprule" in tex and "color brightness" in tex and "prefer\\_original\\_share" in tex
    with open(tmp_path / "tables" / "dimensions.csv", newline="", encoding="utf-8") as fh:
        dims = {(r["scorer"], r["dimension"]): r for r in csv.DictReader(fh)}
    # blind, emotion: pairs 3 (tie) and 4 (I_o)
    assert dims[("blind", "emotion")]["ties"] == "1" and float(dims[("blind", "emotion")]["prefer_anti_share"]) == 0


# -- labels, clusters, duplicates: small runs built for each rule -------------------------------------

def _pair_record(store: RunStore, i: int, source: int, prompt: int, label: dict | None) -> tuple[Record, dict]:
    """Pair ``i``: I_o is photo ``source`` (pairs with the same source share I_o), prompt pair ``prompt``."""
    sha_o = store.put_image(Image.new("RGB", (8, 8), (10 * source, 0, 0)))
    sha_a = store.put_image(Image.new("RGB", (8, 8), (0, 10 * i, 50)))
    data = {"pair_id": f"prompt{prompt}", "p_o": f"photo {source}", "p_a": f"a murky photo {i}", "dims": ["clarity"],
            "image_o": sha_o, "image_a": sha_a, "backend": "editor", "strength": None, "transforms": [],
            "label": label, "model": None, "source_item": None}
    key = image_pair_key(backend={"name": "editor"}, inputs={"i": i}, seed=0)
    return Record(key, IMAGES, f"pair{i}", {"image_pair_id": key, **data}), data


def _small_run(root, under_p_a, *, sources=None, prompts=None, labels=None, label_source="llm_selected"):
    """A run of one prompt-aware scorer "rm" whose scores under p_a are ``under_p_a`` = [(s_o, s_a)]
    (under p_o both images score 0); ``labels`` are the pairs' image-record labels."""
    store = RunStore(root)
    n = len(under_p_a)
    records, pairs = [], []
    for i in range(n):
        label = None if labels is None or labels[i] is None else {"value": labels[i], "source": label_source}
        rec, d = _pair_record(store, i, (sources or range(n))[i], (prompts or range(n))[i], label)
        records.append(rec)
        pairs.append(d)
        s_o, s_a = under_p_a[i]
        for image, prompt, value in ((d["image_o"], d["p_o"], 0.0), (d["image_o"], d["p_a"], s_o),
                                     (d["image_a"], d["p_o"], 0.0), (d["image_a"], d["p_a"], s_a)):
            records.append(_score("rm", image, prompt, value))
    store.put_many(records)
    return store, pairs


# Six pairs: scores under p_a (s_o, s_a) and the labeller's choice.
RM_SCORES = [(1, 3), (2, 2), (3, 1), (1, 2), (5, 0), (0, 4)]
RM_LABELS = [1, 1, 0, 0, -1, 1]


def test_reward_model_test_by_hand_with_score_and_label_ties(tmp_path):
    store, _ = _small_run(tmp_path / "run", RM_SCORES, labels=RM_LABELS)
    rm = analyze(store, CONFIG)["scorers"]["rm"]["reward_model_test"]
    # Pair 5 is a label tie: removed. Kept margins s_a - s_o: 2, 0, -2, 1, 4; truth 1, 1, 0, 0, 1.
    # Pair 2's score tie predicts I_o: predictions 1, 0, 0, 1, 1 -> 3 of 5 right; TP 2, FP 1, FN 1.
    assert rm["n"] == 5 and rm["n_ties"] == 1 and rm["n_score_ties"] == 1 and rm["n_unlabelled"] == 0
    assert rm["label_source"] == "llm_selected"  # an imported study's labels are a labeller's
    truth, margin = [1, 1, 0, 0, 1], [2, 0, -2, 1, 4]
    pred = [int(m > 0) for m in margin]
    _close(rm["accuracy"], 0.6)
    _close(rm["f1"], 2 / 3)
    _close(rm["auroc"], 5 / 6)  # positives 2, 0, 4 vs negatives -2, 1: 5 of 6 orderings right
    assert rm["accuracy"]["estimate"] == accuracy_score(truth, pred)
    assert rm["f1"]["estimate"] == pytest.approx(f1_score(truth, pred))
    assert rm["auroc"]["estimate"] == pytest.approx(roc_auc_score(truth, margin))
    assert all(rm[k]["n"] == 5 for k in ("accuracy", "f1", "auroc"))


def _label_record(pair: dict, value: int, source: str = "vlm:lab") -> Record:
    key = label_key(source=source, image_o=pair["image_o"], image_a=pair["image_a"], prompt=pair["p_a"], seed=0)
    return Record(key, LABELS, f"{source}:{pair['pair_id']}", {
        "source": source, "labeller": source.split(":")[1], "image_o": pair["image_o"],
        "image_a": pair["image_a"], "p_a": pair["p_a"], "value": value})


def test_construction_labels_never_feed_a_statistic(tmp_path):
    store, pairs = _small_run(tmp_path / "run", RM_SCORES, labels=[1] * 6, label_source="construction")
    a = analyze(store, CONFIG)
    assert a["scorers"]["rm"]["reward_model_test"] is None and a["labels"] is None
    with_tables = write_tables(a, tmp_path / "tables")
    with open(next(p for p in with_tables if p.name == "summary.csv"), newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["rm_accuracy"] == "" and row["rm_labels"] == "no labeller or human labels"
    # A labeller labels three pairs: the test and the success rate use those three only.
    store.put_many([_label_record(pairs[i], v) for i, v in ((0, 1), (2, 0), (4, -1))])
    a = analyze(store, CONFIG)
    rm = a["scorers"]["rm"]["reward_model_test"]
    assert rm["label_source"] == "vlm:lab" and rm["n"] == 2 and rm["n_ties"] == 1 and rm["n_unlabelled"] == 3
    _close(rm["accuracy"], 1.0)  # pair 1: 3 > 1 predicts I_a, right; pair 3: 1 < 3 predicts I_o, right
    assert a["labels"]["n"] == 3 and a["labels"]["source"] == "vlm:lab"
    _close(a["labels"]["success_rate"], 1 / 3)


def test_cluster_unit_auto_and_configured(tmp_path):
    scores = [(1, 0)] * 3 + [(0, 1)] * 3
    # six pairs edited from two photos (three each), all from distinct prompt pairs
    store, _ = _small_run(tmp_path / "photos", scores, sources=[0, 0, 0, 1, 1, 1])
    a = analyze(store, CONFIG)
    assert a["bootstrap"] == {"unit": "source_image", "n_clusters": 2}
    share = a["scorers"]["rm"]["prefer_original_share"]
    # Resampling two photos gives 0, 1/2 or 1 (probabilities 1/4, 1/2, 1/4): the 90% interval is [0, 1].
    assert (share["estimate"], share["low"], share["high"], share["n"]) == (0.5, 0.0, 1.0, 6)
    # Resampling the six pairs one by one is narrower: all six alike has probability 1/32 < 5% each side.
    single = analyze(store, CONFIG.model_copy(update={"cluster": "none"}))
    assert single["bootstrap"] == {"unit": "none", "n_clusters": 6}
    low, high = single["scorers"]["rm"]["prefer_original_share"]["low"], \
        single["scorers"]["rm"]["prefer_original_share"]["high"]
    assert 0.0 < low < 0.5 < high < 1.0
    by_prompt = analyze(store, CONFIG.model_copy(update={"cluster": "prompt"}))
    assert by_prompt["bootstrap"] == {"unit": "prompt", "n_clusters": 6} and by_prompt["config"]["cluster"] == "prompt"
    # distinct photos, two prompt pairs shared (as several generators rendering one prompt pair)
    store, _ = _small_run(tmp_path / "prompts", scores, prompts=[0, 1, 0, 1, 2, 3])
    assert analyze(store, CONFIG)["bootstrap"] == {"unit": "prompt", "n_clusters": 4}


def test_cluster_unit_choice():
    ids = {"source_image": ["a", "b", "c"], "prompt": ["p", "p", "q"]}
    assert choose_cluster_unit("auto", ids) == "prompt"
    assert choose_cluster_unit("auto", {**ids, "source_image": ["a", "a", "c"]}) == "source_image"
    assert choose_cluster_unit("auto", {"source_image": ["a", "b"], "prompt": ["p", "q"]}) == "none"
    assert choose_cluster_unit("auto", {"source_image": [], "prompt": []}) == "none"
    assert choose_cluster_unit("source_image", {"source_image": ["a", "b"], "prompt": ["p", "p"]}) == "source_image"
    with pytest.raises(ValueError, match="cluster unit"):
        choose_cluster_unit("caption", ids)


@pytest.mark.parametrize("k, n, ci", [(0, 5, 0.95), (3, 4, 0.9), (7, 7, 0.99), (13, 40, 0.95)])
def test_wilson_interval_matches_its_formula(k, n, ci):
    est, low, high = wilson_interval(k, n, ci)
    assert est == k / n and (low, high) == pytest.approx(_wilson(k, n, ci))
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_exact_duplicate_pairs_count_once(tmp_path):
    store, pairs = _small_run(tmp_path / "run", [(1, 0), (0, 1)])
    # the first pair stored again under another key (imported a second time, say)
    again = image_pair_key(backend={"name": "import"}, inputs={"again": 0}, seed=0)
    store.put(Record(again, IMAGES, "again", {"image_pair_id": again, **pairs[0]}))
    a = analyze(store, CONFIG)
    assert a["n_pairs"] == 2 and a["duplicates"] == 1
    s = a["scorers"]["rm"]
    assert s["n"] == 2
    _close(s["prefer_original_share"], 0.5)


# -- the generator axis: two generators over the same prompt pairs ------------------------------------

# Per prompt pair id: hps scores (oiop, oidp, diop, didp), label, J(I_a) clarity and emotion (J(I_o) is 2
# on both), clip r(I_a, p_a). Base also rendered prompt 5, which the aligned generator did not.
GENERATED = {
    "aligned": {0: ((5, 4, 7, 3), 1, (1.0, 2.0), 20), 1: ((6, 5, 8, 4), 0, (1.5, 2.0), 22),
                2: ((4, 3, 6, 5), 1, (0.0, 2.0), 24), 3: ((5, 5, 3, 2), 0, (2.0, 2.0), 26),
                4: ((7, 6, 9.5, 4), -1, (1.5, 1.5), 28)},
    "base": {5: ((1, 1, 1, 2), 1, (1.0, 1.0), 30), 4: ((6, 5, 5, 7), 0, (0.0, 0.5), 31),
             3: ((5, 4, 4, 5), 1, (0.5, 1.0), 30), 2: ((4, 3, 6.5, 4), 1, (1.0, 1.5), 30),
             1: ((5, 4, 5.5, 5), 1, (1.0, 1.0), 30), 0: ((5, 4, 4, 6), 1, (0.5, 0.5), 30)},
}
GEN_CONFIG = CONFIG.model_copy(update={"pairs_of_generators": {"aligned": "base", "absent": "base"}})


def build_generated(root) -> RunStore:
    """Pairs stored base first and in reverse prompt order, so only the prompt id can pair them."""
    store = RunStore(root)
    records = []
    for g, (model, rows) in enumerate(reversed(GENERATED.items())):
        for pid, (hps, label, (clarity, emotion), clip) in rows.items():
            sha_o = store.put_image(Image.new("RGB", (8, 8), (pid, g, 1)))
            sha_a = store.put_image(Image.new("RGB", (8, 8), (pid, g, 2)))
            p_o, p_a = f"a cat {pid}", f"a blurry cat {pid}"
            key = image_pair_key(backend={"name": "generate"}, inputs={"model": model, "pid": pid}, seed=0)
            records.append(Record(key, IMAGES, f"{model}:{pid}", {
                "image_pair_id": key, "pair_id": f"prompt{pid}", "p_o": p_o, "p_a": p_a, "dims": ["clarity"],
                "image_o": sha_o, "image_a": sha_a, "backend": "generate", "strength": None, "transforms": [],
                "label": {"value": label, "source": "test"}, "model": model, "source_item": None}))
            for value, (image, prompt) in zip(hps, [(sha_o, p_o), (sha_o, p_a), (sha_a, p_o), (sha_a, p_a)]):
                records.append(_score("hps", image, prompt, value))
            records.append(_score("clip", sha_a, p_a, clip))  # only r(I_a, p_a): prompt validity
            for sha, scores in ((sha_o, {"clarity": 2.0, "emotion": 2.0}),
                                (sha_a, {"clarity": clarity, "emotion": emotion})):
                records.append(Record(judge_key(judge={"name": "classical"}, image=sha, dims=sorted(scores)), JUDGE,
                                      sha[:8], {"judge": "classical", "image": sha, "scores": scores,
                                                "covered": sorted(scores)}))
    store.put_many(records)
    return store


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return analyze(build_generated(tmp_path_factory.mktemp("gen") / "run"), GEN_CONFIG, seed=1)


def test_by_model_blocks_by_hand(generated):
    a = generated
    assert a["models"] == ["aligned", "base"] and a["n_pairs"] == 11
    assert a["bootstrap"] == {"unit": "prompt", "n_clusters": 6}  # both generators rendered prompts 0-4
    al, base = a["by_model"]["aligned"], a["by_model"]["base"]
    assert (al["n_pairs"], al["n_clusters"], base["n_pairs"], base["n_clusters"]) == (5, 5, 6, 6)
    h = al["scorers"]["hps"]
    # under p_a (oidp vs didp): I_o above in prompts 0, 1, 3, 4; I_a above in 2
    assert h["n"] == 5 and h["ties"] == 0
    _close(h["prefer_original_share"], 0.8)
    _close(h["prefer_anti_share"], 0.2)
    _close(h["delta_r"], (2 + 2 + 2 - 2 + 2.5) / 5)
    _close(h["aa"], (7 + 8 + 6 + 3 + 9.5) / 5)
    # labels 1, 0, 1, 0 (the tie of prompt 4 removed); margins -1, -1, 2, -3 predict 0, 0, 1, 0
    assert h["reward_model_test"]["n"] == 4 and h["reward_model_test"]["n_ties"] == 1
    _close(h["reward_model_test"]["accuracy"], 0.75)
    b = base["scorers"]["hps"]
    _close(b["prefer_anti_share"], 1.0)
    _close(b["delta_r"], 0.0)  # -1, 0.5, 2.5, -1, -1 and 0 for prompt 5
    assert b["by_dimension"]["clarity"]["n"] == 6
    _close(al["labels"]["success_rate"], 0.4)  # 1, 0, 1, 0, tie: two of five
    _close(base["labels"]["success_rate"], 5 / 6)
    _close(al["judges"]["classical"]["delta_j"], (-1 - 0.5 - 2 + 0 - 1) / 5)
    _close(al["judges"]["classical"]["j_aa"], 3.1)


def test_generation_table_by_hand(generated):
    g = generated["generation"]
    assert g["alignment_scorer"] == "clip"  # the default: clip is in the run
    al, base = g["by_model"]["aligned"], g["by_model"]["base"]
    assert set(al["reward_models"]) == {"hps", "clip"} and al["n_pairs"] == 5
    _close(al["reward_models"]["hps"]["delta_r"], 1.3)
    _close(al["reward_models"]["hps"]["aa"], 6.7)
    _close(base["reward_models"]["hps"]["aa"], 26 / 6)
    assert al["reward_models"]["clip"]["delta_r"]["n"] == 0  # clip scored only (I_a, p_a)
    _close(al["judges"]["classical"]["delta_j"], -0.9)
    _close(base["judges"]["classical"]["j_aa"], 9.5 / 6)
    _close(al["prompt_validity"], 24.0)
    _close(base["prompt_validity"], 181 / 6)
    assert al["prompt_validity"]["n"] == 5 and base["prompt_validity"]["n"] == 6
    _close(al["success_rate"], 0.4)
    assert al["success_rate"]["n"] == 5


def test_holm_by_hand():
    from aesthetic_audit.analysis.audit import holm
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    out = holm([0.01, 0.04, 0.03, math.nan])
    assert out[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(out[3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def test_aligned_vs_base_by_hand(generated):
    from scipy.stats import binomtest, wilcoxon
    avb = generated["aligned_vs_base"]
    assert avb["not_in_run"] == [["absent", "base"]]
    (c,) = avb["comparisons"]
    assert (c["aligned"], c["base"], c["n_prompts"], c["repeated_prompts"]) == ("aligned", "base", 5, 0)
    tests = {(t["test"], t["source"]): t for t in c["tests"]}
    assert set(tests) == {("wilcoxon", "hps"), ("wilcoxon", "clip"), ("wilcoxon", "classical"), ("mcnemar", "test")}
    # hps r(I_a, p_o), prompts 0-4: aligned 7, 8, 6, 3, 9.5 vs base 4, 5.5, 6.5, 4, 5; differences 3, 2.5,
    # -0.5, -1, 4.5 have ranks 4, 3, 1, 2, 5: T+ = 12, and 5 of the 32 sign patterns reach 12 or more.
    h = tests[("wilcoxon", "hps")]
    assert h["statistic"] == 12 and h["pvalue"] == pytest.approx(5 / 32) and h["n_prompts"] == 5
    ref = wilcoxon([7, 8, 6, 3, 9.5], [4, 5.5, 6.5, 4, 5], alternative="greater")
    assert (h["statistic"], h["pvalue"]) == pytest.approx((ref.statistic, ref.pvalue))
    z = (12 - 5 * 6 / 4) / math.sqrt(5 * 6 * 11 / 24)
    assert h["effect_size"] == pytest.approx(z / math.sqrt(5))
    assert (h["mean_aligned"], h["mean_base"]) == pytest.approx((6.7, 5.0))
    # Σ_d J(I_a, d): aligned 3, 3.5, 2, 4, 3 vs base 1, 2, 2.5, 1.5, 0.5; differences 2, 1.5, -0.5, 2.5, 2.5
    # rank 3, 2, 1, 4.5, 4.5: T+ = 14; only "none negative" and "rank 1 negative" reach 14: p = 2/32
    j = tests[("wilcoxon", "classical")]
    assert j["statistic"] == 14 and j["pvalue"] == pytest.approx(2 / 32)
    assert j["pvalue"] == pytest.approx(wilcoxon([3, 3.5, 2, 4, 3], [1, 2, 2.5, 1.5, 0.5],
                                                 alternative="greater").pvalue)
    # success per prompt: aligned 1, 0, 1, 0, 0 (tie) vs base 1, 1, 1, 1, 0: b = 0, c = 2, p = P(X <= 0) = 1/4
    m = tests[("mcnemar", "test")]
    assert (m["b"], m["c"], m["n_prompts"]) == (0, 2, 5)
    assert m["pvalue"] == pytest.approx(0.25) == pytest.approx(binomtest(0, 2, 0.5, alternative="less").pvalue)
    assert (m["success_aligned"], m["success_base"]) == (0.4, 0.8)
    # clip has no r(I_a, p_o): no test, left out of Holm's m = 3
    assert tests[("wilcoxon", "clip")]["pvalue"] is None and tests[("wilcoxon", "clip")]["p_holm"] is None
    # Holm: 0.0625 * 3, max(0.1875, 0.15625 * 2), max(0.3125, 0.25 * 1)
    assert j["p_holm"] == pytest.approx(0.1875)
    assert h["p_holm"] == pytest.approx(0.3125) and m["p_holm"] == pytest.approx(0.3125)


def test_regression_of_reward_model_delta_on_judge_delta(generated):
    from scipy.stats import linregress
    fit = generated["by_model"]["aligned"]["scorers"]["hps"]["regression_on_judge"]["classical"]["clarity"]
    # Δ = didp − oidp: -1, -1, 2, -3, -2; ΔJ_clarity = J(I_a) − 2: -1, -0.5, -2, 0, -0.5
    ref = linregress([-1, -0.5, -2, 0, -0.5], [-1, -1, 2, -3, -2])
    assert fit["n"] == 5
    assert (fit["slope"], fit["intercept"], fit["r"], fit["p"]) == pytest.approx(
        (ref.slope, ref.intercept, ref.rvalue, ref.pvalue))
    # by hand: mean x = -0.8, mean y = -1; Sxy = -3.6 - 1.6 - 0.3 = -5.5, Sxx = 2.3
    assert fit["slope"] == pytest.approx(-5.5 / 2.3)
    assert fit["intercept"] == pytest.approx(-1 - 0.8 * 5.5 / 2.3)


def test_alignment_scorer_from_config_and_generator_tables(tmp_path):
    store = build_generated(tmp_path / "run")
    a = analyze(store, GEN_CONFIG.model_copy(update={"alignment_scorer": "hps"}))
    _close(a["generation"]["by_model"]["aligned"]["prompt_validity"], (3 + 4 + 5 + 2 + 4) / 5)
    paths = {p.name for p in write_tables(a, tmp_path / "tables")}
    assert {"generation.csv", "generation.md", "generation.tex", "aligned_vs_base.csv", "generators.csv"} <= paths
    with open(tmp_path / "tables" / "generation.csv", newline="", encoding="utf-8") as fh:
        rows = {r["generator"]: r for r in csv.DictReader(fh)}
    assert float(rows["aligned"]["delta_r_hps"]) == pytest.approx(1.3) and rows["base"]["n"] == "6"
    assert float(rows["aligned"]["success_rate"]) == pytest.approx(0.4)
    assert float(rows["aligned"]["delta_j_classical"]) == pytest.approx(-0.9)
    with open(tmp_path / "tables" / "aligned_vs_base.csv", newline="", encoding="utf-8") as fh:
        tests = {(r["test"], r["source"]): r for r in csv.DictReader(fh)}
    assert float(tests[("wilcoxon", "classical")]["p_holm"]) == pytest.approx(0.1875)
    assert tests[("mcnemar", "test")]["statistic"] == "b=0, c=2"
    # per generator and dimension, and the regression of each reward model's Δ on the judge's ΔJ_d
    with open(tmp_path / "tables" / "generators_dimensions.csv", newline="", encoding="utf-8") as fh:
        dims = {(r["generator"], r["scorer"], r["dimension"]): r for r in csv.DictReader(fh)}
    assert dims[("aligned", "hps", "clarity")]["n"] == "5" and dims[("base", "hps", "clarity")]["n"] == "6"
    assert float(dims[("aligned", "hps", "clarity")]["prefer_original_share"]) == pytest.approx(0.8)
    with open(tmp_path / "tables" / "regression_on_judge.csv", newline="", encoding="utf-8") as fh:
        reg = {(r["scorer"], r["judge"], r["dimension"]): r for r in csv.DictReader(fh)}
    fit = a["scorers"]["hps"]["regression_on_judge"]["classical"]["clarity"]
    assert float(reg[("hps", "classical", "clarity")]["slope"]) == pytest.approx(fit["slope"])


def test_one_lora_at_several_scales_gives_an_adapter_scale_axis(tmp_path):
    """Generators that differ only in their LoRA's scale are one adapter; per scale, the scorer's
    strict share on that scale's pairs (by hand: under p_a, I_o wins 2 of 2 at scale 0, 1 of 2 at 0.5,
    0 of 2 at 1)."""
    store = RunStore(tmp_path / "run")
    wins = {0.0: (True, True), 0.5: (True, False), 1.0: (False, False)}
    records = []
    for scale, outcomes in wins.items():
        generator = {"name": "diffusers", "model": {"repo": "base"}, "lora": {"sha256": "ab" * 32, "scale": scale},
                     "options": {"lora": "x.safetensors", "lora_scale": scale}}
        for pid, o_wins in enumerate(outcomes):
            sha_o = store.put_image(Image.new("RGB", (8, 8), (pid, int(scale * 10), 1)))
            sha_a = store.put_image(Image.new("RGB", (8, 8), (pid, int(scale * 10), 2)))
            p_o, p_a = f"a cat {pid}", f"a blurry cat {pid}"
            key = image_pair_key(backend={"name": "generate"}, inputs={"scale": scale, "pid": pid}, seed=0)
            records.append(Record(key, IMAGES, f"s{scale}:{pid}", {
                "image_pair_id": key, "pair_id": f"prompt{pid}", "p_o": p_o, "p_a": p_a, "dims": ["clarity"],
                "image_o": sha_o, "image_a": sha_a, "backend": "generate", "strength": None, "transforms": [],
                "label": None, "model": f"lora@{scale:g}", "generator": generator, "source_item": None}))
            for value, (image, prompt) in zip((5, 5 if o_wins else 1, 4, 3), [(sha_o, p_o), (sha_o, p_a),
                                                                               (sha_a, p_o), (sha_a, p_a)]):
                records.append(_score("hps", image, prompt, value))
    store.put_many(records)
    a = analyze(store, AnalysisConfig(bootstrap=100), seed=0)
    (block,) = a["adapter_scale"].values()
    assert block["models"] == ["lora@0", "lora@0.5", "lora@1"] and list(block["scales"]) == ["0", "0.5", "1"]
    for scale, expected in (("0", 1.0), ("0.5", 0.5), ("1", 0.0)):
        assert block["scales"][scale]["n_pairs"] == 2
        _close(block["scales"][scale]["scorers"]["hps"]["prefer_original_share"], expected)
    from aesthetic_audit.report import write_report

    page = write_report(store, a, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Adapter-scale curves" in page and "Share preferring the original against the adapter's scale" in page


def test_resampled_auroc_equals_sklearn_and_the_rank_sum_formula_with_ties():
    """The bootstrap's AUROC (binary search in the sorted negatives) is sklearn's roc_auc_score, and the
    very float the Mann-Whitney rank-sum formula gives, on margins with many ties."""
    import numpy as np
    from scipy.stats import rankdata

    from aesthetic_audit.analysis.audit import _resampled_auroc

    rng = np.random.default_rng(7)
    for _ in range(300):
        n = int(rng.integers(2, 200))
        margin = np.round(rng.normal(size=n), int(rng.integers(0, 3)))
        truth = rng.integers(0, 2, n)
        if truth.min() == truth.max():
            assert np.isnan(_resampled_auroc(margin, truth))
            continue
        got = _resampled_auroc(margin, truth)
        pos, neg = int(truth.sum()), int(n - truth.sum())
        assert got == float((rankdata(margin)[truth == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))
        assert got == pytest.approx(roc_auc_score(truth, margin), abs=1e-12)
