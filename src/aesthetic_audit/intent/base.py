"""What an intent parser returns, and how one is built by name.

An ``Intent`` says which catalogue dimensions a prompt asks to see at their anti-aesthetic pole
(``requested``: key -> strength) and which it explicitly asks to avoid (``negated``: "not blurry",
"without noise"). Strength is 1.0 for a plain request; words such as "slightly" lower it and "very" or
"extremely" raise it (the parser says how; at most ``MAX_STRENGTH``). A dimension is never both
requested and negated.

Parsers are built by ``make_parser(name, options)`` from ``PARSERS`` (name -> "module:Class" inside
this package, imported on first use so the offline default never imports torch or httpx). Every
parser has ``name``, ``identity()`` (what changes its answers: it goes into the record keys of the
scorer that uses it) and ``parse(prompts) -> list[Intent]`` (one per prompt, in order; a prompt the
parser cannot read gives an ``Intent`` with ``error`` set, never an exception for that prompt alone).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from ..errors import ConfigError

MAX_STRENGTH = 2.0
PARSERS = {
    "lexicon": "lexicon:LexiconParser",
    "embedding": "embedding:EmbeddingParser",
    "llm": "llm:LLMParser",
}


@dataclass(frozen=True)
class Intent:
    """The anti-aesthetic dimensions one prompt requests (key -> strength in (0, MAX_STRENGTH]) and the
    ones it explicitly negates; ``evidence`` says, per dimension, what in the prompt led there."""

    requested: dict[str, float] = field(default_factory=dict)
    negated: frozenset[str] = frozenset()
    evidence: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def sign(self, dimension: str) -> int:
        """s_d(p) of the intent-aware reward: -1 where the prompt requests the anti-aesthetic pole, else +1."""
        return -1 if dimension in self.requested else 1


class IntentParser(Protocol):
    name: str

    def identity(self) -> dict[str, Any]: ...

    def parse(self, prompts: Sequence[str]) -> list[Intent]: ...


def make_parser(name: str = "lexicon", options: dict[str, Any] | None = None) -> IntentParser:
    """The parser ``name`` built with ``options`` (nothing heavy is loaded until its first ``parse``)."""
    if name not in PARSERS:
        raise ConfigError(f"unknown intent parser {name!r}; parsers: {', '.join(PARSERS)}")
    module, cls = PARSERS[name].split(":")
    parser_cls = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    try:
        return parser_cls(**(options or {}))
    except TypeError as exc:
        raise ConfigError(f"intent parser {name}: bad options {sorted(options or {})}: {exc}") from None
