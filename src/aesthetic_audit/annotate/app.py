"""The annotation web app (FastAPI): rater pages, images by content hash, the live agreement page and flags.

Routes (``TOKEN`` a rater's secret, ``ADMIN`` the admin's; any other token is a 404):

GET  /r/TOKEN/              the next unanswered pair (or ``#done``), progress, undo
POST /r/TOKEN/answer        form item, choice (first | second | tie), csrf -> 303 to /r/TOKEN/
POST /r/TOKEN/undo          form csrf -> 303 to /r/TOKEN/
GET  /r/TOKEN/img/SHA       an image of one of this rater's pairs, by its SHA-256; anything else 404
GET  /a/ADMIN/              agreement with each labeller, Krippendorff's alpha, progress, pairs and flags
POST /a/ADMIN/flag          form item, flagged (1 | 0), csrf -> 303 to /a/ADMIN/
GET  /a/ADMIN/img/SHA       an image of any pair of the study
GET  /favicon.ico           204 (browsers ask for it)

Every POST must carry the session's form secret (``csrf``) and come from this server: its Origin header, or
its Referer when a browser sent no Origin, must name the host the request was sent to; otherwise 403. No
value from a request becomes a file path: an image is looked up in the study's pairs and served from the
run's image store by the stored hash. Each request opens the run's database anew (a SQLite connection
belongs to the thread that opened it, and requests run on a thread pool); writes hold a lock, so one
server's answers, undos and flags never interleave. Errors are short pages.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' parameter types (Request) at run time,
# and they are imported inside create_app, where only real annotations can name them.
import importlib.util
import ipaddress
import mimetypes
import re
import secrets
import socket
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

from ..errors import InputError, require
from ..store.run import RunStore
from ..ui import log
from . import session
from .agreement import STATS, live_agreement
from .session import Setup, load_setup
from .templates import environment

FEATURE = "the annotation app (`aesthetic-audit annotate`)"
_SHA = re.compile(r"[0-9a-f]{64}")
N_BOOT, CI_LEVEL = 2000, 0.95
_FORM_TYPE = "application/x-www-form-urlencoded"
_MAX_FORM_BYTES = 8192  # an item id, a choice and a secret take a few hundred bytes
_LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the app on this machine."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(run_dir: str | Path, *, allowed_hosts: Sequence[str] | None = None) -> Any:
    """The app serving the annotation study stored in ``run_dir`` (see ``prepare``).

    ``allowed_hosts``: the Host header values to accept (others get a 400), e.g. ["127.0.0.1", "localhost"]
    for a server bound to the loopback interface, which keeps other sites from reaching it by DNS rebinding.
    """
    fastapi = require("fastapi", "app", FEATURE)
    if importlib.util.find_spec("python_multipart") is None:  # FastAPI reads forms with python-multipart,
        require("multipart", "app", FEATURE)                  # whose module was "multipart" before 0.0.13
    jinja2 = require("jinja2", "app", FEATURE)
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, RedirectResponse, Response
    from starlette.exceptions import HTTPException

    run_dir = Path(run_dir)
    if load_setup(run_dir) is None:
        raise InputError(f"run {run_dir} has no annotation study: start one with `aesthetic-audit annotate "
                         f"{run_dir}` (or aesthetic_audit.annotate.prepare)")
    pages = environment(jinja2)
    lock = threading.Lock()
    app = fastapi.FastAPI(title="aesthetic-audit annotation", docs_url=None, redoc_url=None, openapi_url=None)
    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)

    def page(name: str, code: int = 200, **context: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        html = pages.get_template(name).render(nonce=nonce, **context)
        csp = (f"default-src 'none'; img-src 'self'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
        return HTMLResponse(html, status_code=code, headers={"Content-Security-Policy": csp})

    def fail(status: int, message: str) -> HTTPException:
        return HTTPException(status_code=status, detail=message)

    @contextmanager
    def opened() -> Iterator[tuple[Setup, RunStore]]:
        setup = load_setup(run_dir)
        if setup is None:
            raise fail(404, "this annotation study no longer exists")
        store = RunStore(run_dir, create=False)
        try:
            yield setup, store
        finally:
            store.close()

    def rater_of(setup: Setup, token: str) -> str:
        rater = setup.rater_for(token)
        if rater is None:
            raise fail(404, "no such page")
        return rater

    def admin_of(setup: Setup, token: str) -> None:
        if not setup.is_admin(token):
            raise fail(404, "no such page")

    async def posted(request: Request, setup: Setup, token: str) -> dict[str, str]:
        """The fields of a form posted from this server's own page, else 403 (413 for a large body).

        A cross-site post is refused: the browser-sent Origin (or Referer) must be this server, and the form
        must carry this session's secret, which only a page of this server holds. Only a small URL-encoded
        body is read (what a browser sends for these forms); it is parsed in memory, so nothing is spooled
        to a temporary file outside the run directory."""
        claimed = request.headers.get("origin") or request.headers.get("referer")
        host = request.headers.get("host", "")
        netloc = urlsplit(claimed).netloc if claimed and claimed != "null" else ""
        if not netloc or not host or netloc.lower() != host.lower():
            raise fail(403, "this form must be sent from this annotation server's own page")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > _MAX_FORM_BYTES:
            raise fail(413, "the form is too large")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != _FORM_TYPE \
                or not length.isdigit():
            # no form a page of this server sends, so no form secret either
            raise fail(403, "the form is stale or was not made by this server; reload the page")
        form = await request.form(max_files=0, max_fields=16)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not setup.csrf_ok(token, fields.get("csrf", "")):
            raise fail(403, "the form is stale or was not made by this server; reload the page")
        return fields

    def image(store: RunStore, allowed: set[str], sha: str) -> Response:
        if not _SHA.fullmatch(sha) or sha not in allowed:
            raise fail(404, "no such image")
        stored = next(s for s in allowed if s == sha)  # the path is built from the study's value, not the request's
        try:
            path = store.image_path(stored)
        except InputError:
            raise fail(404, "no such image") from None
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:  # read here, not streamed: an unreadable file is then a 404, never a 200 cut short
            content = path.read_bytes()
        except OSError:
            raise fail(404, "no such image") from None
        return Response(content, media_type=media, headers={"Cache-Control": "private, max-age=86400"})

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        try:
            response = await call_next(request)
        except Exception as exc:  # answered here: Starlette's own handler would print a traceback on the console
            response = server_error_page(request, exc)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> HTMLResponse:
        message = exc.detail if exc.status_code in (400, 403, 404, 413) and isinstance(exc.detail, str) \
            and exc.detail not in ("Not Found", "Method Not Allowed") else \
            {404: "no such page", 405: "method not allowed"}.get(exc.status_code, "request refused")
        return page("error", exc.status_code, status=exc.status_code, message=message)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> HTMLResponse:
        return page("error", 400, status=400, message="malformed request")

    def server_error_page(request: Request, exc: Exception) -> HTMLResponse:
        """One log line (no token: only the route's first part) and a short page."""
        log.error("annotation app: %s on %s %s: %s", type(exc).__name__, request.method,
                  request.url.path.split("/")[1] if request.url.path.count("/") > 1 else "", exc)
        log.debug("details", exc_info=exc)
        return page("error", 500, status=500, message="the server could not answer; see its log")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)  # browsers ask for one; a 404 would only clutter their console

    @app.get("/r/{token}/", response_class=HTMLResponse)
    def rater_page(token: str) -> HTMLResponse:
        with opened() as (setup, store):
            rater = rater_of(setup, token)
            assigned = setup.assigned(rater)
            done = session.answered(store, setup, rater)
        item = next((p for p in assigned if p not in done), None)
        context: dict[str, Any] = {"base": f"/r/{token}/", "csrf": setup.csrf_for(token), "item": item,
                                   "answered": len(done), "assigned": len(assigned)}
        if item is not None:
            pair, first = setup.pairs[item], setup.raters[rater].first[item]
            second = "a" if first == "o" else "o"
            context.update(prompt=pair["p_a"], first_sha=pair[f"image_{first}"], second_sha=pair[f"image_{second}"])
        return page("rater", **context)

    @app.post("/r/{token}/answer")
    async def post_answer(request: Request, token: str) -> RedirectResponse:
        with opened() as (setup, store):
            rater = rater_of(setup, token)
            form = await posted(request, setup, token)
            item, choice = form.get("item", ""), form.get("choice", "")
            if item not in setup.assigned(rater):
                raise fail(403, "this pair is not one of yours")
            if choice not in session.SELECTIONS:
                raise fail(400, "choose first, second or tie")
            with lock:
                session.answer(store, setup, rater, item, choice)
        return RedirectResponse(f"/r/{token}/", status_code=303)

    @app.post("/r/{token}/undo")
    async def post_undo(request: Request, token: str) -> RedirectResponse:
        with opened() as (setup, store):
            rater = rater_of(setup, token)
            await posted(request, setup, token)
            with lock:
                session.undo(store, setup, rater)
        return RedirectResponse(f"/r/{token}/", status_code=303)

    @app.get("/r/{token}/img/{sha}")
    def rater_image(token: str, sha: str) -> Response:
        with opened() as (setup, store):
            rater = rater_of(setup, token)
            allowed = {setup.pairs[p][f"image_{side}"] for p in setup.assigned(rater) for side in "oa"}
            return image(store, allowed, sha)

    @app.get("/a/{token}/", response_class=HTMLResponse)
    def admin_page(token: str) -> HTMLResponse:
        with opened() as (setup, store):
            admin_of(setup, token)
            live = live_agreement(store, n_boot=N_BOOT)
            progress = [{"name": name, "answered": len(session.answered(store, setup, name)),
                         "assigned": len(setup.assigned(name))} for name in setup.raters]
            per_pair = {p: 0 for p in setup.pairs}
            for name in setup.raters:
                for p in setup.raters[name].order:
                    record = store.get(setup.label_key(name, p))
                    per_pair[p] += record is not None and record.status == "ok"
        rows = [{"source": s, "cells": _cells(result)} for s, result in live.rows.items()]
        pairs = [{"item": p, "flagged": p in setup.flagged, "answers": per_pair[p], **setup.pairs[p]}
                 for p in setup.pairs]
        return page("admin", base=f"/a/{token}/", csrf=setup.csrf_for(token), rows=rows, labellers=bool(rows),
                    raters=live.raters, alpha=_alpha_cell(live.alpha), progress=progress, pairs=pairs,
                    show_flagged=setup.show_flagged, n_boot=N_BOOT, ci=round(CI_LEVEL * 100),
                    now=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))

    @app.post("/a/{token}/flag")
    async def post_flag(request: Request, token: str) -> RedirectResponse:
        with opened() as (setup, _):
            admin_of(setup, token)
            form = await posted(request, setup, token)
            item, flagged = form.get("item", ""), form.get("flagged", "")
            if item not in setup.pairs:
                raise fail(403, "this pair is not in the study")
            if flagged not in ("0", "1"):
                raise fail(400, "flagged must be 1 or 0")
            with lock:
                # read again under the lock: another flag may have been saved since this request began
                current = load_setup(run_dir) or setup
                session.set_flag(current, item, flagged == "1")
        return RedirectResponse(f"/a/{token}/", status_code=303)

    @app.get("/a/{token}/img/{sha}")
    def admin_image(token: str, sha: str) -> Response:
        with opened() as (setup, store):
            admin_of(setup, token)
            return image(store, {p[f"image_{side}"] for p in setup.pairs.values() for side in "oa"}, sha)

    return app


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _cells(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The stat cells of one labeller's row: value and interval as attributes, 3 decimals as text."""
    cells = []
    for stat, name in STATS.items():
        cell = (result or {}).get(name) or {"estimate": None, "low": None, "high": None, "n": 0}
        est, low, high = cell["estimate"], cell["low"], cell["high"]
        text = "n/a" if est is None else f"{est:.3f}" + ("" if low is None else f" [{low:.3f}, {high:.3f}]")
        cells.append({"stat": stat, "value": _fmt(est), "low": _fmt(low), "high": _fmt(high), "n": cell["n"],
                      "text": text})
    n = result["n"] if result else 0
    cells.append({"stat": "n", "value": n, "low": n, "high": n, "n": n, "text": str(n)})
    return cells


def _alpha_cell(alpha: dict[str, Any] | None) -> dict[str, Any]:
    if alpha is None:
        return {"value": "", "low": "", "high": "", "n": 0, "text": "n/a (needs two raters)"}
    est, low, high = alpha["estimate"], alpha["low"], alpha["high"]
    text = "n/a" if est is None else f"{est:.3f}" + ("" if low is None else f" [{low:.3f}, {high:.3f}]")
    return {"value": _fmt(est), "low": _fmt(low), "high": _fmt(high), "n": alpha["n"], "text": text}


# -- serving ------------------------------------------------------------------------------------

def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: a free port; read it from ``getsockname()``)."""
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port} is not a port number (0 to 65535; 0 picks a free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port, or "
                         "--port 0 for a free one") from None
    return sock


def serve(app: Any, sock: socket.socket) -> None:
    """Serve ``app`` on the bound socket until Ctrl-C (which returns normally). No access log: the URLs
    hold the raters' tokens."""
    uvicorn = require("uvicorn", "app", FEATURE)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, server_header=False,
                                           lifespan="off"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn shuts down on the first Ctrl-C, then raises the signal again for the caller: done.
        pass
    finally:
        sock.close()
