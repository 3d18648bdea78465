"""The analysis of the intent-aware reward: the "no regression" share under p_o of every scorer, and the λ
sweep recomputed from the parts an intent-aware score record stores. Every expected number is worked out
by hand below (all values are multiples of 1/8, so the sums are exact and ties are real ties)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from aesthetic_audit.analysis import analyze, write_tables
from aesthetic_audit.config import AnalysisConfig
from aesthetic_audit.records import IMAGES, SCORE, image_pair_key, score_key
from aesthetic_audit.report import write_report
from aesthetic_audit.store.run import Record, RunStore

CONFIG = AnalysisConfig(bootstrap=200, ci=0.9)
OWN_LAMBDA = 1.5
WEIGHTS = {"clarity": 1.0, "emotion": 0.5}
GRID = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0]  # the analysis's grid with the scorer's own λ added

# Per pair: requested dims, label (None: unlabelled), the aesthetic terms a_d of I_o and I_a, and the
# faithfulness of the four combinations in the paper's order (oiop, oidp, diop, didp).
PAIRS = [
    (["clarity"], 1, {"clarity": 0.75, "emotion": 0.25}, {"clarity": -0.5, "emotion": 0.25}, (0.5, 0.25, 0.25, 0.5)),
    (["emotion"], 1, {"clarity": 0.5, "emotion": 0.5}, {"clarity": 0.5, "emotion": -0.5}, (0.25, 0.5, 0.5, 0.25)),
    (["clarity", "emotion"], 0, {"clarity": 0.25, "emotion": 0.0}, {"clarity": 0.25, "emotion": 0.5},
     (0.5, 0.5, 0.5, 0.25)),
    (["clarity"], None, {"clarity": 1.0, "emotion": 1.0}, {"clarity": -1.0, "emotion": 1.0}, (0.25, 0.75, 0.75, 0.25)),
]
# With g = Σ_d w_d s_d a_d (s_d = -1 for a requested d under p_a, +1 otherwise), r = f + λ g and
# D = r(I_o) - r(I_a) under one prompt:
#   pair 0: D_a = -0.25 - 1.25 λ (I_a always)       D_o = 0.25 + 1.25 λ (I_o always)
#   pair 1: D_a =  0.25 - 0.5 λ  (tie at λ = 0.5)   D_o = -0.25 + 0.5 λ (tie at 0.5)
#   pair 2: D_a =  0.25 + 0.25 λ (I_o always)       D_o = -0.25 λ       (tie at 0, then I_a)
#   pair 3: D_a =  0.5 - 2 λ     (tie at λ = 0.25)  D_o = -0.5 + 2 λ    (tie at 0.25)
# Counts per λ of GRID: (prefers I_o under p_a, ties under p_a, prefers I_o under p_o, ties under p_o).
EXPECTED = {0.0: (3, 0, 1, 1), 0.25: (2, 1, 1, 1), 0.5: (1, 1, 2, 1), 1.0: (1, 0, 3, 0), 1.5: (1, 0, 3, 0),
            2.0: (1, 0, 3, 0), 4.0: (1, 0, 3, 0)}
# A plain prompt-aware scorer (oiop, oidp, diop, didp) and a prompt-blind, lower-is-better one (I_o, I_a).
PLAIN = [(3, 1, 2, 2), (1, 2, 1, 1), (2, 2, 4, 1), (5, 0, 1, 0)]
BLIND = [(1, 3), (2, 2), (4, 1), (0.5, 0.25)]


def _intent(terms: dict[str, float], dims: list[str], prompt_is_anti: bool, f: float) -> tuple[float, dict]:
    signs = {d: -1 if prompt_is_anti and d in dims else 1 for d in terms}
    g = sum(WEIGHTS[d] * signs[d] * a for d, a in terms.items())
    return f + OWN_LAMBDA * g, {"faithfulness": f, "terms": terms, "signs": signs, "weights": WEIGHTS,
                                "lambda": OWN_LAMBDA, "requested": {d: 1.0 for d in dims if prompt_is_anti},
                                "negated": []}


def _score(scorer: str, image: str, prompt: str | None, value: float, hib: bool = True,
           intent: dict | None = None) -> Record:
    data = {"scorer": scorer, "image": image, "prompt": prompt, "score": value, "tokens": None,
            "truncated": None, "higher_is_better": hib, **({"extra": {"intent": intent}} if intent else {})}
    return Record(key=score_key(scorer={"name": scorer}, image=image, prompt=prompt), stage=SCORE,
                  item=f"{scorer}:{image[:8]}", data=data)


def build(root, *, intent: bool = True, models: tuple[str | None, ...] = (None,) * 4,
          corrupt: bool = False, p_o_asks: tuple[int, ...] = ()) -> RunStore:
    """The four pairs, scored by "plain", "blind" and (``intent``) "intent-aware". ``models``: the generator
    of each pair (None: the editor's); ``corrupt``: pair 3's r(I_a, p_a) record has parts that do not add up;
    ``p_o_asks``: the pairs whose p_o the parser read as requesting something (the parts still add up)."""
    store = RunStore(root)
    records = []
    for i, (dims, label, a_o, a_a, faith) in enumerate(PAIRS):
        sha_o = store.put_image(Image.new("RGB", (16, 12), (30 * i, 100, 200)))
        sha_a = store.put_image(Image.new("RGB", (16, 12), (30 * i, 20, 20)))
        p_o, p_a = f"a photo of thing {i}", f"a blurry photo of thing {i}"
        key = image_pair_key(backend={"name": "editor"}, inputs={"i": i}, seed=0)
        records.append(Record(key=key, stage=IMAGES, item=f"pair{i}", data={
            "image_pair_id": key, "pair_id": f"pair{i}", "p_o": p_o, "p_a": p_a, "dims": dims, "image_o": sha_o,
            "image_a": sha_a, "backend": "editor" if models[i] is None else "import", "strength": None,
            "transforms": [], "label": None if label is None else {"value": label, "source": "test"},
            "model": models[i], "source_item": None}))
        combos = [(sha_o, p_o, a_o, False), (sha_o, p_a, a_o, True), (sha_a, p_o, a_a, False), (sha_a, p_a, a_a, True)]
        for j, (image, prompt, terms, anti) in enumerate(combos):
            records.append(_score("plain", image, prompt, PLAIN[i][j]))
            if intent:
                value, parts = _intent(terms, dims, anti, faith[j])
                if corrupt and i == 3 and j == 3:
                    parts = {**parts, "faithfulness": faith[j] + 0.5}
                if i in p_o_asks and not anti:
                    parts = {**parts, "requested": {"color brightness": 1.0}}
                records.append(_score("intent-aware", image, prompt, value, intent=parts))
        records.append(_score("blind", sha_o, None, BLIND[i][0], hib=False))
        records.append(_score("blind", sha_a, None, BLIND[i][1], hib=False))
    store.put_many(records)
    return store


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    store = build(tmp_path_factory.mktemp("intent") / "run")
    return store, analyze(store, CONFIG, seed=5)


def _wilson(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.9, method="wilson")
    return ci.low, ci.high


def _check(cell: dict, wilson: dict, k: int, n: int) -> None:
    assert cell["estimate"] == pytest.approx(k / n) and cell["n"] == n
    assert cell["low"] <= cell["estimate"] + 1e-12 and cell["estimate"] <= cell["high"] + 1e-12
    assert (wilson["low"], wilson["high"]) == pytest.approx(_wilson(k, n))


def test_prefer_original_under_p_o_is_a_hand_count(run):
    _, a = run
    plain, blind = a["scorers"]["plain"], a["scorers"]["blind"]
    # plain under p_o: 3 > 2 (I_o), 1 = 1 (tie), 2 < 4 (I_a), 5 > 1 (I_o)
    _check(plain["prefer_original_under_p_o"], plain["prefer_original_under_p_o_wilson"], 2, 4)
    assert plain["ties_under_p_o"] == 1
    # blind, lower is better, one score per image: 1 < 3 (I_o), 2 = 2 (tie), 4 > 1 (I_a), 0.5 > 0.25 (I_a)
    _check(blind["prefer_original_under_p_o"], blind["prefer_original_under_p_o_wilson"], 1, 4)
    assert blind["ties_under_p_o"] == 1
    # prompt-blind: the same preference under both prompts
    assert blind["prefer_original_under_p_o"] == blind["prefer_original_share"]
    # the intent-aware scorer at its own λ = 1.5: EXPECTED[1.5]
    s = a["scorers"]["intent-aware"]
    _check(s["prefer_original_under_p_o"], s["prefer_original_under_p_o_wilson"], 3, 4)
    assert s["ties_under_p_o"] == 0
    assert plain["lambda_sweep"] is None and blind["lambda_sweep"] is None


def test_lambda_sweep_matches_hand_counts(run):
    _, a = run
    sweep = a["scorers"]["intent-aware"]["lambda_sweep"]
    assert sweep["own_lambda"] == [OWN_LAMBDA] and sweep["n"] == 4 and sweep["missing"] == 0
    assert [pt["lambda"] for pt in sweep["points"]] == GRID
    for pt in sweep["points"]:
        k_a, ties_a, k_o, ties_o = EXPECTED[pt["lambda"]]
        _check(pt["prefer_original_share"], pt["prefer_original_wilson"], k_a, 4)
        _check(pt["prefer_original_under_p_o"], pt["prefer_original_under_p_o_wilson"], k_o, 4)
        assert (pt["ties"], pt["ties_under_p_o"]) == (ties_a, ties_o), pt["lambda"]
        assert pt["prefer_anti_share"]["estimate"] == pytest.approx((4 - k_a - ties_a) / 4)


def test_sweep_at_own_lambda_equals_the_scorers_row(run):
    _, a = run
    s = a["scorers"]["intent-aware"]
    own = next(pt for pt in s["lambda_sweep"]["points"] if pt["lambda"] == OWN_LAMBDA)
    for key in ("n", "ties", "prefer_original_share", "prefer_original_wilson", "prefer_anti_share",
                "prefer_anti_wilson", "delta_r", "prefer_original_under_p_o", "prefer_original_under_p_o_wilson",
                "ties_under_p_o", "reward_model_test"):
        assert own[key] == s[key], key


def _recomputed(lam: float) -> tuple[list[float], list[float], list[int]]:
    """r(I_a, p_a), r(I_o, p_a) and the label of the labelled pairs, from the parts, by this test's own sums."""
    r_a, r_o, labels = [], [], []
    for dims, label, a_o, a_a, faith in PAIRS:
        if label is None:
            continue
        g = {k: sum(WEIGHTS[d] * (-1 if d in dims else 1) * v for d, v in terms.items())
             for k, terms in (("o", a_o), ("a", a_a))}
        r_o.append(faith[1] + lam * g["o"])
        r_a.append(faith[3] + lam * g["a"])
        labels.append(label)
    return r_a, r_o, labels


def test_sweep_reward_model_test_equals_sklearn(run):
    _, a = run
    for pt in a["scorers"]["intent-aware"]["lambda_sweep"]["points"]:
        r_a, r_o, labels = _recomputed(pt["lambda"])
        pred = (np.array(r_a) > np.array(r_o)).astype(int)
        rm = pt["reward_model_test"]
        assert rm["n"] == 3 and rm["n_unlabelled"] == 1 and rm["label_source"] == "test"
        assert rm["accuracy"]["estimate"] == pytest.approx(accuracy_score(labels, pred))
        assert rm["f1"]["estimate"] == pytest.approx(f1_score(labels, pred))
        p = np.exp(r_a) / (np.exp(r_a) + np.exp(r_o))
        assert rm["auroc"]["estimate"] == pytest.approx(roc_auc_score(labels, p))
    # by hand: at λ = 0 pair 1 is predicted I_o (wrong), at λ = 1 all three are right
    points = {pt["lambda"]: pt["reward_model_test"] for pt in a["scorers"]["intent-aware"]["lambda_sweep"]["points"]}
    assert points[0.0]["accuracy"]["estimate"] == pytest.approx(2 / 3)
    assert points[1.0]["accuracy"]["estimate"] == 1.0


def test_parts_that_do_not_add_up_leave_the_pair_out(tmp_path):
    a = analyze(build(tmp_path / "run", corrupt=True), CONFIG, seed=5)
    sweep = a["scorers"]["intent-aware"]["lambda_sweep"]
    assert sweep["n"] == 3 and sweep["missing"] == 1
    at_zero = sweep["points"][0]  # pairs 0-2 at λ = 0: I_a, I_o, I_o under p_a
    assert at_zero["prefer_original_share"]["estimate"] == pytest.approx(2 / 3)
    assert a["scorers"]["intent-aware"]["n"] == 4  # the score itself still counts


def test_sweep_per_generator(tmp_path):
    a = analyze(build(tmp_path / "run", models=("gen-a", "gen-a", "gen-b", "gen-b")), CONFIG, seed=5)
    sweep_a = a["by_model"]["gen-a"]["scorers"]["intent-aware"]["lambda_sweep"]
    sweep_b = a["by_model"]["gen-b"]["scorers"]["intent-aware"]["lambda_sweep"]
    assert sweep_a["n"] == 2 and sweep_b["n"] == 2
    # gen-a holds pairs 0 and 1: at λ = 0 under p_a, I_a and I_o; gen-b (pairs 2, 3): I_o and I_o
    assert sweep_a["points"][0]["prefer_original_share"]["estimate"] == 0.5
    assert sweep_b["points"][0]["prefer_original_share"]["estimate"] == 1.0
    assert a["by_model"]["gen-a"]["scorers"]["plain"]["lambda_sweep"] is None


def test_tables_and_report_show_the_sweep(run, tmp_path):
    store, a = run
    write_tables(a, tmp_path / "tables")
    with open(tmp_path / "tables" / "summary.csv", newline="", encoding="utf-8") as fh:
        rows = {r["scorer"]: r for r in csv.DictReader(fh)}
    assert float(rows["plain"]["prefer_original_under_p_o"]) == 0.5 and rows["plain"]["ties_under_p_o"] == "1"
    assert float(rows["blind"]["prefer_original_under_p_o"]) == 0.25
    assert rows["plain"]["prefer_original_under_p_o_wilson_low"] != ""
    with open(tmp_path / "tables" / "lambda_sweep.csv", newline="", encoding="utf-8") as fh:
        sweep = list(csv.DictReader(fh))
    assert [float(r["lambda"]) for r in sweep] == GRID
    assert [r["own"] for r in sweep] == ["own" if lam == OWN_LAMBDA else "" for lam in GRID]
    assert [float(r["prefer_original_share"]) for r in sweep] == [EXPECTED[lam][0] / 4 for lam in GRID]
    text = write_report(store, a, tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'id="lambda-sweep"' in text and text.count('aria-label="Intent-aware reward: shares against') == 1
    assert "r(I, p) = faithfulness(I, p) + λ Σ_d w_d s_d(p) a_d(I)" in text and "λ = 1.5" in text
    assert "prefers original under p_o" in text
    # the summary's no-regression sentence: 3 of 4 pairs at λ = 1.5, no tie
    assert ("Under the original prompt p_o, intent-aware (λ = 1.5) still preferred the conventional image "
            "in 75%") in text
    assert "of 4 pairs." in text


def test_no_sweep_no_chart(tmp_path):
    store = build(tmp_path / "run", intent=False)
    a = analyze(store, CONFIG, seed=5)
    assert all(s["lambda_sweep"] is None for s in a["scorers"].values())
    paths = write_tables(a, tmp_path / "tables")
    assert not any(p.name.startswith("lambda_sweep") for p in paths)
    text = write_report(store, a, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "lambda-sweep" not in text and "Intent-aware reward" not in text
    assert "prefers original under p_o" in text  # the no-regression column is there for every scorer


def test_the_no_regression_share_on_pairs_whose_p_o_asks_nothing(tmp_path):
    """Pair 3's p_o is read as a request: the plain-p_o share leaves it out. From the D_o lines above,
    without pair 3: λ = 0: I_o on pair 0, pair 1 to I_a, pair 2 a tie; 0.25: pair 0 only; 0.5: pair 0,
    pair 1 a tie; from 1: pairs 0 and 1."""
    a = analyze(build(tmp_path / "run", p_o_asks=(3,)), CONFIG, seed=5)
    want = {0.0: (1, 1), 0.25: (1, 0), 0.5: (1, 1), 1.0: (2, 0), 1.5: (2, 0), 2.0: (2, 0), 4.0: (2, 0)}
    points = a["scorers"]["intent-aware"]["lambda_sweep"]["points"]
    assert [pt["lambda"] for pt in points] == GRID
    for pt in points:
        k, ties = want[pt["lambda"]]
        assert pt["n_plain_p_o"] == 3 and pt["ties_under_plain_p_o"] == ties
        _check(pt["prefer_original_under_plain_p_o"], pt["prefer_original_under_plain_p_o_wilson"], k, 3)
        # the share on every pair is unchanged by what the parser read
        assert pt["prefer_original_under_p_o"]["estimate"] == pytest.approx(EXPECTED[pt["lambda"]][2] / 4)
