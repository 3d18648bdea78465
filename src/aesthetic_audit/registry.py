"""One registry for every backend kind, filled by a decorator.

Built-in backends live one per module in their stage package (``scorers/``, ``judges/``,
``images/editor/``, ``prompts/rewriters/``). Their modules import heavy dependencies lazily, so
discovering them never imports torch. Third-party packages add backends through the entry-point
group ``aesthetic_audit.<kind>`` (for example ``aesthetic_audit.scorers``); the entry point names a
module or object whose import registers the backend with the same decorator.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any, Callable

from .errors import ConfigError

KINDS = {
    "scorers": "aesthetic_audit.scorers",
    "judges": "aesthetic_audit.judges",
    "transforms": "aesthetic_audit.images.editor",
    "rewriters": "aesthetic_audit.prompts.rewriters",
    "generators": "aesthetic_audit.images.generators",
    "labellers": "aesthetic_audit.labels",
}

_REGISTRY: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
_DISCOVERED: set[str] = set()


def register(kind: str, name: str | None = None) -> Callable[[Any], Any]:
    """Class/function decorator: ``@register("scorers", "brisque")``. The name defaults to ``obj.name``."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown registry kind {kind!r}; kinds: {sorted(_REGISTRY)}")

    def deco(obj: Any) -> Any:
        key = name or getattr(obj, "name")
        existing = _REGISTRY[kind].get(key)
        if existing is not None and existing is not obj:
            raise ValueError(f"{kind} name {key!r} registered twice ({existing!r} and {obj!r})")
        _REGISTRY[kind][key] = obj
        return obj

    return deco


def discover(kind: str) -> None:
    """Import every built-in module of a kind and every entry point of its group, once."""
    if kind in _DISCOVERED:
        return
    _DISCOVERED.add(kind)
    package = importlib.import_module(KINDS[kind])
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(info.name)
    for ep in _entry_points().select(group=f"aesthetic_audit.{kind}"):
        ep.load()


@functools.cache
def _entry_points():
    # Read once: each lookup scans every installed distribution's metadata (about 10 ms), and the
    # command line discovers all six kinds to write its help.
    return entry_points()


def available(kind: str) -> dict[str, Any]:
    discover(kind)
    return dict(sorted(_REGISTRY[kind].items()))


def get(kind: str, name: str) -> Any:
    found = available(kind)
    if name not in found:
        raise ConfigError(f"unknown {kind[:-1]} {name!r}; available: {', '.join(found) or 'none'}")
    return found[name]
