"""The README's default stack on its embedded database (issue 25): the stack's services in one
process on one SQLite file, with the real broker, take several inspectors submitting together
while others read — no `database is locked`, health answering meanwhile, and every inspection
scored and tasked. (Latency targets are the embedded benchmark's: benchmarks/embedded.py.)"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import eventlet
import pytest

from services.inspection.service import InspectionService
from services.notify.service import NotifyService
from services.scoring.service import ScoringService
from services.tasks.service import TasksService
from tests import support

SERVICES = {"inspection": InspectionService, "scoring": ScoringService, "tasks": TasksService,
            "notify": NotifyService}


@pytest.fixture
def embedded_stack(amqp_uri, tmp_path):
    ports = {name: support.free_port() for name in SERVICES}
    config = support.base_config(amqp_uri, f"sqlite:///{tmp_path}/chuangwei.db",
                                 WEB_ADDRESSES={name: f"127.0.0.1:{port}" for name, port in ports.items()},
                                 TASKS_SWEEP_INTERVAL=0, NOTIFY_BULLETIN_SCHEDULE=False,
                                 EVENT_BATCH_LINGER=0.3)
    with support.running_services(config, *SERVICES.values()):
        yield {name: support.ApiClient(f"http://127.0.0.1:{port}") for name, port in ports.items()}, tmp_path


def test_four_inspectors_submitting_together_on_sqlite_are_all_scored_and_tasked_without_a_lock_error(
        embedded_stack, caplog):
    apis, _ = embedded_stack
    caplog.set_level(logging.WARNING)
    inspection = apis["inspection"]
    places = []
    for code in ("411502008001", "411502008002", "411502008003"):
        subject = inspection.post("/subjects", {"subject_type": "child_unit", "node": code, "name": f"社区{code[-3:]}"})
        assert subject.status_code == 201, subject.text
        place = inspection.post("/places", {"place_type": "public_toilet", "name": f"公厕{code[-3:]}", "node": code,
                                            "responsible_subject_id": subject.json()["subject_id"]})
        assert place.status_code == 201, place.text
        places.append((subject.json()["subject_id"], place.json()["place_id"]))
    now = datetime.now(timezone.utc)
    answers, health = [], []

    def inspector(index: int):
        client = support.ApiClient(inspection.base_url)
        for n in range(8):
            subject_id, place_id = places[(index + n) % len(places)]
            answers.append(client.post("/inspections", {
                "idempotency_key": f"phone-{index}-{n}", "kind": "routine", "subject_id": subject_id,
                "place_id": place_id, "checklist": {"version": "2010.1", "code": "public-toilet"},
                "inspectors": [f"检查员{index}"], "inspected_at": (now - timedelta(minutes=10 + n)).isoformat(),
                "results": [{"item_code": "PT-02", "findings": 1 + n % 2, "note": "便池有积粪"}]}).status_code)

    def reader():
        for _ in range(20):
            for name in ("scoring", "tasks"):
                health.append(support.ApiClient(apis[name].base_url).get("/health").status_code)
            apis["scoring"].get("/rankings", params={"period": now.strftime("%Y-%m"), "tier": "community"})
            eventlet.sleep(0.1)

    threads = [eventlet.spawn(inspector, i) for i in range(4)] + [eventlet.spawn(reader)]
    for thread in threads:
        thread.wait()
    assert answers == [201] * 32
    assert set(health) == {200}
    support.wait_until(lambda: sum(r["inputs"] for r in apis["scoring"].get(
        "/rankings", params={"period": now.strftime("%Y-%m"), "tier": "community"}).json()["ranking"]) == 32,
        timeout=60, message="all 32 inspections scored")
    support.wait_until(lambda: len(apis["tasks"].get("/tasks", params={"limit": 100}).json()) == 32,
                       timeout=60, message="a task for each inspection's finding")
    locked = [r.getMessage() for r in caplog.records if "database is locked" in r.getMessage()]
    assert locked == []
