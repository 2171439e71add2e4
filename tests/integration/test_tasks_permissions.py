"""Who may do what in the ledger (issue 10) and what hostile text does to it (issue 9), over
HTTP against the running tasks service on the real broker and database.

The street office 金牛山街道 (411502008000) runs this stack and inspects the community
周家山社区 (411502008001), the tasks' responsible subject; 老城街道 (411502003000) is another
street. Findings arrive as `inspection_submitted` events, as the inspection service sends them.
"""
from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from kombu import Connection, Exchange, Producer as KombuProducer
from openpyxl import load_workbook

from services.contracts.events import Producer, make_event
from services.contracts.events.inspection import InspectionReleased, InspectionSubmitted
from services.contracts.events.tasks import TaskEscalated
from services.contracts.tiers import CHILDREN_EXCHANGE, DOWN_EXCHANGE, routing_key as tier_routing_key
from services.plumbing import clock
from services.tasks.service import TasksService
from tests import support

pytestmark = pytest.mark.integration

STREET = "411502008000"       # 金牛山街道: this stack
COMMUNITY = "411502008001"    # 周家山社区: the responsible subject
OTHER = "411502003000"        # 老城街道: another street
XIANGTANG = "411502008006"    # 飨堂社区: runs its own stack below this one
DISTRICT = "411502000000"
PHOTO = {"uri": "photos/after.jpg", "sha256": "b" * 64}


@pytest.fixture
def ledger(amqp_uri, database_url, rabbit_admin, vhost, event_tap):
    port = support.free_port()
    config = support.base_config(amqp_uri, database_url, node=STREET, CHILD_STACKS=[XIANGTANG],
                                 WEB_ADDRESSES={"tasks": f"127.0.0.1:{port}"}, TASKS_SWEEP_INTERVAL=0)
    events = event_tap(("tasks.events", "#"), (DOWN_EXCHANGE, "#"))
    with support.running_services(config, TasksService):
        for queue in ("evt-inspection-inspection_submitted--tasks.on_inspection_submitted",
                      "evt-inspection-inspection_released--tasks.on_inspection_released",
                      "evt-tier-task_escalated--tasks.on_child_task_escalated"):
            support.wait_until(lambda: rabbit_admin.queue(vhost, queue), message=f"queue {queue}")
        yield {"api": support.ApiClient(f"http://127.0.0.1:{port}"), "amqp_uri": amqp_uri, "events": events,
               "database_url": database_url}


def publish(amqp_uri: str, exchange: str, routing_key: str, message: dict) -> None:
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        ex = Exchange(exchange, type="topic", durable=True)
        ex(channel).declare()
        KombuProducer(channel).publish(message, exchange=ex, routing_key=routing_key, serializer="json",
                                       delivery_mode=2, message_id=message["event_id"])


def submitted(findings: int, *, kind: str = "routine", subject_node: str = COMMUNITY,
              subject_name: str = "周家山社区", note: str | None = "便池有积粪", item_text: str = "无积粪、尿碱",
              place_name: str = "周家山路公厕", found_at: datetime | None = None) -> InspectionSubmitted:
    subject_id = f"subject-{subject_node}"
    found_at = found_at or datetime.now(timezone.utc) - timedelta(hours=1)
    return InspectionSubmitted.model_validate({
        "inspection_id": str(uuid.uuid4()), "inspecting_node": STREET, "kind": kind,
        "subject": {"subject_id": subject_id, "node": subject_node, "name": subject_name,
                    "subject_type": "child_unit"},
        "place": {"place_id": str(uuid.uuid4()), "name": place_name, "place_type": "public_toilet",
                  "node": subject_node, "responsible_subject_id": subject_id},
        "checklist": {"catalogue_id": "chuangwei-default", "version": "2010.1", "code": "public-toilet"},
        "inspected_at": found_at.isoformat(), "submitted_at": datetime.now(timezone.utc).isoformat(),
        "inspectors": ["暗访员甲", "暗访员乙"], "score": 100 - findings, "scale": 100,
        "points_available": 100.0, "points_deducted": float(findings),
        "findings": [{"item_code": f"M-{i:03d}", "item_text": item_text, "category_code": "SAN",
                      "category_name": "环境卫生", "severity": "major", "findings": 1, "deduction": 1.0,
                      "max_points": 5.0, "note": note, "evidence": [], "deadline_hours": 72}
                     for i in range(findings)]})


def send_inspection(ledger, inspection: InspectionSubmitted) -> None:
    message = make_event(inspection, Producer(node=STREET, service="inspection"),
                         correlation_id=str(inspection.inspection_id)).to_message()
    publish(ledger["amqp_uri"], "inspection.events", "inspection_submitted", message)


def send_release(ledger, inspection: InspectionSubmitted) -> None:
    released = InspectionReleased(inspection_id=inspection.inspection_id, inspecting_node=STREET,
                                  subject=inspection.subject, released_at=datetime.now(timezone.utc))
    message = make_event(released, Producer(node=STREET, service="inspection"),
                         correlation_id=str(inspection.inspection_id)).to_message()
    publish(ledger["amqp_uri"], "inspection.events", "inspection_released", message)


def tasks_of(api, inspection: InspectionSubmitted, count: int) -> list[dict]:
    """The inspection's tasks, as the test's all-seeing office user lists them."""
    def found():
        rows = [t for t in api.get("/tasks", params={"limit": 10000}).json()
                if t["inspection_id"] == str(inspection.inspection_id)]
        return rows if len(rows) == count else None
    return sorted(support.wait_until(found, message=f"{count} tasks"), key=lambda t: t["item_code"])


def escalation_from_below(ledger, task_id: str) -> None:
    """A child stack (飨堂社区) escalates one of its tasks to this street (上报协调)."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    escalated = TaskEscalated.model_validate({
        "task": {"task_id": task_id, "inspection_id": str(uuid.uuid4()), "inspecting_node": XIANGTANG,
                 "owner_node": XIANGTANG, "responsible": {"subject_id": "s-xt", "node": XIANGTANG, "name": "飨堂社区"},
                 "item_code": "PT-02", "item_text": "无积粪", "category_code": "SAN", "category_name": "环境卫生",
                 "severity": "major", "deadline_at": (now + timedelta(days=2)).isoformat(), "status": "escalated"},
        "to_node": STREET, "reason": "需街道协调", "answer_due_at": (now + timedelta(days=3)).isoformat(),
        "at": now.isoformat()})
    message = make_event(escalated, Producer(node=XIANGTANG, service="tasks")).to_message()
    publish(ledger["amqp_uri"], CHILDREN_EXCHANGE, tier_routing_key("task_escalated", XIANGTANG), message)


# --- the matrix -----------------------------------------------------------------------------

ROLES = ("administrator", "inspector", "rectifier", "viewer")
PLACES = {"street": STREET, "community": COMMUNITY, "other": OTHER}
PRINCIPALS = [f"{role}@{place}" for place in PLACES for role in ROLES] + ["anonymous"]


def expect(allowed: dict[str, int], default: int) -> dict[str, int]:
    """Expected status per principal: `allowed` cells, 401 for anonymous, `default` otherwise."""
    return {p: 401 if p == "anonymous" else allowed.get(p, default) for p in PRINCIPALS}


SEES = {p: 200 for p in PRINCIPALS if not p.endswith("@other")}
SUBJECT_SIDE = {"rectifier@street": 200, "rectifier@community": 200, "rectifier@other": 404}
INSPECTING_SIDE = {"inspector@street": 200, "inspector@community": 403, "inspector@other": 404}
MATRIX = {
    # reads: every role, filtered to the caller's subtrees (another street sees an empty ledger)
    "list": expect({}, 200),
    "get": expect(SEES, 404),
    "export": expect({}, 200),
    # the subject side: the community's rectifier (a street's rectifier covers its communities)
    "start": expect(SUBJECT_SIDE, 403),
    "fix": expect(SUBJECT_SIDE, 403),
    "escalate": expect(SUBJECT_SIDE, 403),
    # the inspecting side: the street's inspectors; the community's own inspector is not it
    "verify": expect(INSPECTING_SIDE, 403),
    "reject": expect(INSPECTING_SIDE, 403),
    # answering a child stack's escalation: this office's inspector or administrator
    "answer": expect({"administrator@street": 200, "inspector@street": 200}, 403),
    # the sweep acts on the whole ledger: this office's administrator
    "sweep": expect({"administrator@street": 201}, 403),
}
# The state a task must be in for each action, and the role recorded for an allowed one.
PREPARE = {"start": [], "escalate": [], "fix": ["start"], "verify": ["start", "fix"],
           "reject": ["start", "fix"]}
RECORDED_ROLE = {"start": "rectifier", "fix": "rectifier", "escalate": "rectifier", "verify": "inspector",
                 "reject": "inspector"}
BODIES = {"start": {"note": "已安排"}, "fix": {"note": "已整改", "after_photos": [PHOTO]},
          "escalate": {"reason": "需街道协调"}, "verify": {"note": "复查合格"}, "reject": {"reason": "仍有积粪"},
          "answer": {"note": "已协调环卫所"}}


def clients(api) -> dict:
    out = {"anonymous": api.anonymous()}
    for key in PRINCIPALS[:-1]:
        role, place = key.split("@")
        out[key] = api.as_user(key, [(role, PLACES[place])])
    return out


def test_role_node_action_matrix(ledger):
    api = ledger["api"]
    callers = clients(api)
    fixer = api.as_user("张伟", [("rectifier", COMMUNITY)])
    writes = [a for a in MATRIX if a in PREPARE]
    inspection = submitted(len(writes) * len(PRINCIPALS) + 1)
    send_inspection(ledger, inspection)
    pool = iter(tasks_of(api, inspection, len(inspection.findings)))
    probe = next(pool)["task_id"]
    failures = []

    def check(action, who, response, expected):
        if response.status_code != expected:
            failures.append(f"{action} by {who}: expected {expected}, got {response.status_code} {response.text[:200]}")
            return False
        return True

    for who, client in callers.items():
        for action in ("list", "get", "export"):
            expected = MATRIX[action][who]
            if action == "list":
                response = client.get("/tasks", params={"limit": 10000})
                if check(action, who, response, expected) and expected == 200:
                    seen = probe in {t["task_id"] for t in response.json()}
                    if seen != (who in SEES):
                        failures.append(f"list by {who}: sees the community's task = {seen}")
            elif action == "get":
                check(action, who, client.get(f"/tasks/{probe}"), expected)
                check("history", who, client.get(f"/tasks/{probe}/history"), expected)
            else:
                response = client.get("/ledger/export.csv")
                if check(action, who, response, expected) and expected == 200:
                    seen = probe in response.content.decode("utf-8-sig")
                    if seen != (who in SEES):
                        failures.append(f"export by {who}: holds the community's task = {seen}")
                check("export.xlsx", who, client.get("/ledger/export.xlsx"), expected)
                check("figures", who, client.get("/figures"), expected)

        for action in writes:
            task_id = next(pool)["task_id"]
            for step in PREPARE[action]:
                assert fixer.post(f"/tasks/{task_id}/{step}", BODIES[step]).status_code == 200
            before = api.get(f"/tasks/{task_id}").json()
            expected = MATRIX[action][who]
            response = client.post(f"/tasks/{task_id}/{action}", BODIES[action])
            if not check(action, who, response, expected):
                continue
            after = api.get(f"/tasks/{task_id}").json()
            if expected == 200:
                last = after["history"][-1]
                if (last["actor"], last["actor_subject"], last["role"]) != (who, f"user-{who}",
                                                                           RECORDED_ROLE[action]):
                    failures.append(f"{action} by {who}: recorded {last}")
            elif (after["status"], len(after["history"])) != (before["status"], len(before["history"])):
                failures.append(f"{action} by {who}: refused, yet the task changed")

        request_id = str(uuid.uuid4())
        escalation_from_below(ledger, request_id)
        support.wait_until(lambda: any(r["task_id"] == request_id for r in api.get("/coordination").json()),
                           message="the child's escalation")
        response = client.post(f"/coordination/{request_id}/answer", BODIES["answer"])
        if check("answer", who, response, MATRIX["answer"][who]) and response.status_code == 200:
            if response.json()["answered_by"] != who:
                failures.append(f"answer by {who}: recorded {response.json()['answered_by']}")
        check("sweep", who, client.post("/sweeps"), MATRIX["sweep"][who])

    assert not failures, "\n".join(failures)
    # The street's own office reads the child's requests; a community's office does not.
    assert callers["viewer@community"].get("/coordination", params={"status": "all"}).json() == []
    assert len(callers["viewer@street"].get("/coordination", params={"status": "all"}).json()) == len(PRINCIPALS)


# Answering an escalation inside the office (issue 25): this stack has no PARENT_STACK, so a task
# escalated here waits on the street's own office, whose inspectors and administrators answer it;
# the route admits inspectors and administrators, the use case those of the street (or above it).
ANSWER_INSIDE = expect({"administrator@street": 200, "inspector@street": 200,
                        "administrator@other": 404, "inspector@other": 404}, 403)


def test_an_escalation_without_a_parent_stack_is_answered_by_this_offices_inspectors_and_administrators(ledger):
    api = ledger["api"]
    callers = clients(api)
    fixer = api.as_user("张伟", [("rectifier", COMMUNITY)])
    inspection = submitted(len(PRINCIPALS))
    send_inspection(ledger, inspection)
    failures = []
    for who, task in zip(PRINCIPALS, tasks_of(api, inspection, len(PRINCIPALS))):
        tid = task["task_id"]
        asked = fixer.post(f"/tasks/{tid}/escalate", {"reason": "需街道协调"})
        assert asked.status_code == 200 and asked.json()["escalated_to"] == STREET, asked.text
        response = callers[who].post(f"/tasks/{tid}/answer", {"note": "已协调环卫所"})
        after = api.get(f"/tasks/{tid}").json()
        if response.status_code != ANSWER_INSIDE[who]:
            failures.append(f"answer by {who}: expected {ANSWER_INSIDE[who]}, got {response.status_code} "
                            f"{response.text[:200]}")
        elif response.status_code == 200:
            last = after["history"][-1]
            if (last["action"], last["actor"], after["status"], after["coordination_pending"]) != (
                    "answer", who, "in_progress", False):
                failures.append(f"answer by {who}: recorded {last}, task {after['status']}")
        elif (after["status"], after["coordination_pending"]) != ("escalated", True):
            failures.append(f"answer by {who}: refused, yet the task changed")
    assert not failures, "\n".join(failures)
    [(up,)] = support.scalar_rows(ledger["database_url"],
                                  "SELECT count(*) FROM tasks_outbox WHERE exchange = 'chuangwei.up'")
    assert up == 0   # no parent stack: nothing was sent up a link


def test_the_recorded_actor_is_the_authenticated_one_and_the_fixer_cannot_verify(ledger):
    api = ledger["api"]
    inspection = submitted(1)
    send_inspection(ledger, inspection)
    [task] = tasks_of(api, inspection, 1)
    tid = task["task_id"]
    # One person with both hats: the community's contact and a street inspector.
    both = api.as_user("赵敏", [("rectifier", COMMUNITY), ("inspector", STREET)])
    inspector = api.as_user("王芳", [("inspector", STREET)])

    impostor = both.post(f"/tasks/{tid}/start", {"actor": "王芳", "note": "已安排"})
    assert impostor.status_code == 422 and impostor.json()["errors"][0]["field"] == "actor", impostor.text
    as_role = both.post(f"/tasks/{tid}/start", {"role": "inspector"})
    assert as_role.status_code == 422 and as_role.json()["errors"][0]["field"] == "role"
    assert len(api.get(f"/tasks/{tid}/history").json()) == 1          # nothing recorded
    assert both.post(f"/tasks/{tid}/start", {"note": "已安排"}).status_code == 200
    fixed = both.post(f"/tasks/{tid}/fix", {"note": "已清理", "after_photos": [PHOTO]})
    assert fixed.status_code == 200, fixed.text
    assert (fixed.json()["fixed_by"], fixed.json()["history"][-1]["actor_subject"]) == ("赵敏", "user-赵敏")

    for action, body in (("verify", {}), ("reject", {"reason": "不合格"})):
        own = both.post(f"/tasks/{tid}/{action}", body)
        assert own.status_code == 403 and own.json()["errors"][0]["field"] == "actor", own.text
    # A namesake with another account is someone else: accounts are compared, not names.
    namesake = api.as_user("赵敏", [("inspector", STREET)], subject="user-赵敏-2")
    assert api.get(f"/tasks/{tid}").json()["status"] == "fix_submitted"
    closed = inspector.post(f"/tasks/{tid}/verify", {"note": "复查合格"})
    assert closed.status_code == 200 and closed.json()["verified_by"] == "王芳", closed.text
    assert [(h["actor"], h["role"]) for h in closed.json()["history"][1:]] == [
        ("赵敏", "rectifier"), ("赵敏", "rectifier"), ("王芳", "inspector")]
    [event] = ledger["events"].wait_for("task_closed")
    assert event["payload"]["verified_by"] == "王芳"
    assert namesake.get(f"/tasks/{tid}").status_code == 200


def test_unannounced_tasks_stay_embargoed_until_release(ledger):
    api, events = ledger["api"], ledger["events"]
    community = api.as_user("张伟", [("rectifier", COMMUNITY)])
    community_office = api.as_user("周家山社区办", [("administrator", COMMUNITY)])
    inspector = api.as_user("王芳", [("inspector", STREET)])

    secret = submitted(2, kind="unannounced", note="暗访员扮作游客拍摄")
    handed_down = submitted(1, kind="unannounced", subject_node=XIANGTANG, subject_name="飨堂社区")
    send_inspection(ledger, secret)
    send_inspection(ledger, handed_down)
    held = tasks_of(inspector, secret, 2)
    [below] = tasks_of(inspector, handed_down, 1)
    assert all(t["embargoed"] and t["inspectors"] == ["暗访员甲", "暗访员乙"] for t in held)
    assert held[0]["note"] == "暗访员扮作游客拍摄" and below["delegated_to"] == XIANGTANG

    # The subject side sees nothing: not in lists, exports or figures, not by id, not to act on.
    for client in (community, community_office):
        assert client.get("/tasks").json() == []
        assert held[0]["task_id"] not in client.get("/ledger/export.csv").content.decode("utf-8-sig")
        assert client.get("/figures").json() == []
        assert client.get(f"/tasks/{held[0]['task_id']}").status_code == 404
        assert client.get(f"/tasks/{held[0]['task_id']}/history").status_code == 404
    assert community.post(f"/tasks/{held[0]['task_id']}/start", {}).status_code == 404
    # Nothing announced, nothing handed down, no urge notice even once overdue.
    clock.set_offset(timedelta(days=10))
    assert api.post("/sweeps").json()["urged"] == 0
    clock.reset()
    events.drain()
    assert not [e for e in events.events if e["event_type"] in ("task_opened", "task_delegated", "task_overdue")]

    send_release(ledger, secret)
    send_release(ledger, handed_down)
    opened = events.wait_for("task_opened", 3)
    assert sorted(e["payload"]["task"]["task_id"] for e in opened) == sorted(
        [t["task_id"] for t in held] + [below["task_id"]])
    assert all(e["payload"]["note"] is None for e in opened)          # the notice carries no private note
    [delegated] = events.wait_for("task_delegated")
    assert delegated["payload"]["task_id"] == below["task_id"]
    # The time limit runs from the release, here and in the child's ledger.
    moved = inspector.get(f"/tasks/{below['task_id']}").json()["deadline_at"]
    assert datetime.fromisoformat(moved) > datetime.fromisoformat(below["deadline_at"])
    [finding] = delegated["payload"]["inspection"]["findings"]
    assert datetime.fromisoformat(finding["deadline_at"].replace("Z", "+00:00")) == datetime.fromisoformat(moved)

    mine = support.wait_until(lambda: community.get("/tasks").json(), message="released tasks for the subject")
    assert sorted(t["task_id"] for t in mine) == sorted(t["task_id"] for t in held)
    for t in mine + [community.get(f"/tasks/{held[0]['task_id']}").json()]:
        assert not t["embargoed"] and t["released_at"] is not None
        assert t["inspectors"] == [] and t["note"] is None
    detail = community.get(f"/tasks/{held[0]['task_id']}").json()
    assert all("暗访员" not in (h["actor"] + (h["reason"] or "")) for h in detail["history"]), detail["history"]
    assert [h["action"] for h in detail["history"]] == ["open", "release"]
    exported = community.get("/ledger/export.csv").content.decode("utf-8-sig")
    assert "暗访员" not in exported and held[0]["task_id"] in exported
    # The inspecting side still sees who inspected and what they noted.
    assert inspector.get(f"/tasks/{held[0]['task_id']}").json()["inspectors"] == ["暗访员甲", "暗访员乙"]
    assert "暗访员扮作游客拍摄" in inspector.get("/ledger/export.csv").content.decode("utf-8-sig")

    # Fixed and verified: the subject is told the office closed it, not which inspector.
    tid = held[0]["task_id"]
    assert community.post(f"/tasks/{tid}/start", {}).status_code == 200
    assert community.post(f"/tasks/{tid}/fix", {"note": "已清理", "after_photos": [PHOTO]}).status_code == 200
    assert inspector.post(f"/tasks/{tid}/verify", {}).json()["verified_by"] == "王芳"
    assert community.get(f"/tasks/{tid}").json()["verified_by"] == "检查组"
    [closed] = events.wait_for("task_closed")
    assert closed["payload"]["verified_by"] == "检查组"


def test_a_release_that_overtakes_the_submission_opens_the_tasks_announced(ledger):
    api, events = ledger["api"], ledger["events"]
    community = api.as_user("张伟", [("rectifier", COMMUNITY)])
    early = submitted(1, kind="unannounced")
    send_release(ledger, early)
    support.wait_until(lambda: support.scalar(ledger["database_url"],
                                              "select count(*) from tasks_inspection_releases") == 1,
                       message="the release remembered")
    send_inspection(ledger, early)
    [opened] = events.wait_for("task_opened")
    assert opened["payload"]["note"] is None
    [task] = support.wait_until(lambda: community.get("/tasks").json(), message="the task for the subject")
    assert not task["embargoed"] and task["inspectors"] == []
    send_release(ledger, early)   # a second release (another copy) changes nothing
    support.wait_until(lambda: support.scalar(
        ledger["database_url"], "select count(*) from tasks_processed_events "
                                "where consumer = 'tasks.on_inspection_released'") == 2, message="second release")
    [again] = [e for e in events.drain() if e["event_type"] == "task_opened"]
    assert again == opened


# --- hostile text (issue 9) ------------------------------------------------------------------

HOSTILE = {
    "subject": "=cmd|' /C calc'!A0",
    "place": "+SUM(1,2)",
    "item": "@SUM(A1)",
    "note": "-2+3\u0001控制符",      # a control character from an older stack's event
}


def test_exports_neutralise_formulas_and_survive_stored_control_characters(ledger):
    api = ledger["api"]
    inspection = submitted(1, subject_name=HOSTILE["subject"], place_name=HOSTILE["place"],
                           item_text=HOSTILE["item"], note=HOSTILE["note"])
    send_inspection(ledger, inspection)
    [task] = tasks_of(api, inspection, 1)
    # An identity platform's overlong display name is cut to the column, not a 500.
    fixer = api.as_user("张" * 300, [("rectifier", COMMUNITY)])
    assert fixer.post(f"/tasks/{task['task_id']}/start", {}).status_code == 200
    fix = fixer.post(f"/tasks/{task['task_id']}/fix", {"note": "=HYPERLINK(\"http://x\")", "after_photos": [PHOTO]})
    assert fix.status_code == 200, fix.text
    readable = {**HOSTILE, "note": "-2+3\ufffd控制符", "fix": "=HYPERLINK(\"http://x\")"}

    xlsx = api.get("/ledger/export.xlsx")
    assert xlsx.status_code == 200, xlsx.text
    book = load_workbook(io.BytesIO(xlsx.content))
    sheet = book["整改台账"]
    header = [c.value for c in sheet[1]]
    row = {name: cell for name, cell in zip(header, sheet[2])}
    for column, text in (("责任主体", "subject"), ("检查对象", "subject"), ("点位", "place"), ("问题描述", "item"),
                         ("检查记录", "note"), ("整改措施", "fix")):
        cell = row[column]
        assert cell.data_type == "s" and cell.value == readable[text], (column, cell.value, cell.data_type)
    assert row["检查记录"].quotePrefix and row["问题描述"].quotePrefix
    assert row["整改人"].value == "张" * 100
    summary = list(book["汇总"].iter_rows(values_only=True))
    assert summary[1][0] == HOSTILE["subject"]
    assert book["汇总"]["A2"].data_type == "s"

    exported = api.get("/ledger/export.csv")
    assert exported.status_code == 200
    rows = list(csv.reader(io.StringIO(exported.content.decode("utf-8-sig"))))
    line = dict(zip(rows[0], rows[1]))
    for column, text in (("责任主体", "subject"), ("点位", "place"), ("问题描述", "item"), ("检查记录", "note"),
                         ("整改措施", "fix")):
        assert line[column] == "'" + readable[text], (column, line[column])
    assert line["任务编号"] == task["task_id"]      # ordinary text is left alone


BAD_QUERIES = [
    ("/tasks?period=9999-12", "query.period"), ("/tasks?period=0001-01", "query.period"),
    ("/figures?period=9999-12", "query.period"), ("/figures?period=2100", "query.period"),
    ("/ledger/export.csv?period=0001-01", "query.period"), ("/ledger/export.xlsx?period=9999-W01", "query.period"),
    (f"/tasks?offset={2 ** 63}", "query.offset"), ("/ledger/export.csv?offset=1000001", "query.offset"),
    ("/tasks?limit=0", "query.limit"), ("/tasks?relapse=maybe", "query.relapse"),
    ("/coordination?status=closed", "query.status"),
]


def test_bad_queries_are_refused_naming_the_field(ledger):
    for path, field in BAD_QUERIES:
        response = ledger["api"].get(path)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["errors"][0]["field"] == field, (path, response.text)
