"""Consumers remember the events they processed, in the same transaction as their effects."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Column, DateTime, MetaData, String, Table, select
from sqlalchemy.orm import Session


def make_processed_events_table(metadata: MetaData, prefix: str) -> Table:
    return Table(
        f"{prefix}_processed_events", metadata,
        Column("event_id", String(36), primary_key=True),
        Column("consumer", String(128), primary_key=True),
        Column("event_type", String(64), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False),
    )


def claim_event(session: Session, table: Table, event_id, consumer: str, event_type: str) -> bool:
    """Record that `consumer` handles `event_id`; False if it already did.

    Call inside the transaction that applies the event's effects: a rollback forgets the
    claim too, and a concurrent duplicate fails on the primary key at commit.
    """
    key = str(event_id)
    seen = session.execute(select(table.c.event_id).where(
        table.c.event_id == key, table.c.consumer == consumer)).first()
    if seen:
        return False
    session.execute(table.insert().values(event_id=key, consumer=consumer, event_type=event_type,
                                          processed_at=datetime.now(timezone.utc)))
    return True
