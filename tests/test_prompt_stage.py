import collections
import json

import pytest

from aesthetic_audit.config import load_config
from aesthetic_audit.dimensions import load_catalogue
from aesthetic_audit.errors import ConfigError
from aesthetic_audit.pipeline import Run
from aesthetic_audit.prompts.rewriters.base import Effect, RewriteRequest
from aesthetic_audit.prompts.rewriters.template import FRAMES, TemplateRewriter, embed_caption, join_effects
from aesthetic_audit.prompts.stage import draw_dims, plan_prompts, run_prompts, sample_captions
from aesthetic_audit.store import RunStore

CAT = load_catalogue()


def _pairs(store):
    return sorted((r.data for r in store.records("prompts")), key=lambda d: d["index"])


def test_builtin_300_pairs_each_with_2_to_4_recorded_dims(tmp_path):
    store = RunStore(tmp_path)
    summary = run_prompts(store, load_config(), CAT)
    assert (summary.total, summary.new, summary.failed) == (300, 300, 0)
    pairs = _pairs(store)
    assert [p["index"] for p in pairs] == list(range(300))
    ks = collections.Counter(len(p["dims"]) for p in pairs)
    assert set(ks) == {2, 3, 4} and all(70 <= v <= 130 for v in ks.values())  # ~100 each: k ~ U{2,3,4}
    for p in pairs:
        assert len(set(p["dims"])) == len(p["dims"]) and set(p["dims"]) <= set(CAT.study_keys)
        assert p["words"] == len(p["p_a"].split()) < 70
    used = collections.Counter(d for p in pairs for d in p["dims"])
    assert set(used) == set(CAT.study_keys)


def test_template_prompt_is_exactly_the_chosen_effects_then_the_caption(tmp_path):
    store = RunStore(tmp_path)
    run_prompts(store, load_config(None, {"prompts.n": 60}), CAT)
    for p in _pairs(store):
        meta = p["meta"]
        phrases = [CAT[d].phrasings[i] for d, i in zip(p["dims"], meta["phrasings"])]
        expected = FRAMES[meta["frame"]].format(effects=join_effects(phrases), caption=embed_caption(p["p_o"]))
        assert p["p_a"] == expected
        caption_at = p["p_a"].index(embed_caption(p["p_o"]))
        assert all(p["p_a"].index(ph) < caption_at for ph in phrases)  # effects first
        others = {ph for d in CAT if d.key not in p["dims"] for ph in d.phrasings}
        assert not any(ph in p["p_a"] for ph in others)
    assert len({_pairs(store)[i]["meta"]["frame"] for i in range(60)}) == len(FRAMES)


def test_same_seed_gives_byte_identical_pairs_and_another_seed_differs(tmp_path, cli):
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run = tmp_path / name
        assert cli("prompts", run, "--seed", seed)[0] == 0
        out = tmp_path / f"{name}.jsonl"
        assert cli("export", run, "--stage", "prompts", "-o", out, "--layout", "study")[0] == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]
    rows = [json.loads(line) for line in outs[0].decode().splitlines()]
    assert len(rows) == 300 and set(rows[0]) == {"original_prompt", "disorted_long_prompt", "selected"}


def test_rerun_computes_nothing_new(tmp_path):
    store = RunStore(tmp_path)
    cfg = load_config(None, {"prompts.n": 20})
    assert run_prompts(store, cfg, CAT).new == 20
    again = run_prompts(store, cfg, CAT)
    assert (again.new, again.cached) == (0, 20)


def test_sampling_and_dims_are_seeded_and_per_caption():
    caps = list(range(50))
    assert sample_captions(caps, 10, 3) == sample_captions(caps, 10, 3)
    assert sample_captions(caps, 10, 3) == sorted(sample_captions(caps, 10, 3))
    assert sample_captions(caps, 10, 3) != sample_captions(caps, 10, 4)
    assert draw_dims(CAT.study_keys, 2, 4, 0, "A cat.") == draw_dims(CAT.study_keys, 2, 4, 0, "A cat.")
    assert draw_dims(["clarity"], 2, 4, 0, "x") == ["clarity"]  # k clipped to the pool


def test_configurable_dimension_pool_and_unknown_key(tmp_path):
    store = RunStore(tmp_path)
    cfg = load_config(None, {"prompts.n": 30, "prompts.dimensions": ["clarity", "emotion", "richness"],
                             "prompts.k_min": 1, "prompts.k_max": 2})
    run_prompts(store, cfg, CAT)
    assert all(set(p["dims"]) <= {"clarity", "emotion", "richness"} and 1 <= len(p["dims"]) <= 2
               for p in _pairs(store))
    with pytest.raises(ConfigError, match="unknown dimension 'blur'"):
        run_prompts(store, load_config(None, {"prompts.dimensions": ["blur"]}), CAT)


def test_caption_too_long_for_the_word_limit_is_a_failed_record(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("A short caption.\n" + " ".join(["word"] * 80) + "\n")
    store = RunStore(tmp_path / "run")
    summary = run_prompts(store, load_config(None, {"prompts.source": str(src)}), CAT)
    assert (summary.new, summary.failed) == (1, 1)
    (failed,) = store.records("prompts", status="failed")
    assert failed.item == "c.txt:line 2" and "caption too long" in failed.error


def test_template_rewriter_shortest_fallback():
    effect = Effect("clarity", "blurry", ("an extremely long and elaborate description of blur " * 3, "blur"))
    req = RewriteRequest(" ".join(["w"] * 55), (effect,), 70, 0)
    res = TemplateRewriter().rewrite(req)
    assert res.prompt is not None and "blur" in res.prompt and len(res.prompt.split()) < 70


def test_embed_caption():
    assert embed_caption("A man riding a bike.") == "a man riding a bike"
    assert embed_caption("Two dogs play.") == "two dogs play"
    assert embed_caption("TV on a table.") == "TV on a table"
    assert embed_caption("Paris at night") == "Paris at night"


def test_cli_on_coco_json_and_partiprompts_tsv(tmp_path, cli):
    coco = tmp_path / "captions.json"
    coco.write_text(json.dumps({"annotations": [{"id": i, "image_id": i, "caption": f"A photo of thing {i}."}
                                                for i in range(12)]}))
    code, _, err = cli("prompts", tmp_path / "r1", "--source", coco, "-n", 5)
    assert code == 0 and "5 new" in err
    pairs = _pairs(RunStore(tmp_path / "r1"))
    assert len(pairs) == 5 and all(p["caption_id"].startswith("captions.json:annotation ") for p in pairs)
    tsv = tmp_path / "PartiPrompts.tsv"
    tsv.write_text("Prompt\tCategory\tChallenge\tNote\n" + "".join(
        f"prompt number {i}\t{'Animals' if i % 2 else 'Food'}\tBasic\t\n" for i in range(10)))
    code, _, err = cli("prompts", tmp_path / "r2", "--source", tsv, "--column", "Prompt",
                       "--filter", "Category=Animals")
    assert code == 0
    assert sorted(p["p_o"] for p in _pairs(RunStore(tmp_path / "r2"))) == [f"prompt number {i}" for i in (1, 3, 5, 7, 9)]


def test_study_layout_import_round_trip(tmp_path, cli):
    assert cli("prompts", tmp_path / "r", "-n", 10)[0] == 0
    for suffix in ("csv", "jsonl"):
        out = tmp_path / f"study.{suffix}"
        assert cli("export", tmp_path / "r", "--stage", "prompts", "-o", out, "--layout", "study")[0] == 0
        code, _, err = cli("prompts", tmp_path / f"imp-{suffix}", "--import", out)
        assert code == 0
        orig = [(p["p_o"], p["p_a"], p["dims"]) for p in _pairs(RunStore(tmp_path / "r"))]
        got = [(p["p_o"], p["p_a"], p["dims"]) for p in _pairs(RunStore(tmp_path / f"imp-{suffix}"))]
        assert got == orig


def test_study_import_bad_rows_fail_alone(tmp_path, cli):
    path = tmp_path / "pairs.csv"
    path.write_text("original_prompt,disorted_long_prompt,selected\n"
                    "A cat.,A blurry cat.,\"['clarity']\"\n"
                    "A dog.,,\"['clarity']\"\n"
                    "A cow.,A pixelated cow.,\"['pixelated']\"\n")
    code, _, _ = cli("prompts", tmp_path / "r", "--import", path)
    assert code == 1
    store = RunStore(tmp_path / "r")
    assert [p["dims"] for p in _pairs(store)] == [["clarity"]]
    errors = sorted((r.item, r.error) for r in store.records("prompts", status="failed"))
    assert errors == [("pairs.csv:line 3", "pairs.csv:line 3: missing disorted_long_prompt"),
                      ("pairs.csv:line 4", "pairs.csv:line 4: unknown dimension 'pixelated'; add it in a dimensions file")]
    code, out, _ = cli("status", tmp_path / "r")
    assert "2 failed" in out and "missing disorted_long_prompt" in out


def test_run_open_keeps_the_stored_config(tmp_path):
    run = Run.open(tmp_path, overrides={"prompts.n": 7, "seed": 5})
    run.prompts()
    again = Run.open(tmp_path)
    assert (again.config.prompts.n, again.config.seed) == (7, 5)


def test_keys_follow_what_determines_a_rewrite(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("A cat on a mat.\nA dog in the rain.\n")
    store = RunStore(tmp_path / "run")
    cfg = load_config(None, {"prompts.source": str(src), "prompts.n": None})
    assert run_prompts(store, cfg, CAT).new == 2
    # a caption added at the top shifts every position: only the new caption is rewritten
    src.write_text("A bus at night.\nA cat on a mat.\nA dog in the rain.\n")
    again = run_prompts(store, cfg, CAT)
    assert (again.new, again.cached) == (1, 2)
    # new wording for a dimension changes the prompts that use it, and only those
    dims_file = tmp_path / "dims.yaml"
    dims_file.write_text("dimensions:\n" + "".join(
        f"  - key: {d}\n    phrasings: [a reworded {d} effect]\n" for d in CAT.study_keys[:1]))
    reworded = load_catalogue(dims_file)
    third = run_prompts(store, cfg, reworded)
    uses = sum(CAT.study_keys[0] in p.dims for p in plan_prompts(cfg, reworded, TemplateRewriter())[0])
    assert (third.new, third.cached) == (uses, 3 - uses)


def test_import_is_keyed_by_content_and_fixed_rows_leave_no_failure(tmp_path, cli):
    path = tmp_path / "pairs.csv"
    path.write_text("original_prompt,disorted_long_prompt,selected\n"
                    "A cat.,A blurry cat.,\"['clarity']\"\n"
                    "A dog.,,\"['clarity']\"\n")
    run = tmp_path / "r"
    assert cli("prompts", run, "--import", path)[0] == 1
    path.write_text("original_prompt,disorted_long_prompt,selected\n"
                    "A hen.,A dark hen.,\"['color brightness']\"\n"
                    "A cat.,A blurry cat.,\"['clarity']\"\n"
                    "A dog.,A dark dog.,\"['color brightness']\"\n")
    code, _, err = cli("prompts", run, "--import", path)
    assert code == 0 and "2 new, 1 cached, 0 failed" in err
    store = RunStore(run)
    assert store.counts()["prompts"] == {"ok": 3, "failed": 0}
