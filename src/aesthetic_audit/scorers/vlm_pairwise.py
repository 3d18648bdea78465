"""A vision-language model as a pairwise reward model (the study also tested GPT-5-Chat this way).

Its unit is a pair, not an (image, prompt): shown p_a and the two images I_o, I_a, it says which
matches p_a better. It gives no score r(I, p), so it is no scalar scorer: the class says
``pairwise = True`` and the score stage writes one record per distinct (I_o, I_a, p_a) with
``prefers`` (1: I_a, 0: I_o, -1: tie) and, where the answer has probabilities, ``prob_a`` =
P(I_a matches better). The analysis runs the reward-model test on it beside the scalar scorers:
the prediction is ``prefers == 1``, so a tie answer counts as not predicting I_a (and is counted);
AUROC is computed on ``prob_a`` and reported as not available when the answers carry none.

The question, the presentation order and the backend are the pairwise labeller's
(:mod:`aesthetic_audit.labels.vlm`): any OpenAI-compatible chat endpoint (``url``, ``model``) or a
local Qwen-VL folder (``model``), the same images (optionally squashed to ``image_size``), the order
drawn from ``seed`` and the pair's content exactly as the labels stage draws it (so with the run's
seed the two see a pair in the same order), or both orders with ``both_orders``. Two ways to answer
(option ``answer``):

``json`` (default)
    The labeller's own question, JSON schema, parser and re-asking of malformed replies:
    ``prefers`` only, no probabilities. With ``both_orders`` two different answers make a tie
    (``disagree``), as for the labeller. Temperature defaults to 0, so a verdict repeats.
``probs``
    The same layout with a one-character answer, ``1`` (first image) or ``2`` (second image), read as
    answer-token probabilities the way the VLM judge reads its levels: a local model's logits at the
    answer position, an endpoint's top log-probabilities of the first reply token (or, from a server
    that returns none, the frequencies of sampled answers, recorded as ``discrete``). The JSON
    reply is avoided here because the selection digit sits behind the ``{"selection":`` tokens and a
    tie (``-1``) spans two tokens, so its probability is not one token's. ``prob_a`` is the
    probability of the digit naming I_a (averaged over the two orders with ``both_orders``), and
    ``prefers`` is 1 above 0.5, 0 below, -1 at exactly 0.5. There is no tie answer: a model that
    cannot tell the images apart shows it as a probability near 0.5.

A pair whose answer fails (transport errors after the client's retries, replies that stay malformed
after ``max_reasks`` re-asks, an image that cannot be read) is a failed record; the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from PIL import Image

from ..errors import ConfigError
from ..hashing import spec_hash
from ..labels.vlm import INSTRUCTION, SCHEMA, SYSTEM, LabelResult, PairItem, VLMLabeller, pair_prompts
from ..registry import register

ANSWERS = ("json", "probs")
# The one-character question of ``answer: probs``: the labeller's layout, a digit per image instead of JSON.
PROBS_SYSTEM = "You judge which image better matches a text prompt. Reply with a single digit."
PROBS_INSTRUCTION = ("Below are a text prompt and two images. Which image matches the prompt better? Answer with "
                     "1 for the first image or 2 for the second image, and nothing else.\n\nPrompt:\n{prompt}")
PROBS_TOKENS = ("1", "2")


@dataclass(frozen=True)
class PairAnswer:
    """One pair's verdict: ``prefers`` 1 (I_a) / 0 (I_o) / -1 (tie), ``prob_a`` = P(I_a better) or
    None, the answers per presentation order, ``disagree`` (both orders asked in json mode and they
    differ) and ``discrete`` (probabilities from sampled answers); or ``error``."""
    prefers: int | None
    prob_a: float | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)
    disagree: bool | None = None
    discrete: bool | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.prefers is not None


@register("scorers")
class VLMPairwise:
    name: ClassVar[str] = "vlm-pair"
    description: ClassVar[str] = ("pairwise: a vision-language model shown both images and p_a says which matches "
                                  "better (OpenAI-compatible endpoint or local Qwen-VL); no score r(I, p)")
    pairwise: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True  # prob_a: higher means I_a preferred
    score_range: ClassVar[tuple[float | None, float | None]] = (None, None)  # it has no score
    prompt_aware: ClassVar[bool] = True
    reward_model: ClassVar[bool] = True
    max_prompt_tokens: ClassVar[int | None] = None
    version: ClassVar[str] = "1"
    extra: ClassVar[str | None] = None  # an endpoint needs nothing more; a local model the "models" extra
    official: ClassVar[str] = ("no checkpoint: any chat VLM (OpenAI-compatible endpoint or local Qwen-VL) asked the "
                               "pairwise labeller's question; the study tested GPT-5-Chat this way")
    score_scale: ClassVar[str] = ("no score r(I, p): per pair prefers I_a / I_o / tie; with answer: probs also "
                                  "P(I_a better) in [0, 1] (AUROC needs it)")
    parity: ClassVar[str] = ("tests: a stub OpenAI-compatible server (both orders, ties, malformed replies, faults; "
                             "RM test equal to scikit-learn's) and a tiny Qwen2-VL's own logits for probs")

    def __init__(self, *, answer: str = "json", seed: int = 0, both_orders: bool = False, temperature: float = 0.0,
                 image_size: int | None = None, max_reasks: int = 2, max_tokens: int = 32, **backend: Any):
        """Builds the backend and loads nothing. The options other than ``answer`` and ``seed`` are the
        labeller's (checked by it); the rest configure the backend (``url``/``model``...)."""
        if answer not in ANSWERS:
            raise ConfigError(f"answer must be one of {', '.join(ANSWERS)}, not {answer!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, not {seed!r}")
        self.answer, self.seed = answer, seed
        self.labeller = VLMLabeller(both_orders=both_orders, temperature=temperature, image_size=image_size,
                                    max_reasks=max_reasks, max_tokens=max_tokens, **backend)
        self.options = {"answer": answer, "seed": seed, **self.labeller.options}

    @property
    def backend(self) -> Any:
        return self.labeller.backend

    def identity(self) -> dict[str, Any]:
        """What changes the answers: the question (its text and schema, hashed), the answer mode, the
        order's seed, both_orders, the image size, the temperature (json answers only: probabilities
        are read without sampling) and the backend's identity."""
        lab = self.labeller
        question = [SYSTEM, INSTRUCTION, SCHEMA] if self.answer == "json" else [PROBS_SYSTEM, PROBS_INSTRUCTION,
                                                                                list(PROBS_TOKENS)]
        return {"name": self.name, "version": self.version, "answer": self.answer, "seed": self.seed,
                "both_orders": lab.both_orders, "image_size": lab.image_size,
                "temperature": lab.temperature if self.answer == "json" else None,
                "prompt": spec_hash(question), "backend": self.backend.identity()}

    def describe(self) -> str:
        where = f" at {self.options['url']}" if self.options.get("url") else ""
        return f"{self.name} ({self.options.get('model', '?')}{where}; {self.answer} answers)"

    def order_key(self, image_o: str, image_a: str, p_a: str) -> str:
        """What the presentation order is drawn from: the seed and the pair's content, as the labels stage."""
        return spec_hash({"seed": self.seed, "image_o": image_o, "image_a": image_a, "p_a": p_a})

    def load(self) -> None:
        self.labeller.load()

    def unload(self) -> None:
        self.labeller.unload()

    def score(self, items: Sequence[tuple[Image.Image, str | None]]) -> list[Any]:
        """Refused: a pairwise model compares two images and has no r(I, p) (use :meth:`compare`)."""
        raise ConfigError(f"{self.name} is a pairwise reward model: it compares I_o and I_a under p_a and gives no "
                          "score r(I, p); use it in the score stage (`score --scorers vlm-pair`) or call compare()")

    def compare(self, items: Sequence[PairItem]) -> list[PairAnswer]:
        """A verdict per pair (``PairItem``: I_o, I_a, p_a, order key); one pair's failure is its own
        answer's ``error``."""
        if self.answer == "json":
            return [self._from_label(res) for res in self.labeller.label(items)]
        return self._probs(items)

    @staticmethod
    def _from_label(res: LabelResult) -> PairAnswer:
        if res.error or res.value is None:
            return PairAnswer(None, error=res.error or "no answer")
        return PairAnswer(res.value, None, res.answers, res.disagree)

    def _probs(self, items: Sequence[PairItem]) -> list[PairAnswer]:
        lab = self.labeller
        prompts, asks = pair_prompts(items, both_orders=lab.both_orders, image=lab._image,
                                     instruction=PROBS_INSTRUCTION, system=PROBS_SYSTEM)
        results = self.backend.answer_probs(prompts, PROBS_TOKENS) if prompts else []
        per_item: list[list[dict[str, Any]] | str] = [[] for _ in items]
        discrete = [False] * len(items)
        for (i, first), res in zip(asks, results):
            if isinstance(per_item[i], str):
                continue  # the other order already failed
            if not res.ok:
                per_item[i] = res.error or "no answer"
                continue
            p_first, p_second = res.probs
            discrete[i] |= res.discrete
            per_item[i].append({"first": first, "probs": [p_first, p_second],
                                "prob_a": p_first if first == "a" else p_second, "tokens": list(res.tokens),
                                "discrete": res.discrete, **({"samples": res.samples} if res.discrete else {})})
        out = []
        for i, answers in enumerate(per_item):
            if isinstance(answers, str):
                out.append(PairAnswer(None, error=answers))
                continue
            prob_a = sum(a["prob_a"] for a in answers) / len(answers)
            prefers = 1 if prob_a > 0.5 else 0 if prob_a < 0.5 else -1
            out.append(PairAnswer(prefers, prob_a, answers, None, discrete[i]))
        return out
