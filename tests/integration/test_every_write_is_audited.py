"""Every write route of the street stack, exercised with a valid request: answered 2xx, on
record in the audit log with the token's subject and the request id, and as documented.

The eight services of the `stack` fixture (conftest.py) run in this process against the
real broker and database. `EXAMPLES` is one ordered scenario of valid writes (a subject, its
place and inspection, the inspection's tasks lived through, the notices they raise, ...),
each sent with its own `X-Request-Id` by a caller whose token names who acts. The tests:

- every example is answered with its 2xx status;
- every write route the services serve has an example, or a reason in `NOT_AUDITED`
  (a route added later without either fails here, by name);
- the audit entries of each request carry exactly that request id and the token's subject
  (`anonymous` for a public route called without a token) and no secret that was sent;
- each response matches the schema the service's /openapi.json declares for the route and
  status, and each body sent matches the documented request schema;
- formula-leading text is stored as data and neutralised in notify's review archive (the
  ledger's CSV and .xlsx exports: test_tasks_permissions.py).
"""
from __future__ import annotations

import base64
import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest
import requests
from openpyxl import Workbook

from services.contracts.identity import ALL_ROLES
from services.contracts.periods import CST, Period, PeriodKind
from services.inspection.imports import COLUMNS, INSPECTIONS, LEDGER, PLACES, SUBJECTS
from services.notify.archive import FORMULA_LEADS
from services.plumbing.http import ROUTES, UNSAFE_METHODS
from tests import support
from tests.integration.conftest import STACK_SERVICES
from tests.integration.test_api_contract import _document
from tests.integration.test_tasks_permissions import escalation_from_below
from tests.unit.photos.test_photo_domain import XINYANG, jpeg

pytestmark = pytest.mark.integration

PROVINCE = support.TEST_PROVINCE
DISTRICT = "411502000000"   # 浉河区: the tier above the stack
STREET = "411502008000"     # 金牛山街道: the stack's home node
SEEDED = "411502008001"     # 周家山社区: seeded by the fixture (scoring and intake know it)
HUASEN = "411502008002"     # 华森社区: the subject this scenario registers and inspects
HEXIAOYING = "411502008003"  # 和孝营社区: imported as history
JINNIU = "411502008004"     # 金牛社区: the formula-text subject
JINDING = "411502008005"    # 金鼎社区: its own notice rules and template
NOW = datetime.now(CST)
MONTH = Period.containing(PeriodKind.month, NOW).key
HALF_YEAR = Period.containing(PeriodKind.half_year, NOW).key
PHOTO = {"uri": "photos/after.jpg", "sha256": "b" * 64}
PASSWORDS = ("金牛山街道2026检查员", "华森社区公厕整改复查", "浉河区创卫办2026复核")

# Who acts: (name, token subject, grants). The audit must name the token's subject.
CALLERS = {
    "admin": ("创卫办 张伟", "w-admin", [(role, PROVINCE) for role in ALL_ROLES]),
    "second admin": ("复核 李强", "w-second", [("administrator", STREET)]),
    "inspector": ("检查员 王芳", "w-inspector", [("inspector", STREET)]),
    "rectifier": ("社区 赵敏", "w-rectifier", [("rectifier", HUASEN)]),
    "district": ("区爱卫办", "w-district", [("inspector", DISTRICT)]),
    "platform": ("数字城管平台", "w-platform", [("platform", DISTRICT)]),
    "inbox": ("华森社区 刘主任", "w.inbox", [("viewer", HUASEN)]),
    "account": ("张伟", "w.zhangwei", [("viewer", STREET)]),   # the user accounts creates below
}
AUDITOR = ("审计员", "w-auditor", [("administrator", PROVINCE)])   # reads /audit; tokens are minted when used

# Write routes whose requests leave no audit entry, and why. Each is still exercised below.
NOT_AUDITED = {
    ("photos", "POST", "/photos"):
        "photos keeps no database (content-addressed files on disk), so it has no audit log: "
        "its /audit is refused (422: \"keeps no database\"); the photo counts once a write that cites it "
        "(an inspection, a fix) is recorded, and that write is audited",
}
# Request fields holding secrets: the audit entry must not hold their values.
SECRET_FIELDS = ("password", "current_password", "new_password", "refresh_token", "token")


@dataclass
class Example:
    """One valid request. `path` is filled from `ids` (what earlier examples answered), a
    callable `body` is given them; `before` prepares what is not a write under test (waits
    for an event's effect); `keep` remembers ids from the answer."""
    route: tuple[str, str, str]          # (service, method, url) as in services.plumbing.http.ROUTES
    caller: str | None                   # a key of CALLERS; None: anonymous
    status: int
    path: str | None = None              # default: the route's url (routes without path values)
    body: Any = None                     # JSON body, or a callable(ids) -> body
    raw: bytes | None = None             # a non-JSON body (photos)
    keep: Callable[[dict, Any], None] | None = None
    before: Callable[[dict, dict], None] | None = None

    @property
    def name(self) -> str:
        service, method, url = self.route
        return f"{service} {method} {url}"


def remember(**fields: str) -> Callable[[dict, Any], None]:
    """keep=remember(subject="subject_id"): ids["subject"] = answer["subject_id"]."""
    def keep(ids: dict, answer: Any) -> None:
        for key, field in fields.items():
            ids[key] = answer[field]
    return keep


# --- what some examples wait for (effects of events, not writes under test) ---

def _tasks_of_the_inspection(stack: dict, ids: dict) -> None:
    tasks = support.ApiClient(stack["tasks"], token=_token("admin"))
    found = support.wait_until(lambda: sorted(
        (t for t in tasks.get("/tasks", params={"limit": 1000}).json() if t["inspection_id"] == ids["inspection"]),
        key=lambda t: t["item_code"]) or None, timeout=30, message="the inspection's three tasks")
    assert len(found) == 3, found
    ids["task_verified"], ids["task_rejected"], ids["task_escalated"] = (t["task_id"] for t in found)


def _inbox_notice(stack: dict, ids: dict) -> None:
    inbox = support.ApiClient(stack["notify"], token=_token("inbox"))
    [first, *_] = support.wait_until(lambda: inbox.get("/inbox").json(), timeout=30, message="a notice in the inbox")
    ids["notification"] = first["notification_id"]


def _dead_letter(stack: dict, ids: dict) -> None:
    """The contact's e-mail cannot be delivered (no SMTP server listens in the test stack).
    Its retries back off 30 s, 60 s, ...: the backoff is fast-forwarded in the database
    until the fifth try has failed and the delivery is dead-lettered."""
    from sqlalchemy import create_engine, text
    engine = create_engine(stack["config"]["DATABASE_URL"])
    notify = support.ApiClient(stack["notify"], token=_token("admin"))

    def dead():
        with engine.begin() as conn:
            conn.execute(text("UPDATE notify_deliveries SET next_attempt_at = now() - interval '1 second' "
                              "WHERE status = 'pending' AND channel = 'email'"))
        return notify.get("/dead-letters").json()
    try:
        [letter, *_] = support.wait_until(dead, timeout=60, interval=0.5, message="a dead-lettered e-mail")
    finally:
        engine.dispose()
    ids["dead_letter"] = letter["dead_letter_id"]


def _child_escalation(stack: dict, ids: dict) -> None:
    """飨堂社区, a child stack, escalates one of its tasks to this street (上报协调)."""
    ids["coordination"] = "w-child-task-1"
    escalation_from_below({"amqp_uri": stack["config"]["AMQP_URI"]}, ids["coordination"])
    tasks = support.ApiClient(stack["tasks"], token=_token("admin"))
    support.wait_until(lambda: any(r["task_id"] == ids["coordination"] for r in tasks.get("/coordination").json()),
                       message="the child's escalation")


def _current_policy(stack: dict, ids: dict) -> None:
    ids["policy"] = support.ApiClient(stack["scoring"], token=_token("admin")).get(f"/policies/{STREET}").json()


def _inspection(kind: str, results: list[dict], **extra) -> Callable[[dict], dict]:
    return lambda ids: {"kind": kind, "subject_id": ids["subject"], "place_id": ids["place"],
                        "checklist": {"version": "2010.1", "code": "public-toilet"}, "inspectors": ["王芳", "李强"],
                        "inspected_at": (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(),
                        "results": results, **extra}


def _history_workbook() -> str:
    """One inspection of 和孝营社区 last month with a finding closed out, as an office's Excel."""
    book = Workbook()
    book.remove(book.active)
    sheets = {name: book.create_sheet(name) for name in (SUBJECTS, PLACES, INSPECTIONS, LEDGER)}
    for name, sheet in sheets.items():
        sheet.append([c.header for c in COLUMNS[name]])
    at = (NOW.replace(day=1) - timedelta(days=20)).replace(hour=9, minute=30)
    sheets[SUBJECTS].append(["下级单位", HEXIAOYING, "和孝营社区"])
    sheets[PLACES].append(["公厕", "和孝营公厕", HEXIAOYING, "和孝营路1号", "和孝营社区"])
    sheets[INSPECTIONS].append(["W-HIST-1", "日常检查", "和孝营社区", HEXIAOYING, "和孝营公厕", "2010.1",
                                "public-toilet", "王芳", at.strftime("%Y-%m-%d %H:%M"), None])
    sheets[LEDGER].append(["W-HIST-1", "PT-03", 1, None, "有异味", None, "已通风", "张伟",
                           (at + timedelta(hours=3)).strftime("%Y-%m-%d %H:%M"), "王芳",
                           (at + timedelta(hours=4)).strftime("%Y-%m-%d %H:%M")])
    buffer = io.BytesIO()
    book.save(buffer)
    return base64.b64encode(buffer.getvalue()).decode()


QUESTIONNAIRE = {"code": "w-residents", "title": "华森社区群众满意度调查", "items": [
    {"code": "Q1", "text": "您对公厕卫生是否满意？", "place_type": "public_toilet",
     "scale": [{"value": "5", "label": "满意"}, {"value": "1", "label": "不满意"}], "satisfied": ["5"]}]}
CONTACT = {"owner_kind": "subject", "node": HUASEN, "name": "华森社区 刘主任", "inbox_user": "w.inbox",
           "email": "hs@community.example.cn"}


EXAMPLES = [
    # inspection: the subject and place the rest of the scenario works on
    Example(("inspection", "POST", "/subjects"), "admin", 201,
            body={"subject_type": "child_unit", "node": HUASEN, "name": "华森社区"}, keep=remember(subject="subject_id")),
    Example(("inspection", "POST", "/places"), "admin", 201,
            body=lambda ids: {"place_type": "public_toilet", "name": "华森路公厕", "node": HUASEN,
                              "address": "华森路8号", "responsible_subject_id": ids["subject"]},
            keep=remember(place="place_id")),
    Example(("inspection", "POST", "/schedules"), "admin", 201,
            body=lambda ids: {"node": STREET, "name": "华森社区每周检查", "frequency": "weekly",
                              "subject_id": ids["subject"], "inspectors": ["王芳"]}),
    Example(("inspection", "POST", "/schedules/sweep"), "admin", 200),
    # notify: the subject's contact, before its first notice
    Example(("notify", "POST", "/contacts"), "admin", 201, body=lambda ids: {**CONTACT, "owner_id": ids["subject"]},
            keep=remember(contact="contact_id")),
    Example(("notify", "PUT", "/contacts/<contact_id>"), "admin", 200, path="/contacts/{contact}",
            body=lambda ids: {**CONTACT, "owner_id": ids["subject"], "name": "华森社区 刘主任（创卫专干）"}),
    Example(("notify", "PUT", "/rules/<node>"), "admin", 200, path=f"/rules/{JINDING}",
            body={"document": {"rules": []}}),
    Example(("notify", "PUT", "/templates/<node>/<name>"), "admin", 200, path=f"/templates/{JINDING}/urge.md",
            body={"source": "限期整改：{{ task.item_text }}\n"}),
    Example(("notify", "DELETE", "/templates/<node>/<name>"), "admin", 204, path=f"/templates/{JINDING}/urge.md"),
    # inspection: a submitted inspection with three findings (three tasks), a draft, a 暗访, a batch, history
    Example(("inspection", "POST", "/inspections"), "inspector", 201,
            body=_inspection("routine", [{"item_code": "PT-02", "findings": 1, "note": "便池有积粪"},
                                         {"item_code": "PT-03", "findings": 1}, {"item_code": "PT-04", "findings": 1}]),
            keep=remember(inspection="inspection_id")),
    Example(("inspection", "POST", "/inspections"), "inspector", 201,
            body=_inspection("routine", [{"item_code": "PT-01", "findings": 0}], submit=False),
            keep=remember(draft="inspection_id")),
    Example(("inspection", "PUT", "/inspections/<inspection_id>"), "inspector", 200, path="/inspections/{draft}",
            body=_inspection("routine", [{"item_code": "PT-01", "findings": 0}], note="草稿已补充", submit=False)),
    Example(("inspection", "POST", "/inspections/<inspection_id>/submit"), "inspector", 200,
            path="/inspections/{draft}/submit"),
    Example(("inspection", "POST", "/inspections"), "inspector", 201,
            body=_inspection("unannounced", [{"item_code": "PT-01", "findings": 0}]),
            keep=remember(covert="inspection_id")),
    Example(("inspection", "POST", "/inspections/<inspection_id>/release"), "inspector", 200,
            path="/inspections/{covert}/release"),
    Example(("inspection", "POST", "/inspection-batches"), "inspector", 201,
            body=lambda ids: {"inspections": [_inspection("routine", [{"item_code": "PT-01", "findings": 0}],
                                                          idempotency_key="w-phone-1")(ids)]}),
    Example(("inspection", "POST", "/imports"), "admin", 200,
            body={"filename": "和孝营社区检查台账.xlsx", "content_base64": _history_workbook()}),
    # photos: the after-photo of a fix
    Example(("photos", "POST", "/photos"), "rectifier", 201,
            raw=jpeg(taken="2026:11:20 09:31:12", gps=XINYANG)),
    # tasks: the three tasks lived through, a child's escalation answered, a sweep
    Example(("tasks", "POST", "/tasks/<task_id>/start"), "rectifier", 200, path="/tasks/{task_verified}/start",
            body={"note": "已安排保洁员"}, before=_tasks_of_the_inspection),
    Example(("tasks", "POST", "/tasks/<task_id>/fix"), "rectifier", 200, path="/tasks/{task_verified}/fix",
            body={"note": "已冲洗消毒", "after_photos": [PHOTO]}),
    Example(("tasks", "POST", "/tasks/<task_id>/verify"), "inspector", 200, path="/tasks/{task_verified}/verify",
            body={"note": "现场复查合格"}),
    Example(("tasks", "POST", "/tasks/<task_id>/start"), "rectifier", 200, path="/tasks/{task_rejected}/start",
            body={}),
    Example(("tasks", "POST", "/tasks/<task_id>/fix"), "rectifier", 200, path="/tasks/{task_rejected}/fix",
            body={"note": "已通风", "after_photos": [PHOTO]}),
    Example(("tasks", "POST", "/tasks/<task_id>/reject"), "inspector", 200, path="/tasks/{task_rejected}/reject",
            body={"reason": "仍有异味，退回重改"}),
    Example(("tasks", "POST", "/tasks/<task_id>/escalate"), "rectifier", 200, path="/tasks/{task_escalated}/escalate",
            body={"reason": "化粪池产权不清，请区里协调"}),
    Example(("tasks", "POST", "/tasks/<task_id>/answer"), "district", 200, path="/tasks/{task_escalated}/answer",
            body=lambda ids: {"note": "已协调环卫所清掏", "new_deadline_at": (
                datetime.now(timezone.utc) + timedelta(days=3)).replace(microsecond=0).isoformat()}),
    Example(("tasks", "POST", "/coordination/<task_id>/answer"), "inspector", 200,
            path="/coordination/{coordination}/answer",
            body={"note": "已协调环卫所"}, before=_child_escalation),
    Example(("tasks", "POST", "/sweeps"), "admin", 201),
    # notify: the inbox notice of the tasks, a dead-lettered e-mail replayed, a bulletin, a newsletter
    Example(("notify", "POST", "/inbox/<notification_id>/read"), "inbox", 200, path="/inbox/{notification}/read",
            before=_inbox_notice),
    Example(("notify", "POST", "/inbox/<notification_id>/ack"), "inbox", 200, path="/inbox/{notification}/ack"),
    Example(("notify", "POST", "/dead-letters/<dead_letter_id>/replay"), "admin", 200,
            path="/dead-letters/{dead_letter}/replay", before=_dead_letter),
    Example(("notify", "POST", "/bulletins"), "admin", 201,  # a month that has ended (issue 27)
            body={"period": Period.containing(PeriodKind.month, NOW).previous().key, "notify": False}),
    Example(("notify", "POST", "/newsletters"), "admin", 201,
            body={"issue": 7, "title": "华森社区公厕整改情况", "content": "本周完成整改三处。"}),
    # scoring: a veto revoked with a second administrator's approval, a policy change rejected
    Example(("scoring", "POST", "/vetoes"), "admin", 201,
            body={"subject_id": SEEDED, "period": MONTH, "reason": "criticism", "note": "区爱卫办通报批评"},
            keep=remember(veto="veto_id")),
    Example(("scoring", "POST", "/vetoes/<veto_id>/revoke"), "admin", 202, path="/vetoes/{veto}/revoke",
            body={"reason": "经复核，申诉成立"}, keep=remember(revocation="approval_id")),
    Example(("scoring", "POST", "/approvals/<approval_id>/approve"), "second admin", 200,
            path="/approvals/{revocation}/approve", body={"note": "已核对申诉材料"}),
    Example(("scoring", "PUT", "/policies/<node>"), "admin", 202, path=f"/policies/{STREET}",
            body=lambda ids: {**ids["policy"]["document"], "note": "优秀线调整为90分"}, before=_current_policy,
            keep=remember(policy_change="approval_id")),
    Example(("scoring", "POST", "/approvals/<approval_id>/reject"), "second admin", 200,
            path="/approvals/{policy_change}/reject", body={"note": "暂缓调整"}),
    Example(("scoring", "POST", "/appraisals"), "admin", 201,
            body={"subject_id": SEEDED, "period": HALF_YEAR, "score": 92, "note": "街道创卫领导小组民主测评"}),
    Example(("scoring", "POST", "/recompute"), "admin", 200, body={"period": MONTH}),
    # indicators: control levels, a density form, a survey wave answered by an interviewer and a resident
    Example(("indicators", "PUT", "/vector/control-levels/<node>"), "admin", 200,
            path=f"/vector/control-levels/{STREET}",
            body={"levels": [{"method": "cockroach_rooms", "level": 4}]}),
    Example(("indicators", "POST", "/vector/forms"), "inspector", 201,
            body={"idempotency_key": "w-form-1", "area": HUASEN, "period": MONTH, "source": "浉河区疾病预防控制中心",
                  "readings": [{"species": "rat", "method": "powder", "value": 1, "sampled_on": f"{MONTH}-05"}]}),
    Example(("indicators", "POST", "/questionnaires"), "admin", 201, body=QUESTIONNAIRE),
    Example(("indicators", "POST", "/surveys"), "inspector", 201,
            body={"questionnaire": {"code": "w-residents", "version": 1}, "period": MONTH,
                  "areas": [{"node": HUASEN, "frame_size": 20, "sample_size": 2}]},
            keep=lambda ids, survey: ids.update(survey=survey["survey_id"], respondents=survey["respondents"])),
    Example(("indicators", "POST", "/surveys/<survey_id>/responses"), "inspector", 201,
            path="/surveys/{survey}/responses",
            body=lambda ids: {"respondent_id": ids["respondents"][0]["respondent_id"],
                              "answers": [{"item_code": "Q1", "value": "5"}]}),
    Example(("indicators", "POST", "/public/survey-answers"), None, 201,
            body=lambda ids: {"response_code": ids["respondents"][1]["response_code"],
                              "answers": [{"item_code": "Q1", "value": "1"}]}),
    Example(("indicators", "POST", "/surveys/<survey_id>/close"), "inspector", 200, path="/surveys/{survey}/close"),
    # intake: a platform's case, two residents' reports (one accepted, one refused)
    Example(("intake", "POST", "/open311/v2/requests.json"), "platform", 201,
            body={"service_code": "0101", "description": "周家山路5号垃圾桶满溢", "division_code": SEEDED}),
    Example(("intake", "POST", "/open311/v2/public/requests.json"), None, 201,
            body={"service_code": "0201", "description": "电线杆上贴满小广告",
                  "address_string": "金牛山街道周家山社区周家山路3号"},
            keep=lambda ids, cases: ids.update(report=cases[0]["service_request_id"])),
    Example(("intake", "POST", "/open311/v2/public/requests.json"), None, 201,
            body={"service_code": "0107", "description": "垃圾桶满了", "address_string": "金牛山街道周家山社区周家山路7号"},
            keep=lambda ids, cases: ids.update(second_report=cases[0]["service_request_id"])),
    Example(("intake", "POST", "/cases/<case_id>/accept"), "inspector", 200, path="/cases/{report}/accept",
            body={"note": "已核实"}),
    Example(("intake", "POST", "/cases/<case_id>/reject"), "inspector", 200, path="/cases/{second_report}/reject",
            body={"reason": "已由环卫处理"}),
    # accounts: a user's life, signing in and out, an API token for a machine
    Example(("accounts", "POST", "/users"), "admin", 201,
            body={"username": "w.zhangwei", "display_name": "张伟", "node": STREET, "password": PASSWORDS[0],
                  "grants": [{"role": "viewer", "node": STREET}]}),
    Example(("accounts", "POST", "/users/<username>/grants"), "admin", 201, path="/users/w.zhangwei/grants",
            body={"role": "inspector", "node": HUASEN}),
    Example(("accounts", "DELETE", "/users/<username>/grants/<role>/<node>"), "admin", 200,
            path=f"/users/w.zhangwei/grants/inspector/{HUASEN}"),
    Example(("accounts", "PUT", "/users/<username>/password"), "admin", 200, path="/users/w.zhangwei/password",
            body={"new_password": PASSWORDS[1]}),
    Example(("accounts", "PUT", "/me/password"), "account", 200,
            body={"current_password": PASSWORDS[1], "new_password": PASSWORDS[2]}),
    Example(("accounts", "POST", "/auth/login"), None, 200, body={"username": "w.zhangwei", "password": PASSWORDS[2]},
            keep=remember(refresh="refresh_token")),
    Example(("accounts", "POST", "/auth/refresh"), None, 200, body=lambda ids: {"refresh_token": ids["refresh"]}),
    Example(("accounts", "POST", "/api-tokens"), "account", 201,
            body={"name": "大屏展示", "grants": [{"role": "viewer", "node": STREET}]},
            keep=remember(api_token="token_id", api_secret="secret")),
    Example(("accounts", "POST", "/auth/token"), None, 200, body=lambda ids: {"token": ids["api_secret"]}),
    Example(("accounts", "POST", "/api-tokens/<token_id>/revoke"), "account", 200,
            path="/api-tokens/{api_token}/revoke"),
    Example(("accounts", "POST", "/auth/logout"), None, 204, body=lambda ids: {"refresh_token": ids["refresh"]}),
    Example(("accounts", "POST", "/users/<username>/disable"), "admin", 200, path="/users/w.zhangwei/disable"),
    Example(("accounts", "POST", "/users/<username>/enable"), "admin", 200, path="/users/w.zhangwei/enable"),
]


# --- sending ---

def _token(caller: str) -> str:
    name, subject, grants = AUDITOR if caller == "auditor" else CALLERS[caller]
    return support.token(name, grants, subject=subject)


@dataclass
class Sent:
    example: Example
    path: str
    body: Any
    request_id: str
    response: requests.Response


def send(stack: dict, example: Example, ids: dict, request_id: str) -> Sent:
    """Send one example with its own X-Request-Id (and the caller's token); the answer
    must carry the same id back."""
    service, method, _ = example.route
    path = (example.path or example.route[2]).format(**ids)
    body = example.body(ids) if callable(example.body) else example.body
    headers = {"X-Request-Id": request_id}
    if example.caller:
        headers["Authorization"] = f"Bearer {_token(example.caller)}"
    if example.raw is not None:
        headers["Content-Type"] = "image/jpeg"
    response = requests.request(method, stack[service] + path, json=body, data=example.raw, headers=headers,
                                timeout=60)
    assert response.headers.get("X-Request-Id") == request_id, (example.name, response.headers)
    return Sent(example, path, body, request_id, response)


@pytest.fixture(scope="module")
def sent(stack) -> tuple[list[Sent], list[str]]:
    """Every example, in order, once: what was sent and answered, and what went wrong."""
    ids: dict = {}
    out, failures = [], []
    for number, example in enumerate(EXAMPLES, start=1):
        try:
            if example.before:
                example.before(stack, ids)
            done = send(stack, example, ids, f"w-{number:04d}")
            out.append(done)
            if done.response.status_code != example.status:
                failures.append(f"{example.name} ({done.path}): expected {example.status}, "
                                f"got {done.response.status_code} {done.response.text[:500]}")
            elif example.keep:
                example.keep(ids, done.response.json())
        except Exception as exc:  # report every example's failure together, by route
            failures.append(f"{example.name}: {exc.__class__.__name__}: {exc}"[:1500])
    return out, failures


def _write_routes() -> set[tuple[str, str, str]]:
    """The write routes the stack's services serve (ROUTES is filled as they start)."""
    return {(service, method, url) for (service, methods, url) in ROUTES if service in STACK_SERVICES
            for method in methods.split(",") if method in UNSAFE_METHODS}


def _audit(stack: dict, service: str, request_id: str) -> list[dict]:
    auditor = support.ApiClient(stack[service], token=_token("auditor"))
    response = auditor.get("/audit", params={"request_id": request_id})
    assert response.status_code == 200, response.text
    return response.json()


# --- the properties ---

def test_every_example_is_answered_with_its_2xx_status(sent):
    _, failures = sent
    assert not failures, "\n".join(failures)
    assert all(200 <= e.status < 300 for e in EXAMPLES)


def test_every_write_route_has_an_example_or_a_reason_not_to_be_audited(stack):
    served = _write_routes()
    assert {service for service, _, _ in served} == set(STACK_SERVICES)  # the services have started
    exercised = {example.route for example in EXAMPLES}
    missing = served - exercised - set(NOT_AUDITED)
    assert not missing, "write routes without a valid example in EXAMPLES (or a reason in NOT_AUDITED):\n" + \
        "\n".join(f"  {service} {method} {url}" for service, method, url in sorted(missing))
    unknown = (exercised | set(NOT_AUDITED)) - served
    assert not unknown, f"examples or reasons for routes nobody serves: {sorted(unknown)}"


@pytest.mark.parametrize("service", sorted(STACK_SERVICES))
def test_each_write_is_on_record_with_the_tokens_subject_and_its_request_id(stack, sent, service):
    failures = []
    for done in sent[0]:
        example = done.example
        if example.route[0] != service or not 200 <= done.response.status_code < 300:
            continue
        if example.route in NOT_AUDITED:
            # Nothing can write an entry for it: the service keeps no log, and no other service's has one.
            log = support.ApiClient(stack[service], token=_token("auditor")).get("/audit")
            if log.status_code < 400 or "keeps no database" not in log.text:
                failures.append(f"{example.name}: listed as not audited, yet {service} serves an audit log: "
                                f"{log.status_code} {log.text[:200]}")
            if _audit(stack, "accounts", done.request_id):
                failures.append(f"{example.name}: listed as not audited, yet an entry holds {done.request_id}")
            continue
        try:  # a write that committed nothing has its entry appended just after the answer
            entries = support.wait_until(lambda: _audit(stack, service, done.request_id), timeout=15,
                                         message=f"the audit entry of {example.name} ({done.request_id})")
        except AssertionError as exc:
            failures.append(str(exc))
            continue
        name, subject = CALLERS[example.caller][:2] if example.caller else ("anonymous", "anonymous")
        action = f"{example.route[1]} {example.route[2]}"
        expected = (done.request_id, subject, name, service, action, done.path)
        for entry in entries:
            got = tuple(entry[k] for k in ("request_id", "actor_subject", "actor_name", "service", "action", "path"))
            if got != expected:
                failures.append(f"{example.name}: expected {expected}, recorded {got}")
        body = done.body if isinstance(done.body, dict) else {}
        leaked = [k for k in SECRET_FIELDS if isinstance(body.get(k), str)
                  and body[k] in json.dumps(entries, ensure_ascii=False)]
        if leaked:
            failures.append(f"{example.name}: the audit entry holds the secret {leaked}")
    assert not failures, "\n".join(failures)


def _with_components(schema: dict, document: dict) -> dict:
    return {**schema, "components": document.get("components", {})}


def _problems(schema: dict, document: dict, instance: Any) -> list[str]:
    from jsonschema import Draft202012Validator
    validator = Draft202012Validator(_with_components(schema, document),
                                     format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"[:400]
            for e in validator.iter_errors(instance)]


@pytest.mark.parametrize("service", sorted(STACK_SERVICES))
def test_each_write_and_its_answer_match_the_services_own_openapi_document(stack, sent, service):
    document = _document(stack[service])
    failures = []
    for done in sent[0]:
        example = done.example
        if example.route[0] != service:
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-zA-Z_]+)>", r"{\1}", example.route[2])
        operation = document["paths"].get(path, {}).get(example.route[1].lower())
        if operation is None:
            failures.append(f"{example.name}: not in {service}'s /openapi.json")
            continue
        request_body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if done.body is not None:
            if request_body is None:
                failures.append(f"{example.name}: a JSON body was sent, none is documented")
            else:
                failures += [f"{example.name} request: {p}" for p in
                             _problems(request_body["schema"], document, done.body)]
        elif request_body is not None and operation["requestBody"].get("required"):
            failures.append(f"{example.name}: the documented body was not sent")
        status = done.response.status_code
        declared = operation["responses"].get(str(status)) or operation["responses"].get(f"{str(status)[0]}XX")
        if declared is None:
            failures.append(f"{example.name}: answered {status}, which is not documented")
            continue
        content = declared.get("content")
        if not content:
            if done.response.content:
                failures.append(f"{example.name}: {status} documents no content, got {done.response.text[:200]}")
            continue
        media = done.response.headers.get("Content-Type", "").split(";")[0].strip()
        if media not in content:
            failures.append(f"{example.name}: answered {media}, documented {sorted(content)}")
        elif media == "application/json":
            failures += [f"{example.name} response: {p}" for p in
                         _problems(content[media].get("schema", {}), document, done.response.json())]
    assert not failures, "\n".join(failures)


# --- formula-leading text: data when stored, neutralised in the review archive ---

FORMULAS = {"subject": "=cmd|' /C calc'!A0", "place": "+1", "inspector": "-1", "second inspector": "@SUM(1)",
            "note": "=HYPERLINK(\"http://x\")"}


def test_formula_text_is_stored_as_data_and_quoted_in_the_review_archive(stack):
    admin = support.ApiClient(stack["inspection"], token=_token("admin"))
    inspector = support.ApiClient(stack["inspection"], token=_token("inspector"))
    subject = admin.post("/subjects", {"subject_type": "child_unit", "node": JINNIU, "name": FORMULAS["subject"]})
    assert subject.status_code == 201, subject.text
    place = admin.post("/places", {"place_type": "public_toilet", "name": FORMULAS["place"], "node": JINNIU,
                                   "responsible_subject_id": subject.json()["subject_id"]})
    assert place.status_code == 201, place.text
    recorded = inspector.post("/inspections", {
        "kind": "routine", "subject_id": subject.json()["subject_id"], "place_id": place.json()["place_id"],
        "checklist": {"version": "2010.1", "code": "public-toilet"},
        "inspectors": [FORMULAS["inspector"], FORMULAS["second inspector"]], "note": FORMULAS["note"],
        "inspected_at": (datetime.now(timezone.utc) - timedelta(minutes=30)).isoformat(),
        "results": [{"item_code": "PT-05", "findings": 1, "note": FORMULAS["note"]}]})
    assert recorded.status_code == 201, recorded.text
    # Stored as given: data, not something to refuse or to rewrite.
    names = {s["subject_id"]: s["name"] for s in admin.get("/subjects").json()}
    assert names[subject.json()["subject_id"]] == FORMULAS["subject"]
    stored = admin.get(f"/inspections/{recorded.json()['inspection_id']}").json()
    assert stored["note"] == FORMULAS["note"] and stored["results"][0]["note"] == FORMULAS["note"]
    assert stored["inspectors"] == [FORMULAS["inspector"], FORMULAS["second inspector"]]

    notify = support.ApiClient(stack["notify"], token=_token("admin"))

    def archive():
        response = notify.get("/archive", params={"since": MONTH, "until": MONTH})
        assert response.status_code == 200, response.text
        files = zipfile.ZipFile(io.BytesIO(response.content))
        tables = {name: list(csv.reader(io.StringIO(files.read(name).decode("utf-8-sig"))))
                  for name in files.namelist() if name.endswith(".csv")}
        tasks = tables["02-整改任务.csv"]
        return tables if any(recorded.json()["inspection_id"] in "".join(row) for row in tables["01-检查记录.csv"]) \
            and len(tasks) > 1 and any("'" + FORMULAS["subject"] in row for row in tasks) else None
    tables = support.wait_until(archive, timeout=30, message="the inspection and its task in the archive")

    [row] = [r for r in tables["01-检查记录.csv"] if recorded.json()["inspection_id"] in r]
    assert "'" + FORMULAS["subject"] in row and "'" + FORMULAS["place"] in row, row
    assert "'" + "、".join([FORMULAS["inspector"], FORMULAS["second inspector"]]) in row, row
    [task] = [r for r in tables["02-整改任务.csv"] if "'" + FORMULAS["subject"] in r]
    assert "'" + FORMULAS["place"] in task, task
    raw = [(name, cell) for name, rows in tables.items() for row in rows for cell in row
           if cell.startswith(FORMULA_LEADS)]
    assert not raw, f"cells that a spreadsheet would run as formulas: {raw}"
