"""The offline intent parser: cue words derived from the dimension catalogue, with negation and strength.

Why derived, not hand-listed: the catalogue is data users extend (their own YAML adds a dimension), so
the cues must follow it. For each dimension the parser reads its ``phrasings`` and ``anti`` text,
normalises the words (lower case, British/American spelling, a light suffix stemmer) and keeps

- single words that occur in exactly one dimension's text, in at least ``MIN_USES`` of its texts or in a
  describing form (see ``_DESCRIBES``), and do not name an axis: a word that also appears in any
  dimension's ``conventional`` text ("colour", "focus", "light", "detail") names what is judged or its
  conventional pole, not the anti-aesthetic one, and generic picture words (``GENERIC``: "image",
  "scene", "look") name nothing at all;
- adjacent word pairs (function words skipped) that occur in exactly one dimension's text and hold a
  word that is not an axis or generic word, or a negator: "empty space", "mismatched objects", and
  "no shadows" (a negated axis word is itself the anti-aesthetic pole).

A few ``EXPANSIONS`` add everyday words the catalogue's wording misses. A cue preceded in its clause by
a negator ("not blurry", "no blur", "without noise", "avoid clutter", "never dark") or followed by "free"
("noise-free") makes its dimension ``negated``; a negator's scope runs through a list joined by
"and"/"or" ("without noise or blur") and ends at punctuation, "but", or any other word after a cue
("no blur and heavy darkness": the darkness is requested). Intensifiers just before a cue scale its
strength: ``RAISE_FACTOR`` for "very", "heavily", "extremely", "strongly", ...; ``LOWER_FACTOR`` for
"slightly", "a bit", ...; the product is capped at ``MAX_STRENGTH``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..dimensions import Catalogue, load_catalogue
from ..hashing import spec_hash
from .base import MAX_STRENGTH, Intent

VERSION = "1"
# A single word is a cue only when at least this many of its dimension's texts use it: the words a
# dimension keeps coming back to ("blur", "dark", "empty") name its effect, while a word used once is
# often the content around it ("green", "group", "model"; it still counts inside its word pair).
MIN_USES = 2
# ...unless its form marks it as describing something (blurred, grainy, shadowless, ominous, greenish,
# chaotic, unsettling): such a word names a quality, not the content that has it, and is matched in that
# form only ("grouping" is a cue, "group" is not). Adverbs (-ly) qualify another word ("quietly
# disturbing") and do not count.
_DESCRIBES = re.compile(r"(ed|less|ous|ish|ic|ing|[^aeiouly]y)$")
RAISE_FACTOR = 1.5
LOWER_FACTOR = 0.5

STOPWORDS = frozenset("""
a an the and or of in on at to from by for with into onto across behind than as that which who whose this
these those it its is are was were be been being has have had do does did so such any all some most more
much many each every there their them they his her he she we you your our my me i one just only also too
then like up its itself where when how what while here can could should would will may might must
""".split())
NEGATORS = frozenset({"not", "no", "without", "never", "avoid", "avoiding", "avoided", "neither", "nor", "non"})
CONJUNCTIONS = frozenset({"and", "or", "nor"})
# Words that end a clause: the scope of a negator or an intensifier never crosses them.
CLAUSE_WORDS = frozenset({"but", "yet", "though", "although", "whereas", "instead", "while"})
RAISE_WORDS = frozenset({"very", "heavily", "extremely", "strongly", "intensely", "really", "highly", "deeply",
                         "severely", "completely", "totally", "utterly", "super", "overly", "incredibly",
                         "heavy", "strong", "intense", "extreme", "massively", "thoroughly"})
LOWER_WORDS = frozenset({"slightly", "somewhat", "mildly", "faintly", "subtly", "lightly", "gently",
                         "moderately", "partly", "subtle", "mild", "slight", "faint"})
LOWER_PHRASES = frozenset({("a", "bit"), ("a", "little"), ("a", "touch"), ("a", "hint"), ("kind", "of"),
                           ("sort", "of")})
# Words that describe a picture or its parts in any prompt, whatever is asked of it.
GENERIC = frozenset({"image", "photo", "photograph", "picture", "scene", "shot", "frame", "look", "style",
                     "subject", "object", "thing", "item", "setting", "atmosphere", "air", "mood", "feel",
                     "feeling", "view", "render", "finish", "everything", "anywhere", "almost", "nothing"})

# Everyday words that the catalogue's own wording misses; only dimensions the catalogue holds use them.
# A single word is matched as written (its stem could meet a noun: "deserted" and "desert"), a pair by
# its stems.
EXPANSIONS: dict[str, tuple[str, ...]] = {
    "clarity": (
        "defocused", "unsharp", "soft focus",  # the catalogue says "out-of-focus" and "unfocused"
        "film grain", "haze",  # it says "grainy" and "hazy" once each, matched as written
    ),
    "color brightness": (
        "dim", "gloomy", "underlit", "unlit", "dimly lit", "poorly lit", "badly lit", "low light",
        "pitch black",  # it says "dark", "murky", "underexposed"; "dim" and "gloom" only inside phrasings
    ),
    "color aesthetic": (
        "lurid", "tacky", "discordant",  # common synonyms of "garish"/"clashing"
        "ugly color",  # the pair is a request; "color" alone names the axis
    ),
    "detail realism": (
        "malformed", "mangled", "contorted",  # synonyms of "deformed"/"misshapen"
    ),
    "detail refinement": (
        "pixelated", "pixelation", "jagged", "unpolished", "sloppy",  # it says "blocky pixels", "crude"
        "low res", "jpeg",  # how users name compression and low resolution
    ),
    "emotion": (
        "sinister", "menacing", "haunting", "uncanny", "unnerving", "depressing", "melancholy",
        # moods beside "eerie", "unsettling", "ominous"
    ),
    "lighting distinction": (
        "low contrast",  # flat light said as the photographer's term
    ),
    "main object": (
        "off center",  # "off-centre" after spelling normalisation
        "cropped out", "cut off",  # a subject leaving the frame
    ),
    "object pairing": (
        "incongruent", "juxtaposition", "absurd combination",  # how users name incongruity
    ),
    "richness": (
        "desolate", "minimalist", "deserted", "void",  # "empty, barren" said otherwise
    ),
    "symmetry": (
        "asymmetric", "asymmetrical", "dutch angle",  # the catalogue says "lopsided", "tilted"
    ),
    "lighting aesthetic": (
        "flash",  # the catalogue says "direct flash" once, as a pair
    ),
}

_SPELLING = (("colour", "color"), ("centre", "center"), ("artefact", "artifact"), ("grey", "gray"))
_TOKEN = re.compile(r"[a-z]+n't|[a-z]+|[,;.:!?()]")
_DOUBLE = re.compile(r"([b-df-hj-kmnp-rtv-z])\1$")  # not l or s: "dull", "mess" stay


def stem(word: str) -> str:
    """A light suffix stemmer: blurry/blurred/blurring/blur -> blur, noise/noisy -> nois, darkness -> dark.

    Hand-written because no stemmer ships with the core's dependencies and the catalogue needs only
    that the forms of one word meet; the stems need not be real words.
    """
    for old, new in _SPELLING:
        word = word.replace(old, new)
    if len(word) <= 3:
        return word
    for suffix, repl in (("iness", "y"), ("ness", ""), ("tion", "t"), ("sion", "s"), ("ies", "y"),
                         ("ied", "y"), ("sses", "ss"), ("ingly", ""), ("edly", ""), ("ing", ""), ("ed", ""),
                         ("ly", ""), ("es", "e"), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not (suffix == "s" and word[-2] in "su"):
            word = word[: len(word) - len(suffix)] + repl
            break
    # Kept at four letters or more, so "busy" and "bare" do not become "bus" and "bar".
    if len(word) > 4 and word.endswith("y") and word[-2] not in "aeiou":
        word = word[:-1]
    elif len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    if _DOUBLE.search(word):
        word = word[:-1]
    return word


@dataclass(frozen=True)
class Token:
    word: str  # lower case, as written ("not" for the n't of "don't")
    start: int
    end: int

    @property
    def is_break(self) -> bool:
        return not self.word[0].isalpha() or self.word in CLAUSE_WORDS


def tokenize(text: str) -> list[Token]:
    """Words and punctuation of ``text`` with their character spans; "don't" gives "do" and "not"."""
    lowered = text.lower().replace("\u2019", "'")
    out: list[Token] = []
    for m in _TOKEN.finditer(lowered):
        word = m.group()
        if word.endswith("n't"):
            out.append(Token(word[:-3], m.start(), m.end() - 3))
            out.append(Token("not", m.end() - 3, m.end()))
        else:
            out.append(Token(word, m.start(), m.end()))
    return out


def _content(tokens: Sequence[Token]) -> list[list[str]]:
    """The stems of the content words, per clause: what cues are made of and matched against."""
    chunks: list[list[str]] = [[]]
    for t in tokens:
        if t.is_break:
            chunks.append([])
        elif t.word not in STOPWORDS and t.word not in RAISE_WORDS and t.word not in LOWER_WORDS:
            chunks[-1].append(stem(t.word))
    return [c for c in chunks if c]


@dataclass(frozen=True)
class Lexicon:
    """Cue stems (one word or an adjacent pair) -> dimension key."""

    unigrams: dict[str, str]
    bigrams: dict[tuple[str, str], str]
    words: dict[str, str]  # descriptive words the catalogue uses once: matched as written, not by stem

    def digest(self) -> str:
        return spec_hash({"unigrams": self.unigrams, "words": self.words,
                          "bigrams": sorted([*k, v] for k, v in self.bigrams.items())})[:16]


def build_lexicon(catalogue: Catalogue) -> Lexicon:
    """The cues of every dimension of ``catalogue`` (see the module docstring for the rules)."""
    axis = {stem(t.word) for d in catalogue for t in tokenize(d.conventional)}
    negators = {stem(w) for w in NEGATORS}
    uses: dict[str, dict[str, int]] = {}  # stem -> dimension -> how many of its texts use it
    bi_dims: dict[tuple[str, str], set[str]] = {}
    descriptive: dict[str, set[str]] = {}  # stem -> its descriptive surface forms
    for d in catalogue:
        for text in (*d.phrasings, d.anti):
            tokens = tokenize(text)
            for t in tokens:
                if _DESCRIBES.search(t.word) and not t.word.endswith("ly") and t.word not in STOPWORDS:
                    descriptive.setdefault(stem(t.word), set()).add(t.word)
            chunks = _content(tokens)
            for s in {s for chunk in chunks for s in chunk}:
                uses.setdefault(s, {}).setdefault(d.key, 0)
                uses[s][d.key] += 1
            for chunk in chunks:
                for pair in zip(chunk, chunk[1:]):
                    bi_dims.setdefault(pair, set()).add(d.key)
    weak = axis | {stem(w) for w in GENERIC}
    unigrams: dict[str, str] = {}
    words: dict[str, str] = {}
    for s, per_dim in uses.items():
        [(key, n)] = per_dim.items() if len(per_dim) == 1 else [("", 0)]
        if not key or len(s) < 4 or s in weak or s in negators:
            continue
        if n >= MIN_USES:
            unigrams[s] = key
        else:
            words.update(dict.fromkeys(descriptive.get(s, ()), key))
    bigrams = {}
    for pair, ds in bi_dims.items():
        negated_axis = pair[0] in negators and pair[1] not in negators
        if len(ds) == 1 and pair[0] != pair[1] and (
                negated_axis or (pair[0] not in negators and pair[1] not in negators
                                 and any(s not in weak for s in pair))):
            bigrams[pair] = next(iter(ds))
    for key, phrases in EXPANSIONS.items():
        if key not in catalogue:
            continue
        for phrase in phrases:
            stems = [s for chunk in _content(tokenize(phrase)) for s in chunk]
            if len(stems) == 1:
                words[phrase] = key  # as written: a stem could meet a noun ("deserted" and "desert")
            else:
                bigrams[(stems[0], stems[1])] = key
    return Lexicon(unigrams, bigrams, words)


@dataclass
class _Match:
    dimension: str
    first: int  # token indices, inclusive
    last: int
    negated_from: int | None = None  # index of the negator that negates it
    strength: float = 1.0


class LexiconParser:
    """Offline intent parser over cues derived from the dimension catalogue (see the module docstring)."""

    name = "lexicon"
    version = VERSION

    def __init__(self, dimensions_file: str | Path | None = None, catalogue: Catalogue | None = None):
        """``dimensions_file``: a user's YAML merged over the built-in catalogue; ``catalogue``: one
        already loaded (wins over ``dimensions_file``)."""
        self.catalogue = catalogue if catalogue is not None else load_catalogue(dimensions_file)
        self.lexicon = build_lexicon(self.catalogue)

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "lexicon": self.lexicon.digest()}

    def parse(self, prompts: Sequence[str]) -> list[Intent]:
        return [self.parse_one(p) if isinstance(p, str) else
                Intent(error=f"prompt {i} is a {type(p).__name__}, not text") for i, p in enumerate(prompts)]

    def parse_one(self, prompt: str) -> Intent:
        tokens = tokenize(prompt)
        matches = self._matches(tokens)
        requested: dict[str, float] = {}
        negated: set[str] = set()
        evidence: dict[str, list[str]] = {}
        for m in matches:
            start = tokens[m.negated_from if m.negated_from is not None else m.first].start
            quote = prompt[start:tokens[m.last].end]
            if m.negated_from is None:
                requested[m.dimension] = max(requested.get(m.dimension, 0.0), m.strength)
                evidence.setdefault(m.dimension, [])
            elif m.dimension not in requested:
                negated.add(m.dimension)
            evidence.setdefault(m.dimension, [])
            if quote not in evidence[m.dimension]:
                evidence[m.dimension].append(quote)
        # A dimension with any plain request is requested ("not blurry but grainy" asks for grain).
        negated -= set(requested)
        return Intent(requested=requested, negated=frozenset(negated),
                      evidence={k: "; ".join(v) for k, v in evidence.items()})

    def free_negators(self, text: str) -> list[str]:
        """Negators in ``text`` that are not part of a cue ("no shadows" is a cue, not a negation): the
        negation detector the embedding parser shares."""
        tokens = tokenize(text)
        covered = {i for m in self._cue_spans(tokens) for i in range(m.first, m.last + 1)}
        return [t.word for i, t in enumerate(tokens) if i not in covered and _is_negator(tokens, i)]

    # --- matching ----------------------------------------------------------------------------------------

    def _cue_spans(self, tokens: list[Token]) -> list[_Match]:
        """Cues found in ``tokens``, longest first, no two overlapping; intensifier words are skipped over
        but an intensifier phrase ("a little") is never part of a cue."""
        skip = _intensifier_factors(tokens)
        found: list[_Match] = []
        for clause in _clauses(tokens):
            content = [i for i in clause if tokens[i].word not in STOPWORDS and i not in skip]
            stems = [stem(tokens[i].word) for i in content]
            j = 0
            while j < len(content):
                pair = (stems[j], stems[j + 1]) if j + 1 < len(content) else None
                if pair in self.lexicon.bigrams:
                    found.append(_Match(self.lexicon.bigrams[pair], content[j], content[j + 1]))
                    j += 2
                    continue
                key = self.lexicon.unigrams.get(stems[j]) or self.lexicon.words.get(tokens[content[j]].word)
                if key:
                    found.append(_Match(key, content[j], content[j]))
                j += 1
        return found

    def _matches(self, tokens: list[Token]) -> list[_Match]:
        matches = self._cue_spans(tokens)
        factors = _intensifier_factors(tokens)
        starts = {m.first: m for m in matches}
        covered = {i for m in matches for i in range(m.first, m.last + 1)}
        for clause in _clauses(tokens):
            negator: int | None = None
            gap = 0
            after_cue = False
            joined = False  # an "and"/"or" since the last negated cue: the list (and the negation) goes on
            i_pos = 0
            while i_pos < len(clause):
                i = clause[i_pos]
                word = tokens[i].word
                if i in starts:
                    m = starts[i]
                    if negator is not None and after_cue and not joined:
                        negator = None  # "not blurry dark": the darkness is requested, not negated
                    if negator is not None:
                        m.negated_from = negator
                        after_cue, joined = True, False
                    elif m.last + 1 < len(tokens) and tokens[m.last + 1].word == "free":
                        m.negated_from = m.first  # "noise-free", "clutter free"
                    m.strength = _strength(tokens, clause, clause.index(m.first), factors, covered)
                    i_pos = clause.index(m.last) + 1
                    continue
                if i not in covered and _is_negator(tokens, i):
                    negator, gap, after_cue = i, 0, False
                elif word in CONJUNCTIONS:
                    joined = True
                elif word in STOPWORDS:
                    pass
                elif negator is not None:
                    gap += 1
                    if after_cue or gap > 2:
                        negator = None
                i_pos += 1
        return matches


def intensity(text: str) -> float:
    """The product of every intensifier's factor in ``text`` ("very" 1.5, "a bit" 0.5), at most
    MAX_STRENGTH: the strength of a clause that names one effect."""
    strength = 1.0
    for factor in _intensifier_factors(tokenize(text)).values():
        strength *= factor
    return min(strength, MAX_STRENGTH)


def _is_negator(tokens: list[Token], i: int) -> bool:
    word = tokens[i].word
    return word in NEGATORS or (word == "free" and i + 1 < len(tokens) and tokens[i + 1].word == "of")


def _clauses(tokens: list[Token]) -> list[list[int]]:
    out: list[list[int]] = [[]]
    for i, t in enumerate(tokens):
        if t.is_break:
            out.append([])
        else:
            out[-1].append(i)
    return [c for c in out if c]


def _intensifier_factors(tokens: list[Token]) -> dict[int, float]:
    """Token index -> its factor, for every token of an intensifier (a phrase's factor on its first token,
    1.0 on the rest)."""
    out: dict[int, float] = {}
    for i, t in enumerate(tokens):
        if i in out:
            continue
        if i + 1 < len(tokens) and (t.word, tokens[i + 1].word) in LOWER_PHRASES:
            out[i], out[i + 1] = LOWER_FACTOR, 1.0
        elif t.word in RAISE_WORDS:
            out[i] = RAISE_FACTOR
        elif t.word in LOWER_WORDS:
            out[i] = LOWER_FACTOR
    return out


def _strength(tokens: list[Token], clause: list[int], at: int, factors: dict[int, float],
              covered: set[int]) -> float:
    """The product of the intensifiers just before the cue at ``clause[at]`` (one other word may sit
    between them: "very noticeable blur"), capped at MAX_STRENGTH."""
    strength, skipped = 1.0, 0
    for i in reversed(clause[:at]):
        word = tokens[i].word
        if i in factors:
            strength *= factors[i]
        elif i in covered or word in CONJUNCTIONS or word in NEGATORS:
            break
        elif word in STOPWORDS:
            continue
        else:
            skipped += 1
            if skipped > 1:
                break
    return min(strength, MAX_STRENGTH)
