"""The pairwise VLM labeller and the labels stage, on a scripted backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from aesthetic_audit.labels import vlm as labeller_mod
from aesthetic_audit.labels.vlm import SCHEMA, PairItem, VLMLabeller, first_shown, parse_selection
from aesthetic_audit.pipeline import Run
from aesthetic_audit.store import RunStore
from aesthetic_audit.vlm.base import Reply


def test_parse_selection_reads_the_schema_in_the_forms_models_reply_with():
    assert parse_selection('{"selection": 1}') == 1
    assert parse_selection('```json\n{"selection": -1}\n```') == -1
    assert parse_selection('Sure. {"selection": 0} is my answer') == 0
    for bad, msg in (('{"selection": 2}', "not -1, 0 or 1"), ('{"selection": true}', "not -1, 0 or 1"),
                     ("the first one", "no JSON object"), ('{"choice": 0}', "no JSON object")):
        with pytest.raises(ValueError, match=msg):
            parse_selection(bad)


class Chooser:
    """Answers by the images it is shown: always picks the darker one (or scripted replies)."""

    def __init__(self, replies=None):
        self.prompts, self.replies = [], list(replies or [])

    def identity(self):
        return {"model": "chooser"}

    def load(self):
        pass

    def unload(self):
        pass

    def generate(self, prompts, *, max_tokens=64, temperature=0.0, json_schema=None, seed=None):
        assert json_schema == SCHEMA
        out = []
        for p in prompts:
            self.prompts.append(p)
            if self.replies:
                out.append(self.replies.pop(0))
                continue
            first, second = p.images
            darker = 0 if np.asarray(first).mean() < np.asarray(second).mean() else 1
            out.append(Reply(json.dumps({"selection": darker})))
        return out


def grey(v):
    return Image.fromarray(np.full((16, 16, 3), v, np.uint8))


def labeller(backend, **options):
    lab = VLMLabeller(url="http://localhost:1/v1", model="m", **options)
    lab.backend = backend
    return lab


def test_the_answer_maps_back_through_the_recorded_order():
    lab = labeller(Chooser())
    items = [PairItem(grey(200), grey(20), f"a dark cat {i}", order_key=str(i)) for i in range(8)]
    results = lab.label(items)
    firsts = [first_shown(str(i)) for i in range(8)]
    assert {"o", "a"} <= set(firsts)  # the coin shows both orders over eight pairs
    for res, first in zip(results, firsts):
        # the darker image is I_a whichever side it was shown on
        assert res.value == 1 and res.answers[0]["first"] == first and res.disagree is None
        assert res.answers[0]["selection"] == (0 if first == "a" else 1)
    sys_prompt, text = lab.backend.prompts[0].system, lab.backend.prompts[0].parts[0]
    assert "JSON" in sys_prompt and text.endswith("Prompt:\na dark cat 0")


def test_both_orders_turns_a_position_biased_answer_into_a_tie():
    always_first = Chooser([Reply('{"selection": 0}')] * 2)
    res = labeller(always_first, both_orders=True).label([PairItem(grey(1), grey(2), "p", "k")])[0]
    assert res.value == -1 and res.disagree is True
    assert [a["first"] for a in res.answers] == ["o", "a"] and [a["value"] for a in res.answers] == [0, 1]
    consistent = labeller(Chooser(), both_orders=True).label([PairItem(grey(200), grey(20), "p", "k")])[0]
    assert consistent.value == 1 and consistent.disagree is False


def test_malformed_replies_are_reasked_then_recorded_as_failures():
    lab = labeller(Chooser([Reply("I like the second"), Reply('{"selection": 1}')]), max_reasks=1)
    res = lab.label([PairItem(grey(200), grey(20), "p", "0")])[0]
    assert res.error is None and res.value in (0, 1)
    lab = labeller(Chooser([Reply("no"), Reply("still no")]), max_reasks=1)
    res = lab.label([PairItem(grey(200), grey(20), "p", "0")])[0]
    assert res.value is None and "no JSON object" in res.error
    lab = labeller(Chooser([Reply(None, "HTTP 500 after 5 retries")]), max_reasks=3)
    res = lab.label([PairItem(grey(200), grey(20), "p", "0")])[0]
    assert res.error == "HTTP 500 after 5 retries" and len(lab.backend.prompts) == 1  # transport errors not re-asked


def _run_with_pairs(tmp_path, cli, n=3):
    rng = np.random.default_rng(0)
    lines = ["image_o,image_a,p_o,p_a,dims"]
    for i in range(n):
        Image.fromarray((rng.random((24, 24, 3)) * 120 + 120).astype(np.uint8)).save(tmp_path / f"{i}o.png")
        Image.fromarray((rng.random((24, 24, 3)) * 60).astype(np.uint8)).save(tmp_path / f"{i}a.png")
        lines.append(f"{i}o.png,{i}a.png,A cat {i}.,A very dark cat {i}.,color brightness")
    lines.append("0o.png,0a.png,A cat 0.,A very dark cat 0.,color brightness")  # the same pair again
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    assert cli("import", run, tmp_path / "pairs.csv")[0] == 0
    return run


def test_labels_stage_records_resumes_and_feeds_the_analysis(tmp_path, cli, monkeypatch):
    run = _run_with_pairs(tmp_path, cli)
    backend = Chooser()
    monkeypatch.setattr(labeller_mod, "make_backend", lambda opts: backend)
    sets = ["--set", "labels.options.vlm.url=http://localhost:1/v1", "--set", "labels.options.vlm.model=m"]
    code, _, err = cli("labels", run, "--labellers", "vlm", *sets)
    assert code == 0, err
    assert "labels:vlm: 3 items, 3 new" in err  # the repeated pair is labelled once
    recs = list(RunStore(run).records("labels"))
    assert len(recs) == 3 and {r.data["value"] for r in recs} == {1}
    assert all(r.data["source"] == "vlm:vlm" and r.data["answers"][0]["first"] in "oa" for r in recs)
    code, _, err = cli("labels", run)  # the labeller persists in the run's config; nothing new
    assert code == 0 and "0 new, 3 cached" in err and len(backend.prompts) == 3
    analysis = Run.open(run).analyze()
    src = analysis["label_sources"]
    assert src["reference"] == "vlm:vlm" and src["sources"]["vlm:vlm"]["n"] == 3
    assert src["sources"]["vlm:vlm"]["success_rate"]["estimate"] == 1.0
    assert analysis["labels"]["n"] == 3 and analysis["labels"]["source"] == "vlm:vlm"


def test_labels_without_a_labeller_says_what_to_give(tmp_path, cli):
    run = _run_with_pairs(tmp_path, cli, n=1)
    code, _, err = cli("labels", run)
    assert code == 1 and "no labeller given" in err
    code, _, err = cli("labels", run, "--labellers", "vlm")
    assert code == 2 and "needs either `model`" in err and "Traceback" not in err  # a config error: nothing stored


def test_judge_and_labels_through_an_endpoint_then_the_report_names_their_sources(tmp_path, cli):
    """The CLI path users take: a VLM judge and a labeller behind an OpenAI-compatible server."""
    import base64
    import io
    import math as m

    from fake_vlm import FakeVLM, chat, logprobs, text_of

    def answer(body):
        if "Please rate this image" in text_of(body):
            return logprobs([("1", -0.2), ("2", -1.0), ("0", -3.0)])
        images = [p["image_url"]["url"] for p in body["messages"][-1]["content"] if p["type"] == "image_url"]
        means = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))).mean() for u in images]
        return chat(json.dumps({"selection": int(means[1] < means[0])}))  # the darker image

    run = _run_with_pairs(tmp_path, cli, n=2)
    with FakeVLM() as server:
        server.defaults["*"] = answer
        judge = ["--set", f"judge.options.vlm.url={server.base_url}", "--set", "judge.options.vlm.model=judge-m",
                 "--set", "judge.options.vlm.dims=[clarity, emotion]"]
        code, _, err = cli("judge", run, "--judges", "classical,vlm", *judge)
        assert code == 0, err
        labels = ["--set", f"labels.options.vlm.url={server.base_url}", "--set", "labels.options.vlm.model=lab-m",
                  "--set", "labels.options.vlm.both_orders=true"]
        code, _, err = cli("labels", run, "--labellers", "vlm", *labels)
        assert code == 0, err
    p = np.exp([-3.0, -0.2, -1.0])
    p /= p.sum()
    recs = [r for r in RunStore(run).records("judge") if r.data["judge"] == "vlm"]
    assert len(recs) == 4
    for r in recs:
        assert r.data["scores"]["clarity"] == pytest.approx(p[1] + 2 * p[2], abs=1e-9)
        assert r.data["scores"]["background"] is None and r.data["probs"]["emotion"] == pytest.approx(list(p))
        assert "judge-m" in r.data["judge_desc"]
    recs = list(RunStore(run).records("labels"))
    assert len(recs) == 2 and all(r.data["value"] == 1 and r.data["disagree"] is False for r in recs)
    assert cli("report", run)[0] == 0
    html = (run / "report.html").read_text()
    assert "Pair labels" in html and "vlm:vlm" in html and "judge-m" in html and "lab-m" in html
    tables = (run / "tables" / "judges.csv").read_text()
    assert "judge-m" in tables and m.isfinite(float(tables.splitlines()[-1].split(",")[4]))
    # a second instance (NAME:ALIAS) whose endpoint is down: stops the command with one line (exit 2) and
    # is recorded as unable to run
    code, _, err = cli("judge", run, "--judges", "vlm:dead", "--set", f"judge.options.vlm:dead.url={server.base_url}",
                       "--set", "judge.options.vlm:dead.model=m", "--set", "judge.options.vlm:dead.retries=0")
    assert code == 2 and "Traceback" not in err and err.count("error: judge vlm:dead: connection error") == 1, err
    assert "judge vlm:dead" in cli("status", run)[1]


def test_the_report_gallery_shows_and_filters_by_the_labels_the_analysis_used(tmp_path, cli, monkeypatch):
    import re

    run = _run_with_pairs(tmp_path, cli, n=3)
    backend = Chooser([Reply('{"selection": 0}')] * 3)  # always the first shown: I_a or I_o by the coin
    monkeypatch.setattr(labeller_mod, "make_backend", lambda opts: backend)
    sets = ["--set", "labels.options.vlm.url=http://localhost:1/v1", "--set", "labels.options.vlm.model=m"]
    assert cli("labels", run, "--labellers", "vlm", *sets)[0] == 0
    values = [r.data["value"] for r in RunStore(run).records("labels")]
    assert cli("report", run, "-q")[0] == 0
    page = (run / "report.html").read_text()
    failed = re.findall(r'data-failed="(\d)"', page)
    assert len(failed) == 3 and failed.count("1") == sum(v != 1 for v in values)
