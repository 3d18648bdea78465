"""A run directory: ``manifest.json``, ``records.sqlite`` (WAL) and ``images/`` stored by SHA-256.

Every record has a key that hashes everything that determines it. Inserting an existing key is a
no-op, so a stage that is run twice, or killed and run again, ends with exactly one record per key.
Several processes may write to one run: SQLite's WAL mode serialises writers. Stages write through a
``RecordWriter``, which commits records in chunks (one transaction per chunk, or per second when items
are slow), so a killed worker loses at most the chunk in flight and a rerun recomputes exactly that.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import AuditError, InputError
from ..hashing import bytes_hash, canonical_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key      TEXT PRIMARY KEY,
    stage    TEXT NOT NULL,
    item     TEXT NOT NULL,
    status   TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    data     TEXT NOT NULL,
    error    TEXT,
    created  REAL NOT NULL,
    worker   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_stage ON records (stage, status);
CREATE TABLE IF NOT EXISTS memo (
    key      TEXT PRIMARY KEY,
    value    TEXT NOT NULL
);
"""
# ``memo`` remembers facts that are expensive to recompute and never change for the same key (a source
# photo's stored hash, keyed by the photo's bytes and the settings that made the stored image). It is a
# cache, never a result: deleting it only makes the next run slower.


@dataclass(frozen=True)
class Record:
    """One per-item result. ``data`` must be JSON-serialisable."""

    key: str
    stage: str
    item: str
    data: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None

    @classmethod
    def failed(cls, key: str, stage: str, item: str, reason: str, **data: Any) -> "Record":
        return cls(key=key, stage=stage, item=item, data=data, status="failed", error=reason)


class RunStore:
    def __init__(self, root: str | os.PathLike, *, create: bool = True, readonly: bool = False):
        """``readonly`` opens an existing run for reading only (``status``, ``export``): it writes nothing,
        so it works on a run directory the user may not write to."""
        self.root = Path(root)
        self.readonly = readonly
        create = create and not readonly
        if not self.root.exists():
            if not create:
                raise InputError(f"run directory {self.root} does not exist")
            self.root.mkdir(parents=True)
        elif not self.root.is_dir():
            raise InputError(f"run path {self.root} exists and is not a directory")
        elif not create and not (self.root / "records.sqlite").exists():
            raise InputError(f"{self.root} is not a run directory (no records.sqlite)")
        self.images_dir = self.root / "images"
        if not readonly:
            try:
                self.images_dir.mkdir(exist_ok=True)
            except OSError as exc:
                raise InputError(f"run directory {self.root} is not writable ({exc.strerror}); "
                                 "status and export still read it") from None
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self.worker = f"{os.uname().nodename}:{os.getpid()}"

    # -- database -------------------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        # A connection must not cross a fork: reopen in each process.
        if self._conn is None or self._pid != os.getpid():
            path = self.root / "records.sqlite"
            try:
                conn = self._connect_readonly(path) if self.readonly else self._connect(path)
            except sqlite3.DatabaseError as exc:
                raise InputError(f"{path}: not a readable run database ({exc}); the file is corrupt or not "
                                 "a records.sqlite: restore it from a backup or start a new run") from None
            self._conn, self._pid = conn, os.getpid()
            self.worker = f"{os.uname().nodename}:{os.getpid()}"
        return self._conn

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=60.0, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.executescript(SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _connect_readonly(path: Path) -> sqlite3.Connection:
        uri = path.resolve().as_uri()
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60.0, isolation_level=None)
        try:
            conn.execute("SELECT COUNT(*) FROM records").fetchone()
        except sqlite3.OperationalError:
            # A WAL database needs its -shm file; in a folder nobody may write, read it as immutable
            # (nothing can be writing to it there anyway).
            conn.close()
            conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
            conn.execute("SELECT COUNT(*) FROM records").fetchone()
        return conn

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def put(self, record: Record) -> bool:
        """Store a record; return False when its key was already stored.

        An ok record is final. A failed record is replaced by a later attempt with the same key
        (see ``retry_failed``): by its result, or by the newer failure's reason.
        """
        return self.put_many([record]) == 1

    def put_many(self, records: Iterable[Record]) -> int:
        rows = [
            (r.key, r.stage, r.item, r.status, canonical_json(r.data), r.error, time.time(), self.worker)
            for r in records
        ]
        if not rows:
            return 0
        db = self.db
        before = db.total_changes
        with self._transaction():
            db.executemany(
                "INSERT INTO records (key, stage, item, status, data, error, created, worker) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET status=excluded.status, data=excluded.data, "
                "error=excluded.error, created=excluded.created, worker=excluded.worker "
                "WHERE records.status = 'failed'",
                rows,
            )
        return db.total_changes - before

    def writer(self, *, max_records: int = 512, max_seconds: float = 1.0) -> "RecordWriter":
        """A buffered writer for a stage's records (see ``RecordWriter``)."""
        return RecordWriter(self, max_records=max_records, max_seconds=max_seconds)

    def memo_get(self, key: str) -> str | None:
        try:
            row = self.db.execute("SELECT value FROM memo WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:  # a run made before the table existed, opened read-only
            return None
        return row[0] if row else None

    def memo_put_many(self, items: Iterable[tuple[str, str]]) -> None:
        items = list(items)
        if items and not self.readonly:
            with self._transaction() as db:
                db.executemany("INSERT OR REPLACE INTO memo (key, value) VALUES (?, ?)", items)

    def replace(self, record: Record) -> None:
        """Store ``record`` over whatever its key holds, ok or not, in one transaction. Only for a record
        its author may revise (a rater's answer in the annotation app); stage results stay final (``put``)."""
        row = (record.key, record.stage, record.item, record.status, canonical_json(record.data), record.error,
               time.time(), self.worker)
        with self._transaction() as db:
            db.execute("DELETE FROM records WHERE key = ?", (record.key,))
            db.execute("INSERT INTO records (key, stage, item, status, data, error, created, worker) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

    def delete(self, stage: str, keys: Iterable[str]) -> int:
        """Delete the records of ``stage`` with these keys, ok or not (a rater taking an answer back); one
        transaction. Stages never call this: their results are final."""
        keys = list(keys)
        if not keys:
            return 0
        with self._transaction() as db:
            cur = db.executemany("DELETE FROM records WHERE key = ? AND stage = ?", [(k, stage) for k in keys])
        return cur.rowcount

    def discard_failed(self, keys: Iterable[str]) -> int:
        """Delete failed records with these keys: an item that now succeeds under another key (a fixed
        photo, a corrected row) must not stay listed as failed."""
        keys = list(keys)
        if not keys:
            return 0
        with self._transaction() as db:
            cur = db.executemany("DELETE FROM records WHERE key = ? AND status = 'failed'", [(k,) for k in keys])
        return cur.rowcount

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (the connection runs in autocommit mode, one per statement row otherwise)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def keys(self, stage: str, status: str | None = None) -> set[str]:
        sql, args = "SELECT key FROM records WHERE stage = ?", [stage]
        if status:
            sql += " AND status = ?"
            args.append(status)
        return {row[0] for row in self.db.execute(sql, args)}

    def get(self, key: str) -> Record | None:
        row = self.db.execute(
            "SELECT key, stage, item, data, status, error FROM records WHERE key = ?", (key,)
        ).fetchone()
        return _row_to_record(row) if row else None

    def records(self, stage: str | None = None, status: str | None = "ok") -> Iterator[Record]:
        """Records in insertion order (rowid), optionally filtered by stage and status."""
        sql = "SELECT key, stage, item, data, status, error FROM records"
        where, args = [], []
        if stage:
            where.append("stage = ?")
            args.append(stage)
        if status:
            where.append("status = ?")
            args.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY rowid"
        for row in self.db.execute(sql, args).fetchall():
            yield _row_to_record(row)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for stage, status, n in self.db.execute(
            "SELECT stage, status, COUNT(*) FROM records GROUP BY stage, status ORDER BY stage"
        ):
            out.setdefault(stage, {"ok": 0, "failed": 0})[status] = n
        return out

    # -- images ---------------------------------------------------------------------------------
    @property
    def image_folder(self) -> "ImageFolder":
        """The run's image folder on its own (no database): what a worker on shared storage reads and writes."""
        return ImageFolder(self.root)

    def put_image_bytes(self, data: bytes, suffix: str = ".png") -> str:
        """Store encoded image bytes under their SHA-256; return the hash. Atomic and idempotent."""
        return self.image_folder.put_bytes(data, suffix)

    def put_image(self, image: Any, *, png_level: int | None = None) -> str:
        """Store a PIL image as an RGB PNG whose bytes depend on the pixels and the zlib ``png_level`` only
        (no metadata), so the same pixels always get the same hash in a run. Stages pass their run's
        level (``images.png_level``); None is 6, the level of runs made before the setting existed."""
        return self.image_folder.put_image(image, png_level=png_level)

    def has_image(self, sha: str, suffix: str = ".png") -> bool:
        """Whether the image file is stored (one stat; ``image_path`` lists a folder to find any suffix)."""
        return self.image_folder.file(sha, suffix).is_file()

    def image_path(self, sha: str) -> Path:
        return self.image_folder.path(sha)

    # -- manifest -------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {}
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{self.manifest_path} is corrupt ({exc}); the records are intact: move the file "
                             "aside and pass the config again with -c to rebuild it") from None
        except OSError as exc:
            raise InputError(f"{self.manifest_path}: cannot read ({exc.strerror})") from None
        if not isinstance(manifest, dict):
            raise InputError(f"{self.manifest_path} is corrupt (not a JSON object); move it aside and pass "
                             "the config again with -c to rebuild it")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
        atomic_write_text(self.manifest_path, text)


@dataclass(frozen=True)
class ImageFolder:
    """A run's ``images/`` folder, content-addressed: ``images/<first two hex digits>/<sha256>.<suffix>``.
    It needs no database, so a worker process on another machine that mounts the run (shared storage)
    reads and writes images through it; writes are atomic and idempotent, so workers never clash."""

    root: Path  # the run as it was opened: what messages name
    location: Path | None = None  # where its files are, when that differs (an absolute path for other nodes)

    @property
    def images_dir(self) -> Path:
        return Path(self.location or self.root) / "images"

    def file(self, sha: str, suffix: str = ".png") -> Path:
        return self.images_dir / sha[:2] / f"{sha}{suffix}"

    def path(self, sha: str) -> Path:
        """The stored file of image ``sha`` (whatever its suffix); an InputError naming it if absent. The
        stages store PNGs, so that name is tried first: one stat instead of listing a folder that holds
        thousands of images (a network file system's slowest call)."""
        png = self.file(sha)
        if png.is_file():
            return png
        matches = list((self.images_dir / sha[:2]).glob(f"{sha}.*"))
        if not matches:
            raise InputError(f"image {sha} is not in run {self.root}")
        return matches[0]

    def put_bytes(self, data: bytes, suffix: str = ".png") -> str:
        sha = bytes_hash(data)
        path = self.file(sha, suffix)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        return sha

    def put_image(self, image: Any, *, png_level: int | None = None) -> str:
        from ..images.decode import PNG_LEVEL_BEFORE, encode_png

        return self.put_bytes(encode_png(image, PNG_LEVEL_BEFORE if png_level is None else png_level), ".png")


class RecordWriter:
    """Collects a stage's records and commits them in chunks: one transaction per ``max_records`` records,
    or sooner once ``max_seconds`` have passed since the last commit, so fast stages write at bulk speed
    and slow ones (a model per item) still commit about every second.

    Use it as a context manager: leaving the block commits what is buffered, also when the block raises
    (an interrupt, an endpoint that went down), so nothing already computed is lost. A killed process loses
    at most the buffer, which a rerun computes again. Records are visible to readers only once committed:
    a stage that reads its own records back calls ``flush()`` first.
    """

    def __init__(self, store: RunStore, *, max_records: int = 512, max_seconds: float = 1.0):
        self.store, self.max_records, self.max_seconds = store, max_records, max_seconds
        self.new = 0  # records that changed the store (a key already stored ok is not new)
        self._buffer: list[Record] = []
        self._last = time.monotonic()

    def put(self, record: Record) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= self.max_records or time.monotonic() - self._last >= self.max_seconds:
            self.flush()

    def flush(self) -> int:
        """Commit the buffer; return how many records changed the store."""
        buffer, self._buffer = self._buffer, []
        self._last = time.monotonic()
        written = self.store.put_many(buffer) if buffer else 0
        self.new += written
        return written

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename, so a killed process or a full disk
    leaves the previous file (or none), never a partial one. An OS error (no space, read-only disk)
    becomes one AuditError naming the file, and the temporary file is removed."""
    path = Path(path)
    if path.exists() and not path.is_file():
        # A device or pipe (-o /dev/stdout) cannot be replaced by a rename, and must not be.
        try:
            with open(path, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise AuditError(f"cannot write {path}: {exc.strerror or exc}") from None
        return
    if path.is_symlink():
        path = path.resolve()  # replace the file a link points to, never the link itself
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not reach the disk before the data
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise AuditError(f"cannot write {path}: {exc.strerror or exc}; "
                             "any previous version of the file is unchanged") from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``atomic_write`` for UTF-8 text, written byte for byte (no newline translation)."""
    atomic_write(path, text.encode("utf-8"))


def _row_to_record(row: tuple) -> Record:
    key, stage, item, data, status, error = row
    return Record(key=key, stage=stage, item=item, data=json.loads(data), status=status, error=error)
