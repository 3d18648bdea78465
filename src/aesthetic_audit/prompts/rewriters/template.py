"""The offline template rewriter: deterministic, no model.

p_a = a frame that states the chosen effects first, then the caption. Each effect contributes one of
its own phrasings and nothing else, so p_a never names an effect that was not chosen. The frame and
the phrasings are drawn with a generator seeded by (seed, caption, effects), so the same inputs give
the same prompt and the set as a whole is not monotonous. When a draw is over the word limit, the
shortest phrasings are used; if even that is over, the item fails with the reason.

Effects that contradict each other (an empty scene and a cluttered background) never reach it
together: the catalogue declares such dimensions as ``conflicts`` and the prompt stage does not
draw them into one prompt.
"""

from __future__ import annotations

import random
from typing import Any

from ...hashing import canonical_json
from ...registry import register
from .base import RewriteRequest, RewriteResult, Rewriter, word_count

# {effects}: the effects as a list ("a, b and c"); {caption}: the caption, article lower-cased.
FRAMES = (
    "A photo with {effects}: {caption}.",
    "Shot with {effects}, the picture shows {caption}.",
    "An image defined by {effects}, showing {caption}.",
    "Deliberately rendered with {effects}: {caption}.",
    "With {effects}, a scene of {caption}.",
    "Made to have {effects}. The subject: {caption}.",
)
_LOWER_FIRST = {"a", "an", "the", "two", "three", "four", "five", "several", "some", "many", "one",
                "this", "that", "these", "those", "there", "people", "men", "women", "children"}


def join_effects(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def embed_caption(caption: str) -> str:
    """Strip the final full stop and lower-case a leading article so the caption reads mid-sentence."""
    text = caption.strip().rstrip(".").strip()
    first = text.split(" ", 1)[0]
    if first.lower() in _LOWER_FIRST and first[:1].isupper() and not first[1:2].isupper():
        text = first.lower() + text[len(first):]
    return text


@register("rewriters")
class TemplateRewriter(Rewriter):
    name = "template"
    description = "offline, deterministic: the chosen effects' phrasings in one of several frames"
    version = "1"

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}

    def rewrite(self, request: RewriteRequest) -> RewriteResult:
        if not request.effects:
            return RewriteResult(None, error="no effects to apply")
        rng = random.Random(canonical_json(
            {"seed": request.seed, "caption": request.caption,
             "effects": [[e.dimension, list(e.phrasings)] for e in request.effects]}))
        caption = embed_caption(request.caption)
        frame_i = rng.randrange(len(FRAMES))
        chosen = [rng.randrange(len(e.phrasings)) for e in request.effects]
        prompt = FRAMES[frame_i].format(
            effects=join_effects([e.phrasings[i] for e, i in zip(request.effects, chosen)]), caption=caption)
        if word_count(prompt) >= request.max_words:
            # Fall back to the shortest phrasing of each effect in the shortest frame.
            chosen = [min(range(len(e.phrasings)), key=lambda i, e=e: word_count(e.phrasings[i]))
                      for e in request.effects]
            frame_i = min(range(len(FRAMES)), key=lambda i: word_count(FRAMES[i]))
            prompt = FRAMES[frame_i].format(
                effects=join_effects([e.phrasings[i] for e, i in zip(request.effects, chosen)]), caption=caption)
        words = word_count(prompt)
        if words >= request.max_words:
            return RewriteResult(None, error=f"caption too long: the shortest prompt has {words} words, "
                                             f"the limit is under {request.max_words}")
        return RewriteResult(prompt, meta={"frame": frame_i, "phrasings": chosen, "words": words})
