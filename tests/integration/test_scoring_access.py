"""Who may read and change scores (issue 10) and what hostile input gets (issue 9), over HTTP
against the running scoring service, with the real broker and PostgreSQL.

Inspections arrive as `inspection_submitted` events published on the broker (as the
inspection service publishes them), so each test controls their kind, inspecting office and
inspectors. Periods are taken relative to today: the current month is open, the previous
month has ended (a closed period).
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import pytest
from kombu import Connection, Exchange, Producer

from services.contracts.events import Producer as EventProducer, make_event
from services.contracts.events.inspection import InspectionReleased, InspectionSubmitted
from services.contracts.periods import CST, Period, PeriodKind
from services.scoring.service import ScoringService
from tests import support

pytestmark = pytest.mark.integration

STREET = "411502008000"  # 金牛山街道: this stack's office
COMM = "411502008001"  # 周家山社区, one of its communities
PEER = "411502008006"  # 飨堂社区, its peer
OTHER = "411502003000"  # another street (湖东街道): outside this stack
DISTRICT = "411502000000"  # 浉河区, above the street
NAMES = {COMM: "周家山社区", PEER: "飨堂社区"}
TEST_USER = "测试管理员 (user-测试管理员)"  # support.ApiClient's default caller (every role on the province)

NOW = datetime.now(CST)
THIS_MONTH = Period.containing(PeriodKind.month, NOW)
LAST_MONTH = THIS_MONTH.previous()  # ended: a closed period
THIS_HALF = Period.containing(PeriodKind.half_year, NOW)


def day_in(period: Period, day: int) -> datetime:
    """A moment of `period` that has already passed (today's early hours for the current month)."""
    start = period.instants()[0]
    moment = start + timedelta(days=day - 1, hours=10)
    return min(moment, NOW - timedelta(minutes=5))


# --- the stack and its inputs -------------------------------------------------------------------


@pytest.fixture
def stack(amqp_uri, database_url):
    port = support.free_port()
    config = support.base_config(amqp_uri, database_url, WEB_ADDRESSES={"scoring": f"127.0.0.1:{port}"})
    with support.running_services(config, ScoringService) as runner:
        yield {"scoring": support.ApiClient(f"http://127.0.0.1:{port}"), "amqp_uri": amqp_uri,
               "database_url": database_url, "runner": runner}


def publish(amqp_uri: str, message: dict) -> None:
    with Connection(amqp_uri) as conn:
        Producer(conn.default_channel).publish(
            message, exchange=Exchange("inspection.events", type="topic", durable=True),
            routing_key=message["event_type"], serializer="json", delivery_mode=2)


def submitted(node: str, score: float, when: datetime, kind: str = "routine",
              inspectors=("王芳", "李强"), inspection_id: str | None = None) -> dict:
    payload = InspectionSubmitted(
        inspection_id=inspection_id or str(uuid.uuid4()), inspecting_node=STREET, kind=kind,
        subject={"subject_id": f"s-{node}", "node": node, "name": NAMES[node], "subject_type": "child_unit"},
        checklist={"catalogue_id": "chuangwei-default", "version": "2010.1", "code": "public-toilet"},
        inspected_at=when, submitted_at=when, inspectors=list(inspectors), score=score, scale=100,
        points_available=100.0, points_deducted=100.0 - score, findings=[])
    return make_event(payload, EventProducer(node=STREET, service="inspection")).to_message()


def released(node: str, inspection_id: str) -> dict:
    payload = InspectionReleased(
        inspection_id=inspection_id, inspecting_node=STREET, released_at=NOW,
        subject={"subject_id": f"s-{node}", "node": node, "name": NAMES[node], "subject_type": "child_unit"})
    return make_event(payload, EventProducer(node=STREET, service="inspection")).to_message()


def inputs_of(api, node: str, period: Period) -> int:
    r = api.get(f"/subjects/{node}/scores/{period.key}")
    return r.json()["inputs"] if r.status_code == 200 else 0


def scored(stack, scores: dict[str, list[tuple[Period, int, float]]]) -> None:
    """Publish routine inspections {node: [(period, day, score)]} and wait until all are scored."""
    for node, entries in scores.items():
        for period, day, score in entries:
            publish(stack["amqp_uri"], submitted(node, score, day_in(period, day)))
    for node, entries in scores.items():
        for period in {p for p, _, _ in entries}:
            count = sum(1 for p, _, _ in entries if p == period)
            support.wait_until(lambda: inputs_of(stack["scoring"], node, period) == count,
                               message=f"{node} scored in {period.key}")


def two_communities(stack) -> None:
    """周家山 and 飨堂, two inspections each in the current and the previous month."""
    scored(stack, {COMM: [(THIS_MONTH, 1, 96), (THIS_MONTH, 2, 94), (LAST_MONTH, 3, 90), (LAST_MONTH, 10, 86)],
                   PEER: [(THIS_MONTH, 1, 92), (THIS_MONTH, 2, 90), (LAST_MONTH, 3, 94), (LAST_MONTH, 10, 96)]})


def fields(response) -> list[str]:
    return [e["field"] for e in response.json().get("errors", [])]


# --- the role × node × action matrix -------------------------------------------------------------

ROLES = ("administrator", "inspector", "rectifier", "viewer")
WHO = {f"{role}@{where}": [(role, node)] for role in ROLES
       for where, node in (("street", STREET), ("community", COMM), ("other", OTHER))}
WHO["viewer@district"] = [("viewer", DISTRICT)]
WHO["anonymous"] = None


def at(where: str, *roles: str) -> set[str]:
    return {f"{role}@{where}" for role in (roles or ROLES)}


STREET_ALL, COMMUNITY_ALL = at("street"), at("community")
OFFICE = at("street", "administrator", "inspector", "viewer") | {"viewer@district"}


def _veto(api) -> str:
    r = api.post("/vetoes", {"subject_id": COMM, "period": THIS_MONTH.key, "reason": "criticism",
                             "note": "矩阵测试"})
    assert r.status_code == 201, r.text
    return r.json()["veto_id"]


def _revocation(api) -> str:
    r = api.post(f"/vetoes/{_veto(api)}/revoke", {"reason": "矩阵测试：申诉成立"})
    assert r.status_code == 202, r.text
    return r.json()["approval_id"]


def _no_pending_policy(api, node: str) -> None:
    for pending in api.get("/approvals?kind=policy_change").json():
        if pending["target"] == node:
            assert api.post(f"/approvals/{pending['approval_id']}/reject", {"note": "矩阵测试"}).status_code == 200


def _policy(api, node: str) -> dict:
    document = api.get(f"/policies/{node}").json()["document"]
    return dict(document, note=f"矩阵测试 {uuid.uuid4().hex[:6]}")


# (action, request(caller, setup result), setup(default client) or None, who is allowed, allowed status)
# Everyone else with a token gets 403; the anonymous caller gets 401 everywhere.
MATRIX = [
    ("read rankings", lambda c, _: c.get(f"/rankings?period={THIS_MONTH.key}&tier=community"), None,
     STREET_ALL | COMMUNITY_ALL | {"viewer@district"}, 200),
    ("read own community's history", lambda c, _: c.get(f"/subjects/{COMM}/scores"), None,
     STREET_ALL | COMMUNITY_ALL | {"viewer@district"}, 200),
    ("read a peer's history", lambda c, _: c.get(f"/subjects/{PEER}/scores"), None,
     STREET_ALL | {"viewer@district"}, 200),
    ("explain own community's score", lambda c, _: c.get(f"/subjects/{COMM}/scores/{THIS_MONTH.key}"), None,
     STREET_ALL | COMMUNITY_ALL | {"viewer@district"}, 200),
    ("explain a peer's score", lambda c, _: c.get(f"/subjects/{PEER}/scores/{THIS_MONTH.key}"), None,
     STREET_ALL | {"viewer@district"}, 200),
    ("explain the street's score", lambda c, _: c.get(f"/subjects/{STREET}/scores/{THIS_MONTH.key}"), None,
     STREET_ALL | {"viewer@district"}, 200),
    ("list a peer's vetoes", lambda c, _: c.get(f"/vetoes?subject_id={PEER}"), None,
     STREET_ALL | {"viewer@district"}, 200),
    ("list own vetoes", lambda c, _: c.get(f"/vetoes?subject_id={COMM}"), None,
     STREET_ALL | COMMUNITY_ALL | {"viewer@district"}, 200),
    ("read the street's policy", lambda c, _: c.get(f"/policies/{STREET}"), None,
     STREET_ALL | {"viewer@district"}, 200),
    ("read the policy a community is scored by", lambda c, _: c.get(f"/policies/{COMM}/versions"), None,
     STREET_ALL | COMMUNITY_ALL | {"viewer@district"}, 200),
    ("children freshness", lambda c, _: c.get("/children/freshness"), None, OFFICE, 200),
    ("recompute log", lambda c, _: c.get("/recomputes"), None, OFFICE, 200),
    ("list approvals", lambda c, _: c.get("/approvals"), None,
     {"administrator@street", "administrator@community"}, 200),
    ("enter a veto", lambda c, _: c.post("/vetoes", {"subject_id": COMM, "period": THIS_MONTH.key,
                                                     "reason": "media_exposure", "note": "信阳日报"}), None,
     {"administrator@street"}, 201),
    ("enter an appraisal", lambda c, _: c.post("/appraisals", {"subject_id": COMM, "period": THIS_HALF.key,
                                                               "score": 92}), None,
     {"administrator@street"}, 201),
    ("propose revoking a veto", lambda c, veto_id: c.post(f"/vetoes/{veto_id}/revoke", {"reason": "申诉成立"}),
     _veto, {"administrator@street"}, 202),
    ("approve a revocation", lambda c, approval_id: c.post(f"/approvals/{approval_id}/approve", {}),
     _revocation, {"administrator@street"}, 200),
    ("reject a revocation", lambda c, approval_id: c.post(f"/approvals/{approval_id}/reject", {}),
     _revocation, {"administrator@street"}, 200),
    ("propose the street's policy",
     lambda c, document: c.put(f"/policies/{STREET}", document),
     lambda api: (_no_pending_policy(api, STREET), _policy(api, STREET))[1], {"administrator@street"}, 202),
    ("propose a community's own policy",
     lambda c, document: c.put(f"/policies/{COMM}", document),
     lambda api: (_no_pending_policy(api, COMM), _policy(api, COMM))[1],
     {"administrator@street", "administrator@community"}, 202),
    ("recompute the current month",
     lambda c, _: c.post("/recompute", {"period": THIS_MONTH.key}), None, {"administrator@street"}, 200),
]


def test_role_node_action_matrix(stack):
    """Every cell: the allowed callers get the success status, every other caller with a token
    403 and the anonymous one 401; a refused write leaves no trace."""
    api = stack["scoring"]
    two_communities(stack)
    callers = {who: (api.as_user(who.replace("@", "·"), grants) if grants is not None else api.anonymous())
               for who, grants in WHO.items()}
    wrong = []
    for action, call, setup, allowed, status in MATRIX:
        for who, caller in callers.items():
            target = setup(api) if setup else None
            expected = 401 if who == "anonymous" else (status if who in allowed else 403)
            response = call(caller, target)
            if response.status_code != expected:
                wrong.append(f"{action} as {who}: {response.status_code}, expected {expected}: {response.text[:200]}")
            elif expected in (401, 403) and not fields(response):
                wrong.append(f"{action} as {who}: {expected} without the field it concerns")
    assert not wrong, "\n".join(wrong)
    # Refused entries left nothing behind: one veto per allowed cell or setup, each by the test
    # user or the street's administrator.
    entered = {v["issued_by"] for v in api.get("/vetoes?include_revoked=true").json()}
    assert entered == {TEST_USER, "administrator·street (user-administrator·street)"}
    media = [v for v in api.get("/vetoes?include_revoked=true").json() if v["reason"] == "media_exposure"]
    assert len(media) == 1
    assert [a["appraised_by"] for a in [api.get(f"/subjects/{COMM}/scores/{THIS_HALF.key}").json()["explain"]
                                        ["composite"]["appraisal"]]] == [
        "administrator·street (user-administrator·street)"]


def test_each_caller_sees_only_its_own_subtree(stack):
    api = stack["scoring"]
    two_communities(stack)
    veto = _veto(api)

    def ranking_nodes(caller) -> tuple[list[str], int]:
        r = caller.get(f"/rankings?period={LAST_MONTH.key}&tier=community")
        assert r.status_code == 200, r.text
        return [row["node"] for row in r.json()["ranking"]], r.json()["peers"]

    # The street and the district see the whole ranking; a community only its own row (rank
    # and the number of peers, not their figures).
    assert ranking_nodes(api.as_user("街道查看者", [("viewer", STREET)])) == ([PEER, COMM], 2)
    assert ranking_nodes(api.as_user("区查看者", [("viewer", DISTRICT)])) == ([PEER, COMM], 2)
    for role in ROLES:
        nodes, peers = ranking_nodes(api.as_user(f"社区{role}", [(role, COMM)]))
        assert (nodes, peers) == ([COMM], 2), role
    own = api.as_user("社区整改人", [("rectifier", COMM)])
    [row] = own.get(f"/rankings?period={LAST_MONTH.key}&tier=community").json()["ranking"]
    assert row["rank"] == 2 and row["score"] == 88.0
    assert [v["veto_id"] for v in own.get("/vetoes").json()] == [veto]
    peer = api.as_user("飨堂社区查看者", [("viewer", PEER)])
    assert peer.get("/vetoes").json() == []  # another community's veto is not listed
    assert ranking_nodes(peer) == ([PEER], 2)
    r = api.as_user("湖东街道管理员", [("administrator", OTHER)]).get(f"/rankings?period={LAST_MONTH.key}")
    assert r.status_code == 403 and fields(r) == ["query.tier"]


# --- two administrators --------------------------------------------------------------------------


def test_policy_change_takes_two_administrators(stack):
    api = stack["scoring"]
    two_communities(stack)
    first = api.as_user("李强", [("administrator", STREET)])
    second = api.as_user("赵敏", [("administrator", STREET)])
    community_admin = api.as_user("周家山管理员", [("administrator", COMM)])
    current = api.get(f"/policies/{STREET}").json()
    table = api.get(f"/rankings?period={THIS_MONTH.key}").json()
    assert table["ranking"][0]["policy"] == {"policy_id": "street-scheme", "version": 1}

    # A community's grade bands change: 90 and above is now 优秀.
    document = dict(current["document"], grades=[{"name": "优秀", "min": 90, "advanced": True},
                                                 {"name": "合格", "min": 60}, {"name": "不合格", "min": 0}],
                    note="优秀线调整为90分")
    rejected = first.put(f"/policies/{STREET}", document)
    assert rejected.status_code == 202, rejected.text
    assert first.post(f"/approvals/{rejected.json()['approval_id']}/reject", {"note": "撤回"}).status_code == 200
    proposal = first.put(f"/policies/{STREET}", document)
    assert proposal.status_code == 202, proposal.text
    approval_id = proposal.json()["approval_id"]
    assert proposal.json()["proposed_by"] == "李强 (user-李强)" and proposal.json()["reason"] == "优秀线调整为90分"
    again = second.put(f"/policies/{STREET}", document)
    assert again.status_code == 409 and fields(again) == ["node"]  # one pending change per node

    # Pending: listed for the street's administrators, nothing in force yet.
    assert [a["approval_id"] for a in second.get("/approvals").json()] == [approval_id]
    assert community_admin.get("/approvals").json() == []
    assert [a["status"] for a in api.get("/approvals?status=rejected").json()] == ["rejected"]
    assert api.get(f"/policies/{STREET}").json()["version"] == 1
    assert api.get(f"/rankings?period={THIS_MONTH.key}").json() == table

    # The proposer cannot approve; a community's administrator cannot either.
    for caller in (first, community_admin):
        refused = caller.post(f"/approvals/{approval_id}/approve", {})
        assert refused.status_code == 403 and fields(refused) == ["approval_id"], refused.text
    assert api.get(f"/policies/{STREET}").json()["version"] == 1

    approved = second.post(f"/approvals/{approval_id}/approve", {"note": "经领导小组同意"})
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["status"] == "approved" and body["decided_by"] == "赵敏 (user-赵敏)"
    assert body["policy"]["version"] == 2 and body["policy"]["created_by"] == "李强 (user-李强)"
    assert body["policy"]["approved_by"] == "赵敏 (user-赵敏)" and body["published"] > 0
    assert api.get(f"/policies/{STREET}").json()["version"] == 2
    # Rescored as today: 飨堂's (92 + 90) / 2 = 91 is 先进 under version 1, 优秀 under version 2.
    rows = {r["node"]: r for r in api.get(f"/rankings?period={THIS_MONTH.key}").json()["ranking"]}
    assert rows[PEER]["grade"] == "优秀" and rows[PEER]["policy"]["version"] == 2
    assert second.post(f"/approvals/{approval_id}/approve", {}).status_code == 409  # decided once
    assert api.get("/approvals").json() == []


# --- closed periods are never recomputed silently -------------------------------------------------


def test_recomputing_a_closed_period_needs_a_reason_and_is_logged(stack):
    api = stack["scoring"]
    two_communities(stack)
    admin = api.as_user("李强", [("administrator", STREET)])

    refused = admin.post("/recompute", {"period": LAST_MONTH.key})
    assert refused.status_code == 422 and fields(refused) == ["reason"], refused.text
    assert "reason" in refused.json()["errors"][0]["reason"]
    assert admin.post("/recompute", {"period": LAST_MONTH.key, "reason": " "}).status_code == 422
    assert api.get("/recomputes").json() == []  # refused: nothing recorded

    done = admin.post("/recompute", {"period": LAST_MONTH.key, "reason": "十里河社区检查记录补录后重算"})
    assert done.status_code == 200, done.text
    assert done.json()["closed"] is True and done.json()["requested_by"] == "李强 (user-李强)"
    open_month = admin.post("/recompute", {"period": THIS_MONTH.key})  # an open period needs no reason
    assert open_month.status_code == 200 and open_month.json()["closed"] is False

    log = api.as_user("街道查看者", [("viewer", STREET)]).get("/recomputes").json()
    assert [(e["period"], e["closed"], e["reason"], e["requested_by"], e["trigger"]) for e in log] == [
        (THIS_MONTH.key, False, None, "李强 (user-李强)", "recompute"),
        (LAST_MONTH.key, True, "十里河社区检查记录补录后重算", "李强 (user-李强)", "recompute")]
    assert [e["period"] for e in api.get(f"/recomputes?period={LAST_MONTH.key}").json()] == [LAST_MONTH.key]
    # The explanation of a score of that period says it was recomputed, by whom and why.
    shown = api.get(f"/subjects/{COMM}/scores/{LAST_MONTH.key}").json()["explain"]["recomputes"]
    assert [(e["reason"], e["requested_by"]) for e in shown] == [("十里河社区检查记录补录后重算", "李强 (user-李强)")]

    # A veto entered for the closed month changes its figures: recorded too.
    veto = admin.post("/vetoes", {"subject_id": PEER, "period": LAST_MONTH.key, "reason": "criticism",
                                  "reference": "浉爱卫〔2026〕15号"})
    assert veto.status_code == 201, veto.text
    shown = api.get(f"/subjects/{PEER}/scores/{LAST_MONTH.key}").json()["explain"]["recomputes"]
    assert [e["trigger"] for e in shown] == ["recompute", "veto"] and "浉爱卫〔2026〕15号" in shown[1]["reason"]


# --- 暗访 in score explanations --------------------------------------------------------------------


def test_unannounced_inspections_are_withheld_from_the_subject_until_released(stack):
    api, amqp = stack["scoring"], stack["amqp_uri"]
    secret, early = str(uuid.uuid4()), str(uuid.uuid4())
    publish(amqp, submitted(COMM, 96, day_in(THIS_MONTH, 1)))
    publish(amqp, submitted(COMM, 80, day_in(THIS_MONTH, 2), kind="unannounced", inspectors=("暗访员甲", "暗访员乙"),
                            inspection_id=secret))
    support.wait_until(lambda: inputs_of(api, COMM, THIS_MONTH) == 2, message="both scored")

    path = f"/subjects/{COMM}/scores/{THIS_MONTH.key}"
    inspecting = [api.as_user("街道检查员", [("inspector", STREET)]), api.as_user("街道查看者", [("viewer", STREET)]),
                  api.as_user("区查看者", [("viewer", DISTRICT)])]
    subject_side = [api.as_user(f"社区{role}", [(role, COMM)]) for role in ROLES]
    # A rectifier is the subject's contact: on the subject side even with a grant on the street.
    subject_side.append(api.as_user("街道整改人", [("rectifier", STREET)]))

    def inspections(caller) -> dict[str, dict]:
        r = caller.get(path)
        assert r.status_code == 200, r.text
        return {i["inspection_id"]: i for i in r.json()["explain"]["inspections"]}

    for caller in inspecting:
        shown = inspections(caller)
        assert shown[secret]["inspectors"] == ["暗访员甲", "暗访员乙"] and shown[secret]["kind"] == "unannounced"
    for caller in subject_side:
        shown = inspections(caller)
        assert secret not in shown and len(shown) == 1  # not released: not there at all
        assert [i["inspectors"] for i in shown.values()] == [["王芳", "李强"]]  # a routine check's are known
    # The office's figures count it: (96 + 80) / 2 = 88. The subject side's move for nothing
    # it has not been told of: week and month, explanation, history and ranking read as if the
    # visit had not happened (96, one input), and the street's roll-up of it is held back.
    week = Period.containing(PeriodKind.week, day_in(THIS_MONTH, 2))
    same_week = Period.containing(PeriodKind.week, day_in(THIS_MONTH, 1)) == week

    def figures(caller) -> dict:
        month = caller.get(path).json()
        history = caller.get(f"/subjects/{COMM}/scores").json()["scores"]
        listed = {(f["period_kind"], f["period"]): (f["score"], f["inputs"]) for f in history}
        ranking = caller.get("/rankings", params={"period": THIS_MONTH.key}).json()
        [row] = [f for f in ranking["ranking"] + ranking["below_minimum_sample"] if f["subject_id"] == COMM]
        weekly = caller.get(f"/subjects/{COMM}/scores/{week.key}")
        return {"month": (month["score"], month["inputs"]), "listed": listed[("month", THIS_MONTH.key)],
                "ranking": (row["score"], row["inputs"]), "listed_week": listed.get(("week", week.key)),
                "week": (weekly.json()["score"], weekly.json()["inputs"]) if weekly.status_code == 200 else None}

    for caller in inspecting:
        assert figures(caller) == {"month": (88.0, 2), "listed": (88.0, 2), "ranking": (88.0, 2),
                                   "listed_week": (88.0, 2) if same_week else (80.0, 1),
                                   "week": (88.0, 2) if same_week else (80.0, 1)}
    for caller in subject_side:
        assert figures(caller) == {"month": (96.0, 1), "listed": (96.0, 1), "ranking": (96.0, 1),
                                   "listed_week": (96.0, 1) if same_week else None,
                                   "week": (96.0, 1) if same_week else None}, caller
        assert caller.get(path).json()["explain"]["inspections"][0]["score"] == 96
    street = f"/subjects/{STREET}/scores/{THIS_MONTH.key}"
    held = subject_side[-1].get(street).json()  # the street's rectifier: the roll-up holds the 暗访
    assert held["score"] is None and held["held_back"] and "本期得分待发布" in held["held_back_reason"]
    assert held["explain"] == {"held_back": held["held_back_reason"], "recomputes": []}
    board = subject_side[-1].get("/rankings", params={"period": THIS_MONTH.key, "tier": "street"}).json()
    [row] = [f for f in board["ranking"] + board["below_minimum_sample"] if f["subject_id"] == STREET]
    assert row["score"] is None and row["held_back"] and row["why_unranked"].startswith("本期得分待发布")
    listed = {(f["period_kind"], f["period"]): f for f in subject_side[-1].get(f"/subjects/{STREET}/scores").json()["scores"]}
    assert listed[("month", THIS_MONTH.key)]["held_back"] and listed[("month", THIS_MONTH.key)]["score"] is None
    shown = inspecting[0].get(street).json()
    assert shown["score"] == 88.0 and not shown["held_back"]

    # Released: the subject side sees it, never its inspectors.
    publish(amqp, released(COMM, secret))
    support.wait_until(lambda: secret in inspections(subject_side[0]), message="release applied")
    for caller in subject_side:
        shown = inspections(caller)[secret]
        assert shown["inspectors"] is None and shown["score"] == 80 and "暗访员" not in str(shown)
        assert "暗访员" not in caller.get(path).text
    assert inspections(inspecting[0])[secret]["inspectors"] == ["暗访员甲", "暗访员乙"]
    for caller in subject_side:  # released: the figures are everyone's
        assert figures(caller)["month"] == (88.0, 2) and figures(caller)["ranking"] == (88.0, 2)
    assert subject_side[-1].get(street).json()["score"] == 88.0

    # A release may arrive before the submission it releases.
    publish(amqp, released(COMM, early))
    publish(amqp, submitted(COMM, 90, day_in(THIS_MONTH, 3), kind="unannounced", inspectors=("暗访员丙",),
                            inspection_id=early))
    support.wait_until(lambda: inputs_of(api, COMM, THIS_MONTH) == 3, message="third scored")
    shown = inspections(subject_side[1])
    assert early in shown and shown[early]["inspectors"] is None
    assert inspections(inspecting[0])[early]["inspectors"] == ["暗访员丙"]


# --- hostile input ---------------------------------------------------------------------------------

BAD_PERIODS = ["9999-12", "0001-01", "1999-12", "2100-01", "2026-13", "2026-W60", "2026-Q5", "November", "",
               "2026-11-01", "1" * 5000]


def test_hostile_periods_get_a_4xx_naming_the_field(stack):
    """Periods outside 2000–2099 or that do not exist, on every route that takes one."""
    from urllib.parse import quote
    api = stack["scoring"]
    scored(stack, {COMM: [(THIS_MONTH, 1, 90)]})
    wrong = []
    for period in BAD_PERIODS:
        q = quote(period, safe="")
        cases = [
            (api.get(f"/rankings?period={q}"), "query.period"),
            (api.post("/vetoes", {"subject_id": COMM, "period": period, "reason": "criticism"}), "period"),
            (api.post("/appraisals", {"subject_id": COMM, "period": period, "score": 90}), "period"),
            (api.post("/recompute", {"period": period, "reason": "测试"}), "period"),
        ]
        if period:  # blank is "no filter" in a list query, and no route in a path
            cases += [(api.get(f"/vetoes?period={q}"), "query.period"),
                      (api.get(f"/recomputes?period={q}"), "query.period"),
                      (api.get(f"/subjects/{COMM}/scores/{q}"), "period")]
        for response, field in cases:
            if not (400 <= response.status_code < 500 and field in fields(response)):
                wrong.append(f"{period[:20]!r} → {response.request.method} {response.request.path_url[:60]}: "
                             f"{response.status_code} {response.text[:200]}")
    assert not wrong, "\n".join(wrong)
    assert api.get("/vetoes?include_revoked=true").json() == [] and api.get("/recomputes").json() == []


def test_hostile_numbers_offsets_and_ids_get_a_4xx(stack):
    api = stack["scoring"]
    scored(stack, {COMM: [(THIS_MONTH, 1, 90)]})
    document = api.get(f"/policies/{STREET}").json()["document"]
    raw = {"Content-Type": "application/json"}
    cases = [
        (api.get("/recomputes?offset=9223372036854775808"), 422, "query.offset"),
        (api.get("/recomputes?offset=-1"), 422, "query.offset"),
        (api.get("/recomputes?limit=0"), 422, "query.limit"),
        (api.get("/approvals?limit=1000000000"), 422, "query.limit"),
        (api.get("/approvals?offset=1000001"), 422, "query.offset"),
        (api.get("/subjects/x/scores?period_kind=decade"), 422, "query.period_kind"),
        (api.post("/appraisals", data=f'{{"subject_id": "{COMM}", "period": "{THIS_HALF.key}", "score": NaN}}',
                  headers=raw), 422, "score"),
        (api.post("/appraisals", data=f'{{"subject_id": "{COMM}", "period": "{THIS_HALF.key}", "score": 1e400}}',
                  headers=raw), 422, "score"),
        (api.put(f"/policies/{STREET}", dict(document, rollup={"combine": "weighted",
                                                               "child_weights": {COMM: 1e300}})), 422, None),
        (api.put(f"/policies/{STREET}", data=json.dumps(dict(document, rollup={
            "combine": "weighted", "child_weights": {COMM: 12345.5}})).replace("12345.5", "Infinity"),
            headers=raw), 422, None),
        (api.get("/subjects/" + "x" * 5000 + "/scores"), 404, "subject_id"),
        (api.post("/vetoes/" + "x" * 5000 + "/revoke", {"reason": "申诉成立"}), 404, "veto_id"),
        (api.post("/approvals/" + "x" * 5000 + "/approve", {}), 404, "approval_id"),
        (api.get("/policies/" + "9" * 5000), 404, "node"),
        (api.post("/vetoes", {"subject_id": COMM, "period": THIS_MONTH.key, "reason": "criticism",
                              "note": "x" * 2001}), 422, "note"),
    ]
    for response, status, field in cases:
        assert response.status_code == status, (field, response.text)
        if field:
            assert field in fields(response), (field, response.text)
    assert api.get(f"/policies/{STREET}/versions").json()[-1]["version"] == 1
    assert api.get("/approvals").json() == []
