"""LLM rewriter over any OpenAI-compatible chat-completions endpoint (POST {base_url}/chat/completions).

The paper's protocol (design §4): an instruction-tuned LLM at temperature 0.1 rewrites a caption plus the
anti-aesthetic descriptions of 2-4 dimensions into one generation prompt under 70 words, effects first,
nothing added. Only the standard library is used (urllib + threads), so this backend needs no extra.

Failures stay per item: a request that fails after every retry and re-ask comes back as
``RewriteResult(prompt=None, error=...)``; nothing is raised and nothing is dropped.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Iterator, Sequence

from ...config import LLMConfig
from ...errors import ConfigError
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

MAX_BACKOFF_S = 60.0        # exponential growth stops here
MAX_RETRY_AFTER_S = 120.0   # a server asking for longer is not waited on beyond this
JITTER = 0.25               # up to +25% on each wait, so concurrent workers do not retry in lockstep

# 408 and 429 are "try again later"; every 5xx may be transient. Other 4xx mean the request itself is wrong.
_RETRYABLE_4XX = frozenset({408, 429})
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)\s*```", re.DOTALL)
# Reasoning models served without a reasoning parser put their thoughts in the content.
_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Failed(Exception):
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

    def __init__(self, config: LLMConfig | None = None, *, sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random):
        """Contacts nothing. ``sleep`` and ``rand`` (the jitter source, in [0, 1)) are injectable for tests."""
        self.config = config or LLMConfig()
        if not self.config.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"llm.base_url {self.config.base_url!r} must start with http:// or https://, "
                              "e.g. http://localhost:8000/v1")
        self.url = self.config.base_url.rstrip("/") + "/chat/completions"
        self._sleep = sleep
        self._rand = rand

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
        return self._rewrite(request, threading.Event())

    def rewrite_iter(self, requests: Sequence[RewriteRequest]) -> Iterator[tuple[int, RewriteResult]]:
        """Up to ``concurrency`` requests in flight; yields ``(index, result)`` in order of completion."""
        requests = list(requests)
        if not requests:
            return
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(requests)),
                                  thread_name_prefix="llm-rewriter")
        try:
            futures = {pool.submit(self._rewrite, req, stop): i for i, req in enumerate(requests)}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            # A consumer that stops early (Ctrl-C, an error storing a result) must not wait for the whole queue.
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def _rewrite(self, request: RewriteRequest, stop: threading.Event) -> RewriteResult:
        meta: dict[str, Any] = {"attempts": 0, "retries": 0, "reasks": 0, "model": self.config.model,
                                "finish_reason": None, "seed": request.seed}
        try:
            return self._converse(request, stop, meta)
        except _Failed as exc:
            return RewriteResult(prompt=None, error=str(exc), meta=meta)
        except Exception as exc:  # a bug here must still leave a record for the item, not end the run
            return RewriteResult(prompt=None, error=f"unexpected {type(exc).__name__}: {exc}", meta=meta)

    def _converse(self, request: RewriteRequest, stop: threading.Event, meta: dict[str, Any]) -> RewriteResult:
        messages = self.build_messages(request)
        turn = 0
        while True:
            envelope = self._call(messages, request.seed, stop, meta)
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
                raise _Failed(f"no usable reply after {turn} re-asks: {problem}")
            # The re-ask shows the model its own bad reply and says what was wrong with it.
            messages = messages + [
                {"role": "assistant", "content": content if isinstance(content, str) else ""},
                {"role": "user", "content": REASK_TEMPLATE.format(problem=problem, max_words=request.max_words)},
            ]
            turn += 1
            meta["reasks"] = turn

    def _call(self, messages: list[dict[str, str]], seed: int, stop: threading.Event,
              meta: dict[str, Any]) -> dict[str, Any]:
        """One chat completion, retried on transient failures; returns a validated envelope."""
        body = json.dumps({
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "seed": seed,
            "response_format": {"type": "json_object"},
        }).encode("utf-8")
        attempt = 0
        while True:
            if stop.is_set():
                raise _Failed("cancelled: the caller stopped reading results")
            meta["attempts"] += 1
            try:
                return self._post(body)
            except _Retryable as exc:
                if attempt == self.config.max_retries:
                    raise _Failed(f"{exc} (gave up after {attempt + 1} attempts)") from None
                meta["retries"] += 1
                self._sleep(self._delay(attempt, exc.retry_after))
                attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            base = min(retry_after, MAX_RETRY_AFTER_S)
        else:
            base = min(self.config.backoff_s * 2 ** attempt, MAX_BACKOFF_S)
        return base * (1 + JITTER * self._rand())

    def _post(self, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "aesthetic-audit"}
        # Read per request so a key exported mid-run is used; unset means a local server that needs none.
        key = os.environ.get(self.config.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        timeout = self.config.timeout_s
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            status, message = exc.code, _error_message(_read_quietly(exc))
            if status in _RETRYABLE_4XX or status >= 500:
                raise _Retryable(f"HTTP {status}: {message}", _retry_after(exc.headers)) from None
            raise _Failed(f"HTTP {status} from POST {self.url} (not retried): {message}"
                          f"{self._hint(status)}") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Retryable(f"timed out after {timeout:g} s connecting to {self.url}") from None
            raise _Retryable(f"connection error to {self.url}: {exc.reason}") from None
        except TimeoutError:
            raise _Retryable(f"timed out after {timeout:g} s waiting for {self.url}") from None
        except (http.client.HTTPException, OSError) as exc:
            raise _Retryable(f"connection error to {self.url}: {type(exc).__name__}: {exc}") from None
        # A 200 whose body is not a chat completion is a proxy or server glitch: retry, as for a 5xx.
        try:
            envelope = json.loads(raw)
        except ValueError:
            raise _Retryable(f"response body is not JSON: {raw[:200]!r}") from None
        choices = envelope.get("choices") if isinstance(envelope, dict) else None
        if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)
                and isinstance(choices[0].get("message"), dict)):
            detail = _error_message(raw) if isinstance(envelope, dict) and "error" in envelope else raw[:200]
            raise _Retryable(f"response has no choices[0].message: {detail!r}")
        return envelope

    def _hint(self, status: int) -> str:
        if status in (401, 403):
            state = "set" if os.environ.get(self.config.api_key_env) else "unset, so no key was sent"
            return f"; check the API key in ${self.config.api_key_env} ({state})"
        if status == 404:
            return f"; check llm.base_url ({self.config.base_url}) and llm.model ({self.config.model})"
        return ""


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


def _read_quietly(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read()
    except (OSError, http.client.HTTPException):
        return b""


def _error_message(raw: bytes) -> str:
    """The error text from OpenAI-style ({"error": {"message"}}), FastAPI ({"detail"}) or plain bodies."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return str(err)[:300]
    return text[:300]


def _retry_after(headers: Any) -> float | None:
    """A numeric Retry-After (seconds); the HTTP-date form is rare for APIs and falls back to backoff."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
