"""Tiny OpenAI-compatible servers for tests: a shared local HTTP server, and a deterministic chat server.

:class:`StubServer` owns the socket, the threads and the reply plumbing; a subclass decides what each POST
gets (:meth:`StubServer.respond`). ``fake_vlm.FakeVLM`` is the scripted one for the VLM endpoint backend.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def reply(body: Any, code: int = 200, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An action: send ``body`` (JSON-encoded unless already bytes) with ``code`` and ``headers``."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return {"status": code, "body": raw, "headers": headers or {}}


def chat_envelope(choices: list[dict[str, Any]], model: str = "served-model") -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": model,
            "choices": [{"index": i, "finish_reason": "stop", **c} for i, c in enumerate(choices)]}


class StubServer:
    """A local HTTP server on a free port. Each POST's JSON body goes to :meth:`respond`, whose action
    (``status``, ``body`` bytes, optional ``headers`` and ``delay`` seconds) is sent back; every request is
    kept in ``received`` with its path and headers.

    Delayed replies are dropped when the server stops, so a test never waits for them.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # hung-up clients are expected
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def respond(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        """The action for one request (called after it is recorded in ``received``)."""
        raise NotImplementedError

    def replied(self) -> None:
        """Called after a reply went out."""


def send_action(handler: BaseHTTPRequestHandler, action: dict[str, Any], stopping: threading.Event) -> bool:
    """Send an action (status, body, optional headers, delay) as the reply; False when it was dropped
    (the server is stopping during the delay) or the client hung up (it timed out, as tests intend)."""
    if action.get("delay") and stopping.wait(action["delay"]):
        return False
    try:
        handler.send_response(action["status"])
        for name, value in action.get("headers", {}).items():
            handler.send_header(name, value)
        if "Content-Type" not in action.get("headers", {}):
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(action["body"])))
        handler.end_headers()
        handler.wfile.write(action["body"])
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def _handler(stub: StubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            headers = dict(self.headers)
            with stub.lock:
                stub.received.append({"path": self.path, "body": body, "headers": headers})
            if send_action(self, stub.respond(self.path, body, headers), stub.stopping):
                stub.replied()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class FakeChat(StubServer):
    """Deterministic rewriter replies after ``delay_s``, except the first ``fast`` requests, which are
    answered at once. With ``die_after``, the server stops listening once it has answered that many
    requests: later connections are refused.
    """

    def __init__(self, delay_s: float = 0.0, fast: int = 0, die_after: int | None = None):
        super().__init__()
        self.delay_s = delay_s
        self.fast = fast
        self.die_after = die_after
        self.requests = 0
        self.answered = 0

    def respond(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            self.requests += 1
            slow = self.requests > self.fast
        user = body["messages"][-1]["content"]
        tag = hashlib.sha256(user.encode()).hexdigest()[:10]
        content = json.dumps({"prompt": f"A murky, blurred rendering, variant {tag}."})
        action = reply(chat_envelope([{"message": {"role": "assistant", "content": content}}], body["model"]))
        return {**action, "delay": self.delay_s if slow else 0}

    def replied(self) -> None:
        with self.lock:
            self.answered += 1
            if self.answered == self.die_after:
                threading.Thread(target=self.__exit__, daemon=True).start()
