"""Who may do what in the inspection service (issue 10), over HTTP against the running
service, a real PostgreSQL and a real RabbitMQ.

The stack is the street office 金牛山街道 (411502008000). Its subject 周家山社区
(411502008001) is a community strictly below the office; 411502003000 is another street of
the same district, which this office's records are none of its business.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests import support
from tests.integration.test_inspection_service import inspection_body

pytestmark = pytest.mark.integration

STREET = "411502008000"        # 金牛山街道: the inspecting office (the stack's home)
COMMUNITY = "411502008001"     # 周家山社区: the subject side
NEIGHBOUR = "411502008002"     # another community of the same street
OTHER_STREET = "411502003000"  # 五星街道: another office


def seed(api):
    """As the office (the default all-roles test user): a subject and a place in the community,
    a routine submitted inspection, a routine draft and a submitted 暗访."""
    subject = api.post("/subjects", {"subject_type": "child_unit", "node": COMMUNITY, "name": "周家山社区"})
    assert subject.status_code == 201, subject.text
    subject = subject.json()
    place = api.post("/places", {"place_type": "public_toilet", "name": "周家山路公厕", "node": COMMUNITY,
                                 "responsible_subject_id": subject["subject_id"]})
    assert place.status_code == 201, place.text
    place = place.json()

    def record(**overrides):
        response = api.post("/inspections", inspection_body(subject, place, **overrides))
        assert response.status_code == 201, response.text
        return response.json()

    return {"subject": subject, "place": place, "routine": record(), "draft": record(submit=False),
            "unannounced": record(kind="unannounced", note="夜间暗访")}


def counts(database_url) -> tuple:
    return tuple(support.scalar(database_url, f"SELECT count(*) FROM {table}") for table in
                 ("inspection_subjects", "inspection_places", "inspection_inspections", "inspection_outbox"))


ACTIONS = {
    "register subject": lambda api, s: api.post("/subjects", {
        "subject_type": "area_unit", "node": COMMUNITY, "name": "周家山小学"}),
    "register place": lambda api, s: api.post("/places", {
        "place_type": "refuse_station", "name": "周家山垃圾站", "node": COMMUNITY}),
    "record inspection": lambda api, s: api.post("/inspections", inspection_body(s["subject"], s["place"])),
    "submit draft": lambda api, s: api.post(f"/inspections/{s['draft']['inspection_id']}/submit"),
    "read inspection": lambda api, s: api.get(f"/inspections/{s['routine']['inspection_id']}"),
    "list inspections": lambda api, s: api.get("/inspections", params={"node": COMMUNITY}),
    "release": lambda api, s: api.post(f"/inspections/{s['unannounced']['inspection_id']}/release"),
}
WRITES = {"register subject", "register place", "record inspection", "submit draft", "release"}

A, I, R, V = "administrator", "inspector", "rectifier", "viewer"
# caller → expected status per action, in the order of ACTIONS:
#   register subject, register place, record inspection, submit draft, read, list, release
# 403 from the HTTP layer where no grant holds the route's role, from the use case where the
# grant does not cover the node; 404 where the caller may not even see the inspection (a 暗访
# before release, or another office's record).
MATRIX = [
    ("anonymous", None, (401, 401, 401, 401, 401, 401, 401)),
    ("administrator of the office", (A, STREET), (201, 201, 403, 403, 200, 200, 200)),
    ("inspector of the office", (I, STREET), (403, 403, 201, 200, 200, 200, 200)),
    ("rectifier of the office", (R, STREET), (403, 403, 403, 403, 200, 200, 403)),
    ("viewer of the office", (V, STREET), (403, 403, 403, 403, 200, 200, 403)),
    ("administrator of the community", (A, COMMUNITY), (201, 201, 403, 403, 200, 200, 404)),
    ("inspector of the community", (I, COMMUNITY), (403, 403, 201, 200, 200, 200, 404)),
    ("rectifier of the community", (R, COMMUNITY), (403, 403, 403, 403, 200, 200, 403)),
    ("viewer of the community", (V, COMMUNITY), (403, 403, 403, 403, 200, 200, 403)),
    ("administrator of another street", (A, OTHER_STREET), (403, 403, 403, 403, 404, 403, 404)),
    ("inspector of another street", (I, OTHER_STREET), (403, 403, 403, 404, 404, 403, 404)),
    ("rectifier of another street", (R, OTHER_STREET), (403, 403, 403, 403, 404, 403, 403)),
    ("viewer of another street", (V, OTHER_STREET), (403, 403, 403, 403, 404, 403, 403)),
    ("viewer of a neighbouring community", (V, NEIGHBOUR), (403, 403, 403, 403, 404, 403, 403)),
]


@pytest.mark.parametrize("who,grant,expected", MATRIX, ids=[row[0] for row in MATRIX])
def test_role_node_action_matrix(inspection_stack, who, grant, expected):
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    state = seed(api)
    caller = api.anonymous() if grant is None else api.as_user("张三", [grant])
    got, unchanged_by_refusals = {}, []
    for action, call in ACTIONS.items():
        before = counts(database_url)
        response = call(caller, state)
        got[action] = response.status_code
        if response.status_code >= 400:
            body = response.json()
            assert body["errors"] and all(e["field"] and e["reason"] for e in body["errors"]), (action, body)
            unchanged_by_refusals.append((action, before == counts(database_url)))
    assert got == dict(zip(ACTIONS, expected))
    assert all(unchanged for _, unchanged in unchanged_by_refusals), unchanged_by_refusals


def test_a_list_shows_only_the_callers_subtrees(inspection_stack):
    api = inspection_stack["api"]
    state = seed(api)
    neighbour = api.post("/subjects", {"subject_type": "child_unit", "node": NEIGHBOUR, "name": "南湾社区"}).json()
    assert api.post("/inspections", inspection_body(neighbour, state["place"], place_id=None,
                                                    checklist={"version": "2010.1", "code": "national-ten-areas"},
                                                    results=[])).status_code == 201
    community = api.as_user("赵敏", [(V, COMMUNITY)])
    assert [s["name"] for s in community.get("/subjects").json()] == ["周家山社区"]
    assert [p["name"] for p in community.get("/places").json()] == ["周家山路公厕"]
    listed = community.get("/inspections").json()
    assert {i["subject_id"] for i in listed} == {state["subject"]["subject_id"]}
    assert community.get(f"/subjects/{neighbour['subject_id']}").status_code == 403
    assert community.get("/subjects", params={"node": NEIGHBOUR}).status_code == 403
    assert community.get("/places", params={"node": STREET}).status_code == 403
    office = api.as_user("王芳", [(V, STREET)])
    assert {s["name"] for s in office.get("/subjects").json()} == {"周家山社区", "南湾社区"}
    assert len(office.get("/inspections").json()) == 4
    elsewhere = api.as_user("孙丽", [(V, OTHER_STREET)])
    assert elsewhere.get("/subjects").json() == [] and elsewhere.get("/inspections").json() == []
    # The checklist catalogue is for every signed-in caller, and nobody else.
    assert elsewhere.get("/checklists").status_code == 200
    assert elsewhere.get("/checklists/2010.1/public-toilet").status_code == 200
    assert api.anonymous().get("/checklists").status_code == 401


def test_the_recorded_actor_is_the_signed_in_one(inspection_stack):
    api = inspection_stack["api"]
    state = seed(api)
    inspector = api.as_user("王芳", [(I, STREET)], subject="u-wangfang")
    recorded = inspector.post("/inspections", inspection_body(state["subject"], state["place"], submit=False))
    assert recorded.status_code == 201, recorded.text
    assert recorded.json()["recorded_by"] == "王芳 (u-wangfang)" and recorded.json()["submitted_by"] is None
    submitted = api.as_user("李强", [(I, COMMUNITY)], subject="u-liqiang").post(
        f"/inspections/{recorded.json()['inspection_id']}/submit")
    assert submitted.json()["submitted_by"] == "李强 (u-liqiang)"
    # Who did it is never the caller's to say.
    forged = inspector.post("/inspections", {**inspection_body(state["subject"], state["place"]),
                                             "recorded_by": "别人"})
    assert forged.status_code == 422 and forged.json()["errors"][0]["field"] == "recorded_by"


def test_a_community_inspector_records_no_unannounced_inspection(inspection_stack):
    """A 暗访 belongs to the inspecting office: someone below it cannot make one it may not see."""
    api = inspection_stack["api"]
    state = seed(api)
    before = counts(inspection_stack["database_url"])
    response = api.as_user("李强", [(I, COMMUNITY)]).post(
        "/inspections", inspection_body(state["subject"], state["place"], kind="unannounced"))
    assert response.status_code == 403 and response.json()["errors"][0]["field"] == "kind"
    assert counts(inspection_stack["database_url"]) == before


def test_unannounced_inspection_stays_with_the_office_until_released(inspection_stack, event_tap):
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    tap = event_tap(("inspection.events", "#"))
    subject = api.post("/subjects", {"subject_type": "child_unit", "node": COMMUNITY, "name": "周家山社区"}).json()
    place = api.post("/places", {"place_type": "public_toilet", "name": "周家山路公厕", "node": COMMUNITY,
                                 "responsible_subject_id": subject["subject_id"]}).json()
    office_inspector = api.as_user("王芳", [(I, STREET)])
    office_viewer = api.as_user("周敏", [(V, STREET)])
    rectifier = api.as_user("赵敏", [(R, COMMUNITY)])
    viewer = api.as_user("钱进", [(V, COMMUNITY)])
    community_admin = api.as_user("孙丽", [(A, COMMUNITY), (I, COMMUNITY)])
    planned = datetime.now(timezone.utc) + timedelta(hours=12)  # a planned visit: its date is the secret

    draft = office_inspector.post("/inspections", inspection_body(
        subject, place, kind="unannounced", submit=False, inspectors=["王芳", "李强"], note="周五夜间暗访，勿通知社区",
        inspected_at=planned.isoformat()))
    assert draft.status_code == 201, draft.text
    inspection_id = draft.json()["inspection_id"]

    def hidden_from_the_subject_side():
        for who in (rectifier, viewer, community_admin):
            assert who.get(f"/inspections/{inspection_id}").status_code == 404
            for params in ({}, {"kind": "unannounced"}, {"kind": "unannounced", "status": "draft"},
                           {"subject_id": subject["subject_id"]}, {"node": COMMUNITY}):
                assert who.get("/inspections", params=params).json() == [], params
        # Nor can the subject side touch it, or learn of it from a different refusal.
        assert community_admin.put(f"/inspections/{inspection_id}", inspection_body(
            subject, place, kind="unannounced", submit=False)).status_code == 404
        assert community_admin.post(f"/inspections/{inspection_id}/submit").status_code == 404
        assert community_admin.post(f"/inspections/{inspection_id}/release").status_code == 404

    hidden_from_the_subject_side()
    assert office_viewer.get(f"/inspections/{inspection_id}").json()["note"] == "周五夜间暗访，勿通知社区"
    assert office_inspector.post(f"/inspections/{inspection_id}/release").status_code == 409  # a draft

    submitted = office_inspector.put(f"/inspections/{inspection_id}", inspection_body(
        subject, place, kind="unannounced", inspectors=["王芳", "李强"], note="周五夜间暗访，勿通知社区"))
    assert submitted.status_code == 200 and submitted.json()["status"] == "submitted", submitted.text
    tap.wait_for("inspection_submitted")
    hidden_from_the_subject_side()

    assert office_viewer.post(f"/inspections/{inspection_id}/release").status_code == 403
    released = office_inspector.post(f"/inspections/{inspection_id}/release")
    assert released.status_code == 200, released.text
    assert released.json()["released_at"] and released.json()["released_by"].startswith("王芳")
    again = api.as_user("吴刚", [(A, STREET)]).post(f"/inspections/{inspection_id}/release")
    assert again.status_code == 200
    assert again.json()["released_at"] == released.json()["released_at"]
    assert again.json()["released_by"] == released.json()["released_by"]

    [event] = tap.wait_for("inspection_released")
    assert event["payload"]["inspection_id"] == inspection_id
    assert event["payload"]["inspecting_node"] == STREET and event["payload"]["subject"]["node"] == COMMUNITY
    support.wait_until(lambda: support.scalar(
        database_url, "SELECT count(*) FROM inspection_outbox WHERE published_at IS NULL") == 0,
        message="outbox relayed")
    assert [e["event_type"] for e in tap.drain()].count("inspection_released") == 1
    assert support.scalar(database_url, "SELECT count(*) FROM inspection_outbox "
                                        "WHERE event_type = 'inspection_released'") == 1

    for who in (rectifier, viewer, community_admin):
        seen = who.get(f"/inspections/{inspection_id}")
        assert seen.status_code == 200
        seen = seen.json()
        assert seen["inspectors"] == [] and seen["note"] is None
        assert seen["recorded_by"] is None and seen["submitted_by"] is None and seen["released_by"] is None
        assert {"inspectors", "note"} <= set(seen["redacted"])
        assert [r["item_code"] for r in seen["results"]] == ["PT-02", "PT-03", "PT-01"]
        assert seen["results"][0]["note"] == "便池有积粪"  # the finding itself is theirs to fix
        [listed] = who.get("/inspections", params={"kind": "unannounced"}).json()
        assert listed["inspectors"] == [] and listed["note"] is None
        assert "王芳" not in str(listed) and "李强" not in str(listed) and "暗访，勿通知" not in str(listed)
    full = office_viewer.get(f"/inspections/{inspection_id}").json()
    assert full["inspectors"] == ["王芳", "李强"] and full["note"] == "周五夜间暗访，勿通知社区"
    assert full["redacted"] == []


def test_only_a_submitted_unannounced_inspection_is_released(inspection_stack, event_tap):
    api, database_url = inspection_stack["api"], inspection_stack["database_url"]
    tap = event_tap(("inspection.events", "inspection_released"))
    state = seed(api)
    routine = api.post(f"/inspections/{state['routine']['inspection_id']}/release")
    assert routine.status_code == 409 and routine.json()["errors"][0]["field"] == "kind"
    draft = api.post("/inspections", inspection_body(state["subject"], state["place"], kind="unannounced",
                                                     submit=False)).json()
    premature = api.post(f"/inspections/{draft['inspection_id']}/release")
    assert premature.status_code == 409 and premature.json()["errors"][0]["field"] == "status"
    assert api.post("/inspections/no-such-inspection/release").status_code == 404
    assert support.scalar(database_url, "SELECT count(*) FROM inspection_inspections "
                                        "WHERE released_at IS NOT NULL") == 0
    assert tap.drain() == []


def test_routine_inspections_are_the_subjects_to_see_at_once(inspection_stack):
    api = inspection_stack["api"]
    state = seed(api)
    rectifier = api.as_user("赵敏", [(R, COMMUNITY)])
    routine = rectifier.get(f"/inspections/{state['routine']['inspection_id']}").json()
    assert routine["inspectors"] == ["王芳", "李强"] and routine["redacted"] == []
    assert {i["kind"] for i in rectifier.get("/inspections").json()} == {"routine"}


def test_a_draft_is_never_shown_to_the_subject_side(inspection_stack):
    """A draft (here a routine one) is the office's work in progress: the subject's rectifiers
    and viewers neither read nor list it; the office and the subject's inspectors do."""
    api = inspection_stack["api"]
    state = seed(api)
    draft_id = state["draft"]["inspection_id"]
    for who in (api.as_user("赵敏", [(R, COMMUNITY)]), api.as_user("钱进", [(V, COMMUNITY)]),
                api.as_user("孙丽", [(A, COMMUNITY)])):
        assert who.get(f"/inspections/{draft_id}").status_code == 404  # as if it did not exist
        for params in ({}, {"status": "draft"}, {"subject_id": state["subject"]["subject_id"]}, {"node": COMMUNITY}):
            listed = who.get("/inspections", params=params)
            assert listed.status_code == 200, listed.text
            assert draft_id not in {i["inspection_id"] for i in listed.json()}, params
            assert all(i["status"] == "submitted" for i in listed.json()), params
        # The submitted routine check is theirs to see at once.
        assert who.get(f"/inspections/{state['routine']['inspection_id']}").status_code == 200
    for who in (api.as_user("王芳", [(I, STREET)]), api.as_user("周敏", [(V, STREET)]),
                api.as_user("李强", [(I, COMMUNITY)])):
        assert who.get(f"/inspections/{draft_id}").status_code == 200
        assert draft_id in {i["inspection_id"] for i in who.get("/inspections", params={"status": "draft"}).json()}


def test_the_public_metrics_count_an_unannounced_inspection_only_once_released(inspection_stack):
    """/metrics answers anyone: a kind="unannounced" sample moving at submission would tell the
    subject of a visit. A 暗访 is counted (and its score observed) when released, once."""
    from prometheus_client import REGISTRY

    def sample(name, labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    def counted():
        return (sample("chuangwei_inspections_submitted_total", {"kind": "unannounced"}),
                sample("chuangwei_inspections_submitted_total", {"kind": "routine"}),
                sample("chuangwei_inspection_score_count", {"checklist": "public-toilet"}))

    api = inspection_stack["api"]
    before = counted()
    state = seed(api)  # one routine submitted, one routine draft, one 暗访 submitted
    assert counted() == (before[0], before[1] + 1, before[2] + 1)
    public = api.anonymous().get("/metrics")
    assert public.status_code == 200
    line = 'chuangwei_inspections_submitted_total{kind="unannounced"}'
    shown = [x for x in public.text.splitlines() if x.startswith(line)]
    assert all(float(x.split()[-1]) == before[0] for x in shown), shown
    released = api.post(f"/inspections/{state['unannounced']['inspection_id']}/release")
    assert released.status_code == 200, released.text
    assert counted() == (before[0] + 1, before[1] + 1, before[2] + 2)
    assert api.post(f"/inspections/{state['unannounced']['inspection_id']}/release").status_code == 200
    assert counted() == (before[0] + 1, before[1] + 1, before[2] + 2)  # a repeated release counts nothing
