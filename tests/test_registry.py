"""The registry, the light core, and one contract test over every registered scorer and judge."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from aesthetic_audit.errors import MissingExtraError, require
from aesthetic_audit.registry import available, register
from aesthetic_audit.scorers.base import ScoreResult


def test_listing_backends_imports_no_heavy_dependency():
    code = ("import sys; from aesthetic_audit.cli import main; main(['ls', 'scorers']); main(['ls', 'judges']);"
            "main(['ls', 'transforms']); main(['ls', 'rewriters']);"
            "heavy = [m for m in ('torch', 'transformers', 'cv2', 'onnxruntime', 'skimage', 'brisque', 'matplotlib')"
            " if m in sys.modules]; print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "brisque" in out and "lower is better" in out and "classical" in out and "pixelation" in out


def test_light_core_imports_no_torch():
    code = ("import sys, aesthetic_audit.pipeline, aesthetic_audit.prompts.stage, aesthetic_audit.analysis.audit, "
            "aesthetic_audit.report.html, aesthetic_audit.images.stage; print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_a_name_registered_twice_is_an_error():
    class A:
        name = "dup-test"

    class B:
        name = "dup-test"

    register("scorers")(A)
    with pytest.raises(ValueError, match="registered twice"):
        register("scorers")(B)
    register("scorers")(A)  # the same object again is fine


def test_missing_extra_names_the_extra():
    with pytest.raises(MissingExtraError, match=r"pip install 'aesthetic-audit\[models\]'") as exc:
        require("surely_not_installed_pkg_xyz", "models", "the XYZ scorer")
    assert exc.value.extra == "models" and "the XYZ scorer" in str(exc.value)


def _images():
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 96 * 96 * 3).reshape(96, 96, 3)
    noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255)
    return [Image.fromarray(base.astype(np.uint8)), Image.fromarray(noisy.astype(np.uint8))]


SCORERS = sorted(n for n, c in available("scorers").items() if n != "dup-test" and not getattr(c, "pairwise", False))


@pytest.mark.parametrize("name", SCORERS)
def test_scorer_contract(name, tmp_path):
    cls = available("scorers")[name]
    assert isinstance(cls.higher_is_better, bool) and isinstance(cls.prompt_aware, bool)
    lo, hi = cls.score_range
    assert lo is None or hi is None or lo < hi
    options = {}
    if cls.extra == "models":  # model scorers run on a tiny model written in their official layout
        from tiny import builders

        assert name in builders(), f"scorer {name} needs a tiny-model builder in tests/tiny/"
        options = {**builders()[name](tmp_path), "device": "cpu"}
    scorer = cls(**options)
    assert scorer._loaded is False  # constructing loads nothing
    json.dumps(scorer.identity())
    results = scorer.score([(img, "a photo of a gradient") for img in _images()])
    assert len(results) == 2 and all(isinstance(r, ScoreResult) for r in results)
    assert all(r.ok and np.isfinite(r.score) for r in results)
    bad = scorer.score([(None, "a photo of a gradient"), (_images()[1], "a photo of a gradient")])
    assert bad[0].error and bad[0].score is None and bad[1].ok
    assert bad[1].score == pytest.approx(results[1].score, rel=1e-6, abs=1e-9)
    if cls.prompt_aware:
        (empty,) = scorer.score([(_images()[0], "  ")])
        assert empty.error and empty.score is None


class _Poisoned:
    """A scorer's preprocessing that raises inside the model step for one image, as a model error would."""

    def __init__(self, inner, bad):
        self.inner, self.bad = inner, bad

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def pil(self, image):
        if image is self.bad:
            raise RuntimeError("boom in the model step")
        return self.inner.pil(image)

    def batch(self, images):
        return self.inner.batch(images) if all(im is not self.bad for im in images) else self.pil(self.bad)


@pytest.mark.parametrize("name", [n for n in SCORERS if available("scorers")[n].extra == "models"])
def test_an_item_that_breaks_the_model_step_fails_alone(name, tmp_path):
    from tiny import builders

    scorer = available("scorers")[name](**builders()[name](tmp_path), device="cpu").load()
    good, bad = _images()
    alone = [scorer.score([(good, p)])[0] for p in ("a photo of a gradient", "a noisy photo")]
    scorer.preprocess = _Poisoned(scorer.preprocess, bad)
    results = scorer.score([(good, "a photo of a gradient"), (bad, "a photo of a gradient"), (good, "a noisy photo")])
    assert results[1].score is None and "RuntimeError: boom in the model step" in results[1].error
    assert [r.score for r in (results[0], results[2])] == pytest.approx([r.score for r in alone], rel=1e-6, abs=1e-9)
    assert (results[0].tokens, results[2].tokens) == (alone[0].tokens, alone[1].tokens)


@pytest.mark.parametrize("name", sorted(available("judges")))
def test_judge_contract(name):
    from aesthetic_audit.dimensions import load_catalogue

    if name == "vlm":  # needs a model: a backend that answers uniformly stands in for one
        from aesthetic_audit.vlm.base import AnswerProbs

        class Uniform:
            def identity(self):
                return {"model": "uniform"}

            def answer_probs(self, prompts, answers):
                return [AnswerProbs((1 / len(answers),) * len(answers), tuple(answers)) for _ in prompts]

        judge = available("judges")[name](url="http://127.0.0.1:9/v1", model="m")
        judge.backend = Uniform()
    else:
        judge = available("judges")[name]()
    judge.prepare(load_catalogue())
    dims = load_catalogue().keys()
    results = judge.judge(_images(), dims)
    assert len(results) == 2
    for r in results:
        assert set(r.scores) == set(dims)
        judged = {d for d, v in r.scores.items() if v is not None}
        assert judged == set(judge.covers)
        assert all(0.0 <= r.scores[d] <= 2.0 for d in judged)


def test_the_readme_reward_model_table_is_what_ls_scorers_prints(cli):
    """Every scorer shows its official source, score scale and parity method, and the README says the same."""
    from pathlib import Path

    from aesthetic_audit.cli import scorer_table

    code, printed, _ = cli("ls", "scorers", "--markdown")  # other tests may have registered toy scorers
    builtin = {n: c for n, c in available("scorers").items() if c.__module__.startswith("aesthetic_audit.")}
    table = scorer_table(builtin)
    assert code in (0, None) and all(row in printed for row in table.splitlines())
    rows = table.strip().splitlines()[2:]
    assert [r.split("|")[1].strip().strip("`") for r in rows] == sorted(builtin) and len(rows) >= 14
    cells = [[c.strip() for c in r.strip().strip("|").split(" | ")] for r in rows]
    assert all(len(c) == 4 and "-" not in c[1:] for c in cells), "a scorer lacks official/score_scale/parity"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert table.strip() in readme


def test_listing_scorers_imports_neither_torch_nor_httpx():
    """Every command builds the scorer registry; the endpoint client (httpx) and torch load only when a
    backend that needs them runs (they cost ~0.2 s and ~1 s on every command otherwise)."""
    code = ("import sys; from aesthetic_audit.registry import available; import aesthetic_audit.scorers.stage; "
            "available('scorers'); print('httpx' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"
