"""The score stage: four combinations with reuse, failures as records, retry."""

from pathlib import Path

import pytest
from PIL import Image

from aesthetic_audit.records import IMAGES
from aesthetic_audit.scorers.base import Scorer, ScoreResult
from aesthetic_audit.scorers.stage import run_score
from aesthetic_audit.store import Record, RunStore


class Counting(Scorer):
    """Score = mean red value + prompt length; records every call."""

    name = "counting"
    prompt_aware = True

    def __init__(self, fail_prompts=(), **kw):
        super().__init__(**kw)
        self.calls, self.fail_prompts = [], set(fail_prompts)

    def _score(self, items):
        self.calls.append(len(items))
        return [ScoreResult(None, error="boom") if p in self.fail_prompts else
                ScoreResult(float(img.getpixel((0, 0))[0]) + len(p or "")) for img, p in items]


class Blind(Counting):
    name = "blind"
    prompt_aware = False


def _run_with_pairs(tmp_path):
    store = RunStore(tmp_path)
    shas = [store.put_image(Image.new("RGB", (8, 8), (v, 0, 0))) for v in (10, 20, 30)]
    # two pairs sharing the original image and p_o
    for i, (a, p_a) in enumerate(((shas[1], "dark cat"), (shas[2], "blurry cat!"))):
        store.put(Record(f"pair{i}", IMAGES, f"p{i}", {"image_o": shas[0], "image_a": a, "p_o": "a cat",
                                                       "p_a": p_a, "dims": ["clarity"]}))
    return store, shas


def test_prompt_aware_scores_each_distinct_image_prompt_once(tmp_path):
    store, shas = _run_with_pairs(tmp_path)
    scorer = Counting()
    s = run_score(store, scorer, chunk_size=3)
    # pair 0: (o,"a cat") (o,"dark cat") (a0,"a cat") (a0,"dark cat"); pair 1 adds (o,"blurry cat!") + 2 for a1
    assert (s.total, s.new, s.failed) == (7, 7, 0)
    assert scorer.calls == [3, 3, 1]
    got = {(r.data["image"], r.data["prompt"]): r.data["score"] for r in store.records("score")}
    assert got[(shas[0], "a cat")] == 10 + 5 and got[(shas[2], "blurry cat!")] == 30 + 11
    again = run_score(store, Counting())
    assert (again.new, again.cached) == (0, 7)


def test_prompt_blind_scores_each_image_once(tmp_path):
    store, shas = _run_with_pairs(tmp_path)
    s = run_score(store, Blind())
    assert (s.total, s.new) == (3, 3)
    assert {r.data["prompt"] for r in store.records("score")} == {None}


def test_failed_items_are_records_and_retry_failed_tries_them_again(tmp_path):
    store, _ = _run_with_pairs(tmp_path)
    s = run_score(store, Counting(fail_prompts={"dark cat"}))
    assert (s.new, s.failed) == (5, 2)
    assert all(r.error == "boom" and r.data["prompt"] == "dark cat" for r in store.records("score", status="failed"))
    assert run_score(store, Counting()).new == 0  # plain rerun: failures stay failures
    retry = run_score(store, Counting(), retry_failed=True)
    assert (retry.new, retry.cached) == (2, 5)
    assert store.counts()["score"] == {"ok": 7, "failed": 0}


def test_a_missing_image_file_fails_only_its_items(tmp_path):
    store, shas = _run_with_pairs(tmp_path)
    store.image_path(shas[2]).write_bytes(b"")  # damaged on disk
    s = run_score(store, Counting())
    assert (s.new, s.failed) == (5, 2)
    (err,) = {r.error for r in store.records("score", status="failed")}
    assert "file is empty" in err and shas[2][:12] in err


def test_a_scorer_that_cannot_load_is_reported_and_the_others_run(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("edit", run, "--set", "images.editor.pairs_per_photo=1", "--strengths", "1.0",
               "--set", "images.editor.max_side=96")[0] == 0
    code, _, err = cli("score", run, "--scorers", "imagereward,composite",
                       "--set", "score.options={imagereward: {weights: /nonexistent/folder}}")
    assert code == 1
    assert ("error: scorer imagereward: missing weight files: ImageReward.pt, med_config.json not found in "
            "/nonexistent/folder") in err
    assert "score:composite: 18 items, 18 new" in err


def test_a_scorer_that_cannot_run_is_named_once_and_the_next_one_runs(tmp_path):
    """A bad option and a damaged weight file (an interrupted download) are one-line errors that name the
    scorer once; the scorers after them still run."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    from tiny import builders

    from aesthetic_audit.pipeline import Run

    _run_with_pairs(tmp_path / "run")
    weights = builders()["imagereward"](tmp_path)["weights"]  # official layout: .pt, med_config.json, vocab.txt
    damaged = Path(weights) / "ImageReward.safetensors"  # preferred over the .pt when both are there
    save_file(torch.load(Path(weights) / "ImageReward.pt", weights_only=True), str(damaged))
    damaged.write_bytes(damaged.read_bytes()[:4096])
    run = Run.open(tmp_path / "run", overrides={"score.options.imagereward": {"weights": weights}})
    run.config.score.options["brisque"] = {"devise": "cpu"}  # past the config check, as an older run's config
    summaries = run.score(["brisque", "imagereward", "composite"])
    assert run.errors[0] == ("scorer brisque: bad options ['devise']: BrisqueScorer.__init__() got an unexpected "
                             "keyword argument 'devise'")
    assert run.errors[1].startswith(f"scorer imagereward: cannot read {damaged} as safetensors (damaged or "
                                    "incomplete? download it again): SafetensorError: ")
    assert len(run.errors) == 2 and all(e.count("scorer ") == 1 for e in run.errors)
    assert summaries[2].stage == "score:composite" and summaries[2].total == 3


def test_name_alias_runs_a_second_instance_of_a_scorer(tmp_path):
    """``NAME:ALIAS`` builds NAME with its own options; records, identity and the analysis carry the alias."""
    from aesthetic_audit.analysis.audit import RunData
    from aesthetic_audit.scorers.stage import make_scorer

    store, _ = _run_with_pairs(tmp_path)
    plain, again = make_scorer("composite"), make_scorer("composite:again")
    assert type(again) is type(plain) and again.name == "composite:again" and plain.name == "composite"
    assert again.identity()["name"] == "composite:again"
    run_score(store, plain)
    run_score(store, again)
    by_name: dict[str, dict] = {}
    for rec in store.records("score"):
        by_name.setdefault(rec.data["scorer"], {})[(rec.data["image"], rec.data["prompt"])] = rec.data["score"]
    assert set(by_name) == {"composite", "composite:again"} and by_name["composite"] == by_name["composite:again"]
    assert len(by_name["composite"]) == 3  # prompt-blind: each image once
    data = RunData.from_store(store)
    assert data.higher_is_better["composite:again"] is True and data.prompt_aware["composite:again"] is False


@pytest.mark.parametrize("name", ["composite:", "composite:b:c", "composite:b c", "composite:<b>"])
def test_a_malformed_alias_is_refused_by_the_config(name):
    from aesthetic_audit.config import ScoreConfig

    with pytest.raises(ValueError, match="an alias after ':'"):
        ScoreConfig(scorers=[name])
