"""The report in a real browser: headless Chromium (the system's ``chromium``) driven by Playwright,
at a desktop width (1400 px) and a phone width (400 px). The summary's numbers and a chart must be
visible, the page must not scroll sideways on the phone (wide tables scroll inside their box, cards
stack), and the gallery filter must hide cards. Screenshots are saved under the test's tmp_path.

Skipped, with the reason, where the ``playwright`` package or a ``chromium`` binary is missing (the
test never downloads a browser)."""

from __future__ import annotations

import pytest

from aesthetic_audit.analysis import analyze
from aesthetic_audit.config import AnalysisConfig
from aesthetic_audit.report import write_report
from browser import requires_chromium
from test_report import _build

pytestmark = requires_chromium


@pytest.fixture(scope="module")
def report_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    store = _build(root / "run", n_pairs=4, strengths=(0.25, 1.0))
    path = write_report(store, analyze(store, AnalysisConfig(bootstrap=100), seed=0), root / "report.html")
    return path.as_uri()


@pytest.mark.parametrize("width", [1400, 400])
def test_key_numbers_and_a_chart_are_visible(browser, report_url, tmp_path, width):
    page = browser.new_page(viewport={"width": width, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(report_url)
    # scores 1 + j + i put I_a above I_o under p_a in every pair: 0% of 4 prefer the original
    sentence = page.get_by_text("pickscore_like preferred the image that ignored the request in 0% [0, 0] of 4 pairs")
    assert sentence.is_visible()
    chart = page.locator('svg[aria-label="Share of pairs preferring the original, per scorer"]')
    chart.scroll_into_view_if_needed()
    assert chart.is_visible()
    box = chart.bounding_box()
    assert box["width"] > 200 and box["x"] + box["width"] <= width + 1
    # nothing scrolls sideways but the tables inside their boxes
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert all(url.startswith(("file:", "data:")) for url in requests)
    page.screenshot(path=str(tmp_path / f"report-{width}.png"), full_page=False)
    chart.screenshot(path=str(tmp_path / f"chart-{width}.png"))
    assert (tmp_path / f"report-{width}.png").stat().st_size > 0
    if width == 400:  # gallery cards stack: one column
        lefts = page.eval_on_selector_all("#gallery .card", "cs => cs.map(c => c.getBoundingClientRect().left)")
        assert len(set(round(x) for x in lefts)) == 1
    page.close()


def test_gallery_filter_hides_cards(browser, report_url):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(report_url)
    cards = page.locator("#gallery .card")
    assert cards.count() == 4
    # labels i % 2 from the "test" labeller: pairs 0 and 2 failed (I_o preferred)
    page.locator('#gallery-filters input[data-filter="failed"]').check()
    assert page.locator("#gallery .card:not([hidden])").count() == 2
    assert page.locator("#gallery-count").inner_text() == "2 of 4 pairs shown"
    page.locator('#gallery-filters select[data-filter="dims"]').select_option("clarity")
    assert page.locator("#gallery .card:not([hidden])").count() == 2
    page.locator('#gallery-filters input[data-filter="failed"]').uncheck()
    assert page.locator("#gallery .card:not([hidden])").count() == 4
    page.close()
