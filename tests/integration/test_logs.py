"""JSON log lines follow one inspection from the HTTP request through the events it causes."""
from __future__ import annotations

import json
import logging

import pytest

from services.inspection.service import InspectionService
from services.plumbing.logs import JsonFormatter
from services.tasks.service import TasksService
from tests import support
from tests.integration.test_inspection_service import inspection_body, register

pytestmark = pytest.mark.integration


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record):
        self.lines.append(json.loads(self.format(record)))  # every line must be one JSON object


@pytest.fixture
def captured():
    handler = Lines()
    logger = logging.getLogger("services")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def test_the_request_id_and_the_correlation_id_follow_an_inspection_into_tasks(amqp_uri, database_url, captured):
    ports = {"inspection": support.free_port(), "tasks": support.free_port()}
    config = support.base_config(amqp_uri, database_url, TASKS_SWEEP_INTERVAL=0,
                                 WEB_ADDRESSES={name: f"127.0.0.1:{port}" for name, port in ports.items()})
    with support.running_services(config, InspectionService, TasksService):
        api = support.ApiClient(f"http://127.0.0.1:{ports['inspection']}")
        subject, place = register(api)
        response = api.post("/inspections", inspection_body(subject, place), headers={"X-Request-Id": "req-follow-1"})
        assert response.status_code == 201, response.text
        inspection_id = response.json()["inspection_id"]

        def staged(event_type):
            return [line for line in captured if line.get("staged_event_type") == event_type]
        support.wait_until(lambda: staged("task_opened"), timeout=30, message="tasks opened")

    [submitted] = staged("inspection_submitted")
    assert submitted["service"] == "inspection" and submitted["request_id"] == "req-follow-1"
    assert submitted["staged_correlation_id"] == inspection_id
    opened = staged("task_opened")
    for line in opened:  # the consumer's lines carry the event it handles and its correlation id
        assert line["service"] == "tasks" and line["entrypoint"] == "on_inspection_submitted"
        assert line["event_type"] == "inspection_submitted" and line["event_id"] == submitted["staged_event_id"]
        assert line["correlation_id"] == inspection_id == line["staged_correlation_id"]
        assert "request_id" not in line
    assert all(set(line) >= {"time", "level", "logger", "message"} for line in captured)
