"""A scripted OpenAI-compatible VLM server for tests, on the shared :class:`fake_llm.StubServer`.

Each request is matched to a script by the "item-NN" token in its text parts (or "*" without one), so
faults can be injected per item while many items are in flight. A script step is an action (see
``fake_llm.reply``) or a function of the request body that returns one.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

from fake_llm import StubServer, chat_envelope, reply

Action = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]


def text_of(body: dict[str, Any]) -> str:
    """The text parts of the last message, joined."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(p["text"] for p in content if p.get("type") == "text")


def message(content: str | None) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": content}}


def chat(*contents: str | None) -> dict[str, Any]:
    """A chat reply with one choice per content."""
    return reply(chat_envelope([message(c) for c in contents]))


def logprobs(top: list[tuple[str, float]], content: str | None = None) -> dict[str, Any]:
    """A chat reply whose first position's top log-probabilities are ``top`` (chat form)."""
    first = {"token": top[0][0], "logprob": top[0][1], "bytes": None,
             "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]}
    choice = {**message(content if content is not None else top[0][0]), "logprobs": {"content": [first]}}
    return reply(chat_envelope([choice]))


def legacy_logprobs(top: dict[str, float]) -> dict[str, Any]:
    """A chat reply with completions-style logprobs: ``top_logprobs`` a list of token -> logprob maps."""
    first = next(iter(top))
    choice = {**message(first), "logprobs": {"tokens": [first], "token_logprobs": [top[first]],
                                             "top_logprobs": [top], "text_offset": [0]}}
    return reply(chat_envelope([choice]))


def no_logprobs(content: str = "1", field: str = "null") -> dict[str, Any]:
    """A reply without log-probabilities: ``field`` "null" (logprobs: null) or "missing" (no key)."""
    choice = message(content)
    if field == "null":
        choice["logprobs"] = None
    return reply(chat_envelope([choice]))


def status(code: int, text: str = "boom", headers: dict[str, str] | None = None) -> dict[str, Any]:
    return reply({"error": {"message": text, "type": "invalid_request_error", "code": code}}, code, headers)


def raw(code: int, body: bytes) -> dict[str, Any]:
    return reply(body, code)


class Sampler:
    """Hands out ``answers`` in order as sampled choices: ``n`` per request (at most what is left), or one
    per request when ``honour_n`` is False, like a server that ignores ``n``."""

    def __init__(self, answers: Iterable[str], honour_n: bool = True):
        self.answers = list(answers)
        self.honour_n = honour_n

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        take = body.get("n", 1) if self.honour_n else 1
        given, self.answers = self.answers[:take], self.answers[take:]
        return chat(*given)


# Answer "1" with log-probabilities for the three levels.
DEFAULT = logprobs([("1", -0.1), ("0", -2.5), ("2", -3.0)])


class FakeVLM(StubServer):
    """Per-key scripts; after a script runs out, a key gets its default (by default :data:`DEFAULT`)."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, list[Action]] = {}
        self.defaults: dict[str, Action] = {}

    def script(self, key: str, *steps: Action, default: Action | None = None) -> None:
        self.scripts[key] = list(steps)
        if default is not None:
            self.defaults[key] = default

    def requests(self, key: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.received if key is None or _key(r["body"]) == key]

    def respond(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        key = _key(body)
        with self.lock:
            script = self.scripts.get(key, [])
            step = script.pop(0) if script else self.defaults.get(key, DEFAULT)
            return step(body) if callable(step) else step


def _key(body: dict[str, Any]) -> str:
    found = re.search(r"\bitem-\d+\b", text_of(body))
    return found.group(0) if found else "*"
