"""What differs between PostgreSQL and SQLite, in one place. (No nameko imports.)

- Times: PostgreSQL's timestamptz keeps the instant; SQLite keeps only the wall-clock digits
  it is given and hands them back naive. `UtcDateTime` stores every value as UTC and marks
  it UTC on the way out, so 09:30+08:00 is 01:30Z in both.
- Upserts: `insert_for(bind)` is the dialect's INSERT with ON CONFLICT support;
  `insert_ignore` inserts a row unless its key exists.
- Locks: `advisory_xact_lock(bind, key)` serialises work across instances on PostgreSQL
  until the transaction ends; SQLite has a single writer already (plumbing/embedded.py: taken
  at a transaction's first write, so a lock taken here would hold every writer back while the
  transaction still reads and computes).
"""
from __future__ import annotations

from datetime import timezone

from sqlalchemy import DateTime, text
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: every stored time must carry its offset")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def dialect_name(bind) -> str:
    """`bind`: a Session or a Connection."""
    dialect = getattr(bind, "dialect", None) or bind.get_bind().dialect
    return dialect.name


def is_postgres(bind) -> bool:
    return dialect_name(bind) == "postgresql"


def insert_for(bind):
    """The dialect's `insert` (with on_conflict_do_nothing / on_conflict_do_update)."""
    name = dialect_name(bind)
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - the project supports PostgreSQL and SQLite
        raise RuntimeError(f"unsupported database dialect {name}")
    return insert


def insert_ignore(session, table, values: dict) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; True if the row was inserted. A concurrent insert of
    the same key waits for the other transaction, then inserts nothing."""
    result = session.execute(insert_for(session)(table).values(**values).on_conflict_do_nothing())
    return result.rowcount == 1


def binary_collation(bind) -> str:
    """The collation that orders text by code point, as Python sorts strings (ranking ties
    are listed by name): PostgreSQL's "C" (byte order of UTF-8), SQLite's BINARY."""
    return "C" if is_postgres(bind) else "BINARY"


def advisory_xact_lock(bind, key: str) -> None:
    if is_postgres(bind):
        bind.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})

