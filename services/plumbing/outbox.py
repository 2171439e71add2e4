"""Transactional outbox and its relay.

A worker adds its events to the same session as its rows, so both commit or neither
does. The relay (one per container) publishes committed rows with publisher confirms
and only then marks them sent: a crash between commit and publish loses nothing, and a
crash between publish and marking re-sends, which idempotent consumers absorb.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import eventlet
from eventlet.event import Event
from kombu import Connection, Exchange, Producer as KombuProducer
from nameko.extensions import DependencyProvider
from pydantic import BaseModel
from sqlalchemy import (JSON, BigInteger, Column, Integer, MetaData, String, Table,
                        Text, select, update, func)
from sqlalchemy.orm import Session

from services.contracts.events import EventEnvelope, Producer, make_event
from services.plumbing import metrics
from services.plumbing.config import home_node
from services.plumbing.db import Database
from services.plumbing.sql import UtcDateTime

log = logging.getLogger(__name__)


def make_outbox_table(metadata: MetaData, prefix: str) -> Table:
    return Table(
        f"{prefix}_outbox", metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("event_type", String(64), nullable=False),
        Column("exchange", String(128), nullable=False),
        Column("routing_key", String(255), nullable=False),
        Column("body", JSON, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("published_at", UtcDateTime(), nullable=True, index=True),
        Column("attempts", Integer, nullable=False, default=0),
        Column("last_error", Text, nullable=True),
    )


def event_exchange_name(service_name: str) -> str:
    # Same name nameko's EventDispatcher uses, so plain @event_handler consumers work.
    return f"{service_name}.events"


class WorkerOutbox:
    def __init__(self, provider: "Outbox", producer: Producer):
        self._provider = provider
        self.producer = producer
        self.added = 0

    def add(self, session: Session, payload: BaseModel, correlation_id: str | None = None,
            routing_key: str | None = None, exchange: str | None = None) -> EventEnvelope:
        """Stage an event in the caller's transaction; it is published after commit."""
        envelope = make_event(payload, self.producer, correlation_id=correlation_id)
        session.execute(self._provider.table.insert().values(
            event_id=str(envelope.event_id),
            event_type=envelope.event_type,
            exchange=exchange or self._provider.exchange_name,
            routing_key=routing_key or envelope.event_type,
            body=envelope.to_message(),
            created_at=datetime.now(timezone.utc),
            attempts=0,
        ))
        self.added += 1
        return envelope


class Outbox(DependencyProvider):
    """`self.outbox.add(session, payload)` in a worker; relays in the background."""

    def __init__(self, table: Table, poll_interval: float = 1.0, batch_size: int = 200):
        self.table = table
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self._wakeup = Event()
        self._running = False
        self._gt = None

    def setup(self):
        config = self.container.config
        self.service_name = self.container.service_name
        self.exchange_name = event_exchange_name(self.service_name)
        self.producer = Producer(node=home_node(config), service=self.service_name)
        self.amqp_uri = config["AMQP_URI"]
        self.poll_interval = float(config.get("OUTBOX_POLL_INTERVAL", self.poll_interval))

    @property
    def database(self):
        return Database.of(self.container)

    def start(self):
        self._running = True
        self._gt = self.container.spawn_managed_thread(self._relay_forever)

    def stop(self):
        self._running = False
        self._nudge()
        if self._gt is not None:
            self._gt.wait()

    def kill(self):
        self._running = False
        if self._gt is not None:
            self._gt.kill()

    def get_dependency(self, worker_ctx):
        return WorkerOutbox(self, self.producer)

    def worker_teardown(self, worker_ctx):
        self._nudge()

    def _nudge(self):
        if not self._wakeup.ready():
            self._wakeup.send(True)

    def _relay_forever(self):
        connection = None
        while self._running:
            try:
                if connection is None:
                    connection = Connection(self.amqp_uri, transport_options={"confirm_publish": True})
                    connection.ensure_connection(max_retries=3)
                while self._running and self.relay_once(connection) == self.batch_size:
                    pass
            except Exception:  # keep relaying whatever happens; rows stay unsent until it works
                log.exception("%s outbox relay failed; retrying", self.service_name)
                if connection is not None:
                    connection.release()
                    connection = None
            with eventlet.Timeout(self.poll_interval, False):
                self._wakeup.wait()
            self._wakeup = Event()
        if connection is not None:
            connection.release()

    def relay_once(self, connection: Connection) -> int:
        """Publish one batch of unsent events; returns how many were sent."""
        table = self.table
        engine = self.database.engine
        sent = 0
        with Session(engine) as session, session.begin():
            query = (select(table.c.id, table.c.exchange, table.c.routing_key, table.c.body)
                     .where(table.c.published_at.is_(None)).order_by(table.c.id).limit(self.batch_size))
            # Several instances may relay the same table (SQLite ignores the clause: one writer).
            query = query.with_for_update(skip_locked=True)
            rows = session.execute(query).all()
            if rows:
                channel = connection.default_channel
                producer = KombuProducer(channel)
                declared = set()
                for row in rows:
                    if row.exchange not in declared:
                        Exchange(row.exchange, type="topic", durable=True)(channel).declare()
                        declared.add(row.exchange)
                    producer.publish(
                        row.body, exchange=row.exchange, routing_key=row.routing_key,
                        serializer="json", delivery_mode=2, content_encoding="utf-8",
                        message_id=row.body.get("event_id"), type=row.body.get("event_type"),
                        headers={"event_id": row.body.get("event_id")},
                    )
                    sent += 1
                session.execute(update(table).where(table.c.id.in_([r.id for r in rows]))
                                .values(published_at=datetime.now(timezone.utc),
                                        attempts=table.c.attempts + 1))
                metrics.EVENTS_PUBLISHED.labels(self.service_name).inc(sent)
            backlog = session.execute(select(func.count()).select_from(table)
                                      .where(table.c.published_at.is_(None))).scalar_one()
        metrics.OUTBOX_BACKLOG.labels(self.service_name).set(backlog)
        return sent
