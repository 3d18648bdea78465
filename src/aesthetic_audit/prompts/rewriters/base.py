"""The rewriter protocol.

A request carries the caption and the effects to apply, each as (dimension key, what the effect
looks like, phrasings). ``rewrite_iter`` yields ``(request index, result)`` as results arrive, so
the stage can store each one at once: a run killed mid-way keeps everything already yielded.
A request that fails after every retry yields a result with ``error`` set; none is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Sequence


@dataclass(frozen=True)
class Effect:
    dimension: str
    anti: str                     # the anti-aesthetic pole in plain words
    phrasings: tuple[str, ...]    # noun phrases naming the effect


@dataclass(frozen=True)
class RewriteRequest:
    caption: str
    effects: tuple[Effect, ...]
    max_words: int = 70
    seed: int = 0


@dataclass(frozen=True)
class RewriteResult:
    prompt: str | None
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def word_count(text: str) -> int:
    return len(text.split())


class Rewriter:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"

    @classmethod
    def from_config(cls, prompts_config: Any) -> "Rewriter":
        """Build from the ``prompts`` config section; rewriters with settings override this."""
        return cls()

    def identity(self) -> dict[str, Any]:
        """Everything that changes the output; part of each prompt record's key."""
        return {"name": self.name, "version": self.version}

    def rewrite_iter(self, requests: Sequence[RewriteRequest]) -> Iterator[tuple[int, RewriteResult]]:
        for i, req in enumerate(requests):
            yield i, self.rewrite(req)

    def rewrite(self, request: RewriteRequest) -> RewriteResult:
        raise NotImplementedError
