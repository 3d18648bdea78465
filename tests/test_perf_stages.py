"""The record-writing stages after the performance work (issue 14): keys spliced from templates are the
keys spec_hash gives, byte for byte; a stage killed mid-way keeps what it had and a rerun ends exact; the
prompt stage streams its source and remembers its keys; composite scores come from stored judge records.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from aesthetic_audit.clients.openai_compat import EndpointUnreachable
from aesthetic_audit.config import load_config
from aesthetic_audit.dimensions import load_catalogue
from aesthetic_audit.errors import InputError
from aesthetic_audit.hashing import canonical_json, spec_hash
from aesthetic_audit.images.shared import DecodedImages, decode_stored, sharing
from aesthetic_audit.judges.classical import ClassicalJudge
from aesthetic_audit.judges.stage import run_judge
from aesthetic_audit.labels.stage import run_labels
from aesthetic_audit.labels.vlm import LabelResult
from aesthetic_audit.prompts import stage as prompt_stage
from aesthetic_audit.prompts.rewriters.template import TemplateRewriter
from aesthetic_audit.prompts.sources import open_captions, read_captions
from aesthetic_audit.prompts.stage import (PromptPlanner, chosen_captions, draw_dims, effect_spec, run_prompts,
                                           sample_captions)
from aesthetic_audit.records import (IMAGES, SpecTemplate, judge_key, judge_key_template, label_key,
                                     label_key_template, prompt_key, prompt_key_template, score_key,
                                     score_key_template)
from aesthetic_audit.scorers.base import Scorer, ScoreResult
from aesthetic_audit.scorers.composite import CompositeAesthetics
from aesthetic_audit.scorers.stage import run_score
from aesthetic_audit.stage import StageSummary, StoredKeys, find, stored_fields
from aesthetic_audit.store import Record, RunStore

CAT = load_catalogue()
ALPHABET = ["a", "Z", " ", '"', "\\", "/", "{", "}", ":", ",", "\n", "\t", "\x00", "\x1f", "\x7f", "é", "東",
            "😀", "\u2028", "\ufeff", "\ue000", "0", "-1.5e3", "null", "'"]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(7 if depth < 2 else 5)
    if kind == 0:
        return _text(rng)
    if kind == 1:
        return rng.choice([0, -3, 2**40, 1.5, -0.0, 1e-300, 3.141592653589793])
    if kind == 2:
        return rng.choice([None, True, False])
    if kind == 3:
        return rng.randint(-1000, 1000)
    if kind == 4:
        return _text(rng) or None
    if kind == 5:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {_text(rng): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


# -- keys ------------------------------------------------------------------------------------------

def test_spliced_keys_equal_spec_hash_byte_for_byte():
    rng = random.Random(14)
    for _ in range(400):
        identity = {"name": _text(rng), "version": _text(rng), "options": _value(rng)}
        image, prompt, other = _text(rng), _value(rng), _value(rng)
        assert score_key_template(identity).hash(image, prompt) == score_key(scorer=identity, image=image, prompt=prompt)
        dims = [_text(rng) for _ in range(rng.randint(0, 4))]
        assert judge_key_template(identity, dims).hash(image) == judge_key(judge=identity, image=image, dims=dims)
        seed = rng.choice([None, 0, 7, 2**33])
        source = rng.choice([identity, f"human:{_text(rng)}"])
        assert (label_key_template(source, seed).hash(image, other, prompt)
                == label_key(source=source, image_o=image, image_a=other, prompt=prompt, seed=seed))
        # digest_json/hash_json take the fields' JSON text: the same key from canonical_json of each field
        template = score_key_template(identity)
        assert (template.digest_json(canonical_json(image), canonical_json(prompt)).hex()
                == score_key(scorer=identity, image=image, prompt=prompt))
        # any spec, any fields, including values that look like the template's own markers
        spec = {_text(rng) or "k": _value(rng) for _ in range(rng.randint(0, 4))}
        fields = [f for f in {_text(rng) or "f" for _ in range(rng.randint(1, 5))} if f not in spec]
        values = [rng.choice([_value(rng), "\ue0000\ue001"]) for _ in fields]
        assert SpecTemplate(spec, fields).hash(*values) == spec_hash({**spec, **dict(zip(fields, values))})
        assert SpecTemplate(spec, fields).text(*values) == canonical_json({**spec, **dict(zip(fields, values))})


def test_a_fixed_part_holding_a_marker_is_refused():
    with pytest.raises(ValueError, match="marker"):
        SpecTemplate({"x": "\ue0000\ue001"}, ["y"])


def test_prompt_keys_and_draw_seeds_equal_the_original_spec_hashes(tmp_path):
    rng = random.Random(3)
    config = load_config(None, {"seed": 11})
    planner = PromptPlanner(config, CAT, TemplateRewriter())
    identity = TemplateRewriter().identity()
    for _ in range(300):
        caption = _text(rng) + " caption"
        dims = planner.dims(caption)
        effects = effect_spec([planner.effects[d] for d in dims])
        assert planner.key(caption, dims) == prompt_key(caption=caption, effects=effects, rewriter=identity,
                                                       max_words=config.prompts.max_words, seed=11)
        # the draw is seeded exactly as before: Random(canonical_json({seed, caption, draw}))
        k_rng = random.Random(canonical_json({"seed": 11, "caption": caption, "draw": "dims"}))
        k = k_rng.randint(2, 4)
        assert draw_dims(list("abcdefgh"), 2, 4, 11, caption) == k_rng.sample(list("abcdefgh"), k)
    template = prompt_key_template(rewriter=identity, max_words=70, seed=None)
    assert template.hash("x", [["a", "b", ["c"]]]) == prompt_key(caption="x", effects=[["a", "b", ["c"]]],
                                                                 rewriter=identity, max_words=70, seed=None)


# -- stored keys and fields ------------------------------------------------------------------------

def test_stored_keys_answers_as_a_set_would(tmp_path):
    store = RunStore(tmp_path)
    rng = random.Random(5)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3000)]
    odd = ["pair0", "ABCDEF" * 10 + "abcd", " " + keys[0][1:], "x" * 64]  # not SHA-256 hex keys
    stored = {k: rng.choice(["ok", "failed"]) for k in rng.sample(keys, 1500) + odd[:2]}
    store.put_many(Record(k, "score", "i", status=st) for k, st in stored.items())
    elsewhere = hashlib.sha256(b"judge").hexdigest()
    store.put_many([Record(elsewhere, "judge", "i")])  # another stage's key is not this stage's
    # 64-bit prefixes shared with stored keys but different keys: found only by the full comparison
    clash = [k[:16] + "0" * 48 for k in list(stored)[:20] if len(k) == 64 and k[16:] != "0" * 48]
    queries = keys + odd + clash + [elsewhere]
    got = StoredKeys(store, "score").status(queries)
    assert got == [stored.get(k) for k in queries]
    table = np.sort(np.frombuffer(b"".join(bytes.fromhex(k) for k in keys[:100]), dtype="S32"))
    q = np.frombuffer(b"".join(bytes.fromhex(k) for k in keys[50:150] + clash), dtype="S32")
    found, at = find(table, q)
    assert found.tolist() == [True] * 50 + [False] * (50 + len(clash))
    assert all(table[i] == v for i, v, f in zip(at, q, found) if f)


def test_stored_fields_read_what_json_loads_reads(tmp_path):
    store = RunStore(tmp_path)
    rows = [{"image_o": "a", "p_a": "x \"y\" é\n", "n": None},
            {"image_o": 3, "p_a": [1, {"b": True}]},   # other types: parsed whole
            {"image_o": "b"},                         # p_a missing: the default
            {"image_o": "c", "p_a": None}]            # p_a null: None, not the default
    store.put_many(Record(f"k{i}", IMAGES, "i", d) for i, d in enumerate(rows))
    store.put_many([Record("kf", IMAGES, "i", {"image_o": "f"}, status="failed")])
    got = [(key, list(values)) for key, values in stored_fields(store, IMAGES, ("image_o", "p_a", "n"),
                                                                 defaults={"p_a": ""})]
    assert got == [("k0", ["a", "x \"y\" é\n", None]), ("k1", [3, [1, {"b": True}], None]),
                   ("k2", ["b", "", None]), ("k3", ["c", None, None])]


# -- caption sources stream ------------------------------------------------------------------------

def test_text_source_lines_break_as_str_splitlines_and_duplicates_name_the_first(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("\ufeffOne cat.\r\nTwo\rdogs.\x85Three\u2028birds.\n\n  one   CAT. \nFour\x0bcows.\x07\n"
                     .encode("utf-8"))
    cs = read_captions(str(path))
    # splitlines breaks at \r\n, \r, \x85, \u2028, \x0b: lines 1-9; line 6 is blank
    assert [(c.id, c.text) for c in cs.captions] == [
        ("c.txt:line 1", "One cat."), ("c.txt:line 2", "Two"), ("c.txt:line 3", "dogs."),
        ("c.txt:line 4", "Three"), ("c.txt:line 5", "birds."), ("c.txt:line 8", "Four")]
    assert cs.warnings == ["c.txt:line 6: empty caption skipped",
                           "c.txt:line 7: duplicate of c.txt:line 1 skipped",
                           "c.txt:line 9: caption with the control character U+0007 skipped"]
    stream = open_captions(str(path))
    assert stream.count == 6 and list(stream) == cs.captions and list(stream) == cs.captions  # re-readable
    assert bytes(stream.digests) == b"".join(hashlib.blake2b(c.text.encode(), digest_size=16).digest()
                                             for c in cs.captions)


def test_csv_source_streams_and_errors_keep_their_messages(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,caption\n1,"A cat, asleep."\n2,A dog.\n', newline="")
    assert [(c.id, c.text) for c in read_captions(str(path)).captions] == [("c.csv:line 2", "A cat, asleep."),
                                                                        ("c.csv:line 3", "A dog.")]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(InputError, match=r"bad.txt:3: bytes that are not UTF-8 \(invalid start byte at byte 19\)"):
        read_captions(str(bad))
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\t\n")
    with pytest.raises(InputError, match="caption source .*blank.txt is empty"):
        read_captions(str(blank))


def test_a_source_that_changes_between_its_two_reads_is_an_error(tmp_path):
    path = tmp_path / "c.txt"
    for changed in ("One.\n", "One.\nTwo.\nThree.\nFour.\n"):
        path.write_text("One.\nTwo.\nThree.\n")
        stream = open_captions(str(path))
        path.write_text(changed)
        with pytest.raises(InputError, match="c.txt: changed while it was being read"):
            list(stream)


def test_streamed_sampling_picks_what_list_sampling_picks(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("".join(f"Caption number {i}.\n" for i in range(500)))
    stream = open_captions(str(path))
    listed = read_captions(str(path)).captions
    for n, seed in ((None, 0), (37, 0), (37, 1), (499, 5), (500, 2), (900, 3)):
        assert list(chosen_captions(stream, n, seed)) == sample_captions(listed, n, seed)


# -- the prompt stage ------------------------------------------------------------------------------

def _captions(tmp_path, n: int):
    path = tmp_path / "caps.txt"
    path.write_text("".join(f"A photo of thing number {i}.\n" for i in range(n)))
    return load_config(None, {"prompts.source": str(path), "prompts.n": None})


def _data(store: RunStore, stage: str) -> dict[str, tuple[str, str, str | None]]:
    return {r.key: (r.status, canonical_json(r.data), r.error) for r in store.records(stage, status=None)}


def test_a_rerun_reads_keys_from_the_memo_and_draws_nothing(tmp_path, monkeypatch):
    config = _captions(tmp_path, 60)
    store = RunStore(tmp_path / "run")
    assert run_prompts(store, config, CAT).new == 60
    fresh = _data(store, "prompts")

    def no_draws(*args, **kwargs):
        raise AssertionError("a finished stage drew dimensions again")

    monkeypatch.setattr(prompt_stage, "draw_dims", no_draws)
    again = run_prompts(store, config, CAT)
    assert (again.total, again.new, again.cached, again.failed) == (60, 0, 60, 0)
    monkeypatch.undo()
    # without the memo (a run made before it existed), the keys are drawn again and found stored
    store.db.execute("DELETE FROM memo")
    third = run_prompts(store, config, CAT)
    assert (third.new, third.cached) == (0, 60)
    assert store.db.execute("SELECT COUNT(*) FROM memo").fetchone()[0] == 60
    assert _data(store, "prompts") == fresh


class _Interrupting(TemplateRewriter):
    """Ctrl-C on the k-th rewrite."""

    def __init__(self, k: int):
        self.k, self.n = k, 0

    def rewrite(self, request):
        self.n += 1
        if self.n == self.k:
            raise KeyboardInterrupt
        return super().rewrite(request)


def test_an_interrupted_prompt_stage_keeps_what_it_wrote_and_resumes_exactly(tmp_path):
    config = _captions(tmp_path, 90)
    clean = RunStore(tmp_path / "clean")
    run_prompts(clean, config, CAT)
    store = RunStore(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run_prompts(store, config, CAT, rewriter=_Interrupting(41))
    assert store.counts()["prompts"] == {"ok": 40, "failed": 0}  # the buffer was committed on the way out
    again = run_prompts(store, config, CAT)
    assert (again.new, again.cached) == (50, 40)
    assert _data(store, "prompts") == _data(clean, "prompts")


def test_a_killed_prompt_stage_loses_at_most_the_chunk_in_flight(tmp_path):
    config = _captions(tmp_path, 700)
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os
        from aesthetic_audit.config import load_config
        from aesthetic_audit.dimensions import load_catalogue
        from aesthetic_audit.prompts.rewriters.template import TemplateRewriter
        from aesthetic_audit.prompts.stage import run_prompts
        from aesthetic_audit.store import RunStore

        class Dying(TemplateRewriter):
            n = 0
            def rewrite(self, request):
                Dying.n += 1
                if Dying.n == 650:
                    os._exit(9)  # no cleanup at all, as with SIGKILL
                return super().rewrite(request)

        config = load_config(None, {{"prompts.source": {config.prompts.source!r}, "prompts.n": None}})
        run_prompts(RunStore({str(run)!r}), config, load_catalogue(), rewriter=Dying())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    store = RunStore(run)
    kept = store.counts()["prompts"]["ok"]
    assert 649 - 512 < kept <= 649  # at most one writer chunk (512 records) was in flight
    again = run_prompts(store, config, CAT)
    assert (again.total, again.new, again.cached) == (700, 700 - kept, kept)
    clean = RunStore(tmp_path / "clean")
    run_prompts(clean, config, CAT)
    assert _data(store, "prompts") == _data(clean, "prompts")


def test_failed_prompts_count_and_retry_as_before(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("A short caption.\n" + " ".join(["word"] * 80) + "\nAnother short one.\n")
    config = load_config(None, {"prompts.source": str(path), "prompts.n": None})
    store = RunStore(tmp_path / "run")
    first = run_prompts(store, config, CAT)
    assert (first.total, first.new, first.failed) == (3, 2, 1)
    again = run_prompts(store, config, CAT)
    assert (again.new, again.cached, again.failed) == (0, 2, 1)
    retried = run_prompts(store, config, CAT, retry_failed=True)
    assert (retried.new, retried.cached, retried.failed) == (0, 2, 1)
    assert store.counts()["prompts"] == {"ok": 2, "failed": 1}


# -- judge, score and labels -----------------------------------------------------------------------

def _pairs(store: RunStore, n: int) -> list[str]:
    """n image pairs; pair i+1 reuses pair i's I_a as its I_o, so images repeat across pairs."""
    rng = np.random.default_rng(0)
    shas = [store.put_image(Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))) for _ in range(n + 1)]
    store.put_many(Record(f"pair{i}", IMAGES, f"p{i}", {
        "image_o": shas[i], "image_a": shas[i + 1], "p_o": f"thing {i}", "p_a": f"a dark thing {i}",
        "pair_id": f"pp{i}", "model": "m"}) for i in range(n))
    return shas


class _Mean(Scorer):
    """Score = mean red value; Ctrl-C on call ``stop``; 'boom' fails."""

    name = "mean"
    prompt_aware = True

    def __init__(self, stop: int | None = None, **kw):
        super().__init__(**kw)
        self.stop, self.calls = stop, 0

    def _score(self, items):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return [ScoreResult(float(np.asarray(img)[..., 0].mean()) + len(p or "")) for img, p in items]


def test_an_interrupted_score_stage_keeps_its_batches_and_resumes_exactly(tmp_path):
    clean = RunStore(tmp_path / "clean")
    _pairs(clean, 6)
    assert run_score(clean, _Mean(), chunk_size=4).new == 24  # 4 (image, prompt) per pair, none shared
    store = RunStore(tmp_path / "run")
    _pairs(store, 6)
    with pytest.raises(KeyboardInterrupt):
        run_score(store, _Mean(stop=3), chunk_size=4)
    assert store.counts()["score"]["ok"] == 8  # two batches of 4, committed on the way out
    again = run_score(store, _Mean(), chunk_size=4)
    assert (again.total, again.new, again.cached) == (24, 16, 8)
    assert _data(store, "score") == _data(clean, "score")


class _DeadAfter(ClassicalJudge):
    """The classical judge whose endpoint dies on the second batch."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def judge(self, images, dims):
        self.batches += 1
        if self.batches == 2:
            raise EndpointUnreachable("no answer")
        return super().judge(images, dims)


def test_a_judge_whose_endpoint_dies_stops_with_the_judged_images_stored(tmp_path):
    store = RunStore(tmp_path)
    _pairs(store, 5)
    with pytest.raises(EndpointUnreachable):
        run_judge(store, _DeadAfter(), CAT, batch_size=2)
    assert store.counts()["judge"] == {"ok": 2, "failed": 0}
    again = run_judge(store, ClassicalJudge(), CAT, batch_size=2)
    assert (again.total, again.new, again.cached) == (6, 4, 2)


class _Labeller:
    name = "fake"

    def __init__(self, stop: int | None = None):
        self.stop, self.calls = stop, 0

    def identity(self):
        return {"name": "fake"}

    def describe(self):
        return "fake"

    def load(self):
        pass

    def label(self, items):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return [LabelResult(1 if "1" in it.p_a else 0) for it in items]


def test_labels_resume_exactly_and_pairs_with_the_same_content_share_one_label(tmp_path):
    def make(root):
        store = RunStore(root)
        shas = _pairs(store, 5)
        # the same (I_o, I_a, p_a) as pair 0 under another pair: labelled once, with pair 0's ids
        store.put_many([Record("pairX", IMAGES, "px", {"image_o": shas[0], "image_a": shas[1], "p_o": "other",
                                                       "p_a": "a dark thing 0"})])
        return store

    clean = make(tmp_path / "clean")
    assert run_labels(clean, _Labeller(), seed=0, batch_size=2).new == 5
    store = make(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run_labels(store, _Labeller(stop=2), seed=0, batch_size=2)
    assert store.counts()["labels"]["ok"] == 2
    again = run_labels(store, _Labeller(), seed=0, batch_size=2)
    assert (again.total, again.new, again.cached) == (5, 3, 2)
    assert _data(store, "labels") == _data(clean, "labels")
    assert {r.data["image_pair_id"] for r in store.records("labels")} == {f"pair{i}" for i in range(5)}


# -- composite from the judge's records ------------------------------------------------------------

def test_composite_from_stored_judge_records_equals_the_computed_one(tmp_path):
    store = RunStore(tmp_path)
    shas = _pairs(store, 4)
    run_judge(store, ClassicalJudge(), CAT)

    class Counting(CompositeAesthetics):
        measured = 0

        def _score(self, items):
            Counting.measured += len(items)
            return super()._score(items)

    summary = run_score(store, Counting())
    assert (summary.new, Counting.measured) == (5, 0)  # all five images answered from the judge's records
    stored = {r.data["image"]: r.data for r in store.records("score")}
    images = [decode_stored(store, sha) for sha in shas]
    computed = CompositeAesthetics().score([(img, None) for img in images])
    for sha, res in zip(shas, computed):
        assert canonical_json(stored[sha]["score"]) == canonical_json(res.score)
        assert stored[sha]["extra"] == {"J": res.extra["J"]}


def test_composite_measures_images_whose_judge_records_are_another_judges(tmp_path):
    store = RunStore(tmp_path)
    _pairs(store, 2)

    class Other(ClassicalJudge):
        version = "other"

    run_judge(store, Other(), CAT)
    scorer = CompositeAesthetics()
    assert scorer.stored_results(store, [r.data["image"] for r in store.records("judge")]) == {}
    assert run_score(store, scorer).new == 3


# -- decoded images shared between stages ----------------------------------------------------------

def test_shared_decoded_images_are_bounded_and_serve_judge_and_score_from_one_decode(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    shas = _pairs(store, 3)
    size = 24 * 32 * 3
    cache = DecodedImages(max_bytes=2 * size)
    for sha in shas:
        cache.get(store, sha)
    assert (len(cache), cache.nbytes, cache.misses) == (2, 2 * size, 4)
    assert cache.get(store, shas[-1]) is cache.get(store, shas[-1]) and cache.hits == 2
    decodes = []
    from aesthetic_audit.images import shared

    real = shared._decode
    monkeypatch.setattr(shared, "_decode", lambda s, sha: decodes.append(sha) or real(s, sha))
    with sharing():
        run_judge(store, ClassicalJudge(), CAT)
        run_score(store, _Mean())
    assert sorted(decodes) == sorted(shas)  # four images, each decoded once for both stages
    assert shared._shared is None  # outside sharing() nothing is kept


def test_summary_pending_keeps_its_contract(tmp_path):
    store = RunStore(tmp_path)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5)]
    store.put_many([Record(keys[0], "images", "a"), Record(keys[1], "images", "b", status="failed"),
                    Record("x", "images", "c")])
    summary = StageSummary("images:gen")
    assert summary.pending([*keys, "x", "y"], store) == {*keys[2:], "y"}
    assert (summary.cached, summary.failed) == (2, 1)
    assert StageSummary("images").pending(keys, store, retry_failed=True) == set(keys[1:])


def test_prompt_stage_memory_does_not_grow_with_items_held(tmp_path):
    """The stage holds no per-item objects: the rewriter sees at most one chunk of requests at a time."""

    class Watching(TemplateRewriter):
        largest = 0

        def rewrite_iter(self, requests):
            Watching.largest = max(Watching.largest, len(requests))
            return super().rewrite_iter(requests)

    config = _captions(tmp_path, 1200)
    summary = run_prompts(RunStore(tmp_path / "run"), config, CAT, rewriter=Watching())
    assert summary.new == 1200 and Watching.largest == prompt_stage.REWRITE_CHUNK < 1200


def test_a_caption_with_awkward_characters_is_keyed_and_stored_as_spec_hash_says(tmp_path):
    path = tmp_path / "c.txt"
    caption = 'A "quoted" café \\ with 東京 and 😀 signs.'
    path.write_text(caption + "\n")
    config = load_config(None, {"prompts.source": str(path), "prompts.n": None})
    store = RunStore(tmp_path / "run")
    run_prompts(store, config, CAT)
    (rec,) = store.records("prompts")
    effects = effect_spec(prompt_stage.effects_for(CAT, rec.data["dims"]))
    assert rec.key == prompt_key(caption=caption, effects=effects, rewriter=TemplateRewriter().identity(),
                                 max_words=70, seed=0)
    assert rec.data["p_o"] == caption and rec.data["source"] == "c.txt"
