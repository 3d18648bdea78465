"""The intent-aware reward r = faithfulness + λ Σ_d w_d s_d(p) a_d(I), checked by hand from the judge's own J.

Images are a built-in photo and its editor transforms (blur, underexposure) at 128 px; J values come from the
classical judge called directly here, and every expected score is the formula worked out in the test. A
keyword parser written here stands in for the project's parsers, so the tests pin the scorer, not a lexicon.
The tensor API runs on the tiny CLIP and aesthetic head of tests/tiny/clip.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aesthetic_audit import registry
from aesthetic_audit.dimensions import load_catalogue
from aesthetic_audit.errors import ConfigError
from aesthetic_audit.images.decode import from_array, to_array
from aesthetic_audit.intent.base import Intent
from aesthetic_audit.judges.classical import ClassicalJudge
from aesthetic_audit.judges.stage import run_judge
from aesthetic_audit.records import IMAGES
from aesthetic_audit.scorers.base import Scorer, ScoreResult
from aesthetic_audit.scorers.composite import CompositeAesthetics
from aesthetic_audit.scorers.intent_aware import IntentAwareReward, IntentAwareScorer
from aesthetic_audit.scorers.stage import make_scorer, run_score
from aesthetic_audit.store import Record, RunStore

COVERS = ClassicalJudge.covers
WORDS = {"blurry": "clarity", "dark": "color brightness", "washed": "color aesthetic", "grainy": "clarity",
         "empty": "richness"}  # richness: a dimension the classical judge does not cover
P_O, P_BLUR, P_DARK = "a photo of an astronaut", "a blurry photo of an astronaut", "a dark photo of an astronaut"
P_BOTH, P_NOT = "a blurry dark photo of an astronaut", "a photo of an astronaut, not blurry"


class Words:
    """A keyword parser: each word of WORDS requests its dimension; "not WORD" negates it; "???" fails."""

    name = "words"

    def __init__(self):
        self.calls: list[list[str]] = []

    def identity(self):
        return {"name": self.name, "words": WORDS}

    def parse(self, prompts):
        self.calls.append(list(prompts))
        out = []
        for p in prompts:
            if "???" in p:
                out.append(Intent(error="cannot read ???"))
                continue
            tokens = p.replace(",", " ").split()
            negated = {WORDS[w] for k, w in enumerate(tokens) if w in WORDS and k and tokens[k - 1] == "not"}
            requested = {WORDS[w]: 1.0 for w in tokens if w in WORDS and WORDS[w] not in negated}
            out.append(Intent(requested=requested, negated=frozenset(negated)))
        return out


@pytest.fixture(scope="module")
def images():
    pytest.importorskip("skimage")
    from aesthetic_audit.images.photos import load_photos

    photo = load_photos("builtin", max_side=128)[0].image  # the astronaut
    transforms = registry.available("transforms")
    edit = {name: from_array(transforms[name].apply(to_array(photo), 1.0, np.random.default_rng(0))[0])
            for name in ("defocus_blur", "underexposure")}
    return {"photo": photo, "blur": edit["defocus_blur"], "dark": edit["underexposure"]}


@pytest.fixture(scope="module")
def J(images):
    judge = ClassicalJudge()
    return {k: r.scores for k, r in zip(images, judge.judge(list(images.values()), COVERS))}


def expected(J_img, requested, strength=1.0, weights=None):
    """The formula by hand with the classical faithfulness stand-in."""
    w = {d: 1.0 for d in COVERS} | (weights or {})
    seen = [d for d in requested if d in COVERS]
    f = sum((2 - J_img[d]) / 2 for d in seen) / len(seen) if seen else 1.0
    return f + strength * sum(w[d] * (-1 if d in requested else 1) * (J_img[d] - 1) for d in COVERS)


def recompute(extra, strength=None):
    e = extra["intent"]
    lam = e["lambda"] if strength is None else strength
    return e["faithfulness"] + lam * sum(e["weights"][d] * e["signs"][d] * e["terms"][d] for d in e["terms"])


def one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_registered_with_what_a_caller_needs():
    cls = registry.get("scorers", "intent-aware")
    assert cls is IntentAwareScorer and issubclass(cls, Scorer)
    assert cls.prompt_aware is True and cls.higher_is_better is True and cls.reward_model is True
    assert cls.official and cls.score_scale and cls.description
    assert cls.parity == "not applicable: defined here; tests check the formula by hand"


def test_a_blur_request_prefers_the_blurry_image_and_a_plain_prompt_the_sharp_one(images, J):
    # The judge sees what the edit did: the blur lost clarity; the photo is conventionally good.
    assert J["blur"]["clarity"] < 1.0 < J["photo"]["clarity"]
    plain = CompositeAesthetics().score([(im, None) for im in images.values()])
    composite = {k: r.score for k, r in zip(images, plain)}
    assert composite["photo"] > composite["blur"]  # the plain aesthetic prefers the sharp photo, whatever p asks
    scorer = IntentAwareScorer(parser=Words())
    photo_a, blur_a, photo_o, blur_o = scorer.score([(images["photo"], P_BLUR), (images["blur"], P_BLUR),
                                                     (images["photo"], P_O), (images["blur"], P_O)])
    assert blur_a.score > photo_a.score  # the request flips the clarity term
    assert photo_o.score > blur_o.score  # nothing asked: conventional taste holds
    for res, key, req in ((photo_a, "photo", {"clarity"}), (blur_a, "blur", {"clarity"}),
                          (photo_o, "photo", set()), (blur_o, "blur", set())):
        assert res.score == pytest.approx(expected(J[key], req), abs=1e-12)
        assert recompute(res.extra) == pytest.approx(res.score, abs=1e-12)
    assert blur_a.extra["intent"]["signs"] == {d: -1 if d == "clarity" else 1 for d in COVERS}
    assert blur_a.extra["intent"]["requested"] == {"clarity": 1.0} and blur_a.extra["intent"]["negated"] == []
    assert photo_o.extra["intent"]["faithfulness"] == 1.0  # the stand-in is constant under a plain prompt


def test_the_default_lexicon_parser_gives_the_same_flip(images):
    scorer = IntentAwareScorer()
    assert scorer.identity()["parser"]["name"] == "lexicon"
    photo_a, blur_a, photo_o, blur_o = scorer.score([(images["photo"], P_BLUR), (images["blur"], P_BLUR),
                                                     (images["photo"], P_O), (images["blur"], P_O)])
    assert blur_a.extra["intent"]["requested"].keys() == {"clarity"}
    assert blur_a.score > photo_a.score and photo_o.score > blur_o.score


def test_a_request_no_term_can_see_makes_the_unrequested_terms_abstain(images, J):
    """"empty" requests richness, which the classical judge cannot measure: with unseen: abstain (the default)
    the unrequested terms get sign 0, so the two images tie on the stand-in; "plain" keeps the formula."""
    p_empty, p_mixed = "an empty photo of an astronaut", "an empty blurry photo of an astronaut"
    scorer = IntentAwareScorer(parser=Words())
    photo, blur, photo_m, blur_m = scorer.score([(images["photo"], p_empty), (images["blur"], p_empty),
                                                 (images["photo"], p_mixed), (images["blur"], p_mixed)])
    assert photo.extra["intent"]["signs"] == {d: 0 for d in COVERS}
    assert photo.extra["intent"]["unseen"] == ["richness"]
    assert photo.score == blur.score == 1.0  # no covered request: faithfulness 1.0 and every term abstains
    # a covered request beside it keeps its -1 and the stand-in, the rest abstain
    for res, key in ((photo_m, "photo"), (blur_m, "blur")):
        assert res.extra["intent"]["signs"] == {d: -1 if d == "clarity" else 0 for d in COVERS}
        want = (2 - J[key]["clarity"]) / 2 - (J[key]["clarity"] - 1)
        assert res.score == pytest.approx(want, abs=1e-12) and recompute(res.extra) == pytest.approx(res.score)
    assert blur_m.score > photo_m.score
    plain = IntentAwareScorer(parser=Words(), unseen="plain")
    res = plain.score([(images["blur"], p_empty)])[0]
    assert res.score == pytest.approx(expected(J["blur"], {"richness"}), abs=1e-12)
    assert res.extra["intent"]["signs"] == {d: 1 for d in COVERS}
    with pytest.raises(ConfigError, match="unseen must be one of abstain, plain"):
        IntentAwareScorer(parser=Words(), unseen="never")


def test_a_negated_effect_keeps_its_conventional_sign(images, J):
    [res] = IntentAwareScorer(parser=Words()).score([(images["blur"], P_NOT)])
    assert res.extra["intent"]["negated"] == ["clarity"] and res.extra["intent"]["requested"] == {}
    assert res.extra["intent"]["signs"]["clarity"] == 1
    assert res.score == pytest.approx(expected(J["blur"], set()), abs=1e-12)


def test_strength_zero_is_the_faithfulness_term_exactly(images, J):
    scorer = IntentAwareScorer(parser=Words(), strength=0)
    prompts = [P_BLUR, P_BOTH, P_O, P_DARK]
    for key in images:
        got = [r.score for r in scorer.score([(images[key], p) for p in prompts])]
        j = J[key]
        assert got == [(2 - j["clarity"]) / 2, ((2 - j["clarity"]) / 2 + (2 - j["color brightness"]) / 2) / 2,
                       1.0, (2 - j["color brightness"]) / 2]

    class Align(Scorer):  # an alignment scorer whose score is known: the prompt's length / 100 + red mean
        name = "align"

        def _score(self, items):
            return [ScoreResult(len(p) / 100 + float(np.asarray(im)[..., 0].mean()), tokens=len(p.split()),
                                truncated=False) for im, p in items]

    off = IntentAwareScorer(parser=Words(), faithfulness=Align(), strength=0.0)
    items = [(images["photo"], P_BLUR), (images["dark"], P_O)]
    plain = Align().score(items)
    for res, ref in zip(off.score(items), plain):
        assert res.score == ref.score and (res.tokens, res.truncated) == (ref.tokens, False)


def test_taste_weights_change_scores_as_the_formula_says(images, J):
    weights = {"clarity": 0.0, "color brightness": 2.5, "detail refinement": -1.0}
    scorer = IntentAwareScorer(parser=Words(), strength=0.7, weights=weights)
    default = IntentAwareScorer(parser=Words(), strength=0.7)
    items = [(images[k], p) for k in images for p in (P_O, P_DARK, P_BOTH)]
    for (image, prompt), res, base in zip(items, scorer.score(items), default.score(items)):
        key = next(k for k, v in images.items() if v is image)
        requested = {WORDS[w] for w in prompt.split() if w in WORDS}
        assert res.score == pytest.approx(expected(J[key], requested, 0.7, weights), abs=1e-12)
        # the change is λ Σ (w_d - 1) s_d a_d, by hand
        w = {d: 1.0 for d in COVERS} | weights
        delta = 0.7 * sum((w[d] - 1) * (-1 if d in requested else 1) * (J[key][d] - 1) for d in COVERS)
        assert res.score - base.score == pytest.approx(delta, abs=1e-12)
        assert res.extra["intent"]["weights"] == w


def test_a_quality_scorer_as_one_overall_term(images, J):
    scorer = IntentAwareScorer(parser=Words(), aesthetic="composite", strength=2.0)  # range 0-10: centre 5, scale 5
    assert scorer.identity()["options"]["center"] == 5.0 and scorer.identity()["options"]["scale"] == 5.0
    for key in ("photo", "blur"):
        for prompt, requested in ((P_BLUR, {"clarity"}), (P_O, set())):
            [res] = scorer.score([(images[key], prompt)])
            a = sum(J[key].values()) / 5 - 1  # (5 x mean J - 5) / 5
            f = (2 - J[key]["clarity"]) / 2 if requested else 1.0
            assert res.extra["intent"]["terms"] == {"overall": pytest.approx(a, abs=1e-12)}
            assert res.extra["intent"]["signs"] == {"overall": -1 if requested else 1}
            assert res.score == pytest.approx(f + 2.0 * (-1 if requested else 1) * a, abs=1e-12)

    class Badness(Scorer):  # lower is better, like BRISQUE; scores chosen to hit both clips
        name, prompt_aware, higher_is_better, score_range = "badness", False, False, (0.0, 100.0)

        def _score(self, items):
            return [ScoreResult({0: 130.0, 255: -20.0}.get(im.getpixel((0, 0))[0], 25.0)) for im, _ in items]

    blind = IntentAwareScorer(parser=Words(), aesthetic=Badness(), faithfulness=_Const(), weights={"overall": 3.0})
    imgs = [Image.new("RGB", (16, 16), (v, 9, 9)) for v in (0, 255, 7)]
    got = [r.extra["intent"]["terms"]["overall"] for r in blind.score([(im, P_O) for im in imgs])]
    assert got == [-1.0, 1.0, 0.5]  # -(130 - 50)/50 clipped, -(-20 - 50)/50 clipped, -(25 - 50)/50
    assert [r.score for r in blind.score([(imgs[2], P_DARK), (imgs[2], P_O)])] == [0.25 - 1.5, 0.25 + 1.5]


class _Const(Scorer):
    name = "const"

    def _score(self, items):
        return [ScoreResult(0.25) for _ in items]


def test_bad_options_are_one_line_config_errors():
    with pytest.raises(ConfigError) as exc:
        IntentAwareScorer(parser=Words(), weights={"clarity": 2, "grain": 1, "richness": 0})
    assert "unknown keys 'grain', 'richness'" in one_line(exc)
    bad = [dict(strength=-1), dict(strength="high"), dict(weights={"clarity": "x"}), dict(center=3.0),
           dict(faithfulness="composite"), dict(faithfulness="no-such-scorer"), dict(aesthetic="brisque"),
           dict(aesthetic=_Const()), dict(aesthetic="composite", scale=0), dict(faithfulness_options={"a": 1}),
           dict(aesthetic="composite", weights={"clarity": 1}), dict(parser=object())]
    for options in bad:
        with pytest.raises(ConfigError) as exc:
            IntentAwareScorer(**{"parser": Words(), **options})
        one_line(exc)
    with pytest.raises(ConfigError) as exc:
        IntentAwareScorer(parser=Words(), parser_options={"x": 1})
    assert "parser_options" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        make_scorer("intent-aware", {"parser": "no-such-parser"})
    assert "no-such-parser" in one_line(exc)


def test_bad_items_fail_alone(images):
    scorer = IntentAwareScorer(parser=Words())
    res = scorer.score([(None, P_O), (images["photo"], "  "), (images["photo"], "??? x"),
                        (Image.new("RGB", (4, 4)), P_O), (images["photo"], P_O)])
    assert [r.ok for r in res] == [False, False, False, False, True]
    assert "empty prompt" in res[1].error and "cannot read ???" in res[2].error and "too small" in res[3].error


def test_identity_holds_the_parts_the_strength_and_the_weights():
    ident = IntentAwareScorer(parser=Words(), strength=0.5, weights={"clarity": 2}).identity()
    assert ident["parser"] == Words().identity() and ident["judge"] == ClassicalJudge().identity()
    assert ident["faithfulness"] == "classical" and ident["aesthetic"] == "judge"
    assert ident["options"]["strength"] == 0.5
    assert ident["options"]["weights"] == {d: 2.0 if d == "clarity" else 1.0 for d in COVERS}
    same = IntentAwareScorer(parser=Words(), strength=0.5, weights={d: 2.0 if d == "clarity" else 1 for d in COVERS})
    assert same.identity() == ident
    assert IntentAwareScorer(parser=Words(), strength=0.6).identity() != ident
    with_part = IntentAwareScorer(parser=Words(), faithfulness=_Const(), aesthetic="composite").identity()
    assert with_part["faithfulness"] == _Const().identity() and with_part["judge"] is None
    assert with_part["aesthetic"] == CompositeAesthetics().identity()


# -- the score stage ---------------------------------------------------------------------------------

class CountingJudge(ClassicalJudge):
    """The classical judge (same identity) counting the images it measures."""

    measured = 0

    def judge(self, images, dims):
        CountingJudge.measured += len(images)
        return super().judge(images, dims)


def _run(tmp_path, images) -> tuple[RunStore, dict[str, str]]:
    store = RunStore(tmp_path)
    shas = {k: store.put_image(im) for k, im in images.items()}
    for i, (key, p_a) in enumerate((("blur", P_BLUR), ("dark", P_DARK))):
        store.put(Record(f"pair{i}", IMAGES, f"p{i}", {"image_o": shas["photo"], "image_a": shas[key], "p_o": P_O,
                                                       "p_a": p_a, "dims": [WORDS[p_a.split()[1]]], "model": "m"}))
    return store, shas


def test_the_score_stage_reuses_judge_records_and_its_extra_reproduces_the_score(tmp_path, images, J):
    store, shas = _run(tmp_path, images)
    run_judge(store, ClassicalJudge(), load_catalogue())
    CountingJudge.measured = 0
    summary = run_score(store, IntentAwareScorer(parser=Words(), judge=CountingJudge()))
    assert (summary.total, summary.new, summary.failed) == (7, 7, 0)  # photo x 3 prompts, each edit x 2
    assert CountingJudge.measured == 0  # every J came from the judge stage's records
    stored = {(r.data["image"], r.data["prompt"]): r.data for r in store.records("score")}
    key_of = {sha: k for k, sha in shas.items()}
    for (sha, prompt), data in stored.items():
        requested = {WORDS[w] for w in prompt.split() if w in WORDS}
        assert data["score"] == pytest.approx(expected(J[key_of[sha]], requested), abs=1e-12)
        assert recompute(data["extra"]) == pytest.approx(data["score"], abs=1e-12)
        # the λ sweep: the record's fields give the score another λ would
        assert recompute(data["extra"], 0.3) == pytest.approx(expected(J[key_of[sha]], requested, 0.3), abs=1e-12)

    fresh, _ = _run(tmp_path / "fresh", images)  # no judge stage: each distinct image is measured once
    CountingJudge.measured = 0
    assert run_score(fresh, IntentAwareScorer(parser=Words(), judge=CountingJudge())).new == 7
    assert CountingJudge.measured == 3
    again = {(r.data["image"], r.data["prompt"]): r.data["score"] for r in fresh.records("score")}
    assert again == {k: v["score"] for k, v in stored.items()}


class WorkerCopyEngine:
    """An engine that computes each batch as a remote worker would: on its own copy of the scorer (never
    the one whose ``stored_results`` the driver asked) and reading images from the run's folder."""

    name = "copy"

    def map(self, job, store, batches):
        import pickle

        from aesthetic_audit.engine import Done
        from aesthetic_audit.engine.ray_engine import FolderImages

        backend = pickle.loads(pickle.dumps(job.backend))
        backend.load()
        for batch in batches:
            yield Done(batch, job.compute(backend, batch, FolderImages(store.image_folder), {}))


def test_stored_judge_values_travel_with_the_batch_to_a_worker(tmp_path, images):
    """On a worker's own copy of the scorer (the Ray engine's case) the judge stage's J values are still
    reused, and the records equal those of the local engine."""
    local, _ = _run(tmp_path / "local", images)
    run_judge(local, ClassicalJudge(), load_catalogue())
    run_score(local, IntentAwareScorer(parser=Words(), judge=CountingJudge()))
    store, _ = _run(tmp_path / "worker", images)
    run_judge(store, ClassicalJudge(), load_catalogue())
    CountingJudge.measured = 0
    summary = run_score(store, IntentAwareScorer(parser=Words(), judge=CountingJudge()), engine=WorkerCopyEngine())
    assert (summary.new, summary.failed, CountingJudge.measured) == (7, 0, 0)
    assert [r.data for r in store.records("score")] == [r.data for r in local.records("score")]


def test_judge_records_of_another_judge_are_not_reused(tmp_path, images):
    store, _ = _run(tmp_path, images)

    class Other(ClassicalJudge):
        version = "other"

    run_judge(store, Other(), load_catalogue())
    CountingJudge.measured = 0
    assert run_score(store, IntentAwareScorer(parser=Words(), judge=CountingJudge())).new == 7
    assert CountingJudge.measured == 3


# -- the tensor API ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny.clip import build_clip, build_laion_aesthetic

    root = tmp_path_factory.mktemp("intent-tiny")
    return {"faithfulness": "clip", "faithfulness_options": {**build_clip(root / "clip"), "device": "cpu"},
            "aesthetic": "laion-aesthetic",
            "aesthetic_options": {**build_laion_aesthetic(root / "laion"), "device": "cpu"}}


def test_the_tensor_reward_has_gradients_and_equals_the_pil_path(tiny_parts):
    import torch
    from tiny.clip import IMAGE_SIZE

    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) for _ in range(3)]
    pil = [Image.fromarray(a) for a in arrays]
    prompts = ["a blurry photo of a cat", "a photo of the dog", "a dark painting, not grainy"]
    scorer = IntentAwareScorer(parser=Words(), strength=0.5, weights={"overall": 1.5}, **tiny_parts)
    results = scorer.score(list(zip(pil, prompts)))
    # by hand from the parts' own scores: laion-aesthetic's range 1-10 gives centre 5.5, scale 4.5
    f = [r.score for r in scorer.faithful.score(list(zip(pil, prompts)))]
    q = [r.score for r in scorer.quality.score([(im, None) for im in pil])]
    for res, fk, qk, s in zip(results, f, q, (-1, 1, -1)):
        assert res.score == pytest.approx(fk + 0.5 * 1.5 * s * min(1, max(-1, (qk - 5.5) / 4.5)), abs=1e-12)
        assert recompute(res.extra) == pytest.approx(res.score, abs=1e-12)
    assert all(-1 < (qk - 5.5) / 4.5 < 1 for qk in q)  # inside the clip, so the aesthetic passes gradient too

    x = (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255).requires_grad_(True)
    reward = scorer(x, prompts)
    assert reward.shape == (3,) and reward.requires_grad
    assert reward.detach().numpy() == pytest.approx([r.score for r in results], abs=1e-5)
    reward.sum().backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0

    # the same through the class a training loop builds, from the scorer objects themselves
    direct = IntentAwareReward(scorer.faithful, scorer.quality, Words(), 0.5, {"overall": 1.5})
    assert direct(x, prompts).detach().numpy() == pytest.approx(reward.detach().numpy(), abs=1e-6)
    # the aesthetic term alone carries gradient into the pixels
    y = x.detach().clone().requires_grad_(True)
    (direct(y, prompts) - scorer.faithful(y, prompts)).sum().backward()
    assert float(y.grad.abs().sum()) > 0


def test_the_judge_modes_refuse_tensors_in_one_line(tiny_parts):
    import torch

    x = torch.rand(1, 3, 32, 32)
    for options in ({}, {k: v for k, v in tiny_parts.items() if k.startswith("faith")},
                    {k: v for k, v in tiny_parts.items() if k.startswith("aest")}):
        with pytest.raises(ConfigError) as exc:
            IntentAwareScorer(parser=Words(), **options)(x, ["a photo"])
        assert "not differentiable" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        IntentAwareReward(_Const(), CompositeAesthetics(), Words())
    one_line(exc)


def test_an_llm_parser_endpoint_that_is_down_stops_the_score_stage(tmp_path, images):
    """A dead endpoint behind the scorer stops the stage with one error instead of failing chunk after chunk."""
    from aesthetic_audit.errors import EndpointUnreachable

    class Down:
        name = "down"

        def identity(self):
            return {"name": self.name}

        def parse(self, prompts):
            raise EndpointUnreachable("3 items in a row could not connect to http://127.0.0.1:9/v1")

    store = RunStore(tmp_path)
    sha_o, sha_a = store.put_image(images["photo"]), store.put_image(images["blur"])
    store.put(Record("pair", IMAGES, "pair", {"image_o": sha_o, "image_a": sha_a, "p_o": P_O, "p_a": P_BLUR,
                                                "dims": ["clarity"]}))
    with pytest.raises(EndpointUnreachable):
        run_score(store, IntentAwareScorer(parser=Down()), chunk_size=1)
    assert store.counts().get("score", {}).get("failed", 0) == 0


def test_weights_and_judge_of_the_wrong_type_are_one_line_config_errors():
    for options, message in (({"weights": ["clarity"]}, "weights must be a mapping"),
                             ({"weights": [["clarity", 2]]}, "weights must be a mapping"),
                             ({"judge": "vlm"}, "judge must be a judge object")):
        with pytest.raises(ConfigError, match=message) as exc:
            IntentAwareScorer(parser=Words(), **options)
        one_line(exc)
