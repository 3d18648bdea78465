"""The LLM rewriter against a local, scripted chat-completions server: retries, re-asks, concurrency.

Each request is matched to a script by a key (e.g. "item-07") that appears in its caption, so faults can be
injected per item while many items are in flight. Sleeps are recorded, not slept, and the jitter source
returns 0, so the backoff sequence is exact.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import socketserver
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest

from aesthetic_audit import registry
from aesthetic_audit.clients import EndpointUnreachable, OpenAICompatClient, RequestFailed
from aesthetic_audit.config import LLMConfig, PromptsConfig, load_config
from aesthetic_audit.dimensions import load_catalogue
from aesthetic_audit.errors import ConfigError
from aesthetic_audit.prompts.rewriters import llm
from aesthetic_audit.prompts.rewriters.base import Effect, RewriteRequest
from aesthetic_audit.clients.openai_compat import MAX_BACKOFF_S, MAX_RETRY_AFTER_S
from aesthetic_audit.prompts.rewriters.llm import LLMRewriter
from aesthetic_audit.prompts.stage import run_prompts
from aesthetic_audit.store import RunStore
from fake_llm import FakeChat

KEY_ENV = "AESTHETIC_AUDIT_TEST_LLM_KEY"
SECRET = "sk-test-0123456789abcdef"
PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")

EFFECTS = (
    Effect("clarity", "the whole image is blurry and out of focus", ("heavy blur", "soft focus")),
    Effect("color brightness", "the scene is very dark and underexposed", ()),
)


# --- scripted server -------------------------------------------------------------------------------------

def ok(prompt: str, **extra: Any) -> dict[str, Any]:
    return content(json.dumps({"prompt": prompt}), **extra)


def content(text: str | None, finish_reason: str = "stop", usage: dict[str, int] | None = None) -> dict[str, Any]:
    envelope = {"id": "chatcmpl-1", "object": "chat.completion", "model": "served-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish_reason}]}
    if usage is not None:
        envelope["usage"] = usage
    return {"status": 200, "body": json.dumps(envelope).encode()}


def status(code: int, message: str = "boom", headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {"status": code, "body": json.dumps({"error": {"message": message}}).encode(), "headers": headers or {}}


def raw(code: int, body: bytes) -> dict[str, Any]:
    return {"status": code, "body": body}


def delay(seconds: float, then: dict[str, Any]) -> dict[str, Any]:
    return {**then, "delay": seconds}


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


class FakeLLM:
    """Per-key scripts of replies; after a script runs out, every request gets the key's default.

    A request's key is the "item-NN" token in its user message, or "*" when there is none.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scripts: dict[str, list[dict[str, Any]]] = {}
        self.defaults: dict[str, dict[str, Any]] = {}
        self.received: dict[str, list[dict[str, Any]]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.base_url = ""

    def script(self, key: str, *actions: dict[str, Any], default: dict[str, Any] | None = None) -> None:
        self.scripts[key] = list(actions)
        if default is not None:
            self.defaults[key] = default

    def requests(self, key: str) -> list[dict[str, Any]]:
        return self.received.get(key, [])

    def next_action(self, body: dict[str, Any], headers: dict[str, str], path: str) -> dict[str, Any]:
        user = body["messages"][1]["content"]
        with self.lock:
            found = re.search(r"\bitem-\d+\b", user)
            key = found.group(0) if found else "*"
            self.received.setdefault(key, []).append({"body": body, "headers": headers, "path": path})
            script = self.scripts.get(key, [])
            if script:
                return script.pop(0)
            return self.defaults.get(key, ok(f"blurry dark photo, {key}"))


def _handler(fake: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            with fake.lock:
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                action = fake.next_action(body, dict(self.headers), self.path)
                time.sleep(action.get("delay", 0))
            finally:
                # Before the reply goes out: once the client has it, its next request may arrive at once.
                with fake.lock:
                    fake.in_flight -= 1
            try:
                self.send_response(action["status"])
                for name, value in action.get("headers", {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(action["body"])))
                self.end_headers()
                self.wfile.write(action["body"])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and hung up, as the timeout tests intend

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def server(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)  # httpx would send 127.0.0.1 through a proxy
    monkeypatch.delenv(KEY_ENV, raising=False)
    fake = FakeLLM()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    httpd.handle_error = lambda request, address: None  # hung-up clients are expected
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield fake
    httpd.shutdown()
    httpd.server_close()


def make(fake: FakeLLM, sleeps: list[float] | None = None, rand: float = 0.0, **cfg: Any) -> LLMRewriter:
    cfg.setdefault("backoff_s", 0.01)
    cfg.setdefault("timeout_s", 2.0)
    config = LLMConfig(base_url=fake.base_url, model="test-model", api_key_env=KEY_ENV, **cfg)
    return LLMRewriter(config, sleep=recorder(sleeps), rand=lambda: rand)


def recorder(sleeps: list[float] | None):
    """A sleep that records the wait instead of waiting."""
    async def sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)
    return sleep


def req(key: str, seed: int = 7, max_words: int = 70) -> RewriteRequest:
    return RewriteRequest(caption=f"{key}: a dog running on a beach", effects=EFFECTS, max_words=max_words,
                          seed=seed)


# --- the request ---------------------------------------------------------------------------------------

def test_success_sends_the_study_request_and_returns_the_servers_prompt(server):
    server.script("item-01", ok("heavy blur, very dark, a dog running on a beach",
                                usage={"prompt_tokens": 120, "completion_tokens": 20, "total_tokens": 140}))
    result = make(server).rewrite(req("item-01", seed=1234))

    assert result.prompt == "heavy blur, very dark, a dog running on a beach"
    assert result.error is None
    assert result.meta == {"attempts": 1, "retries": 0, "reasks": 0, "model": "served-model",
                           "finish_reason": "stop", "seed": 1234,
                           "usage": {"prompt_tokens": 120, "completion_tokens": 20, "total_tokens": 140}}
    [sent] = server.requests("item-01")
    assert sent["path"] == "/v1/chat/completions"
    body = sent["body"]
    assert body["model"] == "test-model"
    assert body["temperature"] == 0.1
    assert body["seed"] == 1234
    assert body["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"] == llm.INSTRUCTION
    user = body["messages"][1]["content"]
    assert "item-01: a dog running on a beach" in user
    for effect in EFFECTS:
        assert f"{effect.dimension}: {effect.anti}" in user
    assert "heavy blur; soft focus" in user
    assert "fewer than 70 words" in user


def test_no_authorization_header_when_the_key_variable_is_unset(server):
    make(server).rewrite(req("item-01"))
    assert "Authorization" not in server.requests("item-01")[0]["headers"]


def test_bearer_key_read_from_the_environment_at_request_time(server, monkeypatch):
    rewriter = make(server)  # built before the key exists: read per request, not at construction
    monkeypatch.setenv(KEY_ENV, "x")
    rewriter.rewrite(req("item-01"))
    assert server.requests("item-01")[0]["headers"]["Authorization"] == "Bearer x"


# --- retries ---------------------------------------------------------------------------------------------

def test_5xx_retried_with_doubling_backoff(server):
    server.script("item-01", status(500), status(503), status(500), ok("blurry dark dog"))
    sleeps: list[float] = []
    result = make(server, sleeps).rewrite(req("item-01"))
    assert result.prompt == "blurry dark dog"
    assert len(server.requests("item-01")) == 4
    assert sleeps == pytest.approx([0.01, 0.02, 0.04])
    assert result.meta["attempts"] == 4 and result.meta["retries"] == 3


def test_jitter_adds_up_to_a_quarter(server):
    server.script("item-01", status(502), status(502), ok("blurry dark dog"))
    sleeps: list[float] = []
    make(server, sleeps, rand=0.5, backoff_s=1.0).rewrite(req("item-01"))
    assert sleeps == pytest.approx([1.125, 2.25])


def test_backoff_is_capped(server):
    server.script("item-01", status(500), status(500), ok("blurry dark dog"))
    sleeps: list[float] = []
    make(server, sleeps, backoff_s=50.0).rewrite(req("item-01"))
    assert sleeps == pytest.approx([50.0, MAX_BACKOFF_S])


def test_429_honours_retry_after_capped(server):
    server.script("item-01", status(429, "slow down", {"Retry-After": "3"}),
                  status(429, "slow down", {"Retry-After": "100000"}),
                  status(429, "slow down", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
                  ok("blurry dark dog"))
    sleeps: list[float] = []
    result = make(server, sleeps).rewrite(req("item-01"))
    assert result.prompt == "blurry dark dog"
    assert len(server.requests("item-01")) == 4
    # numeric header as given, then capped; a date form falls back to the backoff for the third retry
    assert sleeps == pytest.approx([3.0, MAX_RETRY_AFTER_S, 0.04])


def test_5xx_exhausting_retries_fails_the_item_with_the_status(server):
    server.script("item-01", default=status(500, "model overloaded"))
    sleeps: list[float] = []
    result = make(server, sleeps, max_retries=2).rewrite(req("item-01"))
    assert result.prompt is None
    assert result.error == "HTTP 500: model overloaded (gave up after 3 attempts)"
    assert len(server.requests("item-01")) == 3
    assert sleeps == pytest.approx([0.01, 0.02])
    assert result.meta["attempts"] == 3


def test_timeout_retried_then_succeeds(server):
    server.script("item-01", delay(0.6, ok("too late")), ok("blurry dark dog"))
    sleeps: list[float] = []
    result = make(server, sleeps, timeout_s=0.3).rewrite(req("item-01"))
    assert result.prompt == "blurry dark dog"
    assert len(server.requests("item-01")) == 2
    assert sleeps == pytest.approx([0.01])


def test_timeout_exhausting_retries_says_timed_out(server):
    server.script("item-01", default=delay(0.6, ok("too late")))
    sleeps: list[float] = []
    result = make(server, sleeps, timeout_s=0.3, max_retries=1).rewrite(req("item-01"))
    assert result.prompt is None
    assert "timed out after 0.3 s" in result.error and "gave up after 2 attempts" in result.error
    assert len(server.requests("item-01")) == 2
    assert sleeps == pytest.approx([0.01])


def test_malformed_response_body_is_retried(server):
    server.script("item-01", raw(200, b'{"choices": [oops'), raw(200, b'{"object": "list"}'), ok("blurry dark dog"))
    sleeps: list[float] = []
    result = make(server, sleeps).rewrite(req("item-01"))
    assert result.prompt == "blurry dark dog"
    assert len(server.requests("item-01")) == 3
    assert sleeps == pytest.approx([0.01, 0.02])
    assert result.meta["reasks"] == 0


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: nothing listens there
    return f"http://127.0.0.1:{port}/v1"


def test_connection_refused_is_retried_then_reported():
    sleeps: list[float] = []
    config = LLMConfig(base_url=closed_url(), api_key_env=KEY_ENV, max_retries=2, backoff_s=0.01)
    result = LLMRewriter(config, sleep=recorder(sleeps), rand=lambda: 0.0).rewrite(req("item-01"))
    assert result.prompt is None
    assert "connection error" in result.error and "Connection refused" in result.error
    assert "gave up after 3 attempts" in result.error
    assert sleeps == pytest.approx([0.01, 0.02])


@pytest.mark.parametrize("code", [400, 401, 403, 404])
def test_client_errors_fail_at_once_with_status_and_message(server, code):
    server.script("item-01", status(code, "Invalid API key provided"), ok("never reached"))
    sleeps: list[float] = []
    result = make(server, sleeps).rewrite(req("item-01"))
    assert result.prompt is None
    assert f"HTTP {code}" in result.error and "Invalid API key provided" in result.error
    assert "not retried" in result.error
    assert len(server.requests("item-01")) == 1
    assert sleeps == []


def test_401_hint_names_the_key_variable(server):
    server.script("item-01", status(401, "Invalid API key provided"))
    result = make(server).rewrite(req("item-01"))
    assert f"${KEY_ENV} (unset, so no key was sent)" in result.error


def test_fastapi_style_error_detail_is_reported(server):
    server.script("item-01", raw(404, b'{"detail": "The model `test-model` does not exist."}'))
    result = make(server).rewrite(req("item-01"))
    assert "HTTP 404" in result.error and "The model `test-model` does not exist." in result.error


# --- re-asks ---------------------------------------------------------------------------------------------

def test_non_json_reply_is_reasked_with_the_bad_reply_and_the_reason(server):
    server.script("item-01", content("Sure! Here is your prompt: a blurry dog"), ok("blurry dark dog"))
    sleeps: list[float] = []
    result = make(server, sleeps).rewrite(req("item-01"))
    assert result.prompt == "blurry dark dog"
    assert result.meta["reasks"] == 1 and result.meta["attempts"] == 2
    assert sleeps == []
    first, second = server.requests("item-01")
    messages = second["body"]["messages"]
    assert messages[:2] == first["body"]["messages"]
    assert messages[2] == {"role": "assistant", "content": "Sure! Here is your prompt: a blurry dog"}
    assert messages[3]["role"] == "user" and "the reply is not JSON" in messages[3]["content"]


def test_fenced_json_is_accepted(server):
    server.script("item-01", content('```json\n{"prompt": "blurry dark dog"}\n```'))
    result = make(server).rewrite(req("item-01"))
    assert result.prompt == "blurry dark dog"
    assert len(server.requests("item-01")) == 1


@pytest.mark.parametrize("reply, reason", [
    ('{"text": "blurry dark dog"}', 'no "prompt" string'),
    ('{"prompt": 3}', 'no "prompt" string'),
    ('{"prompt": "   "}', "the prompt is empty"),
    ("", "the reply is empty"),
    (None, "the reply is empty"),
    ('["blurry dark dog"]', 'no "prompt" string'),
])
def test_malformed_replies_are_reasked(server, reply, reason):
    server.script("item-01", content(reply), ok("blurry dark dog"))
    result = make(server).rewrite(req("item-01"))
    assert result.prompt == "blurry dark dog"
    second = server.requests("item-01")[1]["body"]["messages"]
    assert reason in second[3]["content"]


def test_word_limit_boundary(server):
    server.script("item-01", ok(words(70)), ok(words(69)))
    result = make(server).rewrite(req("item-01"))
    assert result.prompt == words(69)  # "under 70 words": 70 is re-asked, 69 accepted
    assert len(server.requests("item-01")) == 2
    reask = server.requests("item-01")[1]["body"]["messages"][3]["content"]
    assert "the prompt has 70 words, over the 70-word limit" in reask


def test_over_limit_exhausting_reasks_fails_the_item(server):
    server.script("item-01", default=ok(words(75)))
    result = make(server, max_reasks=2).rewrite(req("item-01"))
    assert result.prompt is None
    assert result.error == ("no usable reply after 2 re-asks: the prompt has 75 words, over the 70-word limit "
                            "(it must have fewer than 70)")
    assert len(server.requests("item-01")) == 3
    assert result.meta["reasks"] == 2 and result.meta["attempts"] == 3
    assert result.meta["last_reply"] == json.dumps({"prompt": words(75)})
    # each re-ask carries the whole conversation so far
    assert [len(r["body"]["messages"]) for r in server.requests("item-01")] == [2, 4, 6]


def test_truncated_reply_says_it_was_cut_off(server):
    server.script("item-01", default=content('{"prompt": "blurry', finish_reason="length"))
    result = make(server, max_reasks=0).rewrite(req("item-01"))
    assert result.error == ("no usable reply after 0 re-asks: the reply is not JSON "
                            "(the reply was cut off at the token limit)")
    assert result.meta["finish_reason"] == "length"


def test_usage_sums_over_reasks(server):
    server.script("item-01", content("nope", usage={"prompt_tokens": 100, "completion_tokens": 5}),
                  ok("blurry dark dog", usage={"prompt_tokens": 130, "completion_tokens": 8}))
    result = make(server).rewrite(req("item-01"))
    assert result.meta["usage"] == {"prompt_tokens": 230, "completion_tokens": 13}


# --- many items ------------------------------------------------------------------------------------------

def test_rewrite_iter_yields_every_item_once_despite_faults(server):
    keys = [f"item-{i:02d}" for i in range(20)]
    server.script("item-03", status(429, "slow down", {"Retry-After": "0"}), ok("p03"))
    server.script("item-05", status(500), status(503), ok("p05"))
    server.script("item-07", delay(0.5, ok("too late")), ok("p07"))
    server.script("item-09", raw(200, b"not json at all"), ok("p09"))
    server.script("item-11", content("a blurry dog"), ok("p11"))
    server.script("item-13", ok(words(80)), ok("p13"))
    server.script("item-15", status(401, "bad key"), ok("never"))
    server.script("item-17", default=status(500, "down"))
    server.script("item-19", default=delay(0.5, ok("too late")))
    sleeps: list[float] = []
    rewriter = make(server, sleeps, timeout_s=0.3, max_retries=2)

    results = list(rewriter.rewrite_iter([req(k, seed=i) for i, k in enumerate(keys)]))

    indices = [i for i, _ in results]
    assert sorted(indices) == list(range(20))
    by_index = dict(results)
    expected_requests = {3: 2, 5: 3, 7: 2, 9: 2, 11: 2, 13: 2, 15: 1, 17: 3, 19: 3}
    for i, key in enumerate(keys):
        result = by_index[i]
        assert len(server.requests(key)) == expected_requests.get(i, 1), key
        assert server.requests(key)[0]["body"]["seed"] == i
        if i == 15:
            assert result.prompt is None and "HTTP 401" in result.error and "bad key" in result.error
        elif i == 17:
            assert result.prompt is None and result.error == "HTTP 500: down (gave up after 3 attempts)"
        elif i == 19:
            assert result.prompt is None and "timed out" in result.error
        elif i in expected_requests:
            assert result.prompt == f"p{i:02d}" and result.error is None
        else:
            assert result.prompt == f"blurry dark photo, {key}"
    # retries: 1 (429) + 2 (5xx) + 1 (timeout) + 1 (bad body) + 2 (500 to the end) + 2 (timeout to the end)
    assert len(sleeps) == 9


def test_rewrite_iter_keeps_at_most_concurrency_requests_in_flight(server):
    server.script("*", default=delay(0.1, ok("blurry dark dog")))
    rewriter = make(server, concurrency=4)
    results = list(rewriter.rewrite_iter([RewriteRequest(f"caption {i}", EFFECTS) for i in range(12)]))
    assert sorted(i for i, _ in results) == list(range(12))
    assert all(r.prompt == "blurry dark dog" for _, r in results)
    assert 1 < server.max_in_flight <= 4


def test_rewrite_iter_of_nothing_yields_nothing(server):
    assert list(make(server).rewrite_iter([])) == []
    assert server.received == {}


def test_rewrite_iter_stops_sending_when_the_caller_stops_reading(server):
    server.script("*", default=delay(0.1, ok("blurry dark dog")))
    results = make(server, concurrency=1).rewrite_iter([RewriteRequest(f"caption {i}", EFFECTS) for i in range(6)])
    next(results)
    results.close()
    time.sleep(0.3)
    assert len(server.requests("*")) <= 2  # the first, and at most the one already in flight


# --- identity and construction ---------------------------------------------------------------------------

def test_identity_names_model_and_instruction(monkeypatch):
    rewriter = LLMRewriter(LLMConfig(model="m1", temperature=0.1, api_key_env=KEY_ENV))
    monkeypatch.setenv(KEY_ENV, "sk-secret-value")
    ident = rewriter.identity()
    assert set(ident) == {"name", "version", "model", "temperature", "instruction"}
    assert ident["name"] == "llm" and ident["model"] == "m1" and ident["temperature"] == 0.1
    assert "sk-secret-value" not in json.dumps(ident)
    assert LLMRewriter(LLMConfig(model="m2")).identity()["model"] == "m2"
    monkeypatch.setattr(llm, "INSTRUCTION", llm.INSTRUCTION + " Be brief.")
    assert rewriter.identity()["instruction"] != ident["instruction"]


def test_constructor_contacts_nothing_and_checks_the_url():
    LLMRewriter(LLMConfig(base_url="http://127.0.0.1:9/v1"))  # port 9 discards; building must not connect
    with pytest.raises(ConfigError, match="must start with http"):
        LLMRewriter(LLMConfig(base_url="localhost:8000/v1"))


def test_registered_as_llm():
    assert registry.get("rewriters", "llm") is LLMRewriter
    assert LLMRewriter.name == "llm"



def test_from_config_uses_the_llm_section():
    rewriter = LLMRewriter.from_config(PromptsConfig(rewriter="llm", llm=LLMConfig(model="m9", concurrency=3)))
    assert rewriter.config.model == "m9" and rewriter.config.concurrency == 3


# --- deadlines, redirects, reply size, the key (the shared client) ------------------------------------------

class RawServer:
    """Replies to every request with ``reply(write)``, for replies the scripted server cannot make
    (trickles, endless bodies). Counts connections, and notes when the client hung up mid-reply."""

    def __init__(self, reply: Callable[[Callable[[bytes], None]], None]):
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self.hung_up = threading.Event()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                lines = []
                while (line := self.rfile.readline(65536)) not in (b"\r\n", b"\n", b""):
                    lines.append(line.decode("latin-1"))
                length = next((int(v) for k, _, v in (x.partition(":") for x in lines[1:])
                               if k.strip().lower() == "content-length"), 0)
                outer.requests.append({"request_line": lines[0].strip() if lines else "", "lines": lines,
                                       "body": self.rfile.read(length)})
                try:
                    reply(self.wfile.write)
                except (BrokenPipeError, ConnectionResetError):
                    outer.hung_up.set()

        self.httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def raw_server(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    started: list[RawServer] = []

    def start(reply: Callable[[Callable[[bytes], None]], None]) -> RawServer:
        started.append(RawServer(reply))
        return started[-1]

    yield start
    for srv in started:
        srv.close()


def envelope_bytes(prompt: str) -> bytes:
    return ok(prompt)["body"]


@pytest.mark.parametrize("trickled", ["headers", "body"])
def test_deadline_covers_the_whole_reply_however_slowly_it_trickles(raw_server, trickled):
    body = envelope_bytes("blurry dark dog")
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    reply = head + body
    at = 0 if trickled == "headers" else len(head)
    sent = []

    def trickle(write):
        write(reply[:at])
        for i in range(at, len(reply)):  # one byte every 50 ms: 0.5 s buys about 10 bytes
            time.sleep(0.05)
            write(reply[i:i + 1])
            sent.append(i)

    srv = raw_server(trickle)
    config = LLMConfig(base_url=srv.base_url, api_key_env=KEY_ENV, timeout_s=0.5, max_retries=0)
    result = LLMRewriter(config).rewrite(req("item-01"))

    assert result.prompt is None
    assert result.error.startswith("timed out after 0.5 s")
    assert srv.hung_up.wait(10)
    # A per-read timeout would have read all of it: each byte came within 50 ms.
    assert len(reply) - at > 150 and len(sent) < 100


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_fails_the_item_naming_the_location_and_the_key_never_leaves(server, raw_server, monkeypatch,
                                                                               code):
    other = raw_server(lambda write: write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    location = other.base_url + "/chat/completions"
    server.script("item-01", {"status": code, "body": b"", "headers": {"Location": location}}, ok("never"))
    monkeypatch.setenv(KEY_ENV, SECRET)
    sleeps: list[float] = []
    result = make(server, sleeps).rewrite(req("item-01"))

    assert result.prompt is None
    assert f"redirected (HTTP {code}) to {location}" in result.error
    assert "prompts.llm.base_url" in result.error
    assert other.connections == 0  # nothing at all went to the other origin, so neither did the key
    assert len(server.requests("item-01")) == 1 and sleeps == []  # not retried
    assert server.requests("item-01")[0]["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_reply_cap_is_exact(server):
    size = len(envelope_bytes("blurry dark dog"))
    server.script("item-01", ok("blurry dark dog"))
    assert make(server, max_reply_bytes=size).rewrite(req("item-01")).prompt == "blurry dark dog"
    server.script("item-02", ok("blurry dark dog"), ok("blurry dark dog"))
    result = make(server, max_reply_bytes=size - 1).rewrite(req("item-02"))
    assert result.prompt is None
    assert f"is larger than {size - 1} bytes" in result.error and "prompts.llm.max_reply_bytes" in result.error
    assert len(server.requests("item-02")) == 1  # the same request would get the same reply: not retried


def test_reply_without_length_is_cut_at_the_cap_not_read_to_the_end(raw_server):
    total = 64 * 2**20
    written = []

    def endless(write):
        write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        chunk = b" " * 65536
        for _ in range(total // len(chunk)):
            write(chunk)
            written.append(len(chunk))

    srv = raw_server(endless)
    config = LLMConfig(base_url=srv.base_url, api_key_env=KEY_ENV, max_reply_bytes=1000)
    result = LLMRewriter(config).rewrite(req("item-01"))
    assert result.prompt is None and "is larger than 1000 bytes" in result.error
    assert srv.hung_up.wait(10) and sum(written) < total


def test_post_json_sends_any_path_and_returns_the_decoded_reply(raw_server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    reply = json.dumps({"data": [{"b64_json": "AAAA"}]}).encode()
    srv = raw_server(lambda write: write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                         + f"Content-Length: {len(reply)}\r\n\r\n".encode() + reply))
    client = OpenAICompatClient(srv.base_url + "/", api_key_env=KEY_ENV)

    async def generate(prompt: str) -> Any:
        return await client.post_json("images/generations", {"model": "m", "prompt": prompt})

    assert list(client.map(generate, ["a murky dog"], concurrency=1)) == [(0, {"data": [{"b64_json": "AAAA"}]})]
    [sent] = srv.requests
    assert sent["request_line"] == "POST /v1/images/generations HTTP/1.1"
    assert json.loads(sent["body"]) == {"model": "m", "prompt": "a murky dog"}


def test_key_echoed_by_the_server_is_scrubbed_from_the_error(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script("item-01", status(401, f"Incorrect API key provided: {SECRET}"))
    server.script("item-02", default=status(500, f"upstream rejected {SECRET}"))
    rewriter = make(server, max_retries=1)
    results = dict(rewriter.rewrite_iter([req("item-01"), req("item-02")]))
    assert results[0].error.startswith("HTTP 401") and "Incorrect API key provided: [API key]" in results[0].error
    assert results[1].error == "HTTP 500: upstream rejected [API key] (gave up after 2 attempts)"
    assert all(SECRET not in json.dumps([r.error, r.meta]) for r in results.values())


# --- a dead endpoint, Ctrl-C ---------------------------------------------------------------------------------

def test_unreachable_items_are_held_until_another_gets_through_and_dropped_when_the_endpoint_is_dead(server):
    dead = OpenAICompatClient(closed_url(), api_key_env=KEY_ENV, max_retries=0, max_connection_failures=3)
    live = OpenAICompatClient(server.base_url, api_key_env=KEY_ENV, max_retries=0)
    kinds = ["dead", "dead", "live", "dead", "dead", "dead", "live"]
    calls = []

    async def call(kind: str) -> str:
        calls.append(kind)
        client = dead if kind == "dead" else live
        try:
            await client.chat([{"role": "system", "content": ""}, {"role": "user", "content": "item-01"}],
                              model="m")
            return "ok"
        except RequestFailed as exc:
            return "failed: connection error" if "connection error" in str(exc) else str(exc)

    got = []
    with pytest.raises(EndpointUnreachable, match="3 items in a row could not connect"):
        for pair in live.map(call, kinds, concurrency=1):
            got.append(pair)
    # 0 and 1 are real failures (2 got through after them); 3-5 are dropped, never tried in earnest; 6 never ran
    assert got == [(0, "failed: connection error"), (1, "failed: connection error"), (2, "ok")]
    assert calls == kinds[:6]


def _llm_config(base_url: str, n: int, **llm: Any):
    overrides = {"prompts.rewriter": "llm", "prompts.n": n, "prompts.llm.base_url": base_url,
                 "prompts.llm.api_key_env": KEY_ENV}
    overrides.update({f"prompts.llm.{k}": v for k, v in llm.items()})
    return load_config(None, overrides)


def test_dead_endpoint_stops_the_stage_with_one_error_after_a_few_attempts(tmp_path, caplog, monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    url = closed_url()
    config = _llm_config(url, 50, max_retries=2, backoff_s=0, concurrency=4)
    sleeps: list[float] = []
    store = RunStore(tmp_path)
    with pytest.raises(EndpointUnreachable) as err:
        run_prompts(store, config, load_catalogue(), rewriter=LLMRewriter(config.prompts.llm, sleep=recorder(sleeps)))

    message = str(err.value)
    assert url in message and "Connection refused" in message
    assert "prompts.llm.base_url" in message and "server is running" in message
    assert "3 items in a row could not connect (3 attempts each)" in message
    # At most 3 + (concurrency - 1) items were started, 2 retries each; without the stop: 50 * 2.
    assert len(sleeps) <= 6 * 2
    assert list(store.records("prompts")) == []  # nothing stored as failed: a rerun tries every item
    assert not [r for r in caplog.records if r.getMessage().startswith("failed:")]


def test_items_done_before_the_endpoint_died_stay_stored(tmp_path, monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    store = RunStore(tmp_path)
    with FakeChat(die_after=5) as server:
        config = _llm_config(server.base_url, 30, max_retries=1, backoff_s=0, concurrency=1)
        with pytest.raises(EndpointUnreachable):
            run_prompts(store, config, load_catalogue())
        answered = server.answered
    records = list(store.records("prompts"))
    assert answered >= 5
    assert len(records) == answered and all(r.status == "ok" for r in records)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env[KEY_ENV] = SECRET
    return env


def _stored(run) -> int:
    try:
        db = sqlite3.connect(run / "records.sqlite", timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM records WHERE status = 'ok'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0


def _sigint_as_in_a_terminal() -> None:
    """For a child about to get SIGINT: a test run started as a background job (a CI script, nohup ...
    &) ignores SIGINT, children inherit that, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_stage_at_once_and_keeps_what_was_done(tmp_path):
    # End to end through a real SIGINT; on a hang, -X faulthandler and SIGABRT dump the child's threads.
    run = tmp_path / "run"
    # 5 replies at once, then replies that would take 10 minutes, like the deadline and the backoff waits.
    with FakeChat(delay_s=600, fast=5) as server:
        cmd = [sys.executable, "-X", "faulthandler", "-m", "aesthetic_audit.cli", "-q", "prompts", str(run),
               "--rewriter", "llm", "-n", "40", "--set", f"prompts.llm.base_url={server.base_url}",
               "--set", f"prompts.llm.api_key_env={KEY_ENV}", "--set", "prompts.llm.concurrency=2",
               "--set", "prompts.llm.timeout_s=600"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), text=True,
                                preexec_fn=_sigint_as_in_a_terminal)
        try:
            deadline = time.monotonic() + 60  # a hang guard, not a speed test
            while not (server.requests >= 7 and _stored(run) == 5):
                assert proc.poll() is None and time.monotonic() < deadline, "the stage never got going"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            try:
                _, stderr = proc.communicate(timeout=60)  # before the change it waited for the 600 s requests
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
                _, stacks = proc.communicate(timeout=30)
                pytest.fail(f"no exit 60 s after SIGINT; the child's threads:\n{stacks}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert _stored(run) == 5


SIGINT_ON_LOOP_THREAD = r"""
import signal, sys, threading, time
from aesthetic_audit.clients import OpenAICompatClient

client = OpenAICompatClient(sys.argv[1], timeout_s=600)

async def ask(i):
    return await client.chat([{"role": "user", "content": str(i)}], model="m")

def interrupt_the_loop_thread():
    # Wait for the request thread however long a loaded machine takes to start it, then let the
    # requests get under way.
    while not (loop_thread := next((t for t in threading.enumerate() if t.name == "openai-compat"), None)):
        time.sleep(0.05)
    time.sleep(0.5)
    signal.pthread_kill(loop_thread.ident, signal.SIGINT)  # lands on a thread that is not the main one

threading.Thread(target=interrupt_the_loop_thread, daemon=True).start()
try:
    for _ in client.map(ask, range(4), concurrency=2):
        pass
except KeyboardInterrupt:
    print("interrupted")
"""


def test_ctrl_c_delivered_to_the_request_thread_still_stops_the_caller(tmp_path):
    # The OS may hand SIGINT to any thread; a main thread blocked on a queue without a timeout never
    # noticed (a flake of the Ctrl-C test under load). Deliver it to the event-loop thread on purpose.
    with FakeChat(delay_s=600) as server:
        proc = subprocess.run([sys.executable, "-c", SIGINT_ON_LOOP_THREAD, server.base_url], capture_output=True,
                              text=True, env=_env(), timeout=120,  # a hang guard, not a speed test
                              preexec_fn=_sigint_as_in_a_terminal)
    assert proc.stdout.strip() == "interrupted", proc.stderr
