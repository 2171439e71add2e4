"""A child's escalation, end to end at this tier: the tasks service records the coordination
request and publishes `coordination_requested` through its outbox; notify tells this tier's
office (协调请求) once, however often the escalation is delivered."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer as KombuProducer

from services.contracts.events import Producer, make_event, parse_event
from services.contracts.tiers import CHILDREN_EXCHANGE, routing_key as tier_routing_key
from services.notify.service import NotifyService
from services.tasks.service import TasksService
from tests import support

pytestmark = pytest.mark.integration

DISTRICT = "411502000000"   # 浉河区: this stack
STREET = "411502008000"     # 金牛山街道: the child stack that escalates
SAMPLE = Path(__file__).resolve().parents[2] / "services" / "contracts" / "events" / "samples" \
    / "task_escalated.v1.json"


def publish_from_child(amqp_uri: str, message: dict) -> None:
    """What federation delivers: the child's `chuangwei.up` message on this tier's `chuangwei.children`."""
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        exchange = Exchange(CHILDREN_EXCHANGE, type="topic", durable=True)
        exchange(channel).declare()
        KombuProducer(channel).publish(message, exchange=exchange,
                                       routing_key=tier_routing_key("task_escalated", STREET),
                                       serializer="json", delivery_mode=2, message_id=message["event_id"])


def test_a_child_escalation_becomes_one_coordination_notice_for_this_office(amqp_uri, database_url, rabbit_admin,
                                                                           vhost, event_tap):
    ports = {"tasks": support.free_port(), "notify": support.free_port()}
    config = support.base_config(amqp_uri, database_url, node=DISTRICT, CHILD_STACKS=[STREET],
                                 WEB_ADDRESSES={k: f"127.0.0.1:{p}" for k, p in ports.items()},
                                 TASKS_SWEEP_INTERVAL=0, NOTIFY_BULLETIN_SCHEDULE="false", NOTIFY_POLL_INTERVAL=0.1)
    tap = event_tap(("tasks.events", "coordination_requested"))
    with support.running_services(config, TasksService, NotifyService):
        tasks = support.ApiClient(f"http://127.0.0.1:{ports['tasks']}")
        notify = support.ApiClient(f"http://127.0.0.1:{ports['notify']}")
        # The office's worker reads the inbox of the account the contact names.
        office_user = notify.as_user("浉河区创卫办 值班员", [("viewer", DISTRICT)], subject="shq.cwb")
        for queue in ("evt-tier-task_escalated--tasks.on_child_task_escalated",
                      "evt-tasks-coordination_requested--notify.on_coordination_requested"):
            support.wait_until(lambda: rabbit_admin.queue(vhost, queue), message=f"queue {queue}")
        office = notify.post("/contacts", {"owner_kind": "node", "owner_id": DISTRICT, "node": DISTRICT,
                                           "name": "浉河区创卫办", "inbox_user": "shq.cwb"})
        assert office.status_code == 201, office.text

        sample = json.loads(SAMPLE.read_text(encoding="utf-8"))
        _, escalated = parse_event(sample, "task_escalated")
        escalation = make_event(escalated, Producer(node=STREET, service="tasks"),
                                correlation_id=escalated.task.task_id).to_message()
        publish_from_child(amqp_uri, escalation)

        [notice] = support.wait_until(lambda: office_user.get("/inbox").json(),
                                      message="the coordination notice in this office's inbox")
        assert notice["notice_type"] == "coordination"
        assert notice["title"] == f"协调请求：金牛山街道 {escalated.task.responsible.name} {escalated.task.item_text}"
        assert "化粪池产权不清，社区无法协调，请上级协调" in notice["body_markdown"]
        assert "2026年11月25日 18:00" in notice["body_markdown"]  # the answer is due (CST)
        [request] = tasks.get("/coordination").json()
        assert request["from_node"] == STREET and request["status"] == "open"

        # The child's message delivered again, and a second copy of the same escalation: nothing new.
        handled = support.events_consumed(tasks, "tasks", "task_escalated")
        publish_from_child(amqp_uri, escalation)
        publish_from_child(amqp_uri, make_event(escalated, Producer(node=STREET, service="tasks")).to_message())
        support.wait_consumed(tasks, "tasks", "task_escalated", handled + 2)
        # Each was handled in one transaction with whatever it published: the outbox holds it all.
        assert support.scalar(database_url, "SELECT count(*) FROM tasks_outbox "
                                            "WHERE event_type = 'coordination_requested'") == 1
        assert len(office_user.get("/inbox").json()) == 1
        [published] = tap.wait_for("coordination_requested")
        assert published["producer"] == {"node": DISTRICT, "service": "tasks"}
        _, requested = parse_event(published, "coordination_requested")
        assert requested.from_node == STREET and requested.task == escalated.task
        assert (requested.answer_due_at, requested.requested_at) == (escalated.answer_due_at, escalated.at)
        assert [e["event_type"] for e in tap.drain()] == ["coordination_requested"]  # published once
