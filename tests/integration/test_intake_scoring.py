"""The city scheme's composite with its 数字城管 source fed by cases (issue 16): 暗访 40 %,
明查 50 %, 数字城管 10 % on 1000 points, checked against a hand computation. Real broker,
real database; the clock is moved to let a case go overdue."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.contracts.periods import Period, PeriodKind
from services.inspection.service import InspectionService
from services.intake.service import IntakeService
from services.plumbing import clock
from services.scoring.service import ScoringService
from services.tasks.service import TasksService
from tests import support

pytestmark = pytest.mark.integration

STREET = "411502008000"
COMMUNITY = "411502008001"
PHOTO = {"uri": "https://photos.example.cn/after.jpg", "sha256": "cd" * 32}


@pytest.fixture
def city_scheme(amqp_uri, database_url):
    ports = {name: support.free_port() for name in ("inspection", "tasks", "intake", "scoring")}
    config = support.base_config(amqp_uri, database_url,
                                 WEB_ADDRESSES={n: f"127.0.0.1:{p}" for n, p in ports.items()},
                                 TASKS_SWEEP_INTERVAL=0, SCORING_POLICY="city")
    clock.reset()
    try:
        with support.running_services(config, InspectionService, TasksService, IntakeService, ScoringService):
            yield {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    finally:
        clock.reset()


def test_cases_feed_the_ten_percent_source_of_the_city_composite(city_scheme):
    inspection = support.ApiClient(city_scheme["inspection"])
    subject = inspection.post("/subjects", {"subject_type": "child_unit", "node": COMMUNITY,
                                            "name": "周家山社区"}).json()
    place = inspection.post("/places", {"place_type": "public_toilet", "name": "周家山路公厕", "node": COMMUNITY,
                                        "responsible_subject_id": subject["subject_id"]}).json()
    now = datetime.now(timezone.utc)
    scores = {}
    for kind, results in (("unannounced", []), ("announced", [{"item_code": "PT-02", "findings": 1}])):
        record = inspection.post("/inspections", {
            "kind": kind, "subject_id": subject["subject_id"], "place_id": place["place_id"],
            "checklist": {"version": "2010.1", "code": "public-toilet"}, "inspectors": ["王芳"],
            "inspected_at": (now - timedelta(minutes=5)).isoformat(), "results": results})
        assert record.status_code == 201, record.text
        scores[kind] = record.json()["score"]
    assert scores["unannounced"] == 100.0 and scores["announced"] < 100.0

    platform = support.ApiClient(city_scheme["intake"], token=support.token(
        "数字城管平台", [("platform", STREET)], kind="machine"))
    cases = []
    for code, text in (("0101", "周家山路有暴露垃圾"), ("0501", "周家山路口占道经营")):
        created = support.wait_until(lambda: (r := platform.post("/open311/v2/requests.json", {
            "service_code": code, "description": text, "division_code": COMMUNITY})).status_code == 201 and r,
            message="intake to know the community's subject")
        cases.append(created.json()[0]["service_request_id"])
    on_time, overdue = cases

    tasks = support.ApiClient(city_scheme["tasks"])
    for case_id in cases:
        support.wait_until(lambda: tasks.get(f"/tasks/{case_id}").status_code == 200, message="the case's task")
    rectifier = tasks.as_user("周家山社区联络员", [("rectifier", COMMUNITY)])
    inspector = tasks.as_user("李强", [("inspector", STREET)])
    assert rectifier.post(f"/tasks/{on_time}/start", {"note": "已安排"}).status_code == 200
    assert rectifier.post(f"/tasks/{on_time}/fix", {"note": "已清运", "after_photos": [PHOTO]}).status_code == 200
    assert inspector.post(f"/tasks/{on_time}/verify", {"note": "复查合格"}).status_code == 200
    # Three hours on, the 占道经营 case (2 h limit) is overdue: the sweep urges it.
    clock.advance(timedelta(hours=3))
    swept = tasks.as_user("管理员", [("administrator", STREET)]).post("/sweeps")
    assert swept.status_code == 201, swept.text

    month = Period.containing(PeriodKind.month, now).key
    scoring = support.ApiClient(city_scheme["scoring"])

    def settled():
        response = scoring.get(f"/subjects/{COMMUNITY}/scores/{month}")
        if response.status_code != 200:
            return None
        detail = response.json()
        groups = {g["name"]: g for g in detail["explain"]["source_weights"]}
        # Every source settled: the 明查 inspection's event may be consumed after the cases'.
        return detail if (groups["数字城管"]["inspections"] == 2 and groups["数字城管"]["mean"] == 500
                          and groups["暗访"]["inspections"] == 1 and groups["明查"]["inspections"] == 1) else None

    detail = support.wait_until(settled, timeout=30, message="both cases in the 数字城管 source, and both inspections")
    # By hand, on 1000 points: 暗访 100 → 1000, 明查 s → 10 s, cases (100 + 0) / 2 = 50 → 500.
    expected = 0.4 * 1000 + 0.5 * scores["announced"] * 10 + 0.1 * 500
    assert detail["score"] == pytest.approx(expected, abs=0.005)
    groups = {g["name"]: (g["weight"], g["inspections"]) for g in detail["explain"]["source_weights"]}
    assert groups == {"暗访": (40, 1), "明查": (50, 1), "数字城管": (10, 2)}
    # The explanation names the cases.
    named = {i["inspection_id"]: (i["kind"], i["score"]) for i in detail["explain"]["inspections"]
             if i["kind"] == "digital_city"}
    assert named == {on_time: ("digital_city", 100.0), overdue: ("digital_city", 0.0)}
