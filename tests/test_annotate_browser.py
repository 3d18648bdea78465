"""The annotation app end to end in headless Chromium (the system's ``chromium``) driven by Playwright.

A run of six image pairs, labelled by a stand-in VLM labeller through the labels stage, is prepared for
raters "ann" and "bob" and served with uvicorn on a free local port. Each rater labels every pair with
the keyboard, undoes an answer, and (ann) reloads and resumes; the test picks each answer from what the
page shows (which image is I_a), so it knows every label value and checks the stored ``human:<rater>``
records against them. The agreement page must show the MAE, accuracies, quadratic kappa, n and the
raters' Krippendorff alpha that the test computes itself (by hand, with scikit-learn, or with the
``krippendorff`` package when installed). A wrong token, a traversal path, an image that is not the
rater's, and a post from a page of another origin are refused.

Skipped, with the reason, where the ``playwright`` package or a ``chromium`` binary is missing (the
test never downloads a browser).
"""

from __future__ import annotations

import re
import itertools
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Sequence

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import cohen_kappa_score

from aesthetic_audit.labels.stage import run_labels
from aesthetic_audit.labels.vlm import LabelResult
from aesthetic_audit.records import IMAGES, LABELS, image_pair_key, label_key
from aesthetic_audit.store.run import Record, RunStore

from browser import requires_chromium
from fake_images import pattern

uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install 'aesthetic-audit[app]')")
pytestmark = requires_chromium

N_PAIRS = 6
# What each source says about pair i of the run (-1 tie, 0 I_o preferred, 1 I_a preferred). ann and bob
# disagree on pairs 1 and 5, so the human majority has split votes (ties) there.
ANN = [1, 1, 0, -1, 1, -1]
BOB = [1, 0, 0, -1, 1, 1]
VLM = [1, 0, 1, 1, -1, 1]
ORDINAL = {0: 0, -1: 1, 1: 2}  # the study's ordinal scale: original < tie < anti-aesthetic
# The contract's keys per action; each rater takes them in turn (from another start), so between them
# every key is pressed.
ANN_KEYS = {"first": ("1", "ArrowLeft"), "second": ("2", "ArrowRight"), "tie": ("0", "t"), "undo": ("u", "Backspace")}
BOB_KEYS = {"first": ("ArrowLeft", "1"), "second": ("ArrowRight", "2"), "tie": ("ArrowDown", "t"),
            "undo": ("Backspace", "u")}


@dataclass(frozen=True)
class Pair:
    index: int
    image_pair_id: str
    image_o: str
    image_a: str
    p_a: str


@dataclass
class App:
    run: Path
    base: str
    tokens: dict[str, str]
    admin: str
    pairs: dict[str, Pair]  # by image_pair_id
    stray: str  # an image in the store that is in no pair


# -- the run ---------------------------------------------------------------------------------------

class _StubLabeller:
    """A labeller that answers VLM[i] for pair i (found by its p_a), run through the real labels stage."""

    name = "vlm"

    def identity(self) -> dict[str, Any]:
        return {"name": "vlm", "version": "test", "backend": {"kind": "stub"}}

    def describe(self) -> str:
        return "vlm (stub)"

    def load(self) -> None:
        pass

    def label(self, items: Sequence[Any]) -> list[LabelResult]:
        values = [VLM[int(item.p_a.rsplit(" ", 1)[1])] for item in items]
        return [LabelResult(v, [{"first": "o", "selection": v, "value": v}], None) for v in values]


def _build_run(root: Path) -> tuple[dict[str, Pair], str]:
    store = RunStore(root)
    pairs = {}
    for i in range(N_PAIRS):
        sha_o = store.put_image(Image.fromarray(pattern(f"annotate-o{i}")))
        sha_a = store.put_image(Image.fromarray(pattern(f"annotate-a{i}")))
        p_a = f"a dim, grainy photo of object {i}"
        inputs = {"image_o": sha_o, "image_a": sha_a, "p_a": p_a, "model": "gen"}
        key = image_pair_key(backend={"name": "test"}, inputs=inputs, seed=0)
        store.put(Record(key, IMAGES, f"pair {i}", {
            "image_pair_id": key, "pair_id": f"P{i}", "p_o": f"a photo of object {i}", "p_a": p_a,
            "dims": ["clarity"], "image_o": sha_o, "image_a": sha_a, "backend": "test", "strength": None,
            "transforms": [], "label": None, "model": "gen", "source_item": None}))
        pairs[key] = Pair(i, key, sha_o, sha_a, p_a)
    summary = run_labels(store, _StubLabeller(), seed=0)
    assert (summary.new, summary.failed) == (N_PAIRS, 0)
    stray = store.put_image(Image.fromarray(pattern("annotate-stray")))
    store.close()
    return pairs, stray


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[App]:
    from aesthetic_audit.annotate import create_app, prepare

    run = tmp_path_factory.mktemp("annotate") / "run"
    pairs, stray = _build_run(run)
    setup = prepare(run, pairs=N_PAIRS, raters=["ann", "bob"], seed=0)
    assert set(setup.tokens) == {"ann", "bob"}
    again = prepare(run, pairs=N_PAIRS, raters=["ann", "bob"], seed=0)
    assert (again.tokens, again.admin_token) == (setup.tokens, setup.admin_token)  # resume keeps the links

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the app did not start"
    assert httpx.get(f"{base}/r/{setup.tokens['ann']}/").status_code == 200
    try:
        yield App(run, base, dict(setup.tokens), setup.admin_token, pairs, stray)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# -- a rater in the browser ------------------------------------------------------------------------

@dataclass(frozen=True)
class Shown:
    answered: int
    total: int
    item: str | None  # None once all are answered (#done)
    first: str | None  # "o" or "a": the image shown first


class Rater:
    """One rater's page; answers by key from what it shows, and remembers what it pressed."""

    def __init__(self, app: App, page: Any, name: str, keys: dict[str, tuple[str, ...]]):
        self.app, self.page, self.name = app, page, name
        self.keys = {action: itertools.cycle(options) for action, options in keys.items()}
        self.used: list[str] = []
        self.url = f"{app.base}/r/{app.tokens[name]}/"
        self.pressed: dict[str, tuple[str, int]] = {}  # item -> (first shown, selection) of its standing answer
        self.firsts: list[str] = []
        page.goto(self.url)

    def shown(self) -> Shown:
        page = self.page
        progress = page.locator("#progress")
        done = page.locator("#done").count() > 0
        answered = total = None
        if progress.count():
            match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", progress.inner_text())
            assert match, f"#progress reads {progress.inner_text()!r}, not 'A / T'"
            answered, total = int(match.group(1)), int(match.group(2))
        if done:
            assert page.locator("#done").is_visible()
            return Shown(answered if answered is not None else N_PAIRS, total or N_PAIRS, None, None)
        assert answered is not None, "no #progress on the rater page"
        item = page.locator('input[name="item"]').first.get_attribute("value")
        pair = self.app.pairs[item]
        prefix = f"/r/{self.app.tokens[self.name]}/img/"
        srcs = [page.locator(f"img#{which}").get_attribute("src") for which in ("first", "second")]
        assert all(s.startswith(prefix) for s in srcs), srcs
        shas = [s.removeprefix(prefix) for s in srcs]
        assert sorted(shas) == sorted([pair.image_o, pair.image_a])
        assert page.locator("#prompt").inner_text().strip() == pair.p_a
        return Shown(answered, total, item, "o" if shas[0] == pair.image_o else "a")

    def _press(self, action: str) -> None:
        key = next(self.keys[action])
        self.used.append(key)
        with self.page.expect_navigation(wait_until="load"):
            self.page.keyboard.press(key)

    def answer(self, value: int) -> Shown:
        """Answer the shown pair so that it gets label ``value``; check progress advanced by one."""
        before = self.shown()
        assert before.item is not None
        if value == -1:
            selection = -1
        else:
            selection = 0 if before.first == ("a" if value == 1 else "o") else 1
        self._press({-1: "tie", 0: "first", 1: "second"}[selection])
        self.pressed[before.item] = (before.first, selection)
        self.firsts.append(before.first)
        after = self.shown()
        assert (after.answered, after.total) == (before.answered + 1, before.total)
        assert after.item != before.item
        return before

    def undo(self, expect_item: str) -> None:
        before = self.shown()
        self._press("undo")
        after = self.shown()
        assert (after.answered, after.total) == (before.answered - 1, before.total)
        assert after.item == expect_item  # the undone pair is asked again
        del self.pressed[expect_item]

    def value_for(self, source: list[int]) -> int:
        return source[self.app.pairs[self.shown().item].index]


def _labels(run: Path, source: str) -> dict[str, Record]:
    store = RunStore(run, create=False)
    try:
        return {r.data["image_pair_id"]: r for r in store.records(LABELS) if r.data.get("source") == source}
    finally:
        store.close()


def _value_of(first: str, selection: int) -> int:
    # Worked out by hand: tie is a tie; choosing the first image prefers whichever side was shown first.
    if selection == -1:
        return -1
    chosen = first if selection == 0 else {"o": "a", "a": "o"}[first]
    return 1 if chosen == "a" else 0


@pytest.fixture(scope="module")
def labelled(app: App, browser) -> dict[str, Rater]:
    """ann and bob label every pair with the keyboard (with undo, reload and resume on the way)."""
    ann = Rater(app, browser.new_page(), "ann", ANN_KEYS)
    start = ann.shown()
    assert (start.answered, start.total) == (0, N_PAIRS)
    for _ in range(3):
        ann.answer(ann.value_for(ANN))
    assert len(_labels(app.run, "human:ann")) == 3
    # a wrong answer, undone: progress goes back and the same pair is asked again
    wrong = ann.shown()
    right = ann.value_for(ANN)
    ann.answer({1: 0, 0: -1, -1: 1}[right])
    assert len(_labels(app.run, "human:ann")) == 4
    ann.undo(wrong.item)
    assert wrong.item not in _labels(app.run, "human:ann")
    ann.answer(right)
    ann.answer(ann.value_for(ANN))
    # reload mid-way: the same pair and progress again; a fresh tab resumes there too
    before = ann.shown()
    ann.page.reload()
    assert ann.shown() == before
    fresh = Rater(app, browser.new_page(), "ann", ANN_KEYS)  # a new browser context: no cookies
    assert fresh.shown() == before
    fresh.page.close()
    last = ann.answer(ann.value_for(ANN))
    assert ann.shown().item is None  # #done
    # undo still works on the done page; answer again
    ann.undo(last.item)
    ann.answer(ANN[app.pairs[last.item].index])
    assert ann.shown().item is None

    bob = Rater(app, browser.new_page(), "bob", BOB_KEYS)
    assert (bob.shown().answered, bob.shown().total) == (0, N_PAIRS)
    bob.answer(bob.value_for(BOB))
    wrong = bob.shown()
    right = bob.value_for(BOB)
    bob.answer({1: -1, 0: 1, -1: 0}[right])
    bob.undo(wrong.item)
    while bob.shown().item is not None:
        bob.answer(bob.value_for(BOB))
    return {"ann": ann, "bob": bob}


# -- the tests -------------------------------------------------------------------------------------

def test_answers_are_the_keys_pressed(app: App, labelled: dict[str, Rater]) -> None:
    firsts = []
    for name, expected in (("ann", ANN), ("bob", BOB)):
        rater = labelled[name]
        records = _labels(app.run, f"human:{name}")
        assert set(records) == set(app.pairs) == set(rater.pressed)
        for item, record in records.items():
            pair = app.pairs[item]
            first, selection = rater.pressed[item]
            assert _value_of(first, selection) == expected[pair.index]
            data = record.data
            assert record.key == label_key(source=f"human:{name}", image_o=pair.image_o, image_a=pair.image_a,
                                           prompt=pair.p_a, seed=None)
            assert data["value"] == expected[pair.index]
            assert data["answers"] == [{"first": first, "selection": selection, "value": expected[pair.index]}]
            assert (data["labeller"], data["image_o"], data["image_a"], data["p_a"]) == \
                ("human", pair.image_o, pair.image_a, pair.p_a)
            # every field the human-label import writes is there
            assert {"source", "labeller", "labeller_id", "image_pair_id", "pair_id", "model", "image_o", "image_a",
                    "p_a", "value", "answers", "disagree", "seed", "source_item"} <= set(data)
        firsts += rater.firsts
    assert set(firsts) == {"o", "a"}  # the order is shuffled, not always one side first
    # the tie and undo keys that the flow presses whatever the order shown (ann ties twice, undoes twice)
    assert {"0", "t", "u", "Backspace"} <= set(labelled["ann"].used) and "ArrowDown" in labelled["bob"].used


def _stat(row: Any, name: str) -> dict[str, float | None]:
    cell = row.locator(f'td[data-stat="{name}"]')
    assert cell.count() == 1, f"no cell {name}"

    def number(attr: str) -> float | None:
        raw = cell.get_attribute(attr)
        return None if raw in (None, "", "nan", "NaN", "None", "null") else float(raw)

    return {"value": number("data-value"), "low": number("data-low"), "high": number("data-high"),
            "text": cell.inner_text()}


def _alpha_ordinal(units: list[list[int]]) -> float:
    """Krippendorff's alpha, ordinal metric, from the coincidence matrix (Krippendorff 2011, "Computing
    Krippendorff's Alpha-Reliability"), by hand so the test needs no package beyond scikit-learn."""
    cats = sorted({v for u in units for v in u})
    o = {(c, k): 0.0 for c in cats for k in cats}
    for u in units:
        if len(u) < 2:
            continue
        for i, c in enumerate(u):
            for j, k in enumerate(u):
                if i != j:
                    o[c, k] += 1.0 / (len(u) - 1)
    n_c = {c: sum(o[c, k] for k in cats) for c in cats}
    n = sum(n_c.values())

    def delta2(c: int, k: int) -> float:
        lo, hi = min(c, k), max(c, k)
        return (sum(n_c[g] for g in cats if lo <= g <= hi) - (n_c[lo] + n_c[hi]) / 2) ** 2

    d_o = sum(o[c, k] * delta2(c, k) for c in cats for k in cats) / n
    d_e = sum(n_c[c] * n_c[k] * delta2(c, k) for c in cats for k in cats) / (n * (n - 1))
    return 1.0 - d_o / d_e


def _majority(votes: list[int]) -> int:
    top = Counter(votes).most_common()
    return -1 if len(top) > 1 and top[0][1] == top[1][1] else top[0][0]


def test_agreement_page_shows_the_numbers(app: App, labelled: dict[str, Rater], browser) -> None:
    # The human reference: the raters' majority per pair, a split vote a tie (analysis/agreement.py).
    human = [ORDINAL[_majority([a, b])] for a, b in zip(ANN, BOB)]
    vlm = [ORDINAL[v] for v in VLM]
    x, y = np.array(human), np.array(vlm)
    untied = (x != 1) & (y != 1)
    expected = {
        "n": len(x),
        "mae": float(np.mean(np.abs(x - y))),
        # design §6: the study's two accuracies, with tie and original merged, and with ties removed
        "accuracy": float(np.mean((x == 2) == (y == 2))),
        "accuracy_no_ties": float(np.mean(x[untied] == y[untied])),
        "kappa": float(cohen_kappa_score(x, y, weights="quadratic", labels=[0, 1, 2])),
    }
    raters = [[ORDINAL[v] for v in ANN], [ORDINAL[v] for v in BOB]]
    try:
        import krippendorff
        alpha = float(krippendorff.alpha(reliability_data=raters, level_of_measurement="ordinal"))
    except ImportError:
        alpha = _alpha_ordinal([list(u) for u in zip(*raters)])

    page = browser.new_page()
    page.goto(f"{app.base}/a/{app.admin}/")
    rows = page.locator("#agreement tr[data-source]")
    assert [rows.nth(i).get_attribute("data-source") for i in range(rows.count())] == ["vlm:vlm"]
    row = rows.first
    for name, want in expected.items():
        got = _stat(row, name)
        assert got["value"] == pytest.approx(want, abs=1e-9), (name, got, want)
        if name != "n":
            assert f"{want:.3f}" in got["text"], (name, got["text"])
            if got["low"] is not None and got["high"] is not None:
                assert got["low"] - 1e-9 <= got["value"] <= got["high"] + 1e-9, (name, got)
    span = page.locator("#alpha")
    assert float(span.get_attribute("data-value")) == pytest.approx(alpha, abs=1e-9)
    assert int(span.get_attribute("data-n")) == N_PAIRS
    # every pair is listed with its flag form
    items = page.eval_on_selector_all('#pairs form input[name="item"]', "els => els.map(e => e.value)")
    assert set(items) == set(app.pairs)
    page.close()


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "input" and named.get("name") and named["name"] not in self.values:
            self.values[named["name"]] = named.get("value") or ""


def _form_values(html: str) -> dict[str, str]:
    parser = _Inputs()
    parser.feed(html)
    return parser.values


def test_wrong_tokens_and_foreign_images_are_refused(app: App) -> None:
    ann = app.tokens["ann"]
    with httpx.Client(base_url=app.base) as client:
        for path in ("/r/not-a-token/", "/a/not-a-token/", f"/r/{app.admin}/", f"/a/{ann}/",
                     "/r/not-a-token/img/" + next(iter(app.pairs.values())).image_o):
            assert client.get(path).status_code == 404, path
        pair = next(iter(app.pairs.values()))
        served = client.get(f"/r/{ann}/img/{pair.image_a}")
        assert served.status_code == 200
        store = RunStore(app.run, create=False)
        assert served.content == store.image_path(pair.image_a).read_bytes()
        assert store.image_path(app.stray).is_file()
        store.close()
        for path in (f"/r/{ann}/img/..%2F..%2Frecords.sqlite", f"/r/{ann}/img/%2E%2E%2Frecords.sqlite",
                     f"/r/{ann}/img/{app.stray}", f"/r/{ann}/img/{pair.image_a[:-1]}", f"/r/{ann}/img/{'f' * 64}"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert b"SQLite format" not in response.content and not response.content.startswith(b"\x89PNG")


def test_forged_posts_are_refused(app: App) -> None:
    """Posts with a wrong csrf, a foreign Origin or Referer, or an unassigned item write nothing."""
    bob = app.tokens["bob"]
    before = {s: len(_labels(app.run, f"human:{s}")) for s in ("ann", "bob")}
    with httpx.Client(base_url=app.base) as client:
        form = _form_values(client.get(f"/r/{bob}/").text)
        assert form.get("csrf"), "the rater page has no csrf field"
        item = form.get("item") or next(iter(app.pairs))
        good = {"item": item, "choice": "first", "csrf": form["csrf"]}
        own, evil = {"Origin": app.base}, {"Origin": "http://evil.example"}
        attempts = [
            (f"/r/{bob}/answer", {**good, "csrf": "x" + form["csrf"]}, own),
            (f"/r/{bob}/answer", {k: v for k, v in good.items() if k != "csrf"}, own),
            (f"/r/{bob}/answer", good, evil),
            (f"/r/{bob}/answer", good, {"Referer": "http://evil.example/page"}),
            (f"/r/{bob}/answer", {**good, "item": "0" * 64}, own),  # not a pair of this rater
            (f"/r/{bob}/undo", {"csrf": form["csrf"]}, evil),
        ]
        for path, data, headers in attempts:
            assert client.post(path, data=data, headers=headers).status_code == 403, (data, headers)
        assert client.post(f"/r/{app.admin}/answer", data=good, headers=own).status_code in (403, 404)
    assert {s: len(_labels(app.run, f"human:{s}")) for s in ("ann", "bob")} == before


class _OtherOrigin(BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: Any) -> None:
        pass


def test_cross_site_post_from_the_browser_is_refused(app: App, labelled: dict[str, Rater], browser) -> None:
    """A page on another origin submits a well-formed answer (with bob's real csrf) to the app: 403, no
    record. bob first undoes his last answer (so a pair is open) and answers it again afterwards."""
    bob = labelled["bob"]
    bob.page.goto(bob.url)
    done = bob.shown()
    assert done.item is None
    last = next(reversed(bob.pressed))
    bob.undo(last)
    form = _form_values(bob.page.content())
    records = _labels(app.run, "human:bob")
    assert last not in records

    action = f"{app.base}/r/{app.tokens['bob']}/answer"
    _OtherOrigin.page = (
        f'<!doctype html><form method="post" action="{action}">'
        f'<input name="item" value="{last}"><input name="choice" value="first">'
        f'<input name="csrf" value="{form["csrf"]}"><button id="go">go</button></form>').encode()
    other = ThreadingHTTPServer(("127.0.0.1", 0), _OtherOrigin)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{other.server_address[1]}/")
        with page.expect_response(lambda r: r.url == action) as response:
            page.click("#go")
        assert response.value.status == 403
        assert response.value.request.header_value("origin") == f"http://127.0.0.1:{other.server_address[1]}"
        page.close()
    finally:
        other.shutdown()
        other.server_close()
        thread.join(timeout=5)
    assert _labels(app.run, "human:bob").keys() == records.keys()
    bob.page.goto(bob.url)
    assert bob.shown().answered == N_PAIRS - 1
    bob.answer(BOB[app.pairs[last].index])
    assert bob.shown().item is None
