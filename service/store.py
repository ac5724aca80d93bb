"""The job store: SQLite in WAL mode under the state directory.

``jobs`` holds one row per job (the spec as JSON, its state, attempts, the report) and
``events`` every event of every job, numbered 1, 2, ... per job. ``request_id`` has a unique
index: two submissions with one id make one job. One connection guarded by a lock serves every
thread; writes are short transactions. Only the job manager writes.

Storage failures (a full disk, a read-only or broken file: ``sqlite3.OperationalError`` or
``OSError``) come out of every method as ``StoreUnavailable`` with a message for people, and
mark the store failing until ``probe``, a real write, succeeds again: the server reports
NOT_SERVING meanwhile and refuses new jobs, and nothing is half-written (each transaction is
rolled back whole).
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from service.errors import NotFound, StoreUnavailable
from service.guards import RateLimitedLog
from service.states import JobState, check_transition

__all__ = ["JobRecord", "EventRecord", "JobStore", "STATE_EVENT", "is_storage_error"]

STATE_EVENT = "state"  # the kind of the event the store writes with every state change
# SQLite's primary result codes that are the disk's or the file's fault, not a caller's:
# BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_STORAGE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})
_PROBE_BYTES = 64 * 1024  # room a probe asks for: a job's row and events fit many times over
log = logging.getLogger("tpet.store")
F = TypeVar("F", bound=Callable[..., Any])

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    request_id TEXT,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    spec_json TEXT NOT NULL,
    output_dir TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    error_kind TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    token_hash TEXT NOT NULL DEFAULT '',
    worker TEXT NOT NULL DEFAULT '',
    report_json TEXT NOT NULL DEFAULT '',
    last_sequence INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id ON jobs(request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    kind TEXT NOT NULL,
    stage TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, payload BLOB, time REAL);
"""

# Columns ``update`` may set; ``state`` only changes through ``transition``.
_MUTABLE = frozenset({"stage", "error", "error_kind", "attempts", "cancel_requested",
                      "token_hash", "worker", "report_json"})


@dataclass(frozen=True)
class JobRecord:
    seq: int  # submission order
    id: str
    request_id: str | None
    name: str
    state: JobState
    stage: str
    spec: dict[str, Any]  # the spec in the proto JSON mapping, output_dir set
    output_dir: str
    created: float
    updated: float
    error: str
    error_kind: str
    attempts: int
    cancel_requested: bool
    token_hash: str
    worker: str
    report_json: str
    last_sequence: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        data = dict(row)
        data["spec"] = json.loads(data.pop("spec_json"))
        data["state"] = JobState(data["state"])
        data["cancel_requested"] = bool(data["cancel_requested"])
        return cls(**data)


@dataclass(frozen=True)
class EventRecord:
    job_id: str
    sequence: int
    kind: str
    stage: str
    payload: dict[str, Any]
    time: float


def _guarded(method: F) -> F:
    """Turn a storage failure inside ``method`` into ``StoreUnavailable``, marking the store
    failing (nested calls pass the first translation through)."""
    @functools.wraps(method)
    def wrapped(self: JobStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            if not is_storage_error(exc):
                raise  # a bug (bad SQL): the caller's traceback says where
            raise self._failed(exc) from exc
    return wrapped  # type: ignore[return-value]


def is_storage_error(exc: BaseException) -> bool:
    """A full disk, a read-only, locked or broken database file: the store's condition."""
    if isinstance(exc, OSError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF in _STORAGE_CODES


class JobStore:
    """Thread-safe access to ``store.db``; every method is one transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._failure = ""  # why the last storage operation failed; '' once a probe succeeds
        self._log = RateLimitedLog(log)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        # WAL: readers never block the writer; NORMAL sync is safe against process crashes.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def journal_mode(self) -> str:
        return self._query_one("PRAGMA journal_mode")[0]

    @property
    def writable(self) -> bool:
        """False from a storage failure until a ``probe`` succeeds."""
        return not self._failure

    def unavailable(self) -> StoreUnavailable:
        """The error to answer with while the store is failing."""
        return StoreUnavailable(
            f"the server's job store cannot write ({self._failure}); no job can be accepted "
            f"until it can: the operator should free space for {self.path.parent} (the "
            "server notices by itself); retry later")

    def probe(self, now: float) -> bool:
        """Whether the store can write now, by a real write that also needs fresh space (a
        rolled-back row of ``_PROBE_BYTES``: growing the file fails when it is full); a
        success clears the failing mark."""
        try:
            with self._lock, self._tx():
                self._db.execute("SAVEPOINT room")
                self._db.execute("INSERT INTO probe (id, payload) VALUES (2, zeroblob(?))",
                                 (_PROBE_BYTES,))
                self._db.execute("ROLLBACK TO room")
                self._db.execute("RELEASE room")
                self._db.execute("INSERT OR REPLACE INTO probe (id, time) VALUES (1, ?)",
                                 (now,))
        except (sqlite3.Error, OSError) as exc:
            if not is_storage_error(exc):
                raise
            self._failed(exc)
            return False
        if self._failure:
            self._failure = ""
            self._log.clear(f"the job store {self.path} can write again")
        return True

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        self._failure = str(exc) or type(exc).__name__
        self._log.failure(f"the job store {self.path} cannot write: {self._failure}")
        return self.unavailable()

    @_guarded
    def create(self, job_id: str, request_id: str | None, name: str, spec: dict[str, Any],
               output_dir: str, now: float) -> tuple[JobRecord, bool]:
        """Insert a QUEUED job; with a known ``request_id`` return that job and False."""
        with self._lock, self._tx():
            if request_id is not None:
                row = self._query_one("SELECT * FROM jobs WHERE request_id = ?", request_id)
                if row is not None:
                    return JobRecord.from_row(row), False
            self._db.execute(
                "INSERT INTO jobs (id, request_id, name, state, spec_json, output_dir, created,"
                " updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, request_id, name, JobState.QUEUED.value, json.dumps(spec), output_dir,
                 now, now))
            self._append(job_id, [(STATE_EVENT, "", {"state": JobState.QUEUED.value})], now)
            return self.get(job_id), True

    @_guarded
    def get(self, job_id: str) -> JobRecord:
        row = self._query_one("SELECT * FROM jobs WHERE id = ?", job_id)
        if row is None:
            raise NotFound(f"no job {job_id!r}; list jobs with `tpet jobs`")
        return JobRecord.from_row(row)

    @_guarded
    def find_request(self, request_id: str) -> JobRecord | None:
        row = self._query_one("SELECT * FROM jobs WHERE request_id = ?", request_id)
        return None if row is None else JobRecord.from_row(row)

    @_guarded
    def list(self, states: Iterable[JobState] = (), after_seq: int = 0,
             limit: int = 50) -> list[JobRecord]:
        """Jobs in submission order after ``after_seq``, optionally only in ``states``."""
        states = [JobState(s).value for s in states]
        where = f" AND state IN ({', '.join('?' * len(states))})" if states else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE seq > ?{where} ORDER BY seq LIMIT ?",
                (after_seq, *states, limit)).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    @_guarded
    def count(self, state: JobState) -> int:
        return self._query_one("SELECT COUNT(*) FROM jobs WHERE state = ?",
                               JobState(state).value)[0]

    @_guarded
    def transition(self, job_id: str, new: JobState, now: float,
                   event: dict[str, Any] | None = None, **fields: Any) -> JobRecord:
        """Move the job to ``new`` (checked against the table), set ``fields``, and record a
        ``state`` event with ``event`` merged into its payload, all in one transaction."""
        with self._lock, self._tx():
            old = self.get(job_id).state
            check_transition(job_id, old, new)
            self._set(job_id, now, state=JobState(new).value, **fields)
            payload = {"state": JobState(new).value, "previous": old.value, **(event or {})}
            self._append(job_id, [(STATE_EVENT, "", payload)], now)
            return self.get(job_id)

    @_guarded
    def update(self, job_id: str, now: float, **fields: Any) -> JobRecord:
        """Set non-state ``fields`` (stage, error, worker, ...)."""
        if "state" in fields:
            raise ValueError("state changes only through transition()")
        with self._lock, self._tx():
            self._set(job_id, now, **fields)
            return self.get(job_id)

    @_guarded
    def append_events(self, job_id: str, events: list[tuple[str, str, dict[str, Any]]],
                      now: float, **fields: Any) -> int:
        """Append (kind, stage, payload) events, set ``fields``; return the last sequence."""
        with self._lock, self._tx():
            if fields:
                self._set(job_id, now, **fields)
            return self._append(job_id, events, now)

    @_guarded
    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[EventRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence"
                " LIMIT ?", (job_id, after, limit)).fetchall()
        return [EventRecord(r["job_id"], r["sequence"], r["kind"], r["stage"],
                            json.loads(r["payload_json"]), r["time"]) for r in rows]

    def _set(self, job_id: str, now: float, **fields: Any) -> None:
        unknown = set(fields) - _MUTABLE - {"state"}
        if unknown:
            raise ValueError(f"cannot set {', '.join(sorted(unknown))} on a job")
        fields = {k: int(v) if isinstance(v, bool) else v for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in fields)
        cur = self._db.execute(f"UPDATE jobs SET {sets}, updated = ? WHERE id = ?",
                               (*fields.values(), now, job_id))
        if cur.rowcount == 0:
            raise NotFound(f"no job {job_id!r}")

    def _append(self, job_id: str, events: list[tuple[str, str, dict[str, Any]]],
                now: float) -> int:
        last = self._query_one("SELECT last_sequence FROM jobs WHERE id = ?", job_id)[0]
        rows = [(job_id, last + i + 1, kind, stage, json.dumps(payload), now)
                for i, (kind, stage, payload) in enumerate(events)]
        self._db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
        last += len(rows)
        self._db.execute("UPDATE jobs SET last_sequence = ? WHERE id = ?", (last, job_id))
        return last

    def _query_one(self, sql: str, *params: Any) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, params).fetchone()

    def _tx(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error; re-entrant (nested calls join)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.outer:
            return
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except BaseException:
                self._rollback()  # a failed COMMIT (disk full) leaves the transaction open
                raise
        self._rollback()

    def _rollback(self) -> None:
        # SQLite may have rolled back already (SQLITE_FULL does); a second ROLLBACK would
        # raise and hide the error that matters. Left open, every later BEGIN would fail.
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("the job store could not roll back a failed transaction",
                            exc_info=True)
