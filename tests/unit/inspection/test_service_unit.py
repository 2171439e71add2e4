"""The inspection service's entrypoints with their dependencies replaced (worker_factory)."""
from datetime import datetime, timezone
from unittest.mock import MagicMock

import pytest
from nameko.testing.services import worker_factory
from sqlalchemy import create_engine

from services.contracts.checklists import default_catalogue
from services.contracts.nodes import Tier
from services.inspection.models import Base
from services.inspection.schemas import InspectionIn, SubjectCreate
from services.inspection.service import InspectionService
from services.plumbing.db import WorkerDatabase
from services.plumbing.providers import StackIdentity
from sqlalchemy.orm import sessionmaker


class RecordingOutbox:
    def __init__(self):
        self.events = []

    def add(self, session, payload, correlation_id=None, **kw):
        self.events.append(payload)


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
        subject_type="child_unit", node="411502008006", name="飨堂社区"))
    status, inspection = service.record_inspection(request, body=InspectionIn(
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
    with pytest.raises(Exception) as info:
        service.submit_inspection({"kind": "routine"})
    assert "subject_id" in str(info.value)
    assert service.outbox.events == []


def test_times_keep_their_instant_in_sqlite(service):
    """SQLite keeps wall-clock digits only: 09:30 Beijing time must come back as 01:30 UTC."""
    from datetime import timedelta
    request = MagicMock(headers={})
    subject = service.register_subject(request, body=SubjectCreate(
        subject_type="child_unit", node="411502008008", name="十里河社区"))
    beijing = timezone(timedelta(hours=8))
    _, recorded = service.record_inspection(request, body=InspectionIn(
        kind="routine", subject_id=subject.subject_id, submit=False,
        checklist={"version": "2010.1", "code": "national-ten-areas"}, inspectors=["张伟"],
        inspected_at=datetime(2026, 11, 20, 9, 30, tzinfo=beijing), results=[]))
    stored = service.get_inspection(request, recorded.inspection_id)
    assert stored.inspected_at == datetime(2026, 11, 20, 1, 30, tzinfo=timezone.utc)
    assert stored.inspected_at.utcoffset() == timedelta(0)
