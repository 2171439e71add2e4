"""The outbox relay loses its broker connection after a publish reached the broker and before
the broker's confirm came back: the row stays unsent, the relay sends the event again once it
reconnects, and the consumer (a real scoring service) applies it once. The broker path is cut
with a TCP proxy (tests/integration/tcp_proxy.py); the shared broker is never stopped."""
from __future__ import annotations

import pytest

from services.inspection.service import InspectionService
from services.scoring.service import ScoringService
from tests import support
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.test_dependency_faults import through, upstream_of

pytestmark = pytest.mark.integration

COMMUNITY = "411502008001"


def unsent(database_url) -> int:
    return support.scalar(database_url, "SELECT count(*) FROM inspection_outbox WHERE published_at IS NULL")


def test_an_event_whose_confirm_was_lost_is_sent_again_and_applied_once(amqp_uri, database_url, event_tap):
    broker = TcpProxy(upstream_of(amqp_uri), amqp=True).start()
    ports = {"inspection": support.free_port(), "scoring": support.free_port()}
    # Only the inspection service (and so its relay) reaches the broker through the proxy.
    inspection_config = support.base_config(through(amqp_uri, broker), database_url,
                                            WEB_ADDRESSES={"inspection": f"127.0.0.1:{ports['inspection']}"})
    scoring_config = support.base_config(amqp_uri, database_url,
                                         WEB_ADDRESSES={"scoring": f"127.0.0.1:{ports['scoring']}"})
    tap = event_tap(("inspection.events", "inspection_submitted"))
    try:
        with support.running_services(scoring_config, ScoringService), \
                support.running_services(inspection_config, InspectionService):
            try:
                confirm_lost_then_resent(ports, database_url, tap, broker)
            finally:
                # Before the services stop: a publish still waiting for its confirm would hold the
                # relay, and a service stops cleanly only with its broker reachable.
                broker.stop()
                broker.start()
    finally:
        broker.stop()


def confirm_lost_then_resent(ports, database_url, tap, broker):
    inspection = support.ApiClient(f"http://127.0.0.1:{ports['inspection']}")
    scoring = support.ApiClient(f"http://127.0.0.1:{ports['scoring']}")
    subject = inspection.post("/subjects", {"subject_type": "child_unit", "node": COMMUNITY,
                                            "name": "周家山社区"}).json()["subject_id"]

    def submit(day, deduction):
        response = inspection.post("/inspections", {
            "kind": "routine", "subject_id": subject, "checklist": {"version": "2010.1", "code": "public-toilet"},
            "inspectors": ["王芳"], "inspected_at": f"2026-11-{day:02d}T10:00:00+08:00",
            "results": [{"item_code": "PT-02", "findings": 1, "deduction": deduction}]})
        assert response.status_code == 201, response.text
        return response.json()["inspection_id"]
    handled = support.events_consumed(scoring, "scoring", "inspection_submitted")
    duplicates = support.events_consumed(scoring, "scoring", "inspection_submitted", outcomes=("duplicate",))
    first = submit(2, 10)
    tap.wait_for("inspection_submitted")  # the relay is connected and confirmed once
    support.wait_until(lambda: unsent(database_url) == 0, message="the first event marked sent")

    broker.drop_confirms()
    second = submit(9, 6)
    # The broker has the event (the tap got it) but its confirm never reached the relay.
    copies = tap.wait_for("inspection_submitted", 2)
    assert [e["payload"]["inspection_id"] for e in copies] == [first, second]
    assert unsent(database_url) == 1

    broker.stop()   # the connection drops with the publish unconfirmed …
    broker.start()  # … and the relay reconnects and sends the unconfirmed row again
    support.wait_until(lambda: unsent(database_url) == 0, timeout=30, message="the event confirmed")
    copies = tap.wait_for("inspection_submitted", 3)
    assert [e["payload"]["inspection_id"] for e in copies] == [first, second, second]
    assert copies[1]["event_id"] == copies[2]["event_id"]

    support.wait_consumed(scoring, "scoring", "inspection_submitted", handled + 3)
    assert support.events_consumed(scoring, "scoring", "inspection_submitted",
                                   outcomes=("duplicate",)) == duplicates + 1
    applied = support.scalar_rows(database_url, "SELECT inspection_id FROM scoring_inputs")
    assert sorted(r[0] for r in applied) == sorted([first, second])
    ranking = scoring.get("/rankings", params={"period": "2026-11", "tier": "community"}).json()
    [row] = ranking["ranking"]
    assert (row["node"], row["inputs"], row["score"]) == (COMMUNITY, 2, 92.0)  # (90 + 94) / 2
