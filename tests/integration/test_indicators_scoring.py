"""The measured indicators in a scoring policy (issue 17), through the real broker and database:
inspection, indicators and scoring in one stack. With a street policy that weighs residents'
satisfaction (群众满意率) at 20 % and vetoes on vector density (病媒生物密度), a closed survey wave
shows up in the area's score with the weight computed by hand, a failing vector month vetoes
the area's figure with the Chinese reason and a later passing revision lifts it. With the
shipped default policy both events change nothing."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import yaml

from services.contracts.nodes import Tier
from services.contracts.periods import CST, Period, PeriodKind
from services.indicators.service import IndicatorsService
from services.inspection.service import InspectionService
from services.scoring import domain
from services.scoring.service import ScoringService
from tests import support

pytestmark = pytest.mark.integration

STREET = "411502008000"
COMMUNITY = "411502008001"   # 周家山社区
QUESTIONNAIRE = {
    "code": "residents-2026", "title": "群众满意度调查问卷", "threshold": 0.9,
    "items": [
        {"code": "Q1", "text": "您对辖区公厕的卫生状况是否满意？", "place_type": "public_toilet",
         "scale": [{"value": "5", "label": "满意"}, {"value": "1", "label": "不满意"}], "satisfied": ["5"]},
        {"code": "Q2", "text": "您对背街小巷的环境卫生是否满意？", "place_type": "back_alley",
         "scale": [{"value": "5", "label": "满意"}, {"value": "1", "label": "不满意"}], "satisfied": ["5"]},
    ]}


def indicators_policy(path) -> str:
    """The shipped street scheme with both indicators enabled: inspections 80 %, satisfaction 20 %,
    a failing vector month vetoes."""
    document = domain.load_shipped_policy("street", Tier.street).model_dump(mode="json")
    document.update(policy_id="street-indicators", source_weights=[
        {"name": "检查", "kinds": ["routine", "announced", "unannounced"], "weight": 80},
        {"name": "群众满意率", "kinds": ["satisfaction_survey"], "weight": 20}])
    document["vetoes"]["vector_density"] = {"verdicts": ["fail"]}
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return str(path)


@pytest.fixture(params=["indicators", "default"])
def stack(request, amqp_uri, database_url, tmp_path):
    ports = {name: support.free_port() for name in ("inspection", "indicators", "scoring")}
    policy = indicators_policy(tmp_path / "policy.yaml") if request.param == "indicators" else "street"
    config = support.base_config(amqp_uri, database_url,
                                 WEB_ADDRESSES={n: f"127.0.0.1:{p}" for n, p in ports.items()},
                                 SCORING_POLICY=policy)
    with support.running_services(config, InspectionService, IndicatorsService, ScoringService):
        yield request.param, {n: support.ApiClient(f"http://127.0.0.1:{p}") for n, p in ports.items()}


def inspect_the_community(inspection: support.ApiClient, now: datetime) -> float:
    subject = inspection.post("/subjects", {"subject_type": "child_unit", "node": COMMUNITY,
                                            "name": "周家山社区"}).json()
    place = inspection.post("/places", {"place_type": "public_toilet", "name": "周家山路公厕", "node": COMMUNITY,
                                        "responsible_subject_id": subject["subject_id"]}).json()
    record = inspection.post("/inspections", {
        "kind": "routine", "subject_id": subject["subject_id"], "place_id": place["place_id"],
        "checklist": {"version": "2010.1", "code": "public-toilet"}, "inspectors": ["王芳"],
        "inspected_at": (now - timedelta(minutes=5)).isoformat(),
        "results": [{"item_code": "PT-02", "findings": 1}]})
    assert record.status_code == 201, record.text
    return record.json()["score"]


def close_a_wave(indicators: support.ApiClient, month: str) -> None:
    """周家山, 4 respondents: Q1 satisfied 2 of 4, Q2 4 of 4 → 6 of 8 answers = 0.75."""
    admin = indicators.as_user("街道管理员", [("administrator", STREET)])
    interviewer = indicators.as_user("王芳", [("inspector", STREET)])
    assert admin.post("/questionnaires", QUESTIONNAIRE).status_code == 201
    created = interviewer.post("/surveys", {
        "questionnaire": {"code": "residents-2026", "version": 1}, "period": month, "seed": 7,
        "areas": [{"node": COMMUNITY, "frame_size": 100, "sample_size": 4}]})
    assert created.status_code == 201, created.text
    survey = created.json()
    for index, respondent in enumerate(survey["respondents"]):
        answered = interviewer.post(f"/surveys/{survey['survey_id']}/responses", {
            "respondent_id": respondent["respondent_id"],
            "answers": [{"item_code": "Q1", "value": "5" if index < 2 else "1"}, {"item_code": "Q2", "value": "5"}]})
        assert answered.status_code == 201, answered.text
    closed = interviewer.post(f"/surveys/{survey['survey_id']}/close")
    assert closed.status_code == 200, closed.text
    figures = indicators.get(f"/surveys/{survey['survey_id']}/satisfaction").json()["areas"]
    assert [(a["area"], a["rate"], a["satisfied"], a["answers"]) for a in figures] == [(COMMUNITY, 0.75, 6, 8)]


def density_form(key: str, month: str, day: str, readings) -> dict:
    return {"idempotency_key": key, "area": COMMUNITY, "period": month, "source": "浉河区疾病预防控制中心",
            "readings": [{"species": s, "method": m, "value": v, "sampled_on": day} for s, m, v in readings]}


# rat 2.0/3 = 0.67, mosquito 7/5 = 1.4, fly 7.2/6 = 1.2, cockroach 2.4/3 = 0.8: two over the level → fail.
FAILING = [("rat", "powder", 2.0), ("mosquito", "breteau", 7), ("fly", "fly_rooms", 7.2),
           ("cockroach", "cockroach_rooms", 2.4)]
# Then mosquito (7 + 1)/2 = 4 → 0.8, fly (7.2 + 2.4)/2 = 4.8 → 0.8: every species at the level → pass.
LIFTING = [("mosquito", "breteau", 1), ("fly", "fly_rooms", 2.4)]


def test_indicators_weigh_in_only_where_the_policy_says_so(stack):
    variant, api = stack
    now = datetime.now(timezone.utc)
    month = Period.containing(PeriodKind.month, now).key
    today = now.astimezone(CST).date().isoformat()
    scoring = api["scoring"]
    inspected = inspect_the_community(api["inspection"], now)
    assert inspected < 100

    def figure(key=month):
        response = scoring.get(f"/subjects/{COMMUNITY}/scores/{key}")
        return response.json() if response.status_code == 200 else None

    first = support.wait_until(lambda: figure(), message="the inspection's score")
    assert first["score"] == inspected

    close_a_wave(api["indicators"], month)
    clerk = api["indicators"].as_user("王芳", [("inspector", STREET)])
    failing = clerk.post("/vector/forms", density_form("cdc-1", month, today, FAILING))
    assert failing.status_code == 201 and failing.json()["verdict"]["verdict"] == "fail", failing.text

    if variant == "default":
        support.wait_consumed(scoring, "scoring", "satisfaction_published", 1)
        support.wait_consumed(scoring, "scoring", "vector_verdict_published", 1)
        after = figure()
        for name in ("score", "grade", "vetoed", "veto_reasons", "inputs", "revision"):
            assert after[name] == first[name], name
        assert [i["kind"] for i in after["explain"]["inspections"]] == ["routine"]
        return

    # By hand: inspections 80 % × s, satisfaction 20 % × 0.75 × 100 = 15.
    expected = 0.8 * inspected + 0.2 * 75
    detail = support.wait_until(lambda: (f := figure()) and f["vetoed"] and f["inputs"] == 2 and f,
                                timeout=30, message="the survey's input and the vector veto")
    assert detail["score"] == pytest.approx(expected, abs=0.005)
    groups = {g["name"]: (g["weight"], g["inspections"], g["mean"]) for g in detail["explain"]["source_weights"]}
    assert groups == {"检查": (80, 1, inspected), "群众满意率": (20, 1, 75.0)}
    survey = [i for i in detail["explain"]["inspections"] if i["kind"] == "satisfaction_survey"]
    assert [(i["score"], i["scale"], i["counted"]) for i in survey] == [(75.0, 100, True)]
    reason = f"病媒生物密度未达标（{month}）"
    assert detail["veto_reasons"] == [f"病媒生物密度（vector_density）：{reason}"]
    assert [(v["reason"], v["label"], v["detail"]) for v in detail["explain"]["vetoes"]] == [
        ("vector_density", "病媒生物密度", reason)]
    quarter = Period.containing(PeriodKind.quarter, now).key
    assert figure(quarter)["vetoed"]  # and the longer periods containing the month

    lifting = clerk.post("/vector/forms", density_form("cdc-2", month, today, LIFTING))
    assert lifting.status_code == 201 and lifting.json()["verdict"]["verdict"] == "pass", lifting.text
    lifted = support.wait_until(lambda: (f := figure()) and not f["vetoed"] and f, timeout=30,
                                message="the passing revision to lift the veto")
    assert lifted["veto_reasons"] == [] and lifted["explain"]["vetoes"] == []
    assert lifted["score"] == pytest.approx(expected, abs=0.005)
    assert not figure(quarter)["vetoed"]
