"""The tasks service's entrypoints with their dependencies replaced (worker_factory):
an in-memory SQLite database, a recording outbox, a fixed clock."""
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest.mock import MagicMock

import pytest
from nameko.testing.services import worker_factory
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from services.contracts.events import InvalidEvent
from services.contracts.nodes import Tier
from services.plumbing.consumer import DUPLICATE
from services.plumbing.auth import Grant, Principal
from services.plumbing.db import WorkerDatabase
from services.plumbing.providers import StackIdentity
from services.tasks.models import Base, Task
from services.tasks.schemas import CoordinationQuery, FixIn, StartIn, VerifyIn
from services.tasks.service import TasksService

SAMPLE = Path(__file__).resolve().parents[3] / "services" / "contracts" / "events" / "samples" \
    / "inspection_submitted.v1.json"
NOW = datetime(2026, 11, 20, 3, 0, tzinfo=timezone.utc)
PHOTO = {"uri": "photos/after.jpg", "sha256": "c" * 64}


def person(name, *grants):
    return Principal(subject=f"user-{name}", name=name, grants=tuple(Grant(r, n) for r, n in grants))


FIXER = person("张伟", ("rectifier", "411502008001"))
INSPECTOR = person("王芳", ("inspector", "411502008000"))
ADMIN = person("李明", ("administrator", "411502008000"))
DISTRICT_OFFICE = person("区爱卫办李明", ("inspector", "411502000000"))


class RecordingOutbox:
    def __init__(self):
        self.events = []   # on this stack's own exchange
        self.tiers = []    # (exchange, routing key, payload) for the tier exchanges
        self.records = []  # (payload, correlation id, exchange, routing key) of every add

    def add(self, session, payload, correlation_id=None, exchange=None, routing_key=None, **kw):
        self.records.append((payload, correlation_id, exchange, routing_key))
        if exchange:
            self.tiers.append((exchange, routing_key, payload))
        else:
            self.events.append(payload)

    def of(self, event_type):
        return [e for e in self.events if e.EVENT_TYPE == event_type]


class FixedClock:
    def __init__(self, now):
        self.at = now

    def now(self):
        return self.at


@pytest.fixture
def engine():
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def service(engine):
    return worker_factory(
        TasksService,
        db=WorkerDatabase(sessionmaker(bind=engine, expire_on_commit=False)),
        outbox=RecordingOutbox(),
        identity=StackIdentity(home="411502008000", tier=Tier.street, tree=None),
        clock=FixedClock(NOW),
        config={"TASKS_ESCALATION_GRACE_HOURS": 48},
    )


def sample_event():
    return json.loads(SAMPLE.read_text(encoding="utf-8"))


def task_count(engine):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Task.__table__)).scalar_one()


def test_inspection_submitted_opens_one_task_per_finding_once(service, engine):
    body = sample_event()
    findings = body["payload"]["findings"]
    ids = service.on_inspection_submitted(body)
    assert len(ids) == len(findings) == task_count(engine)
    opened = service.outbox.of("task_opened")
    assert sorted(e.task.item_code for e in opened) == sorted(f["item_code"] for f in findings)
    assert all(e.task.responsible.name == "周家山社区" and e.task.status == "open" for e in opened)
    [figures] = service.outbox.of("ledger_figures_updated")
    assert figures.opened == len(findings) and figures.period == "2026-11"

    before = len(service.outbox.events)
    assert service.on_inspection_submitted(body) == DUPLICATE
    assert task_count(engine) == len(findings) and len(service.outbox.events) == before


def test_a_poison_message_is_refused(service, engine):
    body = sample_event()
    body["payload"]["findings"][0]["severity"] = "catastrophic"
    with pytest.raises(InvalidEvent):
        service.on_inspection_submitted(body)
    assert task_count(engine) == 0


def test_lifecycle_entrypoints_and_the_sweeper(service):
    [tid, *_] = service.on_inspection_submitted(sample_event())
    request = MagicMock()
    service.start_task(request, tid, body=StartIn(), principal=FIXER)
    service.submit_fix(request, tid, body=FixIn(note="已整改", after_photos=[PHOTO]), principal=FIXER)
    closed = service.verify_task(request, tid, body=VerifyIn(), principal=INSPECTOR)
    assert closed.status == "closed" and closed.verified_by == "王芳"
    assert [(h.actor, h.actor_subject, h.role) for h in closed.history[1:]] == [
        ("张伟", "user-张伟", "rectifier"), ("张伟", "user-张伟", "rectifier"), ("王芳", "user-王芳", "inspector")]
    [event] = service.outbox.of("task_closed")
    assert event.task.task_id == tid and event.on_time is True

    service.clock.at = NOW + timedelta(days=30)   # every other task is long overdue
    swept = service.run_sweep(request, principal=ADMIN)
    others = len(sample_event()["payload"]["findings"]) - 1
    assert (swept.urged, swept.escalated) == (others, others)
    assert len(service.outbox.of("task_escalated")) == others
    assert service.run_sweep(request, principal=ADMIN).urged == 0


def stack(home, tier, child_stacks=(), parent=None):
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    Base.metadata.create_all(engine)
    return worker_factory(
        TasksService, db=WorkerDatabase(sessionmaker(bind=engine, expire_on_commit=False)),
        outbox=RecordingOutbox(), identity=StackIdentity(home=home, tier=tier, tree=None, child_stacks=child_stacks),
        clock=FixedClock(NOW), config={"TASKS_ESCALATION_GRACE_HOURS": 48, "TASKS_ANSWER_HOURS": 72,
                                       "NODE_CODE": home, "PARENT_STACK": parent or ""})


def relay(outbox, exchange, event_type):
    """What federation would carry: the envelopes a stack published on a tier exchange."""
    from services.contracts.events import Producer, make_event
    return [(key, make_event(payload, Producer(node="411502008000", service="tasks")).to_message())
            for ex, key, payload in outbox.tiers if ex == exchange and payload.EVENT_TYPE == event_type]


def test_an_escalation_goes_up_to_the_parent_stack_and_its_answer_comes_back_down():
    from services.tasks.schemas import AnswerIn
    street = stack("411502008000", Tier.street, parent="411502000000")
    district = stack("411502000000", Tier.district, child_stacks=("411502008000",))
    [tid, *_] = street.on_inspection_submitted(sample_event())
    street.clock.at = NOW + timedelta(days=30)
    street.sweep()                                         # overdue beyond the grace period: escalated
    [(key, escalated)] = [r for r in relay(street.outbox, "chuangwei.up", "task_escalated")
                          if r[1]["payload"]["task"]["task_id"] == tid]
    assert key == "task_escalated.41.4115.411502.411502008"

    assert district.on_child_task_escalated(escalated) == tid
    assert district.on_child_task_escalated(escalated) == DUPLICATE
    [request] = district.list_coordination(MagicMock(), query=CoordinationQuery(status="open"), principal=DISTRICT_OFFICE)
    assert request.from_node == "411502008000" and request.overdue is False
    new_deadline = NOW + timedelta(days=35)
    from services.contracts.errors import PermissionDenied
    with pytest.raises(PermissionDenied, match="411502000000"):   # the street cannot answer its own request
        district.answer_coordination(MagicMock(), tid, body=AnswerIn(note="x"), principal=ADMIN)
    answered = district.answer_coordination(MagicMock(), tid, body=AnswerIn(
        note="已协调环卫所清掏", new_deadline_at=new_deadline), principal=DISTRICT_OFFICE)
    assert answered.status == "answered" and answered.answered_by == "区爱卫办李明"
    [(down_key, answer)] = relay(district.outbox, "chuangwei.down", "coordination_answered")
    assert down_key == "coordination_answered.41.4115.411502.411502008"

    assert street.on_coordination_answered(answer) == tid
    task = street.get_task(MagicMock(), tid, principal=INSPECTOR)
    assert task.status == "in_progress" and task.deadline_at == new_deadline
    assert task.history[-1].actor == "区爱卫办李明" and "已协调环卫所清掏" in task.history[-1].reason
    assert street.on_coordination_answered(answer) == DUPLICATE


def staged(svc, event_type):
    """What the service staged in its outbox, as the relay would publish it."""
    from services.contracts.events import Producer, make_event
    producer = Producer(node=svc.identity.home, service="tasks")
    return [{"exchange": exchange or "tasks.events", "routing_key": key or payload.EVENT_TYPE,
             "body": make_event(payload, producer, correlation_id=correlation_id).to_message()}
            for payload, correlation_id, exchange, key in svc.outbox.records if payload.EVENT_TYPE == event_type]


def test_a_coordination_request_is_published_locally_once_per_opening():
    from services.contracts.events import Producer, make_event, parse_event
    from services.tasks.schemas import AnswerIn
    street = stack("411502008000", Tier.street, parent="411502000000")
    district = stack("411502000000", Tier.district, child_stacks=("411502008000",))
    [tid, *_] = street.on_inspection_submitted(sample_event())
    street.clock.at = NOW + timedelta(days=30)
    street.sweep()
    [(_, escalated)] = [r for r in relay(street.outbox, "chuangwei.up", "task_escalated")
                        if r[1]["payload"]["task"]["task_id"] == tid]

    assert district.on_child_task_escalated(escalated) == tid
    [row] = staged(district, "coordination_requested")
    assert (row["exchange"], row["routing_key"]) == ("tasks.events", "coordination_requested")
    envelope, requested = parse_event(row["body"], "coordination_requested")
    assert envelope.producer.node == "411502000000" and envelope.correlation_id == tid
    assert requested.task.task_id == tid and requested.from_node == "411502008000"
    assert requested.reason == escalated["payload"]["reason"]
    assert requested.answer_due_at.isoformat() == escalated["payload"]["answer_due_at"].replace("Z", "+00:00")
    assert requested.requested_at == datetime.fromisoformat(escalated["payload"]["at"].replace("Z", "+00:00"))

    # The same event redelivered, or another copy of the same escalation: nothing new is staged.
    assert district.on_child_task_escalated(escalated) == DUPLICATE
    _, payload = parse_event(escalated, "task_escalated")
    copy = make_event(payload, Producer(node="411502008000", service="tasks")).to_message()
    assert district.on_child_task_escalated(copy) == tid
    assert len(staged(district, "coordination_requested")) == 1
    [request] = district.list_coordination(MagicMock(), query=CoordinationQuery(status="open"), principal=DISTRICT_OFFICE)
    assert request.status == "open"

    # Answered, then the late copy does not reopen it; a later escalation does, and is published again.
    district.answer_coordination(MagicMock(), tid, body=AnswerIn(note="已协调环卫所清掏"), principal=DISTRICT_OFFICE)
    late = make_event(payload, Producer(node="411502008000", service="tasks")).to_message()
    district.on_child_task_escalated(late)
    assert district.list_coordination(MagicMock(), query=CoordinationQuery(status="open"), principal=DISTRICT_OFFICE) == []
    again = payload.model_copy(update={"at": payload.at + timedelta(days=5),
                                       "answer_due_at": payload.answer_due_at + timedelta(days=5)})
    assert district.on_child_task_escalated(make_event(again, Producer(node="411502008000", service="tasks"))
                                            .to_message()) == tid
    assert len(staged(district, "coordination_requested")) == 2
    [reopened] = district.list_coordination(MagicMock(), query=CoordinationQuery(status="open"), principal=DISTRICT_OFFICE)
    assert reopened.task_id == tid


# --- issue 25: escalation stops at the top tier that runs a stack, and never locks a task ---


def test_the_parent_stack_setting_names_a_tier_above_or_nothing():
    from services.tasks.operations import Settings
    assert Settings.from_config({"NODE_CODE": "411502008000", "PARENT_STACK": "411502"}).parent_stack == "411502000000"
    assert Settings.from_config({"NODE_CODE": "411502008000", "PARENT_STACK": "411500000000"}).parent_stack \
        == "411500000000"
    for empty in ({}, {"PARENT_STACK": ""}, {"PARENT_STACK": None}, {"PARENT_STACK": "  "}):
        assert Settings.from_config({"NODE_CODE": "411502008000", **empty}).parent_stack is None
    for wrong in ("411502008000", "411502008001", "411503000000"):      # itself, below it, another district
        with pytest.raises(RuntimeError, match="PARENT_STACK"):
            Settings.from_config({"NODE_CODE": "411502008000", "PARENT_STACK": wrong})


def test_without_a_parent_stack_the_sweeper_escalates_inside_the_office_which_answers():
    from services.tasks.schemas import AnswerIn
    street = stack("411502008000", Tier.street)               # no PARENT_STACK: the district runs no stack
    [tid, *_] = street.on_inspection_submitted(sample_event())
    street.clock.at = NOW + timedelta(days=30)
    street.sweep()
    task = street.get_task(MagicMock(), tid, principal=INSPECTOR)
    assert (task.status, task.escalated_to, task.coordination_pending) == ("escalated", "411502008000", True)
    assert [e.to_node for e in street.outbox.of("task_escalated") if e.task.task_id == tid] == ["411502008000"]
    assert [t for t in street.outbox.tiers if t[2].EVENT_TYPE == "task_escalated"] == []   # nothing goes up
    from services.contracts.errors import PermissionDenied
    with pytest.raises(PermissionDenied, match="411502008000"):   # the subject does not answer its own request
        street.answer_task(MagicMock(), tid, body=AnswerIn(note="x"), principal=FIXER)
    answered = street.answer_task(MagicMock(), tid, body=AnswerIn(note="已协调环卫所，限三日内清掏",
                                                                   new_deadline_at=NOW + timedelta(days=33)),
                                  principal=ADMIN)
    assert (answered.status, answered.coordination_pending) == ("in_progress", False)
    assert answered.history[-1].role == "administrator"
    street.submit_fix(MagicMock(), tid, body=FixIn(note="已清掏", after_photos=[PHOTO]), principal=FIXER)
    assert street.verify_task(MagicMock(), tid, body=VerifyIn(), principal=INSPECTOR).status == "closed"


def test_a_task_closed_before_the_parents_answer_takes_the_answer_without_harm():
    from services.tasks.schemas import AnswerIn
    street = stack("411502008000", Tier.street, parent="411502000000")
    district = stack("411502000000", Tier.district, child_stacks=("411502008000",))
    [tid, *_] = street.on_inspection_submitted(sample_event())
    street.clock.at = NOW + timedelta(days=30)
    street.sweep()
    [(_, escalated)] = [r for r in relay(street.outbox, "chuangwei.up", "task_escalated")
                        if r[1]["payload"]["task"]["task_id"] == tid]
    assert district.on_child_task_escalated(escalated) == tid
    # The subject works on while the district has not answered: started, fixed, verified, closed.
    street.start_task(MagicMock(), tid, body=StartIn(), principal=FIXER)
    assert street.get_task(MagicMock(), tid, principal=INSPECTOR).coordination_pending is True
    street.submit_fix(MagicMock(), tid, body=FixIn(note="已整改", after_photos=[PHOTO]), principal=FIXER)
    closed = street.verify_task(MagicMock(), tid, body=VerifyIn(), principal=INSPECTOR)
    assert (closed.status, closed.coordination_pending) == ("closed", False)
    # The district answers its (still open) request; the answer reaches a closed task and changes nothing.
    district.answer_coordination(MagicMock(), tid, body=AnswerIn(note="已协调"), principal=DISTRICT_OFFICE)
    [(_, answer)] = relay(district.outbox, "chuangwei.down", "coordination_answered")
    assert street.on_coordination_answered(answer) is None
    after = street.get_task(MagicMock(), tid, principal=INSPECTOR)
    assert after.status == "closed" and after.history[-1].action == "verify"


def test_the_sweeper_hands_an_escalation_stuck_on_a_tier_without_a_stack_to_the_own_office():
    from services.tasks.schemas import AnswerIn
    street = stack("411502008000", Tier.street, parent="411502000000")   # as if escalated before the upgrade
    [tid, *_] = street.on_inspection_submitted(sample_event())
    street.clock.at = NOW + timedelta(days=30)
    street.sweep()
    assert street.get_task(MagicMock(), tid, principal=INSPECTOR).escalated_to == "411502000000"
    street.config["PARENT_STACK"] = ""                        # this installation has no parent stack
    street.clock.at = NOW + timedelta(days=30, minutes=1)
    before = len(street.outbox.tiers)
    assert street.sweep()["retargeted"] >= 1
    task = street.get_task(MagicMock(), tid, principal=INSPECTOR)
    assert (task.status, task.escalated_to, task.coordination_pending) == ("escalated", "411502008000", True)
    assert task.history[-1].action == "retarget" and "本级督办" in task.history[-1].reason
    assert task.answer_due_at == street.clock.at + timedelta(hours=72)
    assert street.outbox.of("task_escalated")[-1].to_node == "411502008000"
    assert len(street.outbox.tiers) == before                 # nothing goes up a link
    assert street.sweep()["retargeted"] == 0                  # idempotent
    answered = street.answer_task(MagicMock(), tid, body=AnswerIn(note="本级协调"), principal=INSPECTOR)
    assert answered.status == "in_progress"


def test_record_coordination_request_stages_through_the_given_outbox(engine):
    from services.contracts.events.tasks import TaskEscalated
    from services.tasks import operations as ops
    body = json.loads((SAMPLE.parent / "task_escalated.v1.json").read_text(encoding="utf-8"))
    escalated = TaskEscalated.model_validate(body["payload"])
    outbox = RecordingOutbox()
    with sessionmaker(bind=engine)() as session:
        assert ops.record_coordination_request(session, escalated, "411502000000", NOW, outbox=outbox) is not None
        assert ops.record_coordination_request(session, escalated, "411502000000", NOW, outbox=outbox) is not None
        assert ops.record_coordination_request(session, escalated, "411502008000", NOW, outbox=outbox) is None
    [event] = outbox.of("coordination_requested")
    assert event.task == escalated.task and event.from_node == escalated.task.owner_node
    assert (event.reason, event.answer_due_at, event.requested_at) == (escalated.reason, escalated.answer_due_at,
                                                                       escalated.at)
    assert outbox.tiers == []  # a local event: this stack's own exchange


# --- satisfaction findings (群众满意率) from the indicators service ---

LOW_SAMPLE = SAMPLE.parent / "satisfaction_item_low.v1.json"


def low_event(**payload_changes):
    body = json.loads(LOW_SAMPLE.read_text(encoding="utf-8"))
    body["payload"].update(payload_changes)
    return body


def test_a_low_satisfaction_item_opens_one_task_for_the_area_once(service, engine):
    from services.contracts.events.indicators import SatisfactionItemLow
    from services.tasks import satisfaction
    service.config["TASKS_SATISFACTION_DEADLINE_DAYS"] = 14
    body = low_event()
    [tid] = service.on_satisfaction_item_low(body)
    assert tid == satisfaction.task_id(SatisfactionItemLow.model_validate(body["payload"]))
    [opened] = service.outbox.of("task_opened")
    assert (opened.task.task_id, opened.task.item_code, opened.task.item_text) == (
        tid, "Q1", "您对辖区公厕的卫生状况是否满意？")
    assert (opened.task.responsible.subject_id, opened.task.responsible.name, opened.task.inspecting_node,
            opened.task.owner_node) == ("411502008001", "周家山社区", "411502008000", "411502008000")
    assert opened.note == "群众满意度调查 2026-11：「您对辖区公厕的卫生状况是否满意？」满意率 56.00%（28/50），低于 60%"
    found = datetime(2026, 11, 23, 6, 30, tzinfo=timezone.utc)
    assert opened.task.deadline_at == found + timedelta(days=14) and opened.found_at == found
    [record] = [r for r in service.outbox.records if r[0] is opened]
    assert record[1] == "survey:0f3e2d1c-5b4a-4c3d-9e8f-7a6b5c4d3e2f"   # the survey's correlation id

    # Redelivered (the same event id): a duplicate. Published again under another id: its task is there.
    before = len(service.outbox.events)
    assert service.on_satisfaction_item_low(body) == DUPLICATE
    again = low_event()
    again["event_id"] = "5e5f6a7b-8c9d-4e0f-a1b2-c3d4e5f6a745"
    assert service.on_satisfaction_item_low(again) == []
    assert task_count(engine) == 1 and len(service.outbox.events) == before

    # The ledger's lifecycle applies unchanged: the area's rectifier fixes, the surveying office verifies.
    request = MagicMock()
    service.start_task(request, tid, body=StartIn(), principal=FIXER)
    service.submit_fix(request, tid, body=FixIn(note="公厕已安排专人保洁", after_photos=[PHOTO]), principal=FIXER)
    assert service.verify_task(request, tid, body=VerifyIn(), principal=INSPECTOR).status == "closed"


def test_another_offices_survey_opens_nothing_here(service, engine):
    assert service.on_satisfaction_item_low(low_event(surveying_node="411502001000")) == []
    assert task_count(engine) == 0 and service.outbox.of("task_opened") == []


def test_a_low_item_of_an_area_with_its_own_stack_is_handed_down_with_its_id():
    from services.contracts.tiers import DOWN_EXCHANGE
    street = stack("411502008000", Tier.street, child_stacks=("411502008001",))
    [tid] = street.on_satisfaction_item_low(low_event())
    [(exchange, key, delegated)] = [t for t in street.outbox.tiers if t[2].EVENT_TYPE == "task_delegated"]
    assert exchange == DOWN_EXCHANGE and delegated.task_id == tid and delegated.delegated_by == "411502008000"
    [finding] = delegated.inspection.findings
    assert finding.deadline_at == datetime(2026, 11, 23, 6, 30, tzinfo=timezone.utc) + timedelta(days=30)
    # The community's ledger takes it as its own, keeping the id.
    community = stack("411502008001", Tier.community)
    accepted = community.on_task_delegated(relay(street.outbox, DOWN_EXCHANGE, "task_delegated")[0][1])
    assert accepted == [tid]
