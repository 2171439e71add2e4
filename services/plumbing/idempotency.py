"""Consumers remember the events they processed, in the same transaction as their effects."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import Column, MetaData, String, Table
from sqlalchemy.orm import Session

from services.contracts.events import EventEnvelope, parse_event
from services.plumbing.sql import UtcDateTime, insert_ignore

DUPLICATE = "duplicate"
"""What a consumer returns for an event it had already processed."""


def make_processed_events_table(metadata: MetaData, prefix: str) -> Table:
    return Table(
        f"{prefix}_processed_events", metadata,
        Column("event_id", String(36), primary_key=True),
        Column("consumer", String(128), primary_key=True),
        Column("event_type", String(64), nullable=False),
        Column("processed_at", UtcDateTime(), nullable=False),
    )


def claim_event(session: Session, table: Table, event_id, consumer: str, event_type: str) -> bool:
    """Record that `consumer` handles `event_id`; False if it already did.

    Call first, inside the transaction that applies the event's effects: a rollback
    forgets the claim too. Two workers handling the same redelivered event at once: the
    second INSERT waits for the first transaction and then inserts nothing, so exactly one
    applies it.
    """
    values = dict(event_id=str(event_id), consumer=consumer, event_type=event_type,
                  processed_at=datetime.now(timezone.utc))
    return insert_ignore(session, table, values)


def apply_once(db, processed: Table, body: Any, event_type: str, consumer: str,
               apply: Callable[[Session, EventEnvelope, Any], Any],
               before_claim: Callable[[Session, EventEnvelope], None] | None = None) -> Any:
    """Every consumer's shape: parse the message (a malformed one raises InvalidEvent and is
    dead-lettered), then in one transaction claim its event id and apply it.

    `db` is the worker's database (`self.db`); `before_claim` may take a lock first (e.g.
    one serialising a service's recomputations). Returns `apply`'s result, or DUPLICATE.
    """
    envelope, payload = parse_event(body, event_type)
    with db.transaction() as session:
        if before_claim is not None:
            before_claim(session, envelope)
        if not claim_event(session, processed, envelope.event_id, consumer, envelope.event_type):
            return DUPLICATE
        return apply(session, envelope, payload)
