"""Open311 intake against the real broker and database: a 数字城管 platform posts cases as it
would (form-encoded, with its machine token), they land in the responsible subject's ledger
with the category's time limit, duplicates are merged, the reporter follows the status, and
residents' anonymous reports are bounded and wait for the office."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from services.inspection.service import InspectionService
from services.intake.service import IntakeService
from services.tasks.service import TasksService
from tests import support

pytestmark = pytest.mark.integration

STREET = "411502008000"
COMMUNITY = "411502008001"
PHOTO = {"uri": "https://photos.example.cn/after.jpg", "sha256": "ab" * 32}


@pytest.fixture
def stack(amqp_uri, database_url):
    ports = {name: support.free_port() for name in ("inspection", "tasks", "intake")}
    config = support.base_config(amqp_uri, database_url,
                                 WEB_ADDRESSES={n: f"127.0.0.1:{p}" for n, p in ports.items()},
                                 TASKS_SWEEP_INTERVAL=0, INTAKE_PUBLIC_MAX_PER_WINDOW=2)
    with support.running_services(config, InspectionService, TasksService, IntakeService):
        urls = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
        office = support.ApiClient(urls["inspection"])
        subject = office.post("/subjects", {"subject_type": "child_unit", "node": COMMUNITY,
                                            "name": "周家山社区"}).json()
        place = office.post("/places", {"place_type": "public_toilet", "name": "周家山路公厕", "node": COMMUNITY,
                                        "responsible_subject_id": subject["subject_id"]}).json()
        record = office.post("/inspections", {
            "kind": "routine", "subject_id": subject["subject_id"], "place_id": place["place_id"],
            "checklist": {"version": "2010.1", "code": "public-toilet"}, "inspectors": ["王芳"],
            "inspected_at": datetime.now().astimezone().isoformat(), "results": []})
        assert record.status_code == 201, record.text
        # Intake learns subjects and places from inspections.
        support.wait_until(lambda: support.scalar(database_url, "select count(*) from intake_places") == 1,
                           message="intake to learn the place")
        yield {**urls, "subject": subject, "place": place, "database_url": database_url}


def platform(url: str) -> support.ApiClient:
    return support.ApiClient(url, token=support.token("信阳市数字城管平台", [("platform", "411502000000")],
                                                      kind="machine"))


def post_form(client: support.ApiClient, form: dict, path: str = "/open311/v2/requests.json"):
    return client.session.post(client.base_url + path, data=form, timeout=30)


def case_of(client: support.ApiClient, case_id: str) -> dict:
    response = client.get(f"/open311/v2/requests/{case_id}.json")
    assert response.status_code == 200, response.text
    [case] = response.json()
    return case


def task_of(stack, case_id: str) -> dict:
    tasks = support.ApiClient(stack["tasks"])
    return support.wait_until(lambda: (r := tasks.get(f"/tasks/{case_id}")).status_code == 200 and r.json(),
                              message=f"the task of case {case_id}")


def test_a_platform_case_lands_in_the_ledger_with_its_time_limit_and_the_reporter_follows_it(stack):
    client = platform(stack["intake"])
    services = support.ApiClient(stack["intake"], token=None).get("/open311/v2/services.json")
    assert services.status_code == 200
    assert {"service_code": "0106", "service_name": "公厕不洁"}.items() <= next(
        s for s in services.json() if s["service_code"] == "0106").items()

    created = post_form(client, {"service_code": "0106", "description": "公厕有积粪，无人保洁",
                                 "address_id": stack["place"]["place_id"], "lat": "32.1234", "long": "114.0567",
                                 "media_url": "https://szcg.example.cn/p/1.jpg", "email": "not-kept@example.cn"})
    assert created.status_code == 201, created.text
    [receipt] = created.json()
    case_id = receipt["service_request_id"]
    assert receipt["service_notice"].startswith("已受理，派遣至周家山社区，处置时限2小时")

    task = task_of(stack, case_id)
    assert (task["inspection_kind"], task["inspecting_node"], task["status"], task["light"]) == (
        "digital_city", STREET, "open", "green")
    assert task["responsible"] == {"subject_id": stack["subject"]["subject_id"], "node": COMMUNITY,
                                   "name": "周家山社区"}
    assert (task["item_code"], task["item_text"], task["category_name"]) == ("0106", "公厕不洁", "市容环境")
    assert datetime.fromisoformat(task["deadline_at"]) - datetime.fromisoformat(task["found_at"]) == timedelta(hours=2)
    # The reporter's personal fields are not kept.
    assert support.scalar(stack["database_url"], "select count(*) from intake_cases where client is not null") == 0

    case = support.wait_until(lambda: (c := case_of(client, case_id))["case_status"] == "open" and c,
                              message="the case to follow its task")
    assert case["status"] == "open" and case["agency_responsible"] == "周家山社区"
    assert case["status_notes"].startswith("已派遣至周家山社区，限")
    assert datetime.fromisoformat(case["expected_datetime"]) == datetime.fromisoformat(task["deadline_at"])

    # The responsible subject fixes it, the office verifies: the reporter sees it closed.
    tasks = support.ApiClient(stack["tasks"])
    rectifier = tasks.as_user("周家山社区联络员", [("rectifier", COMMUNITY)])
    inspector = tasks.as_user("王芳", [("inspector", STREET)])
    assert rectifier.post(f"/tasks/{case_id}/start", {"note": "已安排保洁"}).status_code == 200
    assert rectifier.post(f"/tasks/{case_id}/fix", {"note": "已清理消毒", "after_photos": [PHOTO]}).status_code == 200
    verified = inspector.post(f"/tasks/{case_id}/verify", {"note": "复查合格"})
    assert verified.status_code == 200, verified.text
    closed = support.wait_until(lambda: (c := case_of(client, case_id))["status"] == "closed" and c,
                                message="the case to close")
    assert (closed["case_status"], closed["status_notes"]) == ("closed", "已核查结案")

    listed = client.get("/open311/v2/requests.json", params={"status": "closed"}).json()
    assert [c["service_request_id"] for c in listed] == [case_id]
    assert client.get("/open311/v2/requests.json", params={"status": "open"}).json() == []


def test_a_second_report_of_the_same_problem_is_merged_and_opens_no_task(stack):
    client = platform(stack["intake"])
    form = {"service_code": "0101", "description": "周家山路12号有暴露垃圾",
            "address_string": "浉河区金牛山街道周家山社区周家山路12号"}
    first = post_form(client, form).json()[0]["service_request_id"]
    again = post_form(client, {**form, "description": "周家山路12号门口垃圾没人管"})
    assert again.status_code == 201, again.text
    [receipt] = again.json()
    duplicate = receipt["service_request_id"]
    assert receipt["service_notice"].startswith(f"与案件 {first} 为同一问题，已合并处理")
    # Another category at the same address is another problem: its task also proves the
    # duplicate's absence (case_reported events reach the ledger in order).
    marker = post_form(client, {**form, "service_code": "0103", "description": "路面有油污"}).json()[0]
    task_of(stack, marker["service_request_id"])
    task_of(stack, first)
    assert support.ApiClient(stack["tasks"]).get(f"/tasks/{duplicate}").status_code == 404

    merged = case_of(client, duplicate)
    assert (merged["case_status"], merged["merged_into"], merged["division_code"]) == ("merged", first, COMMUNITY)
    assert merged["status_notes"].startswith(f"与案件 {first} 为同一问题，已合并：")


@pytest.mark.parametrize("form,field,status", [
    ({"service_code": "9999", "description": "x", "division_code": COMMUNITY}, "service_code", 422),
    ({"service_code": "0101", "description": "x"}, "address_string", 422),
    ({"service_code": "0101", "description": "x", "lat": "32.1"}, "long", 422),
    ({"service_code": "0101", "description": "x", "lat": "32.1", "long": "114.0"}, "address_string", 422),
    ({"service_code": "0101", "description": "x", "division_code": "411503000000"}, "division_code", 422),
    ({"service_code": "0101", "description": "x", "address_string": "平桥区某路"}, "address_string", 422),
    ({"service_code": "0101", "description": "x", "address_id": "no-such-place"}, "address_id", 422),
    ({"service_code": "0101", "description": "   ", "division_code": COMMUNITY}, "description", 422),
    ({"service_code": "0101", "description": "x", "division_code": COMMUNITY, "lat": "north", "long": "1"}, "lat", 422),
    ({"service_code": "0101", "description": "x", "division_code": COMMUNITY, "api_key": "k"}, "api_key", 422),
    ({"service_code": "0101", "description": "x" * 4001, "division_code": COMMUNITY}, "description", 422),
])
def test_bad_input_is_refused_naming_the_field_and_changes_nothing(stack, form, field, status):
    response = post_form(platform(stack["intake"]), form)
    assert response.status_code == status, response.text
    assert field in [e["field"] for e in response.json()["errors"]], response.text
    assert support.scalar(stack["database_url"], "select count(*) from intake_cases") == 0


def test_who_may_post_cases(stack):
    form = {"service_code": "0101", "description": "x", "division_code": COMMUNITY}
    anonymous = support.ApiClient(stack["intake"], token=None)
    assert post_form(anonymous, form).status_code == 401
    # A person's roles do not make a platform; a platform's grant elsewhere reads nothing here.
    office = support.ApiClient(stack["intake"], token=support.token("王芳", [("administrator", STREET)]))
    refused = post_form(office, form)
    assert (refused.status_code, refused.json()["errors"][0]["field"]) == (403, "role")
    other = support.ApiClient(stack["intake"], token=support.token("平桥平台", [("platform", "411503000000")]))
    created = post_form(platform(stack["intake"]), form).json()[0]["service_request_id"]
    assert other.get(f"/open311/v2/requests/{created}.json").status_code == 403
    assert other.get("/open311/v2/requests.json").json() == []
    # JSON is accepted too; any other content type is not.
    as_json = platform(stack["intake"]).post("/open311/v2/requests.json",
                                             {**form, "service_code": "0201", "description": "小广告"})
    assert as_json.status_code == 201, as_json.text
    text = platform(stack["intake"]).session.post(stack["intake"] + "/open311/v2/requests.json", data="x=1",
                                                  headers={"Content-Type": "text/plain"}, timeout=30)
    assert (text.status_code, text.json()["errors"][0]["field"]) == (415, "Content-Type")


def test_a_residents_report_is_bounded_waits_for_the_office_and_is_followed_by_its_id(stack):
    public = support.ApiClient(stack["intake"], token=None)
    path = "/open311/v2/public/requests.json"
    form = {"service_code": "0201", "description": "电线杆上贴满小广告",
            "address_string": "金牛山街道周家山社区周家山路3号"}
    created = post_form(public, form, path)
    assert created.status_code == 201, created.text
    case_id = created.json()[0]["service_request_id"]
    same = post_form(public, {**form, "address_string": "周家山社区周家山路5号"}, path)
    assert (same.status_code, same.json()["errors"][0]["field"]) == (409, "description")
    second = post_form(public, {**form, "description": "垃圾桶满了", "service_code": "0107"}, path)
    assert second.status_code == 201, second.text
    third = post_form(public, {**form, "description": "又有垃圾", "service_code": "0102"}, path)
    assert (third.status_code, third.json()["errors"][0]["field"]) == (429, "client")
    assert int(third.headers["Retry-After"]) > 0

    seen = public.get(f"/open311/v2/public/requests/{case_id}.json")
    assert seen.status_code == 200
    [status] = seen.json()
    assert (status["status"], status["status_notes"]) == ("open", "已收到，待受理")
    assert "description" not in status
    assert public.get("/open311/v2/public/requests/00000000-0000-0000-0000-000000000000.json").status_code == 404

    # Not routed until the office accepts it; a rectifier may not accept.
    office = support.ApiClient(stack["intake"])
    rectifier = office.as_user("周家山社区联络员", [("rectifier", COMMUNITY)])
    assert rectifier.post(f"/cases/{case_id}/accept", {}).status_code == 403
    inspector = office.as_user("王芳", [("inspector", STREET)])
    accepted = inspector.post(f"/cases/{case_id}/accept", {"note": "已核实"})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["case_status"] == "routed"
    assert inspector.post(f"/cases/{case_id}/accept", {}).status_code == 409
    task = task_of(stack, case_id)
    assert (task["inspection_kind"], task["item_text"]) == ("citizen_report", "乱张贴")
    # The time limit runs from acceptance (24 h for 乱张贴).
    accepted_deadline = datetime.fromisoformat(accepted.json()["expected_datetime"])
    assert datetime.fromisoformat(task["deadline_at"]) == accepted_deadline

    refused = inspector.post(f"/cases/{second.json()[0]['service_request_id']}/reject", {"reason": "已由环卫处理"})
    assert refused.status_code == 200, refused.text
    assert (refused.json()["status"], refused.json()["status_notes"]) == ("closed", "不予受理：已由环卫处理")


def test_an_unaccepted_anonymous_report_never_swallows_a_platforms_case(stack):
    """Issue 27, finding 2: a resident's report waiting for acceptance does not absorb a
    platform's case of the same problem; the platform's case is routed at once, and refusing
    the resident's report leaves it untouched. A merge made before this rule is undone when
    the report it went into is refused."""
    public = support.ApiClient(stack["intake"], token=None)
    form = {"service_code": "0101", "description": "周家山路12号有暴露垃圾",
            "address_string": "浉河区金牛山街道周家山社区周家山路12号"}
    junk = post_form(public, form, "/open311/v2/public/requests.json")
    assert junk.status_code == 201, junk.text
    junk_id = junk.json()[0]["service_request_id"]

    client = platform(stack["intake"])
    official = post_form(client, {**form, "description": "数字城管：周家山路12号垃圾堆积"})
    assert official.status_code == 201, official.text
    [receipt] = official.json()
    official_id = receipt["service_request_id"]
    assert receipt["service_notice"].startswith("已受理，派遣至周家山社区"), receipt
    task_of(stack, official_id)
    assert case_of(client, official_id)["merged_into"] is None

    # A merge as the old rule made it: another platform case swallowed by the waiting report.
    swallowed_id = str(uuid.uuid4())
    engine = create_engine(stack["database_url"])
    try:
        with engine.begin() as conn:
            conn.execute(text("""
                insert into intake_cases (id, source, channel, submitted_by, service_code, service_name, group_code,
                    group_name, severity, description, content_digest, address, node, reported_at, status,
                    merged_into, duplicates, updated_at)
                select :new_id, 'digital_city', '信阳市数字城管平台', 'user-信阳市数字城管平台', service_code,
                    service_name, group_code, group_name, severity, '数字城管：旧规则下被合并', content_digest,
                    address, node, reported_at, 'merged', id, 0, updated_at from intake_cases where id = :junk"""),
                         {"new_id": swallowed_id, "junk": junk_id})
    finally:
        engine.dispose()
    assert case_of(client, swallowed_id)["status_notes"].startswith(f"与案件 {junk_id} 为同一问题")

    office = support.ApiClient(stack["intake"]).as_user("王芳", [("inspector", STREET)])
    refused = office.post(f"/cases/{junk_id}/reject", {"reason": "重复举报，已由数字城管受理"})
    assert refused.status_code == 200, refused.text
    assert refused.json()["case_status"] == "rejected"
    kept = case_of(client, official_id)
    assert kept["case_status"] != "rejected" and kept["status"] == "open", kept
    released = case_of(client, swallowed_id)
    assert (released["case_status"], released["merged_into"]) == ("routed", None), released
    assert released["status_notes"] != "不予受理：重复举报，已由数字城管受理"
    assert task_of(stack, swallowed_id)["status"] == "open"


@pytest.mark.parametrize("requested", ["2000-01-01T00:00:00+08:00", "backdated 8 days", "tomorrow"])
def test_a_platform_cannot_backdate_or_postdate_a_case(stack, requested):
    """Issue 27: `requested_datetime: 2000-01-01` from a platform was accepted, overdue at once,
    escalated and scored. A platform's instant is bounded like a person's."""
    now = datetime.now().astimezone()
    value = {"backdated 8 days": (now - timedelta(days=8)).isoformat(),
             "tomorrow": (now + timedelta(days=1)).isoformat()}.get(requested, requested)
    form = {"service_code": "0101", "description": "周家山路有暴露垃圾", "division_code": COMMUNITY,
            "requested_datetime": value}
    response = post_form(platform(stack["intake"]), form)
    assert response.status_code == 422, response.text
    [error] = [e for e in response.json()["errors"] if e["field"] == "requested_datetime"]
    assert error["reason"].startswith(("不能早于", "不能晚于")), error
    assert support.scalar(stack["database_url"], "select count(*) from intake_cases") == 0
    # A case the platform registered an hour ago is taken with that time.
    recent = (now - timedelta(hours=1)).replace(microsecond=0)
    accepted = post_form(platform(stack["intake"]), {**form, "requested_datetime": recent.isoformat()})
    assert accepted.status_code == 201, accepted.text
    case = case_of(platform(stack["intake"]), accepted.json()[0]["service_request_id"])
    assert datetime.fromisoformat(case["requested_datetime"]) == recent
