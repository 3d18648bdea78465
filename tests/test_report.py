"""The HTML report: one offline file, escaped text, embedded thumbnails, every section present."""

from __future__ import annotations

import base64
import io
import re

import pytest
from PIL import Image

from aesthetic_audit.analysis import analyze
from aesthetic_audit.config import AnalysisConfig
from aesthetic_audit.records import IMAGES, JUDGE, SCORE, image_pair_key, judge_key, score_key
from aesthetic_audit.report import write_report
from aesthetic_audit.store.run import Record, RunStore

EVIL = "<script>alert('x')</script>"


def _build(root, n_pairs: int = 3, n_failures: int = 2) -> RunStore:
    store = RunStore(root)
    store.write_manifest({"config_hash": "cafe1234", "package": {"name": "aesthetic-audit", "version": "0.1.0"}, "created": "2026-01-02"})
    records = []
    for i in range(n_pairs):
        # A large I_o checks that thumbnails are downscaled.
        sha_o = store.put_image(Image.new("RGB", (600, 400), (200, 40 * i, 90)))
        sha_a = store.put_image(Image.new("RGB", (64, 48), (10, 40 * i, 30)))
        p_o, p_a = f"a cat number {i}", f"a murky cat {EVIL} number {i}"
        key = image_pair_key(backend={"name": "editor"}, inputs={"i": i}, seed=0)
        records.append(Record(key=key, stage=IMAGES, item=f"pair{i}", data={
            "image_pair_id": key, "pair_id": f"p{i}", "p_o": p_o, "p_a": p_a, "dims": ["clarity", "emotion"],
            "image_o": sha_o, "image_a": sha_a, "backend": "editor", "strength": 0.5, "transforms": [],
            "label": {"value": i % 2, "source": "test"}, "model": None, "source_item": None}))
        for scorer, prompt_aware in (("pickscore_like", True), ("aesthetic&blind", False)):
            combos = [(sha_o, p_o), (sha_o, p_a), (sha_a, p_o), (sha_a, p_a)] if prompt_aware else \
                [(sha_o, None), (sha_a, None)]
            for j, (image, prompt) in enumerate(combos):
                records.append(Record(
                    key=score_key(scorer={"name": scorer}, image=image, prompt=prompt), stage=SCORE,
                    item=f"{scorer}:{image[:8]}", data={
                        "scorer": scorer, "image": image, "prompt": prompt, "score": 1.0 + j + i,
                        "tokens": 7, "truncated": False, "higher_is_better": True}))
        for sha, j in ((sha_o, 1.8), (sha_a, 0.4)):
            records.append(Record(key=judge_key(judge={"name": "classical"}, image=sha, dims=["clarity"]),
                                  stage=JUDGE, item=sha[:8],
                                  data={"judge": "classical", "image": sha, "scores": {"clarity": j},
                                        "covered": ["clarity"]}))
    for k in range(n_failures):
        records.append(Record.failed(f"fail{k}", SCORE, f"item-{k}", f"error <b>{k}</b> see https://example.org"))
    store.put_many(records)
    return store


@pytest.fixture
def report(tmp_path):
    store = _build(tmp_path / "run")
    analysis = analyze(store, AnalysisConfig(bootstrap=100), seed=0)
    path = write_report(store, analysis, tmp_path / "out" / "report.html")
    return path, path.read_text(encoding="utf-8"), analysis


def test_one_offline_file(report, tmp_path):
    path, text, _ = report
    assert path.exists() and list(path.parent.iterdir()) == [path]
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.IGNORECASE)
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert "<script" not in text  # no scripts at all, including the one in the prompts


def test_user_text_is_escaped(report):
    _, text, _ = report
    assert "a murky cat &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; number 0" in text
    assert "aesthetic&amp;blind" in text
    assert "error &lt;b&gt;1&lt;/b&gt;" in text


def test_summary_heatmap_and_run_info(report):
    _, text, analysis = report
    for name in ("pickscore_like", "aesthetic&amp;blind", "classical"):
        assert name in text
    assert analysis["scorers"]["pickscore_like"]["n"] == 3
    assert "<td>3</td>" in text  # n per scorer
    assert "cafe1234" in text and "2026-01-02" in text
    # heat-map cells carry a colour and a tooltip with the interval and n
    assert re.search(r'class="cell" style="background: rgb\(\d+, \d+, \d+\)[^"]*" title="pickscore_like · '
                     r'clarity: [0-9.]+ \[[0-9.]+, [0-9.]+\], n = 3"', text)
    for heading in ("Reward models", "Per dimension", "Per edit strength", "Judge", "Safety", "Gallery",
                    "Failures"):
        assert f"<h2>{heading}</h2>" in text


def test_thumbnails_are_embedded_and_small(report):
    _, text, _ = report
    uris = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == 6  # three pairs, two images each
    sizes = [Image.open(io.BytesIO(base64.b64decode(u))).size for u in uris]
    assert (256, 171) in sizes and max(max(s) for s in sizes) <= 256


def test_failures_listed_and_capped(tmp_path):
    store = _build(tmp_path / "run", n_pairs=1, n_failures=7)
    analysis = analyze(store, AnalysisConfig(bootstrap=100))
    text = write_report(store, analysis, tmp_path / "r.html", max_failures=5).read_text(encoding="utf-8")
    assert "item-0" in text and "item-4" in text and "item-5" not in text
    assert "and 2 more" in text
    assert "<td>7</td>" in text  # failed count for the score stage


def test_missing_image_does_not_break_the_report(tmp_path):
    store = _build(tmp_path / "run", n_pairs=1, n_failures=0)
    for path in store.images_dir.rglob("*.png"):
        path.unlink()
    text = write_report(store, analyze(store, AnalysisConfig(bootstrap=100)), tmp_path / "r.html").read_text()
    assert "image unavailable" in text and "No failed items." in text
