import os
import sys

import pytest

# Tests never reach a model hub: fail fast instead of retrying downloads.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from aesthetic_audit.cli import main


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


PY = sys.executable


@pytest.fixture(scope="module")
def browser():
    """One headless system Chromium per test module (tests/browser.py; its importers skip without one)."""
    from browser import open_browser

    with open_browser() as chromium:
        yield chromium
