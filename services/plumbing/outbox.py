"""Transactional outbox and its relay.

A worker adds its events to the same session as its rows, so both commit or neither
does. The relay (one per container) publishes committed rows with publisher confirms
and only then marks them sent: a crash between commit and publish loses nothing, and a
crash between publish and marking re-sends, which idempotent consumers absorb.

Confirms are awaited once per batch (up to OUTBOX_BATCH_SIZE rows, default 200): every
row of the batch is published, then the relay waits until the broker has confirmed all
of them, and only then marks them sent. Waiting after each message would cap the relay
at one broker round trip per event.
"""
from __future__ import annotations

import logging
import socket
import time
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
from services.plumbing import logs, metrics
from services.plumbing.config import broker_user, home_node, service_amqp_uri
from services.plumbing.db import Database, OutageLog, unavailable_dependency
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
        """Stage an event in the caller's transaction; it is published after commit.

        Without a correlation id of its own, the event carries the worker's onward (the HTTP
        request's id, or that of the event being handled), so the chain can be followed."""
        envelope = make_event(payload, self.producer, correlation_id=correlation_id or logs.current_correlation_id())
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
        self._log_staged(envelope)
        return envelope

    def add_many(self, session: Session, items: list, correlation_id: str | None = None) -> list[EventEnvelope]:
        """`add` for many events in one INSERT: `items` are (payload, {"exchange": ..,
        "routing_key": ..}) pairs, the dict empty for the service's own exchange."""
        now = datetime.now(timezone.utc)
        correlation_id = correlation_id or logs.current_correlation_id()
        envelopes, rows = [], []
        for payload, where in items:
            envelope = make_event(payload, self.producer, correlation_id=correlation_id)
            envelopes.append(envelope)
            rows.append(dict(event_id=str(envelope.event_id), event_type=envelope.event_type,
                             exchange=where.get("exchange") or self._provider.exchange_name,
                             routing_key=where.get("routing_key") or envelope.event_type,
                             body=envelope.to_message(), created_at=now, attempts=0))
        if rows:
            session.execute(self._provider.table.insert(), rows)
        self.added += len(rows)
        for envelope in envelopes:
            self._log_staged(envelope)
        return envelopes

    @staticmethod
    def _log_staged(envelope: EventEnvelope) -> None:
        log.info("staged %s %s", envelope.event_type, envelope.event_id, extra={"chuangwei": {
            "staged_event_id": str(envelope.event_id), "staged_event_type": envelope.event_type,
            "staged_correlation_id": envelope.correlation_id}})


CONFIRM_TIMEOUT = 30.0
"""Longest wait for the broker to confirm a batch; unconfirmed rows stay unsent and go again."""


class PublishNotConfirmed(ConnectionError):
    """The broker refused (nack) or did not confirm a published batch in time."""


class BatchConfirms:
    """Publisher confirms on one channel, awaited for a whole batch at once.

    After confirm.select the broker numbers the channel's publishes 1, 2, 3, ... and acks
    (or nacks) them, one by one or several at once (`multiple`)."""

    def __init__(self, channel):
        self.channel = channel
        self.published = 0
        self.outstanding: set[int] = set()
        self.refused: set[int] = set()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._ack)
        channel.events["basic_nack"].add(self._nack)

    def _settle(self, tag: int, multiple: bool) -> set[int]:
        settled = {t for t in self.outstanding if t <= tag} if multiple else ({tag} & self.outstanding)
        self.outstanding -= settled
        return settled

    def _ack(self, tag, multiple):
        self._settle(tag, multiple)

    def _nack(self, tag, multiple):
        self.refused |= self._settle(tag, multiple)

    def published_one(self) -> None:
        self.published += 1
        self.outstanding.add(self.published)

    def wait(self, timeout: float = CONFIRM_TIMEOUT) -> None:
        """Until the broker has confirmed every publish so far; raises if it refused any."""
        connection = self.channel.connection
        deadline = time.monotonic() + timeout
        while self.outstanding:
            left = deadline - time.monotonic()
            if left <= 0 or connection is None:
                raise PublishNotConfirmed(f"{len(self.outstanding)} publishes not confirmed within {timeout:g} s")
            try:
                connection.drain_events(timeout=left)
            except socket.timeout:
                continue
        if self.refused:
            refused, self.refused = len(self.refused), set()
            raise PublishNotConfirmed(f"the broker refused {refused} publishes (nack)")


class Outbox(DependencyProvider):
    """`self.outbox.add(session, payload)` in a worker (or `add_many`); relays in the background."""

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
        # Its own broker user when configured (AMQP_URIS): the user_id on its events, which
        # the broker validates, is what consumers check the producer by (EVENT_PRODUCERS).
        self.amqp_uri = service_amqp_uri(config, self.service_name)
        self.broker_user = broker_user(self.amqp_uri)
        self.poll_interval = float(config.get("OUTBOX_POLL_INTERVAL", self.poll_interval))
        self.batch_size = max(1, int(config.get("OUTBOX_BATCH_SIZE", self.batch_size)))

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
        # An outage is one warning when it starts and one when it ends, not a traceback a poll.
        outage = OutageLog(log, f"{self.service_name} outbox relay: database or broker")
        while self._running:
            try:
                if connection is None:
                    # Confirms per batch (BatchConfirms), not kombu's wait after every publish.
                    connection = Connection(self.amqp_uri, connect_timeout=5)
                    connection.ensure_connection(max_retries=1)
                while self._running and self.relay_once(connection) == self.batch_size:
                    pass
                outage.recovered()
            except Exception as exc:  # keep relaying whatever happens; rows stay unsent until it works
                metrics.OUTBOX_RELAY_FAILURES.labels(self.service_name).inc()
                if unavailable_dependency(exc) is not None:
                    outage.failed(exc)
                else:  # not an outage: a bug or a refused publish, which the operator must see
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
                confirms = getattr(channel, "_chuangwei_confirms", None)
                if confirms is None:  # a new channel (after a reconnection): select confirms once
                    confirms = channel._chuangwei_confirms = BatchConfirms(channel)
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
                        headers={"event_id": row.body.get("event_id")}, user_id=self.broker_user,
                    )
                    confirms.published_one()
                    sent += 1
                confirms.wait()
                session.execute(update(table).where(table.c.id.in_([r.id for r in rows]))
                                .values(published_at=datetime.now(timezone.utc),
                                        attempts=table.c.attempts + 1))
                metrics.EVENTS_PUBLISHED.labels(self.service_name).inc(sent)
            backlog, oldest = session.execute(select(func.count(), func.min(table.c.created_at))
                                              .where(table.c.published_at.is_(None))).one()
        metrics.OUTBOX_BACKLOG.labels(self.service_name).set(backlog)
        if oldest is not None and oldest.tzinfo is None:  # SQLite may hand back a naive UTC value
            oldest = oldest.replace(tzinfo=timezone.utc)
        age = (datetime.now(timezone.utc) - oldest).total_seconds() if oldest is not None else 0.0
        metrics.OUTBOX_OLDEST_AGE.labels(self.service_name).set(max(age, 0.0))
        return sent
