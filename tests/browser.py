"""The system Chromium driven by Playwright, for the browser tests (the report and the annotation app).

Importing this module skips the importing test module where Playwright is missing; ``requires_chromium``
skips it where no Chromium is on PATH (Debian's ``chromium`` package; never ``playwright install``).
The ``browser`` fixture (conftest.py) opens one headless browser per test module with ``open_browser``.
"""

from __future__ import annotations

import contextlib
import shutil
from typing import Any, Iterator

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
requires_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


@contextlib.contextmanager
def open_browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()
