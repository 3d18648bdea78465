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


class EndpointUnreachable(AuditError):
    """Several items in a row could not connect: the endpoint is down or misconfigured. Defined here, not
    in the client, so stages can stop on it without importing the HTTP stack."""


class EngineError(AuditError):
    """The engine itself cannot run work (Ray cannot start, the cluster is gone): it stops the command,
    whichever backend was running, and is no fault of the backend."""


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
    except ModuleNotFoundError as exc:
        # Only the module itself (or a parent package) missing means the extra is not installed; a
        # broken install (a missing shared library, a dependency of the package) surfaces as it is.
        parts = module.split(".")
        if exc.name not in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            raise
        raise MissingExtraError(module, extra, feature) from exc
