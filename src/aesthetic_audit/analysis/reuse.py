"""Reuse analysis.json and report.html when nothing they are made from has changed.

Rerunning a finished run (``demo`` twice, ``run`` once more after a crash was resumed) would otherwise
redo every bootstrap and redraw every chart for the same bytes: most of a rerun's time. So each set of
derived files is remembered in the run's memo table, under a digest of everything it is made from,
with the SHA-256 of each file written. It is reused only when the digest matches and every file still
has those bytes: a deleted, edited or half-copied file is made again. Files are remembered under the
manifest as the command that wrote them leaves it (the analysis records itself in the manifest after
writing), which is what the next command finds when nothing changed in between, and under the records
as they were before the output read them: a record that another process adds meanwhile can only make
the next command recompute, never reuse files that lack it.

``inputs_digest`` is a SHA-256 over:

- each record's ``(key, status, created)``, in insertion (rowid) order (``records_digest``). Records are the analysis's only
  data. An ok record is never rewritten; a failed one is replaced by a retry, whose result or newer
  failure always gets a new ``created``, and ``discard_failed`` deletes rows; each of these changes the
  digest. Counts per stage and status would miss a failed record replaced by another failure (the
  report lists its reason), and SQLite's ``data_version`` is only meaningful within one connection, so
  neither is used. The order matters: of two records of the same pair, the analysis keeps the first.
  Reading three short columns costs milliseconds per thousand records, no JSON parsing.
- the manifest, less ``updated`` and ``history``, which every stage rewrites: the backends whose records
  count as current, the run's config and the versions that the methods section shows;
- the config this command runs with: the analysis settings and seed, and the whole config, which the
  manifest holds once the command has run (a flag given to this command counts before that);
- the software that runs: the package version, the size and modification time of each of its modules
  (an edited installation recomputes too), the Python version and the tracked dependency versions;
- what the analysis reads from the registered scorer classes (prompt-aware, reward model), which an
  installed or removed plugin can change;
- whatever the caller adds: the report adds the run folder's name (its title) and its analysis.

Not in it, because nothing derived reads them: the dimension catalogue (the records carry each pair's
dimension keys) and the image files (stored under the hash of their bytes, never rewritten).
The report's "report date" is the date it was made, so a reused report keeps its own.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Iterable

from .. import __version__
from ..hashing import canonical_json
from ..registry import available
from ..store.manifest import dependency_versions
from ..store.run import RunStore

_VOLATILE = ("updated", "history")  # manifest fields that every stage rewrites


def records_digest(store: RunStore) -> str:
    """SHA-256 (hex) of every record's ``(key, status, created)`` in rowid order (see the module docstring).

    Take it before reading the records for the output: a record another process adds meanwhile then
    makes the next digest differ, so files can only be remembered under a state older than they are."""
    h = hashlib.sha256()
    for key, status, created in store.db.execute("SELECT key, status, created FROM records ORDER BY rowid"):
        h.update(f"{key}\t{status}\t{created!r}\n".encode())
    return h.hexdigest()


def inputs_digest(store: RunStore, config: Any, records: str, **extra: Any) -> str:
    """SHA-256 (hex) of everything a derived file of ``store`` is made from (see the module docstring):
    ``records`` from ``records_digest``, ``config`` the run's resolved config object, ``extra`` anything
    else the caller's output reads."""
    manifest = {k: v for k, v in store.read_manifest().items() if k not in _VOLATILE}
    scorers = {name: [getattr(cls, "prompt_aware", None), getattr(cls, "reward_model", True)]
               for name, cls in available("scorers").items()}
    return hashlib.sha256(canonical_json({
        "records": records, "manifest": manifest, "config": config, "software": _software(),
        "scorers": scorers, "extra": extra}).encode()).hexdigest()


@functools.cache  # once per process: the analysis and the report both ask, and the answer cannot change
def _software() -> dict[str, Any]:
    package = Path(__file__).resolve().parent.parent
    modules = sorted((str(p.relative_to(package)), st.st_size, st.st_mtime_ns)
                     for p in package.rglob("*.py") for st in [p.stat()])
    return {"version": __version__, "modules": modules, "python": sys.version,
            "dependencies": dependency_versions()}


def reusable(store: RunStore, what: str, digest: str) -> bool:
    """Whether the files remembered for ``what`` under ``digest`` are all there with the same bytes."""
    remembered = store.memo_get(_memo_key(what, digest))
    if remembered is None:
        return False
    files = json.loads(remembered)
    return bool(files) and all(_file_hash(store.root / name) == sha for name, sha in files.items())


def remember(store: RunStore, what: str, digest: str, paths: Iterable[Path]) -> None:
    """Record that ``paths`` (inside the run folder) were just written for ``what`` from ``digest``."""
    files = {str(Path(p).relative_to(store.root)): _file_hash(Path(p)) for p in paths}
    store.memo_put_many([(_memo_key(what, digest), canonical_json(files))])


def _memo_key(what: str, digest: str) -> str:
    # The digest is in the key: a run that goes back to an earlier state (a setting changed and changed
    # back) finds that state's files under it.
    return f"derived:{what}:{digest}"


def _file_hash(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
