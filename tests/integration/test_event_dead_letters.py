"""GET /event-dead-letters, which every service inherits from OperatorEndpoints (issue 12):
the administrators of the stack's node see what the service's consumers dead-lettered and
why, and looking takes nothing off the queue."""
from __future__ import annotations

import pytest
from kombu import Connection, Exchange

from services.inspection.service import InspectionService
from services.notify.service import NotifyService
from tests import support

pytestmark = pytest.mark.integration

STREET = "411502008000"


@pytest.fixture
def stack(amqp_uri, database_url):
    ports = {"notify": support.free_port(), "inspection": support.free_port()}
    config = support.base_config(amqp_uri, database_url,
                                 WEB_ADDRESSES={name: f"127.0.0.1:{port}" for name, port in ports.items()},
                                 NOTIFY_BULLETIN_SCHEDULE=False, NOTIFY_POLL_INTERVAL=0.5)
    with support.running_services(config, NotifyService, InspectionService):
        yield {name: support.ApiClient(f"http://127.0.0.1:{port}") for name, port in ports.items()}


def publish(amqp_uri, body):
    with Connection(amqp_uri) as conn:
        exchange = Exchange("inspection.events", type="topic", durable=True)
        conn.Producer().publish(body, exchange=exchange, routing_key="inspection_submitted",
                                serializer="json", declare=[exchange])


def test_administrators_see_the_events_a_service_dead_lettered_and_they_stay_queued(stack, amqp_uri):
    notify = stack["notify"]
    forged = {"event_id": "99999999-2222-4333-8444-555555555555", "event_type": "inspection_submitted",
              "payload": {}}
    publish(amqp_uri, forged)
    [letter] = support.wait_until(lambda: notify.get("/event-dead-letters").json() or None,
                                  message="the forged event dead-lettered")
    assert letter == {
        "event_id": forged["event_id"], "event_type": "inspection_submitted",
        "queue": "evt-inspection-inspection_submitted--notify.on_inspection_submitted",
        "reason": "refused producer: the event names no producer", "count": None,
        "published_by": None, "body": forged}
    # Looking twice sees it twice: nothing was consumed.
    assert notify.get("/event-dead-letters").json() == [letter]
    assert notify.get("/event-dead-letters", params={"limit": 0}).status_code == 422

    other_district = notify.as_user("平桥区管理员", [("administrator", "411503000000")])
    refused = other_district.get("/event-dead-letters")
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden", refused.text
    inspector = notify.as_user("王芳", [("inspector", STREET)])
    assert inspector.get("/event-dead-letters").status_code == 403
    assert notify.anonymous().get("/event-dead-letters").status_code == 401
    assert notify.get("/event-dead-letters").json() == [letter]

    # A service without consumers has no dead-letter queue: nothing to list.
    assert stack["inspection"].get("/event-dead-letters").json() == []
