"""Consumers remember the events they processed, in the same transaction as their effects;
clients' idempotency keys are scoped to who sent them to which endpoint (`client_key`)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from pydantic import BaseModel

from sqlalchemy import Column, MetaData, String, Table, select
from sqlalchemy.orm import Session

from services.contracts.errors import StateConflict
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


def apply_batch_once(db, processed: Table, bodies: list, event_type: str, consumer: str,
                     apply_many: Callable[[Session, list[tuple[EventEnvelope, Any]]], list],
                     before_claim: Callable[[Session], None] | None = None) -> list:
    """A batching consumer's shape (`consumer.batching_event_handler`): parse every message,
    then in one transaction claim the new event ids and apply those events together.

    `apply_many(session, [(envelope, payload), ...])` gets the events not processed before,
    in arrival order, each event id once, and returns one result per event. Returns one
    outcome per body: DUPLICATE, or the event's result. A malformed message raises
    InvalidEvent for the whole batch; the handler then retries each message alone, so only
    the bad one is dead-lettered.
    """
    parsed = [parse_event(body, event_type) for body in bodies]
    with db.transaction() as session:
        if before_claim is not None:
            before_claim(session)
        ids = [str(envelope.event_id) for envelope, _ in parsed]
        seen = set(session.execute(select(processed.c.event_id).where(
            processed.c.consumer == consumer, processed.c.event_id.in_(ids))).scalars())
        fresh, claims = [], []
        for envelope, payload in parsed:
            event_id = str(envelope.event_id)
            if event_id in seen:
                continue
            seen.add(event_id)
            fresh.append((envelope, payload))
            claims.append(dict(event_id=event_id, consumer=consumer, event_type=envelope.event_type,
                               processed_at=datetime.now(timezone.utc)))
        if claims:
            # One insert for the batch. A concurrent worker claiming one of these ids makes it
            # fail on the key: the batch rolls back and its events are retried one by one.
            session.execute(processed.insert(), claims)
        results = iter(apply_many(session, fresh) if fresh else [])
        applied = {id(envelope) for envelope, _ in fresh}
        return [next(results) if id(envelope) in applied else DUPLICATE for envelope, _ in parsed]


# --- clients' idempotency keys (a phone retrying an offline capture) ---------------------

KEY_HEADER = "Idempotency-Key"
KEY_REUSED = ("该幂等键（Idempotency-Key）已由您用于内容不同的请求，请为新的请求使用新的键; this "
              "Idempotency-Key was already used by you for a request with a different body: use a new key "
              "for a new request")
KEY_IN_FLIGHT = ("使用该幂等键（Idempotency-Key）的相同请求正在处理，请稍后重试; a request with this "
                 "Idempotency-Key is in progress: retry")


@dataclass(frozen=True)
class ClientKey:
    """A client's idempotency key in its scope: who sent it (the authenticated subject) to
    which endpoint. Another person's key, or the same key sent to another endpoint, is a
    different request; the same person's key again is a retry, which must repeat the body
    (its fingerprint) exactly. Tables keep `scope` and `fingerprint` beside the key, unique
    on (scope, key)."""
    key: str
    scope: str
    fingerprint: str
    field: str = KEY_HEADER

    def check_retry(self, stored_fingerprint: str | None) -> None:
        """A stored request under this key may be answered again only for the same body
        (rows from before fingerprints were kept are taken as the same)."""
        if stored_fingerprint is not None and stored_fingerprint != self.fingerprint:
            raise StateConflict(self.field, KEY_REUSED)

    def in_flight(self) -> StateConflict:
        return StateConflict(self.field, KEY_IN_FLIGHT)


def stored_for_key(session: Session, model, key: ClientKey, sent_by_caller) -> Any | None:
    """The row `model` stored under `key`; else one stored under the bare key before keys were
    scoped whose sender was the caller (`sent_by_caller`: a clause such as
    `Model.recorded_by == principal.label`), which adopts the scope and the fingerprint, so the
    same person's retries are answered from it. Tables keep `idempotency_scope`,
    `idempotency_key` and `request_fingerprint`."""
    row = session.execute(select(model).where(
        model.idempotency_scope == key.scope, model.idempotency_key == key.key)).scalar_one_or_none()
    if row is None:
        row = session.execute(select(model).where(
            model.idempotency_scope.is_(None), model.idempotency_key == key.key, sent_by_caller).limit(1)
        ).scalar_one_or_none()
        if row is not None:
            row.idempotency_scope = key.scope
            if row.request_fingerprint is None:
                row.request_fingerprint = key.fingerprint
    return row


def key_scope(endpoint: str, caller: str) -> str:
    """The scope of a key, as stored (64 hex characters, whatever the subject's length)."""
    return hashlib.sha256(f"{endpoint}\x00{caller}".encode("utf-8")).hexdigest()


def body_fingerprint(body: BaseModel | dict, exclude: tuple[str, ...] = ("idempotency_key",)) -> str:
    document = body.model_dump(mode="json", exclude=set(exclude)) if isinstance(body, BaseModel) \
        else {k: v for k, v in body.items() if k not in exclude}
    canonical = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def client_key(key: str | None, endpoint: str, caller: str, body: BaseModel | dict,
               field: str = KEY_HEADER) -> ClientKey | None:
    """The scoped key of a request (None without a key). `endpoint` names the operation
    ("POST /inspections"); `caller` is the principal's subject, never a request field."""
    if not key:
        return None
    return ClientKey(key, key_scope(endpoint, caller), body_fingerprint(body), field)
