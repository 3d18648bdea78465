"""One HTTP client for OpenAI-compatible APIs, shared by every backend that calls one.

The LLM rewriter uses chat completions; judge, labeller and image-API backends use the same client
(``post_json`` takes any path, e.g. ``/images/generations``). What it guarantees:

- a request never outlasts ``timeout_s``: the deadline covers connecting, sending and reading the whole
  reply, so a server trickling bytes cannot hold it (httpx's own timeouts apply per read);
- a redirect of a POST is never followed: it fails the item and names the Location, so the API key never
  reaches another origin (and a POST never silently turns into a GET); ``get_bytes`` (an image an API links
  to) follows redirects but sends the key to the API's own origin only;
- a reply over ``max_reply_bytes`` fails the item; replies are streamed and never held beyond the cap;
- 408/429/5xx, timeouts and connection errors are retried with jittered exponential backoff, honouring
  a numeric Retry-After;
- the key is read from the environment at each request and scrubbed from every error message;
- when ``max_connection_failures`` items in a row cannot connect, with nothing getting through in
  between, :class:`EndpointUnreachable` stops the whole batch instead of retrying every item.

Requests run as asyncio tasks sharing one connection pool (one ``httpx.AsyncClient``) on a private
event-loop thread; :meth:`OpenAICompatClient.map` is the synchronous entry point. Asyncio because
cancelling is then immediate: a deadline, a dead endpoint, or Ctrl-C in the caller's thread stops every
request and backoff wait at once, which blocking sockets in worker threads cannot do.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import math
import os
import queue
import random
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Sequence, TypeVar

import httpx

from ..errors import AuditError, ConfigError, EndpointUnreachable

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_REPLY_BYTES = 8 * 2**20
MAX_BACKOFF_S = 60.0        # exponential growth stops here
MAX_RETRY_AFTER_S = 120.0   # a server asking for longer is not waited on beyond this
JITTER = 0.25               # up to +25% on each wait, so concurrent requests do not retry in lockstep
ERROR_BODY_BYTES = 64 * 1024  # plenty for an error message; the rest of an error body is not read
_POLL_S = 0.2               # how often a waiting caller wakes up to notice Ctrl-C
SHUTDOWN_WAIT_S = 5.0       # a stopped map waits this long for its cancelled requests to close

# 408 and 429 are "try again later"; every 5xx may be transient. Other 4xx mean the request itself is wrong.
_RETRYABLE_4XX = frozenset({408, 429})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MIN_SCRUBBED_KEY = 8  # shorter "keys" are placeholders; replacing them would garble messages


class RequestFailed(Exception):
    """A request lost after its retries, or one not worth retrying; the message says why. ``status`` is
    the HTTP status of a reply that was not retried (a 400 naming a parameter the server refuses)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, connection: bool = False):
        super().__init__(reason)
        self.retry_after = retry_after
        self.connection = connection  # never reached the server (refused, name not resolved)


@dataclass
class _Batch:
    """What the requests of one ``map`` call share; they all run on one event loop, so no locks."""

    http: httpx.AsyncClient
    streak: int = 0  # items in a row that gave up unable to connect
    dead: bool = False  # the streak reached the limit: start nothing more


@dataclass
class _Item:
    unreachable: bool = False  # the item's last request gave up without reaching the server


_batch: contextvars.ContextVar[_Batch] = contextvars.ContextVar("openai_compat_batch")
_item: contextvars.ContextVar[_Item] = contextvars.ContextVar("openai_compat_item")


class OpenAICompatClient:
    def __init__(self, base_url: str, *, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 60.0,
                 max_retries: int = 5, backoff_s: float = 1.0, max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
                 max_connection_failures: int = 3, settings: str = "llm", url_option: str | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random):
        """Contacts nothing. ``settings`` names the config section in messages (e.g. ``prompts.llm``) and
        ``url_option`` how messages name its URL option (default ``<settings>.base_url``); ``sleep`` (awaited between retries) and ``rand`` (the jitter source,
        in [0, 1)) are injectable."""
        try:
            parsed = httpx.URL(base_url)
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"{url_option or settings + '.base_url'} {base_url!r} must start with http:// or https:// and name "
                              "a host, e.g. http://localhost:8000/v1")
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_reply_bytes = max_reply_bytes
        self.max_connection_failures = max_connection_failures
        self.settings = settings
        self.url_option = url_option or f"{settings}.base_url"
        self._sleep = sleep
        self._rand = rand

    @classmethod
    def from_config(cls, config: Any, *, settings: str = "llm", **kwargs: Any) -> "OpenAICompatClient":
        """From an endpoint config section (``LLMConfig`` or one with the same fields)."""
        return cls(config.base_url, api_key_env=config.api_key_env, timeout_s=config.timeout_s,
                   max_retries=config.max_retries, backoff_s=config.backoff_s,
                   max_reply_bytes=config.max_reply_bytes, max_connection_failures=config.max_connection_failures,
                   settings=settings, **kwargs)

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    # --- running many requests ---------------------------------------------------------------------------

    def map(self, fn: Callable[[T], Awaitable[R]], items: Sequence[T], *, concurrency: int
            ) -> Iterator[tuple[int, R]]:
        """Await ``fn(item)`` for every item, up to ``concurrency`` at once on one connection pool, and yield
        ``(index, result)`` in order of completion. ``fn`` makes its requests with :meth:`post_json` or
        :meth:`chat`; an exception from ``fn`` ends the iteration with that exception.

        An item that gave up unable to connect is held back until a later item gets through. When the
        endpoint turns out to be dead, the held items are never yielded (nothing was tried, so a rerun
        does them) and :class:`EndpointUnreachable` is raised. Closing the iterator early, or an exception
        in the caller (Ctrl-C included), cancels every request and backoff wait at once.
        """
        items = list(items)
        if not items:
            return
        out: queue.SimpleQueue = queue.SimpleQueue()
        loop = asyncio.new_event_loop()
        task = loop.create_task(self._run(fn, items, concurrency, out))
        thread = threading.Thread(target=_run_loop, args=(loop, task, out), name="openai-compat", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    # A short timeout, not a blocking get: the OS may deliver SIGINT to another thread, and
                    # then only a main thread that wakes up on its own runs the KeyboardInterrupt handler.
                    kind, value = out.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if kind == "result":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            with contextlib.suppress(RuntimeError):  # the loop already finished and closed
                loop.call_soon_threadsafe(task.cancel)
            thread.join(SHUTDOWN_WAIT_S)

    async def _run(self, fn: Callable[[T], Awaitable[R]], items: list[T], concurrency: int,
                   out: queue.SimpleQueue) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        # timeout=None: each attempt runs under its own total deadline instead (see _attempt).
        async with httpx.AsyncClient(limits=limits, timeout=None, follow_redirects=False) as http:
            batch = _Batch(http)
            _batch.set(batch)
            gate = asyncio.Semaphore(concurrency)

            async def one(index: int, item: T) -> tuple[int, R, bool]:
                async with gate:
                    if batch.dead:  # the batch is being stopped; this item waited for a free slot
                        raise asyncio.CancelledError
                    state = _Item()
                    _item.set(state)  # this task's own context: each item sees only its state
                    return index, await fn(item), state.unreachable

            tasks = [asyncio.ensure_future(one(i, item)) for i, item in enumerate(items)]
            held: list[tuple[int, R]] = []
            try:
                for next_done in asyncio.as_completed(tasks):
                    index, result, unreachable = await next_done
                    held.append((index, result))
                    if not unreachable:
                        for pair in held:
                            out.put(("result", pair))
                        held.clear()
                for pair in held:  # fewer unreachable items than the stop needs: real failures
                    out.put(("result", pair))
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    # --- one request, with retries -----------------------------------------------------------------------

    async def chat(self, messages: list[dict[str, Any]], *, meta: dict[str, Any] | None = None,
                   **params: Any) -> dict[str, Any]:
        """One chat completion (POST ``/chat/completions`` with ``messages`` and ``params``): the envelope,
        with ``choices[0].message`` checked. A 2xx reply without it is retried like a 5xx (a proxy glitch)."""
        return await self._post("/chat/completions", {"messages": messages, **params}, meta, _chat_envelope)

    async def post_json(self, path: str, body: Any, *, meta: dict[str, Any] | None = None) -> Any:
        """POST ``body`` as JSON to ``base_url + path`` and return the decoded JSON reply.

        Runs inside :meth:`map`. Retries 408/429/5xx, timeouts, connection errors and a 2xx reply that is
        not JSON; raises :class:`RequestFailed` when the retries run out or the request itself is wrong
        (another 4xx, a redirect, a reply over the cap), and :class:`EndpointUnreachable` when this is the
        ``max_connection_failures``-th item in a row that could not connect. ``meta["attempts"]`` and
        ``meta["retries"]`` count, when a dict is given.
        """
        return await self._post(path, body, meta, lambda data: data)

    async def get_bytes(self, url: str, *, meta: dict[str, Any] | None = None, max_redirects: int = 5) -> bytes:
        """GET an absolute http(s) ``url`` (e.g. an image an API links to) and return its body, at most
        ``max_reply_bytes``.

        Runs inside :meth:`map` and retries like :meth:`post_json`, except that connection failures do not
        count towards the dead-endpoint stop: the URL may be on another host than the API. Redirects are
        followed up to ``max_redirects`` hops, each to http(s) only. The key is sent only to ``base_url``'s
        own origin (scheme, host, port), so a URL or redirect elsewhere (a CDN, a storage bucket) never sees
        it. Messages show URLs without their query, which in a signed URL is a credential.
        """
        batch, item = self._context()
        shown = _without_query(url)
        return await self._retrying(
            lambda: self._attempt("GET", shown, self._get(batch, item, url, shown, max_redirects), lambda _: ""),
            meta, on_unreachable=None)

    async def _post(self, path: str, body: Any, meta: dict[str, Any] | None,
                    check: Callable[[Any], Any]) -> Any:
        batch, item = self._context()
        url = self.url(path)
        payload = json.dumps(body).encode("utf-8")

        async def attempt() -> Any:
            raw = await self._attempt("POST", url, self._exchange(batch, item, url, payload),
                                      lambda status: self._hint(status, body))
            try:
                data = json.loads(raw)
            except ValueError:
                raise _Retryable(f"response body is not JSON: {raw[:200]!r}") from None
            return check(data)

        return await self._retrying(attempt, meta, on_unreachable=lambda exc: self._count_unreachable(batch, item, exc))

    def _context(self) -> tuple[_Batch, _Item]:
        batch = _batch.get(None)
        if batch is None:
            raise RuntimeError("OpenAICompatClient requests run inside OpenAICompatClient.map")
        return batch, _item.get(None) or _Item()

    async def _retrying(self, attempt: Callable[[], Awaitable[Any]], meta: dict[str, Any] | None,
                        on_unreachable: Callable[[_Retryable], None] | None) -> Any:
        meta = meta if meta is not None else {}
        tries = 0
        while True:
            meta["attempts"] = meta.get("attempts", 0) + 1
            try:
                return await attempt()
            except RequestFailed as exc:
                raise RequestFailed(self.scrub(str(exc)), exc.status) from None
            except _Retryable as exc:
                if tries == self.max_retries:
                    if exc.connection and on_unreachable is not None:
                        on_unreachable(exc)
                    raise RequestFailed(self.scrub(f"{exc} (gave up after {tries + 1} attempts)")) from None
                meta["retries"] = meta.get("retries", 0) + 1
                await self._sleep(self._delay(tries, exc.retry_after))
                tries += 1

    def _count_unreachable(self, batch: _Batch, item: _Item, exc: _Retryable) -> None:
        item.unreachable = True
        batch.streak += 1
        if batch.streak >= self.max_connection_failures:
            batch.dead = True
            raise EndpointUnreachable(self.scrub(
                f"{exc}; {batch.streak} items in a row could not connect ({self.max_retries + 1} attempts each), "
                f"so the stage stopped instead of trying every item. Check {self.url_option} "
                f"({self.base_url}) and that the server is running, then rerun the same command"))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            base = min(retry_after, MAX_RETRY_AFTER_S)
        else:
            base = min(self.backoff_s * 2 ** attempt, MAX_BACKOFF_S)
        return base * (1 + JITTER * self._rand())

    async def _attempt(self, method: str, url: str, exchange: Awaitable[tuple[int, httpx.Headers, bytes]],
                       hint: Callable[[int], str]) -> bytes:
        """One exchange under the total deadline: the body of a 2xx reply, or the error, retryable or not."""
        try:
            status, reply_headers, raw = await asyncio.wait_for(exchange, self.timeout_s)
        except asyncio.TimeoutError:
            raise _Retryable(f"timed out after {self.timeout_s:g} s waiting for {url}") from None
        except httpx.ConnectError as exc:  # refused, or the host name did not resolve
            raise _Retryable(f"connection error to {url}: {_os_reason(exc)}", connection=True) from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error to {url}: {type(exc).__name__}: {exc}") from None
        except httpx.RequestError as exc:  # e.g. a reply whose Content-Encoding does not decode
            raise _Retryable(f"request to {url} failed: {type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return raw
        message = _error_message(raw)
        if status in _RETRYABLE_4XX or status >= 500:
            raise _Retryable(f"HTTP {status}: {message}", _retry_after(reply_headers.get("Retry-After")))
        raise RequestFailed(f"HTTP {status} from {method} {url} (not retried): {message}{hint(status)}", status)

    def _headers(self, accept: str, send_key: bool) -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": "aesthetic-audit"}
        # Read per request so a key exported mid-run is used; unset means a local server that needs none.
        key = os.environ.get(self.api_key_env) if send_key else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _exchange(self, batch: _Batch, item: _Item, url: str,
                        payload: bytes) -> tuple[int, httpx.Headers, bytes]:
        headers = {**self._headers("application/json", send_key=True), "Content-Type": "application/json"}
        async with batch.http.stream("POST", url, content=payload, headers=headers) as resp:
            batch.streak = 0  # the server answered: the endpoint is alive, whatever it said
            item.unreachable = False
            status = resp.status_code
            if 300 <= status < 400:
                location = resp.headers.get("Location", "(no Location header)")
                raise RequestFailed(
                    f"POST {url} was redirected (HTTP {status}) to {location}; redirects are not followed, so "
                    f"the API key never goes to another address: set {self.url_option} to the address "
                    "that serves the API")
            return status, resp.headers, await self._read_reply(resp, url)

    async def _get(self, batch: _Batch, item: _Item, url: str, shown: str,
                   max_redirects: int) -> tuple[int, httpx.Headers, bytes]:
        own = _origin(httpx.URL(self.base_url))
        current = url
        for _ in range(max_redirects + 1):
            try:
                target = httpx.URL(current)
            except httpx.InvalidURL:
                target = None
            if target is None or target.scheme not in ("http", "https") or not target.host:
                raise RequestFailed(f"refusing to fetch {_without_query(current)[:200]!r} (from {shown}): only "
                                    "http and https URLs are fetched")
            headers = self._headers("image/*, */*", send_key=_origin(target) == own)
            async with batch.http.stream("GET", target, headers=headers) as resp:
                batch.streak = 0
                item.unreachable = False
                location = resp.headers.get("Location")
                if resp.status_code in _REDIRECTS and location:
                    try:
                        current = str(target.join(location))
                    except httpx.InvalidURL:
                        raise RequestFailed(f"{shown} redirected to an invalid URL") from None
                    continue
                return resp.status_code, resp.headers, await self._read_reply(resp, shown)
        raise RequestFailed(f"{shown}: more than {max_redirects} redirects")

    async def _read_reply(self, resp: httpx.Response, url: str) -> bytes:
        if 200 <= resp.status_code < 300:
            return await self._read_capped(resp, url)
        return await _read_head(resp, ERROR_BODY_BYTES)

    async def _read_capped(self, resp: httpx.Response, url: str) -> bytes:
        too_big = RequestFailed(f"the reply from {url} is larger than {self.max_reply_bytes} bytes; raise "
                                f"{self.settings}.max_reply_bytes if such replies are expected")
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_reply_bytes:
            raise too_big
        chunks, size = [], 0
        async for chunk in resp.aiter_bytes():  # decoded bytes, so a compressed bomb hits the cap too
            size += len(chunk)
            if size > self.max_reply_bytes:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    def _hint(self, status: int, body: Any) -> str:
        if status in (401, 403):
            state = "set" if os.environ.get(self.api_key_env) else "unset, so no key was sent"
            return f"; check the API key in ${self.api_key_env} ({state})"
        if status == 404:
            model = body.get("model") if isinstance(body, dict) else None
            return f"; check {self.url_option} ({self.base_url})" + (
                f" and {self.settings}.model ({model})" if model else "")
        return ""

    def scrub(self, text: str) -> str:
        """A server may echo the key in an error body; it must not reach logs or records."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "[API key]") if key and len(key) >= _MIN_SCRUBBED_KEY else text


def _run_loop(loop: asyncio.AbstractEventLoop, task: asyncio.Task, out: queue.SimpleQueue) -> None:
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass  # the caller stopped reading and is gone
    except Exception as exc:
        out.put(("error", exc))  # raised in the caller's thread
    else:
        out.put(("done", None))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())  # name lookups run there
        loop.close()


def _os_reason(exc: BaseException) -> str:
    """The operating system's words for a failed connect ("Connection refused"), found under the
    wrappers httpx and its backends add ("All connection attempts failed")."""
    reason = str(exc)
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and isinstance(seen.errno, int):
            reason = os.strerror(seen.errno) if seen.errno > 0 else str(seen.strerror or seen)
        seen = seen.__cause__ or seen.__context__
    return reason


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


def _without_query(url: str) -> str:
    try:
        return str(httpx.URL(url).copy_with(query=None, fragment=None, username=None, password=None))
    except httpx.InvalidURL:
        return url.split("?", 1)[0].split("#", 1)[0]


async def _read_head(resp: httpx.Response, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in resp.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _chat_envelope(data: Any) -> dict[str, Any]:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)
            and isinstance(choices[0].get("message"), dict)):
        detail = _error_message(json.dumps(data).encode()) if isinstance(data, dict) and "error" in data \
            else json.dumps(data)[:200]
        raise _Retryable(f"response has no choices[0].message: {detail}")
    return data


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


def _retry_after(value: str | None) -> float | None:
    """A numeric Retry-After (seconds); the HTTP-date form is rare for APIs and falls back to backoff."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def describe_options_error(exc: Any) -> str:
    """A backend's options that failed validation (a pydantic ValidationError), as one line naming each
    bad option."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown option '{loc}'")
        elif err["type"] == "missing":
            problems.append(f"option '{loc}' is required")
        else:
            problems.append(f"option '{loc}': {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


def check_plain_url(value: str) -> str:
    """A base URL option must not carry a credential: options go into records, manifests and messages.
    A URL httpx cannot parse passes here; the client names what is wrong with it."""
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        return value
    if url.userinfo or url.query or url.fragment:
        raise ValueError("must not hold a user name, password, query string or fragment: options are written "
                         "into the run's records and manifest; put the API key in the environment variable that "
                         "the option api_key_env names (default OPENAI_API_KEY)")
    return value
