"""The VLM judge's prompts, J and records, on a scripted backend (the real backends have their own tests)."""

from __future__ import annotations

import ast
import math

import numpy as np
import pytest
from PIL import Image

from aesthetic_audit.dimensions import load_catalogue, load_visionreward_rubric
from aesthetic_audit.errors import ConfigError
from aesthetic_audit.judges.vlm import VLMJudge
from aesthetic_audit.vlm.base import AnswerProbs

GUIDE = ("\ufeffDimension,Score,Option,Description\n"
         "Overall Clarity (clarity),1,Very clear,Every edge is crisp.\n"
         ",0,Normal,\"Mostly readable, some 'soft' parts.\"\n"
         ",-1,Blurry,Hard to make out.\n"
         "Brightness (color brightness),1,Bright,Well exposed.\n"
         ",-2,Dark,\n")


class Scripted:
    """A backend whose logits are a fixed function of the question and the image, like a model's."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[list] = []
        self.fail_on = fail_on

    def identity(self):
        return {"model": "scripted"}

    def load(self):
        pass

    def unload(self):
        pass

    @staticmethod
    def logits(prompt, answers):
        text = "".join(p for p in prompt.parts if isinstance(p, str))
        img = next(p for p in prompt.parts if isinstance(p, Image.Image))
        mean = float(np.asarray(img).mean()) / 255
        return [math.sin(len(text) * (k + 1)) + mean * k for k in range(len(answers))]

    def answer_probs(self, prompts, answers):
        self.calls.append(list(prompts))
        out = []
        for p in prompts:
            text = "".join(x for x in p.parts if isinstance(x, str))
            if self.fail_on and self.fail_on in text:
                out.append(AnswerProbs(None, tuple(answers), error="HTTP 500 after retries"))
                continue
            z = np.array(self.logits(p, answers))
            e = np.exp(z - z.max())
            out.append(AnswerProbs(tuple(e / e.sum()), tuple(answers), tokens=tuple(answers), logits=tuple(z)))
        return out


def judge_with(tmp_path=None, rubric=False, **options):
    judge = VLMJudge(url="http://localhost:1/v1", model="m", **options)
    judge.backend = Scripted()
    cat = load_catalogue()
    rubric_options = None
    if rubric:
        path = tmp_path / "guide.csv"
        path.write_text(GUIDE, encoding="utf-8")
        rows = load_visionreward_rubric(path)
        cat = cat.with_rubrics({k: v["rubric"] for k, v in rows.items()})
        rubric_options = {k: v["options"] for k, v in rows.items()}
    judge.prepare(cat, rubric_options)
    return judge


def image(value=90, size=(40, 30)):
    return Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8))


def test_study_template_is_the_published_prompt_with_the_guideline_as_a_dict_literal(tmp_path):
    judge = judge_with(tmp_path, rubric=True, dims=["clarity", "color brightness"])
    judge.judge([image()], load_catalogue().keys())
    first = judge.backend.calls[0][0]
    text, img = first.parts  # the instruction first, then the image; no system turn
    assert first.system is None and img.size == (512, 512)
    head = "Please rate this image for its clarity quality. Use this guideline "
    assert text.startswith(head) and text.endswith(". Response a single number.")
    guide = ast.literal_eval(text[len(head):-len(". Response a single number.")])
    assert list(guide.items()) == [("Very clear: 2", ": Every edge is crisp."),
                                   ("Normal: 1", ": Mostly readable, some 'soft' parts."),
                                   ("Blurry: 0", ": Hard to make out.")]
    second = judge.backend.calls[0][1].parts[0]
    assert "for its color brightness quality" in second and "'Dark: 0': ': nan'" in second


def test_j_is_the_expected_level_and_the_record_keeps_probs_argmax_and_tokens():
    judge = judge_with(dims=["clarity", "emotion"])
    imgs = [image(20), image(200, (64, 64))]
    results = judge.judge(imgs, load_catalogue().keys())
    prompts = judge.backend.calls[0]
    assert len(prompts) == 4  # one call for the batch: 2 images x 2 dimensions
    for res, i in zip(results, range(2)):
        for d, prompt in zip(("clarity", "emotion"), prompts[2 * i:2 * i + 2]):
            z = np.array(Scripted.logits(prompt, "012"))
            p = np.exp(z) / np.exp(z).sum()
            assert res.scores[d] == pytest.approx(p[1] + 2 * p[2], abs=1e-12)
            assert res.extra["probs"][d] == pytest.approx(list(p))
            assert res.extra["argmax"][d] == int(np.argmax(p))
        assert res.scores["clarity"] is not None and res.scores["background"] is None  # not asked
        assert res.extra["answer_tokens"] == ["0", "1", "2"] and res.extra["discrete"] is False


def test_default_dimensions_are_the_study_eleven_and_the_catalogue_template_puts_the_image_first():
    judge = judge_with(template="catalogue")
    assert judge.covers == tuple(load_catalogue().study_keys) and len(judge.covers) == 11
    judge.judge([image()], load_catalogue().keys())
    parts = judge.backend.calls[0][0].parts
    assert isinstance(parts[0], Image.Image) and parts[1].startswith("Rate the ")
    # every question about one image shares the same image object, so a local model encodes it once
    assert len({id(p.parts[0]) for p in judge.backend.calls[0]}) == 1


def test_checklist_mode_asks_one_yes_no_question_per_option(tmp_path):
    judge = judge_with(tmp_path, rubric=True, dims=["clarity"], mode="checklist")
    res = judge.judge([image()], ["clarity"])[0]
    prompts = judge.backend.calls[0]
    assert len(prompts) == 3 and all("Answer Yes or No." in p.parts[-1] for p in prompts)
    yes = []
    for p in prompts:
        z = np.array(Scripted.logits(p, ("Yes", "No")))
        yes.append(np.exp(z[0]) / np.exp(z).sum())
    w = np.array(yes) / sum(yes)  # options in file order: levels 2, 1, 0
    assert res.scores["clarity"] == pytest.approx(2 * w[0] + 1 * w[1], abs=1e-12)
    assert [c["p_yes"] for c in res.extra["checklist"]["clarity"]] == pytest.approx(yes)


def test_a_failed_question_fails_its_image_only():
    judge = judge_with(dims=["clarity", "emotion"])
    judge.backend = Scripted(fail_on="Emotional")
    judge.rubrics["emotion"]["name"] = "Emotional Response"
    judge.template.text = "{name}{image}"
    res = judge.judge([image(10), image(50)], ["clarity", "emotion"])
    assert all(r.error and r.error.startswith("emotion: HTTP 500") for r in res)


def test_custom_template_file_and_its_errors(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("{image}How is the {name} ({key})? 0 = {rubric_0}; 2 = {rubric_2}. Digit:")
    judge = judge_with(template=str(good), dims=["clarity"])
    judge.judge([image()], ["clarity"])
    parts = judge.backend.calls[0][0].parts
    assert isinstance(parts[0], Image.Image) and parts[1].startswith("How is the Overall Clarity (clarity)?")
    for text, msg in (("no image marker {name}", "exactly one {image}"), ("{image}{colour}", "unknown placeholder"),
                      ("{image}{image}", "exactly one {image}"), ("{image} {", "judge template")):
        good.write_text(text)
        with pytest.raises(ConfigError, match=msg.replace("{", r"\{").replace("}", r"\}")):
            VLMJudge(url="http://x/v1", model="m", template=str(good))
    with pytest.raises(ConfigError, match="mode"):
        VLMJudge(url="http://x/v1", model="m", mode="sometimes")
    with pytest.raises(ConfigError, match="needs either"):
        VLMJudge(template="study")


def test_identity_changes_with_the_rubric_and_the_template(tmp_path):
    a = judge_with(dims=["clarity"]).identity()
    b = judge_with(tmp_path, rubric=True, dims=["clarity"]).identity()
    c = judge_with(dims=["clarity"], template="catalogue").identity()
    assert len({str(a), str(b), str(c)}) == 3
    assert judge_with(dims=["clarity"]).identity() == a
