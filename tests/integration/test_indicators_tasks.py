"""A low satisfaction item becomes a rectification task, through the real broker and
database: an indicators and a tasks service, each publishing and consuming as its own broker
user with the least-privilege permissions infra/README.md grants (users made for this test's
vhost, deleted afterwards) and producers checked (EVENT_PRODUCERS). A survey wave is
answered and closed; its one item below the questionnaire's `finding_below` becomes exactly
one task in the street's ledger (群众满意率 → 整改任务), with the area as responsible subject,
the rate in the note and the office's time limit; the same event delivered again, or
published again under another id, opens no second task."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import requests
from kombu import Connection, Exchange

from services.indicators.service import IndicatorsService
from services.tasks.service import TasksService
from tests import support
from tests.nodes import service_permissions

pytestmark = pytest.mark.integration

STREET = "411502008000"        # 金牛山街道: the stack's office, which runs the survey
ZHOUJIASHAN = "411502008001"   # 周家山社区
ZHOUJIASHAN_NAME = "周家山社区居民委员会"
MONTH = "2026-11"
DEADLINE_DAYS = 21

QUESTIONNAIRE = {
    "code": "residents-2026", "title": "群众满意度调查问卷", "threshold": 0.9,
    "items": [
        {"code": "Q1", "text": "您对辖区公厕的卫生状况是否满意？", "place_type": "public_toilet",
         "scale": [{"value": "5", "label": "满意"}, {"value": "1", "label": "不满意"}], "satisfied": ["5"],
         "finding_below": 0.6},
        {"code": "Q2", "text": "您对背街小巷的环境卫生是否满意？", "place_type": "back_alley",
         "scale": [{"value": "5", "label": "满意"}, {"value": "1", "label": "不满意"}], "satisfied": ["5"],
         "finding_below": 0.6},
    ]}


@pytest.fixture
def broker_users(rabbit_admin, vhost, amqp_uri):
    """service → (broker user, AMQP URI) for indicators and tasks, made for this vhost only."""
    created = {}

    def make(service: str) -> tuple[str, str]:
        user, password = f"{vhost}-{service}", f"pw-{service}"
        r = requests.put(f"{rabbit_admin.base}/users/{quote(user, safe='')}", auth=rabbit_admin.auth,
                         json={"password": password, "tags": ""}, timeout=10)
        r.raise_for_status()
        created[service] = user
        r = requests.put(f"{rabbit_admin.base}/permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
                         auth=rabbit_admin.auth, json=service_permissions(service), timeout=10)
        r.raise_for_status()
        parts = urlsplit(amqp_uri)
        return user, urlunsplit((parts.scheme, f"{quote(user, safe='')}:{password}@{parts.hostname}:"
                                               f"{parts.port or 5672}", parts.path, "", ""))

    try:
        yield {service: make(service) for service in ("indicators", "tasks")}
    finally:
        for user in created.values():
            requests.delete(f"{rabbit_admin.base}/users/{quote(user, safe='')}", auth=rabbit_admin.auth, timeout=10)


@pytest.fixture
def stack(amqp_uri, database_url, broker_users, event_tap):
    ports = {name: support.free_port() for name in ("indicators", "tasks")}
    users = {service: user for service, (user, _) in broker_users.items()}
    config = support.base_config(
        amqp_uri, database_url, WEB_ADDRESSES={n: f"127.0.0.1:{p}" for n, p in ports.items()},
        AMQP_URIS={service: uri for service, (_, uri) in broker_users.items()},
        # Every producer tasks binds to must be named; inspection and intake do not run here.
        EVENT_PRODUCERS={"indicators": users["indicators"], "tasks": users["tasks"],
                         "inspection": f"{users['tasks']}-no-inspection", "intake": f"{users['tasks']}-no-intake"},
        TASKS_SWEEP_INTERVAL=0, TASKS_SATISFACTION_DEADLINE_DAYS=DEADLINE_DAYS)
    tap = event_tap(("indicators.events", "satisfaction_item_low"))
    with support.running_services(config, IndicatorsService, TasksService):
        urls = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
        yield {**urls, "tap": tap, "database_url": database_url, "broker_users": broker_users}


def close_a_wave_with_one_low_item(indicators: support.ApiClient) -> str:
    """周家山: Q1 1 of 4 satisfied (25 % < 60 %: a finding), Q2 4 of 4 (none)."""
    admin = indicators.as_user("街道管理员", [("administrator", STREET)])
    interviewer = indicators.as_user("王芳", [("inspector", STREET)])
    assert admin.post("/questionnaires", QUESTIONNAIRE).status_code == 201
    created = interviewer.post("/surveys", {
        "questionnaire": {"code": "residents-2026", "version": 1}, "period": MONTH, "seed": 7,
        "areas": [{"node": ZHOUJIASHAN, "frame_size": 100, "sample_size": 4}]})
    assert created.status_code == 201, created.text
    survey = created.json()
    for index, respondent in enumerate(survey["respondents"]):
        answered = interviewer.post(f"/surveys/{survey['survey_id']}/responses", {
            "respondent_id": respondent["respondent_id"],
            "answers": [{"item_code": "Q1", "value": "5" if index == 0 else "1"}, {"item_code": "Q2", "value": "5"}]})
        assert answered.status_code == 201, answered.text
    closed = interviewer.post(f"/surveys/{survey['survey_id']}/close")
    assert closed.status_code == 200, closed.text
    assert closed.json()["findings"] == 1
    return survey["survey_id"]


def publish_as_indicators(uri: str, user: str, body: dict) -> None:
    with Connection(uri, transport_options={"confirm_publish": True}) as conn:
        exchange = Exchange("indicators.events", type="topic", durable=True)
        conn.Producer().publish(body, exchange=exchange, routing_key="satisfaction_item_low", serializer="json",
                                user_id=user)


def test_a_low_satisfaction_item_becomes_exactly_one_task_for_the_area(stack):
    indicators, tasks = support.ApiClient(stack["indicators"]), support.ApiClient(stack["tasks"])
    survey_id = close_a_wave_with_one_low_item(indicators)
    [event] = stack["tap"].wait_for("satisfaction_item_low")
    found_at = datetime.fromisoformat(event["payload"]["found_at"])

    [task] = support.wait_until(lambda: tasks.get("/tasks").json() or None, message="the low item's task")
    assert (task["responsible"]["subject_id"], task["responsible"]["node"], task["responsible"]["name"]) == (
        ZHOUJIASHAN, ZHOUJIASHAN, ZHOUJIASHAN_NAME)
    assert (task["item_code"], task["item_text"], task["category_code"]) == (
        "Q1", "您对辖区公厕的卫生状况是否满意？", "satisfaction")
    assert task["note"] == "群众满意度调查 2026-11：「您对辖区公厕的卫生状况是否满意？」满意率 25.00%（1/4），低于 60%"
    assert (task["inspecting_node"], task["owner_node"], task["status"], task["deduction"]) == (
        STREET, STREET, "open", 1.0)
    assert datetime.fromisoformat(task["found_at"]) == found_at
    assert datetime.fromisoformat(task["deadline_at"]) == found_at + timedelta(days=DEADLINE_DAYS)
    assert task["checklist_code"] == "residents-2026"
    # The area's rectifier sees it in the ledger of its own subtree.
    community = tasks.as_user("周家山社区整改员", [("rectifier", ZHOUJIASHAN)])
    assert [t["task_id"] for t in community.get("/tasks").json()] == [task["task_id"]]

    # Delivered again (the same event id), and published again under another id: no second task.
    user, uri = stack["broker_users"]["indicators"]
    publish_as_indicators(uri, user, event)
    publish_as_indicators(uri, user, dict(event, event_id=str(uuid.uuid4())))
    support.wait_consumed(tasks, "tasks", "satisfaction_item_low", 3)
    assert support.events_consumed(tasks, "tasks", "satisfaction_item_low", outcomes=("refused_producer",)) == 0
    database_url = stack["database_url"]
    assert support.scalar(database_url, "select count(*) from tasks_tasks") == 1
    assert support.scalar(database_url, "select count(*) from tasks_outbox where event_type = 'task_opened'") == 1
    assert support.scalar(database_url, "select count(*) from tasks_processed_events "
                                        "where consumer = 'tasks.on_satisfaction_item_low'") == 2
    assert [t["task_id"] for t in tasks.get("/tasks").json()] == [task["task_id"]]
    assert f'"correlation_id": "survey:{survey_id}"' in support.scalar(
        database_url, "select body::text from tasks_outbox where event_type = 'task_opened'")
