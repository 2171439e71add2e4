"""A service whose database or broker goes away (issue 12), against the real ones: they are
cut off through a TCP proxy the test controls, never stopped (they are shared)."""
from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import eventlet
import pytest
from sqlalchemy import create_engine

from services.inspection.service import InspectionService
from tests import support
from tests.integration.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


def through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit((parts.scheme, f"{netloc[0]}@{host}" if len(netloc) == 2 else host,
                       parts.path, parts.query, parts.fragment))


def upstream_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port or {"amqp": 5672}.get(parts.scheme, 5432)


@pytest.fixture
def db_proxy(database_url):
    proxy = TcpProxy(upstream_of(database_url)).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def inspection_via_proxy(amqp_uri, database_url, db_proxy):
    port = support.free_port()
    config = support.base_config(amqp_uri, through(database_url, db_proxy),
                                 WEB_ADDRESSES={"inspection": f"127.0.0.1:{port}"})
    with support.running_services(config, InspectionService):
        yield support.ApiClient(f"http://127.0.0.1:{port}")


RELAY_FAILURES = "chuangwei_outbox_relay_failures_total"
SUBJECT = {"subject_type": "child_unit", "node": "411502008001", "name": "周家山社区"}


def test_a_database_outage_answers_503_with_retry_after_and_recovers(inspection_via_proxy, db_proxy, caplog):
    api = inspection_via_proxy
    assert api.get("/subjects").status_code == 200
    caplog.clear()
    relay_failures = support.metric(api, RELAY_FAILURES, service="inspection")
    with caplog.at_level(logging.WARNING):
        db_proxy.stop()
        for _ in range(5):
            for response in (api.get("/subjects"), api.post("/subjects", SUBJECT)):
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"].isdigit()
                assert response.json()["error"] == "service_unavailable"
        # The outbox relay polls the dead database too: a few of its rounds fail before the count.
        support.wait_until(lambda: support.metric(api, RELAY_FAILURES, service="inspection") >= relay_failures + 3,
                           message="three failed outbox relay rounds")
    # Operators read one line per outage and source, not a traceback per request or poll.
    turned_away = [r for r in caplog.records if "answering 503" in r.getMessage()]
    relay = [r for r in caplog.records if r.name == "services.plumbing.outbox"]
    assert len(turned_away) == 1, [r.getMessage() for r in turned_away]
    assert len(relay) <= 1, [r.getMessage() for r in relay]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]

    db_proxy.start()
    created = support.wait_until(lambda: (lambda r: r if r.status_code == 201 else None)(
        api.post("/subjects", SUBJECT)), message="the service answering again")
    assert created.json()["name"] == SUBJECT["name"]
    assert api.get("/subjects").status_code == 200


@pytest.mark.parametrize("late", ["broker", "database"])
def test_a_service_started_before_its_broker_or_database_connects_when_they_come_up(
        late, amqp_uri, database_url):
    """Both are reached through proxies; one of them only starts forwarding 3 s after the
    service was started (connection refused until then, as with a broker still booting)."""
    from nameko.runners import ServiceRunner
    from tests.integration import test_reliable_consumer as probe

    engine = create_engine(database_url)
    probe.metadata.create_all(engine)
    engine.dispose()
    broker = TcpProxy(upstream_of(amqp_uri))
    database = TcpProxy(upstream_of(database_url))
    (database if late == "broker" else broker).start()
    runner = ServiceRunner(support.base_config(through(amqp_uri, broker), through(database_url, database)))
    runner.add_service(probe.ProbeService)
    starting = eventlet.spawn(runner.start)
    try:
        eventlet.sleep(3)
        assert not starting.dead  # still waiting for its dependency, not exited
        (broker if late == "broker" else database).start()
        eventlet.with_timeout(60, starting.wait)
        probe.publish(amqp_uri, probe.SAMPLE)
        support.wait_until(lambda: probe.applied_count(database_url) == 1, message="the event applied")
    finally:
        runner.stop()
        broker.stop()
        database.stop()


@pytest.fixture
def inspection_behind_proxies(amqp_uri, database_url):
    broker, database = TcpProxy(upstream_of(amqp_uri)).start(), TcpProxy(upstream_of(database_url)).start()
    port = support.free_port()
    config = support.base_config(through(amqp_uri, broker), through(database_url, database),
                                 WEB_ADDRESSES={"inspection": f"127.0.0.1:{port}"})
    try:
        with support.running_services(config, InspectionService):
            yield support.ApiClient(f"http://127.0.0.1:{port}").anonymous(), broker, database
    finally:
        broker.start()  # let the runner stop cleanly
        broker.stop()
        database.stop()


NO_ANSWER = "error: no answer within 1 s"  # each check's own bound (HEALTH_CHECK_TIMEOUT)


def test_liveness_and_readiness_mean_what_a_load_balancer_needs(inspection_behind_proxies):
    api, broker, database = inspection_behind_proxies
    for path in ("/health", "/health/live", "/health/ready"):
        assert api.get(path).status_code == 200, path
    assert api.get("/health/ready").json()["status"] == "ok"

    broker.stop()  # writes still work through the outbox: ready, but degraded
    ready = api.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
    assert ready.json()["checks"]["broker"].startswith("error"), ready.text
    health = api.get("/health")
    assert health.status_code == 503 and health.json()["checks"]["broker"].startswith("error"), health.text
    assert health.json()["checks"]["database:inspection"] == "ok"  # only the failing check is named failing
    assert api.get("/health/live").status_code == 200
    broker.start()

    database.stop()  # nothing works without the database: not ready, but alive
    ready = api.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable", ready.text
    assert ready.json()["checks"]["database:inspection"].startswith("error"), ready.text
    assert api.get("/health/live").status_code == 200
    health = api.get("/health")
    assert health.status_code == 503, health.text
    assert health.json()["checks"]["database:inspection"].startswith("error"), health.text
    database.start()
    support.wait_until(lambda: api.get("/health/ready").status_code == 200, message="ready again")


def test_probes_answer_even_when_a_dependency_accepts_connections_and_never_answers(inspection_behind_proxies):
    """Promptness proven without a stopwatch: each check's own bound names itself in the
    answer. An unbounded check would hang here until the test client gave up."""
    api, broker, database = inspection_behind_proxies
    assert api.get("/health/ready").status_code == 200

    broker.hang()
    ready = api.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "database:inspection": "ok", "broker": NO_ANSWER}, ready.text
    broker.start()

    database.hang()
    ready, health = api.get("/health/ready"), api.get("/health")
    assert ready.status_code == 503 and ready.json()["checks"]["database:inspection"] == NO_ANSWER, ready.text
    assert health.status_code == 503 and health.json()["checks"]["database:inspection"] == NO_ANSWER, health.text
    assert api.get("/health/live").json() == {"status": "ok", "service": "inspection"}
    database.start()
    support.wait_until(lambda: api.get("/health/ready").status_code == 200, message="ready again")
