"""The indicators service through the real broker and database: a month of vector density
forms judged by the four-species rule (with a slip alert), and a survey wave answered by
interviewers and residents, with rates, Wilson intervals, flags and findings as a hand
computation gives them."""
from __future__ import annotations

import json
import re

import pytest

from services.indicators.service import IndicatorsService
from services.plumbing import clock
from tests import support

pytestmark = pytest.mark.integration

STREET = "411502008000"        # 金牛山街道 (the stack's office)
ZHOUJIASHAN = "411502008001"   # 周家山社区
HUASEN = "411502008002"       # 华森社区
ZHOUJIASHAN_NAME, HUASEN_NAME = "周家山社区居民委员会", "华森社区居民委员会"
LAOCHENG = "411502001000"      # 老城街道: another street of the district
MONTH = "2026-11"


@pytest.fixture
def indicators(amqp_uri, database_url, event_tap):
    port = support.free_port()
    config = support.base_config(amqp_uri, database_url, WEB_ADDRESSES={"indicators": f"127.0.0.1:{port}"},
                                 INDICATORS_PUBLIC_MAX_REQUESTS=20, INDICATORS_PUBLIC_MAX_FAILURES=3)
    tap = event_tap(("indicators.events", "#"), ("chuangwei.up", "#"))
    with support.running_services(config, IndicatorsService):
        yield {"api": support.ApiClient(f"http://127.0.0.1:{port}"), "tap": tap, "database_url": database_url}


def form(key, area, readings, period=MONTH):
    return {"idempotency_key": key, "area": area, "period": period, "source": "浉河区疾病预防控制中心",
            "readings": [dict(zip(("species", "method", "value", "sampled_on"), r)) for r in readings]}


def events(tap, event_type, exchange=None):
    tap.drain()
    return [e for e in tap.events if e["event_type"] == event_type]


def slips_metric(api) -> float:
    match = re.search(r"^chuangwei_vector_slips_total (\S+)$", api.get("/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_month_of_density_forms_gets_the_verdicts_of_the_hand_computation(indicators):
    api, tap, db = indicators["api"], indicators["tap"], indicators["database_url"]
    clerk = api.as_user("王芳", [("inspector", STREET)])

    # 周家山: rat (1.5+2.5)/2 = 2.0 → 0.67; mosquito 7/5 = 1.4; fly 7.2/6 = 1.2; cockroach 2.4/3 = 0.8:
    # two species over the level → fail.
    first = clerk.post("/vector/forms", form("cdc-11-zjs-1", ZHOUJIASHAN, [
        ("rat", "powder", 1.5, "2026-11-05"), ("rat", "powder", 2.5, "2026-11-06"),
        ("mosquito", "breteau", 7, "2026-11-05")]))
    assert first.status_code == 201, first.text
    assert first.json()["verdict"]["verdict"] == "incomplete"
    second = clerk.post("/vector/forms", form("cdc-11-zjs-2", ZHOUJIASHAN, [
        ("fly", "fly_rooms", 7.2, "2026-11-12"), ("cockroach", "cockroach_rooms", 2.4, "2026-11-12")]))
    assert second.status_code == 201, second.text
    verdict = second.json()["verdict"]
    assert verdict["verdict"] == "fail"
    assert {s["species"]: s["ratio"] for s in verdict["species"]} == {
        "rat": 0.6667, "mosquito": 1.4, "fly": 1.2, "cockroach": 0.8}
    assert verdict["explanation"].startswith("蚊、蝇超过控制水平（蚊为控制水平的 1.40 倍，蝇为控制水平的 1.20 倍），"
                                             "仅 2 项达标，须 3 项达标：未达标")
    assert verdict["name"] == "周家山社区居民委员会" and verdict["revision"] == 2

    # 华森: rat 2.5/3, mosquito 4/5, fly 5.4/6 at the level; cockroach 8.7/3 = 2.9× → pass.
    passing = clerk.post("/vector/forms", form("cdc-11-slh-1", HUASEN, [
        ("rat", "powder", 2.5, "2026-11-05"), ("mosquito", "breteau", 4, "2026-11-05"),
        ("fly", "fly_rooms", 5.4, "2026-11-06"), ("cockroach", "cockroach_rooms", 8.7, "2026-11-06")]))
    assert passing.status_code == 201, passing.text
    assert passing.json()["verdict"]["verdict"] == "pass"
    assert "蟑螂为控制水平的 2.90 倍（不超过 3 倍）：达标" in passing.json()["verdict"]["explanation"]

    listed = api.get(f"/vector/verdicts?period={MONTH}")
    assert listed.status_code == 200, listed.text
    assert [(v["area"], v["verdict"]) for v in listed.json()] == [(ZHOUJIASHAN, "fail"), (HUASEN, "pass")]
    quarter = api.get("/vector/verdicts?period=2026-Q4").json()
    assert [(v["area"], v["verdict"], v["revision"]) for v in quarter] == [(ZHOUJIASHAN, "fail", None),
                                                                           (HUASEN, "pass", None)]
    explained = api.get(f"/vector/verdicts/{HUASEN}/{MONTH}").json()
    cockroach = next(s for s in explained["species"] if s["species"] == "cockroach")
    assert cockroach["methods"] == [{"method": "cockroach_rooms", "value": 8.7, "level": 3.0, "ratio": 2.9,
                                     "readings": 1}]

    # Each change is published here and to the tier above; nothing slipped yet.
    published = support.wait_until(lambda: len(events(tap, "vector_verdict_published")) == 6 or None,
                                   message="three verdicts, each on two exchanges")
    assert published
    up = [e for e in tap.events if e["event_type"] == "vector_verdict_published"]
    assert {(e["payload"]["area"]["node"], e["payload"]["verdict"], e["payload"]["revision"]) for e in up} == {
        (ZHOUJIASHAN, "incomplete", 1), (ZHOUJIASHAN, "fail", 2), (HUASEN, "pass", 1)}
    assert events(tap, "vector_density_slipped") == []

    # The same form again is a no-op: 200 with the stored form, no new rows, no new event.
    records = support.scalar(db, "select count(*) from indicators_density_records")
    again = clerk.post("/vector/forms", form("cdc-11-slh-1", HUASEN, [
        ("rat", "powder", 2.5, "2026-11-05"), ("mosquito", "breteau", 4, "2026-11-05"),
        ("fly", "fly_rooms", 5.4, "2026-11-06"), ("cockroach", "cockroach_rooms", 8.7, "2026-11-06")]))
    assert again.status_code == 200, again.text
    assert again.json()["form_id"] == passing.json()["form_id"]
    assert support.scalar(db, "select count(*) from indicators_density_records") == records == 9
    reused = clerk.post("/vector/forms", form("cdc-11-slh-1", ZHOUJIASHAN, [("rat", "powder", 1, "2026-11-05")]))
    assert reused.status_code == 409 and reused.json()["errors"][0]["field"] == "idempotency_key"

    # 华森 slips: a second mosquito reading makes breteau (4+8)/2 = 6 → 1.2×, two species over.
    before = slips_metric(api)
    slip = clerk.post("/vector/forms", form("cdc-11-slh-2", HUASEN, [("mosquito", "breteau", 8, "2026-11-20")]))
    assert slip.status_code == 201, slip.text
    assert slip.json()["verdict"]["verdict"] == "fail"
    [notice] = support.wait_until(lambda: events(tap, "vector_density_slipped") or None, message="the slip notice")
    assert notice["payload"]["area"] == {"node": HUASEN, "name": HUASEN_NAME}
    assert (notice["payload"]["previous_verdict"], notice["payload"]["verdict"]) == ("pass", "fail")
    assert notice["payload"]["previous_period"] == MONTH
    assert slips_metric(api) == before + 1
    assert 'chuangwei_vector_areas{verdict="fail"} 2.0' in api.get("/metrics").text


@pytest.mark.parametrize("reading, field, reason", [
    (("rat", "powder", -1, "2026-11-05"), "readings[0].value", "greater than or equal to 0"),
    (("fly", "fly_rooms", 150, "2026-11-05"), "readings[0].value", "largest possible figure"),
    (("mosquito", "breteau", 5000, "2026-11-05"), "readings[0].value", "largest possible figure"),
    (("rat", "breteau", 1, "2026-11-05"), "readings[0].method", "measures mosquito, not rat"),
    (("rat", "powder", 1, "2026-10-31"), "readings[0].sampled_on", "outside the period 2026-11"),
    (("rat", "powder", 1, "2026-12-01"), "readings[0].sampled_on", "outside the period 2026-11"),
])
def test_impossible_densities_and_dates_outside_the_period_are_refused(indicators, reading, field, reason):
    api, db = indicators["api"], indicators["database_url"]
    response = api.post("/vector/forms", form("bad-1", ZHOUJIASHAN, [reading]))
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == field and reason in error["reason"], error
    assert support.scalar(db, "select count(*) from indicators_density_forms") == 0


def test_nan_and_future_dates_are_refused(indicators):
    api, db = indicators["api"], indicators["database_url"]
    body = json.dumps(form("nan-1", ZHOUJIASHAN, [("rat", "powder", 1, "2026-11-05")])).replace('"value": 1',
                                                                                              '"value": NaN')
    response = api.request("POST", "/vector/forms", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "readings[0].value"
    now = clock.now()
    far = f"{now.year + 1}-{now.month:02d}"
    response = api.post("/vector/forms", form("future-1", ZHOUJIASHAN, [("rat", "powder", 1, f"{far}-01")],
                                              period=far))
    assert response.status_code == 422 and "in the future" in response.json()["errors"][0]["reason"]
    assert support.scalar(db, "select count(*) from indicators_density_forms") == 0


def test_control_levels_are_set_by_administrators_and_judge_again(indicators):
    api, tap = indicators["api"], indicators["tap"]
    levels = {l["method"]: l for l in api.get(f"/vector/control-levels/{ZHOUJIASHAN}").json()}
    assert (levels["cockroach_rooms"]["level"], levels["cockroach_rooms"]["source"]) == (3.0, "default")
    response = api.post("/vector/forms", form("lv-1", ZHOUJIASHAN, [
        ("rat", "powder", 1, "2026-11-05"), ("mosquito", "breteau", 1, "2026-11-05"),
        ("fly", "fly_rooms", 1, "2026-11-05"), ("cockroach", "cockroach_rooms", 9.6, "2026-11-05")]))
    assert response.json()["verdict"]["verdict"] == "fail"     # 9.6/3 = 3.2×

    inspector = api.as_user("王芳", [("inspector", STREET)])
    body = {"levels": [{"method": "cockroach_rooms", "level": 4}]}
    assert inspector.put(f"/vector/control-levels/{STREET}", body).status_code == 403
    admin = api.as_user("街道管理员", [("administrator", STREET)])
    assert admin.put(f"/vector/control-levels/{LAOCHENG}", body).status_code == 403
    changed = admin.put(f"/vector/control-levels/{STREET}", body)
    assert changed.status_code == 200, changed.text
    # The street's level applies to its communities: 9.6/4 = 2.4× now passes.
    levels = {l["method"]: l for l in api.get(f"/vector/control-levels/{ZHOUJIASHAN}").json()}
    assert (levels["cockroach_rooms"]["level"], levels["cockroach_rooms"]["source"]) == (4.0, STREET)
    assert api.get(f"/vector/verdicts/{ZHOUJIASHAN}/{MONTH}").json()["verdict"] == "pass"
    support.wait_until(lambda: [e["payload"]["verdict"] for e in events(tap, "vector_verdict_published")
                                if e["payload"]["revision"] == 2] == ["pass", "pass"], message="re-judged verdict")
    bad = admin.put(f"/vector/control-levels/{STREET}", {"levels": [{"method": "trap", "level": 0}]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "levels[0].level"


def test_who_may_record_and_read(indicators):
    api = indicators["api"]
    body = form("acl-1", ZHOUJIASHAN, [("rat", "powder", 1, "2026-11-05")])
    assert api.anonymous().post("/vector/forms", body).status_code == 401
    assert api.as_user("查看者", [("viewer", STREET)]).post("/vector/forms", body).status_code == 403
    other = api.as_user("老城检查员", [("inspector", LAOCHENG)]).post("/vector/forms", body)
    assert other.status_code == 403 and other.json()["errors"][0]["field"] == "area"
    assert api.as_user("老城检查员", [("inspector", LAOCHENG)]).get(
        f"/vector/verdicts/{ZHOUJIASHAN}/{MONTH}").status_code == 403
    assert api.as_user("王芳", [("inspector", STREET)]).post("/vector/forms", body).status_code == 201
    assert api.as_user("老城查看者", [("viewer", LAOCHENG)]).get(f"/vector/verdicts?period={MONTH}").json() == []
    outside = api.post("/vector/forms", form("acl-2", "411503001000", [("rat", "powder", 1, "2026-11-05")]))
    assert outside.status_code == 422 and outside.json()["errors"][0]["field"] == "area"


# --- surveys ---

SCALE = [{"value": "5", "label": "满意"}, {"value": "3", "label": "基本满意"}, {"value": "1", "label": "不满意"},
         {"value": "0", "label": "不了解"}]
QUESTIONNAIRE = {
    "code": "residents-2026", "title": "群众满意度调查问卷", "threshold": 0.9,
    "items": [
        {"code": "Q1", "text": "您对辖区公厕的卫生状况是否满意？", "place_type": "public_toilet", "scale": SCALE,
         "satisfied": ["5", "3"], "excluded": ["0"], "finding_below": 0.6},
        {"code": "Q2", "text": "您对背街小巷的环境卫生是否满意？", "place_type": "back_alley", "content_area": "CITY",
         "scale": SCALE, "satisfied": ["5", "3"], "excluded": ["0"]},
    ]}


def answers(q1, q2):
    return [{"item_code": "Q1", "value": q1}, {"item_code": "Q2", "value": q2}]


FRAME = [f"华森社区{n}号楼" for n in range(1, 31)]
WAVE = {"questionnaire": {"code": "residents-2026", "version": 1}, "period": MONTH, "seed": 42,
        "areas": [{"node": ZHOUJIASHAN, "frame_size": 200, "sample_size": 10},
                  {"node": HUASEN, "frame": FRAME, "sample_size": 10}]}


def drawn_wave(api) -> tuple[support.ApiClient, dict, list[dict], list[dict]]:
    """The questionnaire defined by the street's administrator and a wave drawn by its
    interviewer: (interviewer, survey, 周家山's respondents, 华森's respondents)."""
    defined = api.as_user("街道管理员", [("administrator", STREET)]).post("/questionnaires", QUESTIONNAIRE)
    assert defined.status_code == 201, defined.text
    interviewer = api.as_user("王芳", [("inspector", STREET)])
    created = interviewer.post("/surveys", WAVE)
    assert created.status_code == 201, created.text
    survey = created.json()
    return (interviewer, survey, [r for r in survey["respondents"] if r["area"] == ZHOUJIASHAN],
            [r for r in survey["respondents"] if r["area"] == HUASEN])


def answer_huasen_online(public, huasen) -> None:
    """华森's residents answer through the public link: Q1 10 × 满意; Q2 9 × 满意, 1 × 不了解 (left out)."""
    for index, respondent in enumerate(huasen):
        response = public.post("/public/survey-answers", {"response_code": respondent["response_code"],
                                                          "answers": answers("5", "0" if index == 0 else "5")})
        assert response.status_code == 201, response.text


def answer_zhou_by_interviewer(interviewer, survey_id, zhou) -> None:
    """周家山 by interviewers: Q1 5 of 10 satisfied, Q2 9 of 10 satisfied."""
    for index, respondent in enumerate(zhou):
        body = {"respondent_id": respondent["respondent_id"],
                "answers": answers("3" if index < 5 else "1", "5" if index < 9 else "1")}
        response = interviewer.post(f"/surveys/{survey_id}/responses", body)
        assert response.status_code == 201, response.text


def test_questionnaires_are_defined_by_administrators_versioned_and_checked(indicators):
    api = indicators["api"]
    admin = api.as_user("街道管理员", [("administrator", STREET)])
    assert api.as_user("王芳", [("inspector", STREET)]).post("/questionnaires", QUESTIONNAIRE).status_code == 403
    defined = admin.post("/questionnaires", QUESTIONNAIRE)
    assert defined.status_code == 201, defined.text
    assert defined.json()["version"] == 1
    assert admin.post("/questionnaires", QUESTIONNAIRE).json()["version"] == 2   # versioned, like checklists
    off = dict(QUESTIONNAIRE, items=[dict(QUESTIONNAIRE["items"][0], satisfied=["7"])])
    refused = admin.post("/questionnaires", off)
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "items[0].satisfied"


def test_questionnaires_are_read_by_their_office_and_those_above_and_below_it_only(indicators):
    """Issue 27: another office's administrator listed every questionnaire of the stack."""
    api = indicators["api"]
    defined = api.as_user("街道管理员", [("administrator", STREET)]).post("/questionnaires", QUESTIONNAIRE)
    assert defined.status_code == 201, defined.text
    code, version = defined.json()["code"], defined.json()["version"]
    for grants in ([("administrator", STREET)], [("viewer", "411502000000")], [("inspector", ZHOUJIASHAN)]):
        who = api.as_user("本辖区人员", grants)
        assert [q["code"] for q in who.get("/questionnaires").json()] == [code], grants
        assert who.get(f"/questionnaires/{code}/{version}").status_code == 200
    other = api.as_user("老城街道管理员", [("administrator", LAOCHENG)])
    listed = other.get("/questionnaires")
    assert listed.status_code == 200 and listed.json() == []
    assert other.get(f"/questionnaires/{code}/{version}").status_code == 404


def test_a_wave_draws_the_same_sample_from_the_same_seed_and_shows_each_code_once(indicators):
    interviewer, survey, zhou, huasen = drawn_wave(indicators["api"])
    assert survey["seed"] == 42 and len(survey["respondents"]) == 20 and len(zhou) == len(huasen) == 10
    assert all(r["response_code"] for r in survey["respondents"])
    # The same seed draws the same sample; the codes are new and never shown again.
    redraw = interviewer.post("/surveys", WAVE).json()
    assert [r["label"] for r in redraw["respondents"]] == [r["label"] for r in survey["respondents"]]
    assert interviewer.get(f"/surveys/{survey['survey_id']}").json()["respondents"][0]["response_code"] is None
    assert {r["label"] for r in huasen} <= set(FRAME)


def test_public_answers_are_single_use_checked_throttled_and_audited_without_the_code(indicators):
    api = indicators["api"]
    public = api.anonymous()
    _, _, zhou, huasen = drawn_wave(api)
    answer_huasen_online(public, huasen)
    used = public.post("/public/survey-answers", {"response_code": huasen[0]["response_code"],
                                                  "answers": answers("1", "1")})
    assert used.status_code == 409
    unknown = public.post("/public/survey-answers", {"response_code": "AAAA-BBBB-CCCC", "answers": answers("5", "5")})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "response_code"
    off_scale = public.post("/public/survey-answers", {"response_code": zhou[0]["response_code"],
                                                       "answers": answers("4", "5")})
    assert off_scale.status_code == 422 and off_scale.json()["errors"][0]["field"] == "answers[0].value"
    # Three refusals from this address: even a valid code waits now.
    throttled = public.post("/public/survey-answers", {"response_code": zhou[0]["response_code"],
                                                       "answers": answers("5", "5")})
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
    # The audit log keeps who answered anonymously and what, never the code itself.
    logged = support.scalar(indicators["database_url"], "select count(*) from audit_log where action = "
                            "'POST /public/survey-answers' and actor_subject = 'anonymous' "
                            "and request::text like '%\"response_code\": \"***\"%'")
    assert logged == 10 + 3 + 1


def test_an_interviewer_answers_a_respondent_once_and_only_in_their_own_survey(indicators):
    api = indicators["api"]
    interviewer, survey, zhou, _ = drawn_wave(api)
    sid = survey["survey_id"]
    answer_zhou_by_interviewer(interviewer, sid, zhou)
    same = interviewer.post(f"/surveys/{sid}/responses", {"respondent_id": zhou[0]["respondent_id"],
                                                          "answers": answers("3", "5")})
    assert same.status_code == 200                                              # the same form again: no-op
    changed = interviewer.post(f"/surveys/{sid}/responses", {"respondent_id": zhou[0]["respondent_id"],
                                                             "answers": answers("1", "1")})
    assert changed.status_code == 409
    outsider = api.as_user("老城检查员", [("inspector", LAOCHENG)]).post(
        f"/surveys/{sid}/responses", {"respondent_id": zhou[1]["respondent_id"], "answers": answers("5", "5")})
    assert outsider.status_code == 404                                          # not their survey


def test_a_wave_gets_rates_intervals_and_flags_and_publishes_them_with_findings_on_close(indicators):
    api, tap = indicators["api"], indicators["tap"]
    interviewer, survey, zhou, huasen = drawn_wave(api)
    sid = survey["survey_id"]
    answer_huasen_online(api.anonymous(), huasen)
    answer_zhou_by_interviewer(interviewer, sid, zhou)

    result = interviewer.get(f"/surveys/{sid}/satisfaction")
    assert result.status_code == 200, result.text
    areas = {a["area"]: a for a in result.json()["areas"]}
    zhou_rate, huasen_rate = areas[ZHOUJIASHAN], areas[HUASEN]
    # 周家山 14/20 = 0.7: z²/n = 0.19207, centre (0.7 + 0.09604)/1.19207 = 0.66777,
    # half 1.96·√(0.0105 + 0.0024009)/1.19207 = 0.18675 → [0.4810, 0.8545]; flagged (< 0.9).
    assert (zhou_rate["rate"], zhou_rate["satisfied"], zhou_rate["answers"], zhou_rate["respondents"]) == (0.7, 14, 20, 10)
    assert (zhou_rate["ci_low"], zhou_rate["ci_high"], zhou_rate["flagged"]) == (0.481, 0.8545, True)
    assert {r["key"]: (r["satisfied"], r["answers"], r["rate"]) for r in zhou_rate["by_place_type"]} == {
        "back_alley": (9, 10, 0.9), "public_toilet": (5, 10, 0.5)}
    # 华森 19/19 = 1.0 (the 不了解 answer left out): z²/n = 0.20218, centre 1.10109/1.20218 = 0.91591,
    # half 1.96·√(3.8415/1444)/1.20218 = 0.08409 → [0.8318, 1.0]; not flagged.
    assert (huasen_rate["rate"], huasen_rate["answers"], huasen_rate["ci_low"], huasen_rate["ci_high"],
            huasen_rate["flagged"]) == (1.0, 19, 0.8318, 1.0, False)
    assert huasen_rate["sample_size"] == 10

    closed = interviewer.post(f"/surveys/{sid}/close")
    assert closed.status_code == 200, closed.text
    assert closed.json() == {"survey_id": sid, "status": "closed", "published": 2, "findings": 1,
                             "flagged": [ZHOUJIASHAN]}
    assert interviewer.post(f"/surveys/{sid}/close").status_code == 409
    late = interviewer.post(f"/surveys/{sid}/responses", {"respondent_id": zhou[0]["respondent_id"],
                                                          "answers": answers("5", "5")})
    assert late.status_code == 409

    support.wait_until(lambda: len(events(tap, "satisfaction_published")) == 4 or None,
                       message="two areas' rates, here and upward")
    [finding] = support.wait_until(lambda: events(tap, "satisfaction_item_low") or None, message="the low item")
    payload = finding["payload"]
    assert payload["responsible"] == {"subject_id": ZHOUJIASHAN, "node": ZHOUJIASHAN, "name": ZHOUJIASHAN_NAME}
    assert (payload["item"]["code"], payload["rate"], payload["answers"], payload["finding_below"]) == ("Q1", 0.5, 10, 0.6)
    published = [e["payload"] for e in events(tap, "satisfaction_published") if e["payload"]["area"]["node"] == ZHOUJIASHAN]
    assert {(p["rate"], p["ci_low"], p["ci_high"], p["flagged"]) for p in published} == {(0.7, 0.481, 0.8545, True)}


def test_survey_input_is_checked(indicators):
    api = indicators["api"]
    admin = api.as_user("街道管理员", [("administrator", STREET)])
    assert admin.post("/questionnaires", QUESTIONNAIRE).status_code == 201
    base = {"questionnaire": {"code": "residents-2026", "version": 1}, "period": MONTH, "seed": 1}
    too_many = api.post("/surveys", dict(base, areas=[{"node": ZHOUJIASHAN, "frame_size": 5, "sample_size": 6}]))
    assert too_many.status_code == 422 and too_many.json()["errors"][0]["field"] == "areas[0].sample_size"
    unknown = api.post("/surveys", dict(base, questionnaire={"code": "residents-2026", "version": 9},
                                        areas=[{"node": ZHOUJIASHAN, "frame_size": 5, "sample_size": 2}]))
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "questionnaire"
    wave = api.post("/surveys", dict(base, areas=[{"node": ZHOUJIASHAN, "frame_size": 5, "sample_size": 2}])).json()
    respondent = wave["respondents"][0]["respondent_id"]
    bad = api.post(f"/surveys/{wave['survey_id']}/responses",
                   {"respondent_id": respondent, "answers": [{"item_code": "Q9", "value": "5"}]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "answers[0].item_code"
    twice = api.post(f"/surveys/{wave['survey_id']}/responses",
                     {"respondent_id": respondent, "answers": [{"item_code": "Q1", "value": "5"},
                                                              {"item_code": "Q1", "value": "3"}]})
    assert twice.status_code == 422 and twice.json()["errors"][0]["field"] == "answers[1].item_code"


def test_an_area_slips_from_last_months_pass_even_through_an_incomplete_start(indicators):
    api, tap = indicators["api"], indicators["tap"]
    at_level = [("rat", "powder", 1), ("mosquito", "breteau", 1), ("fly", "fly_rooms", 1),
                ("cockroach", "cockroach_rooms", 1)]
    for area in (ZHOUJIASHAN, HUASEN):
        october = api.post("/vector/forms", form(f"oct-{area}", area, [(*r, "2026-10-15") for r in at_level],
                                                 period="2026-10"))
        assert october.json()["verdict"]["verdict"] == "pass"
    # 周家山: November's first form already fails (two species over): a slip from October.
    assert api.post("/vector/forms", form("nov-zjs", ZHOUJIASHAN, [
        ("mosquito", "breteau", 7, "2026-11-05"), ("fly", "fly_rooms", 7.2, "2026-11-05")])).json()["verdict"][
        "verdict"] == "fail"
    # 华森: incomplete first (no slip), then failing: a slip from October too.
    assert api.post("/vector/forms", form("nov-hs-1", HUASEN, [("rat", "powder", 1, "2026-11-05")])).json()[
        "verdict"]["verdict"] == "incomplete"
    assert api.post("/vector/forms", form("nov-hs-2", HUASEN, [
        ("mosquito", "breteau", 7, "2026-11-06"), ("fly", "fly_rooms", 7.2, "2026-11-06")])).json()["verdict"][
        "verdict"] == "fail"
    slips = support.wait_until(lambda: len(events(tap, "vector_density_slipped")) == 2 or None,
                               message="two slip notices")
    assert slips
    assert sorted((e["payload"]["area"]["node"], e["payload"]["period"], e["payload"]["previous_verdict"],
                   e["payload"]["previous_period"]) for e in events(tap, "vector_density_slipped")) == [
        (ZHOUJIASHAN, MONTH, "pass", "2026-10"), (HUASEN, MONTH, "pass", "2026-10")]
    # A marker: a later verdict change is published after any further slip would have been.
    api.post("/vector/forms", form("nov-hs-3", HUASEN, [("rat", "powder", 2, "2026-11-07")]))
    support.wait_until(lambda: any(e["payload"]["revision"] == 3 and e["payload"]["area"]["node"] == HUASEN
                                   for e in events(tap, "vector_verdict_published")), message="the marker verdict")
    assert len(events(tap, "vector_density_slipped")) == 2


def test_form_keys_are_the_callers_own_and_a_reused_key_needs_the_same_form(indicators):
    """Issue 27: idempotency keys were global, so one person's key answered another's form.
    Keys are scoped to the caller and the endpoint (plumbing/idempotency.py client_key)."""
    api, db = indicators["api"], indicators["database_url"]
    wang = api.as_user("王芳", [("inspector", STREET)], subject="wangfang")
    li = api.as_user("李强", [("inspector", STREET)], subject="liqiang")
    mine = form("cdc-11-shared", ZHOUJIASHAN, [("rat", "powder", 1.5, "2026-11-05")])
    first = wang.post("/vector/forms", mine)
    assert first.status_code == 201, first.text
    theirs = li.post("/vector/forms", form("cdc-11-shared", HUASEN, [("rat", "powder", 2.5, "2026-11-05")]))
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["form_id"] != first.json()["form_id"] and theirs.json()["area"] == HUASEN
    again = wang.post("/vector/forms", mine)
    assert again.status_code == 200 and again.json()["form_id"] == first.json()["form_id"]
    changed = wang.post("/vector/forms", form("cdc-11-shared", ZHOUJIASHAN, [("rat", "powder", 9.5, "2026-11-05")]))
    assert changed.status_code == 409, changed.text
    [error] = changed.json()["errors"]
    assert error["field"] == "idempotency_key" and error["reason"].startswith("该幂等键（Idempotency-Key）")
    assert support.scalar(db, "select count(*) from indicators_density_forms") == 2
