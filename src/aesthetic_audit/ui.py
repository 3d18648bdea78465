"""Progress bars and logging: quiet and verbose modes, and a log file in the run directory."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
import sys
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("aesthetic_audit")
_state = {"verbosity": 1}  # 0 quiet, 1 normal, 2 verbose


def quiet() -> bool:
    return _state["verbosity"] == 0


def configure(verbosity: int = 1) -> None:
    """Console logging: quiet shows warnings and errors only, verbose adds debug messages."""
    _state["verbosity"] = verbosity
    log.setLevel(logging.DEBUG)
    for h in [h for h in log.handlers if getattr(h, "_aa_console", False)]:
        log.removeHandler(h)
    console = _Stderr()
    console._aa_console = True  # type: ignore[attr-defined]
    console.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test's capture, a redirected stream), not the
    stream that was current when logging was configured, which may since have been closed."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def log_to_run(run_dir: Path) -> None:
    """Append everything (debug included) to RUN/run.log; one run's log at a time."""
    path = os.path.abspath(Path(run_dir) / "run.log")
    for h in [h for h in log.handlers if getattr(h, "_aa_run", False)]:
        if h.baseFilename == path:
            return
        log.removeHandler(h)
        h.close()
    fh = logging.FileHandler(path, encoding="utf-8")
    fh._aa_run = True  # type: ignore[attr-defined]
    fh.setLevel(logging.DEBUG)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    log.setLevel(logging.DEBUG)


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "item") -> Iterable[T]:
    """A tqdm bar on stderr unless quiet; one step per element of ``iterable``, counted in ``unit``."""
    if _state["verbosity"] == 0 or total == 0:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


@contextmanager
def progress_counter(desc: str = "", *, total: int | None = None, unit: str = "item"):
    """A bar advanced by hand: yields ``update(n)`` (a no-op when quiet). Stages that work in batches
    advance it by the batch's items, so the bar counts the stage's items, not its batches."""
    if _state["verbosity"] == 0 or total == 0:
        yield lambda n=1: None
        return
    from tqdm.auto import tqdm

    with tqdm(desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True) as bar:
        yield bar.update


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Under ``-q``, no progress bars from transformers ("Loading weights", "Loading checkpoint shards") or
    diffusers ("Loading pipeline components") for the block; each library's setting is restored after.
    Only libraries already imported are touched, so this imports nothing."""
    if not quiet():
        yield
        return
    restore = []
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        module = sys.modules.get(name)
        if module is not None and module.is_progress_bar_enabled():
            module.disable_progress_bar()
            restore.append(module)
    try:
        yield
    finally:
        for module in restore:
            module.enable_progress_bar()


def progress_chunks(n: int, size: int, *, desc: str = "", unit: str = "item") -> Iterator[range]:
    """``range(start, stop)`` of each chunk of ``n`` items; the bar counts items, advanced as each chunk
    finishes (when the next one is asked for)."""
    with progress_counter(desc, total=n, unit=unit) as advance:
        for start in range(0, n, size):
            chunk = range(start, min(start + size, n))
            yield chunk
            advance(len(chunk))
