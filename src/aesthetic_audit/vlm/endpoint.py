"""A VLM behind any OpenAI-compatible chat-completions server (vLLM serving a Qwen-VL, a hosted model).

Each :class:`~aesthetic_audit.vlm.base.Prompt` becomes one chat request: the system string as a system
message, then one user message whose content parts follow ``Prompt.parts`` in order (text as ``text``
parts, images as base64 data URLs in ``image_url`` parts, encoded once per image per call).

``answer_probs`` asks for one token at temperature 0 with ``logprobs`` and ``top_logprobs``, and reads
the first position's top log-probabilities (``choices[0].logprobs.content[0].top_logprobs``, or the
completions-style ``choices[0].logprobs.top_logprobs[0]`` mapping some servers return). Every entry
whose whitespace-stripped token equals an allowed answer counts for it (" 1" and "1" both), their
probability mass is summed and renormalised over the allowed answers. A server that returns no
log-probabilities, none for an allowed answer, or refuses the parameter (HTTP 400/422 naming it), is
asked for ``samples`` answers drawn at temperature 1 instead (``n`` per request; a server that ignores
``n`` is asked again until there are enough); the probabilities are then the answers' frequencies among
the valid ones, marked ``discrete``.

``generate`` returns the reply text; a ``json_schema`` is sent as a strict ``response_format``, and a
server that rejects ``response_format`` gets the request again without it (callers parse the text).

HTTP (deadlines, retries with backoff on 429/5xx, the key from ``api_key_env``, scrubbed messages, a dead
endpoint stopping the stage with :class:`~aesthetic_audit.clients.EndpointUnreachable`) is the shared
:class:`~aesthetic_audit.clients.OpenAICompatClient`. Any other failure is that item's one-line error,
naming the item's index in the call.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import random
import re
from typing import Any, Awaitable, Callable, Iterator, Literal, Sequence, TypeVar

import httpx
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..clients import OpenAICompatClient, RequestFailed
from ..clients.openai_compat import check_plain_url, describe_options_error
from ..errors import AuditError, ConfigError, InputError
from .base import AnswerProbs, Prompt, Reply

R = TypeVar("R")

SAMPLE_TEMPERATURE = 1.0
# A sampled answer is read from the start of the reply; a few tokens leave room for a leading space or
# newline token before a short answer, at little cost.
SAMPLE_MAX_TOKENS = 5
JPEG_QUALITY = 95
_QUOTE = 80  # characters of a reply quoted in an error
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The shared client words a refused request "HTTP <status> from POST <url> (not retried): <server's message>".
_MENTIONS_SCHEMA = re.compile(r"response_format|json_schema|structured output|guided", re.IGNORECASE)
_MENTIONS_LOGPROBS = re.compile(r"logprob", re.IGNORECASE)


class EndpointOptions(BaseModel):
    """The endpoint backend's options, as written in a config (plain values)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="OpenAI-compatible API base URL, e.g. http://localhost:8000/v1")
    model: str = Field(min_length=1, description="the served model name")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (unset: "
                             "no key is sent)")
    samples: int = Field(10, ge=1, description="sampled answers per question when the server returns no "
                         "log-probabilities")
    top_logprobs: int = Field(20, ge=1, description="top log-probabilities asked for at the answer position")
    image_format: Literal["png", "jpeg", "webp"] = Field("png", description="how images are encoded "
                                                         "(webp lossless)")
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    retries: int = Field(5, ge=0, description="retries on 429, 5xx, timeouts and connection errors")
    timeout_s: float = Field(120.0, gt=0, description="per-request deadline: connecting, sending and the "
                             "whole reply")
    backoff_s: float = Field(1.0, ge=0, description="first backoff; doubles each retry, with jitter")
    max_connection_failures: int = Field(3, ge=1, description="stop when this many items in a row cannot "
                                         "connect")
    max_reply_bytes: int = Field(8 * 2**20, ge=1, description="a bigger reply fails the item")

    @field_validator("url")
    @classmethod
    def _plain_url(cls, value: str) -> str:
        return check_plain_url(value)


class _ItemError(Exception):
    """The item is lost; the message says why."""


class EndpointVLM:
    """:class:`~aesthetic_audit.vlm.base.VLMBackend` over an OpenAI-compatible chat-completions server."""

    name = "endpoint"
    version = "1"

    def __init__(self, *, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random, **options: Any):
        """Contacts nothing. ``options`` are :class:`EndpointOptions` fields; ``sleep`` (awaited between
        retries) and ``rand`` (the jitter source, in [0, 1)) are injectable for tests."""
        try:
            self.options = EndpointOptions(**options)
        except ValidationError as exc:
            raise ConfigError(f"VLM endpoint: {describe_options_error(exc)}") from None
        o = self.options
        self.client = OpenAICompatClient(
            o.url, api_key_env=o.api_key_env, timeout_s=o.timeout_s, max_retries=o.retries, backoff_s=o.backoff_s,
            max_reply_bytes=o.max_reply_bytes, max_connection_failures=o.max_connection_failures,
            settings="the VLM options", url_option="the VLM options' url", sleep=sleep, rand=rand)
        # Once the server has refused response_format or logprobs, later items go without them instead of
        # being refused first.
        self._schema_rejected = False
        self._logprobs_rejected = False

    def identity(self) -> dict[str, Any]:
        """Where the model is served (host and path only), its name, and the options that change answers."""
        url = httpx.URL(self.options.url)
        where = url.host + (f":{url.port}" if url.port else "") + url.path.rstrip("/")
        o = self.options
        return {"backend": self.name, "version": self.version, "url": where, "model": o.model,
                "samples": o.samples, "top_logprobs": o.top_logprobs, "image_format": o.image_format}

    def load(self) -> None:
        """Nothing to load: the server holds the model."""

    def unload(self) -> None:
        """Nothing to free."""

    # --- answer probabilities ------------------------------------------------------------------------------

    def answer_probs(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[AnswerProbs]:
        return _collect(len(prompts), self.iter_answer_probs(prompts, answers))

    def iter_answer_probs(self, prompts: Sequence[Prompt], answers: Sequence[str]
                          ) -> Iterator[tuple[int, AnswerProbs]]:
        """``(index, result)`` in order of completion, so a caller can keep what is done when a dead
        endpoint raises :class:`~aesthetic_audit.clients.EndpointUnreachable` part-way."""
        answers = _check_answers(answers)
        images = _ImageURLs(prompts, self.options.image_format)

        async def one(item: tuple[int, Prompt]) -> AnswerProbs:
            index, prompt = item
            meta: dict[str, Any] = {}
            try:
                result = await self._answer_probs(images.messages(prompt), answers, meta)
            except (RequestFailed, _ItemError) as exc:
                result = AnswerProbs(None, answers, error=self._one_line(index, str(exc)))
            except AuditError:
                raise  # a dead endpoint stops the stage
            except Exception as exc:  # a bug here must still leave a record for the item, not end the run
                result = AnswerProbs(None, answers, error=self._one_line(index, f"unexpected {type(exc).__name__}: "
                                                                                 f"{exc}"))
            finally:
                images.done(prompt)
            result.extra.update(attempts=meta.get("attempts", 0), retries=meta.get("retries", 0))
            return result

        yield from self.client.map(one, list(enumerate(prompts)), concurrency=self.options.concurrency)

    async def _answer_probs(self, messages: list[dict[str, Any]], answers: tuple[str, ...],
                            meta: dict[str, Any]) -> AnswerProbs:
        o = self.options
        if self._logprobs_rejected:
            return await self._sampled(messages, answers, "the server refuses log-probabilities", meta)
        try:
            envelope = await self.client.chat(messages, meta=meta, model=o.model, max_tokens=1, temperature=0,
                                              logprobs=True, top_logprobs=o.top_logprobs)
        except RequestFailed as exc:
            if not _rejects(exc, _MENTIONS_LOGPROBS):
                raise
            self._logprobs_rejected = True
            return await self._sampled(messages, answers, "the server refuses log-probabilities", meta)
        top = _top_logprobs(envelope["choices"][0])
        why = "the server returned no log-probabilities"
        if top is not None:
            found = _from_logprobs(top, answers)
            if found is not None:
                return found
            why = f"none of the answers is among the top {len(top)} log-probabilities"
        return await self._sampled(messages, answers, why, meta)

    async def _sampled(self, messages: list[dict[str, Any]], answers: tuple[str, ...], why: str,
                       meta: dict[str, Any]) -> AnswerProbs:
        o = self.options
        texts: list[str | None] = []
        requests = 0
        while len(texts) < o.samples:  # every reply holds at least one choice, so this ends
            envelope = await self.client.chat(messages, meta=meta, model=o.model, max_tokens=SAMPLE_MAX_TOKENS,
                                              temperature=SAMPLE_TEMPERATURE, n=o.samples - len(texts))
            requests += 1
            texts += [_message_text(c.get("message") if isinstance(c, dict) else None)
                      for c in envelope["choices"]][:o.samples - len(texts)]
        # Longest answer first, so that with answers "1" and "10" a reply "10" counts for "10".
        by_length = sorted(answers, key=len, reverse=True)
        counts = dict.fromkeys(answers, 0)
        invalid = []
        for text in texts:
            stripped = (text or "").strip()
            match = next((a for a in by_length if stripped.startswith(a)), None)
            if match is None:
                invalid.append(stripped[:_QUOTE])
            else:
                counts[match] += 1
        valid = sum(counts.values())
        extra = {"fallback": why, "sampled": len(texts), "valid": valid, "sample_requests": requests,
                 "counts": counts, "invalid_examples": invalid[:3]}
        if valid == 0:
            raise _ItemError(f"{why}, and none of {len(texts)} sampled answers starts with one of "
                             f"{', '.join(map(repr, answers))} (e.g. {invalid[0]!r})")
        return AnswerProbs(tuple(counts[a] / valid for a in answers), answers, tokens=(), discrete=True,
                           samples=valid, extra=extra)

    # --- generation ----------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], *, max_tokens: int = 64, temperature: float = 0.0,
                 json_schema: dict[str, Any] | None = None, seed: int | None = None) -> list[Reply]:
        return _collect(len(prompts), self.iter_generate(prompts, max_tokens=max_tokens, temperature=temperature,
                                                         json_schema=json_schema, seed=seed))

    def iter_generate(self, prompts: Sequence[Prompt], *, max_tokens: int = 64, temperature: float = 0.0,
                      json_schema: dict[str, Any] | None = None, seed: int | None = None
                      ) -> Iterator[tuple[int, Reply]]:
        """``(index, reply)`` in order of completion (see :meth:`iter_answer_probs`)."""
        images = _ImageURLs(prompts, self.options.image_format)
        params: dict[str, Any] = {"model": self.options.model, "max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            params["seed"] = seed % 2**31  # many servers reject seeds that do not fit a signed 32-bit int
        schema = _response_format(json_schema) if json_schema is not None else None

        async def one(item: tuple[int, Prompt]) -> Reply:
            index, prompt = item
            try:
                return Reply(await self._generate(images.messages(prompt), params, schema))
            except (RequestFailed, _ItemError) as exc:
                return Reply(None, error=self._one_line(index, str(exc)))
            except AuditError:
                raise  # a dead endpoint stops the stage
            except Exception as exc:  # a bug here must still leave a record for the item, not end the run
                return Reply(None, error=self._one_line(index, f"unexpected {type(exc).__name__}: {exc}"))
            finally:
                images.done(prompt)

        yield from self.client.map(one, list(enumerate(prompts)), concurrency=self.options.concurrency)

    async def _generate(self, messages: list[dict[str, Any]], params: dict[str, Any],
                        schema: dict[str, Any] | None) -> str:
        if schema is not None and not self._schema_rejected:
            try:
                envelope = await self.client.chat(messages, **params, response_format=schema)
            except RequestFailed as exc:
                if not _rejects(exc, _MENTIONS_SCHEMA):
                    raise
                self._schema_rejected = True
                envelope = await self.client.chat(messages, **params)
        else:
            envelope = await self.client.chat(messages, **params)
        choice = envelope["choices"][0]
        text = _message_text(choice["message"])
        if text is None or not text.strip():
            refusal = choice["message"].get("refusal")
            raise _ItemError(f"the reply has no text (finish_reason {choice.get('finish_reason')})"
                             + (f"; the model refused: {refusal}" if refusal else ""))
        return text

    def _one_line(self, index: int, message: str) -> str:
        return self.client.scrub(f"item {index}: " + " ".join(message.split()))


class _ImageURLs:
    """Data URLs of the prompts' images, each image encoded once however many prompts show it, and
    dropped once the last of those prompts has been sent (so a large batch does not hold them all)."""

    def __init__(self, prompts: Sequence[Prompt], image_format: str):
        self.format = image_format
        self.users: dict[int, int] = {}  # id(image) -> prompts still to send; the prompts keep the images alive
        for prompt in prompts:
            for image in prompt.images:
                self.users[id(image)] = self.users.get(id(image), 0) + 1
        self.urls: dict[int, str] = {}

    def messages(self, prompt: Prompt) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        for part in prompt.parts:
            if isinstance(part, str):
                content.append({"type": "text", "text": part})
            else:
                content.append({"type": "image_url", "image_url": {"url": self._url(part)}})
        messages: list[dict[str, Any]] = []
        if prompt.system is not None:
            messages.append({"role": "system", "content": prompt.system})
        messages.append({"role": "user", "content": content})
        return messages

    def done(self, prompt: Prompt) -> None:
        for image in prompt.images:
            self.users[id(image)] -= 1
            if self.users[id(image)] == 0:
                self.urls.pop(id(image), None)

    def _url(self, image: Image.Image) -> str:
        key = id(image)
        if key not in self.urls:
            self.urls[key] = encode_image(image, self.format)
        return self.urls[key]


def encode_image(image: Image.Image, image_format: str) -> str:
    """A ``data:image/...;base64,`` URL of the image. JPEG drops alpha (it has none); WebP is lossless."""
    buf = io.BytesIO()
    if image_format == "png":
        image.save(buf, format="PNG")
    elif image_format == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buf, format="WEBP", lossless=True)
    return f"data:image/{image_format};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _check_answers(answers: Sequence[str]) -> tuple[str, ...]:
    out = tuple(answers)
    if not out or any(not isinstance(a, str) or not a.strip() or a != a.strip() for a in out):
        raise InputError(f"answers must be non-empty strings without surrounding whitespace, not {out!r}")
    if len(set(out)) != len(out):
        raise InputError(f"answers must differ from each other, not {out!r}")
    return out


def _top_logprobs(choice: dict[str, Any]) -> list[tuple[str, float]] | None:
    """The first answer position's ``(token, logprob)`` alternatives, or None when the reply has none.

    Chat form: ``logprobs.content[0].top_logprobs`` is a list of ``{token, logprob}``. Completions form
    (some servers use it in chat replies too): ``logprobs.top_logprobs[0]`` maps token -> logprob.
    """
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict):
        entries = content[0].get("top_logprobs")
        if isinstance(entries, list):
            pairs = [(e.get("token"), e.get("logprob")) for e in entries if isinstance(e, dict)]
            return _valid_pairs(pairs)
    legacy = logprobs.get("top_logprobs")
    if isinstance(legacy, list) and legacy and isinstance(legacy[0], dict):
        return _valid_pairs(list(legacy[0].items()))
    return None


def _valid_pairs(pairs: list[tuple[Any, Any]]) -> list[tuple[str, float]] | None:
    out = [(t, float(lp)) for t, lp in pairs
           if isinstance(t, str) and isinstance(lp, (int, float)) and not isinstance(lp, bool) and math.isfinite(lp)]
    return out or None


def _from_logprobs(top: list[tuple[str, float]], answers: tuple[str, ...]) -> AnswerProbs | None:
    """Answer probabilities from the top alternatives, or None when no allowed answer is among them.

    An answer missing from the list gets probability 0 (its mass is below the smallest listed one);
    ``logits`` (each answer's log-probability mass) is then None, since JSON holds no -inf.
    """
    matched: dict[str, list[tuple[str, float]]] = {a: [] for a in answers}
    for token, logprob in top:
        if token.strip() in matched:
            matched[token.strip()].append((token, logprob))
    if not any(matched.values()):
        return None
    # Log-sum-exp per answer, shifted by the largest log-probability so nothing underflows.
    peak = max(lp for variants in matched.values() for _, lp in variants)
    mass = [sum(math.exp(lp - peak) for _, lp in matched[a]) for a in answers]
    total = sum(mass)
    missing = [a for a in answers if not matched[a]]
    logits = None if missing else tuple(peak + math.log(m) for m in mass)
    tokens = tuple(t for a in answers for t, _ in sorted(matched[a], key=lambda v: -v[1]))
    extra = {"matched": {a: [[t, lp] for t, lp in matched[a]] for a in answers}, "missing": missing,
             "top_logprobs": [[t, lp] for t, lp in top]}
    return AnswerProbs(tuple(m / total for m in mass), answers, tokens=tokens, logits=logits, extra=extra)


def _message_text(message: Any) -> str | None:
    """The reply text: a string content, or the text parts of a list content joined."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(texts) if texts else None
    return None


def _rejects(exc: RequestFailed, mentions: re.Pattern[str]) -> bool:
    """Whether the server refused the request (400/422) for a reason naming a parameter ``mentions`` matches."""
    return exc.status in (400, 422) and mentions.search(str(exc).split("(not retried):", 1)[-1]) is not None


def _response_format(schema: dict[str, Any]) -> dict[str, Any]:
    title = schema.get("title")
    name = title if isinstance(title, str) and _SCHEMA_NAME.fullmatch(title) else "answer"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _collect(n: int, pairs: Iterator[tuple[int, R]]) -> list[R]:
    out: list[R | None] = [None] * n
    for index, result in pairs:
        out[index] = result
    return out  # type: ignore[return-value]  # map yields every index or raises

