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
ALWAYS_DOWN = {"calls": 0}


class ProbeService:
    name = "probe"
    db = Database()

    @reliable_event_handler("inspection", "inspection_submitted")
    def on_inspection_submitted(self, body):
        envelope, payload = parse_event(body, "inspection_submitted")
        if envelope.correlation_id == "bug":
            raise RuntimeError("a bug in the handler")
        if envelope.correlation_id == "down":
            ALWAYS_DOWN["calls"] += 1
            from sqlalchemy.exc import OperationalError
            raise OperationalError("SELECT 1", {}, Exception("could not connect to server"))
        if envelope.correlation_id == "pool-busy" and FAIL_ONCE["armed"]:
            FAIL_ONCE["armed"] = False
            from sqlalchemy.exc import TimeoutError as PoolTimeout
            raise PoolTimeout("QueuePool limit of size 3 overflow 5 reached, connection timed out, timeout 30.00")
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
    config = support.base_config(amqp_uri, database_url, EVENT_MAX_DELIVERIES=3)
    with support.running_services(config, ProbeService):
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
    # The garbage names no producer: refused with the reason; the bug is rejected by the broker.
    assert sorted(d["reason"] for d in dead) == ["refused producer: the event names no producer", "rejected"]
    assert applied_count(database_url) == 0
    # Listing does not consume.
    assert len(list_dead_letters(amqp_uri, "probe")) == 2
    # Replayed before its bug is fixed, the event fails again and is dead-lettered again: nothing
    # applied, nothing lost.
    assert replay_dead_letters(amqp_uri, "probe", event_id=SAMPLE["event_id"]) == 1
    support.wait_until(lambda: len(list_dead_letters(amqp_uri, "probe")) == 2, message="bug dead again")
    assert applied_count(database_url) == 0


@pytest.mark.parametrize("failure", ["flaky", "pool-busy"])  # database restarting; no pooled connection free
def test_transient_failure_is_retried_not_lost(probe, amqp_uri, database_url, failure):
    FAIL_ONCE["armed"] = True
    publish(amqp_uri, dict(SAMPLE, correlation_id=failure))
    support.wait_until(lambda: applied_count(database_url) == 1, message="applied after a retry")
    assert FAIL_ONCE["armed"] is False
    assert list_dead_letters(amqp_uri, "probe") == []


@pytest.mark.parametrize("producer", [
    {"node": "411502003000", "service": "inspection"},   # another street's stack
    {"node": "411502008000", "service": "notify"},       # the right stack, the wrong service
    {"node": "not-a-code", "service": "inspection"},
], ids=["other-node", "other-service", "malformed"])
def test_an_event_claiming_another_producer_is_dead_lettered_not_applied(probe, amqp_uri, database_url,
                                                                         producer):
    # The probe runs in the street stack 411502008000 (base_config's node).
    publish(amqp_uri, dict(SAMPLE, producer=producer))
    publish(amqp_uri, dict(SAMPLE, event_id="11111111-2222-4333-8444-555555555556"))
    support.wait_until(lambda: applied_count(database_url) == 1, message="the genuine event applied")
    dead = support.wait_until(lambda: list_dead_letters(amqp_uri, "probe") or None, message="a dead letter")
    assert [d["event_id"] for d in dead] == [SAMPLE["event_id"]]


QUEUE = "evt-inspection-inspection_submitted--probe.on_inspection_submitted"


def publish_raw(amqp_uri, body: bytes, content_type, content_encoding="utf-8"):
    with Connection(amqp_uri) as conn:
        exchange = Exchange("inspection.events", type="topic", durable=True)
        conn.Producer().publish(body, exchange=exchange, routing_key="inspection_submitted",
                                content_type=content_type, content_encoding=content_encoding,
                                declare=[exchange])


def consumed(outcome):
    from prometheus_client import REGISTRY
    return REGISTRY.get_sample_value("chuangwei_events_consumed_total", {
        "service": "probe", "event_type": "inspection_submitted", "outcome": outcome}) or 0


def test_undecodable_messages_are_dead_lettered_with_the_reason_not_dropped(probe, amqp_uri, database_url):
    before = consumed("undecodable")
    publish_raw(amqp_uri, "检查".encode("gbk"), "application/json")          # not UTF-8
    publish_raw(amqp_uri, b"inspection submitted", "text/plain")            # not JSON at all
    publish_raw(amqp_uri, b'{"event_type": "inspection_submitted",', "application/json")  # broken JSON
    publish(amqp_uri, SAMPLE)  # the queue goes on after them
    support.wait_until(lambda: applied_count(database_url) == 1, message="the good event applied")
    dead = support.wait_until(lambda: (lambda d: d if len(d) == 3 else None)(list_dead_letters(amqp_uri, "probe")),
                              message="three dead letters")
    assert {d["queue"] for d in dead} == {QUEUE}
    assert all(d["reason"].startswith("undecodable message") for d in dead), dead
    assert any("text/plain" in d["reason"] for d in dead)
    assert consumed("undecodable") - before == 3
    # The raw bytes are kept as they came, for whoever investigates.
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        bodies = set()
        while (message := channel.basic_get("probe.dead-letters", no_ack=True)) is not None:
            # (py-amqp decodes a body it can decode with its content encoding)
            body = message.body
            bodies.add(body.encode("utf-8") if isinstance(body, str) else bytes(body))
    assert "检查".encode("gbk") in bodies and b"inspection submitted" in bodies


def test_a_transient_failure_that_never_ends_is_dead_lettered_after_the_delivery_limit(probe, amqp_uri,
                                                                                      database_url):
    ALWAYS_DOWN["calls"] = 0
    retried, exhausted = consumed("retried"), consumed("retries_exhausted")
    publish(amqp_uri, dict(SAMPLE, correlation_id="down"))
    [dead] = support.wait_until(lambda: list_dead_letters(amqp_uri, "probe") or None, message="a dead letter")
    assert ALWAYS_DOWN["calls"] == 3  # EVENT_MAX_DELIVERIES=3: three deliveries, then no more
    assert dead["event_id"] == SAMPLE["event_id"] and dead["queue"] == QUEUE
    assert "3 deliveries" in dead["reason"] and "could not connect" in dead["reason"]
    assert consumed("retried") - retried == 2 and consumed("retries_exhausted") - exhausted == 1
    from prometheus_client import REGISTRY
    assert REGISTRY.get_sample_value("chuangwei_event_max_deliveries", {"service": "probe"}) == 3
    assert _queue_drained(amqp_uri)
    # Once the cause is fixed, a replay applies it.
    assert replay_dead_letters(amqp_uri, "probe") == 1
    support.wait_until(lambda: ALWAYS_DOWN["calls"] == 4, message="replayed")


def test_processed_event_claims_are_pruned_past_the_retention(amqp_uri, database_url):
    from datetime import datetime, timedelta, timezone
    engine = create_engine(database_url)
    metadata.create_all(engine)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(processed.insert(), [
            {"event_id": "old", "consumer": "probe", "event_type": "inspection_submitted",
             "processed_at": now - timedelta(days=31)},
            {"event_id": "recent", "consumer": "probe", "event_type": "inspection_submitted",
             "processed_at": now - timedelta(days=29)}])
    config = support.base_config(amqp_uri, database_url, PROCESSED_EVENTS_PRUNE_INTERVAL=0.2,
                                 PROCESSED_EVENTS_RETENTION_DAYS=30)
    try:
        # Two instances, as in a scaled-out stack: both prune, neither trips over the other.
        with support.running_services(config, ProbeService), support.running_services(config, ProbeService):
            def kept():
                with engine.connect() as conn:
                    return sorted(r.event_id for r in conn.execute(select(processed.c.event_id)))
            support.wait_until(lambda: kept() == ["recent"], message="the old claim pruned")
            # Another old claim, pruned in a later round: the recent one outlived that round too.
            with engine.begin() as conn:
                conn.execute(processed.insert(), [{"event_id": "older", "consumer": "probe",
                                                   "event_type": "inspection_submitted",
                                                   "processed_at": now - timedelta(days=40)}])
            support.wait_until(lambda: kept() == ["recent"], message="the later old claim pruned")
    finally:
        engine.dispose()
