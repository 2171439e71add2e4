"""A consumer through nameko's worker_factory: the real handler on a scratch SQLite database."""
from datetime import datetime, timezone

import pytest
from nameko.testing.services import worker_factory
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from services.contracts.events import InvalidEvent, Producer, make_event
from services.contracts.events.tasks import CoordinationRequested, Responsible, TaskOverdue, TaskRef
from services.contracts.nodes import Tier
from services.notify.models import Contact, Delivery, Notification, TaskRow
from services.notify.service import MIGRATIONS, NotifyService
from services.plumbing.consumer import DUPLICATE
from services.plumbing.db import WorkerDatabase, make_engine, run_migrations
from services.plumbing.providers import StackIdentity

STREET = "411502008000"
COMMUNITY = "411502008001"


@pytest.fixture
def service(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/notify.db")
    run_migrations(engine, MIGRATIONS, "alembic_version_notify")
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    with factory.begin() as session:
        now = datetime.now(timezone.utc)
        session.add(Contact(id="c1", owner_kind="subject", owner_id="subj-1", node=COMMUNITY, name="张主任",
                            inbox_user="zhang", email="zjs@example.cn", webhook_url=None, webhook_format="wecom",
                            active=True, created_at=now, updated_at=now))
    svc = worker_factory(NotifyService, db=WorkerDatabase(factory),
                         identity=StackIdentity(home=STREET, tier=Tier.street, tree=None), config={})
    yield svc, factory
    engine.dispose()


def overdue_event(urge_count=1):
    task = TaskRef(task_id="task-1", inspection_id="insp-1", inspecting_node=STREET, owner_node=STREET,
                   responsible=Responsible(subject_id="subj-1", node=COMMUNITY, name="周家山社区"),
                   item_code="PT-02", item_text="便池干净", category_code="PT", category_name="公厕",
                   severity="minor", deadline_at=datetime(2026, 11, 10, tzinfo=timezone.utc), status="open")
    return make_event(TaskOverdue(task=task, overdue_since=datetime(2026, 11, 10, tzinfo=timezone.utc),
                                  urge_count=urge_count), Producer(node=STREET, service="tasks"))


def counts(factory):
    with factory() as session:
        return {table.__tablename__: session.execute(select(func.count()).select_from(table)).scalar_one()
                for table in (Notification, Delivery, TaskRow)}


def test_on_task_overdue_notifies_once_and_recognises_the_duplicate(service):
    svc, factory = service
    event = overdue_event().to_message()
    assert svc.on_task_overdue(event) == "processed"
    assert counts(factory) == {"notify_notifications": 2, "notify_deliveries": 1, "notify_tasks": 1}
    with factory() as session:
        inbox = session.execute(select(Notification).where(Notification.channel == "inbox")).scalar_one()
        assert inbox.inbox_user == "zhang" and inbox.notice_type == "urge" and inbox.title.startswith("督办单")
        assert session.get(TaskRow, "task-1").urge_count == 1
    assert svc.on_task_overdue(event) == DUPLICATE
    assert counts(factory) == {"notify_notifications": 2, "notify_deliveries": 1, "notify_tasks": 1}
    # The next urge (a new event) is a new notice.
    assert svc.on_task_overdue(overdue_event(urge_count=2).to_message()) == "processed"
    assert counts(factory)["notify_notifications"] == 4


def test_a_malformed_event_is_poison(service):
    svc, factory = service
    with pytest.raises(InvalidEvent):
        svc.on_task_overdue({"event_type": "task_overdue", "payload": {}})
    with pytest.raises(InvalidEvent):
        svc.on_task_overdue(overdue_event().to_message() | {"event_type": "task_opened"})
    assert counts(factory) == {"notify_notifications": 0, "notify_deliveries": 0, "notify_tasks": 0}


def coordination_event():
    task = TaskRef(task_id="task-9", inspection_id="insp-9", inspecting_node=COMMUNITY, owner_node=COMMUNITY,
                   responsible=Responsible(subject_id="subj-9", node=COMMUNITY, name="周家山小区物业"),
                   item_code="PT-05", item_text="化粪池无渗漏", category_code="PT", category_name="公厕",
                   severity="critical", deadline_at=datetime(2026, 11, 18, tzinfo=timezone.utc), status="escalated")
    return make_event(CoordinationRequested(task=task, from_node=COMMUNITY, reason="化粪池产权不清，社区无法协调",
                                            answer_due_at=datetime(2026, 11, 25, 10, tzinfo=timezone.utc),
                                            requested_at=datetime(2026, 11, 22, 10, tzinfo=timezone.utc)),
                      Producer(node=STREET, service="tasks"), correlation_id="task-9")


def test_a_coordination_request_tells_this_office_once(service):
    svc, factory = service
    with factory.begin() as session:
        now = datetime.now(timezone.utc)
        session.add(Contact(id="office", owner_kind="node", owner_id=STREET, node=STREET, name="金牛山街道创卫办",
                            inbox_user="jns.cwb", email="cwb@jns.example.cn", webhook_url="http://127.0.0.1:9/bot",
                            webhook_format="wecom", active=True, created_at=now, updated_at=now))
    event = coordination_event().to_message()
    assert svc.on_coordination_requested(event) == "processed"
    # This office by inbox, e-mail and webhook; the child's task stays out of this tier's projection.
    assert counts(factory) == {"notify_notifications": 3, "notify_deliveries": 2, "notify_tasks": 0}
    with factory() as session:
        inbox = session.execute(select(Notification).where(Notification.channel == "inbox")).scalar_one()
        assert (inbox.inbox_user, inbox.notice_type, inbox.rule_id) == (
            "jns.cwb", "coordination", "coordination-request")
        assert inbox.title == "协调请求：411502008001 周家山小区物业 化粪池无渗漏"
        for text in ("411502008001", "化粪池产权不清，社区无法协调", "2026年11月25日 18:00", "化粪池无渗漏"):
            assert text in inbox.body_markdown
    # Redelivered: recognised, nothing new.
    assert svc.on_coordination_requested(event) == DUPLICATE
    assert counts(factory) == {"notify_notifications": 3, "notify_deliveries": 2, "notify_tasks": 0}


def test_the_bulletin_downloads_as_a_pdf(service):
    from services.notify import operations as ops
    svc, factory = service
    with factory.begin() as session:
        bulletin = ops.generate_bulletin(session, svc._ctx(), "2026-11", send=False,
                                         now=datetime(2026, 12, 1, tzinfo=timezone.utc))
    from services.contracts.errors import PermissionDenied
    from services.plumbing.auth import Grant, Principal
    viewer = Principal("u-1", "王芳", (Grant("viewer", STREET),))
    response = svc.bulletin_pdf(None, bulletin.id, principal=viewer)
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith(f'attachment; filename="bulletin-{STREET}-2026-11-r1.pdf"')
    assert "filename*=UTF-8''" in disposition
    assert response.get_data().startswith(b"%PDF")
    # A community's viewer is not on the street's bulletin.
    with pytest.raises(PermissionDenied):
        svc.bulletin_pdf(None, bulletin.id, principal=Principal("u-2", "赵", (Grant("viewer", COMMUNITY),)))


def test_a_stored_rule_set_that_no_longer_parses_does_not_stop_notices(service):
    """A version stored before the condition types were checked: the version before it applies."""
    from services.notify.models import RuleSet
    svc, factory = service
    inbox_only = {"rules": [{"id": "u", "event": "task_overdue", "notice": "urge", "to": ["responsible"],
                             "channels": ["inbox"]}]}
    broken = {"rules": [{**inbox_only["rules"][0], "when": {"urge_count_at_least": "many"}}]}
    with factory.begin() as session:
        now = datetime.now(timezone.utc)
        session.add_all([RuleSet(node=STREET, version=1, document=inbox_only, author="a", created_at=now),
                         RuleSet(node=STREET, version=2, document=broken, author="b", created_at=now)])
    assert svc.on_task_overdue(overdue_event().to_message()) == "processed"
    assert counts(factory) == {"notify_notifications": 1, "notify_deliveries": 0, "notify_tasks": 1}
