"""Dead letters in a real service (scoring), and the operator's `dead_letters` command.

A scoring service started with the wrong node (a mistyped NODE_CODE) refuses its own stack's
inspection events as coming from a stranger and dead-letters them: nothing is applied, nothing
is lost. Restarted with the right node, it dead-letters a malformed event on its own merits,
and `python -m services.tools.dead_letters replay --event-id ...` puts the refused inspection
back on its queue, where it is applied once; the malformed one stays dead."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import pytest
from kombu import Connection, Exchange

from services.inspection.service import InspectionService
from services.scoring.service import ScoringService
from services.tools.dead_letters import list_dead_letters
from tests import support

pytestmark = pytest.mark.integration

STREET, OTHER_STREET = "411502008000", "411502003000"   # 金牛山街道, and the one mistyped into the config
COMMUNITY = "411502008001"
QUEUE = "evt-inspection-inspection_submitted--scoring.on_inspection_submitted"


def operator(amqp_uri: str, *args: str) -> str:
    """The operator's command, as run from a shell."""
    done = subprocess.run([sys.executable, "-m", "services.tools.dead_letters", *args, "--service", "scoring",
                           "--amqp-uri", amqp_uri], cwd=support.ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(support.ROOT)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def scoring_inputs(database_url: str) -> list[str]:
    return [row[0] for row in support.scalar_rows(database_url, "SELECT inspection_id FROM scoring_inputs")]


def publish(amqp_uri: str, body: dict) -> None:
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        exchange = Exchange("inspection.events", type="topic", durable=True)
        conn.Producer().publish(body, exchange=exchange, routing_key="inspection_submitted", serializer="json",
                                delivery_mode=2, declare=[exchange])


def test_a_refused_event_replayed_by_the_operator_is_applied_once_and_a_malformed_one_stays_dead(
        amqp_uri, database_url, event_tap, vhost, rabbit_admin):
    ports = {"inspection": support.free_port(), "scoring": support.free_port()}
    inspection_config = support.base_config(amqp_uri, database_url,
                                            WEB_ADDRESSES={"inspection": f"127.0.0.1:{ports['inspection']}"})
    scoring_config = support.base_config(amqp_uri, database_url,
                                         WEB_ADDRESSES={"scoring": f"127.0.0.1:{ports['scoring']}"})
    tap = event_tap(("inspection.events", "inspection_submitted"))
    inspection = support.ApiClient(f"http://127.0.0.1:{ports['inspection']}")
    scoring = support.ApiClient(f"http://127.0.0.1:{ports['scoring']}")
    with support.running_services(inspection_config, InspectionService):
        subject = inspection.post("/subjects", {"subject_type": "child_unit", "node": COMMUNITY, "name": "周家山社区"})
        assert subject.status_code == 201, subject.text

        # The registry is the process's: compare differences.
        with support.running_services({**scoring_config, "NODE_CODE": OTHER_STREET}, ScoringService):
            refused_before = support.events_consumed(scoring, "scoring", "inspection_submitted",
                                                     outcomes=("refused_producer",))
            support.wait_until(lambda: rabbit_admin.queue(vhost, QUEUE), message=f"queue {QUEUE}")
            submitted = inspection.post("/inspections", {
                "kind": "routine", "subject_id": subject.json()["subject_id"],
                "checklist": {"version": "2010.1", "code": "public-toilet"}, "inspectors": ["王芳"],
                "inspected_at": "2026-11-02T10:00:00+08:00",
                "results": [{"item_code": "PT-02", "findings": 1, "deduction": 10}]})
            assert submitted.status_code == 201, submitted.text
            [event] = tap.wait_for("inspection_submitted")
            [refused] = support.wait_until(lambda: list_dead_letters(amqp_uri, "scoring") or None,
                                           message="the refused event dead-lettered")
            assert (refused["event_id"], refused["queue"], refused["reason"]) == (
                event["event_id"], QUEUE,
                f"refused producer: inspection@{STREET} is not this stack's inspection service ({OTHER_STREET})")
            assert support.events_consumed(scoring, "scoring", "inspection_submitted",
                                           outcomes=("refused_producer",)) == refused_before + 1
        assert scoring_inputs(database_url) == []  # refused: nothing applied

        # The configuration fixed, the service restarted: a malformed event is dead-lettered on its own.
        with support.running_services(scoring_config, ScoringService):
            malformed = {"event_id": str(uuid.uuid4()), "event_type": "inspection_submitted", "schema_version": 1,
                         "occurred_at": datetime.now(timezone.utc).isoformat(),
                         "producer": {"node": STREET, "service": "inspection"}, "payload": {"inspection_id": "半条"}}
            publish(amqp_uri, malformed)
            support.wait_until(lambda: len(list_dead_letters(amqp_uri, "scoring")) == 2,
                               message="the malformed event dead-lettered")
            listed = {line for line in operator(amqp_uri, "list").splitlines() if line}
            assert len(listed) == 2 and any(malformed["event_id"] in line for line in listed)

            assert operator(amqp_uri, "replay", "--event-id", event["event_id"]) == "replayed 1 message(s)\n"
            support.wait_until(lambda: scoring_inputs(database_url) == [event["payload"]["inspection_id"]],
                               message="the replayed inspection applied")
            [still_dead] = list_dead_letters(amqp_uri, "scoring")
            assert still_dead["event_id"] == malformed["event_id"] and still_dead["queue"] == QUEUE

            # The same event once more (a second replay, a broker redelivery): recognised, not applied again.
            handled = support.events_consumed(scoring, "scoring", "inspection_submitted")
            duplicates = support.events_consumed(scoring, "scoring", "inspection_submitted", outcomes=("duplicate",))
            publish(amqp_uri, event)
            support.wait_consumed(scoring, "scoring", "inspection_submitted", handled + 1)
            assert support.events_consumed(scoring, "scoring", "inspection_submitted",
                                           outcomes=("duplicate",)) == duplicates + 1
            assert scoring_inputs(database_url) == [event["payload"]["inspection_id"]]
            ranking = scoring.get("/rankings", params={"period": "2026-11", "tier": "community"}).json()
            [row] = ranking["ranking"] + ranking["below_minimum_sample"]
            assert (row["node"], row["inputs"], row["score"]) == (COMMUNITY, 1, 90.0)
