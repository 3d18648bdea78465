"""Hosted image APIs: an OpenAI-compatible images endpoint, and a chat endpoint that answers with an image.

``openai-images`` POSTs ``{base_url}/images/generations`` and takes ``data[0].b64_json`` or
``data[0].url`` from the reply. ``chat-image`` POSTs ``{base_url}/chat/completions`` with the prompt as
the user message and finds the image in ``message.images[]``, in ``image_url`` content parts, or as a
``data:image/...;base64,`` URL in the text (services differ; e.g. one that wants
``modalities: ["image", "text"]`` gets it through ``extra_body``).

How requests are sent is the shared :class:`~aesthetic_audit.clients.OpenAICompatClient`: a total deadline
per request, retries with backoff on 429/5xx/timeouts honouring Retry-After, POST redirects refused, a
reply cap, and a dead endpoint stopping the stage (:class:`~aesthetic_audit.clients.EndpointUnreachable`)
after ``max_connection_failures`` items in a row could not connect. An image URL is fetched with the key
sent only to the API's own origin. A generate() batch runs up to ``concurrency`` requests at once.

Per request: the image goes through the safe decoder, then ``blank_reason`` (a flat frame or a known
placeholder is a failure). Every other failure is an error result of one line; the key never appears in
one. What these APIs cannot do is an error, not silently dropped: image-to-image, and a negative prompt
unless ``negative_in_prompt: true`` appends it to the prompt as text ("Avoid: ..."), which is recorded.
The seed goes into the body only with ``send_seed: true`` (many services ignore or reject it), reduced to
31 bits (many reject larger ones); either way ``extra["seed_sent"]`` says so, since without it the same
request can give another image, and ``extra["seed"]`` holds the value sent. ``base_url`` may hold no user,
password or query string: options are recorded, and the key comes from ``api_key_env``.

``params`` of a request become body fields (so a preset can set e.g. ``quality`` per side); for
``openai-images`` ``width`` and ``height`` become ``size``. A field the service does not know comes back
as its HTTP 400, on the item.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ...clients import OpenAICompatClient, RequestFailed
from ...clients.openai_compat import check_plain_url, describe_options_error
from ...errors import AuditError, ConfigError, InputError
from ...registry import register
from ..decode import decode_image
from .base import RUNTIME_OPTIONS, GenerationRequest, GenerationResult, Generator, blank_reason

# Options that change neither which image a request gets nor whether it counts: left out of the identity
# (and so of record keys), so raising a limit after some failures does not pay for every image again.
_NOT_IDENTITY = RUNTIME_OPTIONS | {"api_key_env", "max_connection_failures", "max_reply_bytes"}
_QUOTE = 200  # characters of a bad reply quoted in its error
_DATA_URL_IN_TEXT = re.compile(r"data:image/[\w.+-]+;base64,[A-Za-z0-9+/]+=*")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    model: str = Field(min_length=1)
    api_key_env: str = "OPENAI_API_KEY"
    extra_body: dict[str, Any] = Field(default_factory=dict)
    send_seed: bool = False
    negative_in_prompt: bool = False
    known_placeholders: list[str] = Field(default_factory=list)
    concurrency: int = Field(4, ge=1)
    batch_size: int | None = Field(None, ge=1)
    timeout_s: float = Field(180.0, gt=0)
    max_retries: int = Field(3, ge=0)
    backoff_s: float = Field(2.0, ge=0)
    max_connection_failures: int = Field(3, ge=1)
    max_reply_bytes: int = Field(64 * 2**20, ge=1)

    _reserved: ClassVar[frozenset[str]] = frozenset()

    @field_validator("base_url")
    @classmethod
    def _plain_url(cls, value: str) -> str:
        return check_plain_url(value)

    @field_validator("known_placeholders")
    @classmethod
    def _hashes(cls, value: list[str]) -> list[str]:
        bad = [h for h in value if not re.fullmatch(r"[0-9a-fA-F]{64}", h)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a SHA-256 hex digest (of the image's raw RGB bytes)")
        return sorted({h.lower() for h in value})

    @field_validator("extra_body")
    @classmethod
    def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(cls._reserved & set(value))
        if taken:
            raise ValueError(f"sets {', '.join(taken)}, which this backend sets itself (use its own option)")
        return value


class _ImagesOptions(_Options):
    base_url: str = "https://api.openai.com/v1"
    model: str = Field("gpt-image-1", min_length=1)
    size: str | None = "1024x1024"
    quality: str | None = None
    style: str | None = None
    response_format: Literal["b64_json", "url"] | None = None

    _reserved = frozenset({"model", "prompt", "n", "size", "quality", "style", "response_format", "seed"})


class _ChatOptions(_Options):
    _reserved = frozenset({"model", "messages", "n", "seed", "stream"})


class _BadReply(Exception):
    """The reply came but holds no usable image; the message says what it held."""


@dataclass
class _Reply:
    """What one request brought back, before decoding (which runs in the caller's thread)."""

    data: bytes | None = None
    source: str = ""
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _HostedGenerator(Generator):
    supports_img2img = False
    supports_negative_prompt = False
    _options: ClassVar[type[_Options]]

    def __init__(self, *, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random, **options: Any):
        """Contacts nothing. ``sleep`` (awaited between retries) and ``rand`` (the jitter source, in [0, 1))
        are injectable for tests."""
        try:
            self.settings = self._options(**options)
        except ValidationError as exc:
            raise ConfigError(f"generator {self.name}: {describe_options_error(exc)}") from None
        s = self.settings
        # A batch larger than the concurrency keeps every slot busy while the slowest requests finish.
        super().__init__(**{**s.model_dump(), "batch_size": s.batch_size or 4 * s.concurrency})
        self.client = OpenAICompatClient(
            s.base_url, api_key_env=s.api_key_env, timeout_s=s.timeout_s, max_retries=s.max_retries,
            backoff_s=s.backoff_s, max_reply_bytes=s.max_reply_bytes,
            max_connection_failures=s.max_connection_failures, settings=self.name, sleep=sleep, rand=rand)
        self._placeholders = frozenset(s.known_placeholders)

    def identity(self) -> dict[str, Any]:
        options = {k: v for k, v in self.options.items() if k not in _NOT_IDENTITY}
        options["base_url"] = self.settings.base_url.rstrip("/")
        return {"name": self.name, "version": self.version, "options": options}

    def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        for index, reply in self.client.map(self._request, requests, concurrency=self.settings.concurrency):
            results[index] = self._finish(reply)
        return results  # type: ignore[return-value]  # map yields every index or raises

    async def _request(self, request: GenerationRequest) -> _Reply:
        meta: dict[str, Any] = {}
        reply = _Reply(extra={"seed_sent": self.settings.send_seed,
                              **({"seed": _seed_value(request.seed)} if self.settings.send_seed else {})})
        try:
            prompt = self._prompt(request, reply.extra)
            reply.data, reply.source = await self._call(request, prompt, meta, reply.extra)
        except (RequestFailed, _BadReply) as exc:
            reply.error = str(exc)
        except AuditError:
            raise  # a dead endpoint stops the stage
        except Exception as exc:  # a bug here must still leave a record for the item, not end the run
            reply.error = f"unexpected {type(exc).__name__}: {exc}"
        reply.extra.update(attempts=meta.get("attempts", 0), retries=meta.get("retries", 0))
        return reply

    def _prompt(self, request: GenerationRequest, extra: dict[str, Any]) -> str:
        """The prompt text to send, or _BadReply for a request this backend cannot serve."""
        if request.init_image_sha is not None:
            raise _BadReply(f"{self.name} cannot do image-to-image; use a diffusers generator for that")
        if not request.negative_prompt:
            return request.prompt
        if not self.settings.negative_in_prompt:
            raise _BadReply(f"{self.name} has no negative prompt; set its option negative_in_prompt: true to "
                            "append the negative prompt to the prompt as text (\"Avoid: ...\")")
        extra["prompt_sent"] = f"{request.prompt}\nAvoid: {request.negative_prompt}"
        return extra["prompt_sent"]

    async def _call(self, request: GenerationRequest, prompt: str, meta: dict[str, Any],
                    extra: dict[str, Any]) -> tuple[bytes, str]:
        """POST the request; the image bytes and where in the reply they were found."""
        raise NotImplementedError

    def _seed(self, request: GenerationRequest) -> dict[str, Any]:
        return {"seed": _seed_value(request.seed)} if self.settings.send_seed else {}

    async def _image_at(self, url: str, where: str, meta: dict[str, Any]) -> tuple[bytes, str]:
        """The bytes behind an image URL found in the reply: a base64 data URL, or an http(s) URL."""
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            if not header.endswith(";base64"):
                raise _BadReply(f"{where} is a data URL that is not base64 ({header[:60]!r})")
            return _b64(payload, where), where
        if url.startswith(("http://", "https://")):
            return await self.client.get_bytes(url, meta=meta), where
        raise _BadReply(f"{where} is neither a data URL nor an http(s) URL: {url[:60]!r}")

    def _finish(self, reply: _Reply) -> GenerationResult:
        # Never the key, whatever a server echoed into a message or a revised prompt.
        extra = {k: self.client.scrub(v) if isinstance(v, str) else v for k, v in reply.extra.items()}
        error = reply.error
        image = None
        if error is None:
            try:
                image = decode_image(reply.data or b"", name=f"from {reply.source}")
            except InputError as exc:
                error = str(exc)
        if image is not None:
            error = blank_reason(image, self._placeholders)
        if error is not None:
            return GenerationResult(None, error=self.client.scrub(" ".join(error.split())), extra=extra)
        return GenerationResult(image, extra=extra)


@register("generators")
class OpenAIImages(_HostedGenerator):
    name = "openai-images"
    description = ("an OpenAI-compatible images endpoint (POST {base_url}/images/generations; "
                   "b64_json or URL replies)")
    version = "1"
    _options = _ImagesOptions

    async def _call(self, request: GenerationRequest, prompt: str, meta: dict[str, Any],
                    extra: dict[str, Any]) -> tuple[bytes, str]:
        s = self.settings
        params = dict(request.params)
        if "width" in params or "height" in params:
            if not ("width" in params and "height" in params):
                raise _BadReply("params set only one of width and height; this API takes both, as size WxH")
            params["size"] = f"{params.pop('width')}x{params.pop('height')}"
        taken = sorted({"model", "prompt", "n", "seed", "response_format"} & set(params))
        if taken:
            raise _BadReply(f"params may not set {', '.join(taken)} (generator options set them)")
        fields = {"size": s.size, "quality": s.quality, "style": s.style, "response_format": s.response_format}
        body = {**s.extra_body, **{k: v for k, v in fields.items() if v is not None}, **params,
                "model": s.model, "prompt": prompt, "n": 1, **self._seed(request)}
        reply = await self.client.post_json("/images/generations", body, meta=meta)
        data = reply.get("data") if isinstance(reply, dict) else None
        first = data[0] if isinstance(data, list) and data else None
        if not isinstance(first, dict):
            raise _BadReply(f"the reply has no data[0]: {_quote(reply)}")
        if isinstance(first.get("revised_prompt"), str):
            extra["revised_prompt"] = first["revised_prompt"]
        if isinstance(first.get("b64_json"), str):
            return _b64(first["b64_json"], "data[0].b64_json"), "data[0].b64_json"
        if isinstance(first.get("url"), str):
            return await self._image_at(first["url"], "data[0].url", meta)
        raise _BadReply(f"data[0] has neither b64_json nor url (keys: {', '.join(sorted(first)) or 'none'})")


@register("generators")
class ChatImage(_HostedGenerator):
    name = "chat-image"
    description = ("a chat-completions endpoint that answers with an image (message.images, image_url "
                   "parts, or a data URL in the text)")
    version = "1"
    _options = _ChatOptions

    async def _call(self, request: GenerationRequest, prompt: str, meta: dict[str, Any],
                    extra: dict[str, Any]) -> tuple[bytes, str]:
        s = self.settings
        taken = sorted(_ChatOptions._reserved & set(request.params))
        if taken:
            raise _BadReply(f"params may not set {', '.join(taken)} (generator options set them)")
        envelope = await self.client.chat([{"role": "user", "content": prompt}], meta=meta,
                                          **{**s.extra_body, **request.params, "model": s.model,
                                             **self._seed(request)})
        message = envelope["choices"][0]["message"]
        found = _find_image(message)
        text = _text_of(message.get("content"))
        if text.strip():
            extra["reply_text"] = _DATA_URL_IN_TEXT.sub("[image]", text)[:500]
        if found is None:
            refusal = message.get("refusal")
            what = f"the model refused: {refusal}" if refusal else f"content starts {_quote(message.get('content'))}"
            finish = envelope["choices"][0].get("finish_reason")
            raise _BadReply(f"no image in the reply (finish_reason {finish}); {what}")
        url, where = found
        return await self._image_at(url, where, meta)


def _find_image(message: dict[str, Any]) -> tuple[str, str] | None:
    """The first image URL in a chat reply message and where it was, or None."""
    images = message.get("images")
    for i, entry in enumerate(images if isinstance(images, list) else []):
        url = _image_url(entry)
        if url:
            return url, f"message.images[{i}]"
    content = message.get("content")
    parts = content if isinstance(content, list) else [content]
    for i, part in enumerate(parts):
        if isinstance(part, dict) and part.get("type") == "image_url":
            url = _image_url(part)
            if url:
                return url, f"message.content[{i}].image_url"
    for part in parts:
        text = part if isinstance(part, str) else part.get("text") if isinstance(part, dict) else None
        found = _DATA_URL_IN_TEXT.search(text) if isinstance(text, str) else None
        if found:
            return found.group(0), "a data URL in message.content"
    return None


def _image_url(entry: Any) -> str | None:
    """``{"image_url": {"url": ...}}`` or ``{"image_url": "..."}``."""
    inner = entry.get("image_url") if isinstance(entry, dict) else None
    url = inner.get("url") if isinstance(inner, dict) else inner
    return url if isinstance(url, str) and url else None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _quote(content: Any) -> str:
    text = content if isinstance(content, str) else json.dumps(content)
    return repr(text[:_QUOTE]) + ("..." if len(text) > _QUOTE else "")


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)  # servers may wrap long lines
    except (binascii.Error, ValueError):
        raise _BadReply(f"{where} is not valid base64 (starts {text[:40]!r})") from None


def _seed_value(seed: int) -> int:
    """The seed as sent: 31 bits, since many services reject a seed that does not fit a signed 32-bit int
    (the stage derives 60-bit seeds)."""
    return seed % 2**31

