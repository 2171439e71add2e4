"""The embedded database (SQLite) under green threads: one writer at a time, waited for green.

Why (issue 25): a stack's services share one process and one eventlet hub. SQLite allows one
writing transaction per database file; a second connection that tries to write waits inside
SQLite's C busy handler, which sleeps the whole OS thread — and with it the hub, so the green
thread holding the write lock never gets the turn it needs to commit. Everything then stood
still for the busy timeout (30 s), ended in `database is locked`, and began again.

Here the services take a lock per database file before their first write statement of a
transaction (a green lock in a process, an flock polled green between the stack's processes)
and hand it on when that transaction commits or rolls back (or its connection goes back to
the pool): a writer waits for another writer as a green thread,
readers are never held back (WAL: readers do not block the writer nor the writer them), and
SQLite's own busy wait is left only for another process (an operator's tool), bounded by
SQLITE_BUSY_TIMEOUT seconds. No nameko import: tools and tests use it as they are.
"""
from __future__ import annotations

import logging
import fcntl
import re
import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT = 2.0
"""Seconds SQLite itself waits for another *process* holding the write lock (an operator's
tool writing while the stack runs). Short on purpose: that wait blocks the process's hub."""
DEFAULT_WRITER_WAIT = 60.0
"""Seconds a green thread waits for another's writing transaction before it gives up with
`database is locked` (a 503 with Retry-After, like any database outage)."""

# Statements that write (or open a transaction that will): they take the writer lock first.
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "SAVEPOINT", "BEGIN",
           "REINDEX", "VACUUM", "ANALYZE")


_CTE_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


def _is_write(statement: str) -> bool:
    head = statement.lstrip()[:16].upper()
    if head.startswith("WITH"):  # a CTE: what follows it decides
        return _CTE_WRITE.search(statement) is not None
    return head.startswith(_WRITES)


class WriterLock:
    """One writing transaction at a time on one database file: among the green threads of this
    process (a green lock) and among the processes of a stack (an flock on `<file>-writer.lock`,
    polled without blocking, so waiting for another process is green too)."""

    def __init__(self, wait: float = DEFAULT_WRITER_WAIT, path: str | None = None):
        self._lock = threading.Lock()  # a green lock under eventlet's monkey patching
        self._file = open(f"{path}-writer.lock", "a+b") if path else None  # noqa: SIM115 - kept open
        self.wait = wait
        self.holder = None  # the DBAPI connection whose transaction holds it
        self.holder_thread: int | None = None
        self.since = 0.0

    def take(self, raw) -> None:
        if self.holder is raw:
            return
        deadline = time.monotonic() + self.wait
        if not self._lock.acquire(timeout=self.wait):
            raise sqlite3.OperationalError(
                f"database is locked: another writing transaction of this process held the embedded "
                f"database for more than {self.wait:g} s")
        try:
            self._lock_file(deadline)
        except BaseException:
            self._lock.release()
            raise
        self.holder, self.holder_thread, self.since = raw, threading.get_ident(), time.perf_counter()
        _HELD[self.holder_thread] = _HELD.get(self.holder_thread, 0) + 1

    def _lock_file(self, deadline: float) -> None:
        if self._file is None:
            return
        pause = 0.001
        while True:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError(
                        f"database is locked: another process of the stack held the embedded database for "
                        f"more than {self.wait:g} s") from None
                time.sleep(pause)  # a green sleep under eventlet's monkey patching
                pause = min(pause * 2, 0.02)

    def give_back(self, raw) -> None:
        if raw is None or self.holder is not raw:
            return
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        thread, self.holder, self.holder_thread = self.holder_thread, None, None
        if _HELD.get(thread, 0) <= 1:
            _HELD.pop(thread, None)
        else:
            _HELD[thread] -= 1
        self._lock.release()


_LOCKS: dict[str, WriterLock] = {}
_HELD: dict[int, int] = {}  # green thread → how many writer locks it holds


def writing() -> bool:
    """Whether the calling (green) thread is inside a writing transaction of the embedded
    database. Such a transaction is best finished without giving others a turn: none of them
    can write until it ends (see plumbing/cooperative.py)."""
    return bool(_HELD) and threading.get_ident() in _HELD
_LOCKS_GUARD = threading.Lock()


def writer_lock(path: str, wait: float = DEFAULT_WRITER_WAIT) -> WriterLock:
    """The process's lock for the database file at `path` (every engine on it shares it)."""
    if not path or path == ":memory:":
        return WriterLock(wait)  # a database of one connection's own
    key = str(Path(path).resolve())
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = WriterLock(wait, key)
        return lock


def _raw(connection):
    """The sqlite3 connection behind a pool's proxy (or itself)."""
    return getattr(connection, "dbapi_connection", connection)


def make_sqlite_engine(url: str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                       writer_wait: float = DEFAULT_WRITER_WAIT) -> Engine:
    path = url.split("///", 1)[-1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Green threads beyond the pool wait for a connection (a pool timeout is a 503): enough
    # for a stack's requests and consumers, and an overflow connection costs an open() each.
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout},
                           **({} if not path or path == ":memory:" else {"pool_size": 8, "max_overflow": 16}))
    lock = writer_lock(path, writer_wait)
    engine.writer_lock = lock  # for take_writer
    in_wal = []

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        cursor = dbapi_conn.cursor()
        if not in_wal:  # kept in the file: once per engine is enough
            cursor.execute("PRAGMA journal_mode=WAL")
            in_wal.append(True)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "before_cursor_execute")
    def _take_before_writing(conn, _cursor, statement, _parameters, _context, _executemany):
        if _is_write(statement):
            lock.take(_raw(conn.connection))

    # The lock is handed on *after* SQLite has committed or rolled back: the dialect's own
    # calls, which every path takes (a Connection's commit, a pool's reset on return).
    dialect = engine.dialect
    do_commit, do_rollback = dialect.do_commit, dialect.do_rollback

    def commit_then_give_back(dbapi_connection):
        try:
            do_commit(dbapi_connection)
        except BaseException:
            raise  # still in its transaction: the rollback that follows gives the lock back
        else:
            lock.give_back(_raw(dbapi_connection))

    def rollback_then_give_back(dbapi_connection):
        try:
            do_rollback(dbapi_connection)
        finally:
            lock.give_back(_raw(dbapi_connection))
    dialect.do_commit, dialect.do_rollback = commit_then_give_back, rollback_then_give_back

    # A connection that leaves (closed, invalidated after an error) gives the lock back too.
    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection, _record):
        if dbapi_connection is not None and lock.holder is _raw(dbapi_connection):
            _give_back_rolled_back(lock, dbapi_connection)

    @event.listens_for(engine, "close")
    def _closed(dbapi_connection, _record):
        lock.give_back(_raw(dbapi_connection))

    @event.listens_for(engine, "invalidate")
    def _invalidated(dbapi_connection, _record, _exc):
        if dbapi_connection is not None:
            lock.give_back(_raw(dbapi_connection))
    return engine


def _give_back_rolled_back(lock: WriterLock, dbapi_connection) -> None:
    raw = _raw(dbapi_connection)
    try:
        if getattr(raw, "in_transaction", False):
            raw.rollback()
    except sqlite3.Error as exc:  # a broken connection: the pool discards it
        log.debug("rolling back a returned SQLite connection: %s", exc)
    lock.give_back(raw)


def take_writer(connection) -> None:
    """Hold the embedded database's writer lock for `connection`'s transaction from now on,
    before it reads (a no-op on another database): migrations read the version table and then
    create what it lacks, and two of the stack's processes must not both do that."""
    lock = getattr(connection.engine, "writer_lock", None)
    if lock is not None:
        lock.take(_raw(connection.connection))
