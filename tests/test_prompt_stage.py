import collections
import functools
import json
import re

import pytest

from aesthetic_audit.config import load_config
from aesthetic_audit.dimensions import load_catalogue
from aesthetic_audit.errors import ConfigError, InputError
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
    assert len(rows) == 300 and set(rows[0]) == {"original_prompt", "disorted_long_prompt", "selected", "origin"}
    assert {r["origin"] for r in rows} == {"captions"}


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


# -- hostile imports, source paths, origins, contradictions (issue 7, items 12, 21, 22) ---------------

def test_import_rows_with_nested_dims_control_characters_or_non_text_fail_alone(tmp_path, cli):
    nested = [["clarity"]]
    for _ in range(400):
        nested = [nested]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [
        {"p_o": "A cat.", "p_a": "A blurry cat.", "dims": ["clarity"]},
        {"p_o": "A dog.", "p_a": "A blurry dog.", "dims": nested},
        {"p_o": "A cow.", "p_a": "A blurry\u0000 cow.", "dims": ["clarity"]},
        {"p_o": {"text": "A hen."}, "p_a": "A blurry hen.", "dims": ["clarity"]},
        ["not", "an", "object"],
    ]) + "\n")
    assert cli("prompts", tmp_path / "r", "--import", path)[0] == 1
    store = RunStore(tmp_path / "r")
    assert [p["p_o"] for p in _pairs(store)] == ["A cat."]
    errors = sorted((r.item, r.error) for r in store.records("prompts", status="failed"))
    assert errors == [
        ("pairs.jsonl:line 2", "pairs.jsonl:line 2: dims [[[[[[[...]]]]]]] must be a flat list of dimension names"),
        ("pairs.jsonl:line 3", "pairs.jsonl:line 3: p_a contains the control character U+0000"),
        ("pairs.jsonl:line 4", "pairs.jsonl:line 4: p_o must be text, not a dict"),
        ("pairs.jsonl:line 5", "pairs.jsonl:line 5: expected a JSON object")]
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("p_o,p_a,dims\nA cat.,A blurry cat.,\"" + "[" * 5000 + "]" * 5000 + "\"\n")
    assert cli("prompts", tmp_path / "r2", "--import", csv_path)[0] == 1
    (failed,) = RunStore(tmp_path / "r2").records("prompts", status="failed")
    assert failed.error.startswith("pairs.csv:line 2: dims '[[[[") and "neither a JSON list" in failed.error
    # deeper than the JSON parser goes: the file is refused, naming the line
    path.write_text('{"p_o": "A cat.", "p_a": "A blurry cat.", "dims": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    code, _, err = cli("prompts", tmp_path / "r3", "--import", path)
    assert code == 2 and err.strip() == f"error: {path}:1: JSON nested too deeply"


def test_import_csv_with_an_unclosed_quote_is_an_error(tmp_path, cli):
    path = tmp_path / "pairs.csv"
    path.write_text('p_o,p_a,dims\nA cat.,"A blurry cat.,clarity\nA dog.,A dark dog.,clarity\n')
    code, _, err = cli("prompts", tmp_path / "r", "--import", path)
    assert code == 2 and f"{path}:2: malformed row" in err and "an unclosed quote?" in err


def test_relative_source_and_photos_are_stored_absolute(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "caps.txt").write_text("A cat on a mat.\nA dog in the rain.\n")
    (tmp_path / "b" / "caps.txt").write_text("Something else entirely.\n")
    monkeypatch.chdir(tmp_path / "a")
    run = Run.open(tmp_path / "run", overrides={"prompts.source": "caps.txt", "prompts.n": None,
                                                 "images.editor.photos": "photos"})
    assert run.config.prompts.source == str(tmp_path / "a" / "caps.txt")
    assert run.config.images.editor.photos == str(tmp_path / "a" / "photos")
    assert run.prompts().new == 2
    monkeypatch.chdir(tmp_path / "b")  # a rerun from elsewhere reads the same file
    again = Run.open(tmp_path / "run")
    assert again.config.prompts.source == str(tmp_path / "a" / "caps.txt")
    assert (again.prompts().new, again.summaries[-1].cached) == (0, 2)
    assert load_config(None, {"prompts.source": "builtin"}).prompts.source == "builtin"
    assert load_config().images.editor.photos == "builtin"


def _photo_folder(folder):
    from PIL import Image

    folder.mkdir()
    for i, colour in enumerate([(200, 40, 40), (40, 160, 90)]):
        Image.new("RGB", (48, 32), colour).save(folder / f"p{i}.png")
    (folder / "captions.csv").write_text("file,caption\np0.png,A red wall.\np1.png,A green wall.\n")
    return folder


def test_every_export_layout_marks_the_origin_and_export_filters_by_it(tmp_path):
    from aesthetic_audit.store.export import export_stage
    from aesthetic_audit.prompts.pairs_io import study_layout

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("original_prompt,disorted_long_prompt,selected\nA cow.,A dark cow.,\"['color brightness']\"\n"
                     "A hen.,,\"['clarity']\"\n")
    run = Run.open(tmp_path / "run", overrides={
        "prompts.n": 3, "images.editor.photos": str(_photo_folder(tmp_path / "photos")),
        "images.editor.strengths": [1.0], "images.editor.pairs_per_photo": 1})
    run.prompts()
    run.prompts(import_path=pairs)
    run.edit()
    store = run.store
    expected = {"captions": 3, "import": 1, "editor": 2}
    for layout in (None, study_layout):
        rows = [json.loads(line) for line in export_stage(
            store, "prompts", tmp_path / "all.jsonl", include_failed=False, layout=layout).read_text().splitlines()]
        assert collections.Counter(r["origin"] for r in rows) == expected
        for origin, n in expected.items():
            out = export_stage(store, "prompts", tmp_path / f"{origin}.jsonl", include_failed=False,
                               layout=layout, origin=origin)
            assert [json.loads(line)["origin"] for line in out.read_text().splitlines()] == [origin] * n
    failed = [json.loads(line) for line in export_stage(store, "prompts", tmp_path / "f.jsonl",
                                                        origin="import").read_text().splitlines()]
    assert sorted(r["status"] for r in failed) == ["failed", "ok"]
    with pytest.raises(InputError, match="one of captions, editor, import; got 'photos'"):
        export_stage(store, "prompts", tmp_path / "x.csv", origin="photos")
    with pytest.raises(InputError, match="applies to the prompts stage"):
        export_stage(store, "images", tmp_path / "x.csv", origin="editor")


def test_records_stored_before_the_origin_field_still_export_with_their_origin(tmp_path):
    from aesthetic_audit.records import prompt_origin
    from aesthetic_audit.store import Record
    from aesthetic_audit.store.export import export_stage

    store = RunStore(tmp_path)
    # Exactly the fields each writer stored before records had an origin.
    store.put_many([
        Record("c", "prompts", "builtin:line 1", {"pair_id": "c", "index": 0, "source": "builtin",
                                                  "caption_id": "builtin:line 1", "p_o": "A cat.", "p_a": "x",
                                                  "dims": ["clarity"], "rewriter": "template", "seed": 0}),
        Record.failed("cf", "prompts", "c.txt:line 2", "caption too long", pair_id="cf", index=1, source="c.txt",
                      caption_id="c.txt:line 2", p_o="y", dims=["clarity"], rewriter="llm", seed=0),
        Record("e", "prompts", "p0.png#0", {"pair_id": "e", "index": None, "source": "photos", "caption_id": "p0.png",
                                            "p_o": "A wall.", "p_a": "z", "dims": ["clarity"],
                                            "rewriter": "template", "seed": 0}),
        Record("i", "prompts", "pairs.csv:line 2", {"pair_id": "i", "index": 0, "source": "pairs.csv",
                                                    "caption_id": "pairs.csv:line 2", "p_o": "A cow.", "p_a": "w",
                                                    "dims": [], "rewriter": "import", "seed": None}),
        Record.failed("if", "prompts", "pairs.csv:line 3", "missing p_a", index=1),
    ])
    rows = [json.loads(line) for line in export_stage(store, "prompts", tmp_path / "p.jsonl").read_text().splitlines()]
    assert {r["key"]: r["origin"] for r in rows} == {"c": "captions", "cf": "captions", "e": "editor",
                                                     "i": "import", "if": "import"}
    assert all(list(r)[-1] == "origin" for r in rows)
    assert prompt_origin({"origin": "editor", "index": 3, "rewriter": "import"}) == "editor"  # stored wins


# The contradictions a reader would spot: wording of a full, cluttered scene beside wording of an
# empty one, and flat shadowless light beside hard light and shadows. Written out here, independently
# of the catalogue's own conflict list.
CLUTTER = ("cluttered", "messy", "busy", "chaotic", "junk", "jumbled", "disorderly", "stray objects")
EMPTY = ("empty", "barren", "bare", "sparse", "vacant", "very little content", "almost nothing")
FLAT_LIGHT = ("shadowless", "no shadows", "flat, lifeless", "directionless", "featureless illumination")
HARD_LIGHT = ("harsh", "glare", "hotspots", "unflattering shadows", "direct flash")
CONTRADICTIONS = ((CLUTTER, EMPTY), (FLAT_LIGHT, HARD_LIGHT))


@functools.cache
def _says(phrase: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", phrase) for w in words)  # "bare", not "barely"


def _contradictions(phrases: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for a in phrases for b in phrases for one, other in CONTRADICTIONS
            if _says(a, one) and _says(b, other)]


def test_the_built_in_catalogue_has_such_contradictions_and_declares_them():
    # the test's word lists find the real clashes in the phrasings ...
    assert _contradictions(list(CAT["background"].phrasings + CAT["richness"].phrasings))
    assert _contradictions(list(CAT["lighting distinction"].phrasings + CAT["lighting aesthetic"].phrasings))
    # ... and any two dimensions whose phrasings clash are declared as conflicting
    conflicts = CAT.conflicts()
    for a in CAT:
        for b in CAT:
            if a.key != b.key and _contradictions(list(a.phrasings + b.phrasings)):
                assert b.key in conflicts[a.key], (a.key, b.key)


@pytest.mark.parametrize("dimensions", [None, [d.key for d in CAT]])
def test_no_prompt_combines_contradictory_effects_and_pairs_stay_deterministic(tmp_path, dimensions):
    cfg = load_config(None, {"prompts.dimensions": dimensions})
    stores = [RunStore(tmp_path / name) for name in ("a", "b")]
    for store in stores:
        assert run_prompts(store, cfg, CAT).new == 300
    pairs = _pairs(stores[0])
    conflicts = CAT.conflicts()
    for p in pairs:
        phrases = [CAT[d].phrasings[i] for d, i in zip(p["dims"], p["meta"]["phrasings"])]
        assert _contradictions(phrases) == [], p["p_a"]
        assert not any(b in conflicts[a] for a in p["dims"] for b in p["dims"])
    assert pairs == _pairs(stores[1])  # same seed, same pairs, byte for byte
    # the conflict only removes sets: pairs of dims that do not conflict are all still drawn
    drawn = {frozenset((a, b)) for p in pairs for a in p["dims"] for b in p["dims"] if a != b}
    pool = dimensions or CAT.study_keys
    allowed = {frozenset((a, b)) for a in pool for b in pool if a != b and b not in conflicts[a]}
    assert drawn == allowed


def test_draw_dims_with_conflicts_is_uniform_over_compatible_sets_and_otherwise_unchanged():
    conflicts = {"a": {"b"}, "b": {"a"}}
    draws = [draw_dims("abcd", 2, 2, 0, f"caption {i}", conflicts) for i in range(2000)]
    counts = collections.Counter(frozenset(d) for d in draws)
    assert set(counts) == {frozenset(s) for s in ("ac", "ad", "bc", "bd", "cd")}  # never {a, b}
    assert all(330 <= n <= 470 for n in counts.values())  # ~400 each
    # a draw that has no conflict is exactly the draw without conflicts
    for i in range(200):
        plain = draw_dims("abcd", 2, 3, 0, f"caption {i}")
        if not {"a", "b"} <= set(plain):
            assert draw_dims("abcd", 2, 3, 0, f"caption {i}", conflicts) == plain
    with pytest.raises(ConfigError, match="no 2 of the dimensions a, b can go into one prompt"):
        draw_dims(["a", "b"], 2, 2, 0, "x", conflicts)


def test_catalogue_conflicts_must_name_other_dimensions(tmp_path):
    path = tmp_path / "dims.yaml"
    path.write_text("dimensions:\n  - key: clarity\n    conflicts: [nosuch]\n")
    with pytest.raises(InputError, match=r"dims.yaml: dimension 'clarity': conflicts names 'nosuch'"):
        load_catalogue(path)
    path.write_text("dimensions:\n  - key: clarity\n    conflicts: [emotion]\n  - key: background\n    conflicts: []\n")
    conflicts = load_catalogue(path).conflicts()
    assert conflicts["emotion"] == {"clarity"} and conflicts["richness"] == frozenset()


def test_import_of_a_corrupt_parquet_file_is_one_error(tmp_path, cli):
    path = tmp_path / "pairs.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    code, _, err = cli("prompts", tmp_path / "r", "--import", path)
    assert code == 2 and err.startswith(f"error: prompt pairs file {path} is not a readable Parquet file")
