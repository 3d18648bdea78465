"""The intent-aware reward: prompt faithfulness plus aesthetics whose sign follows what the prompt asks for.

    r(I, p) = faithfulness(I, p) + λ · Σ_d w_d · s_d(p) · a_d(I)

The study behind this project found that reward models reward "looks conventionally good" even when the
prompt asked for the opposite. This scorer keeps the aesthetic preference but turns it around, dimension by
dimension, where the prompt requests the anti-aesthetic pole:

- ``s_d(p)`` = ``Intent.sign(d)``: -1 for a dimension the prompt requests ("a blurry photo" requests
  clarity), +1 otherwise (a negated request, "not blurry", counts as not requested). The intent comes from an
  intent parser: option ``parser`` (a name for ``intent.make_parser``, default ``"lexicon"``, offline) with
  ``parser_options``, or an injected parser object.
- ``a_d(I)``: the aesthetic term, centred in [-1, 1]. ``aesthetic: judge`` (the default): the judge's J_d - 1
  for each dimension the judge covers (the classical judge: clarity, color brightness, color aesthetic,
  lighting distinction, detail refinement). ``aesthetic: NAME``: a prompt-blind quality scorer (for example
  ``laion-aesthetic``, ``composite``; options in ``aesthetic_options``) read as ONE term, ``overall``:
  a = clip(±(score - center) / scale, -1, 1), minus where lower scores are better (BRISQUE), with ``center`` and
  ``scale`` defaulting to the middle and half-width of the scorer's ``score_range`` (so ``composite``'s 0-10
  gives exactly the mean of J - 1, ``laion-aesthetic``'s 1-10 centre 5.5, scale 4.5). Its sign is -1 when the
  prompt requests any dimension, else +1: a single quality number cannot say which requested effect it saw.
- ``faithfulness(I, p)``: ``faithfulness: classical`` (the offline default) or the name of an alignment
  scorer (``blip-itm``, ``clip``, ``hps``, ...; options in ``faithfulness_options``) whose score is used as it
  is (its scale sets how large λ must be: BLIP ITM's probability sits in [0, 1] beside terms in [-1, 1],
  CLIP's 100 x cosine needs a λ in the tens). The classical stand-in is NOT a content check: no model can tell
  a cat from a dog offline, so it scores only the part of p the classical judge can see, the requested effects:
  the mean over requested dimensions the judge covers of (2 - J_d) / 2 (1 = the effect fully present), and 1.0
  when p requests none of them, so under a plain prompt it is a constant and the terms alone decide. A real
  alignment scorer adds what the stand-in cannot: whether the subject, objects and scene of p are there.
- Requests the terms cannot see: the classical judge covers five dimensions, and a prompt may request
  another (an emptied scene, a subject pushed to the corner). The edit that realises such an effect also
  moves the statistics the judge does see, and the plain formula would then punish the image for a side
  effect of doing what was asked. With ``unseen: abstain`` (the default) the signs of the terms the prompt
  does not request become 0 when it requests a dimension no term covers: conventional aesthetics has no say
  where the reward cannot tell the requested effect from a flaw, the requested terms keep their -1, and
  faithfulness decides (offline, the two images of such a pair then tie unless a covered effect was also
  requested; the analysis counts ties apart). ``unseen: plain`` applies the formula as written. A judge that
  covers every dimension (a prepared VLM judge passed from Python as ``judge=``) never abstains; in
  quality-scorer mode the one term already flips for any request.
- λ: option ``strength`` (default 1.0; 0 switches aesthetics off, so the score is the faithfulness term
  exactly); w_d: option ``weights``, a taste profile {dimension: weight} (default 1 for every term; a key that
  is not one of the terms is an error; a weight may be 0, to ignore a dimension, or negative, for a user who
  always prefers, say, grain). Both enter ``identity()``, beside the parser's, the judge's and the parts'.

Each result's ``extra["intent"]`` holds ``faithfulness``, ``terms`` (a_d), ``signs`` (s_d), ``weights``,
``lambda``, ``requested`` (dimension -> strength), ``negated`` and ``unseen`` (requested dimensions no term
covers; s_d is 0 for the unrequested terms when abstaining): the score is exactly
``faithfulness + lambda * sum(weights[d] * signs[d] * terms[d] for d in terms)``, so the analysis recomputes it
for any other λ. ``tokens``/``truncated`` are the faithfulness scorer's.

Judge work is shared with the judge stage: where the run holds the judge stage's records of the same judge
(same identity), ``stored_results`` reads their J values (as the composite scorer does) and the images are not
measured again. The score itself depends on the prompt, and the score stage applies a stored result to every
prompt of an image, so ``stored_results`` answers with the stored J values as inputs (``StoredInput``), which
the stage hands back through ``reuse`` with the decoded images (on whichever worker scores them), matched to
their pixels (``image_key``), for the ``score`` call that follows.

Training loops: ``IntentAwareReward(alignment, aesthetic, parser, strength, weights)`` (or calling a scorer
built with model parts, ``scorer(images, prompts)``) returns a reward tensor [B] that is differentiable when
its parts are: a dual-encoder or cross-encoder alignment scorer's tensor call and a differentiable prompt-blind
quality model as the ``overall`` term. The classical judge is not differentiable, so the judge modes refuse::

    clip = get("scorers", "clip")(device="cuda")
    laion = get("scorers", "laion-aesthetic")(allow_pickle=True, device="cuda", model=clip.load().model)
    reward = IntentAwareReward(clip, laion, make_parser("lexicon"), strength=20.0)
    r = reward(images, prompts)          # images: float [B, 3, H, W] in [0, 1], with grad
    loss = -r.mean(); loss.backward()    # e.g. a reward-weighted or direct reward-backprop update
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from PIL import Image

from ..errors import AuditError, ConfigError, InputError
from ..intent.base import Intent, IntentParser, make_parser
from ..judges.base import Judge
from ..judges.classical import ClassicalJudge
from ..registry import register
from ._weights import WeightsError
from .base import Scorer, ScoreResult, StoredInput, image_key
from .composite import CompositeAesthetics
from .stage import make_scorer

if TYPE_CHECKING:
    from ..store import RunStore

JUDGE_MODE = "judge"
CLASSICAL = "classical"
OVERALL = "overall"
UNSEEN = ("abstain", "plain")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number; got {value!r}")
    return float(value)


def resolve_weights(weights: Mapping[str, Any] | None, terms: Sequence[str]) -> dict[str, float]:
    """The taste profile over ``terms``: given weights, 1.0 for the rest; other keys are a ConfigError."""
    if weights is not None and not isinstance(weights, Mapping):
        raise ConfigError(f"weights must be a mapping {{dimension: weight}}, e.g. {{clarity: 0.5}}; got {weights!r}")
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(terms))
    if unknown:
        raise ConfigError(f"weights: unknown keys {', '.join(map(repr, unknown))}; this reward's terms are "
                          f"{', '.join(terms)}")
    return {d: _number(weights.get(d, 1.0), f"weights[{d!r}]") for d in terms}


def centring(scorer: Any, center: Any = None, scale: Any = None) -> tuple[float, float, int]:
    """(center, scale, direction) that map a prompt-blind quality score to a = clip(direction * (score - center)
    / scale, -1, 1); by default the middle and half-width of the scorer's ``score_range``."""
    if getattr(scorer, "prompt_aware", True):
        raise ConfigError(f"aesthetic {scorer.name}: the aesthetic term must come from a prompt-blind quality "
                          "scorer (the prompt enters through the signs)")
    lo, hi = getattr(scorer, "score_range", (None, None))
    if center is None or scale is None:
        if lo is None or hi is None:
            raise ConfigError(f"aesthetic {scorer.name}: its score range is open, so set center and scale "
                              "(a = clip((score - center) / scale, -1, 1))")
    center = _number((lo + hi) / 2 if center is None else center, "center")
    scale = _number((hi - lo) / 2 if scale is None else scale, "scale")
    if scale <= 0:
        raise ConfigError(f"scale must be positive; got {scale}")
    return center, scale, 1 if getattr(scorer, "higher_is_better", True) else -1


def _strength(value: Any) -> float:
    strength = _number(value, "strength")
    if strength < 0:
        raise ConfigError(f"strength must be >= 0 (0 switches aesthetics off); got {strength}")
    return strength


def _part(value: Any, options: dict[str, Any] | None, role: str) -> Scorer:
    """A named scorer built with its options, or an injected scorer object (then no options)."""
    if isinstance(value, str):
        try:
            scorer = make_scorer(value, options)
        except ConfigError as exc:
            raise ConfigError(f"{role} {value}: {exc}") from None
    elif options:
        raise ConfigError(f"{role}_options apply to a scorer named by {role}, not to an injected scorer")
    else:
        scorer = value
    if getattr(scorer, "pairwise", False) or not callable(getattr(scorer, "score", None)):
        raise ConfigError(f"{role} {getattr(scorer, 'name', scorer)!r} gives no score r(I, p)")
    return scorer


def _parser(value: Any, options: dict[str, Any] | None) -> IntentParser:
    if isinstance(value, str):
        return make_parser(value, options)
    if options:
        raise ConfigError("parser_options apply to a parser named by parser, not to an injected parser")
    if not (callable(getattr(value, "parse", None)) and callable(getattr(value, "identity", None))):
        raise ConfigError(f"parser {value!r} is neither a parser name nor an object with parse() and identity()")
    return value


@register("scorers")
class IntentAwareScorer(Scorer):
    name: ClassVar[str] = "intent-aware"
    description: ClassVar[str] = ("faithfulness + λ Σ_d w_d s_d(p) a_d(I): aesthetics whose sign flips for the "
                                  "dimensions the prompt asks for")
    official: ClassVar[str] = "this project's intent-aware reward (issue 11; no official counterpart)"
    score_scale: ClassVar[str] = ("faithfulness + λ x a weighted sum of signed terms in [-1, 1]; offline defaults "
                                  "(classical faithfulness 0-1, five judge terms, λ = 1): -5 to 6")
    parity: ClassVar[str] = "not applicable: defined here; tests check the formula by hand"
    higher_is_better: ClassVar[bool] = True
    score_range: ClassVar[tuple[float | None, float | None]] = (None, None)  # depends on λ, w and the parts
    prompt_aware: ClassVar[bool] = True
    version: ClassVar[str] = "1"

    def __init__(self, *, parser: str | IntentParser = "lexicon", parser_options: dict[str, Any] | None = None,
                 aesthetic: str | Scorer = JUDGE_MODE, aesthetic_options: dict[str, Any] | None = None,
                 center: float | None = None, scale: float | None = None,
                 faithfulness: str | Scorer = CLASSICAL, faithfulness_options: dict[str, Any] | None = None,
                 strength: float = 1.0, weights: Mapping[str, float] | None = None, unseen: str = "abstain",
                 judge: Judge | None = None):
        self.strength = _strength(strength)
        if unseen not in UNSEEN:
            raise ConfigError(f"unseen must be one of {', '.join(UNSEEN)}; got {unseen!r}")
        self.unseen = unseen
        self.parser = _parser(parser, parser_options)
        # Injectable from Python so a caller can share one judge (and its settings) with the judge stage, or
        # pass a judge that covers more dimensions (a prepared VLM judge); the config cannot name one.
        if judge is not None and not isinstance(judge, Judge):
            raise ConfigError(f"judge must be a judge object passed from Python (the classical judge is the "
                              f"default); got {judge!r}")
        self.judge = judge if judge is not None else ClassicalJudge()
        self.quality: Scorer | None = None
        if aesthetic == JUDGE_MODE:
            if aesthetic_options or center is not None or scale is not None:
                raise ConfigError("aesthetic_options, center and scale apply to a quality scorer as aesthetic, "
                                  "not to aesthetic: judge")
            if not self.judge.covers:
                raise ConfigError(f"judge {self.judge.name} declares no covered dimensions to make terms of")
            self.terms: tuple[str, ...] = tuple(self.judge.covers)
            self.center = self.scale = None
            self.direction = 1
        else:
            self.quality = _part(aesthetic, aesthetic_options, "aesthetic")
            self.center, self.scale, self.direction = centring(self.quality, center, scale)
            self.terms = (OVERALL,)
        if faithfulness == CLASSICAL:
            if faithfulness_options:
                raise ConfigError("faithfulness_options apply to an alignment scorer, not to faithfulness: classical")
            self.faithful: Scorer | None = None
        else:
            self.faithful = _part(faithfulness, faithfulness_options, "faithfulness")
            if not self.faithful.prompt_aware:
                raise ConfigError(f"faithfulness {self.faithful.name}: an alignment scorer must read the prompt; "
                                  f"{self.faithful.name} is prompt-blind")
        self.weights = resolve_weights(weights, self.terms)
        self.uses_judge = self.quality is None or self.faithful is None
        super().__init__(parser=self.parser.name, aesthetic=self.quality.name if self.quality else JUDGE_MODE,
                         faithfulness=self.faithful.name if self.faithful else CLASSICAL, strength=self.strength,
                         weights=self.weights, unseen=self.unseen,
                         **({"center": self.center, "scale": self.scale} if self.quality else {}))
        self._stored: dict[str, dict[str, float]] = {}  # image_key -> J, from the judge stage's records

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "parser": self.parser.identity(),
                "judge": self.judge.identity() if self.uses_judge else None,
                "faithfulness": self._of("faithfulness", self.faithful, "identity") if self.faithful else CLASSICAL,
                "aesthetic": self._of("aesthetic", self.quality, "identity") if self.quality else JUDGE_MODE}

    def _load(self) -> None:
        for role, part in (("faithfulness", self.faithful), ("aesthetic", self.quality)):
            if part is not None:
                self._of(role, part, "load")

    @staticmethod
    def _of(role: str, part: Scorer, method: str) -> Any:
        """``part.method()``, its errors naming the part and where its options go: this scorer's own
        ``weights`` is the taste profile, so a part's hint "pass DIR as the weights option" would mislead."""
        try:
            return getattr(part, method)()
        except AuditError as exc:
            cls = WeightsError if isinstance(exc, WeightsError) else ConfigError
            raise cls(f"{role} {part.name}: {exc} (the {role} scorer's options, its weights included, go in "
                      f"{role}_options)") from None

    # -- the score stage's reuse of judge records ----------------------------------------------------
    def stored_results(self, store: RunStore, images: Sequence[str]) -> dict[str, StoredInput]:
        """The J values the judge stage stored for ``images`` with this scorer's judge, as inputs to reuse,
        never as results (a score depends on the prompt; see the module docstring)."""
        if not self.uses_judge:
            return {}
        return {sha: StoredInput(res.extra["J"])
                for sha, res in CompositeAesthetics(judge=self.judge).stored_results(store, images).items()}

    def reuse(self, stored: list[tuple[Image.Image, Any]]) -> None:
        """The stored J values of the next ``score`` call's images, matched to their pixels (``image_key``)."""
        self._stored = {image_key(image): value for image, value in stored}

    # -- scoring ---------------------------------------------------------------------------------------
    def _judgements(self, images: list[Image.Image]) -> dict[int, dict[str, float] | str]:
        """J over the judge's dimensions (or an error) per distinct image object, stored or measured."""
        out: dict[int, dict[str, float] | str] = {}
        todo = []
        for image in {id(im): im for im in images}.values():
            stored = self._stored.get(image_key(image)) if self._stored else None
            if stored is not None:
                out[id(image)] = stored
            else:
                todo.append(image)
        for image, res in zip(todo, self.judge.judge(todo, self.judge.covers) if todo else []):
            missing = [d for d in self.judge.covers if res.scores.get(d) is None]
            out[id(image)] = (f"judge {self.judge.name}: {res.error or 'no score for ' + ', '.join(missing)}"
                              if res.error or missing else {d: float(res.scores[d]) for d in self.judge.covers})
        return out

    def _score(self, items: list[tuple[Image.Image, str | None]]) -> list[ScoreResult]:
        results: list[ScoreResult | None] = [None] * len(items)
        good = []
        for i, (image, prompt) in enumerate(items):
            if not isinstance(image, Image.Image):
                results[i] = ScoreResult(None, error=f"image failed: {image}" if isinstance(image, BaseException)
                                         else f"no image ({image!r})")
            elif not isinstance(prompt, str) or not prompt.strip():
                results[i] = ScoreResult(None, error="empty prompt: the intent-aware reward reads what it asks for")
            else:
                good.append(i)
        if not good:
            return results  # type: ignore[return-value]
        prompts = list({items[i][1]: None for i in good})
        intents = dict(zip(prompts, self.parser.parse(prompts)))
        judged = self._judgements([items[i][0] for i in good]) if self.uses_judge else {}
        faithful = self.faithful.score([items[i] for i in good]) if self.faithful else [None] * len(good)
        quality = self.quality.score([(items[i][0], None) for i in good]) if self.quality else [None] * len(good)
        for i, f_res, q_res in zip(good, faithful, quality):
            image, prompt = items[i]
            results[i] = self._combine(intents[prompt], judged.get(id(image)), f_res, q_res)
        return results  # type: ignore[return-value]

    def _combine(self, intent: Intent, J: dict[str, float] | str | None, f_res: ScoreResult | None,
                 q_res: ScoreResult | None) -> ScoreResult:
        if not intent.ok:
            return ScoreResult(None, error=f"intent parser {self.parser.name}: {intent.error}")
        if isinstance(J, str):
            return ScoreResult(None, error=J)
        for role, res, part in (("faithfulness", f_res, self.faithful), ("aesthetic", q_res, self.quality)):
            if res is not None and not (res.ok and math.isfinite(res.score)):
                return ScoreResult(None, error=f"{role} {part.name}: {res.error or f'score {res.score}'}")
        if f_res is None:
            seen = [d for d in intent.requested if d in J]
            f = sum((2.0 - J[d]) / 2.0 for d in seen) / len(seen) if seen else 1.0
        else:
            f = float(f_res.score)
        unseen = sorted(d for d in intent.requested if d not in self.terms) if q_res is None else []
        if q_res is None:
            terms = {d: J[d] - 1.0 for d in self.terms}
            abstain = self.unseen == "abstain" and bool(unseen)
            signs = {d: 0 if abstain and d not in intent.requested else intent.sign(d) for d in self.terms}
        else:
            terms = {OVERALL: min(1.0, max(-1.0, self.direction * (float(q_res.score) - self.center) / self.scale))}
            signs = {OVERALL: -1 if intent.requested else 1}
        score = f + self.strength * sum(self.weights[d] * signs[d] * terms[d] for d in terms)
        return ScoreResult(score, tokens=f_res.tokens if f_res else None, truncated=f_res.truncated if f_res else None,
                           extra={"intent": {"faithfulness": f, "terms": terms, "signs": signs,
                                             "weights": dict(self.weights), "lambda": self.strength,
                                             "requested": dict(intent.requested), "negated": sorted(intent.negated),
                                             "unseen": unseen}})

    # -- training loops ----------------------------------------------------------------------------------
    def reward(self) -> IntentAwareReward:
        """This scorer's parts as a differentiable reward (model parts only; the classical judge is not)."""
        if self.uses_judge:
            raise ConfigError(f"{self.name}: the classical judge (aesthetic: judge or faithfulness: classical) is "
                              "not differentiable; for a tensor reward use an alignment scorer and a quality scorer")
        return IntentAwareReward(self.faithful, self.quality, self.parser, self.strength, self.weights,
                                 center=self.center, scale=self.scale)

    def __call__(self, images: Any, prompts: Sequence[str]):
        """``IntentAwareReward.__call__`` with this scorer's parts (see ``reward``)."""
        return self.reward()(images, prompts)


class IntentAwareReward:
    """The intent-aware reward as a tensor function, for RL or reward-backprop fine-tuning of a generator.

    ``alignment``: a prompt-aware scorer with a training-loop call (``DualEncoderScorer`` such as ``clip`` /
    ``pickscore``, or a cross-encoder such as ``blip-itm``); ``aesthetic``: a prompt-blind quality scorer with
    one (``laion-aesthetic``), read as the single centred ``overall`` term (``center``/``scale`` as for the
    scorer's option); ``parser``: an intent parser. ``__call__(images, prompts)`` takes a float tensor
    [B, 3, H, W] in [0, 1] (or PIL images) and one prompt per image and returns
    alignment + strength * w * s(p) * clip(±(quality - center) / scale, -1, 1), a float32 tensor [B] that
    carries the gradients of both parts (the clip passes none where the quality is beyond the range).
    """

    def __init__(self, alignment: Any, aesthetic: Any, parser: IntentParser, strength: float = 1.0,
                 weights: Mapping[str, float] | None = None, *, center: float | None = None,
                 scale: float | None = None):
        for role, part, aware in (("alignment", alignment, True), ("aesthetic", aesthetic, False)):
            if not callable(part):
                raise ConfigError(f"{role}: {getattr(part, 'name', part)!r} has no tensor call (the classical "
                                  "judge and the composite score are not differentiable)")
            if getattr(part, "prompt_aware", None) is not aware:
                raise ConfigError(f"{role} {part.name}: must be {'prompt-aware' if aware else 'prompt-blind'}")
        self.alignment, self.aesthetic, self.parser = alignment, aesthetic, _parser(parser, None)
        self.strength = _strength(strength)
        self.center, self.scale, self.direction = centring(aesthetic, center, scale)
        self.weight = resolve_weights(weights, (OVERALL,))[OVERALL]

    def signs(self, prompts: Sequence[str]) -> list[int]:
        """s(p) of the ``overall`` term per prompt: -1 where the prompt requests any dimension, else +1."""
        out = []
        for k, intent in enumerate(self.parser.parse(list(prompts))):
            if not intent.ok:
                raise InputError(f"intent parser {self.parser.name}: prompt {k}: {intent.error}", item=str(k))
            out.append(-1 if intent.requested else 1)
        return out

    def __call__(self, images: Any, prompts: Sequence[str]):
        from ._torch import torch

        t = torch()
        prompts = list(prompts)
        signs = self.signs(prompts)
        f = self.alignment(images, prompts).float()
        q = self.aesthetic(images).float().to(f.device)
        a = (self.direction * (q - self.center) / self.scale).clamp(-1.0, 1.0)
        s = t.tensor(signs, dtype=t.float32, device=f.device)
        return f + self.strength * self.weight * s * a
