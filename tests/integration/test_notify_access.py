"""Who may do what in the notify service, over HTTP against the running service: a role × node ×
action matrix (administrator, inspector, rectifier, viewer on the street 金牛山街道 that runs
this stack, on its community 周家山社区, on another street 五星街道; and anonymous), the
recorded actor, and 暗访 notices held until release and told without inspectors or notes."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from services.contracts.events import Producer, make_event
from services.contracts.events.inspection import (ChecklistRef, Finding, InspectionReleased, InspectionSubmitted,
                                                  SubjectRef)
from services.contracts.events.tasks import TaskOverdue
from services.notify.service import NotifyService
from services.plumbing.auth import ROLES
from tests import support
from tests.integration.test_notify_service import TASKS, inbox_items, publish, task_ref

pytestmark = pytest.mark.integration

STREET = "411502008000"      # 金牛山街道: this stack's home
COMMUNITY = "411502008001"   # 周家山社区, inside it
OTHER = "411502003000"       # 五星街道: another street
NODES = (STREET, COMMUNITY, OTHER)
DEAD_BOT = "http://127.0.0.1:9/dead"  # nothing listens: every delivery fails at once


@pytest.fixture
def stack(amqp_uri, database_url, vhost, rabbit_admin):
    port = support.free_port()
    config = support.base_config(
        amqp_uri, database_url, WEB_ADDRESSES={"notify": f"127.0.0.1:{port}"}, NOTIFY_POLL_INTERVAL=0.1,
        NOTIFY_MAX_ATTEMPTS=1, NOTIFY_BULLETIN_SCHEDULE="false", NOTIFY_WEBHOOK_HOSTS=["127.0.0.1"],
        NOTIFY_WEBHOOK_ALLOW_HTTP=True, NOTIFY_WEBHOOK_ALLOW_PRIVATE=True)
    with support.running_services(config, NotifyService):
        for queue in ("evt-tasks-task_overdue--notify.on_task_overdue",
                      "evt-inspection-inspection_released--notify.on_inspection_released"):
            support.wait_until(lambda: rabbit_admin.queue(vhost, queue), message=f"queue {queue}")
        yield {"api": support.ApiClient(f"http://127.0.0.1:{port}"), "amqp_uri": amqp_uri}


def caller(api, role, node, subject=None):
    return api.as_user(f"{role}@{node}", [(role, node)], subject=subject or f"{role}-{node}")


# Who is allowed, by (role, node); everyone else signed in gets 403, anonymous 401.
def admin_here_or_below(role, node):
    return role == "administrator" and node in (STREET, COMMUNITY)


def admin_of_this_office(role, node):
    return role == "administrator" and node == STREET


def admin_anywhere(role, node):
    return role == "administrator"


def sees_community(role, node):
    return node in (STREET, COMMUNITY)


def sees_street(role, node):
    return node == STREET


def anyone(role, node):
    return True


def nobody(role, node):
    return False


def test_the_role_node_action_matrix(stack):
    api = stack["api"]
    subject_contact = {"owner_kind": "subject", "owner_id": "subj-zjs", "node": COMMUNITY, "name": "周家山社区 张主任",
                       "inbox_user": "zhang", "webhook_url": DEAD_BOT}
    contact = api.post("/contacts", subject_contact)
    assert contact.status_code == 201, contact.text
    contact_id = contact.json()["contact_id"]
    publish(stack["amqp_uri"], "tasks", make_event(TaskOverdue(
        task=task_ref("task-m", "subj-zjs", "周家山社区"), overdue_since=datetime.now(timezone.utc), urge_count=1),
        TASKS))
    [dead] = support.wait_until(lambda: api.get("/dead-letters").json(), message="a dead letter")
    [notice] = support.wait_until(lambda: inbox_items(api, "zhang"), message="张主任's notice")
    bulletin = api.post("/bulletins", {"period": "2026-10", "notify": False})
    assert bulletin.status_code == 201, bulletin.text
    bulletin_id = bulletin.json()["bulletin_id"]
    rules = api.get(f"/rules/{COMMUNITY}").json()["document"]
    simple = {"source": '{% set title = "督办：" ~ task.item_text %}请整改：{{ task.item_text }}\n'}

    def store_template():
        assert api.put(f"/templates/{COMMUNITY}/urge.md", simple).status_code == 200

    # action: (request, who is allowed, the statuses that mean allowed, setup before each cell)
    actions = {
        "contacts.create": (lambda c: c.post("/contacts", {**subject_contact, "owner_id": f"s-{uuid.uuid4().hex[:8]}"}),
                            admin_here_or_below, {201}, None),
        "contacts.replace": (lambda c: c.put(f"/contacts/{contact_id}", subject_contact), admin_here_or_below,
                             {200}, None),
        "contacts.list": (lambda c: c.get("/contacts", params={"node": COMMUNITY}), admin_here_or_below, {200},
                          None),
        "rules.read": (lambda c: c.get(f"/rules/{COMMUNITY}"), sees_community, {200}, None),
        "rules.versions": (lambda c: c.get(f"/rules/{COMMUNITY}/versions"), sees_community, {200}, None),
        "rules.replace": (lambda c: c.put(f"/rules/{COMMUNITY}", {"document": rules}), admin_here_or_below, {200},
                          None),
        "templates.read": (lambda c: c.get(f"/templates/{COMMUNITY}/urge.md"), sees_community, {200}, None),
        "templates.replace": (lambda c: c.put(f"/templates/{COMMUNITY}/urge.md", simple), admin_here_or_below,
                              {200}, None),
        "templates.delete": (lambda c: c.request("DELETE", f"/templates/{COMMUNITY}/urge.md"), admin_here_or_below,
                             {204}, store_template),
        "inbox.list": (lambda c: c.get("/inbox"), anyone, {200}, None),
        "inbox.read someone else's": (lambda c: c.post(f"/inbox/{notice['notification_id']}/read"), nobody, set(),
                                      None),
        "inbox.ack someone else's": (lambda c: c.post(f"/inbox/{notice['notification_id']}/ack"), nobody, set(),
                                     None),
        "notifications.list": (lambda c: c.get("/notifications", params={"node": COMMUNITY}), sees_community,
                               {200}, None),
        "newsletters.send": (lambda c: c.post("/newsletters", {"title": "简报", "content": "正文"}),
                             admin_of_this_office, {201}, None),
        "bulletins.create": (lambda c: c.post("/bulletins", {"period": "2026-10", "notify": False}),
                             admin_of_this_office, {201}, None),
        "bulletins.read": (lambda c: c.get(f"/bulletins/{bulletin_id}"), sees_street, {200}, None),
        "bulletins.html": (lambda c: c.get(f"/bulletins/{bulletin_id}/html"), sees_street, {200}, None),
        "dead_letters.list": (lambda c: c.get("/dead-letters"), admin_anywhere, {200}, None),
        # The first allowed replay succeeds; later ones find it replayed (409): both passed the check.
        "dead_letters.replay": (lambda c: c.post(f"/dead-letters/{dead['dead_letter_id']}/replay"),
                                admin_here_or_below, {200, 409}, None),
    }
    failures = []
    for action, (call, allowed, ok_statuses, setup) in actions.items():
        for role in ROLES:
            for node in NODES:
                if setup:
                    setup()
                response = call(caller(api, role, node))
                expected = ok_statuses if allowed(role, node) else {403}
                if response.status_code not in expected:
                    failures.append(f"{action} by {role}@{node}: {response.status_code} (expected "
                                    f"{sorted(expected)}) {response.text[:200]}")
        if setup:
            setup()
        anonymous = call(api.anonymous())
        if anonymous.status_code != 401:
            failures.append(f"{action} anonymous: {anonymous.status_code}")
    # One's own inbox: whatever the role or node, the notice's addressee reads and acknowledges it.
    for role in ROLES:
        for node in NODES:
            owner = caller(api, role, node, subject="zhang")
            for verb in ("read", "ack"):
                response = owner.post(f"/inbox/{notice['notification_id']}/{verb}")
                if response.status_code != 200:
                    failures.append(f"inbox.{verb} own by {role}@{node}: {response.status_code} {response.text[:200]}")
    assert failures == []

    # Lists hold only what the caller may see.
    assert [n["notification_id"] for n in inbox_items(api, "zhang")] == [notice["notification_id"]]
    assert caller(api, "viewer", STREET).get("/inbox").json() == []
    assert caller(api, "administrator", OTHER).get("/dead-letters").json() == []
    assert caller(api, "administrator", OTHER).get("/contacts").json() == []
    assert caller(api, "viewer", OTHER).get("/notifications").json() == []
    assert caller(api, "viewer", OTHER).get("/bulletins").json() == []
    assert caller(api, "viewer", COMMUNITY).get("/notifications").json() != []
    assert caller(api, "administrator", OTHER).get("/notifications", params={"node": COMMUNITY}).status_code == 403
    # The recorded actor is the signed-in one.
    versions = api.get(f"/rules/{COMMUNITY}/versions").json()
    assert {v["author"] for v in versions} == {f"administrator@{STREET} (administrator-{STREET})",
                                               f"administrator@{COMMUNITY} (administrator-{COMMUNITY})"}
    acknowledged = caller(api, "viewer", STREET, subject="zhang").get("/inbox").json()[0]
    assert acknowledged["acknowledged_by"] == f"administrator@{STREET} (zhang)"  # the first to acknowledge


def inspection(inspection_id: str, kind: str) -> InspectionSubmitted:
    now = datetime.now(timezone.utc)
    return InspectionSubmitted(
        inspection_id=inspection_id, inspecting_node=STREET, kind=kind,
        subject=SubjectRef(subject_id="subj-zjs", node=COMMUNITY, name="周家山社区", subject_type="child_unit"),
        checklist=ChecklistRef(catalogue_id="default", version="2010.1", code="public-toilet"),
        inspected_at=now, submitted_at=now, inspectors=["暗访员王芳", "暗访员李强"], score=90, scale=100,
        points_available=100, points_deducted=10,
        findings=[Finding(item_code="PT-02", item_text="便池干净", category_code="PT", category_name="公厕",
                          severity="minor", findings=2, deduction=10, max_points=20, deadline_hours=24,
                          note="内部记录：所长亲属经营")])


def released(inspection_id: str) -> InspectionReleased:
    return InspectionReleased(
        inspection_id=inspection_id, inspecting_node=STREET,
        subject=SubjectRef(subject_id="subj-zjs", node=COMMUNITY, name="周家山社区", subject_type="child_unit"),
        released_at=datetime.now(timezone.utc))


def test_unannounced_inspections_are_told_only_after_release_and_never_with_inspectors_or_notes(stack):
    api, amqp = stack["api"], stack["amqp_uri"]
    inspection_events = Producer(node=STREET, service="inspection")
    assert api.post("/contacts", {"owner_kind": "subject", "owner_id": "subj-zjs", "node": COMMUNITY,
                                  "name": "周家山社区 张主任", "inbox_user": "zhang"}).status_code == 201
    # A node template that would print the inspectors and the notes, to show they are gone.
    template = ('{% set title = (event.kind | inspection_kind) ~ "结果：" ~ event.subject.name %}'
                '检查人：{{ event.inspectors | join("、") }}\n'
                '{% for f in event.findings %}备注：{{ f.get("note") or "" }}\n{% endfor %}')
    assert api.put(f"/templates/{STREET}/inspection.md", {"source": template}).status_code == 200

    def titles():
        return sorted(n["title"] for n in inbox_items(api, "zhang"))

    first, second, routine = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    submitted_before = support.events_consumed(api, "notify", "inspection_submitted")
    released_before = support.events_consumed(api, "notify", "inspection_released")
    publish(amqp, "inspection", make_event(inspection(first, "unannounced"), inspection_events))
    publish(amqp, "inspection", make_event(released(second), inspection_events))  # released before it arrives
    publish(amqp, "inspection", make_event(inspection(routine, "routine"), inspection_events))
    support.wait_until(lambda: titles() == ["日常检查结果：周家山社区"], message="the routine inspection's notice")
    publish(amqp, "inspection", make_event(inspection(second, "unannounced"), inspection_events))
    support.wait_until(lambda: len(titles()) == 2, message="the inspection released beforehand")
    # All three inspections and the early release are handled, each in its transaction: the first is held, not late.
    support.wait_consumed(api, "notify", "inspection_submitted", submitted_before + 3)
    support.wait_consumed(api, "notify", "inspection_released", released_before + 1)
    assert titles() == ["日常检查结果：周家山社区", "暗访结果：周家山社区"]  # the first is still held
    publish(amqp, "inspection", make_event(released(first), inspection_events))
    support.wait_until(lambda: len(titles()) == 3, message="the first, once released")

    notices = inbox_items(api, "zhang")
    routine_notice = [n for n in notices if n["title"].startswith("日常")][0]
    assert "暗访员王芳" in routine_notice["body_markdown"]  # the template does print them …
    for n in notices:
        if n["title"].startswith("暗访"):  # … but an unannounced inspection never has them
            assert "暗访员" not in n["body_markdown"] and "内部记录" not in n["body_markdown"]
            assert "暗访员" not in (n.get("body_html") or "")
    listed = api.get("/notifications", params={"notice_type": "inspection"}).json()
    assert len(listed) == 3
    assert not any("暗访员" in n["body_markdown"] for n in listed if n["title"].startswith("暗访"))
