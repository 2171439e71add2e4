"""Scoring in batches on a real broker and database (issue 11): the same events, queued
before the service starts, give the same figures and ranks one by one (EVENT_BATCH_SIZE=1)
and in batches, each event applied exactly once, duplicates included."""
from __future__ import annotations

import random
from uuid import uuid4

import pytest
from kombu import Connection, Exchange, Producer, Queue
from sqlalchemy import create_engine, func, select

from services.plumbing.consumer import dead_letter_exchange_name
from services.scoring.models import PeriodScore, ScoreInputRow, outbox as scoring_outbox, processed_events
from services.scoring.service import ScoringService
from tests import support
from tests.unit.scoring.test_service_unit import inspection_event

pytestmark = pytest.mark.integration

QUEUE = "evt-inspection-inspection_submitted--scoring.on_inspection_submitted"


def queue_events(amqp_uri: str, bodies: list[dict]) -> None:
    """Declare the handler's queue as the service will, and fill it before the service starts."""
    exchange = Exchange("inspection.events", type="topic", durable=True)
    with Connection(amqp_uri) as conn:
        channel = conn.default_channel
        exchange(channel).declare()
        Queue(QUEUE, exchange=exchange, routing_key="inspection_submitted", durable=True,
              queue_arguments={"x-dead-letter-exchange": dead_letter_exchange_name("scoring")})(channel).declare()
        producer = Producer(channel)
        for body in bodies:
            producer.publish(body, exchange=exchange, routing_key="inspection_submitted", serializer="json",
                             delivery_mode=2)


def score_all(amqp_uri: str, database_url: str, bodies: list[dict], batch_size: int, unique: int) -> dict:
    queue_events(amqp_uri, bodies)
    config = support.base_config(amqp_uri, database_url, EVENT_BATCH_SIZE=batch_size, OUTBOX_POLL_INTERVAL=0.1)
    engine = create_engine(database_url)
    try:
        with support.running_services(config, ScoringService):
            def count(table):
                with engine.connect() as conn:
                    return conn.execute(select(func.count()).select_from(table)).scalar_one()
            support.wait_until(lambda: count(processed_events) == unique, timeout=300, interval=0.5,
                               message="every event claimed")
            support.wait_until(lambda: (support.RabbitAdmin().queue(amqp_uri.rsplit("/", 1)[1], QUEUE) or {})
                               .get("messages") == 0, timeout=120, interval=0.5, message="the queue drained")
        with engine.connect() as conn:
            rows = conn.execute(select(PeriodScore)).all()
            return {
                "figures": {(r.subject_id, r.period_kind, r.period): (
                    r.score, r.grade, r.inputs, r.vetoed, r.rank, r.ranked, r.peers, r.movement, r.position)
                    for r in rows},
                "inputs": conn.execute(select(func.count()).select_from(ScoreInputRow)).scalar_one(),
                "claims": conn.execute(select(func.count()).select_from(processed_events)).scalar_one(),
                "events": conn.execute(select(func.count()).select_from(scoring_outbox)).scalar_one(),
            }
    finally:
        engine.dispose()


def test_batched_and_one_by_one_scoring_agree(amqp_uri, make_database):
    rng = random.Random(11)
    communities = [f"41150200800{i}" for i in range(1, 9)]
    ids = {node: str(uuid4()) for node in communities}
    days = ["2026-10-27", "2026-11-02", "2026-11-05", "2026-11-10", "2026-11-18", "2026-11-25"]
    bodies = [inspection_event(node, float(rng.choice([70, 80, 85, 90, 95, 100])), rng.choice(days), ids[node])
              for node in (rng.choice(communities) for _ in range(40))]
    poison = {"event_id": str(uuid4()), "event_type": "inspection_submitted", "occurred_at": "2026-11-02T02:00:00Z",
              "producer": {"node": "411502008000", "service": "inspection"}, "payload": {"score": "abc"}}
    # Redelivered copies, and a poison message amid the rest: a batch holding it is retried
    # event by event, the poison alone dead-lettered.
    stream = bodies[:20] + [poison] + bodies[20:] + [bodies[5], bodies[30], bodies[30]]
    vhost = amqp_uri.rsplit("/", 1)[1]

    def dead_letters():
        return (support.RabbitAdmin().queue(vhost, "scoring.dead-letters") or {}).get("messages")

    one_by_one = score_all(amqp_uri, make_database(), stream, batch_size=1, unique=40)
    support.wait_until(lambda: dead_letters() == 1, timeout=60, message="the poison dead-lettered")
    batched = score_all(amqp_uri, make_database(), stream, batch_size=25, unique=40)
    support.wait_until(lambda: dead_letters() == 2, timeout=60, message="the poison dead-lettered again")

    assert batched["figures"] == one_by_one["figures"]
    assert batched["inputs"] == one_by_one["inputs"] == 40
    assert batched["claims"] == one_by_one["claims"] == 40
    ranked = [k for k, v in batched["figures"].items() if k[1] == "month" and v[5]]
    assert ranked, "some communities are ranked in the month"
    # The queued events were applied in batches: fewer recomputations published fewer events.
    assert batched["events"] < one_by_one["events"]
