"""Errors that carry what went wrong, with which item, and what to do."""

from __future__ import annotations

import importlib


class AuditError(Exception):
    """Base class for errors reported to users without a traceback."""


class ConfigError(AuditError):
    pass


class InputError(AuditError):
    """Bad user input: a file, a line, a caption, an image. ``item`` names it when a stage records it."""

    def __init__(self, message: str, item: str | None = None):
        super().__init__(message)
        self.item = item


class MissingExtraError(AuditError, ImportError):
    def __init__(self, module: str, extra: str, feature: str):
        super().__init__(
            f"{feature} needs the Python package '{module}', which is not installed. "
            f"Install the '{extra}' extra: pip install 'aesthetic-audit[{extra}]'"
        )
        self.module, self.extra = module, extra


def require(module: str, extra: str, feature: str):
    """Import an optional dependency, or raise an error naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if getattr(exc, "name", module) and not str(getattr(exc, "name", "")).startswith(module.split(".")[0]):
            raise
        raise MissingExtraError(module, extra, feature) from exc
