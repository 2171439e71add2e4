"""The fault suite (issue 12): an operator's worst week, on a RabbitMQ node and a PostgreSQL
cluster of the test's own (never the machine's shared ones), with the stack's services as
separate processes so that SIGKILL is real.

Under a bounded load (clients that retry the same submission until it is accepted, as the
phone app does), one fault after another: scoring and tasks killed, inspection killed, the
broker stopped and restarted, the database crashed and restarted, poison and forged events
published. After each, `services.tools.reconcile` must find every accepted inspection
stored, scored and tasked exactly once, and the suite prints the figures: submitted,
accepted, lost, duplicated, and the time to settle per fault.

Each service publishes as its own broker user and consumers check producers by the
validated user_id (EVENT_PRODUCERS); queues are quorum queues (QUEUE_TYPE=quorum). A second
stack, the community's (周家山社区) below the street, runs on its own vhost of the same node
linked by federation (`services.tools.federation`): its upward link is cut while it takes
self-checks, then restored, and the street must hold its latest figures.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import yaml
from kombu import Connection, Exchange
from sqlalchemy import create_engine, func, select

from services.inspection import models as inspection_models
from services.scoring import models as scoring_models
from services.tools import federation, reconcile
from services.tools.dead_letters import count_dead_letters, list_dead_letters
from tests import support
from tests.nodes import PostgresCluster, RabbitNode, service_permissions

# Own broker node(s) to boot, services to start and faults to sit out: beyond the usual 300 s.
pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

STREET = "411502008000"
COMMUNITY = "411502008001"
SERVICES = ("inspection", "scoring", "tasks")
SETTLE_LIMIT = 120.0


class ServiceProcess:
    """One service in its own `nameko run` process."""

    def __init__(self, name: str, config_file: Path, log_dir: Path, port: int, modules: list[str] | None = None):
        self.name, self.config_file, self.log_dir, self.port = name, config_file, log_dir, port
        self.modules = modules or [f"services.{name}.service"]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_dir / f"{self.name}.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nameko", "run", "--config", str(self.config_file), *self.modules],
            cwd=support.ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(support.ROOT)})

    def wait_live(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log_dir / (self.name + '.log')}")
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/health/live", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} did not answer within {timeout:g} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, unacked messages and open transactions as they are."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


class Load:
    """Submits inspections from a few green threads at a bounded rate; each client retries
    its own submission (same idempotency key) until it is accepted."""

    def __init__(self, api: support.ApiClient, subject_id: str, place_id: str | None = None, body=None):
        self.api, self.subject_id, self.place_id = api, subject_id, place_id
        if body is not None:
            self.body = body
        self.submitted = 0
        self.accepted: dict[str, str] = {}  # idempotency key → inspection id
        self.answers: dict[str, int] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def body(self, key: str, n: int) -> dict:
        return {"kind": "routine", "subject_id": self.subject_id, "place_id": self.place_id,
                "idempotency_key": key, "checklist": {"version": "2010.1", "code": "public-toilet"},
                "inspectors": ["王芳"],
                "inspected_at": (datetime.now(timezone.utc) - timedelta(minutes=30)).isoformat(),
                "results": [{"item_code": "PT-02", "findings": 1 + n % 3},
                            {"item_code": "PT-01", "findings": n % 2}]}

    def submit_one(self, n: int) -> None:
        try:
            self._submit_one(n)
        except Exception as exc:  # reported by run(): a green thread's failure would go unseen
            self.errors.append(f"{exc.__class__.__name__}: {exc}")

    def _submit_one(self, n: int) -> None:
        key = f"faults-{uuid.uuid4()}"
        with self._lock:
            self.submitted += 1
        body = self.body(key, n)
        while True:
            try:
                response = self.api.post("/inspections", body)
                status = response.status_code
            except requests.RequestException:
                status = 0  # the process is down: connection refused or reset
            with self._lock:
                self.answers[str(status)] = self.answers.get(str(status), 0) + 1
            if status in (200, 201):
                with self._lock:
                    self.accepted[key] = response.json()["inspection_id"]
                return
            assert status in (0, 502, 503, 504), response.text  # a fault, never a refusal
            time.sleep(0.3)

    def run(self, count: int, during=None, clients: int = 3, interval: float = 0.15) -> None:
        """Submit `count` inspections; `during()` (the fault) runs once a third are in."""
        import eventlet
        pool = eventlet.GreenPool(clients)
        for n in range(count):
            pool.spawn_n(self.submit_one, n)
            if during is not None and n == count // 3:
                during()
            time.sleep(interval)
        pool.waitall()
        assert self.errors == []


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    passwords = {service: uuid.uuid4().hex for service in SERVICES}
    users = {f"chuangwei-{s}": (passwords[s], service_permissions(s)) for s in SERVICES}
    pg = PostgresCluster().start()
    broker = RabbitNode(base / "rabbit", "chuangwei-faults", users=users,
                        plugins=("rabbitmq_management", "rabbitmq_federation", "rabbitmq_federation_management"))
    processes: dict[str, ServiceProcess] = {}
    try:
        broker.start()
        database_url = pg.create_database("chuangwei")
        ports = {s: support.free_port() for s in SERVICES}
        config = support.base_config(
            broker.amqp_uri, database_url, WEB_ADDRESSES={s: f"127.0.0.1:{p}" for s, p in ports.items()},
            AMQP_URIS={s: broker.uri_for(f"chuangwei-{s}", passwords[s]) for s in SERVICES},
            # Every producer a consumer of this stack binds to must be named (fail closed);
            # intake and indicators do not run here, so nothing may arrive as their users.
            EVENT_PRODUCERS={**{s: f"chuangwei-{s}" for s in SERVICES},
                             "intake": "chuangwei-intake", "indicators": "chuangwei-indicators"},
            QUEUE_TYPE="quorum", EVENT_MAX_DELIVERIES=50, EVENT_RETRY_MAX_PAUSE=2,
            TASKS_SWEEP_INTERVAL=0, DB_POOL_SIZE=2, DB_MAX_OVERFLOW=2, max_workers=5,
            LOGGING={"version": 1, "disable_existing_loggers": False,
                     "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
                     "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
                     "root": {"level": "WARNING", "handlers": ["console"]}})
        config_file = base / "stack.yaml"
        config_file.write_text(yaml.safe_dump(config, allow_unicode=True))
        # The community's own stack below the street, linked by federation on the same node.
        tiers = federation.TierConfig(
            management_api=broker.management_api, amqp_host=f"127.0.0.1:{broker.port}",
            tiers=[{"node": STREET, "name": "金牛山街道", "vhost": "/"},
                   {"node": COMMUNITY, "name": "周家山社区", "vhost": "community", "parent": STREET}])
        federation.wire(tiers)
        child_ports = {s: support.free_port() for s in SERVICES}
        child_database_url = pg.create_database("community")
        child_config = dict(config, AMQP_URI=support.with_vhost(broker.amqp_uri, "community"),
                            DATABASE_URL=child_database_url, NODE_CODE=COMMUNITY, PARENT_STACK=STREET,
                            AMQP_URIS={}, EVENT_PRODUCERS={},
                            WEB_ADDRESSES={s: f"127.0.0.1:{p}" for s, p in child_ports.items()})
        child_file = base / "community.yaml"
        child_file.write_text(yaml.safe_dump(child_config, allow_unicode=True))
        for name in SERVICES:
            processes[name] = ServiceProcess(name, config_file, base, ports[name])
            processes[name].start()
        processes["community"] = ServiceProcess("community", child_file, base, child_ports["inspection"],
                                                modules=[f"services.{s}.service" for s in SERVICES])
        processes["community"].start()
        for process in processes.values():
            process.wait_live()
        support.wait_until(lambda: sum(1 for link in federation.link_status(tiers) if link["status"] == "running") == 2,
                           timeout=60, message="both federation links running")
        api = support.ApiClient(f"http://127.0.0.1:{ports['inspection']}")
        subject = api.post("/subjects", {"subject_type": "child_unit", "node": COMMUNITY, "name": "周家山社区"})
        assert subject.status_code == 201, subject.text
        place = api.post("/places", {"place_type": "public_toilet", "name": "周家山路公厕", "node": COMMUNITY,
                                     "responsible_subject_id": subject.json()["subject_id"]})
        assert place.status_code == 201, place.text
        engine = create_engine(database_url, pool_pre_ping=True, pool_size=1, max_overflow=1)
        child_engine = create_engine(child_database_url, pool_pre_ping=True, pool_size=1, max_overflow=1)
        child_api = support.ApiClient(f"http://127.0.0.1:{child_ports['inspection']}")
        yield {"broker": broker, "pg": pg, "processes": processes, "database_url": database_url,
               "engine": engine, "load": Load(api, subject.json()["subject_id"], place.json()["place_id"]),
               "figures": [], "base": base, "tiers": tiers, "child_engine": child_engine, "child_api": child_api}
        engine.dispose()
        child_engine.dispose()
    finally:
        for process in processes.values():
            process.kill()
        broker.kill()
        pg.__exit__()


def settle(world, fault: str, healed_at: float, tier: str = STREET) -> reconcile.Report:
    """Reconcile until everything accepted is stored, scored and tasked (for the community:
    and its scores held by the street); record the figures."""
    engine = world["engine"] if tier == STREET else world["child_engine"]
    load = world["load"] if tier == STREET else world["child_load"]
    parent = world["engine"] if tier == COMMUNITY else None
    deadline = healed_at + SETTLE_LIMIT
    while True:
        try:
            report = reconcile.reconcile(engine, engine, engine, tier, parent_scoring_db=parent)
        except Exception:  # the database is still coming back
            report = None
        if report is not None and report.consistent and not any(report.in_flight.values()):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"{fault}: not settled within {SETTLE_LIMIT:g} s: "
                        + ("\n".join(report.lines()) if report else "database unreachable"))
        time.sleep(0.5)
    took = time.monotonic() - healed_at
    with engine.connect() as conn:
        stored = set(conn.execute(select(inspection_models.Inspection.id)).scalars())
        keys = conn.execute(select(func.count(), func.count(func.distinct(inspection_models.Inspection.idempotency_key)))
                            .select_from(inspection_models.Inspection)).one()
        scored = conn.execute(select(func.count()).select_from(scoring_models.ScoreInputRow)).scalar_one()
    accepted = set(load.accepted.values())
    lost = accepted - stored
    duplicated = (keys[0] - keys[1]) + (scored - len(set(accepted) & stored))
    world["figures"].append((fault, load.submitted, len(accepted), len(lost), duplicated, took,
                             report.scored, report.tasks))
    assert lost == set(), f"{fault}: accepted but not stored: {sorted(lost)}"
    assert stored == accepted, f"{fault}: stored without being accepted: {sorted(stored - accepted)}"
    assert duplicated == 0
    assert report.accepted == report.scored == len(accepted)
    assert report.tasks == report.findings_with_deduction
    return report


def print_figures(world) -> None:
    lines = ["", "fault suite figures (cumulative load)",
             f"{'fault':<40}{'submitted':>10}{'accepted':>10}{'lost':>6}{'dup':>5}{'scored':>8}{'tasks':>7}"
             f"{'settle s':>10}"]
    for fault, submitted, accepted, lost, duplicated, took, scored, tasks in world["figures"]:
        lines.append(f"{fault:<40}{submitted:>10}{accepted:>10}{lost:>6}{duplicated:>5}{scored:>8}{tasks:>7}"
                     f"{took:>10.1f}")
    print("\n".join(lines), flush=True)


def test_the_stack_loses_and_doubles_nothing_through_an_operators_worst_week(world, capsys):
    load, processes, broker, pg = world["load"], world["processes"], world["broker"], world["pg"]
    try:
        load.run(12)
        settle(world, "none (baseline)", time.monotonic())

        healed = {}

        def kill_consumers():
            processes["scoring"].kill()
            processes["tasks"].kill()
            time.sleep(1.0)
            processes["scoring"].start()
            processes["tasks"].start()
            healed["at"] = time.monotonic()
        load.run(12, during=kill_consumers)
        settle(world, "SIGKILL scoring + tasks", healed["at"])

        def kill_inspection():
            processes["inspection"].kill()
            time.sleep(1.0)
            processes["inspection"].start()
            healed["at"] = time.monotonic()
        load.run(12, during=kill_inspection)
        settle(world, "SIGKILL inspection", healed["at"])

        def restart_broker():
            broker.stop()
            time.sleep(2.0)  # submissions go on meanwhile: their events wait in the outbox
            broker.start()
            healed["at"] = time.monotonic()
        load.run(12, during=restart_broker)
        settle(world, "RabbitMQ stopped and restarted", healed["at"])

        outage_answer = {}

        def crash_database():
            pg.stop("immediate")
            # Asked while it is surely down (a read: nothing to reconcile), not left to whether
            # the load's own submissions happen to fall into the outage on a busy machine.
            outage_answer["response"] = load.api.get("/subjects")
            time.sleep(3.0)  # clients get 503 with Retry-After and try again
            pg.start()
            healed["at"] = time.monotonic()
        load.run(12, during=crash_database)
        settle(world, "PostgreSQL crashed and restarted", healed["at"])

        forged_id = str(uuid.uuid4())
        poison_and_forged(broker.amqp_uri, forged_id)
        load.run(6)
        report = settle(world, "poison + forged events", time.monotonic())
        assert forged_id not in report.scored_unknown
        for service in ("scoring", "tasks"):
            # Counted without fetching, then peeked once: polling by peeking would fetch and
            # requeue the first letters many times over while the last one is on its way.
            waiting = {}
            try:
                support.wait_until(lambda: waiting.update(n=count_dead_letters(broker.amqp_uri, service))
                                   or waiting["n"] >= 3, timeout=90, interval=0.5,
                                   message=f"{service}'s three dead letters")
            except AssertionError as exc:
                log = (processes[service].log_dir / f"{service}.log").read_text(errors="replace")
                lines = [line for line in log.splitlines() if "dead-letter" in line]
                raise AssertionError(f"{exc}: {waiting.get('n')} waiting; {service}'s log on "
                                     f"dead-lettering:\n" + "\n".join(lines[-20:])) from None
            letters = list_dead_letters(broker.amqp_uri, service)
            reasons = sorted(d["reason"].split(":")[0] for d in letters)
            assert reasons == ["refused producer", "refused producer", "undecodable message (content type "
                                                                         "'application/json', encoding 'utf-8')"], letters
        down = outage_answer["response"]  # the database outage was felt, and answered 503
        assert down.status_code == 503 and down.headers["Retry-After"].isdigit(), (down.status_code, down.text)
        assert down.json()["error"] == "service_unavailable", down.text
    finally:
        with capsys.disabled():
            print_figures(world)
            print(f"answers seen by clients: {json.dumps(load.answers, sort_keys=True)}", flush=True)


def poison_and_forged(amqp_uri: str, forged_id: str) -> None:
    """As guest, a client with write access to everything: a non-UTF-8 body, an event naming
    no producer, and a schema-valid inspection_submitted claiming to be the inspection
    service's (right node, right service) — which only the broker user gives away."""
    sample = json.loads((support.ROOT / "services/contracts/events/samples/inspection_submitted.v1.json")
                        .read_text(encoding="utf-8"))
    forged = dict(sample, event_id=str(uuid.uuid4()),
                  producer={"node": STREET, "service": "inspection"},
                  payload=dict(sample["payload"], inspection_id=forged_id))
    with Connection(amqp_uri) as conn:
        exchange = Exchange("inspection.events", type="topic", durable=True)
        producer = conn.Producer()
        producer.publish("检查".encode("gbk"), exchange=exchange, routing_key="inspection_submitted",
                         content_type="application/json", content_encoding="utf-8", declare=[exchange])
        producer.publish({"event_type": "inspection_submitted", "payload": "garbage"}, exchange=exchange,
                         routing_key="inspection_submitted", serializer="json")
        producer.publish(forged, exchange=exchange, routing_key="inspection_submitted", serializer="json")


def self_check(subject_id: str):
    from tests.tiers import deductions

    def body(key: str, n: int) -> dict:
        return {"kind": "self_check", "subject_id": subject_id, "idempotency_key": key,
                "checklist": {"version": "2010.1", "code": "national-ten-areas"}, "inspectors": ["社区自查"],
                "inspected_at": (datetime.now(timezone.utc) - timedelta(minutes=30)).isoformat(),
                "results": deductions(2 + n % 5)}
    return body


def test_a_cut_federation_link_catches_up_and_reconciles_across_tiers(world, capsys):
    """The community's stack goes on taking self-checks (自查) while its upward link is cut;
    once restored, the street holds the community's latest figures and both reconcile."""
    api, tiers = world["child_api"], world["tiers"]
    subject = api.post("/subjects", {"subject_type": "child_unit", "node": COMMUNITY, "name": "周家山社区"})
    assert subject.status_code == 201, subject.text
    load = world["child_load"] = Load(api, subject.json()["subject_id"], body=self_check(subject.json()["subject_id"]))
    try:
        load.run(5)
        settle(world, "community: none (baseline)", time.monotonic(), tier=COMMUNITY)

        federation.set_upward_link(tiers, COMMUNITY, enabled=False)
        load.run(10)
        engine = world["child_engine"]
        own, _ = reconcile.reconcile_until_settled({s: engine for s in SERVICES}, COMMUNITY, settle=SETTLE_LIMIT,
                                                   interval=0.5)
        assert own.consistent, own.lines()  # the community itself is whole ...
        cut = reconcile.reconcile(engine, engine, engine, COMMUNITY, parent_scoring_db=world["engine"])
        assert cut.parent_behind, cut.lines()  # ... and the street has not heard of it: the cut is real

        federation.set_upward_link(tiers, COMMUNITY, enabled=True)
        report = settle(world, "federation link community→street cut", time.monotonic(), tier=COMMUNITY)
        assert report.accepted == 15 and report.parent_behind == []
        settle(world, "street after the link cut", time.monotonic())
    finally:
        with capsys.disabled():
            print_figures(world)
