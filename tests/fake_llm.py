"""A tiny OpenAI-compatible chat server for tests: deterministic replies, optional delay."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeChat:
    """Replies after ``delay_s``, except the first ``fast`` requests, which are answered at once.

    Waiting replies are released when the server stops, so a test never waits for them. With ``die_after``,
    the server stops listening once it has answered that many requests: later connections are refused.
    """

    def __init__(self, delay_s: float = 0.0, fast: int = 0, die_after: int | None = None):
        self.delay_s = delay_s
        self.fast = fast
        self.die_after = die_after
        self.requests = 0
        self.answered = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests += 1
                    slow = outer.requests > outer.fast
                if slow and outer.stopping.wait(outer.delay_s):
                    return  # the server is stopping: drop the request unanswered
                user = body["messages"][-1]["content"]
                tag = hashlib.sha256(user.encode()).hexdigest()[:10]
                content = json.dumps({"prompt": f"A murky, blurred rendering, variant {tag}."})
                reply = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                    "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                with outer.lock:
                    outer.answered += 1
                    if outer.answered == outer.die_after:
                        threading.Thread(target=outer.__exit__, daemon=True).start()

        return Handler
