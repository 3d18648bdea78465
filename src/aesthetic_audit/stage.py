"""What every stage returns (counts of new, cached and failed items, and counted warnings), and how a stage
finds the items it still has to compute without holding every input record or item in memory.

A stage reads its inputs a page at a time (``stored_fields`` reads only the fields it needs, with SQLite's
``json_extract``, so no record's full JSON is parsed in Python), keys each item (``records.SpecTemplate``),
and offers it to a ``Pending``, which checks the keys against those the stage has stored (``StoredKeys``,
loaded once) and spools the items still to do to a temporary table of the run's database (on disk); the
stage then works through them in batches and writes through ``RunStore.writer``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from .store import RunStore

LOOKUP_CHUNK = 500  # items offered to a Pending between two checks against the store
PAGE = 2048  # input records read per query
# A batch that took this long came from a slow backend (a VLM, a large model): the stage commits its
# records at once, so that a stall in the next batch (a dead endpoint, a kill) cannot hold them.
SLOW_BATCH_S = 0.25
_FETCH = 8192  # keys fetched per round trip while loading


class StoredKeys:
    """The keys a stage has stored, ok and failed, loaded with one sequential scan of its records and
    held as sorted arrays of their 32 bytes (keys are SHA-256 hex digests; any other key is kept as it
    is), so that each later check is a vectorised binary search: about a quarter of the memory of a
    set of the keys, and several times faster than asking SQLite for each key."""

    def __init__(self, store: RunStore, stage: str):
        self._sorted: dict[str, np.ndarray] = {}
        self._other: dict[str, str] = {}
        for status in ("ok", "failed"):
            parts = []
            cursor = store.db.execute("SELECT key FROM records WHERE stage = ? AND status = ?", (stage, status))
            while rows := cursor.fetchmany(_FETCH):
                keys = [k for (k,) in rows]
                digests = hex_digests(keys, 32)
                if digests is None:  # some keys are not SHA-256 digests (records written by hand)
                    digests = hex_digests([k for k in keys if hex_digests([k], 32) is not None], 32)
                    self._other.update((k, status) for k in keys if hex_digests([k], 32) is None)
                parts.append(digests)
            self._sorted[status] = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype="S32")

    def status(self, keys: Sequence[str]) -> list[str | None]:
        """"ok", "failed" or None (not stored) for each key."""
        digests = hex_digests(keys, 32)
        if digests is not None:
            return [st or None for st in self.status_of(digests)]
        out = []  # not all of them SHA-256 keys (records written by hand): one at a time
        for key in keys:
            digest = hex_digests([key], 32)
            out.append(self._other.get(key) if digest is None else self.status_of(digest)[0] or None)
        return out

    def status_of(self, digests: np.ndarray) -> np.ndarray:
        """The status of each 32-byte key digest (an ``S32`` array): "ok", "failed" or ""."""
        out = np.full(len(digests), "", dtype="<U6")
        for status, table in self._sorted.items():
            out[find(table, digests)[0]] = status
        return out


def hex_digests(texts: Sequence[str], size: int) -> np.ndarray | None:
    """Lower-case hex strings of ``size`` bytes each as an ``S<size>`` array of those bytes (parsed in one
    call); None when any of them is not one."""
    if set(map(len, texts)) - {2 * size}:
        return None
    joined = "".join(texts)
    try:
        raw = bytes.fromhex(joined)
    except ValueError:
        return None
    # fromhex also reads upper case and skips spaces: only the text hex() writes back is a key's.
    return np.frombuffer(raw, dtype=f"S{size}") if raw.hex() == joined else None


def find(table: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``queries``, whether the sorted array ``table`` holds it and at which index (digests as
    ``S16`` or ``S32`` arrays). The binary search runs on their first 8 bytes as integers, which numpy
    compares many times faster than byte strings; a query whose first 8 bytes some other entry shares
    (a 1 in 2**64 chance per pair) is searched again in full."""
    if not len(table) or not len(queries):
        return np.zeros(len(queries), dtype=bool), np.zeros(len(queries), dtype=np.int64)
    step = table.dtype.itemsize // 8
    head_t = np.ascontiguousarray(table).view(">u8")[::step]
    head_q = np.ascontiguousarray(queries).view(">u8")[::step]
    at = np.minimum(np.searchsorted(head_t, head_q), len(table) - 1)
    found = table[at] == queries
    clash = ~found & (head_t[at] == head_q)
    if clash.any():
        at[clash] = np.minimum(np.searchsorted(table, queries[clash]), len(table) - 1)
        found[clash] = table[at[clash]] == queries[clash]
    return found, at


def stored_fields(store: RunStore, stage: str, fields: Sequence[str], *, defaults: Mapping[str, Any] | None = None
                  ) -> Iterator[tuple[str, Sequence[Any]]]:
    """``(key, values of the fields)`` of every ok record of ``stage``, in the order stored (as
    ``store.records``). Only these fields are read (SQLite extracts them). A field a record lacks reads
    as ``defaults[field]`` (a string or a number), else None, as ``dict.get`` would."""
    defaults = defaults or {}
    paths = [f'$."{f}"' for f in fields]
    values, args = [], []
    for f, path in zip(fields, paths):
        if f in defaults:
            values.append(f"CASE WHEN json_type(data, '{path}') IS NULL THEN ? ELSE json_extract(data, '{path}') END")
            args.append(defaults[f])
        else:
            values.append(f"json_extract(data, '{path}')")
    # json_extract gives strings and nulls as they are; a record with another type in one of the fields
    # (a number, a list) is parsed whole instead, so that every value is what json.loads gives.
    plain = " AND ".join(f"IFNULL(json_type(data, '{p}'), 'null') IN ('text', 'null')" for p in paths)
    sql = (f"SELECT rowid, key, {plain}, {', '.join(values)} FROM records WHERE stage = ? AND status = 'ok' "
           f"AND rowid > ? ORDER BY rowid LIMIT {PAGE}")
    last = 0
    while True:
        rows = store.db.execute(sql, (*args, stage, last)).fetchall()
        for row in rows:
            if row[2]:
                yield row[1], row[3:]
            else:
                data = json.loads(store.db.execute("SELECT data FROM records WHERE rowid = ?", (row[0],)).fetchone()[0])
                yield row[1], [data.get(f, defaults.get(f)) for f in fields]
        if len(rows) < PAGE:
            return
        last = rows[-1][0]


@dataclass
class StageSummary:
    stage: str
    total: int = 0
    new: int = 0
    cached: int = 0
    failed: int = 0
    lost: int = 0  # items of batches whose worker was lost (Ray engine): not stored, a rerun computes them
    warnings: list[str] = field(default_factory=list)
    # What the summary line suggests after failures; stages without --retry-failed say what works for them.
    retry_hint: str = "rerun with --retry-failed to try them again (`status RUN` lists them)"

    @property
    def record_stage(self) -> str:
        return self.stage.split(":")[0]

    def pending(self, keys: Iterable[str], store: RunStore, retry_failed: bool = False) -> set[str]:
        """Which keys still need computing; counts the others as cached (ok) or failed (stored failed,
        skipped unless ``retry_failed``)."""
        keys = list(keys)
        status = StoredKeys(store, self.record_stage).status(keys)
        return {key for key, st in zip(keys, status) if not self.done(st, retry_failed)}

    def done(self, status: str | None, retry_failed: bool) -> bool:
        """Whether an item whose key is stored with ``status`` counts as done (cached or failed)."""
        if status == "ok":
            self.cached += 1
            return True
        if status == "failed" and not retry_failed:
            self.failed += 1
            return True
        return False

    def line(self) -> str:
        parts = [f"{self.stage}: {self.total} items", f"{self.new} new", f"{self.cached} cached",
                 f"{self.failed} failed"]
        if self.lost:
            parts.append(f"{self.lost} lost with their worker (rerun to compute them)")
        if self.warnings:
            parts.append(f"{len(self.warnings)} warnings")
        line = ", ".join(parts)
        return f"{line}; {self.retry_hint}" if self.failed and self.retry_hint else line


class Pending:
    """The items a stage still has to compute.

    ``add(digest, item)`` offers each item with its record key (when ``distinct``, a key offered before is
    skipped: items that repeat across pairs are computed once) and counts it in ``total``. A chunk at a
    time, the keys are checked against the stage's ``StoredKeys``: those stored are counted in the
    summary as cached or failed, the others (with JSON-serialisable items) go to a temporary table of the
    run's database, in the order offered. ``finish()`` says how many are left; ``batches(n)`` reads them
    back n at a time. Of all the items, only a 32-byte digest per distinct key stays in memory (for
    ``distinct``; about 100 bytes each with the set's own overhead).
    Use it as a context manager, which drops the table.
    """

    _tables = itertools.count()

    def __init__(self, summary: StageSummary, store: RunStore, *, retry_failed: bool = False, distinct: bool = True,
                 stored: StoredKeys | None = None):
        self.summary, self.store, self.retry_failed = summary, store, retry_failed
        self.stored = stored or StoredKeys(store, summary.record_stage)
        self._seen: set[bytes] | None = set() if distinct else None
        self._offered: list[tuple[bytes, Any]] = []
        self._table: str | None = None
        self.total = 0  # items offered (distinct ones, when ``distinct``)
        self.todo = 0

    def add(self, digest: bytes, item: Any) -> None:
        """Offer an item under its record key, given as the key's 32 bytes (``SpecTemplate.digest_json``;
        the key is their hex)."""
        if self._seen is not None:
            if digest in self._seen:
                return
            self._seen.add(digest)
        self.total += 1
        self._offered.append((digest, item))
        if len(self._offered) >= LOOKUP_CHUNK:
            self._check()

    def finish(self) -> int:
        """Check what is still offered; return how many items are left to compute."""
        self._check()
        self._seen = None
        return self.todo

    def _check(self) -> None:
        offered, self._offered = self._offered, []
        if not offered:
            return
        status = self.stored.status_of(np.frombuffer(b"".join(d for d, _ in offered), dtype="S32"))
        todo = [(digest.hex(), json.dumps(item)) for (digest, item), st in zip(offered, status)
                if not self.summary.done(st or None, self.retry_failed)]
        if not todo:
            return
        db = self.store.db
        if self._table is None:
            self._table = f"pending_{next(self._tables)}"
            db.execute(f"CREATE TEMP TABLE {self._table} (pos INTEGER PRIMARY KEY, key TEXT NOT NULL, "
                       "item TEXT NOT NULL)")
        db.execute("BEGIN")  # touches only the temporary database: no lock on the run's records
        try:
            db.executemany(f"INSERT INTO {self._table} (key, item) VALUES (?, ?)", todo)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.todo += len(todo)

    def batches(self, size: int) -> Iterator[list[tuple[str, Any]]]:
        """The items left, as ``[(key, item), ...]`` of at most ``size``, in the order offered."""
        if self._table is None:
            return
        last = 0
        while True:
            rows = self.store.db.execute(f"SELECT pos, key, item FROM {self._table} WHERE pos > ? ORDER BY pos "
                                         "LIMIT ?", (last, size)).fetchall()
            if not rows:
                return
            yield [(key, json.loads(item)) for _, key, item in rows]
            last = rows[-1][0]

    def __enter__(self) -> "Pending":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._table is not None:
            self.store.db.execute(f"DROP TABLE IF EXISTS temp.{self._table}")
            self._table = None
