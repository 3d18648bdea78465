"""Where model weights come from, and how they are read safely.

A weight source is a hub repository id + revision (files resolved through the local Hugging Face
cache; offline mode works when the cache is warm) or a local path. Every resolved file's SHA-256 goes
into the scorer's identity and so into every record key and the run manifest; hashes of large files
are remembered in a small sidecar cache keyed by (path, size, mtime).

Safetensors are the default. A pickle checkpoint (.pt/.pth/.bin) can execute code when unpickled, so
it needs an explicit ``allow_pickle=True`` and is then read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuditError, require

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


class WeightsError(AuditError):
    pass


def cache_home() -> Path:
    """Our own cache (file hashes, converted checkpoints): $AESTHETIC_AUDIT_HOME or the platform cache dir."""
    env = os.environ.get("AESTHETIC_AUDIT_HOME")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("aesthetic-audit"))


@dataclass(frozen=True)
class WeightsSource:
    """One checkpoint location (a hub repo + revision, or a local file/folder) and the role its files play.

    ``role`` ("model", "tokenizer", "processor", ...) names the files in record keys: the same bytes get
    the same key whether they come from the hub cache, a local copy or a mirror repo.
    """

    repo: str | None = None
    revision: str | None = None
    local: str | None = None
    subfolder: str | None = None
    role: str | None = None

    def describe(self) -> str:
        if self.local:
            return self.local
        return f"{self.repo}@{self.revision or 'main'}" + (f"/{self.subfolder}" if self.subfolder else "")


@dataclass
class ResolvedFile:
    path: Path
    sha256: str
    source: str


@dataclass
class Resolver:
    """Resolve files of a WeightsSource to local paths, recording what was resolved."""

    offline: bool | None = None
    resolved: dict[str, ResolvedFile] = field(default_factory=dict)

    def file(self, source: WeightsSource, filename: str) -> Path:
        key = f"{source.describe()}/{filename}"
        if key in self.resolved:
            return self.resolved[key].path
        if source.local:
            base = Path(source.local).expanduser()
            path = base if base.is_file() and base.name == Path(filename).name else base / filename
            if not path.is_file():
                raise WeightsError(f"weights file {filename!r} not found at {path}; put the file there "
                                   f"(from {source.repo or 'the official release'}) or fix the local path")
        else:
            path = self._hub(source, filename)
        self.resolved[key] = ResolvedFile(path, file_sha256(path), key)
        return path

    def sha256(self, source: WeightsSource, filename: str) -> str:
        """The SHA-256 of a file, resolving it first if needed."""
        self.file(source, filename)
        return self.resolved[f"{source.describe()}/{filename}"].sha256

    def _hub(self, source: WeightsSource, filename: str) -> Path:
        if not source.repo:
            raise WeightsError(f"no hub repository or local path given for {filename!r}")
        hub = require("huggingface_hub", "models", "loading weights from the Hugging Face hub")
        offline = self.offline if self.offline is not None else os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
        try:
            return Path(hub.hf_hub_download(source.repo, filename, revision=source.revision,
                                            subfolder=source.subfolder, local_files_only=offline))
        except Exception as exc:  # the hub library raises many types: name the file either way
            rev = f" --revision {source.revision}" if source.revision else ""
            sub = f"{source.subfolder}/" if source.subfolder else ""
            raise WeightsError(
                f"cannot get {sub}{filename} of {source.repo}@{source.revision or 'main'} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Fetch it on a machine "
                f"with hub access: `huggingface-cli download {source.repo} {sub}{filename}{rev}` (it lands in the "
                "Hugging Face cache, which works offline), or download it anywhere and pass the folder as the "
                "scorer's `weights` option") from None

    def manifest(self) -> dict[str, Any]:
        return {k: {"path": str(v.path), "sha256": v.sha256} for k, v in self.resolved.items()}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered by (path, size, mtime) so multi-GB checkpoints hash once."""
    stat = path.stat()
    memo_key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    memo = cache_home() / "hashes" / f"{memo_key}.json"
    if stat.st_size > 16 * 2**20 and memo.is_file():
        try:
            return json.loads(memo.read_text())["sha256"]
        except (ValueError, KeyError, OSError):
            pass
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(2**22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if stat.st_size > 16 * 2**20:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            memo.write_text(json.dumps({"path": str(path), "sha256": digest}))
        except OSError:
            pass  # a read-only cache only costs a re-hash
    return digest


def load_state_dict(path: Path, *, allow_pickle: bool = False, key: str | None = None) -> dict[str, Any]:
    """Read a checkpoint's tensors. Safetensors always; pickles only with ``allow_pickle``."""
    torch = require("torch", "models", "loading model weights")
    path = Path(path)
    if path.suffix == ".safetensors":
        st = require("safetensors.torch", "models", "loading safetensors weights")
        state = st.load_file(str(path))
    elif path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise WeightsError(
                f"{path.name} is a pickle checkpoint, which can run code when loaded. Convert it once with "
                "`aesthetic-audit convert` to safetensors, or opt in with the scorer option allow_pickle=true "
                "(it is then read with torch.load(weights_only=True), which refuses arbitrary objects)")
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"cannot read {path} with torch.load(weights_only=True): {exc}") from None
    else:
        raise WeightsError(f"{path.name}: unknown checkpoint format (expected .safetensors, .pt, .pth or .bin)")
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            found = list(state)[:5] if isinstance(state, dict) else type(state).__name__
            raise WeightsError(f"{path.name}: expected a '{key}' entry holding the state dict; found {found}")
        state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path.name}: expected a state dict, got {type(state).__name__}")
    return state


def convert_to_safetensors(src: str | Path, dst: str | Path, *, key: str | None = None) -> Path:
    """Write a pickle checkpoint's tensors as safetensors (read with ``torch.load(weights_only=True)``).

    Running this is the explicit opt-in to reading the pickle once; afterwards the scorers load the
    safetensors file without ``allow_pickle``. ``key`` names the entry holding the state dict, if any.
    """
    st = require("safetensors.torch", "models", "writing safetensors")
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_file():
        raise WeightsError(f"no checkpoint file at {src}")
    state = load_state_dict(src, allow_pickle=True, key=key)
    if dst.suffix != ".safetensors":
        dst = dst / (src.stem + ".safetensors")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    st.save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp),
                 metadata={"format": "pt", "converted_from": src.name, "source_sha256": file_sha256(src)})
    tmp.replace(dst)
    return dst
