"""Events are accepted only from their producer (issue 12): each service publishes as its
own broker user, RabbitMQ validates the `user_id` property against the connection's user,
and consumers configured with EVENT_PRODUCERS dead-letter anything else with the reason.

Users are created on the shared broker for this test's own vhost only (through the
management API), with the least-privilege permissions infra/README.md documents, and
deleted afterwards."""
from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import requests
from amqp.exceptions import PreconditionFailed
from kombu import Connection, Exchange

from services.inspection.service import InspectionService
from services.plumbing.consumer import PRODUCER_USER_HEADER
from services.tools.dead_letters import list_dead_letters, replay_dead_letters
from tests import support
from tests.integration import test_reliable_consumer as probe
from tests.integration.test_inspection_service import inspection_body, register
from tests.nodes import service_permissions

pytestmark = pytest.mark.integration

QUEUE = probe.QUEUE


@pytest.fixture
def broker_users(rabbit_admin, vhost, amqp_uri):
    """name → AMQP URI, for users made for this test only; `forger` may write anywhere."""
    created = {}

    def make(role: str, permissions: dict[str, str]) -> str:
        user, password = f"{vhost}-{role}", f"pw-{role}"
        r = requests.put(f"{rabbit_admin.base}/users/{quote(user, safe='')}", auth=rabbit_admin.auth,
                         json={"password": password, "tags": ""}, timeout=10)
        r.raise_for_status()
        created[role] = user
        r = requests.put(f"{rabbit_admin.base}/permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
                         auth=rabbit_admin.auth, json=permissions, timeout=10)
        r.raise_for_status()
        parts = urlsplit(amqp_uri)
        return urlunsplit((parts.scheme, f"{quote(user, safe='')}:{password}@{parts.hostname}:{parts.port or 5672}",
                           parts.path, "", ""))

    uris = {name: make(name, service_permissions(name)) for name in ("inspection", "probe")}
    uris["forger"] = make("forger", {"configure": ".*", "write": ".*", "read": ".*"})
    yield {"uris": uris, "users": dict(created)}
    for user in created.values():
        requests.delete(f"{rabbit_admin.base}/users/{quote(user, safe='')}", auth=rabbit_admin.auth, timeout=10)


def publish_as(uri: str, body: dict, user_id: str | None = None, headers: dict | None = None):
    with Connection(uri, transport_options={"confirm_publish": True}) as conn:
        exchange = Exchange("inspection.events", type="topic", durable=True)
        extra = {"user_id": user_id} if user_id is not None else {}
        conn.Producer().publish(body, exchange=exchange, routing_key="inspection_submitted",
                                serializer="json", headers=headers or {}, declare=[exchange], **extra)


def event(n: int, **overrides) -> dict:
    return dict(probe.SAMPLE, event_id=f"11111111-2222-4333-8444-{n:012d}", **overrides)


@pytest.fixture
def checked_probe(amqp_uri, database_url, broker_users, monkeypatch):
    monkeypatch.setattr("services.plumbing.consumer.TRANSIENT_RETRY_PAUSE", 0.1)
    from sqlalchemy import create_engine
    engine = create_engine(database_url)
    probe.metadata.create_all(engine)
    engine.dispose()
    config = support.base_config(amqp_uri, database_url, EVENT_MAX_DELIVERIES=3,
                                 AMQP_URIS={"probe": broker_users["uris"]["probe"]},
                                 EVENT_PRODUCERS={"inspection": broker_users["users"]["inspection"]})
    with support.running_services(config, probe.ProbeService):
        yield broker_users


def test_only_the_producers_broker_user_gets_an_event_applied(checked_probe, amqp_uri, database_url):
    uris, users = checked_probe["uris"], checked_probe["users"]
    publish_as(uris["inspection"], event(1), user_id=users["inspection"])
    publish_as(uris["forger"], event(2))                                  # no user_id at all
    publish_as(uris["forger"], event(3), user_id=users["forger"])          # its own, validated
    # Claiming to have been republished by the consumer for the producer does not help either.
    publish_as(uris["forger"], event(4), headers={PRODUCER_USER_HEADER: users["inspection"]})
    # The broker itself refuses a user_id that is not the connection's: it cannot be forged.
    with pytest.raises(PreconditionFailed):
        publish_as(uris["forger"], event(5), user_id=users["inspection"])
    publish_as(uris["inspection"], event(6), user_id=users["inspection"])  # a later marker

    support.wait_until(lambda: probe.applied_count(database_url) == 2, message="the producer's two events")
    dead = support.wait_until(lambda: (lambda d: d if len(d) == 3 else None)(list_dead_letters(amqp_uri, "probe")),
                              message="three forged events dead-lettered")
    by_id = {d["event_id"][-1]: d for d in dead}
    assert sorted(by_id) == ["2", "3", "4"]
    assert {d["queue"] for d in dead} == {QUEUE}
    inspection = users["inspection"]
    assert by_id["2"]["reason"] == f"refused producer: published by broker user None, not by inspection's {inspection!r}"
    assert by_id["3"]["reason"] == (f"refused producer: published by broker user {users['forger']!r}, "
                                    f"not by inspection's {inspection!r}")
    assert by_id["4"]["reason"] == by_id["2"]["reason"]
    assert probe.consumed("refused_producer") >= 3


def test_retries_and_replays_keep_the_producer_known(checked_probe, amqp_uri, database_url):
    """A retry is republished by the consumer as itself, a replay by an operator with the
    consumer's credentials: both carry the original publisher along and are accepted."""
    uris, users = checked_probe["uris"], checked_probe["users"]
    probe.FAIL_ONCE["armed"] = True
    publish_as(uris["inspection"], event(7, correlation_id="flaky"), user_id=users["inspection"])
    support.wait_until(lambda: probe.applied_count(database_url) == 1, message="applied after a retry")
    assert probe.FAIL_ONCE["armed"] is False

    probe.ALWAYS_DOWN["calls"] = 0
    publish_as(uris["inspection"], event(8, correlation_id="down"), user_id=users["inspection"])
    [dead] = support.wait_until(lambda: list_dead_letters(amqp_uri, "probe") or None, message="retries exhausted")
    assert "3 deliveries" in dead["reason"] and probe.ALWAYS_DOWN["calls"] == 3
    assert replay_dead_letters(uris["probe"], "probe") == 1
    support.wait_until(lambda: probe.ALWAYS_DOWN["calls"] == 4, message="the replay reached the handler")


def test_events_a_service_publishes_carry_its_broker_user(amqp_uri, database_url, broker_users, monkeypatch):
    """The outbox relay publishes as the service's own user: the probe, checking producers,
    applies the inspection service's real event."""
    from sqlalchemy import create_engine
    engine = create_engine(database_url)
    probe.metadata.create_all(engine)
    engine.dispose()
    port = support.free_port()
    config = support.base_config(amqp_uri, database_url, WEB_ADDRESSES={"inspection": f"127.0.0.1:{port}"},
                                 AMQP_URIS={"probe": broker_users["uris"]["probe"],
                                            "inspection": broker_users["uris"]["inspection"]},
                                 EVENT_PRODUCERS={"inspection": broker_users["users"]["inspection"]})
    with support.running_services(config, InspectionService, probe.ProbeService):
        api = support.ApiClient(f"http://127.0.0.1:{port}")
        subject, place = register(api)
        assert api.post("/inspections", inspection_body(subject, place)).status_code == 201
        support.wait_until(lambda: probe.applied_count(database_url) == 1, message="the real event applied")
    assert list_dead_letters(amqp_uri, "probe") == []


def test_a_consumer_whose_producer_has_no_broker_user_configured_does_not_start(amqp_uri, database_url):
    config = support.base_config(amqp_uri, database_url, EVENT_PRODUCERS={"scoring": "chuangwei-scoring"})
    with pytest.raises(RuntimeError, match="EVENT_PRODUCERS names no broker user for inspection"):
        with support.running_services(config, probe.ProbeService):
            pass
