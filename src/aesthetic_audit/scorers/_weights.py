"""Where model weights come from, and how they are read safely.

A weight source is a hub repository id + revision (files resolved through the local Hugging Face
cache; offline mode works when the cache is warm) or a local path. Every resolved file's SHA-256 goes
into the scorer's identity and so into every record key and the run manifest; hashes of large files
are remembered in a small sidecar cache keyed by (path, size, mtime).

Missing files are reported all at once, with the ``hf download`` commands that fetch them. The hub is
asked only when it can answer: with HF_HUB_OFFLINE set, or when one short request finds it unreachable,
files come from the cache alone (``hf_hub_download`` would otherwise retry a dead connection for ~25 s
per file).

Safetensors are the default. A pickle checkpoint (.pt/.pth/.bin) can execute code when unpickled, so
it needs an explicit ``allow_pickle=True`` and is then read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuditError, require
from ..ui import log

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
PROBE_TIMEOUT_S = 3.0  # one request that tells a reachable hub from an unreachable one
COMMIT = re.compile(r"[0-9a-f]{40}")
# Files that belong with a checkpoint in its folder (configs, tokenizers): `convert` copies them along.
COMPANION_FILES = ("config.json", "med_config.json", "preprocessor_config.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class WeightsError(AuditError):
    pass


@dataclass(frozen=True)
class MissingFile:
    source: "WeightsSource"
    filename: str  # with the source's subfolder, as `hf download` names it
    reason: str


class MissingWeightsError(WeightsError):
    """Weight files that could not be found: every one of a scorer's, with how to get each."""

    def __init__(self, missing: list[MissingFile]):
        self.missing = missing
        super().__init__(describe_missing(missing))


def describe_missing(missing: list[MissingFile]) -> str:
    """One line: the missing files per local folder and per hub repo, with the `hf download` commands."""
    local: dict[tuple[str, str | None, str | None], list[str]] = {}
    hub: dict[tuple[str, str | None], list[str]] = {}
    reasons: dict[str, None] = {}
    for m in missing:
        if m.source.local:
            local.setdefault((m.source.local, m.source.repo, m.source.revision), []).append(m.filename)
        else:
            hub.setdefault((m.source.repo or "?", m.source.revision), []).append(m.filename)
            reasons.setdefault(m.reason)
    parts = []
    for (folder, repo, rev), names in local.items():
        fetch = f": {download_command(repo, rev, names)} --local-dir {folder}" if repo else ""
        parts.append(f"{', '.join(names)} not found in {folder} (put the files there{fetch}, or fix the path)")
    if hub:
        listed = "; ".join(f"{repo}@{rev or 'main'}: {', '.join(names)}" for (repo, rev), names in hub.items())
        commands = " and ".join(f"`{download_command(repo, rev, names)}`" for (repo, rev), names in hub.items())
        parts.append(f"not in the Hugging Face cache: {listed} ({'; '.join(reasons)}). Fetch them where the hub "
                     f"is reachable with {commands} (into the Hugging Face cache, which is read offline too; "
                     "copy it along or point HF_HOME at it), or add --local-dir DIR and pass DIR as the scorer's "
                     "weights option (README: Reward models)")
    return f"missing weight files: {'; '.join(parts)}"


def download_command(repo: str, revision: str | None, names: list[str]) -> str:
    """The huggingface_hub CLI command that fetches ``names`` of ``repo`` at ``revision``."""
    return f"hf download {repo} {' '.join(names)}" + (f" --revision {revision}" if revision else "")


def hub_offline_env() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read when asked (not when huggingface_hub was imported)."""
    return any(os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_constants() -> Any:
    """huggingface_hub's settings module; imported by name, since some versions of the package leave it
    out of ``import huggingface_hub`` until something else imports it."""
    return require("huggingface_hub.constants", "models", "loading weights from the Hugging Face hub")


@functools.lru_cache(maxsize=None)
def hub_problem(endpoint: str) -> str | None:
    """Why the hub at ``endpoint`` cannot be reached (None when it answers at all), from one short request,
    once per process and endpoint."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # any failure to get an answer means: do not wait on this hub
        return f"{type(exc).__name__}: {first_line(exc)}"
    return None


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


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
                raise MissingWeightsError([MissingFile(source, filename, "not found")])
        else:
            path = self._hub(source, filename)
        self.resolved[key] = ResolvedFile(path, file_sha256(path), key)
        return path

    def files(self, wanted: list[tuple[WeightsSource, str]]) -> list[Path]:
        """Resolve every file, or raise one error naming every file that is missing."""
        paths, missing = [], []
        for source, filename in wanted:
            try:
                paths.append(self.file(source, filename))
            except MissingWeightsError as exc:
                missing += exc.missing
        if missing:
            raise MissingWeightsError(missing)
        return paths

    def sha256(self, source: WeightsSource, filename: str) -> str:
        """The SHA-256 of a file, resolving it first if needed."""
        self.file(source, filename)
        return self.resolved[f"{source.describe()}/{filename}"].sha256

    def _hub(self, source: WeightsSource, filename: str) -> Path:
        if not source.repo:
            raise WeightsError(f"no hub repository or local path given for {filename!r}")
        hub = require("huggingface_hub", "models", "loading weights from the Hugging Face hub")
        name = f"{source.subfolder}/{filename}" if source.subfolder else filename
        if source.revision and COMMIT.fullmatch(source.revision):
            # a pinned file already cached needs no hub (hf_hub_download would read only the cache, too)
            cached = hub.try_to_load_from_cache(source.repo, name, revision=source.revision)
            if isinstance(cached, str):
                return Path(cached)
        offline = self._offline_reason()
        try:
            return Path(hub.hf_hub_download(source.repo, filename, revision=source.revision,
                                            subfolder=source.subfolder, local_files_only=offline is not None))
        except Exception as exc:  # the hub library raises many types: name the file either way
            reason = offline or f"the download failed: {type(exc).__name__}: {first_line(exc)}"
            raise MissingWeightsError([MissingFile(source, name, reason)]) from None

    def _offline_reason(self) -> str | None:
        """Why files come from the cache alone (None: the hub is asked)."""
        if self.offline:
            return "hub access is off: the scorer's offline option"
        if self.offline is None and (hub_offline_env() or hub_constants().HF_HUB_OFFLINE):
            return "hub access is off: HF_HUB_OFFLINE is set"
        if self.offline is None:
            problem = hub_problem(hub_constants().ENDPOINT)
            if problem:
                return f"the hub is unreachable ({problem}); set HF_HUB_OFFLINE=1 to skip this check"
        return None

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
        try:
            state = st.load_file(str(path))
        except Exception as exc:  # SafetensorError (bad header, truncated data), OSError: the file is unusable
            raise WeightsError(f"cannot read {path} as safetensors (damaged or incomplete? download it again): "
                               f"{type(exc).__name__}: {first_line(exc)}") from None
    elif path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise WeightsError(
                f"{path.name} is a pickle checkpoint, which can run code when loaded. Convert it once with "
                "`aesthetic-audit convert` to safetensors, or opt in with the scorer option allow_pickle=true "
                "(it is then read with torch.load(weights_only=True), which refuses arbitrary objects)")
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # a refused object, or a damaged or truncated file
            raise WeightsError(f"cannot read {path} with torch.load(weights_only=True) (damaged or incomplete, or "
                               f"holding more than tensors): {type(exc).__name__}: {first_line(exc)}") from None
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


def read_json(path: Path) -> Any:
    """A weights folder's JSON file (a model or tokenizer config); a damaged one is an error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise WeightsError(f"cannot read {path} as JSON (damaged or incomplete? download it again): "
                           f"{first_line(exc)}") from None


def convert_to_safetensors(src: str | Path, dst: str | Path, *, key: str | None = None) -> Path:
    """Write a pickle checkpoint's tensors as safetensors (read with ``torch.load(weights_only=True)``).

    Running this is the explicit opt-in to reading the pickle once; afterwards the scorers load the
    safetensors file without ``allow_pickle``. ``key`` names the entry holding the state dict, if any.
    The files that belong with the checkpoint in its folder (``COMPANION_FILES``: ImageReward's
    med_config.json, tokenizer files, ...) are copied next to the output, so the output folder is
    one a scorer's ``weights`` option accepts as it is.
    """
    require("safetensors.torch", "models", "writing safetensors")  # a missing extra is said before any reading
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_file():
        raise WeightsError(f"no checkpoint file at {src}")
    state = load_state_dict(src, allow_pickle=True, key=key)
    import torch  # present: load_state_dict required it

    nested = [k for k, v in state.items() if isinstance(v, dict)]
    other = [k for k, v in state.items() if not isinstance(v, (dict, torch.Tensor))]
    if nested or other:  # a wrapped checkpoint ({"state_dict": ...}) or training state beside the weights
        hint = f"; the tensors may be under --key {nested[0]}" if nested else ""
        raise WeightsError(f"{src.name}: not every entry is a tensor ({', '.join(map(repr, (nested + other)[:4]))}"
                           f"{hint})")
    if dst.suffix != ".safetensors":
        dst = dst / (src.stem + ".safetensors")
    copies = companions(src.parent, dst.parent)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(state, dst, src)
    for companion, target in copies:
        shutil.copyfile(companion, target)
        log.info("copied %s beside it", companion.name)
    return dst


def write_safetensors(state: dict[str, Any], dst: Path, src: Path) -> None:
    """``state`` as a safetensors file at ``dst`` (written beside it, then renamed), with its source's name
    and SHA-256 as metadata. safetensors creates files owner-only (0600); a converted model usually lives in
    a shared folder, so the file gets the mode the user's umask gives any new file."""
    st = require("safetensors.torch", "models", "writing safetensors")
    tmp = dst.with_name(dst.name + ".partial")
    st.save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp),
                 metadata={"format": "pt", "converted_from": src.name, "source_sha256": file_sha256(src)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp.replace(dst)


def companions(src_dir: Path, dst_dir: Path) -> list[tuple[Path, Path]]:
    """The companion files in ``src_dir`` still to copy to ``dst_dir``; a different file already there is an
    error (checked before anything is written)."""
    todo = []
    for name in COMPANION_FILES:
        src, dst = src_dir / name, dst_dir / name
        if not src.is_file() or (dst.exists() and src.samefile(dst)):
            continue
        if dst.exists() and dst.read_bytes() != src.read_bytes():
            raise WeightsError(f"{dst} exists and differs from {src}, which belongs with the checkpoint: "
                               "remove it or convert into another folder")
        if not dst.exists():
            todo.append((src, dst))
    return todo
