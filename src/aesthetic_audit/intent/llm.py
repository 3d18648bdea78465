"""An intent parser over any OpenAI-compatible chat endpoint: the model reads the prompt and names dimensions.

The model gets the catalogue (each key with its anti-aesthetic description) and one prompt, and answers
with JSON ``{"dimensions": [{"key": str, "strength": number}], "negated": [str]}``; the request carries
that shape as a strict JSON schema whose keys are restricted to the catalogue's (a server that refuses
``response_format`` gets the request again without it). A reply that is not that JSON is shown back to
the model with what was wrong, up to ``max_reasks`` times; then the prompt's ``Intent`` carries the error.
Keys outside the catalogue are dropped, and ``evidence`` says so under the key the model used. Strength
is clamped to (0, MAX_STRENGTH]; a dimension both requested and negated counts as requested.

HTTP (deadlines, retries, the key from ``api_key_env``, a dead endpoint stopping the run with one message)
is the shared :class:`~aesthetic_audit.clients.OpenAICompatClient`.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from pydantic import ConfigDict, Field, ValidationError, field_validator

from ..clients import OpenAICompatClient, RequestFailed
from ..clients.openai_compat import check_plain_url, describe_options_error
from ..config import LLMConfig
from ..dimensions import Catalogue, load_catalogue
from ..errors import AuditError, ConfigError
from ..hashing import spec_hash
from .base import MAX_STRENGTH, Intent

INSTRUCTION = """\
You read prompts for a text-to-image model and say which deliberately "anti-aesthetic" visual effects a \
prompt asks for. The possible effects, as key: what an image with that effect looks like:
{catalogue}

Answer with a JSON object only: {{"dimensions": [{{"key": "<key>", "strength": <number>}}], "negated": \
["<key>"]}}.
- "dimensions": the effects the prompt asks to see; strength 1 for a plain request, lower (down to 0.25) \
for "slightly" or "a bit", higher (up to {max_strength}) for "very" or "extremely".
- "negated": the effects the prompt explicitly asks to avoid ("not blurry", "no noise", "without clutter").
- Use only the keys above. A prompt that asks for none of them gets empty lists."""

REASK = """\
That reply cannot be used: {problem}. Answer again with only the JSON object \
{{"dimensions": [{{"key": ..., "strength": ...}}], "negated": [...]}}, using only the listed keys."""

_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)\s*```", re.DOTALL)
_MENTIONS_SCHEMA = re.compile(r"response_format|json_schema|structured output|guided", re.IGNORECASE)


class LLMOptions(LLMConfig):
    """The LLM rewriter's endpoint settings (``prompts.llm``), with this parser's own defaults: a model must
    be named, answers are greedy, replies are small; plus the catalogue it reads keys from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="the served model name")
    temperature: float = Field(0.0, ge=0, le=2)
    max_reasks: int = Field(2, ge=0, description="re-asks when a reply is not the expected JSON")
    max_reply_bytes: int = Field(1 << 20, ge=1, description="a bigger reply fails the prompt")
    dimensions_file: str | None = Field(None, description="YAML file adding or overriding dimensions")

    @field_validator("base_url")
    @classmethod
    def _plain_url(cls, value: str) -> str:
        return check_plain_url(value)


class _Unusable(Exception):
    """The reply is not the expected JSON; the message says what is wrong (told to the model)."""


class LLMParser:
    """Intent parser over an OpenAI-compatible chat endpoint (see the module docstring)."""

    name = "llm"
    version = "1"

    def __init__(self, catalogue: Catalogue | None = None, *,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random, **options: Any):
        """Contacts nothing. ``options`` are :class:`LLMOptions` fields; ``sleep`` and ``rand`` (the retry
        waits and their jitter) are injectable for tests."""
        if isinstance(options.get("dimensions_file"), Path):
            options["dimensions_file"] = str(options["dimensions_file"])
        try:
            self.options = LLMOptions(**options)
        except ValidationError as exc:
            raise ConfigError(f"llm intent parser: {describe_options_error(exc)}") from None
        o = self.options
        self.catalogue = catalogue if catalogue is not None else load_catalogue(o.dimensions_file)
        self.client = OpenAICompatClient.from_config(o, settings="the llm intent parser's options",
                                                     url_option="the llm intent parser's base_url",
                                                     sleep=sleep, rand=rand)
        keys = self.catalogue.keys()
        self.instruction = INSTRUCTION.format(
            catalogue="\n".join(f"- {d.key}: {d.anti}" for d in self.catalogue), max_strength=MAX_STRENGTH)
        self.schema = {"type": "json_schema", "json_schema": {"name": "intent", "strict": True, "schema": {
            "type": "object", "additionalProperties": False, "required": ["dimensions", "negated"],
            "properties": {
                "dimensions": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": ["key", "strength"],
                    "properties": {"key": {"type": "string", "enum": keys}, "strength": {"type": "number"}}}},
                "negated": {"type": "array", "items": {"type": "string", "enum": keys}}}}}}
        self._schema_rejected = False

    def identity(self) -> dict[str, Any]:
        # The URL and key are left out: the same model parses alike wherever it is served.
        return {"name": self.name, "version": self.version, "model": self.options.model,
                "temperature": self.options.temperature, "instruction": spec_hash([self.instruction, REASK])[:16]}

    def parse(self, prompts: Sequence[str]) -> list[Intent]:
        out: list[Intent | None] = [None] * len(prompts)
        for index, intent in self.client.map(self._parse, list(enumerate(prompts)),
                                             concurrency=self.options.concurrency):
            out[index] = intent
        return [i if i is not None else Intent(error="not parsed") for i in out]

    async def _parse(self, item: tuple[int, Any]) -> Intent:
        index, prompt = item
        if not isinstance(prompt, str):
            return Intent(error=f"prompt {index} is a {type(prompt).__name__}, not text")
        try:
            return await self._converse(prompt)
        except (RequestFailed, _Unusable) as exc:
            return Intent(error=f"prompt {index}: {exc}")
        except AuditError:
            raise  # a dead endpoint stops the run
        except Exception as exc:  # a bug here must still give this prompt an answer, not end the run
            return Intent(error=f"prompt {index}: unexpected {type(exc).__name__}: {exc}")

    async def _converse(self, prompt: str) -> Intent:
        messages = [{"role": "system", "content": self.instruction}, {"role": "user", "content": prompt}]
        params = {"model": self.options.model, "temperature": self.options.temperature}
        turn = 0
        while True:
            envelope = await self._chat(messages, params)
            content = envelope["choices"][0]["message"].get("content")
            try:
                return self.read_reply(content)
            except _Unusable as exc:
                if turn == self.options.max_reasks:
                    raise _Unusable(f"no usable reply after {turn} re-asks: {exc}") from None
                messages = messages + [
                    {"role": "assistant", "content": content if isinstance(content, str) else ""},
                    {"role": "user", "content": REASK.format(problem=exc)}]
                turn += 1

    async def _chat(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        if not self._schema_rejected:
            try:
                return await self.client.chat(messages, **params, response_format=self.schema)
            except RequestFailed as exc:
                if exc.status not in (400, 422) or not _MENTIONS_SCHEMA.search(str(exc)):
                    raise
                self._schema_rejected = True
        return await self.client.chat(messages, **params)

    def read_reply(self, content: Any) -> Intent:
        """The intent in a reply's text; raises ``_Unusable`` saying what is wrong with it."""
        if not isinstance(content, str) or not content.strip():
            raise _Unusable("the reply is empty")
        text = _THINK.sub("", content).strip()
        fenced = _FENCE.fullmatch(text)
        try:
            data = json.loads(fenced.group(1) if fenced else text)
        except ValueError:
            raise _Unusable("the reply is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("dimensions"), list) \
                or not isinstance(data.get("negated", []), list):
            raise _Unusable('the reply needs a "dimensions" list and a "negated" list')
        requested: dict[str, float] = {}
        evidence: dict[str, str] = {}
        for entry in data["dimensions"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                raise _Unusable('each entry of "dimensions" must be an object with a "key" string')
            strength = entry.get("strength", 1.0)
            if not isinstance(strength, (int, float)) or isinstance(strength, bool) or strength != strength:
                raise _Unusable(f'the strength of {entry["key"]!r} must be a number')
            key = entry["key"]
            if key not in self.catalogue:
                evidence[key] = "dropped: not a dimension of the catalogue"
            elif strength <= 0:
                evidence[key] = f"dropped: strength {strength:g} is not above 0"
            else:
                requested[key] = max(requested.get(key, 0.0), min(float(strength), MAX_STRENGTH))
                evidence[key] = f"named by the model with strength {strength:g}"
        negated = set()
        for key in data.get("negated", []):
            if not isinstance(key, str):
                raise _Unusable('"negated" must hold key strings')
            if key not in self.catalogue:
                evidence[key] = "dropped: not a dimension of the catalogue"
            elif key not in requested:
                negated.add(key)
                evidence[key] = "negated by the model"
        return Intent(requested=requested, negated=frozenset(negated), evidence=evidence)
