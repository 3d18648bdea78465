"""A scripted OpenAI-compatible image server for tests: /images/generations, /chat/completions and files.

Each POST is matched to a script by the "item-NN" token in its prompt (or "*" without one), so faults can be
injected per item while many items are in flight. GETs are answered from ``files`` (path -> action). Every
request is recorded with its headers, so a test can check where the API key went.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

from fake_llm import send_action


def pattern(key: str, size: tuple[int, int] = (24, 16)) -> np.ndarray:
    """A distinct, far-from-flat RGB image per key (uint8, H x W x 3)."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")
    return np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def flat_png(colour: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> bytes:
    return png(np.full((size[1], size[0], 3), colour, dtype=np.uint8))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + b64(data)


def reply(body: Any, code: int = 200, headers: dict[str, str] | None = None) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return {"status": code, "body": raw, "headers": headers or {}}


def images_ok(**item: Any) -> dict[str, Any]:
    """An images reply whose data[0] is ``item`` (b64_json=..., url=..., revised_prompt=...)."""
    return reply({"created": 1, "data": [item]})


def chat_ok(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return reply({"id": "c1", "object": "chat.completion", "model": "served-model",
                  "choices": [{"index": 0, "finish_reason": finish_reason,
                               "message": {"role": "assistant", **message}}]})


def status(code: int, message: str = "boom", headers: dict[str, str] | None = None) -> dict[str, Any]:
    return reply({"error": {"message": message}}, code, headers)


def file(data: bytes, content_type: str = "image/png") -> dict[str, Any]:
    return {"status": 200, "body": data, "headers": {"Content-Type": content_type}}


def redirect(location: str, code: int = 302) -> dict[str, Any]:
    return {"status": code, "body": b"", "headers": {"Location": location}}


def delay(seconds: float, then: dict[str, Any]) -> dict[str, Any]:
    return {**then, "delay": seconds}


class FakeImages:
    """Per-key scripts of POST replies; after a script runs out, a key gets its default (by default a
    b64_json reply, or a chat reply with a data URL, of ``pattern(key)``).

    ``gate``, when set to a threading.Barrier, holds every POST until that many are in flight at once.
    Delayed replies are dropped when the server stops, so a test never waits for them.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scripts: dict[str, list[dict[str, Any]]] = {}
        self.defaults: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.received: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: threading.Barrier | None = None
        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # hung-up clients are expected
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def __enter__(self) -> "FakeImages":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def script(self, key: str, *actions: dict[str, Any], default: dict[str, Any] | None = None) -> None:
        self.scripts[key] = list(actions)
        if default is not None:
            self.defaults[key] = default

    def requests(self, key: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.received
                    if (key is None or r["key"] == key) and (method is None or r["method"] == method)]

    def _post_action(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        if path.endswith("/chat/completions"):
            text = body["messages"][-1]["content"]
        else:
            text = body.get("prompt", "")
        found = re.search(r"\bitem-\d+\b", text)
        key = found.group(0) if found else "*"
        with self.lock:
            self.received.append({"method": "POST", "path": path, "key": key, "body": body, "headers": headers})
            script = self.scripts.get(key, [])
            if script:
                return script.pop(0)
            if key in self.defaults:
                return self.defaults[key]
        if path.endswith("/chat/completions"):
            return chat_ok({"content": None, "images": [{"type": "image_url",
                                                         "image_url": {"url": data_url(png(pattern(key)))}}]})
        return images_ok(b64_json=b64(png(pattern(key))))

    def _get_action(self, path: str, headers: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            self.received.append({"method": "GET", "path": path, "key": None, "body": None, "headers": headers})
            return self.files.get(path.split("?", 1)[0], status(404, "no such file"))


def _handler(fake: FakeImages) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            with fake.lock:
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                action = fake._post_action(self.path, body, dict(self.headers))
                if fake.gate is not None:
                    fake.gate.wait(timeout=10)  # a hang guard only: the test fails if it ever runs out
            finally:
                # Before the reply goes out: once the client has it, its next request may arrive at once.
                with fake.lock:
                    fake.in_flight -= 1
            self._send(action)

        def do_GET(self) -> None:
            self._send(fake._get_action(self.path, dict(self.headers)))

        def _send(self, action: dict[str, Any]) -> None:
            send_action(self, action, fake.stopping)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
