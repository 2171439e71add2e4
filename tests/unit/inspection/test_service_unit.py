"""The inspection service's entrypoints with their dependencies replaced (worker_factory)."""
from datetime import datetime, timezone
from unittest.mock import MagicMock

import pytest
from pydantic import ValidationError
from nameko.testing.services import worker_factory
from sqlalchemy import create_engine

from services.contracts.checklists import default_catalogue
from services.contracts.nodes import Tier
from services.inspection.models import Base
from services.inspection.schemas import InspectionIn, SubjectCreate
from services.inspection.service import InspectionService
from services.contracts.identity import ROLES, Grant, Principal
from services.plumbing.db import WorkerDatabase
from services.plumbing.providers import StackIdentity
from sqlalchemy.orm import sessionmaker


class RecordingOutbox:
    def __init__(self):
        self.events = []

    def add(self, session, payload, correlation_id=None, **kw):
        self.events.append(payload)


# Every role on the street office: what the default caller of these tests may do.
OFFICE = Principal(subject="u-1", name="王芳", grants=tuple(Grant(r, "411502008000") for r in ROLES))


@pytest.fixture
def service():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    svc = worker_factory(
        InspectionService,
        db=WorkerDatabase(sessionmaker(bind=engine, expire_on_commit=False)),
        outbox=RecordingOutbox(),
        identity=StackIdentity(home="411502008000", tier=Tier.street, tree=None),
        catalogue=default_catalogue(),
        config={"SCORE_SCALE": 100},
    )
    yield svc
    engine.dispose()


def test_register_and_submit_publishes_one_event(service):
    request = MagicMock(headers={})
    subject = service.register_subject(request, body=SubjectCreate(
        subject_type="child_unit", node="411502008006", name="飨堂社区"), principal=OFFICE)
    status, inspection = service.record_inspection(request, principal=OFFICE, body=InspectionIn(
        kind="announced", subject_id=subject.subject_id,
        checklist={"version": "2010.1", "code": "national-ten-areas"}, inspectors=["张伟"],
        inspected_at=datetime(2026, 11, 2, 2, 0, tzinfo=timezone.utc),
        results=[{"item_code": "EDU-01", "findings": 1}]))
    assert status == 201 and inspection.status == "submitted"
    [event] = service.outbox.events
    assert event.EVENT_TYPE == "inspection_submitted"
    assert event.subject.name == "飨堂社区" and event.inspecting_node == "411502008000"
    assert event.score == inspection.score < 100


def test_rpc_submission_validates_like_http(service):
    with pytest.raises(ValidationError) as info:
        service.submit_inspection({"kind": "routine"})
    missing = {e["loc"][0] for e in info.value.errors() if e["type"] == "missing"}
    assert missing == {"subject_id", "checklist", "inspectors", "inspected_at"}
    assert service.outbox.events == []


def test_times_keep_their_instant_in_sqlite(service):
    """SQLite keeps wall-clock digits only: 09:30 Beijing time must come back as 01:30 UTC."""
    from datetime import timedelta
    request = MagicMock(headers={})
    subject = service.register_subject(request, body=SubjectCreate(
        subject_type="child_unit", node="411502008008", name="十里河社区"), principal=OFFICE)
    beijing = timezone(timedelta(hours=8))
    _, recorded = service.record_inspection(request, principal=OFFICE, body=InspectionIn(
        kind="routine", subject_id=subject.subject_id, submit=False,
        checklist={"version": "2010.1", "code": "national-ten-areas"}, inspectors=["张伟"],
        inspected_at=datetime(2026, 11, 20, 9, 30, tzinfo=beijing), results=[]))
    stored = service.get_inspection(request, recorded.inspection_id, principal=OFFICE)
    assert stored.inspected_at == datetime(2026, 11, 20, 1, 30, tzinfo=timezone.utc)
    assert stored.inspected_at.utcoffset() == timedelta(0)


def _unannounced(service, principal=OFFICE, **overrides):
    request = MagicMock(headers={})
    subject = service.register_subject(request, body=SubjectCreate(
        subject_type="child_unit", node="411502008001", name="周家山社区"), principal=OFFICE)
    body = dict(kind="unannounced", subject_id=subject.subject_id,
                checklist={"version": "2010.1", "code": "national-ten-areas"}, inspectors=["暗访组 李强"],
                inspected_at=datetime(2026, 11, 2, 2, 0, tzinfo=timezone.utc), note="夜间暗访，未告知社区",
                results=[{"item_code": "EDU-01", "findings": 1}])
    body.update(overrides)
    return service.record_inspection(request, principal=principal, body=InspectionIn(**body))[1]


def test_the_recorded_actor_is_the_signed_in_caller(service):
    inspection = _unannounced(service)
    assert inspection.recorded_by == inspection.submitted_by == "王芳 (u-1)"
    assert inspection.inspecting_node == "411502008000"
    released = service.release_inspection(MagicMock(headers={}), inspection.inspection_id, principal=OFFICE)
    assert released.released_by == "王芳 (u-1)" and released.released_at is not None


def test_release_publishes_once_and_redacts_for_the_subject_side(service):
    from services.contracts.errors import UnknownReference
    inspection = _unannounced(service)
    community = Principal(subject="u-2", name="赵敏", grants=(Grant("rectifier", "411502008001"),))
    with pytest.raises(UnknownReference):
        service.get_inspection(MagicMock(headers={}), inspection.inspection_id, principal=community)
    for _ in range(2):
        service.release_inspection(MagicMock(headers={}), inspection.inspection_id, principal=OFFICE)
    released = [e for e in service.outbox.events if e.EVENT_TYPE == "inspection_released"]
    assert len(released) == 1 and str(released[0].inspection_id) == inspection.inspection_id
    assert released[0].subject.node == "411502008001" and released[0].inspecting_node == "411502008000"
    seen = service.get_inspection(MagicMock(headers={}), inspection.inspection_id, principal=community)
    assert seen.inspectors == [] and seen.note is None and seen.recorded_by is None
    assert set(seen.redacted) >= {"inspectors", "note"} and seen.results[0].item_code == "EDU-01"
    office = service.get_inspection(MagicMock(headers={}), inspection.inspection_id, principal=OFFICE)
    assert office.inspectors == ["暗访组 李强"] and office.note == "夜间暗访，未告知社区" and office.redacted == []


def test_an_overlong_idempotency_key_header_is_refused(service):
    from services.contracts.errors import RuleViolation
    subject = service.register_subject(MagicMock(headers={}), body=SubjectCreate(
        subject_type="child_unit", node="411502008006", name="飨堂社区"), principal=OFFICE)
    body = InspectionIn(kind="routine", subject_id=subject.subject_id,
                        checklist={"version": "2010.1", "code": "national-ten-areas"}, inspectors=["张伟"],
                        inspected_at=datetime(2026, 11, 2, 2, 0, tzinfo=timezone.utc), results=[])
    with pytest.raises(RuleViolation) as info:
        service.record_inspection(MagicMock(headers={"Idempotency-Key": "k" * 129}), body=body, principal=OFFICE)
    assert info.value.field == "Idempotency-Key"
    assert service.outbox.events == []


def test_rpc_acts_as_the_stacks_own_office(service):
    inspection = _unannounced(service)
    # Through the broker only: it reads what the office reads, names included.
    assert service.get_inspection_rpc(inspection.inspection_id)["inspectors"] == ["暗访组 李强"]
