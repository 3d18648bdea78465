"""Tiny random-weight models written in each scorer's official layout, for the tests.

Each module here defines ``BUILDERS = {scorer_name: build}``; ``build(tmp_path) -> dict`` writes the
files a user would download (same state-dict key names, config and tokenizer files) under tmp_path
and returns the scorer options that load them through the user-facing path (e.g. {"weights": dir}).
The contract test runs every registered scorer that needs weights through its builder.
"""

import importlib
import pkgutil


def builders() -> dict:
    out = {}
    for info in pkgutil.iter_modules(__path__, __name__ + "."):
        out.update(getattr(importlib.import_module(info.name), "BUILDERS", {}))
    return out
