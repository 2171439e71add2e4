"""The tasks service (整改任务) through the real broker and database, fed by the real
inspection service: findings become tasks, tasks are fixed, verified, rejected, go overdue,
are urged and escalated, relapse, and the ledger exports open in a spreadsheet library."""
from __future__ import annotations

import csv
import io
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from kombu import Connection, Exchange, Producer
from openpyxl import load_workbook
from sqlalchemy import create_engine, func, select

from services.contracts.events import parse_event
from services.contracts.periods import CST
from services.inspection.service import InspectionService
from services.plumbing import clock
from services.tasks.models import Task, TaskHistory, outbox
from services.tasks.service import TasksService
from tests import support

pytestmark = pytest.mark.integration

STREET = "411502008000"       # 金牛山街道
DISTRICT = "411502000000"     # 浉河区: the tier above the street
COMMUNITY = "411502008001"    # 周家山社区
PHOTO_BEFORE = {"uri": "photos/before.jpg", "sha256": "a" * 64}
PHOTO_AFTER = {"uri": "photos/after.jpg", "sha256": "b" * 64}


def people(api):
    """Who acts in these tests: the community's contact, two street inspectors, the district office."""
    return {
        "张伟": api.as_user("张伟", [("rectifier", COMMUNITY)]),
        "刘洋": api.as_user("刘洋", [("rectifier", COMMUNITY)]),
        "王芳": api.as_user("王芳", [("inspector", STREET)]),
        "李强": api.as_user("李强", [("inspector", STREET)]),
        "区爱卫办": api.as_user("区爱卫办", [("inspector", DISTRICT)]),
    }


def stored(photo: dict) -> dict:
    return {"taken_at": None, "gps": None, **photo}


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


@contextmanager
def street_stack(amqp_uri, database_url, event_tap, **extra):
    ports = {"inspection": support.free_port(), "tasks": support.free_port()}
    config = support.base_config(
        amqp_uri, database_url, WEB_ADDRESSES={k: f"127.0.0.1:{p}" for k, p in ports.items()},
        TASKS_SWEEP_INTERVAL=0, TASKS_URGE_REPEAT_HOURS=24, TASKS_ESCALATION_GRACE_HOURS=48,
        TASKS_ANSWER_HOURS=72, TASKS_RELAPSE_WINDOW_DAYS=90, **extra)
    tap = event_tap(("tasks.events", "#"))
    with support.running_services(config, InspectionService, TasksService) as runner:
        yield {"inspection": support.ApiClient(f"http://127.0.0.1:{ports['inspection']}"),
               "tasks": support.ApiClient(f"http://127.0.0.1:{ports['tasks']}"),
               "tap": tap, "config": config, "runner": runner, "database_url": database_url,
               "amqp_uri": amqp_uri}


@pytest.fixture
def stack(amqp_uri, database_url, event_tap):
    """The street's stack federated with the district's (PARENT_STACK): escalations go up the link."""
    with street_stack(amqp_uri, database_url, event_tap, PARENT_STACK=DISTRICT) as running:
        yield running


@pytest.fixture
def lone_stack(amqp_uri, database_url, event_tap):
    """The street's stack alone: the district runs no stack (no PARENT_STACK), as the README's example."""
    with street_stack(amqp_uri, database_url, event_tap) as running:
        yield running


def register(api):
    subject = api.post("/subjects", {"subject_type": "child_unit", "node": COMMUNITY, "name": "周家山社区"})
    assert subject.status_code == 201, subject.text
    subject = subject.json()
    place = api.post("/places", {"place_type": "public_toilet", "name": "周家山路公厕", "node": COMMUNITY,
                                 "address": "周家山路12号", "responsible_subject_id": subject["subject_id"]})
    assert place.status_code == 201, place.text
    return subject, place.json()


def inspect(api, subject, place, results, inspected_at):
    response = api.post("/inspections", {
        "kind": "routine", "subject_id": subject["subject_id"], "place_id": place["place_id"],
        "checklist": {"version": "2010.1", "code": "public-toilet"}, "inspectors": ["王芳", "李强"],
        "inspected_at": inspected_at.isoformat(), "results": results})
    assert response.status_code == 201, response.text
    return response.json()


def events(tap, event_type, **payload_filter):
    out = []
    for e in tap.drain():
        if e["event_type"] != event_type:
            continue
        parse_event(e, event_type)  # every published event matches its contract
        task = e["payload"].get("task", {})
        if all(task.get(k, e["payload"].get(k)) == v for k, v in payload_filter.items()):
            out.append(e)
    return out


def wait_events(tap, event_type, count=1, timeout=15.0, **payload_filter):
    return support.wait_until(lambda: (lambda found: found if len(found) >= count else None)(
        events(tap, event_type, **payload_filter)), timeout, message=f"{count} × {event_type} {payload_filter}")


def table_counts(database_url):
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(select(func.count()).select_from(t)).scalar_one()
                         for t in (Task.__table__, TaskHistory.__table__, outbox))
    finally:
        engine.dispose()


# --- the lifecycle scene: one inspection's three tasks, and the stages they go through ---------
# Each test below starts its own stack and builds, with these helpers, the state its stage needs;
# no test relies on another having run.


@dataclass
class Scene:
    """One routine inspection of 周家山路公厕 with three findings worth a task (and one compliant item)."""
    stack: dict
    subject: dict
    place: dict
    inspection: dict
    found_at: datetime
    inspector_deadline: datetime
    opened: list[dict]
    tasks: list[dict]
    who: dict
    relapse_task: dict | None = None

    @property
    def by_item(self) -> dict[str, dict]:
        return {t["item_code"]: t for t in self.tasks}

    @property
    def on_time_task(self) -> dict:     # PT-03, 24 h: closed in time
        return self.by_item["PT-03"]

    @property
    def overdue_task(self) -> dict:     # PT-02, immediately: left to go overdue and be escalated
        return self.by_item["PT-02"]

    @property
    def rejected_task(self) -> dict:    # PT-06, the inspector's date: a fix rejected, then verified
        return self.by_item["PT-06"]

    @property
    def immediate_deadline(self) -> datetime:
        return parse_time(self.overdue_task["deadline_at"])


def open_three_tasks(stack) -> Scene:
    """Register the community and its toilet, submit an inspection with three findings worth a task,
    and wait until the ledger holds the three tasks."""
    inspection_api, api, tap = stack["inspection"], stack["tasks"], stack["tap"]
    subject, place = register(inspection_api)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    found_at = now - timedelta(hours=1)
    if found_at.astimezone(CST).month != now.astimezone(CST).month:
        found_at = now - timedelta(seconds=30)  # keep every task in this month's figures
    inspector_deadline = found_at + timedelta(days=5)
    inspection = inspect(inspection_api, subject, place, [
        {"item_code": "PT-03", "findings": 1, "note": "有明显臭味", "evidence": [PHOTO_BEFORE]},     # 24 h
        {"item_code": "PT-02", "findings": 2, "note": "便池积粪", "evidence": [PHOTO_BEFORE]},        # immediately
        {"item_code": "PT-06", "findings": 1, "note": "洗手池损坏", "evidence": [PHOTO_BEFORE],
         "deadline_at": inspector_deadline.isoformat()},                                            # inspector's date
        {"item_code": "PT-01", "findings": 0},                                                       # compliant
    ], found_at)
    opened = wait_events(tap, "task_opened", 3)
    tasks = support.wait_until(lambda: (lambda r: r if len(r) == 3 else None)(api.get("/tasks").json()),
                               message="three tasks in the ledger")
    return Scene(stack=stack, subject=subject, place=place, inspection=inspection, found_at=found_at,
                 inspector_deadline=inspector_deadline, opened=opened, tasks=tasks, who=people(api))


def close_on_time(scene: Scene) -> dict:
    """张伟 starts and fixes the PT-03 task, 王芳 verifies it, well before its 24 h deadline: the
    three responses, unchecked (the caller asserts what it is about)."""
    who, tid = scene.who, scene.on_time_task["task_id"]
    return {"start": who["张伟"].post(f"/tasks/{tid}/start", {}),
            "fix": who["张伟"].post(f"/tasks/{tid}/fix", {"note": "已通风除臭", "after_photos": [PHOTO_AFTER]}),
            "verify": who["王芳"].post(f"/tasks/{tid}/verify", {"note": "现场复查合格"})}


def require_closed_on_time(scene: Scene) -> None:
    """The PT-03 task closed, as a precondition of a later stage."""
    responses = close_on_time(scene)
    for step, response in responses.items():
        assert response.status_code == 200, f"{step}: {response.text}"
    wait_events(scene.stack["tap"], "task_closed", task_id=scene.on_time_task["task_id"])


def set_clock_past_the_immediate_deadline(scene: Scene, hours: int) -> None:
    clock.set_offset(scene.immediate_deadline + timedelta(hours=hours) - datetime.now(timezone.utc))


def require_urged_once(scene: Scene) -> None:
    """An hour past the PT-02 task's deadline, one sweep marks it overdue and urges once
    (the clock stays there: the caller resets it)."""
    set_clock_past_the_immediate_deadline(scene, 1)
    sweep = scene.stack["tasks"].post("/sweeps")
    assert sweep.status_code == 201 and sweep.json()["urged"] == 1, sweep.text


def require_escalated(scene: Scene) -> None:
    """The PT-02 task urged once, then urged again and escalated past the 48 h grace; the clock
    is back on real time afterwards."""
    require_urged_once(scene)
    set_clock_past_the_immediate_deadline(scene, 49)
    sweep = scene.stack["tasks"].post("/sweeps")
    assert sweep.status_code == 201 and sweep.json()["escalated"] == 1, sweep.text
    wait_events(scene.stack["tap"], "task_escalated", task_id=scene.overdue_task["task_id"])
    clock.reset()


def reject_then_verify(scene: Scene) -> dict:
    """The PT-06 task: started and fixed by 张伟, rejected by 李强, fixed again by 刘洋 and verified
    by 李强. The responses, unchecked."""
    who, rid = scene.who, scene.rejected_task["task_id"]
    body = {"note": "已更换水龙头", "after_photos": [PHOTO_AFTER]}
    return {"start": who["张伟"].post(f"/tasks/{rid}/start", {}),
            "fix": who["张伟"].post(f"/tasks/{rid}/fix", body),
            "reject": who["李强"].post(f"/tasks/{rid}/reject", {"reason": "洗手池仍漏水"}),
            "fix_again": who["刘洋"].post(f"/tasks/{rid}/fix", {**body, "note": "已更换洗手池"}),
            "verify": who["李强"].post(f"/tasks/{rid}/verify", {})}


def find_again(scene: Scene) -> dict:
    """A new inspection finds the PT-03 problem again at the same place; its task_relapsed event."""
    inspect(scene.stack["inspection"], scene.subject, scene.place, [
        {"item_code": "PT-03", "findings": 1, "note": "又有臭味", "evidence": [PHOTO_BEFORE]}],
        datetime.now(timezone.utc))
    [relapse] = wait_events(scene.stack["tap"], "task_relapsed")
    return relapse


def whole_lifecycle(stack) -> Scene:
    """Every stage in order: PT-03 closed on time, PT-02 urged twice and escalated (the clock
    forward and back), PT-06 rejected then verified, PT-03 found again (a relapse task)."""
    scene = open_three_tasks(stack)
    require_closed_on_time(scene)
    require_escalated(scene)
    for step, response in reject_then_verify(scene).items():
        assert response.status_code == 200, f"{step}: {response.text}"
    relapse = find_again(scene)
    scene.relapse_task = stack["tasks"].get(f"/tasks/{relapse['payload']['task']['task_id']}").json()
    return scene


# --- three findings with a deduction → three tasks ---------------------------------------------


def test_three_findings_with_a_deduction_open_three_green_tasks_for_the_subject_and_place(stack):
    """Each finding with a deduction opens one task (the compliant item none), owned by the street,
    naming the responsible subject, the place and the finding's photo; filterable by category."""
    scene = open_three_tasks(stack)
    api = stack["tasks"]
    assert len(scene.opened) == 3
    assert set(scene.by_item) == {"PT-02", "PT-03", "PT-06"}
    for t in scene.tasks:
        assert t["inspection_id"] == scene.inspection["inspection_id"]
        assert t["status"] == "open" and t["light"] == "green"
        assert t["responsible"] == {"subject_id": scene.subject["subject_id"], "node": COMMUNITY, "name": "周家山社区"}
        assert t["inspecting_node"] == STREET and t["owner_node"] == STREET
        assert t["evidence"] == [stored(PHOTO_BEFORE)] and t["place"]["place_id"] == scene.place["place_id"]
    assert api.get("/tasks?category=SAN").json()[0]["task_id"] == scene.overdue_task["task_id"]


def test_task_deadlines_come_from_the_item_the_inspector_or_immediately(stack):
    """PT-03 is due 24 h after the finding (the item's limit), PT-06 on the inspector's date, PT-02
    "immediately" (end of the inspection's day, at least 2 h later) and is critical."""
    scene = open_three_tasks(stack)
    on_time_task, overdue_task, rejected_task = scene.on_time_task, scene.overdue_task, scene.rejected_task
    found_at = scene.found_at
    assert parse_time(on_time_task["deadline_at"]) == found_at + timedelta(hours=24)
    assert on_time_task["deadline_source"] == "item" and on_time_task["severity"] == "major"
    assert parse_time(rejected_task["deadline_at"]) == scene.inspector_deadline
    assert rejected_task["deadline_source"] == "inspector"
    assert overdue_task["deadline_source"] == "immediate" and overdue_task["severity"] == "critical"
    immediate_deadline = parse_time(overdue_task["deadline_at"])
    assert found_at + timedelta(hours=2) <= immediate_deadline <= found_at + timedelta(hours=26)


# --- close one on time; illegal moves are refused and change nothing ------------------------------


def test_illegal_moves_on_a_task_are_refused_and_change_nothing(stack):
    """Verifying an open task, the inspector starting it, a fix without photos or note, the
    subject verifying its own fix and rejecting a closed task are refused with the field named;
    the refused fixes and verify leave the tables as they were, and the history only the legal moves."""
    scene = open_three_tasks(stack)
    who, tid = scene.who, scene.on_time_task["task_id"]
    refused = who["王芳"].post(f"/tasks/{tid}/verify", {})
    assert refused.status_code == 409 and refused.json()["errors"][0]["field"] == "status", refused.text
    not_the_subject = who["王芳"].post(f"/tasks/{tid}/start", {})
    assert not_the_subject.status_code == 403 and not_the_subject.json()["errors"][0]["field"] == "role"
    assert who["张伟"].post(f"/tasks/{tid}/start", {}).status_code == 200
    counts_before = table_counts(stack["database_url"])
    missing = who["张伟"].post(f"/tasks/{tid}/fix", {"note": "已通风除臭", "after_photos": []})
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "after_photos", missing.text
    no_note = who["张伟"].post(f"/tasks/{tid}/fix", {"after_photos": [PHOTO_AFTER]})
    assert no_note.status_code == 422 and no_note.json()["errors"][0]["field"] == "note"
    assert table_counts(stack["database_url"]) == counts_before
    fixed = who["张伟"].post(f"/tasks/{tid}/fix", {"note": "已通风除臭", "after_photos": [PHOTO_AFTER]})
    assert fixed.status_code == 200 and fixed.json()["status"] == "fix_submitted", fixed.text
    counts_before = table_counts(stack["database_url"])
    wrong_side = who["张伟"].post(f"/tasks/{tid}/verify", {})
    assert wrong_side.status_code == 403 and wrong_side.json()["errors"][0]["field"] == "role"
    assert table_counts(stack["database_url"]) == counts_before
    closed = who["王芳"].post(f"/tasks/{tid}/verify", {"note": "现场复查合格"})
    assert closed.status_code == 200, closed.text
    assert [h["action"] for h in closed.json()["history"]] == ["open", "start", "submit_fix", "verify"]
    assert who["王芳"].post(f"/tasks/{tid}/reject", {"reason": "x"}).status_code == 409


def test_a_task_fixed_and_verified_before_its_deadline_closes_on_time(stack):
    """Started and fixed by the subject's contact, verified by a street inspector: closed on time,
    with the after photo, who did each step in the history, and a task_closed event."""
    scene = open_three_tasks(stack)
    responses = close_on_time(scene)
    assert responses["start"].status_code == 200, responses["start"].text
    fixed = responses["fix"]
    assert fixed.status_code == 200 and fixed.json()["status"] == "fix_submitted", fixed.text
    closed = responses["verify"]
    assert closed.status_code == 200, closed.text
    closed = closed.json()
    assert closed["status"] == "closed" and closed["on_time"] is True and closed["light"] is None
    assert closed["verified_by"] == "王芳" and closed["after_evidence"] == [stored(PHOTO_AFTER)]
    assert [h["action"] for h in closed["history"]] == ["open", "start", "submit_fix", "verify"]
    assert [(h["actor"], h["actor_subject"], h["role"]) for h in closed["history"][1:]] == [
        ("张伟", "user-张伟", "rectifier"), ("张伟", "user-张伟", "rectifier"), ("王芳", "user-王芳", "inspector")]
    [closed_event] = wait_events(stack["tap"], "task_closed", task_id=scene.on_time_task["task_id"])
    assert closed_event["payload"]["on_time"] is True and closed_event["payload"]["verified_by"] == "王芳"


# --- let one go overdue: urge notice, then escalation after the grace period ------------------------


def test_a_task_past_its_deadline_turns_red_and_one_sweep_urges_it_once(stack):
    """An hour past the deadline the task shows red; a sweep marks it overdue and sends one urge
    (task_overdue, urge_count 1, overdue since the deadline); a second sweep at the same moment
    does nothing, and the task stays open."""
    scene = open_three_tasks(stack)
    require_closed_on_time(scene)   # so that only the PT-02 task is past its deadline
    api, tap, oid = stack["tasks"], stack["tap"], scene.overdue_task["task_id"]
    immediate_deadline = scene.immediate_deadline
    set_clock_past_the_immediate_deadline(scene, 1)
    assert api.get(f"/tasks/{oid}").json()["light"] == "red"
    assert [t["task_id"] for t in api.get("/tasks?light=red").json()] == [oid]
    sweep = api.post("/sweeps").json()
    assert (sweep["urged"], sweep["escalated"], sweep["marked_overdue"]) == (1, 0, 1), sweep
    [urge] = wait_events(tap, "task_overdue", task_id=oid)
    assert urge["payload"]["urge_count"] == 1
    assert parse_time(urge["payload"]["overdue_since"]) == immediate_deadline
    again = api.post("/sweeps").json()
    assert (again["urged"], again["escalated"]) == (0, 0), "a second sweep at the same moment does nothing"
    assert api.get(f"/tasks/{oid}").json()["status"] == "open"
    clock.reset()


def test_an_overdue_task_is_urged_again_and_escalated_to_the_district_after_the_grace_period(stack):
    """49 h past the deadline (beyond the 48 h grace, a day after the first urge) a sweep urges a
    second time and escalates to the district with 72 h to answer; the sweeper is the actor, and a
    further sweep escalates nothing."""
    scene = open_three_tasks(stack)
    require_closed_on_time(scene)
    require_urged_once(scene)
    api, tap, oid = stack["tasks"], stack["tap"], scene.overdue_task["task_id"]
    set_clock_past_the_immediate_deadline(scene, 49)
    sweep = api.post("/sweeps").json()
    assert (sweep["urged"], sweep["escalated"]) == (1, 1), sweep
    [escalation] = wait_events(tap, "task_escalated", task_id=oid)
    assert escalation["payload"]["to_node"] == DISTRICT
    assert parse_time(escalation["payload"]["answer_due_at"]) - parse_time(escalation["payload"]["at"]) \
        == timedelta(hours=72)
    urges = wait_events(tap, "task_overdue", 2, task_id=oid)
    assert [u["payload"]["urge_count"] for u in urges] == [1, 2]
    escalated = api.get(f"/tasks/{oid}").json()
    assert escalated["status"] == "escalated" and escalated["escalated_to"] == DISTRICT
    assert escalated["urge_count"] == 2
    assert [h["action"] for h in escalated["history"]] == ["open", "urge", "urge", "escalate"]
    assert escalated["history"][-1]["role"] == "system"
    assert api.post("/sweeps").json()["escalated"] == 0
    clock.reset()


# --- issue 25: escalation stops at the top tier that runs a stack, and never locks a task ---------------


def escalate_the_overdue_task(scene: Scene) -> dict:
    """PT-03 closed, PT-02 left to go overdue: urged an hour after its deadline, urged again and
    escalated by the sweeper 49 h after it (beyond the 48 h grace). The clock stays there."""
    require_closed_on_time(scene)
    require_urged_once(scene)
    set_clock_past_the_immediate_deadline(scene, 49)
    sweep = scene.stack["tasks"].post("/sweeps")
    assert sweep.status_code == 201 and sweep.json()["escalated"] == 1, sweep.text
    [escalation] = wait_events(scene.stack["tap"], "task_escalated", task_id=scene.overdue_task["task_id"])
    return escalation


def published_up(database_url: str) -> int:
    """Events this stack staged for the federation link to a parent stack (the outbox is the whole record)."""
    [(count,)] = support.scalar_rows(database_url, "SELECT count(*) FROM tasks_outbox WHERE exchange = 'chuangwei.up'")
    return count


def test_without_a_parent_stack_the_sweeper_escalates_inside_the_office_whose_inspector_answers_and_closes_it(
        lone_stack):
    """No PARENT_STACK: past the grace the sweeper escalates the overdue task to the street's own office
    (督办 inside the office), nothing goes up a federation link; the subject and the district cannot
    answer it, the street's inspector can (with a new deadline), and the task is fixed and closed out."""
    scene = open_three_tasks(lone_stack)
    api, who, oid = lone_stack["tasks"], scene.who, scene.overdue_task["task_id"]
    escalation = escalate_the_overdue_task(scene)
    try:
        assert escalation["payload"]["to_node"] == STREET
        escalated = api.get(f"/tasks/{oid}").json()
        assert (escalated["status"], escalated["escalated_to"], escalated["coordination_pending"]) == (
            "escalated", STREET, True)
        assert published_up(lone_stack["database_url"]) == 0
        assert api.post("/sweeps").json()["escalated"] == 0           # never escalated twice
        refused = who["张伟"].post(f"/tasks/{oid}/answer", {"note": "已协调"})
        assert refused.status_code == 403 and refused.json()["errors"][0]["field"] == "role", refused.text
        new_deadline = (clock.now() + timedelta(days=2)).replace(microsecond=0)
        answered = who["王芳"].post(f"/tasks/{oid}/answer", {"note": "街道已协调环卫所清掏",
                                                             "new_deadline_at": new_deadline.isoformat()})
        assert answered.status_code == 200, answered.text
        answered = answered.json()
        assert (answered["status"], answered["coordination_pending"], answered["deadline_source"]) == (
            "in_progress", False, "coordinator")
        assert parse_time(answered["deadline_at"]) == new_deadline and answered["light"] == "green"
        assert (answered["history"][-1]["actor"], answered["history"][-1]["role"]) == ("王芳", "inspector")
        again = who["李强"].post(f"/tasks/{oid}/answer", {"note": "再次答复"})
        assert again.status_code == 409 and again.json()["errors"][0]["field"] == "status", again.text
        fixed = who["张伟"].post(f"/tasks/{oid}/fix", {"note": "已清掏并冲洗", "after_photos": [PHOTO_AFTER]})
        assert fixed.status_code == 200 and fixed.json()["status"] == "fix_submitted", fixed.text
        closed = who["李强"].post(f"/tasks/{oid}/verify", {"note": "复查合格"})
        assert closed.status_code == 200 and closed.json()["status"] == "closed", closed.text
        assert closed.json()["on_time"] is True   # fixed by the deadline the office granted
        [closed_event] = wait_events(lone_stack["tap"], "task_closed", task_id=oid)
        assert closed_event["payload"]["verified_by"] == "李强"
        assert [h["action"] for h in closed.json()["history"]] == [
            "open", "urge", "urge", "escalate", "answer", "submit_fix", "verify"]
    finally:
        clock.reset()


def test_the_street_administrator_answers_an_escalation_inside_the_office(lone_stack):
    """The office's administrator may answer too: the subject asked for help (上报协调) with no parent stack."""
    scene = open_three_tasks(lone_stack)
    api, who, tid = lone_stack["tasks"], scene.who, scene.rejected_task["task_id"]
    asked = who["张伟"].post(f"/tasks/{tid}/escalate", {"reason": "洗手池产权不清，请街道协调"})
    assert asked.status_code == 200 and asked.json()["escalated_to"] == STREET, asked.text
    admin = api.as_user("街道创卫办", [("administrator", STREET)])
    answered = admin.post(f"/tasks/{tid}/answer", {"note": "已协调物业更换"})
    assert answered.status_code == 200 and answered.json()["status"] == "in_progress", answered.text
    assert answered.json()["history"][-1]["role"] == "administrator"
    assert published_up(lone_stack["database_url"]) == 0


def test_an_escalated_task_can_still_be_started_fixed_rejected_verified_and_closed(stack):
    """Escalated to the parent stack's office and not yet answered, the task stays workable: the subject
    starts and fixes it, the inspector rejects and then verifies it (销号); the coordination stays pending
    until the close-out, the sweeper escalates it no more, and the parent's late answer changes nothing."""
    from services.contracts.events import Producer as EventProducer, make_event
    from services.contracts.events.tasks import CoordinationAnswered
    from services.contracts.tiers import PARENT_EXCHANGE, routing_key as tier_routing_key
    scene = open_three_tasks(stack)
    api, who, oid = stack["tasks"], scene.who, scene.overdue_task["task_id"]
    try:
        escalation = escalate_the_overdue_task(scene)
        assert escalation["payload"]["to_node"] == DISTRICT and published_up(stack["database_url"]) == 1
        started = who["张伟"].post(f"/tasks/{oid}/start", {"note": "先行清掏"})
        assert started.status_code == 200, started.text
        assert (started.json()["status"], started.json()["coordination_pending"]) == ("in_progress", True)
        assert api.post("/sweeps").json()["escalated"] == 0
        body = {"note": "已清掏", "after_photos": [PHOTO_AFTER]}
        assert who["张伟"].post(f"/tasks/{oid}/fix", body).json()["status"] == "fix_submitted"
        rejected = who["李强"].post(f"/tasks/{oid}/reject", {"reason": "仍有积粪"})
        assert rejected.status_code == 200 and rejected.json()["status"] == "in_progress", rejected.text
        assert who["刘洋"].post(f"/tasks/{oid}/fix", {**body, "note": "已彻底清掏"}).status_code == 200
        closed = who["王芳"].post(f"/tasks/{oid}/verify", {"note": "复查合格"})
        assert closed.status_code == 200, closed.text
        assert (closed.json()["status"], closed.json()["coordination_pending"]) == ("closed", False)
        assert closed.json()["on_time"] is False   # fixed long after its deadline
        wait_events(stack["tap"], "task_closed", task_id=oid)
        late = who["区爱卫办"].post(f"/tasks/{oid}/answer", {"note": "已协调"})
        assert late.status_code == 409 and late.json()["errors"][0]["field"] == "status", late.text
        # The district's answer to its request comes down the link after the close-out: taken, no harm.
        handled = support.events_consumed(api, "tasks", "coordination_answered")
        processed = support.events_consumed(api, "tasks", "coordination_answered", outcomes=("processed",))
        answer = CoordinationAnswered(task_id=oid, coordinator_node=DISTRICT, owner_node=STREET,
                                      answered_by="区爱卫办", answer="已协调环卫所",
                                      new_deadline_at=clock.now() + timedelta(days=3), answered_at=clock.now())
        with Connection(stack["amqp_uri"]) as conn:
            exchange = Exchange(PARENT_EXCHANGE, type="topic", durable=True)
            exchange(conn.default_channel).declare()
            Producer(conn.default_channel).publish(
                make_event(answer, EventProducer(node=DISTRICT, service="tasks"), correlation_id=oid).to_message(),
                exchange=exchange, routing_key=tier_routing_key("coordination_answered", STREET), serializer="json")
        support.wait_consumed(api, "tasks", "coordination_answered", handled + 1)
        after = api.get(f"/tasks/{oid}").json()
        assert after["status"] == "closed" and after["history"][-1]["action"] == "verify"
        assert support.events_consumed(api, "tasks", "coordination_answered",
                                       outcomes=("processed",)) == processed + 1   # not dead-lettered
    finally:
        clock.reset()


# --- reject, then verify the third -------------------------------------------------------------------


def test_a_rejected_fix_returns_the_task_to_work_and_a_second_fix_closes_it(stack):
    """A rejected fix sends the task back to in_progress with the reason and the inspector recorded;
    another contact of the subject fixes it again and the inspector verifies: the history and the
    task_status_changed events show every step."""
    scene = open_three_tasks(stack)
    responses = reject_then_verify(scene)
    rid = scene.rejected_task["task_id"]
    assert responses["start"].status_code == 200
    assert responses["fix"].status_code == 200
    rejected = responses["reject"]
    assert rejected.status_code == 200 and rejected.json()["status"] == "in_progress", rejected.text
    assert responses["fix_again"].status_code == 200
    verified = responses["verify"]
    assert verified.status_code == 200 and verified.json()["status"] == "closed", verified.text
    history = stack["tasks"].get(f"/tasks/{rid}/history").json()
    assert [(h["action"], h["from_status"], h["to_status"]) for h in history] == [
        ("open", None, "open"), ("start", "open", "in_progress"), ("submit_fix", "in_progress", "fix_submitted"),
        ("reject", "fix_submitted", "in_progress"), ("submit_fix", "in_progress", "fix_submitted"),
        ("verify", "fix_submitted", "closed")]
    assert history[3]["reason"] == "洗手池仍漏水" and history[3]["actor"] == "李强"
    changes = wait_events(stack["tap"], "task_status_changed", 5, task_id=rid)
    assert [(c["payload"]["from_status"], c["payload"]["to_status"]) for c in changes][-2:] == [
        ("in_progress", "fix_submitted"), ("fix_submitted", "closed")]


# --- a new finding at the same place for the same item: relapse linked -------------------------------


def test_a_new_finding_for_the_same_item_and_place_after_close_out_is_a_linked_relapse(stack):
    """After the PT-03 task is closed, a new PT-03 finding at the same toilet opens a task marked as a
    relapse of it (task_relapsed), the only one listed under relapse=true."""
    scene = open_three_tasks(stack)
    require_closed_on_time(scene)
    api, tid = stack["tasks"], scene.on_time_task["task_id"]
    relapse = find_again(scene)
    assert relapse["payload"]["relapse_of"] == tid
    relapse_task = api.get(f"/tasks/{relapse['payload']['task']['task_id']}").json()
    assert relapse_task["relapse_of"] == tid and relapse_task["relapse"] is True
    assert relapse_task["item_code"] == "PT-03"
    assert [t["task_id"] for t in api.get("/tasks?relapse=true").json()] == [relapse_task["task_id"]]


# --- figures and the ledger exports, after the whole lifecycle -----------------------------------------


def test_ledger_figures_after_the_whole_lifecycle_are_served_and_published_in_order(stack):
    """4 opened, 2 closed (both on time), 1 relapse, 1 overdue open: the same figures from /figures and
    in the latest ledger_figures_updated, whose computed_at only grows though the clock went
    forward and back."""
    scene = whole_lifecycle(stack)
    api, tap, subject = stack["tasks"], stack["tap"], scene.subject
    [figures] = api.get(f"/figures?subject_id={subject['subject_id']}").json()
    assert (figures["opened"], figures["closed"], figures["closed_on_time"], figures["relapses"]) == (4, 2, 2, 1)
    assert figures["close_rate"] == 0.5 and figures["on_time_rate"] == 1.0 and figures["overdue_open"] == 1

    def latest_figures():
        mine = events(tap, "ledger_figures_updated", subject_id=subject["subject_id"])
        return mine[-1] if mine and mine[-1]["payload"]["opened"] == 4 else None
    latest = support.wait_until(latest_figures, message="ledger figures after the relapse")["payload"]
    assert (latest["closed"], latest["relapses"], latest["close_rate"], latest["overdue_open"]) == (2, 1, 0.5, 1)
    assert latest["period"] == figures["period"] and latest["node"] == COMMUNITY
    # Published in order with growing computed_at, though the clock went forward and back.
    stamps = [parse_time(e["payload"]["computed_at"])
              for e in events(tap, "ledger_figures_updated", subject_id=subject["subject_id"])]
    assert len(stamps) >= 5 and all(a < b for a, b in zip(stamps, stamps[1:])), stamps


def expected_ledger(scene: Scene) -> dict[str, tuple]:
    """Each task's (状态, 是否按期, 上报协调至, 检查项目) in the ledger after the whole lifecycle."""
    return {
        scene.on_time_task["task_id"]: ("已销号", "是", "", "PT-03"),
        scene.overdue_task["task_id"]: ("已上报协调", "", DISTRICT, "PT-02"),
        scene.rejected_task["task_id"]: ("已销号", "是", "", "PT-06"),
        scene.relapse_task["task_id"]: ("待整改", "", "", "PT-03"),
    }


def ledger_workbook(api):
    xlsx = api.get("/ledger/export.xlsx")
    assert xlsx.status_code == 200 and "spreadsheetml" in xlsx.headers["Content-Type"]
    book = load_workbook(io.BytesIO(xlsx.content))
    rows = list(book["整改台账"].iter_rows(values_only=True))
    header = list(rows[0])
    return book, rows, header, {name: header.index(name) for name in header}


def test_the_xlsx_ledger_lists_every_task_with_its_outcome_and_what_rebuilds_the_inspection(stack):
    """The 整改台账 sheet has one row per task with its status, on-time mark, escalation, relapse link,
    findings, inspection, light, urges and severity; the 汇总 sheet counts per subject."""
    scene = whole_lifecycle(stack)
    api, subject, inspection = stack["tasks"], scene.subject, scene.inspection
    tid, oid = scene.on_time_task["task_id"], scene.overdue_task["task_id"]
    expected = expected_ledger(scene)
    book, rows, header, col = ledger_workbook(api)
    assert header[:5] == ["序号", "任务编号", "责任主体", "检查对象", "点位"]
    assert len(rows) == 5
    for row in rows[1:]:
        status, on_time, escalated_to, item = expected[row[col["任务编号"]]]
        assert row[col["状态"]] == status and row[col["检查项目"]] == item
        assert (row[col["是否按期"]] or "") == on_time and (row[col["上报协调至"]] or "") == escalated_to
        assert row[col["责任主体"]] == "周家山社区" and row[col["点位"]] == "周家山路公厕"
    by_id = {row[col["任务编号"]]: row for row in rows[1:]}
    assert by_id[scene.relapse_task["task_id"]][col["反弹(关联任务)"]] == tid
    # The findings behind a deduction, and what the history import needs to rebuild the inspection.
    assert by_id[oid][col["问题数"]] == 2 and by_id[tid][col["问题数"]] == 1
    assert by_id[oid][col["检查编号"]] == inspection["inspection_id"]
    assert by_id[oid][col["检查类型"]] == "日常检查" and by_id[oid][col["点位类型"]] == "公厕"
    assert by_id[oid][col["检查对象区划"]] == subject["node"]
    assert by_id[oid][col["亮灯"]] == "红灯" and by_id[oid][col["督办次数"]] == 2
    assert by_id[oid][col["严重程度"]] == "严重"
    summary = list(book["汇总"].iter_rows(values_only=True))
    assert summary[1][:3] == ("周家山社区", 4, 2)


def test_the_csv_ledger_is_utf8_with_a_bom_and_matches_the_xlsx(stack):
    """The CSV export starts with a UTF-8 BOM (for Excel), has the xlsx sheet's header and the same
    status, on-time mark, escalation and item for every task."""
    scene = whole_lifecycle(stack)
    api = stack["tasks"]
    _, _, header, col = ledger_workbook(api)
    csv_response = api.get("/ledger/export.csv")
    assert csv_response.status_code == 200 and csv_response.content.startswith(b"\xef\xbb\xbf")
    csv_rows = list(csv.reader(io.StringIO(csv_response.content.decode("utf-8-sig"))))
    assert csv_rows[0] == header
    assert {r[col["任务编号"]]: (r[col["状态"]], r[col["是否按期"]], r[col["上报协调至"]], r[col["检查项目"]])
            for r in csv_rows[1:]} == expected_ledger(scene)


def test_ledger_exports_and_task_lists_filter_by_limit_status_and_period(stack):
    """limit=2 gives two CSV rows, status=closed the two closed tasks; this month lists all four
    tasks, a month without tasks none, and a month 13 is refused naming query.period."""
    scene = whole_lifecycle(stack)
    api = stack["tasks"]
    tid, rid = scene.on_time_task["task_id"], scene.rejected_task["task_id"]
    _, _, _, col = ledger_workbook(api)
    first_two = list(csv.reader(io.StringIO(api.get("/ledger/export.csv?limit=2").content.decode("utf-8-sig"))))
    assert len(first_two) == 3  # header + 2
    filtered = load_workbook(io.BytesIO(api.get("/ledger/export.xlsx?status=closed").content))["整改台账"]
    assert sorted(r[col["任务编号"]] for r in filtered.iter_rows(min_row=2, values_only=True)) == sorted([tid, rid])
    this_month = datetime.now(CST).strftime("%Y-%m")
    assert len(api.get(f"/tasks?period={this_month}").json()) == 4
    assert api.get("/tasks?period=2019-01").json() == []
    bad = api.get("/tasks?period=2026-13")
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.period"


def test_task_metrics_show_the_red_critical_task_the_sweeper_escalation_and_hours_to_fix(stack):
    """After the whole lifecycle /metrics counts one open red critical task (the escalated PT-02),
    the sweeper's escalation and the hours-to-fix histogram."""
    whole_lifecycle(stack)
    metrics = stack["tasks"].get("/metrics").text
    assert 'chuangwei_tasks_open{light="red",severity="critical"} 1.0' in metrics
    assert 'chuangwei_task_escalations_total{by="sweeper"}' in metrics
    assert "chuangwei_task_hours_to_fix_bucket" in metrics


def test_redelivered_inspection_opens_no_second_task_and_bad_requests_change_nothing(stack, event_tap):
    inspection_api, api, tap = stack["inspection"], stack["tasks"], stack["tap"]
    inspections_tap = event_tap(("inspection.events", "inspection_submitted"))
    subject, place = register(inspection_api)
    inspect(inspection_api, subject, place, [{"item_code": "PT-05", "findings": 1}],
            datetime.now(timezone.utc) - timedelta(minutes=5))
    [submitted] = inspections_tap.wait_for("inspection_submitted")
    wait_events(tap, "task_opened")
    with Connection(stack["amqp_uri"]) as conn:  # the broker redelivers (or the relay re-sends)
        Producer(conn.default_channel).publish(submitted, exchange=Exchange("inspection.events", type="topic",
                                                                            durable=True),
                                               routing_key="inspection_submitted", serializer="json")
    probe = inspect(inspection_api, subject, place, [{"item_code": "PT-07", "findings": 1}],
                    datetime.now(timezone.utc) - timedelta(minutes=1))
    wait_events(tap, "task_opened", inspection_id=probe["inspection_id"])  # the duplicate came before it
    assert sorted(t["item_code"] for t in api.get("/tasks").json()) == ["PT-05", "PT-07"]

    [task] = api.get("/tasks?category=FAC&severity=critical").json()
    counts = table_counts(stack["database_url"])
    assert api.get("/tasks/no-such-task").status_code == 404
    who = people(api)
    unknown = who["张伟"].post("/tasks/no-such-task/start", {})
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["field"] == "task_id"
    for extra in ({"actor": "张伟"}, {"role": "responsible"}, {"extra": 1}):   # who acts is not the body's to say
        refused = who["张伟"].post(f"/tasks/{task['task_id']}/start", extra)
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == next(iter(extra)), refused.text
    photo_bad = who["张伟"].post(f"/tasks/{task['task_id']}/fix", {
        "note": "已修", "after_photos": [{"uri": "x.jpg", "sha256": "nothex"}]})
    assert photo_bad.status_code == 422 and photo_bad.json()["errors"][0]["field"].startswith("after_photos[0]")
    old_photo = who["张伟"].post(f"/tasks/{task['task_id']}/fix", {
        "note": "已修", "after_photos": [{**PHOTO_AFTER, "taken_at": "0001-01-01T00:00:00+00:00"}]})
    assert old_photo.status_code == 422
    assert old_photo.json()["errors"][0]["field"] == "after_photos[0].taken_at", old_photo.text
    not_started = who["张伟"].post(f"/tasks/{task['task_id']}/fix", {"note": "已修", "after_photos": [PHOTO_AFTER]})
    assert not_started.status_code == 409
    assert who["区爱卫办"].post(f"/tasks/{task['task_id']}/answer", {"note": "已协调"}).status_code == 409
    assert table_counts(stack["database_url"]) == counts

    # "Cannot solve locally": the subject escalates; the tier above answers with a new deadline.
    escalated = who["张伟"].post(f"/tasks/{task['task_id']}/escalate", {"reason": "化粪池产权不清，请街道协调"})
    assert escalated.status_code == 200 and escalated.json()["escalated_to"] == DISTRICT, escalated.text
    [event] = wait_events(tap, "task_escalated", task_id=task["task_id"])
    assert event["payload"]["reason"] == "化粪池产权不清，请街道协调"
    past = who["区爱卫办"].post(f"/tasks/{task['task_id']}/answer", {
        "note": "已协调", "new_deadline_at": (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()})
    assert past.status_code == 422 and past.json()["errors"][0]["field"] == "new_deadline_at"
    far = who["区爱卫办"].post(f"/tasks/{task['task_id']}/answer", {"note": "已协调",
                                                                  "new_deadline_at": "9999-12-31T00:00:00+08:00"})
    assert far.status_code == 422 and far.json()["errors"][0]["field"] == "new_deadline_at", far.text
    the_street = who["王芳"].post(f"/tasks/{task['task_id']}/answer", {"note": "已协调"})
    assert the_street.status_code == 403      # escalated to the district: the street cannot answer itself
    new_deadline = (datetime.now(timezone.utc) + timedelta(days=3)).replace(microsecond=0)
    answered = who["区爱卫办"].post(f"/tasks/{task['task_id']}/answer", {
        "note": "已协调环卫所清掏", "new_deadline_at": new_deadline.isoformat()})
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "in_progress" and parse_time(answered.json()["deadline_at"]) == new_deadline
    assert answered.json()["deadline_source"] == "coordinator" and answered.json()["light"] == "green"
    assert answered.json()["history"][-1]["actor"] == "区爱卫办"
    assert answered.json()["history"][-1]["role"] == "inspector"

    spec = api.get("/openapi.json").json()
    assert "/tasks/{task_id}/verify" in spec["paths"] and "/sweeps" in spec["paths"]
    assert api.get("/health").json()["checks"]["database:tasks"] == "ok"


def test_sweeper_timers_in_two_instances_urge_and_escalate_once(amqp_uri, database_url, event_tap):
    """A nameko timer fires in every instance: two sweeping instances still urge once and escalate once."""
    ports = [support.free_port() for _ in range(3)]
    common = dict(TASKS_SWEEP_INTERVAL=0.1, TASKS_URGE_REPEAT_HOURS=24, TASKS_ESCALATION_GRACE_HOURS=1)
    first = support.base_config(amqp_uri, database_url, WEB_ADDRESSES={
        "inspection": f"127.0.0.1:{ports[0]}", "tasks": f"127.0.0.1:{ports[1]}"}, **common)
    second = support.base_config(amqp_uri, database_url, WEB_ADDRESSES={"tasks": f"127.0.0.1:{ports[2]}"}, **common)
    tap = event_tap(("tasks.events", "#"))
    with ExitStack() as stack:
        stack.enter_context(support.running_services(first, InspectionService, TasksService))
        stack.enter_context(support.running_services(second, TasksService))
        inspection_api = support.ApiClient(f"http://127.0.0.1:{ports[0]}")
        subject, place = register(inspection_api)
        found_at = datetime.now(timezone.utc) - timedelta(minutes=10)
        inspect(inspection_api, subject, place, [{"item_code": "PT-03", "findings": 1},
                                                 {"item_code": "PT-04", "findings": 1}], found_at)
        wait_events(tap, "task_opened", 2)
        clock.set_offset(timedelta(hours=24 + 2))  # past the 24 h deadline and the 1 h grace
        wait_events(tap, "task_escalated", 2, timeout=30)
        # A sweep run now in each instance finds nothing left to do, and each sweep writes its
        # events in the transaction that changes the tasks: the outbox is the whole record.
        for port in ports[1:]:
            swept = support.ApiClient(f"http://127.0.0.1:{port}").post("/sweeps")
            assert swept.status_code == 201, swept.text
            assert (swept.json()["marked_overdue"], swept.json()["urged"], swept.json()["escalated"]) == (0, 0, 0)
        clock.reset()
        published = dict(support.scalar_rows(database_url, "SELECT event_type, count(*) FROM tasks_outbox "
                                                           "WHERE exchange = 'tasks.events' GROUP BY event_type"))
        assert (published["task_overdue"], published["task_escalated"]) == (2, 2)
        wait_events(tap, "task_escalated", 2)
        tap.drain()
    overdue = [e for e in tap.events if e["event_type"] == "task_overdue"]
    escalated = [e for e in tap.events if e["event_type"] == "task_escalated"]
    assert len(escalated) == 2 and len({e["payload"]["task"]["task_id"] for e in escalated}) == 2
    assert len(overdue) == 2 and all(e["payload"]["urge_count"] == 1 for e in overdue)
    assert {e["payload"]["task"]["task_id"] for e in overdue} == {e["payload"]["task"]["task_id"] for e in escalated}
