"""The shared consumer plumbing against the real broker and database: idempotency,
dead-lettering of poison messages, replay, and requeue on transient faults."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from kombu import Connection, Exchange
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, func, select

from services.contracts.events import parse_event
from services.plumbing.consumer import DUPLICATE, reliable_event_handler
from services.plumbing.db import Database
from services.plumbing.idempotency import claim_event, make_processed_events_table
from services.tools.dead_letters import list_dead_letters, replay_dead_letters
from tests import support

pytestmark = pytest.mark.integration

SAMPLE = json.loads((Path(support.ROOT) / "services/contracts/events/samples/inspection_submitted.v1.json")
                    .read_text(encoding="utf-8"))

metadata = MetaData()
applied = Table("probe_applied", metadata, Column("id", Integer, primary_key=True, autoincrement=True),
                Column("inspection_id", String(36)))
processed = make_processed_events_table(metadata, "probe")
FAIL_ONCE = {"armed": False}


class ProbeService:
    name = "probe"
    db = Database()

    @reliable_event_handler("inspection", "inspection_submitted")
    def on_inspection_submitted(self, body):
        envelope, payload = parse_event(body, "inspection_submitted")
        if envelope.correlation_id == "bug":
            raise RuntimeError("a bug in the handler")
        if envelope.correlation_id == "flaky" and FAIL_ONCE["armed"]:
            FAIL_ONCE["armed"] = False
            from sqlalchemy.exc import OperationalError
            raise OperationalError("SELECT 1", {}, Exception("database restarting"))
        with self.db.transaction() as session:
            if not claim_event(session, processed, envelope.event_id, "probe.on_inspection_submitted",
                               envelope.event_type):
                return DUPLICATE
            session.execute(applied.insert().values(inspection_id=str(payload.inspection_id)))


def publish(amqp_uri, body):
    with Connection(amqp_uri) as conn:
        exchange = Exchange("inspection.events", type="topic", durable=True)
        conn.Producer().publish(body, exchange=exchange, routing_key="inspection_submitted",
                                serializer="json", declare=[exchange])


def applied_count(database_url):
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(applied)).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture
def probe(amqp_uri, database_url, monkeypatch):
    monkeypatch.setattr("services.plumbing.consumer.TRANSIENT_RETRY_PAUSE", 0.1)
    engine = create_engine(database_url)
    metadata.create_all(engine)
    engine.dispose()
    with support.running_services(support.base_config(amqp_uri, database_url), ProbeService):
        yield


def test_redelivered_event_is_applied_once(probe, amqp_uri, database_url):
    publish(amqp_uri, SAMPLE)
    publish(amqp_uri, SAMPLE)
    other = dict(SAMPLE, event_id="11111111-2222-4333-8444-555555555555")
    publish(amqp_uri, other)
    support.wait_until(lambda: applied_count(database_url) == 2, message="two applied events")
    support.wait_until(lambda: not list_dead_letters(amqp_uri, "probe") and _queue_drained(amqp_uri),
                       message="queue drained")
    assert applied_count(database_url) == 2


def _queue_drained(amqp_uri):
    with Connection(amqp_uri) as conn:
        _, count, _ = conn.default_channel.queue_declare(
            "evt-inspection-inspection_submitted--probe.on_inspection_submitted", passive=True)
        return count == 0


def test_poison_messages_are_dead_lettered_not_dropped_and_can_be_replayed(probe, amqp_uri, database_url):
    publish(amqp_uri, {"event_type": "inspection_submitted", "payload": "garbage"})
    publish(amqp_uri, dict(SAMPLE, correlation_id="bug"))
    dead = support.wait_until(lambda: (lambda d: d if len(d) == 2 else None)(list_dead_letters(amqp_uri, "probe")),
                              message="two dead letters")
    assert {d["queue"] for d in dead} == {"evt-inspection-inspection_submitted--probe.on_inspection_submitted"}
    assert all(d["reason"] == "rejected" for d in dead)
    assert applied_count(database_url) == 0
    # Listing does not consume.
    assert len(list_dead_letters(amqp_uri, "probe")) == 2
    # After the "fix", replaying the garbage one fails again, the good one is applied.
    assert replay_dead_letters(amqp_uri, "probe", event_id=SAMPLE["event_id"]) == 1
    support.wait_until(lambda: len(list_dead_letters(amqp_uri, "probe")) == 2, message="bug dead again")
    assert applied_count(database_url) == 0


def test_transient_failure_is_retried_not_lost(probe, amqp_uri, database_url):
    FAIL_ONCE["armed"] = True
    publish(amqp_uri, dict(SAMPLE, correlation_id="flaky"))
    support.wait_until(lambda: applied_count(database_url) == 1, message="applied after a retry")
    assert FAIL_ONCE["armed"] is False
    assert list_dead_letters(amqp_uri, "probe") == []
