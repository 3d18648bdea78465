"""LLM rewriter over any OpenAI-compatible chat-completions endpoint (POST {base_url}/chat/completions).

The paper's protocol (design §4): an instruction-tuned LLM at temperature 0.1 rewrites a caption plus the
anti-aesthetic descriptions of 2-4 dimensions into one generation prompt under 70 words, effects first,
nothing added. The HTTP side (deadlines, retries, redirects refused, reply cap, dead-endpoint stop) is the
shared :class:`~aesthetic_audit.clients.OpenAICompatClient`.

Failures stay per item: a request that fails after every retry and re-ask comes back as
``RewriteResult(prompt=None, error=...)``; nothing is dropped. Only a dead endpoint raises
(:class:`~aesthetic_audit.clients.EndpointUnreachable`), stopping the stage with one message.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from typing import Any, Awaitable, Callable, Iterator, Sequence

from ...clients import OpenAICompatClient, RequestFailed
from ...config import LLMConfig
from ...errors import AuditError
from ...hashing import spec_hash
from ...registry import register
from .base import RewriteRequest, RewriteResult, Rewriter, word_count

INSTRUCTION = """\
You write prompts for a text-to-image model. The user gives a caption and a list of visual effects that they \
deliberately want, even though the effects make the picture look worse by conventional standards (for example \
blurry, dark, clashing, empty or unsettling). Each effect comes as a dimension key and a description of what the \
image must look like.

Write ONE image-generation prompt that:
1. describes every listed effect clearly and concretely, in plain visual words, and puts these effect descriptions \
first, before the subject;
2. keeps the caption's subject and content: the same objects, people, animals, actions and setting;
3. adds no aesthetic effect, style, mood, lighting, colour, composition or quality term that is not in the list, \
and never softens or cancels a listed effect (no "beautiful", "high quality", "sharp", "masterpiece");
4. has fewer words than the word limit given.

Answer with a JSON object only, no other text: {"prompt": "<the prompt>"}"""

USER_TEMPLATE = """\
Caption: {caption}

Effects to apply (dimension key: what the image must look like):
{effects}

Word limit: fewer than {max_words} words."""

EFFECT_LINE = "- {dimension}: {anti}"
PHRASINGS_NOTE = " (wording you may use: {phrasings})"
NO_EFFECTS = "- none: describe the caption as it is"

REASK_TEMPLATE = """\
That reply cannot be used: {problem}. Answer again following every rule above: one prompt with fewer than \
{max_words} words, the listed effects first, nothing added, and only the JSON object {{"prompt": "..."}}."""

# Reasoning models served without a reasoning parser put their thoughts in the content.
_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)\s*```", re.DOTALL)


class _NoUsableReply(Exception):
    """The item is lost: the message is its error."""


def instruction_hash() -> str:
    """Short hash of every text sent to the model; part of the identity, so edited wording recomputes."""
    texts = [INSTRUCTION, USER_TEMPLATE, EFFECT_LINE, PHRASINGS_NOTE, NO_EFFECTS, REASK_TEMPLATE]
    return spec_hash(texts)[:16]


@register("rewriters", "llm")
class LLMRewriter(Rewriter):
    name = "llm"
    description = "an LLM over an OpenAI-compatible chat-completions endpoint rewrites caption + effects"
    version = "1"

    def __init__(self, config: LLMConfig | None = None, *,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random):
        """Contacts nothing. ``sleep`` (awaited between retries) and ``rand`` (the jitter source, in [0, 1))
        are injectable for tests."""
        self.config = config or LLMConfig()
        self.client = OpenAICompatClient.from_config(self.config, settings="prompts.llm", sleep=sleep, rand=rand)

    @classmethod
    def from_config(cls, prompts_config: Any) -> "LLMRewriter":
        """Build from the ``prompts`` config section, whose ``llm`` subsection holds the endpoint settings."""
        return cls(prompts_config.llm)

    def identity(self) -> dict[str, Any]:
        # The endpoint URL and the key are left out: the same model gives the same prompts wherever it is served.
        return {"name": self.name, "version": self.version, "model": self.config.model,
                "temperature": self.config.temperature, "instruction": instruction_hash()}

    def build_messages(self, request: RewriteRequest) -> list[dict[str, str]]:
        """The first request's messages: the instruction, then the caption, the effects and the word limit."""
        lines = []
        for effect in request.effects:
            line = EFFECT_LINE.format(dimension=effect.dimension, anti=effect.anti)
            if effect.phrasings:
                line += PHRASINGS_NOTE.format(phrasings="; ".join(effect.phrasings))
            lines.append(line)
        user = USER_TEMPLATE.format(caption=request.caption, effects="\n".join(lines) or NO_EFFECTS,
                                    max_words=request.max_words)
        return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": user}]

    def rewrite(self, request: RewriteRequest) -> RewriteResult:
        [(_, result)] = self.client.map(self._rewrite, [request], concurrency=1)
        return result

    def rewrite_iter(self, requests: Sequence[RewriteRequest]) -> Iterator[tuple[int, RewriteResult]]:
        """Up to ``concurrency`` requests in flight; yields ``(index, result)`` in order of completion.

        Raises :class:`EndpointUnreachable` when items in a row cannot connect (see the client); closing
        the iterator, or Ctrl-C while it runs, cancels every request in flight.
        """
        yield from self.client.map(self._rewrite, requests, concurrency=self.config.concurrency)

    async def _rewrite(self, request: RewriteRequest) -> RewriteResult:
        meta: dict[str, Any] = {"attempts": 0, "retries": 0, "reasks": 0, "model": self.config.model,
                                "finish_reason": None, "seed": request.seed}
        try:
            return await self._converse(request, meta)
        except (RequestFailed, _NoUsableReply) as exc:
            return RewriteResult(prompt=None, error=str(exc), meta=meta)
        except AuditError:
            raise  # a dead endpoint stops the stage
        except Exception as exc:  # a bug here must still leave a record for the item, not end the run
            return RewriteResult(prompt=None, error=f"unexpected {type(exc).__name__}: {exc}", meta=meta)

    async def _converse(self, request: RewriteRequest, meta: dict[str, Any]) -> RewriteResult:
        messages = self.build_messages(request)
        turn = 0
        while True:
            envelope = await self.client.chat(
                messages, meta=meta, model=self.config.model, temperature=self.config.temperature,
                seed=request.seed, response_format={"type": "json_object"})
            choice = envelope["choices"][0]
            meta["finish_reason"] = choice.get("finish_reason")
            if isinstance(envelope.get("model"), str):
                meta["model"] = envelope["model"]
            _add_usage(meta, envelope.get("usage"))
            content = choice["message"].get("content")
            prompt, problem = parse_reply(choice["message"], request.max_words)
            if prompt is not None:
                return RewriteResult(prompt=prompt, meta=meta)
            if choice.get("finish_reason") == "length":
                problem += " (the reply was cut off at the token limit)"
            if turn == self.config.max_reasks:
                meta["last_reply"] = content[:500] if isinstance(content, str) else None
                raise _NoUsableReply(f"no usable reply after {turn} re-asks: {problem}")
            # The re-ask shows the model its own bad reply and says what was wrong with it.
            messages = messages + [
                {"role": "assistant", "content": content if isinstance(content, str) else ""},
                {"role": "user", "content": REASK_TEMPLATE.format(problem=problem, max_words=request.max_words)},
            ]
            turn += 1
            meta["reasks"] = turn


def parse_reply(message: dict[str, Any], max_words: int) -> tuple[str | None, str]:
    """``(prompt, "")`` for a usable reply, else ``(None, what was wrong)`` to tell the model."""
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        refusal = message.get("refusal")
        return None, f"the model refused ({refusal})" if refusal else "the reply is empty"
    text = _THINK.sub("", content).strip()
    fenced = _FENCE.fullmatch(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except ValueError:
        return None, "the reply is not JSON"
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        return None, 'the reply JSON has no "prompt" string'
    prompt = data["prompt"].strip()
    if not prompt:
        return None, "the prompt is empty"
    n = word_count(prompt)
    if n >= max_words:
        return None, f"the prompt has {n} words, over the {max_words}-word limit (it must have fewer than {max_words})"
    return prompt, ""


def _add_usage(meta: dict[str, Any], usage: Any) -> None:
    """Token counts summed over every call for the item, re-asks included (what the item cost)."""
    if not isinstance(usage, dict):
        return
    total = meta.setdefault("usage", {})
    for key, value in usage.items():
        if isinstance(value, int) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
