"""A VLM as a pairwise reward model (``vlm-pair``) against a stub OpenAI-compatible server.

Expected values come from how the test built each pair (which image is darker, the labels imported
with it, the probabilities the stub hands out) and from scikit-learn, never from our own output.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from aesthetic_audit.errors import ConfigError
from aesthetic_audit.hashing import spec_hash
from aesthetic_audit.labels.vlm import first_shown
from aesthetic_audit.pipeline import Run
from aesthetic_audit.records import score_key
from aesthetic_audit.scorers.base import Scorer, ScoreResult
from aesthetic_audit.scorers.stage import run_score
from aesthetic_audit.scorers.vlm_pairwise import VLMPairwise
from aesthetic_audit.store import RunStore
from fake_vlm import FakeVLM, chat, logprobs, status, text_of


def _import_pairs(tmp_path, cli, dark_is_a, labels):
    """Pairs item-00.. of one bright and one dark noise image; ``dark_is_a[i]`` says which is I_a;
    ``labels`` is the imported label column (1 I_a, 0 I_o, -1 tie)."""
    rng = np.random.default_rng(0)
    lines = ["image_o,image_a,p_o,p_a,dims,label"]
    for i, (dark_a, label) in enumerate(zip(dark_is_a, labels)):
        bright = (rng.random((24, 24, 3)) * 100 + 150).astype(np.uint8)
        dark = (rng.random((24, 24, 3)) * 60).astype(np.uint8)
        o, a = (bright, dark) if dark_a else (dark, bright)
        Image.fromarray(o).save(tmp_path / f"{i}o.png")
        Image.fromarray(a).save(tmp_path / f"{i}a.png")
        lines.append(f"{i}o.png,{i}a.png,A cat {i}.,A very dark cat item-{i:02d}.,color brightness,{label}")
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    assert cli("import", run, tmp_path / "pairs.csv")[0] == 0
    return run


def _shown_means(body):
    """Mean pixel value of each image in the request, in the order shown."""
    urls = [p["image_url"]["url"] for p in body["messages"][-1]["content"] if p["type"] == "image_url"]
    return [float(np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))).mean()) for u in urls]


def _darker_json(body):
    means = _shown_means(body)
    return chat(json.dumps({"selection": int(means[1] < means[0])}))


def _serve(server, n, answer):
    """``answer`` for every pair's requests (the stub keys requests by the item-NN token of p_a)."""
    for i in range(n):
        server.defaults[f"item-{i:02d}"] = answer


def _options(server, *pairs):
    out = []
    for k, v in {"url": server.base_url, "model": "judge-m", "retries": 0, "backoff_s": 0, **dict(pairs)}.items():
        out += ["--set", f"score.options.vlm-pair.{k}={v}"]
    return out


def _pair_records(run):
    return {r.data["prompt"]: r for r in RunStore(run).records("score", status=None) if r.data.get("pairwise")}


def test_json_answers_in_either_order_map_back_faults_fail_alone_and_resume_skips_done_pairs(tmp_path, cli):
    dark_is_a = [True, False, True, False, True, False, True, True]
    run = _import_pairs(tmp_path, cli, dark_is_a, [1] * 8)
    with FakeVLM() as server:
        _serve(server, 8, _darker_json)
        server.script("item-03", chat('{"selection": -1}'))  # a tie
        server.script("item-04", chat("I like the second"), chat("still not json"))  # malformed, re-asked once
        server.script("item-05", chat("hmm"))  # malformed once, then the default answer
        server.script("item-06", status(500))  # transport fault (no retries configured)
        server.script("item-07", status(400, "bad request"))  # refused, not retried
        code, _, err = cli("score", run, "--scorers", "vlm-pair", *_options(server, ("max_reasks", 1)))
        assert code == 1 and "Traceback" not in err, err  # failed items make the exit status 1; the run went on
        assert "score:vlm-pair: 8 items, 5 new, 0 cached, 3 failed" in err
        recs = _pair_records(run)
        assert len(recs) == 8
        firsts = set()
        for i in range(8):
            rec = recs[f"A very dark cat item-{i:02d}."]
            d = rec.data
            order = first_shown(spec_hash({"seed": 0, "image_o": d["image_o"], "image_a": d["image_a"],
                                           "p_a": d["prompt"]}))
            if i in (4, 6, 7):
                assert rec.status == "failed"
                continue
            assert rec.status == "ok" and d["pairwise"] is True and d["prob_a"] is None
            assert d["answers"][0]["first"] == order
            firsts.add(order)
            # the server always picks the darker image: I_a where the pair's I_a is the dark one
            assert d["prefers"] == (-1 if i == 3 else 1 if dark_is_a[i] else 0)
            identity = VLMPairwise(url=server.base_url, model="judge-m", retries=0, backoff_s=0,
                                   max_reasks=1).identity()
            assert rec.key == score_key(scorer=identity, image=[d["image_o"], d["image_a"]], prompt=d["prompt"])
        assert firsts == {"o", "a"}  # both presentation orders occurred
        assert "no JSON object" in recs["A very dark cat item-04."].error
        assert "HTTP 500" in recs["A very dark cat item-06."].error
        assert "HTTP 400" in recs["A very dark cat item-07."].error
        assert len(server.requests("item-04")) == 2 and len(server.requests("item-05")) == 2
        asked = len(server.received)
        code, _, err = cli("score", run)  # the scorer and its options persist in the run's config
        assert "0 new, 5 cached, 3 failed" in err and len(server.received) == asked
        code, _, err = cli("score", run, "--retry-failed")
        assert code == 0 and "3 new, 5 cached, 0 failed" in err
        assert len(server.received) == asked + 3  # only the failed pairs were asked again


def test_json_answers_give_accuracy_and_f1_as_sklearn_and_no_auroc(tmp_path, cli):
    dark_is_a = [True, False, True, True, False, True, False, True, True]
    labels = [1, 1, 0, 1, 0, -1, 1, 1, 0]
    run = _import_pairs(tmp_path, cli, dark_is_a, labels)
    with FakeVLM() as server:
        _serve(server, 9, _darker_json)
        server.script("item-07", chat('{"selection": -1}'))  # a tie answer on a pair labelled I_a
        assert cli("score", run, "--scorers", "vlm-pair", *_options(server))[0] == 0
    analysis = Run.open(run).analyze()
    s = analysis["scorers"]["vlm-pair"]
    prefers = [-1 if i == 7 else 1 if d else 0 for i, d in enumerate(dark_is_a)]
    keep = [i for i, lab in enumerate(labels) if lab != -1]
    y = [int(labels[i] == 1) for i in keep]
    pred = [int(prefers[i] == 1) for i in keep]  # a tie answer predicts "not I_a"
    rm = s["reward_model_test"]
    assert s["pairwise"] is True and s["probabilities"] is False
    assert rm["accuracy"]["estimate"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert rm["f1"]["estimate"] == pytest.approx(f1_score(y, pred), abs=1e-12)
    assert rm["auroc"]["estimate"] is None and "without probabilities" in rm["auroc_note"]
    assert (rm["n"], rm["n_ties"], rm["n_score_ties"]) == (len(keep), 1, 1)
    assert rm["accuracy"]["low"] <= rm["accuracy"]["estimate"] <= rm["accuracy"]["high"]
    # the strict shares count the answers; ties apart; no Δr or AA without scores
    assert (s["n"], s["ties"], s["missing"]) == (9, 1, 0)
    assert s["prefer_anti_share"]["estimate"] == pytest.approx(sum(p == 1 for p in prefers) / 9)
    assert s["prefer_original_share"]["estimate"] == pytest.approx(sum(p == 0 for p in prefers) / 9)
    assert s["delta_r"] is None and s["aa"] is None and s["regression_on_judge"] == {}
    assert s["by_dimension"]["color brightness"]["n"] == 9


def test_two_models_in_one_run_as_name_alias_instances(tmp_path, cli):
    """vlm-pair:dark and vlm-pair:bright are two instances with their own options, records and rows."""
    dark_is_a = [True, False, True, False]
    run = _import_pairs(tmp_path, cli, dark_is_a, [1, 0, 1, 1])

    def brighter(body):
        means = _shown_means(body)
        return chat(json.dumps({"selection": int(means[1] > means[0])}))

    with FakeVLM() as dark, FakeVLM() as bright:
        _serve(dark, 4, _darker_json)
        _serve(bright, 4, brighter)
        sets = []
        for alias, server in (("dark", dark), ("bright", bright)):
            for k, v in {"url": server.base_url, "model": f"m-{alias}", "retries": 0, "backoff_s": 0}.items():
                sets += ["--set", f"score.options.vlm-pair:{alias}.{k}={v}"]
        code, _, err = cli("score", run, "--scorers", "vlm-pair:dark,vlm-pair:bright", *sets)
        assert code == 0, err
        assert len(dark.received) == len(bright.received) == 4
    names = {r.data["scorer"] for r in RunStore(run).records("score")}
    assert names == {"vlm-pair:dark", "vlm-pair:bright"}
    scorers = Run.open(run).analyze()["scorers"]
    for alias, prefers_a in (("dark", dark_is_a), ("bright", [not d for d in dark_is_a])):
        s = scorers[f"vlm-pair:{alias}"]
        assert s["pairwise"] is True and f"m-{alias}" in s["backend"]
        assert s["prefer_anti_share"]["estimate"] == pytest.approx(sum(prefers_a) / 4)
    code, _, err = cli("score", run, "--scorers", "vlm-pair:x")  # an alias without options: the base's check
    assert code == 1 and "scorer vlm-pair:x: needs either `model`" in err and "Traceback" not in err


PROBS = [0.9, 0.2, 0.65, 0.5, 0.35, 0.8, 0.1, 0.55, 0.3, 0.7]
PROB_LABELS = [1, 0, 1, 1, 0, 1, -1, 0, 1, 0]


def _answer_with(prob_of_dark):
    """Digits "1"/"2" with log-probabilities such that the darker image (I_a) has ``prob_of_dark[i]``."""

    def answer(body):
        i = int(re.search(r"item-(\d+)", text_of(body)).group(1))
        means = _shown_means(body)
        q = prob_of_dark(i)
        p_first = q if means[0] < means[1] else 1 - q
        return logprobs([("1", math.log(p_first)), ("2", math.log(1 - p_first)), ("The", -9.0)])

    return answer


def test_probabilities_from_logprobs_give_the_auroc_sklearn_computes(tmp_path, cli):
    run = _import_pairs(tmp_path, cli, [True] * len(PROBS), PROB_LABELS)
    with FakeVLM() as server:
        _serve(server, len(PROBS), _answer_with(lambda i: PROBS[i]))
        code, _, err = cli("score", run, "--scorers", "vlm-pair", *_options(server, ("answer", "probs")))
        assert code == 0, err
        body = server.received[0]["body"]
        assert body["max_tokens"] == 1 and body["logprobs"] is True  # read as answer-token probabilities
    recs = _pair_records(run)
    for i, q in enumerate(PROBS):
        d = recs[f"A very dark cat item-{i:02d}."].data
        assert d["prob_a"] == pytest.approx(q, abs=1e-12) and d["discrete"] is False
        assert d["prefers"] == (1 if q > 0.5 else 0 if q < 0.5 else -1)
    rm = Run.open(run).analyze()["scorers"]["vlm-pair"]["reward_model_test"]
    keep = [i for i, lab in enumerate(PROB_LABELS) if lab != -1]
    y = [int(PROB_LABELS[i] == 1) for i in keep]
    q = [PROBS[i] for i in keep]
    assert rm["auroc"]["estimate"] == pytest.approx(roc_auc_score(y, q), abs=1e-12)
    assert rm["accuracy"]["estimate"] == pytest.approx(accuracy_score(y, [int(v > 0.5) for v in q]), abs=1e-12)
    assert rm["f1"]["estimate"] == pytest.approx(f1_score(y, [int(v > 0.5) for v in q]), abs=1e-12)
    assert rm["n_score_ties"] == 1 and "auroc_note" not in rm  # the one pair at exactly 0.5
    assert rm["auroc"]["low"] <= rm["auroc"]["estimate"] <= rm["auroc"]["high"]


def test_both_orders_average_out_a_position_bias(tmp_path, cli):
    run = _import_pairs(tmp_path, cli, [True, False], [1, 0])
    with FakeVLM() as server:
        # always 0.8 for the image shown first, whichever it is: no preference once both orders are asked
        _serve(server, 2, logprobs([("1", math.log(0.8)), ("2", math.log(0.2))]))
        assert cli("score", run, "--scorers", "vlm-pair",
                   *_options(server, ("answer", "probs"), ("both_orders", "true")))[0] == 0
        assert len(server.received) == 4
    for rec in _pair_records(run).values():
        assert [a["first"] for a in rec.data["answers"]] == ["o", "a"]
        assert [a["prob_a"] for a in rec.data["answers"]] == pytest.approx([0.2, 0.8], abs=1e-12)
        assert rec.data["prob_a"] == pytest.approx(0.5, abs=1e-12)


class Brightness(Scorer):
    """A scalar reward model for the report's side-by-side row: the mean pixel value."""

    name = "brightness-test"

    def _score(self, items):
        return [ScoreResult(float(np.asarray(img).mean())) for img, _ in items]


def test_the_report_and_tables_show_a_pairwise_row_beside_a_scalar_one(tmp_path, cli):
    run = _import_pairs(tmp_path, cli, [True, False, True], [1, 0, 1])
    with FakeVLM() as server:
        _serve(server, 3, _darker_json)
        assert cli("score", run, "--scorers", "vlm-pair", *_options(server))[0] == 0
    run_score(RunStore(run), Brightness())
    code, _, err = cli("report", run)
    assert code == 0, err
    html = (run / "report.html").read_text()
    assert "vlm-pair" in html and "brightness-test" in html and "pairwise: vlm-pair (judge-m at" in html
    assert "AUROC not available" in html
    assert html.count("vlm-pair: prefers I_a") == 2 and html.count("vlm-pair: prefers I_o") == 1  # gallery cards
    rows = {line.split(",")[0]: line.split(",") for line in (run / "tables" / "summary.csv").read_text().splitlines()}
    assert rows["vlm-pair"][1] == "pairwise" and rows["brightness-test"][1] == "higher"


def test_bad_options_and_misuse_are_one_line_errors(tmp_path, cli):
    run = _import_pairs(tmp_path, cli, [True], [1])
    code, _, err = cli("score", run, "--scorers", "vlm-pair", "--set", "score.options.vlm-pair.url=http://x/v1",
                       "--set", "score.options.vlm-pair.model=m", "--set", "score.options.vlm-pair.answer=maybe")
    assert code == 2 and "answer must be one of json, probs" in err and "Traceback" not in err
    scorer = VLMPairwise(url="http://localhost:1/v1", model="m")
    with pytest.raises(ConfigError, match="pairwise reward model"):
        scorer.score([(Image.new("RGB", (8, 8)), "p")])


def test_local_qwen_vl_probabilities_are_the_models_own(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_vlm_local import Reference
    from tiny.qwen_vl import build, model_class

    from aesthetic_audit.labels.vlm import PairItem
    from aesthetic_audit.scorers.vlm_pairwise import PROBS_INSTRUCTION, PROBS_SYSTEM
    from aesthetic_audit.vlm.base import Prompt

    folder = build(tmp_path / "qwen", "qwen2_vl")
    scorer = VLMPairwise(model=str(folder), device="cpu", dtype="fp32", answer="probs", image_size=56)
    rng = np.random.default_rng(1)
    img_o, img_a = (Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(2))
    item = PairItem(img_o, img_a, "a blurry dog", order_key="k")
    (answer,) = scorer.compare([item])
    assert isinstance(scorer.backend.model, model_class("qwen2_vl"))
    # independently: the official processor and a plain full forward of the folder's model (the test file
    # of the local backend builds them), softmax over the logits of "1" and "2"
    reference = Reference(folder, "qwen2_vl")
    ids = reference.processor.tokenizer.convert_tokens_to_ids(["1", "2"])
    shown = [img_a, img_o] if first_shown("k") == "a" else [img_o, img_a]
    resized = [im.resize((56, 56), Image.Resampling.BICUBIC) for im in shown]
    logits = reference.logits(Prompt((PROBS_INSTRUCTION.format(prompt="a blurry dog"), *resized), system=PROBS_SYSTEM))
    p = torch.softmax(logits[ids], dim=0).numpy()
    expected = p[0] if first_shown("k") == "a" else p[1]
    assert answer.ok and answer.prob_a == pytest.approx(expected, abs=1e-5)
    assert answer.answers[0]["first"] == first_shown("k")
