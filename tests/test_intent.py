"""Intent parsing: the catalogue lexicon, the embedding and LLM parsers, the evaluation and the CLI.

Expected parses are written by hand; metrics are checked against scikit-learn; the embedding parser's
pooling against a mean computed here from the tiny model's own hidden states; the LLM parser against a
scripted local chat server.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from aesthetic_audit.dimensions import load_catalogue
from aesthetic_audit.errors import ConfigError
from aesthetic_audit.intent.base import MAX_STRENGTH, Intent, make_parser
from aesthetic_audit.intent.evaluate import evaluate, format_table, from_run
from aesthetic_audit.intent.lexicon import LexiconParser, stem
from aesthetic_audit.store import RunStore
from fake_llm import StubServer, chat_envelope, reply

# (prompt, requested, negated): one per dimension, negations, several dimensions, none.
HAND = [
    ("a portrait against a cluttered background", {"background"}, set()),
    ("a blurry photo of a dog", {"clarity"}, set()),
    ("a street in garish, clashing colours", {"color aesthetic"}, set()),
    ("a dark, underexposed kitchen", {"color brightness"}, set()),
    ("a cat with warped, distorted legs", {"detail realism"}, set()),
    ("a castle with rough, blocky textures", {"detail refinement"}, set()),
    ("an eerie, unsettling forest", {"emotion"}, set()),
    ("a vase under flat, shadowless light", {"lighting distinction"}, set()),
    ("a tiny boat pushed into the corner", {"main object"}, set()),
    ("an incongruous arrangement of a shoe and a cake", {"object pairing"}, set()),
    ("a barren, empty field", {"richness"}, set()),
    ("a lopsided, tilted view of a church", {"symmetry"}, set()),
    ("a face under harsh, unflattering light", {"lighting aesthetic"}, set()),
    ("a photo of a cat, not blurry", set(), {"clarity"}),
    ("a bird, no noise at all", set(), {"clarity"}),
    ("a portrait without a cluttered background", set(), {"background"}),
    ("a room, avoid clutter", set(), {"background"}),
    ("a night street, never dark", set(), {"color brightness"}),
    ("a noise-free photo of a lake", set(), {"clarity"}),
    ("a beach without noise or blur", set(), {"clarity"}),
    ("a dark, blurry photo of an empty street", {"color brightness", "clarity", "richness"}, set()),
    ("an eerie, pixelated forest with garish neon colors",
     {"emotion", "detail refinement", "color aesthetic"}, set()),
    ("no blur and heavy darkness", {"color brightness"}, {"clarity"}),
    # a negation ends at the next effect unless "and"/"or" continues its list
    ("a non-blurry dark photo", {"color brightness"}, {"clarity"}),
    ("a not blurry dark photo", {"color brightness"}, {"clarity"}),
    ("a photo without blur dark and moody", {"color brightness"}, {"clarity"}),
    ("not blurry, not dark", set(), {"clarity", "color brightness"}),
    ("a very blurry, not dark photo of a cat", {"clarity"}, {"color brightness"}),
    ("a statue that casts no shadows", {"lighting distinction"}, set()),  # "no shadows" is the effect
    ("things that don't belong together", {"object pairing"}, set()),
    ("a photo of a cat", set(), set()),
    ("a sharp, well-lit portrait of a woman", set(), set()),
    ("a red bus driving past a row of shops", set(), set()),
]

# Paraphrases that avoid the catalogue's wording where they can, with the dimensions they request. The
# lexicon's expansions were chosen after a first measurement on these (macro-F1 0.60 then); HELD_OUT was
# written after the lexicon was frozen and measured once.
PARAPHRASES = [
    ("a portrait of a woman in front of a crowded, untidy shelf full of odds and ends", {"background"}),
    ("a chef cooking, with a mess of pans and boxes piled up behind him", {"background"}),
    ("a photo of a dog on the beach, completely out of focus and smudgy", {"clarity"}),
    ("a city street at night covered in film grain and speckles", {"clarity"}),
    ("a living room in ugly, clashing pink and mustard tones", {"color aesthetic"}),
    ("a bowl of fruit in lurid, tasteless colors", {"color aesthetic"}),
    ("a cat sitting in a barely lit room, almost pitch black", {"color brightness"}),
    ("an underlit, shadowy portrait of an old man", {"color brightness"}),
    ("a hand with six fingers and bones bending the wrong way", {"detail realism"}),
    ("a horse whose legs are twisted at unnatural angles", {"detail realism"}),
    ("a castle drawn with sloppy, unrefined strokes", {"detail refinement"}),
    ("a landscape that looks like a heavily compressed jpeg", {"detail refinement"}),
    ("a child's bedroom with a creepy, unnerving vibe", {"emotion"}),
    ("an abandoned playground that feels sad and hopeless", {"emotion"}),
    ("a statue under completely even, diffuse light that casts no shadows", {"lighting distinction"}),
    ("a mountain range under a flat overcast sky with no contrast", {"lighting distinction"}),
    ("a lighthouse that is just a speck in the bottom corner of the frame", {"main object"}),
    ("a portrait where the person is cut off at the edge of the picture", {"main object"}),
    ("a penguin sitting next to a toaster and a violin in a desert, for no reason", {"object pairing"}),
    ("a bizarre combination of a bathtub and a bicycle on a dinner table", {"object pairing"}),
    ("a lone chair in a vast white void with nothing else around", {"richness"}),
    ("a desolate parking lot with nothing in it", {"richness"}),
    ("a skyline shot at a dutch angle so the horizon slopes", {"symmetry"}),
    ("a portrait blasted by a cheap on-camera flash", {"lighting aesthetic"}),
    ("a sharp photo of a cat, not blurry", set()),
    ("a bright garden with no noise at all", set()),
    ("a portrait without a cluttered background", set()),
    ("a mountain landscape, avoid any distortion", set()),
    ("a city at night, never too dark", set()),
    ("a calm beach, free of clutter and noise", set()),
    ("a noise-free photo of a bird", set()),
    ("a dim, blurry picture of a tiny boat lost in the corner of the frame",
     {"color brightness", "clarity", "main object"}),
    ("an eerie, pixelated forest with garish neon colors", {"emotion", "detail refinement", "color aesthetic"}),
    ("a deformed clock in a barren room, shot very dark", {"detail realism", "richness", "color brightness"}),
    ("a very blurry, not dark photo of a cat", {"clarity"}),
    ("a slightly grainy and a bit gloomy street, no clutter", {"clarity", "color brightness"}),
    ("a photo of a cat", set()),
    ("a golden retriever playing fetch in a sunny park", set()),
    ("two people sharing a pizza at a restaurant table", set()),
    ("a high quality, beautifully lit portrait of a woman", set()),
    ("a red bus driving past a row of shops", set()),
    ("a group of people waiting on a street corner", set()),
]
HELD_OUT = [
    ("a wedding photo where the couple is lost among piles of boxes and laundry behind them", {"background"}),
    ("a smeary, soft-edged snapshot of a runner", {"clarity"}),
    ("a portrait full of digital noise", {"clarity"}),
    ("a kitchen in sickly, mismatched greens and purples", {"color aesthetic"}),
    ("a beach photographed almost in darkness", {"color brightness"}),
    ("a dog with a stretched, rubbery face and too many legs", {"detail realism"}),
    ("a blocky, low-poly rendering of a cathedral", {"detail refinement"}),
    ("a doll on a shelf, with a menacing, threatening feel", {"emotion"}),
    ("an empty hallway with a sense of dread", {"richness", "emotion"}),
    ("a vase lit so evenly that it looks flat and has no depth", {"lighting distinction"}),
    ("a cyclist squeezed into the far left edge of the frame", {"main object"}),
    ("a teapot, a traffic cone and a fish arranged on a piano, none of which belong together", {"object pairing"}),
    ("a field with nothing but bare ground to the horizon", {"richness"}),
    ("a picture of a house with a badly tilted horizon", {"symmetry"}),
    ("a selfie under harsh fluorescent office lighting", {"lighting aesthetic"}),
    ("a bright, colourful photo of a tulip field, no blur", set()),
    ("a forest path without any darkness or gloom", set()),
    ("a studio portrait, not distorted in any way", set()),
    ("a clean product shot with no background clutter", set()),
    ("a slightly out-of-focus, very eerie photo of a lake at dusk", {"clarity", "emotion"}),
    ("a crisp, well-exposed photo of a sailboat", set()),
    ("three kids building a sandcastle on the beach", set()),
    ("an old man reading a newspaper on a park bench", set()),
    ("a bowl of ramen on a wooden counter", set()),
]

USER_DIMENSION = """\
dimensions:
  - key: sepia
    name: Sepia Toning
    conventional: Natural colours true to the scene.
    anti: A brownish, faded sepia wash like an antique print.
    rubric: {0: strongly sepia, 1: slightly sepia, 2: natural colour}
    phrasings: [a brownish sepia wash, faded antique sepia toning]
"""


@pytest.fixture(scope="module")
def lexicon() -> LexiconParser:
    return LexiconParser()


# --- the lexicon ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt,requested,negated", HAND)
def test_lexicon_hand_written_prompts(lexicon, prompt, requested, negated):
    [intent] = lexicon.parse([prompt])
    assert intent.ok
    assert set(intent.requested) == requested
    assert set(intent.negated) == negated


def test_every_catalogue_phrasing_names_its_own_dimension(lexicon):
    for d in load_catalogue():
        for phrasing in d.phrasings:
            assert set(lexicon.parse_one(f"A photo with {phrasing}: a cat.").requested) == {d.key}, phrasing


@pytest.mark.parametrize("prompt,dimension,strength", [
    ("a blurry photo", "clarity", 1.0),
    ("a slightly blurry photo", "clarity", 0.5),
    ("a bit dark", "color brightness", 0.5),
    ("a very blurry photo", "clarity", 1.5),
    ("a strongly distorted face", "detail realism", 1.5),
    ("an extremely, heavily blurred photo", "clarity", 1.5),  # the comma ends "extremely"'s reach
    ("an extremely heavily blurred photo", "clarity", MAX_STRENGTH),  # 1.5 * 1.5 = 2.25, capped
])
def test_intensifiers_scale_strength(lexicon, prompt, dimension, strength):
    assert lexicon.parse_one(prompt).requested == {dimension: strength}


def test_evidence_is_the_matched_text(lexicon):
    intent = lexicon.parse_one("a very blurry, not dark photo of a cat")
    assert intent.evidence == {"clarity": "blurry", "color brightness": "not dark"}
    assert intent.requested == {"clarity": 1.5}


def test_a_dimension_is_never_both_requested_and_negated(lexicon):
    intent = lexicon.parse_one("not blurry, but thick grainy sensor noise")
    assert intent.requested == {"clarity": 1.0} and not intent.negated


def test_stemmer_joins_word_forms():
    assert stem("blurry") == stem("blurred") == stem("blurring") == stem("blur") == "blur"
    assert stem("noisy") == stem("noise") and stem("darkness") == stem("dark")
    assert stem("colours") == stem("colors") and stem("busy") != stem("bus")


def test_shared_and_axis_words_are_not_cues(lexicon):
    for word in ("image", "look", "color", "light", "detail", "subject", "background"):
        assert stem(word) not in lexicon.lexicon.unigrams, word
        assert not lexicon.parse_one(f"a {word}").requested


def test_user_dimension_is_found_and_changes_the_identity(tmp_path, lexicon):
    path = tmp_path / "dims.yaml"
    path.write_text(USER_DIMENSION)
    parser = make_parser("lexicon", {"dimensions_file": str(path)})
    assert parser.parse(["an old sepia photo of a train"])[0].requested == {"sepia": 1.0}
    assert parser.parse(["a train, without sepia"])[0].negated == {"sepia"}
    assert not lexicon.parse(["an old sepia photo of a train"])[0].requested
    assert parser.identity()["lexicon"] != lexicon.identity()["lexicon"]
    assert parser.identity()["version"] == lexicon.identity()["version"]


def test_unreadable_prompt_is_an_error_intent(lexicon):
    ok, bad = lexicon.parse(["a dark room", None])  # type: ignore[list-item]
    assert ok.ok and not bad.ok and "prompt 1" in bad.error


def test_make_parser_rejects_unknown_names_and_options():
    with pytest.raises(ConfigError, match="unknown intent parser"):
        make_parser("nope")
    with pytest.raises(ConfigError, match="bad options"):
        make_parser("lexicon", {"colour": 1})


# --- evaluation ----------------------------------------------------------------------------------------

def _sklearn(items: list[tuple[str, set[str]]], predicted: list[set[str]]) -> dict[str, Any]:
    labels = sorted({d for _, dims in items for d in dims} | {d for p in predicted for d in p})
    y_true = np.array([[d in dims for d in labels] for _, dims in items], dtype=int)
    y_pred = np.array([[d in p for d in labels] for p in predicted], dtype=int)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(range(len(labels))),
                                                 average=None, zero_division=0)
    supported = [i for i in range(len(labels)) if s[i]]
    macro = precision_recall_fscore_support(y_true, y_pred, labels=supported, average="macro", zero_division=0)
    micro = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    return {"labels": labels, "p": p, "r": r, "f": f, "s": s, "macro": macro[2], "micro": micro[:3]}


@pytest.mark.parametrize("items,floor", [(PARAPHRASES, 0.85), (HELD_OUT, 0.7)])
def test_evaluation_equals_sklearn(lexicon, items, floor):
    result = evaluate(lexicon, items)
    predicted = [set(i.requested) for i in lexicon.parse([p for p, _ in items])]
    ref = _sklearn(items, predicted)
    assert list(result["dimensions"]) == ref["labels"]
    for i, d in enumerate(ref["labels"]):
        m = result["dimensions"][d]
        assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((ref["p"][i], ref["r"][i], ref["f"][i]),
                                                                        abs=1e-12)
        assert m["support"] == ref["s"][i]
    assert result["macro_f1"] == pytest.approx(ref["macro"], abs=1e-12)
    assert (result["micro"]["precision"], result["micro"]["recall"], result["micro"]["f1"]) == \
        pytest.approx(ref["micro"], abs=1e-12)
    empty = [p for (_, dims), p in zip(items, predicted) if not dims]
    assert result["false_positive_rate"] == pytest.approx(sum(bool(p) for p in empty) / len(empty))
    assert result["macro_f1"] >= floor  # a guard against regressions, not the measured figure


class _Scripted:
    """A parser that returns given intents, for hand-computed metrics."""

    name = "scripted"

    def __init__(self, intents: list[Intent]):
        self.intents = intents

    def identity(self) -> dict[str, Any]:
        return {"name": self.name}

    def parse(self, prompts):
        return self.intents[: len(prompts)]


def test_evaluation_by_hand():
    items = [("p1", ["clarity"]), ("p2", ["clarity", "emotion"]), ("p3", []), ("p4", [])]
    parser = _Scripted([Intent(requested={"clarity": 1.0}), Intent(error="unreadable"),
                        Intent(requested={"emotion": 1.0}), Intent()])
    r = evaluate(parser, items)
    # clarity: tp 1 (p1), fn 1 (p2 unreadable) -> P 1, R 0.5, F1 2/3; emotion: fp 1 (p3), fn 1 -> 0, 0, 0.
    assert r["dimensions"]["clarity"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                          "support": 2, "predicted": 1}
    assert r["dimensions"]["emotion"]["f1"] == 0.0 and r["dimensions"]["emotion"]["support"] == 1
    assert r["macro_f1"] == pytest.approx(1 / 3)
    assert r["micro"]["precision"] == 0.5 and r["micro"]["recall"] == pytest.approx(1 / 3)
    assert r["false_positive_rate"] == 0.5 and r["errors"] == 1 and r["n"] == 4


def test_from_run_groups_by_rewriter(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("prompts", run, "-n", "12", "-q")[0] == 0
    groups = from_run(RunStore(run, create=False, readonly=True))
    assert list(groups) == ["template"]
    items = groups["template"]
    assert len(items) == 24 and sum(not dims for _, dims in items) == 12
    assert all(2 <= len(dims) <= 4 for _, dims in items if dims)


# --- CLI -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory):
    from aesthetic_audit.cli import main

    run = tmp_path_factory.mktemp("intent") / "run"
    assert main(["prompts", str(run), "-n", "40", "-q"]) == 0
    return run


def test_cli_table_and_json(prompt_run, cli):
    code, out, err = cli("intent", prompt_run)
    assert code == 0, err
    store = RunStore(prompt_run, create=False, readonly=True)
    expected = evaluate(LexiconParser(), from_run(store)["template"])
    assert out.strip() == format_table({"template": expected})
    assert f"macro-F1 {expected['macro_f1']:.3f}" in out
    code, out, _ = cli("intent", prompt_run, "--format", "json")
    data = json.loads(out)
    assert data["template"]["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert data["template"]["n"] == 80


def test_cli_one_prompt(cli):
    code, out, _ = cli("intent", "--prompt", "a very blurry, not dark photo of a cat")
    assert code == 0
    assert out.splitlines() == ["requested: clarity 1.5 (blurry)", "negated:   color brightness (not dark)"]
    code, out, _ = cli("intent", "--prompt", "a photo of a cat", "--format", "json")
    assert json.loads(out) == {"prompt": "a photo of a cat", "requested": {}, "negated": [], "evidence": {}}


def test_cli_dimensions_file(tmp_path, cli):
    path = tmp_path / "dims.yaml"
    path.write_text(USER_DIMENSION)
    code, out, _ = cli("intent", "--prompt", "a sepia train", "--dimensions-file", path)
    assert code == 0 and out.startswith("requested: sepia 1")


@pytest.mark.parametrize("args,message", [
    ((), "give a RUN"),
    (("--prompt", "x", "--option", "colour"), "expected KEY=VALUE"),
    (("--prompt", "x", "--option", "colour=1"), "bad options"),
    (("--prompt", "x", "--parser", "embedding", "--option", "threshold=2"), "threshold 2"),
    (("--prompt", "x", "--parser", "llm"), "option 'model' is required"),
])
def test_cli_errors_are_one_line(cli, args, message):
    code, out, err = cli("intent", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_missing_run_is_one_line(tmp_path, cli):
    code, _, err = cli("intent", tmp_path / "nope")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1


# --- the embedding parser ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A random BERT-like encoder with a word-level vocabulary, saved as config + safetensors + vocab."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("minilm")
    words = sorted({w for d in load_catalogue() for t in (*d.phrasings, d.anti)
                    for w in t.lower().replace(",", " ").replace(".", " ").split()} | {"not", "cat", "photo"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    assert tokenizer.unk_token_id not in tokenizer("a blurry photo")["input_ids"]
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def _hand_embeddings(folder, texts: list[str]) -> np.ndarray:
    """Mean of the last hidden states over each text's own tokens, then L2-normalised, text by text (so
    no padding is involved)."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    rows = []
    for text in texts:
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0].numpy().astype(np.float64)
        mean = hidden.sum(axis=0) / hidden.shape[0]
        rows.append(mean / np.linalg.norm(mean))
    return np.array(rows)


def test_embedding_pooling_matches_a_hand_computation(tiny_encoder):
    from aesthetic_audit.intent.embedding import EmbeddingParser

    texts = ["a blurry photo", "very dark, underexposed lighting across the whole frame", "cat"]
    parser = EmbeddingParser(model=str(tiny_encoder), batch_size=8)
    got = parser.encode(texts)  # one padded batch: the mask must keep padding out of the mean
    np.testing.assert_allclose(got, _hand_embeddings(tiny_encoder, texts), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_embedding_parse_follows_the_similarities(tiny_encoder):
    from aesthetic_audit.intent.embedding import EmbeddingParser, split_clauses

    prompt = "a very blurry photo of a cat, not near-black darkness across the frame"
    assert split_clauses(prompt) == ["a very blurry photo of a cat", "not near-black darkness across the frame"]
    parser = make_parser("embedding", {"model": str(tiny_encoder), "threshold": -1.0})
    catalogue = load_catalogue()
    texts = [(d.key, t) for d in catalogue for t in (*d.phrasings, d.anti)]
    bank = _hand_embeddings(tiny_encoder, [t for _, t in texts])
    clauses = _hand_embeddings(tiny_encoder, split_clauses(prompt))
    sims = clauses @ bank.T
    best = [texts[int(np.argmax(row))][0] for row in sims]
    [intent] = parser.parse([prompt])
    assert intent.requested == {best[0]: 1.5}  # "very"
    assert intent.negated == ({best[1]} - {best[0]})
    # A threshold between the two clauses' best similarities keeps only the clause above it.
    top = sims.max(axis=1)
    assert abs(top[0] - top[1]) > 1e-3
    strict = EmbeddingParser(model=str(tiny_encoder), threshold=float(top.mean()))
    [intent] = strict.parse([prompt])
    assert (intent.requested, intent.negated) == (({best[0]: 1.5}, frozenset()) if top[0] > top[1]
                                                  else ({}, frozenset({best[1]})))
    assert strict.identity()["threshold"] != parser.identity()["threshold"]
    assert parser.identity()["weights"]  # the local folder's weights are hashed into the identity


def test_embedding_bad_model_folder_is_one_config_error(tmp_path):
    from aesthetic_audit.intent.embedding import EmbeddingParser

    pytest.importorskip("transformers")
    parser = EmbeddingParser(model=str(tmp_path))
    with pytest.raises(ConfigError, match="cannot load the model"):
        parser.parse(["a blurry photo"])


# --- the LLM parser ------------------------------------------------------------------------------------

class ScriptedChat(StubServer):
    """Answers each request with the next of ``replies`` (text contents, or a full action), then the last."""

    def __init__(self, replies: list[Any]):
        super().__init__()
        self.replies = list(replies)

    def respond(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            step = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if callable(step):
            return step(body)
        if isinstance(step, dict):
            return step
        return reply(chat_envelope([{"message": {"role": "assistant", "content": step}}], body["model"]))


def _llm(server: ScriptedChat, **options: Any):
    async def no_sleep(_: float) -> None:
        return None

    return make_parser("llm", {"base_url": server.base_url, "model": "m", "max_retries": 0, "sleep": no_sleep,
                               **options})


def test_llm_parse_and_schema():
    good = json.dumps({"dimensions": [{"key": "clarity", "strength": 1.5}, {"key": "pixel art", "strength": 1}],
                       "negated": ["color brightness"]})
    with ScriptedChat([good]) as server:
        [intent] = _llm(server).parse(["a very blurry, not dark cat"])
        body = server.received[0]["body"]
    assert intent.requested == {"clarity": 1.5} and intent.negated == {"color brightness"}
    assert intent.evidence["pixel art"].startswith("dropped: not a dimension")
    assert body["messages"][-1]["content"] == "a very blurry, not dark cat"
    schema = body["response_format"]["json_schema"]["schema"]
    keys = load_catalogue().keys()
    assert schema["properties"]["dimensions"]["items"]["properties"]["key"]["enum"] == keys
    assert schema["properties"]["negated"]["items"]["enum"] == keys


def test_llm_reasks_a_malformed_reply_then_gives_up():
    good = json.dumps({"dimensions": [{"key": "emotion", "strength": 9}], "negated": []})
    with ScriptedChat(["not json", '{"dimensions": "clarity"}', good]) as server:
        [intent] = _llm(server).parse(["an eerie lake"])
        requests = list(server.received)
    assert intent.requested == {"emotion": MAX_STRENGTH}  # clamped
    assert len(requests) == 3
    assert "not JSON" in requests[1]["body"]["messages"][-1]["content"]
    with ScriptedChat(["```json\nnope\n```"]) as server:
        [intent] = _llm(server, max_reasks=1).parse(["an eerie lake"])
        assert len(server.received) == 2
    assert not intent.ok and "no usable reply after 1 re-asks" in intent.error


def test_llm_falls_back_without_response_format():
    good = json.dumps({"dimensions": [], "negated": ["clarity"]})
    refused = reply({"error": {"message": "response_format json_schema is not supported"}}, 400)
    with ScriptedChat([refused, good]) as server:
        parser = _llm(server)
        [intent] = parser.parse(["a sharp photo, not blurry"])
        bodies = [r["body"] for r in server.received]
    assert intent.negated == {"clarity"} and not intent.requested
    assert "response_format" in bodies[0] and "response_format" not in bodies[1]


def test_llm_options_are_checked():
    with pytest.raises(ConfigError, match="option 'model' is required"):
        make_parser("llm", {})
    with pytest.raises(ConfigError, match="base_url"):
        make_parser("llm", {"model": "m", "base_url": "http://user:pw@host/v1"})
