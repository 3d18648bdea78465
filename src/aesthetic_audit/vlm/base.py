"""What the judge and the labeller ask of a vision-language model, whatever runs it.

A :class:`Prompt` is one user turn (text and images in order) with an optional system turn. A backend
answers two kinds of question:

- ``answer_probs(prompts, answers)``: for each prompt, the probability of each allowed answer (for
  example ``("0", "1", "2")``) as the first token of the assistant's reply, renormalised over the
  allowed answers. A local model reads the logits at the answer position; an endpoint reads the
  returned top log-probabilities, or falls back to counting ``n`` sampled answers (``discrete``).
- ``generate(prompts, ...)``: the reply text (the labeller's JSON answer).

Backends never raise for one bad item: its result carries ``error`` and the caller records a failed
item. A dead endpoint raises :class:`~aesthetic_audit.clients.openai_compat.EndpointUnreachable`,
which stops the stage.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from PIL import Image


@dataclass(frozen=True, eq=False)
class Prompt:
    """One request: a user turn of text pieces and images in order, and an optional system turn.

    Prompts that hold the *same* ``Image`` object are known to show the same image: a local backend
    encodes it once and, where the prompts share their opening tokens, runs that shared prefix once.
    """
    parts: tuple[str | Image.Image, ...]
    system: str | None = None

    @property
    def images(self) -> list[Image.Image]:
        return [p for p in self.parts if isinstance(p, Image.Image)]


@dataclass(frozen=True)
class AnswerProbs:
    """The probabilities of the allowed answers (same order as asked), summing to 1, or an error."""
    probs: tuple[float, ...] | None
    answers: tuple[str, ...]
    tokens: tuple[str, ...] = ()  # the token strings the probabilities were read from
    logits: tuple[float, ...] | None = None  # raw logits or log-probabilities where the backend has them
    discrete: bool = False  # True when estimated from sampled answers (counts / n), not from logits
    samples: int | None = None  # how many sampled answers a discrete estimate rests on
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.probs is not None


@dataclass(frozen=True)
class Reply:
    text: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


class VLMBackend(Protocol):
    def identity(self) -> dict[str, Any]:
        """Everything that changes answers (model id, weights hashes or served model name, dtype,
        image budget...): it goes into the record keys."""

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def answer_probs(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[AnswerProbs]: ...

    def generate(self, prompts: Sequence[Prompt], *, max_tokens: int = 64, temperature: float = 0.0,
                 json_schema: dict[str, Any] | None = None, seed: int | None = None) -> list[Reply]: ...


def make_backend(options: dict[str, Any]) -> VLMBackend:
    """The backend an options mapping describes: an endpoint when it names a ``url``, else a local model
    folder (``model``). Building one loads nothing."""
    from ..errors import ConfigError

    options = dict(options)
    if "url" in options:
        from .endpoint import EndpointVLM as cls
    elif "model" in options:
        from .local import LocalVLM as cls
    else:
        raise ConfigError("needs either `model` (a local model folder or hub id) or `url` (an OpenAI-compatible "
                          "endpoint, with `model` the served model name)")
    params = inspect.signature(cls).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):  # a backend taking **options checks them itself
        known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"unknown option {', '.join(map(repr, unknown))}; the local backend takes "
                              f"{', '.join(known)}")
    return cls(**options)
