"""The annotation app: study setup, rater queues, answers as label records, undo, flags, security, agreement."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import cohen_kappa_score

pytest.importorskip("fastapi", reason="the annotation app needs the 'app' extra")
from fastapi.testclient import TestClient  # noqa: E402

from aesthetic_audit.analysis.agreement import krippendorff_alpha, multi_source_agreement, pair_agreement  # noqa: E402
from aesthetic_audit.analysis.audit import RunData  # noqa: E402
from aesthetic_audit.annotate import create_app, load_setup, prepare  # noqa: E402
from aesthetic_audit.errors import InputError, MissingExtraError  # noqa: E402
from aesthetic_audit.labels.humans import import_human_labels  # noqa: E402
from aesthetic_audit.records import IMAGES, LABELS, image_pair_key, label_key  # noqa: E402
from aesthetic_audit.store.run import Record, RunStore  # noqa: E402

from fake_images import pattern  # noqa: E402

ORIGIN = {"origin": "http://testserver"}
N_PAIRS = 6


def _run(root: Path, n: int = 8, prompt: str = "a blurry, dark photo of thing {i}") -> RunStore:
    """``n`` image pairs with stored images, and one pair whose images are missing (it cannot be shown)."""
    store = RunStore(root)
    for i in range(n + 1):
        sha_o = store.put_image(Image.fromarray(pattern(f"o{i}")))
        sha_a = store.put_image(Image.fromarray(pattern(f"a{i}")))
        p_a = prompt.format(i=i)
        if i == n:
            sha_o, sha_a = "0" * 64, "1" * 64  # no file: left out of the study
        key = image_pair_key(backend={"name": "test"}, inputs={"image_o": sha_o, "image_a": sha_a, "p_a": p_a},
                             seed=0)
        store.put(Record(key, IMAGES, f"pair {i}", {
            "image_pair_id": key, "pair_id": f"P{i}", "p_o": f"a photo of thing {i}", "p_a": p_a, "dims": ["clarity"],
            "image_o": sha_o, "image_a": sha_a, "backend": "test", "strength": None, "transforms": [], "label": None,
            "model": "gen", "source_item": None}))
    return store


def _vlm_labels(store: RunStore, values: dict[str, int]) -> None:
    """A labeller's labels (as the labels stage writes them) for these image pairs."""
    pairs = {r.key: r.data for r in store.records(IMAGES)}
    for pair_id, value in values.items():
        d = pairs[pair_id]
        key = label_key(source={"name": "fake"}, image_o=d["image_o"], image_a=d["image_a"], prompt=d["p_a"], seed=0)
        store.put(Record(key, LABELS, pair_id[:12], {
            "source": "vlm:vlm", "labeller": "vlm", "labeller_id": None, "image_pair_id": pair_id,
            "pair_id": d["pair_id"], "model": d["model"], "image_o": d["image_o"], "image_a": d["image_a"],
            "p_a": d["p_a"], "value": value, "answers": [], "disagree": None, "seed": 0}))


def _page(client: TestClient, token: str) -> dict:
    """What a rater page shows: the pair, the images' hashes in screen order, progress, csrf, done."""
    r = client.get(f"/r/{token}/")
    assert r.status_code == 200, r.text
    text = r.text
    out = {"progress": tuple(int(x) for x in re.search(r'<span id="progress">(\d+) / (\d+)</span>', text).groups()),
           "csrf": re.search(r'name="csrf" value="([^"]+)"', text).group(1),
           "done": '<p id="done">' in text, "html": text}
    if not out["done"]:
        out["item"] = re.search(r'name="item" value="([^"]+)"', text).group(1)
        out["first"] = re.search(rf'<img id="first" src="/r/{token}/img/([0-9a-f]{{64}})"', text).group(1)
        out["second"] = re.search(rf'<img id="second" src="/r/{token}/img/([0-9a-f]{{64}})"', text).group(1)
        out["prompt"] = html.unescape(re.search(r'<p id="prompt">(.*?)</p>', text, re.S).group(1))
    return out


def _answer(client: TestClient, token: str, item: str, choice: str, csrf: str, **headers: str) -> httpx.Response:
    return client.post(f"/r/{token}/answer", data={"item": item, "choice": choice, "csrf": csrf},
                       headers=headers or ORIGIN, follow_redirects=False)


def _human_labels(store: RunStore, rater: str) -> dict[str, Record]:
    return {r.data["image_pair_id"]: r for r in store.records(LABELS) if r.data["source"] == f"human:{rater}"}


@pytest.fixture()
def study(tmp_path: Path):
    store = _run(tmp_path / "run")
    setup = prepare(store.root, pairs=N_PAIRS, n_raters=3, seed=5)
    return store, setup, TestClient(create_app(store.root))


# -- setup ---------------------------------------------------------------------------------------

def test_prepare_is_reproducible_and_resumable(tmp_path: Path) -> None:
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b")
    sa = prepare(a.root, pairs=N_PAIRS, raters=["ann", "bob"], seed=3)
    sb = prepare(b.root, pairs=N_PAIRS, raters=["ann", "bob"], seed=3)
    # Same run content and seed: same pairs, orders and sides; the tokens are secrets, drawn anew.
    assert list(sa.pairs) == list(sb.pairs) and len(sa.pairs) == N_PAIRS
    assert all(sa.raters[n].order == sb.raters[n].order and sa.raters[n].first == sb.raters[n].first
               for n in ("ann", "bob"))
    assert sa.tokens["ann"] != sb.tokens["ann"] and len(set(sa.tokens.values()) | {sa.admin_token}) == 3
    # every rater gets the same pairs, each in a shuffled order of its own; both sides get shown first
    assert set(sa.raters["ann"].order) == set(sa.raters["bob"].order) == set(sa.pairs)
    assert sa.raters["ann"].order != sa.raters["bob"].order
    assert {s for r in sa.raters.values() for s in r.first.values()} == {"o", "a"}
    stored_pairs = {r.key for r in a.records(IMAGES) if a.has_image(r.data["image_o"])}
    assert set(sa.pairs) <= stored_pairs  # never the pair without images
    # the setup lives in the run directory, readable by its owner only
    path = a.root / "annotate" / "setup.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in (a.root / "annotate").iterdir()) == ["setup.json"]
    # resume: the same tokens; a new rater is added, the others keep theirs
    again = prepare(a.root, raters=["ann", "bob"], seed=3)
    assert again.tokens == sa.tokens and again.admin_token == sa.admin_token and list(again.pairs) == list(sa.pairs)
    more = prepare(a.root, raters=["cy"], seed=3)
    assert set(more.tokens) == {"ann", "bob", "cy"} and more.tokens["ann"] == sa.tokens["ann"]
    assert load_setup(a.root).tokens == more.tokens
    with pytest.raises(InputError, match="seed 3"):
        prepare(a.root, seed=4)
    with pytest.raises(InputError, match="pairs"):
        prepare(a.root, pairs=2, seed=3)
    c = _run(tmp_path / "c")
    assert len(prepare(c.root).pairs) == 8 and list(load_setup(c.root).tokens) == ["rater1"]


def test_prepare_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        prepare(tmp_path / "nowhere")
    empty = RunStore(tmp_path / "empty")
    empty.counts()  # the database exists, with no image pairs
    with pytest.raises(InputError, match="nothing to annotate"):
        prepare(empty.root)
    store = _run(tmp_path / "run", n=2)
    with pytest.raises(InputError, match="repeat"):
        prepare(store.root, raters=["x", "x"])
    with pytest.raises(InputError, match="control character"):
        prepare(store.root, raters=["a\x07b"])
    with pytest.raises(InputError, match="no annotation study"):
        create_app(store.root)


# -- answering -------------------------------------------------------------------------------------

def test_each_rater_sees_every_pair_once_in_their_order(study) -> None:
    store, setup, client = study
    for rater, token in setup.tokens.items():
        seen = []
        for step in range(N_PAIRS):
            page = _page(client, token)
            assert page["progress"] == (step, N_PAIRS) and not page["done"]
            pair = setup.pairs[page["item"]]
            assert page["prompt"] == pair["p_a"]
            side = setup.raters[rater].first[page["item"]]
            other = "a" if side == "o" else "o"
            assert (page["first"], page["second"]) == (pair[f"image_{side}"], pair[f"image_{other}"])
            seen.append(page["item"])
            r = _answer(client, token, page["item"], "tie", page["csrf"])
            assert r.status_code == 303 and r.headers["location"] == f"/r/{token}/"
        assert seen == setup.raters[rater].order
        last = _page(client, token)
        assert last["done"] and last["progress"] == (N_PAIRS, N_PAIRS) and 'id="undo"' in last["html"]
    assert len(list(store.records(LABELS))) == 3 * N_PAIRS


def test_answer_value_follows_the_order_shown(study) -> None:
    store, setup, client = study
    token = setup.tokens["rater1"]
    choices = ["first", "second", "tie", "first", "second", "second"]
    shown = {}
    for choice in choices:
        page = _page(client, token)
        shown[page["item"]] = (page["first"], choice)
        _answer(client, token, page["item"], choice, page["csrf"])
    labels = _human_labels(store, "rater1")
    assert set(labels) == set(shown)
    for item, (first_sha, choice) in shown.items():
        pair = setup.pairs[item]
        first = "o" if first_sha == pair["image_o"] else "a"
        # by hand: picking the image shown first prefers that image; I_o preferred is 0, I_a preferred is 1
        preferred = {"first": first, "second": "a" if first == "o" else "o"}.get(choice)
        expected = -1 if choice == "tie" else {"o": 0, "a": 1}[preferred]
        rec = labels[item]
        assert rec.data["value"] == expected
        assert rec.data["answers"] == [{"first": first, "selection": {"first": 0, "second": 1, "tie": -1}[choice],
                                        "value": expected}]
        assert rec.key == label_key(source="human:rater1", image_o=pair["image_o"], image_a=pair["image_a"],
                                    prompt=pair["p_a"], seed=None)
    assert {rec.data["value"] for rec in labels.values()} >= {0, 1, -1}


def test_records_match_the_import_format_and_feed_the_analysis(study, tmp_path: Path) -> None:
    store, setup, client = study
    token = setup.tokens["rater1"]
    page = _page(client, token)
    _answer(client, token, page["item"], "first", page["csrf"])
    other = next(p for p in setup.pairs if p != page["item"])
    rows = tmp_path / "rows.csv"
    rows.write_text(f"rater,image_pair_id,answer,first\nimported,{other},second,o\n", encoding="utf-8")
    assert import_human_labels(store, rows).new == 1
    app_rec = _human_labels(store, "rater1")[page["item"]]
    imported = _human_labels(store, "imported")[other]
    assert set(app_rec.data) == set(imported.data) and app_rec.data["source_item"] == "annotate"
    data = RunData.from_store(store)
    pair = setup.pairs[page["item"]]
    assert data.labels["human:rater1"] == {(pair["image_o"], pair["image_a"], pair["p_a"]): app_rec.data["value"]}
    agreement = multi_source_agreement(data.labels, n_boot=50)
    assert agreement["sources"] == {"human:imported": 1, "human:rater1": 1}


def test_answering_again_replaces_and_undo_goes_back(study) -> None:
    store, setup, client = study
    token = setup.tokens["rater2"]
    order = setup.raters["rater2"].order
    for _ in range(3):
        page = _page(client, token)
        _answer(client, token, page["item"], "first", page["csrf"])
    csrf = _page(client, token)["csrf"]
    # a new answer to an answered pair replaces it: still one record, the new value, now the latest answer
    _answer(client, token, order[0], "tie", csrf)
    labels = _human_labels(store, "rater2")
    assert len(labels) == 3 and labels[order[0]].data["value"] == -1
    r = client.post(f"/r/{token}/undo", data={"csrf": csrf}, headers=ORIGIN, follow_redirects=False)
    assert r.status_code == 303
    assert set(_human_labels(store, "rater2")) == {order[1], order[2]}
    page = _page(client, token)
    assert page["progress"] == (2, N_PAIRS) and page["item"] == order[0]
    # the undo stack survives a restart: a new app over the same run undoes the answer before
    client = TestClient(create_app(store.root))
    client.post(f"/r/{token}/undo", data={"csrf": csrf}, headers=ORIGIN)
    assert set(_human_labels(store, "rater2")) == {order[1]}
    client.post(f"/r/{token}/undo", data={"csrf": csrf}, headers=ORIGIN)
    client.post(f"/r/{token}/undo", data={"csrf": csrf}, headers=ORIGIN)  # nothing left: no error
    assert _human_labels(store, "rater2") == {} and _page(client, token)["progress"] == (0, N_PAIRS)
    # other raters' answers are untouched by this rater's undo
    other = setup.tokens["rater1"]
    page = _page(client, other)
    _answer(client, other, page["item"], "second", page["csrf"])
    client.post(f"/r/{token}/undo", data={"csrf": csrf}, headers=ORIGIN)
    assert len(_human_labels(store, "rater1")) == 1


def test_undo_works_after_the_last_answer(study) -> None:
    store, setup, client = study
    token = setup.tokens["rater3"]
    for _ in range(N_PAIRS):
        page = _page(client, token)
        _answer(client, token, page["item"], "second", page["csrf"])
    done = _page(client, token)
    assert done["done"]
    client.post(f"/r/{token}/undo", data={"csrf": done["csrf"]}, headers=ORIGIN)
    page = _page(client, token)
    assert not page["done"] and page["item"] == setup.raters["rater3"].order[-1]
    assert page["progress"] == (N_PAIRS - 1, N_PAIRS)


def test_flags_take_pairs_out_of_the_queues(study) -> None:
    store, setup, client = study
    admin = f"/a/{setup.admin_token}/"
    page = client.get(admin).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    flagged = setup.raters["rater1"].order[0]
    r = client.post(admin + "flag", data={"item": flagged, "flagged": "1", "csrf": csrf}, headers=ORIGIN,
                    follow_redirects=False)
    assert r.status_code == 303 and load_setup(store.root).flagged == {flagged}
    assert f'data-item="{flagged}" data-flagged="1"' in client.get(admin).text
    for rater, token in setup.tokens.items():
        page = _page(client, token)
        assert page["progress"] == (0, N_PAIRS - 1) and page["item"] != flagged
        # a flagged pair can neither be answered nor its images fetched by raters
        assert _answer(client, token, flagged, "first", page["csrf"]).status_code == 403
        assert client.get(f"/r/{token}/img/{setup.pairs[flagged]['image_o']}").status_code == 404
    # --show-flagged (prepare(show_flagged=True)) brings it back
    prepare(store.root, seed=5, show_flagged=True)
    assert _page(client, setup.tokens["rater1"])["item"] == flagged
    prepare(store.root, seed=5)
    client.post(admin + "flag", data={"item": flagged, "flagged": "0", "csrf": csrf}, headers=ORIGIN)
    assert load_setup(store.root).flagged == set()
    assert _page(client, setup.tokens["rater1"])["progress"] == (0, N_PAIRS)


# -- security --------------------------------------------------------------------------------------

def test_tokens_images_and_paths_are_checked(study) -> None:
    store, setup, client = study
    token = setup.tokens["rater1"]
    sha = setup.pairs[setup.raters["rater1"].order[0]]["image_o"]
    r = client.get(f"/r/{token}/img/{sha}")
    assert r.status_code == 200 and r.content == store.image_path(sha).read_bytes()
    assert r.headers["content-type"] == "image/png"
    outside = next(r.data["image_o"] for r in store.records(IMAGES) if r.key not in setup.pairs
                   and store.has_image(r.data["image_o"]))
    assert store.has_image(outside)  # stored in the run, but not in the study
    sqlite = (store.root / "records.sqlite").read_bytes()[:16]
    refused = [
        "/r/wrong-token/", f"/r/wrong-token/img/{sha}", f"/a/{token}/", "/a/wrong/", f"/r/{setup.admin_token}/",
        f"/r/{token}/img/{outside}", f"/r/{token}/img/{sha.upper()}", f"/r/{token}/img/{'f' * 64}",
        f"/r/{token}/img/{sha[:-1]}", f"/r/{token}/img/..%2F..%2Frecords.sqlite", f"/r/{token}/img/../../records.sqlite",
        f"/r/{token}/img/%2e%2e%2f%2e%2e%2frecords.sqlite", f"/r/{token}/img/..%5C..%5Crecords.sqlite",
        f"/r/{token}/img/{sha}%00.png", f"/r/{token}/img/{sha}/..%2F..%2F..%2Frecords.sqlite",
        f"/r/{token}/img/images%2F{sha[:2]}%2F{sha}.png", f"/a/{setup.admin_token}/img/{outside}",
        "/docs", "/openapi.json", "/records.sqlite", "/images/" + sha[:2] + "/" + sha + ".png",
    ]
    for url in refused:
        r = client.get(url)
        assert r.status_code == 404, url
        assert sqlite not in r.content and "Traceback" not in r.text and len(r.text) < 2000, url
    assert client.get(f"/a/{setup.admin_token}/img/{sha}").status_code == 200
    # a wrong token on a POST is a 404 too, before anything else is looked at
    assert client.post("/r/nope/answer", data={}, headers=ORIGIN).status_code == 404
    assert client.post("/a/nope/flag", data={}, headers=ORIGIN).status_code == 404


def test_cross_site_and_unassigned_posts_are_refused(study) -> None:
    store, setup, client = study
    token = setup.tokens["rater1"]
    page = _page(client, token)
    item, csrf = page["item"], page["csrf"]
    other_csrf = _page(client, setup.tokens["rater2"])["csrf"]
    assert other_csrf != csrf
    cases = [
        ({"item": item, "choice": "first"}, ORIGIN),                                  # no csrf
        ({"item": item, "choice": "first", "csrf": "x" * 64}, ORIGIN),                # a wrong one
        ({"item": item, "choice": "first", "csrf": other_csrf}, ORIGIN),              # another rater's
        ({"item": item, "choice": "first", "csrf": csrf}, {"origin": "http://evil.example"}),
        ({"item": item, "choice": "first", "csrf": csrf}, {"origin": "http://testserver.evil.example"}),
        ({"item": item, "choice": "first", "csrf": csrf}, {"origin": "null"}),
        ({"item": item, "choice": "first", "csrf": csrf}, {"referer": "http://evil.example/r/x/"}),
        ({"item": item, "choice": "first", "csrf": csrf}, {}),                        # neither header
        ({"item": "not-a-pair", "choice": "first", "csrf": csrf}, ORIGIN),            # not assigned
        ({"item": next(r.key for r in store.records(IMAGES) if r.key not in setup.pairs), "choice": "first",
          "csrf": csrf}, ORIGIN),                                                     # a run pair outside the study
    ]
    for data, headers in cases:
        r = client.post(f"/r/{token}/answer", data=data, headers=headers, follow_redirects=False)
        assert r.status_code == 403, (data, headers)
        assert "Traceback" not in r.text
    assert client.post(f"/r/{token}/undo", data={}, headers=ORIGIN).status_code == 403
    assert client.post(f"/r/{token}/undo", data={"csrf": csrf}, headers={"origin": "http://evil.example"}
                       ).status_code == 403
    admin_csrf = re.search(r'name="csrf" value="([^"]+)"', client.get(f"/a/{setup.admin_token}/").text).group(1)
    assert client.post(f"/a/{setup.admin_token}/flag", data={"item": item, "flagged": "1", "csrf": csrf},
                       headers=ORIGIN).status_code == 403  # a rater's secret is not the admin's
    assert client.post(f"/a/{setup.admin_token}/flag", data={"item": item, "flagged": "1", "csrf": admin_csrf},
                       headers={"origin": "http://evil.example"}).status_code == 403
    assert _human_labels(store, "rater1") == {} and load_setup(store.root).flagged == set()
    assert _answer(client, token, item, "maybe", csrf).status_code == 400
    # only a small URL-encoded form is read (a multipart upload would be spooled to a temporary file)
    r = client.post(f"/r/{token}/answer", files={"upload": ("x.bin", b"0" * 100)},
                    data={"item": item, "choice": "first", "csrf": csrf}, headers=ORIGIN)
    assert r.status_code == 403
    r = client.post(f"/r/{token}/answer", content=f"item={item}&choice=first&csrf={csrf}&pad=" + "x" * 9000,
                    headers={**ORIGIN, "content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413 and _human_labels(store, "rater1") == {}
    # the same post from this server's page (Origin, or only a Referer) goes through
    assert _answer(client, token, item, "first", csrf, referer=f"http://testserver/r/{token}/").status_code == 303


def test_prompts_are_escaped_and_pages_lock_down(tmp_path: Path) -> None:
    store = _run(tmp_path / "run", n=2, prompt='<script>alert("{i}")</script><img src=x onerror=1>')
    setup = prepare(store.root)
    client = TestClient(create_app(store.root))
    r = client.get(f"/r/{setup.tokens['rater1']}/")
    assert "<script>alert" not in r.text and "&lt;script&gt;alert(" in r.text and "<img src=x" not in r.text
    admin = client.get(f"/a/{setup.admin_token}/").text
    assert "<script>alert" not in admin and "&lt;script&gt;" in admin
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "same-origin"


def test_allowed_hosts_refuse_other_host_names(study) -> None:
    store, setup, _ = study
    client = TestClient(create_app(store.root, allowed_hosts=["127.0.0.1", "localhost"]),
                        base_url="http://127.0.0.1:8765")
    assert client.get(f"/r/{setup.tokens['rater1']}/").status_code == 200
    rebound = TestClient(create_app(store.root, allowed_hosts=["127.0.0.1", "localhost"]),
                         base_url="http://attacker.example:8765")
    assert rebound.get(f"/r/{setup.tokens['rater1']}/").status_code == 400


# -- agreement page -------------------------------------------------------------------------------

def _attrs(tag: str) -> dict[str, str]:
    return {k: html.unescape(v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', tag)}


def _agreement(text: str) -> tuple[dict[str, dict[str, dict[str, str]]], dict[str, str]]:
    table = re.search(r'<table id="agreement">(.*?)</table>', text, re.S).group(1)
    rows = {}
    for source, body in re.findall(r'<tr data-source="([^"]+)">(.*?)</tr>', table, re.S):
        rows[html.unescape(source)] = {a["data-stat"]: a for a in map(_attrs, re.findall(r"<td [^>]*>", body))
                                       if "data-stat" in a}
    alpha = _attrs(re.search(r'<span id="alpha"[^>]*>', text).group(0))
    return rows, alpha


def test_agreement_page_equals_the_statistics_computed_here(study) -> None:
    store, setup, client = study
    admin = f"/a/{setup.admin_token}/"
    text = client.get(admin).text
    assert "no labeller labels in this run" in text and _agreement(text)[0] == {}
    assert _agreement(text)[1]["data-value"] == ""
    pairs = list(setup.pairs)
    # the labeller's labels of the six pairs, and what each rater answers, as label values
    vlm = dict(zip(pairs, [1, 0, 0, -1, 1, 0]))
    _vlm_labels(store, vlm)
    answers = {"rater1": [1, 1, 0, 0, 1, -1], "rater2": [1, 0, 0, -1, 1, 0], "rater3": [1, 1, -1, 0, 0, 1]}
    for rater, values in answers.items():
        token = setup.tokens[rater]
        want = dict(zip(pairs, values))
        for _ in pairs:
            page = _page(client, token)
            first = setup.raters[rater].first[page["item"]]
            v = want[page["item"]]
            choice = "tie" if v == -1 else "first" if (v == 1) == (first == "a") else "second"
            _answer(client, token, page["item"], choice, page["csrf"])
    for rater, values in answers.items():
        assert {p: r.data["value"] for p, r in _human_labels(store, rater).items()} == dict(zip(pairs, values))
    rows, alpha = _agreement(client.get(admin).text)
    assert set(rows) == {"vlm:vlm"}
    # the human reference by hand: the raters' majority per pair, a split vote (the last pair) a tie
    majority = [1, 1, 0, 0, 1, -1]
    machine = [vlm[p] for p in pairs]
    # pairs in the order the page takes them (sorted by their label key's repr)
    keys = {p: (setup.pairs[p]["image_o"], setup.pairs[p]["image_a"], setup.pairs[p]["p_a"]) for p in pairs}
    order = sorted(range(len(pairs)), key=lambda i: repr(keys[pairs[i]]))
    direct = pair_agreement([majority[i] for i in order], [machine[i] for i in order])
    cells = rows["vlm:vlm"]
    for column, name in {"mae": "mae", "kappa": "kappa", "accuracy": "accuracy_tie_as_original",
                         "accuracy_no_ties": "accuracy_no_ties"}.items():
        for attr, field in (("data-value", "estimate"), ("data-low", "low"), ("data-high", "high")):
            assert float(cells[column][attr]) == pytest.approx(direct[name][field], abs=1e-12), (column, attr)
    assert int(cells["n"]["data-value"]) == 6 and int(cells["accuracy_no_ties"]["data-n"]) == direct["n_no_ties"]
    # independently: the ordinal scale (original 0, tie 1, anti 2), sklearn's quadratic kappa, a hand MAE
    scale = {0: 0, -1: 1, 1: 2}
    h, m = np.array([scale[v] for v in majority]), np.array([scale[v] for v in machine])
    assert float(cells["kappa"]["data-value"]) == pytest.approx(cohen_kappa_score(h, m, weights="quadratic"))
    assert float(cells["mae"]["data-value"]) == pytest.approx(np.abs(h - m).mean()) == pytest.approx(4 / 6)
    no_ties = (h != 1) & (m != 1)
    assert float(cells["accuracy_no_ties"]["data-value"]) == pytest.approx((h == m)[no_ties].mean())
    assert float(cells["accuracy"]["data-value"]) == pytest.approx(((h == 2) == (m == 2)).mean())
    # inter-rater alpha over the three raters (raters x pairs on the ordinal scale)
    matrix = np.array([[scale[v] for v in answers[r]] for r in ("rater1", "rater2", "rater3")], dtype=float)
    assert float(alpha["data-value"]) == pytest.approx(krippendorff_alpha(matrix, "ordinal"), abs=1e-12)
    assert int(alpha["data-n"]) == 6
    # the text shows three decimals
    assert f'{float(cells["kappa"]["data-value"]):.3f}' in client.get(admin).text


# -- optional dependency and the command ---------------------------------------------------------

def test_missing_app_extra_is_one_clear_error(study, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _, _ = study
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(MissingExtraError, match=r"aesthetic-audit\[app\]"):
        create_app(store.root)


def test_command_prints_links_on_a_free_port_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    store = _run(tmp_path / "run", n=3)
    store.close()
    code = "import sys; from aesthetic_audit.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "annotate", str(store.root), "--port", "0", "--rater", "ann",
                             "--rater", "bo b"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        assert re.fullmatch(r"rater ann: http://127\.0\.0\.1:(\d+)/r/[\w-]+/", lines[0]), lines
        assert lines[1].startswith("rater bo b: http://127.0.0.1:") and lines[2].startswith("agreement: http://")
        port = int(re.search(r":(\d+)/", lines[0]).group(1))
        assert port != 0
        setup = load_setup(store.root)
        assert lines[0].endswith(f"/r/{setup.tokens['ann']}/") and lines[2].endswith(f"/a/{setup.admin_token}/")
        r = httpx.get(lines[0].split(": ", 1)[1], timeout=10)
        assert r.status_code == 200 and 'id="progress">0 / 3<' in r.text
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from aesthetic_audit.cli import main

    assert main(["annotate", str(tmp_path / "missing")]) == 2
    run = str(_run(tmp_path / "run", n=1).root)
    assert main(["annotate", run, "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "70000" in err and "Traceback" not in err and "warning" not in err
    # another interface than this machine's own is a warning (the bad port stops it before it listens)
    assert main(["annotate", run, "--host", "0.0.0.0", "--port", "70000"]) == 2
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().err


def test_loopback_hosts() -> None:
    from aesthetic_audit.annotate import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "localhost", "LOCALHOST", "::1", "[::1]", "127.0.0.2"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.org", ""]))


@pytest.mark.parametrize("field,value", [("pairs", 5), ("admin_token", 5), ("flagged", "abc"), ("seed", True),
                                         ("csrf_key", "short")])
def test_a_malformed_setup_file_is_one_error_naming_it(tmp_path: Path, field: str, value: Any) -> None:
    """A hand-edited or damaged setup.json is refused when read: no guessable link, no later 500s."""
    from aesthetic_audit.annotate.session import load_setup, setup_path

    store = _run(tmp_path / "run")
    prepare(store.root, pairs=N_PAIRS, n_raters=1, seed=5)
    path = setup_path(store.root)
    raw = json.loads(path.read_text())
    raw[field] = value
    path.write_text(json.dumps(raw))
    with pytest.raises(InputError, match=f"{path}.*corrupt.*{field}") as exc:
        load_setup(store.root)
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="corrupt"):  # resuming reads it too, and says the same
        prepare(store.root, pairs=N_PAIRS, n_raters=1, seed=5)


def test_an_unexpected_error_is_a_short_page_and_one_log_line(study, monkeypatch, capfd) -> None:
    import aesthetic_audit.annotate.session as session

    store, setup, client = study

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(session, "answered", broken)
    r = client.get(f"/r/{setup.tokens['rater1']}/")
    assert r.status_code == 500 and "could not answer" in r.text and "disk on fire" not in r.text
    assert "Traceback" not in capfd.readouterr().err
