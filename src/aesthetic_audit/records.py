"""The record kinds each stage writes, and the keys that identify them.

A key hashes everything that determines a record (design: backend id + weights revision +
preprocessing version + inputs + seed), so the same inputs are never computed twice and any change
to them computes anew. Data fields are listed per stage; every stage copies what its consumers need
so that a record can be read without joins.

prompts  one per caption      data: pair_id (= key), index, origin, source, caption_id, p_o, p_a,
                              dims, rewriter, seed, words
images   one per image pair   data: image_pair_id (= key), pair_id, p_o, p_a, dims, image_o, image_a
                              (SHA-256 of the stored files), backend, strength, transforms
                              ([{name, dimension, params}]), label ({value: -1 tie / 0 original /
                              1 anti-aesthetic, source}) or null, model, source_item
judge    one per (judge, image)          data: judge, image, scores {dim: J in [0, 2] or null}, covered
score    one per (scorer, image, prompt) data: scorer, image, prompt (null when prompt-blind), score,
                                               tokens, truncated, higher_is_better
         pairwise scorers (vlm-pair): one per (scorer, I_o, I_a, p_a), key as above with image = [I_o, I_a];
                              data: scorer, pairwise true, image_o, image_a, prompt (p_a), prefers (1 I_a /
                              0 I_o / -1 tie), prob_a or null, answers, disagree, discrete
labels   one per (label source, image pair)  data: source ("vlm:<labeller>" or "human:<rater>"), labeller,
                              labeller_id, image_pair_id, pair_id, model, image_o, image_a, p_a, value
                              (-1 tie / 0 original / 1 anti-aesthetic), answers ([{first: "o"|"a",
                              selection: -1|0|1 as answered (0 first, 1 second), value}]), disagree (both
                              orders asked and they differ) or null, seed
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any, Callable, Sequence

from .hashing import canonical_json, spec_hash

PROMPTS, IMAGES, JUDGE, SCORE, LABELS = "prompts", "images", "judge", "score", "labels"
# The image id of a pair imported without its images (scores, labels and judgements only): a SHA-256
# digest has no ':', so a stand-in never equals a real image's id. Stages that read pixels skip them.
NO_IMAGE = "noimage:"


def has_pixels(image: str) -> bool:
    return not image.startswith(NO_IMAGE)
# A backend (scorer, judge) that could not run at all: one failed record per backend, listed by `status`.
BACKEND = "backend"


def backend_key(kind: str, name: str) -> str:
    return spec_hash({"stage": BACKEND, "kind": kind, "name": name})


# Where a prompt record came from: the prompt stage (captions), the editor (a photo's caption), an import.
ORIGINS = ("captions", "editor", "import")


def prompt_origin(data: dict[str, Any]) -> str:
    """A prompt record's origin: its ``origin`` field, or for records stored before that field
    existed, what their other fields show. Imports write rewriter "import" (their failed rows only
    an index, no rewriter); the editor writes index null, since a photo's draws have no position in
    a caption source; the prompt stage writes both an integer index and its rewriter."""
    if data.get("origin") in ORIGINS:
        return data["origin"]
    if data.get("rewriter", "import") == "import":
        return "import"
    return "editor" if data.get("index") is None else "captions"


def prompt_key(*, caption: str, effects: Sequence[Any], rewriter: dict[str, Any], max_words: int,
               seed: int | None) -> str:
    """What a rewrite depends on: the caption, the effects with the words that describe them, the
    rewriter and its limits, the seed. Not the caption's position or file, so adding captions to a
    source, or moving it, recomputes nothing."""
    return spec_hash({"stage": PROMPTS, "caption": caption, "effects": list(effects), "rewriter": rewriter,
                      "max_words": max_words, "seed": seed})


def prompt_key_template(*, rewriter: dict[str, Any], max_words: int, seed: int | None) -> "SpecTemplate":
    """``prompt_key`` for one rewriter and config: ``.hash_json(caption_json, effects_json)``."""
    return SpecTemplate({"stage": PROMPTS, "caption": None, "effects": None, "rewriter": rewriter,
                         "max_words": max_words, "seed": seed}, ("caption", "effects"))


def failed_item_key(stage: str, source: str, item: str) -> str:
    """The key of an item that failed before its content could be read (a bad row, an undecodable
    photo): where it came from. When the item later succeeds, the stage discards this record."""
    return spec_hash({"stage": stage, "failed": source, "item": item})


def image_pair_key(*, backend: dict[str, Any], inputs: dict[str, Any], seed: int) -> str:
    return spec_hash({"stage": IMAGES, "backend": backend, "inputs": inputs, "seed": seed})


def judge_key(*, judge: dict[str, Any], image: str, dims: Sequence[str]) -> str:
    return spec_hash({"stage": JUDGE, "judge": judge, "image": image, "dims": sorted(dims)})


def score_key(*, scorer: dict[str, Any], image: str, prompt: str | None) -> str:
    return spec_hash({"stage": SCORE, "scorer": scorer, "image": image, "prompt": prompt})


def label_key(*, source: dict[str, Any] | str, image_o: str, image_a: str, prompt: str, seed: int | None) -> str:
    """A pair label depends on who labels (a labeller's identity, or ``human:<rater>``), the two images,
    the prompt they are judged against (p_a) and the seed that shuffles their order; not on which
    generator or import brought the pair, so identical pairs are labelled once."""
    return spec_hash({"stage": LABELS, "source": source, "image_o": image_o, "image_a": image_a, "prompt": prompt,
                      "seed": seed})


def score_key_template(scorer: dict[str, Any]) -> "SpecTemplate":
    """``score_key`` for one scorer: ``.hash(image, prompt)``."""
    return SpecTemplate({"stage": SCORE, "scorer": scorer, "image": None, "prompt": None}, ("image", "prompt"))


def judge_key_template(judge: dict[str, Any], dims: Sequence[str]) -> "SpecTemplate":
    """``judge_key`` for one judge and set of dimensions: ``.hash(image)``."""
    return SpecTemplate({"stage": JUDGE, "judge": judge, "image": None, "dims": sorted(dims)}, ("image",))


def label_key_template(source: dict[str, Any] | str, seed: int | None) -> "SpecTemplate":
    """``label_key`` for one label source and seed: ``.hash(image_o, image_a, prompt)``."""
    return SpecTemplate({"stage": LABELS, "source": source, "image_o": None, "image_a": None, "prompt": None,
                         "seed": seed}, ("image_o", "image_a", "prompt"))


class SpecTemplate:
    """The canonical JSON (and ``spec_hash``) of a spec whose top-level ``fields`` change from item to item
    while the rest stays fixed, as when a stage keys 100,000 items for one backend.

    The fixed part is serialised once, with a unique marker in place of each field, and cut at the markers;
    an item's text is those pieces with its values' JSON spliced in. Canonical JSON of an object is its
    sorted members joined, and a member's text does not depend on the others, so the result equals
    ``canonical_json`` of the whole spec byte for byte (tests/test_perf_stages.py checks it against
    ``spec_hash`` on many inputs) at a fraction of the cost of re-serialising the fixed part each time.
    """

    def __init__(self, spec: dict[str, Any], fields: Sequence[str]):
        marks = {f: f"\ue000{i}\ue001" for i, f in enumerate(fields)}
        text = canonical_json({**spec, **marks})
        if any(text.count(json_text(m)) != 1 for m in marks.values()):
            raise ValueError("a spec's fixed part contains a template marker")
        cuts = sorted((text.index(json_text(m)), f) for f, m in marks.items())
        order, start, pieces = [fields.index(f) for _, f in cuts], 0, []
        for pos, f in cuts:
            pieces.append(text[start:pos])
            start = pos + len(json_text(marks[f]))
        pieces.append(text[start:])
        self._join = _joiner(pieces, order)

    def text_json(self, *fragments: str) -> str:
        """The canonical JSON of the spec with each field's value given as JSON text (in ``fields`` order)."""
        return self._join(fragments)

    def text(self, *values: Any) -> str:
        return self._join([json_text(v) for v in values])

    def hash_json(self, *fragments: str) -> str:
        return hashlib.sha256(self._join(fragments).encode("utf-8")).hexdigest()

    def hash(self, *values: Any) -> str:
        """``spec_hash`` of the spec with these values (in ``fields`` order)."""
        return hashlib.sha256(self._join([json_text(v) for v in values]).encode("utf-8")).hexdigest()

    def digest_json(self, *fragments: str) -> bytes:
        """The 32 bytes whose hex is ``hash_json``: stages that check many keys compare these."""
        return hashlib.sha256(self._join(fragments).encode("utf-8")).digest()


def _joiner(pieces: list[str], order: list[int]) -> Callable[[Sequence[str]], str]:
    """A function of the fields' JSON texts (in ``fields`` order) that joins them between ``pieces``;
    written out for up to three fields, since it runs once per item (str.format is half as fast)."""
    p, o = pieces, order
    if len(o) == 1:
        return lambda f: "".join((p[0], f[0], p[1]))
    if len(o) == 2:
        return lambda f: "".join((p[0], f[o[0]], p[1], f[o[1]], p[2]))
    if len(o) == 3:
        return lambda f: "".join((p[0], f[o[0]], p[1], f[o[1]], p[2], f[o[2]], p[3]))
    return lambda f: "".join(itertools.chain.from_iterable(zip(p, [f[i] for i in o] + [""])))


# A JSON string, as canonical_json writes it (ensure_ascii=False); the C encoder json.dumps itself calls.
_encode_str = json.encoder.encode_basestring


def json_text(value: Any) -> str:
    """``canonical_json(value)``, strings (the common case) through the string encoder directly."""
    if type(value) is str:
        return _encode_str(value)
    return "null" if value is None else canonical_json(value)
