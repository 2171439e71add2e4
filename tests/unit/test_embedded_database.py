"""The embedded database (SQLite) under green threads (issue 25): a writer waits for another
writer as a green thread — the process's other green threads keep running — and never ends in
`database is locked`; the lock is handed on after every commit, rollback and lost connection."""
from __future__ import annotations

import time

import eventlet
import pytest
from sqlalchemy import text

from services.plumbing import cooperative, db, embedded


@pytest.fixture
def two_engines(tmp_path):
    """Two services' engines on one database file, as the README's one-process stack has."""
    url = f"sqlite:///{tmp_path}/chuangwei.db"
    first, second = db.make_engine(url), db.make_engine(url)
    with first.begin() as conn:
        conn.execute(text("create table notes (id integer primary key, body text)"))
    yield first, second
    first.dispose()
    second.dispose()


def _ticking():
    """A green thread that counts its turns: the hub's pulse."""
    ticks = []

    def tick():
        while True:
            ticks.append(time.perf_counter())
            eventlet.sleep(0.01)
    return ticks, eventlet.spawn(tick)


def test_a_second_writer_waits_green_while_the_first_holds_its_transaction_then_writes(two_engines):
    first, second = two_engines
    ticks, ticker = _ticking()
    holding, done = eventlet.event.Event(), []

    def long_writer():
        with first.begin() as conn:
            conn.execute(text("insert into notes (body) values ('first')"))
            holding.send()
            eventlet.sleep(1.0)  # a transaction that yields (a scoring batch breathing)
            conn.execute(text("insert into notes (body) values ('first, later')"))
        done.append("first")

    def short_writer():
        holding.wait()
        began = time.perf_counter()
        with second.begin() as conn:
            conn.execute(text("insert into notes (body) values ('second')"))
        done.append(("second", time.perf_counter() - began))

    a, b = eventlet.spawn(long_writer), eventlet.spawn(short_writer)
    a.wait()
    b.wait()
    ticker.kill()
    assert done[0] == "first" and done[1][0] == "second"
    assert done[1][1] >= 0.9  # it waited for the first transaction, not SQLite's busy handler
    # Meanwhile the hub kept its pulse (SQLite's busy wait would have stopped it for the whole
    # wait): no gap between two ticks anywhere near the writer's wait.
    gaps = [later - earlier for earlier, later in zip(ticks, ticks[1:])]
    assert len(ticks) > 50 and max(gaps) < 0.5
    with first.connect() as conn:
        assert conn.execute(text("select count(*) from notes")).scalar() == 3


def test_readers_are_not_held_back_by_a_writer(two_engines):
    first, second = two_engines
    with first.begin() as conn:
        conn.execute(text("insert into notes (body) values ('committed')"))
    with first.begin() as conn:
        conn.execute(text("insert into notes (body) values ('not yet')"))
        began = time.perf_counter()
        with second.connect() as reader:  # WAL: the reader sees the last commit, at once
            assert reader.execute(text("select count(*) from notes")).scalar() == 1
        assert time.perf_counter() - began < 0.5


def test_the_lock_is_handed_on_after_a_rollback_an_error_and_a_closed_session(two_engines):
    first, second = two_engines
    lock = embedded.writer_lock(str(first.url.database))
    with pytest.raises(RuntimeError):
        with first.begin() as conn:
            conn.execute(text("insert into notes (body) values ('rolled back')"))
            raise RuntimeError("the use case failed")
    assert lock.holder is None
    with pytest.raises(Exception):
        with first.begin() as conn:
            conn.execute(text("insert into notes (id, body) values (1, 'a')"))
            conn.execute(text("insert into notes (id, body) values (1, 'the same key')"))
    assert lock.holder is None
    # A connection given back to the pool in the middle of a write (a worker's session closed
    # without a commit) gives the lock back too.
    conn = second.connect()
    conn.execute(text("insert into notes (body) values ('never committed')"))
    assert lock.holder is not None
    conn.close()
    assert lock.holder is None
    with first.begin() as conn:
        conn.execute(text("insert into notes (body) values ('after all that')"))
        assert conn.execute(text("select count(*) from notes")).scalar() == 1


def test_a_writer_that_waits_too_long_gets_a_clear_database_is_locked(tmp_path):
    url = f"sqlite:///{tmp_path}/chuangwei.db"
    holder = embedded.make_sqlite_engine(url, writer_wait=0.2)
    with holder.begin() as conn:
        conn.execute(text("create table t (x integer)"))
    waiter = embedded.make_sqlite_engine(url, writer_wait=0.2)
    with holder.begin() as conn:
        conn.execute(text("insert into t values (1)"))
        began = time.perf_counter()
        with pytest.raises(Exception, match="database is locked"):
            with waiter.begin() as other:
                other.execute(text("insert into t values (2)"))
        assert time.perf_counter() - began < 2
    with waiter.begin() as other:  # handed on after the holder's commit
        other.execute(text("insert into t values (3)"))


def test_a_breathing_computation_inside_a_write_transaction_yields_less_often(two_engines):
    first, _ = two_engines
    turns = []

    def busy(seconds: float):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            cooperative.breathe(every=0.005)

    ticker = eventlet.spawn(lambda: [turns.append(1) or eventlet.sleep(0) for _ in iter(int, 1)])
    eventlet.sleep(0)
    turns.clear()
    busy(0.3)
    outside = len(turns)
    turns.clear()
    with first.begin() as conn:
        conn.execute(text("insert into notes (body) values ('x')"))
        assert embedded.writing()
        busy(0.3)
    inside = len(turns)
    assert not embedded.writing()
    ticker.kill()
    assert outside >= 15 and 1 <= inside <= 6 and outside >= 3 * inside


@pytest.mark.parametrize("statement, writes", [
    ("INSERT INTO t VALUES (1)", True), ("  update t set x = 1", True), ("DELETE FROM t", True),
    ("SAVEPOINT sa_1", True), ("CREATE TABLE t (x int)", True),
    ("WITH moved AS (SELECT 1) UPDATE t SET x = 2", True),
    ("SELECT * FROM t", False), ("WITH r AS (SELECT 1) SELECT * FROM r", False), ("PRAGMA foreign_keys=ON", False),
])
def test_which_statements_take_the_writer_lock(statement, writes):
    assert embedded._is_write(statement) is writes


def test_a_writer_waits_green_for_another_process_of_the_stack(tmp_path):
    """The stack's processes share the file: a writer waits for another process's transaction
    on the writer lock's flock, polled green — not in SQLite's busy handler, which sleeps the hub."""
    import subprocess
    import sys
    url = f"sqlite:///{tmp_path}/chuangwei.db"
    engine = embedded.make_sqlite_engine(url)
    with engine.begin() as conn:
        conn.execute(text("create table notes (id integer primary key, body text)"))
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from sqlalchemy import text
from services.plumbing.embedded import make_sqlite_engine
engine = make_sqlite_engine({url!r})
with engine.begin() as conn:
    conn.execute(text("insert into notes (body) values ('other process')"))
    print("holding", flush=True)
    time.sleep(1.5)
"""], stdout=subprocess.PIPE, text=True, cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    try:
        assert holder.stdout.readline().strip() == "holding"
        ticks, ticker = _ticking()
        began = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text("insert into notes (body) values ('this process')"))
        waited = time.perf_counter() - began
        ticker.kill()
        assert holder.wait(10) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert waited >= 0.5  # it waited for the other process's commit
    gaps = [later - earlier for earlier, later in zip(ticks, ticks[1:])]
    assert len(ticks) > 20 and max(gaps) < 0.5
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from notes")).scalar() == 2
