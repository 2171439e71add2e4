"""The scoring service with the inspection service, over the real broker and PostgreSQL.

The worked example of the street scheme (金牛山街道, 100 points, monthly mean, half-year
composite 75 % routine + 25 % appraisal). Every expected figure is worked out by hand
below, from the inspection scores, never by calling the scoring code.
"""
from __future__ import annotations

import re

import pytest
from kombu import Connection, Exchange, Producer
from sqlalchemy import create_engine, func, select, update

from services.inspection.service import InspectionService
from services.scoring.models import PeriodScore, PolicyVersion, ScoreInputRow, outbox as scoring_outbox
from services.scoring.service import ScoringService
from tests import support

pytestmark = pytest.mark.integration

STREET = "411502008000"  # 金牛山街道
TEST_USER = "测试管理员 (user-测试管理员)"  # the label of support.ApiClient's default caller
ZHOUJIASHAN, XIANGTANG, SHILIHE = "411502008001", "411502008006", "411502008008"
NAMES = {ZHOUJIASHAN: "周家山社区", XIANGTANG: "飨堂社区", SHILIHE: "十里河社区"}

# Inspection scores (100 points), entered as deductions on the public-toilet checklist.
OCTOBER = {  # two inspections each: the previous month, for movement
    ZHOUJIASHAN: [("2026-10-12", 90), ("2026-10-19", 86)],
    XIANGTANG: [("2026-10-12", 94), ("2026-10-19", 96)],
    SHILIHE: [("2026-10-12", 80), ("2026-10-19", 84)],
}
NOVEMBER = {  # four weekly inspections each (Mondays: ISO weeks 45-48)
    ZHOUJIASHAN: [("2026-11-02", 96), ("2026-11-09", 94), ("2026-11-16", 98), ("2026-11-23", 92)],
    XIANGTANG: [("2026-11-02", 92), ("2026-11-09", 90), ("2026-11-16", 94), ("2026-11-23", 88)],
    SHILIHE: [("2026-11-02", 85), ("2026-11-09", 91), ("2026-11-16", 89), ("2026-11-23", 87)],
}

# Worked by hand:
# October means: 周家山 (90+86)/2 = 88, 飨堂 (94+96)/2 = 95, 十里河 (80+84)/2 = 82
#   → ranks 飨堂 1, 周家山 2, 十里河 3.
# November means: 周家山 (96+94+98+92)/4 = 95, 飨堂 (92+90+94+88)/4 = 91, 十里河 (85+91+89+87)/4 = 88
#   → ranks 周家山 1 (up 1), 飨堂 2 (down 1), 十里河 3 (unchanged).
# Grades (优秀 ≥ 95, 先进 ≥ 90, 合格 ≥ 60): 周家山 优秀, 飨堂 先进, 十里河 合格.
OCT_MEAN = {ZHOUJIASHAN: 88.0, XIANGTANG: 95.0, SHILIHE: 82.0}
NOV_MEAN = {ZHOUJIASHAN: 95.0, XIANGTANG: 91.0, SHILIHE: 88.0}
NOV_RANK = {ZHOUJIASHAN: 1, XIANGTANG: 2, SHILIHE: 3}
NOV_MOVEMENT = {ZHOUJIASHAN: 1, XIANGTANG: -1, SHILIHE: 0}
NOV_GRADE = {ZHOUJIASHAN: "优秀", XIANGTANG: "先进", SHILIHE: "合格"}
# 金牛山街道 rolls up its communities (mean, no own inspections): (95 + 91 + 88) / 3 = 91.333…
STREET_NOVEMBER = 91.33
# 2026-H2 for 十里河: routine = mean of its monthly means = (82 + 88) / 2 = 85;
# with an appraisal of 93 at 25 %: 0.75 × 85 + 0.25 × 93 = 63.75 + 23.25 = 87.0.
SHILIHE_H2_ROUTINE = 85.0
SHILIHE_APPRAISAL = 93
SHILIHE_H2_COMPOSITE = 87.0


def deductions(score: int) -> list[dict]:
    """Results giving exactly `score` on the 100-point public-toilet checklist."""
    left, results = 100 - score, []
    for item, cap in (("PT-02", 20), ("PT-03", 15), ("PT-04", 15)):
        take = min(left, cap)
        if take:
            results.append({"item_code": item, "findings": 1, "deduction": take})
        left -= take
    assert left == 0
    return results


@pytest.fixture
def stack(amqp_uri, database_url):
    inspection_port, scoring_port = support.free_port(), support.free_port()
    config = support.base_config(amqp_uri, database_url, WEB_ADDRESSES={
        "inspection": f"127.0.0.1:{inspection_port}", "scoring": f"127.0.0.1:{scoring_port}"})
    with support.running_services(config, InspectionService, ScoringService) as runner:
        yield {"inspection": support.ApiClient(f"http://127.0.0.1:{inspection_port}"),
               "scoring": support.ApiClient(f"http://127.0.0.1:{scoring_port}"),
               "database_url": database_url, "amqp_uri": amqp_uri, "runner": runner}


def register_communities(api) -> dict[str, str]:
    ids = {}
    for node, name in NAMES.items():
        r = api.post("/subjects", {"subject_type": "child_unit", "node": node, "name": name})
        assert r.status_code == 201, r.text
        ids[node] = r.json()["subject_id"]
    return ids


def inspect(api, subject_id: str, day: str, score: int) -> dict:
    r = api.post("/inspections", {
        "kind": "routine", "subject_id": subject_id, "checklist": {"version": "2010.1", "code": "public-toilet"},
        "inspectors": ["王芳"], "inspected_at": f"{day}T10:00:00+08:00", "results": deductions(score)})
    assert r.status_code == 201, r.text
    assert r.json()["score"] == score
    return r.json()


def ranking(api, period: str, tier: str = "community") -> dict:
    r = api.get(f"/rankings?period={period}&tier={tier}")
    assert r.status_code == 200, r.text
    return r.json()


def settled(api, period: str, expected_inputs: int, count: int = 3):
    def ready():
        table = ranking(api, period)
        rows = table["ranking"] + table["below_minimum_sample"]
        return table if len(rows) == count and all(r["inputs"] == expected_inputs for r in rows) else None
    return support.wait_until(ready, timeout=30, message=f"{period} scored")


def consumed(api, outcome: str, event_type: str = "inspection_submitted") -> float:
    text = api.get("/metrics").text
    m = re.search(r'chuangwei_events_consumed_total\{event_type="%s",outcome="%s",'
                  r'service="scoring"\} ([0-9.e+]+)' % (event_type, outcome), text)
    return float(m.group(1)) if m else 0.0


def by_node(rows: list[dict]) -> dict[str, dict]:
    return {r["node"]: r for r in rows}


# --- the worked example, one check per test -------------------------------------------------------
# Each test starts its own stack and submits the same 18 inspections (`worked_example`); none
# relies on another having run.


def worked_example(stack) -> dict[str, str]:
    """Register the three communities, submit their October and November inspections, and wait
    until scoring has processed all 18 (counted after each commit): the subject ids by node."""
    inspection, scoring = stack["inspection"], stack["scoring"]
    processed_before = consumed(scoring, "processed")
    ids = register_communities(inspection)
    sent = 0
    for month in (OCTOBER, NOVEMBER):
        for node, inspections in month.items():
            for day, score in inspections:
                inspect(inspection, ids[node], day, score)
                sent += 1
    support.wait_until(lambda: consumed(scoring, "processed") >= processed_before + sent, timeout=30,
                       message=f"scoring to process the {sent} inspections")
    return ids


def settled_november(scoring) -> dict:
    """November's community table once every community has its four inputs and its movement."""
    settled(scoring, "2026-11", 4)
    support.wait_until(lambda: [r["movement"] for r in ranking(scoring, "2026-11")["ranking"]] == [1, -1, 0],
                       message="November movement")
    return ranking(scoring, "2026-11")


def appraise_shilihe(scoring):
    return scoring.post("/appraisals", {"subject_id": SHILIHE, "period": "2026-H2", "score": SHILIHE_APPRAISAL,
                                        "note": "金牛山街道创卫领导小组民主测评"})


def criticise_xiangtang(scoring):
    return scoring.post("/vetoes", {"subject_id": XIANGTANG, "period": "2026-11", "reason": "criticism",
                                    "note": "背街小巷垃圾堆积", "reference": "浉爱卫〔2026〕15号"})


def wait_veto_published(scores_tap) -> None:
    support.wait_until(lambda: any(
        e["payload"]["subject"]["subject_id"] == XIANGTANG and e["payload"]["period"] == "2026-11"
        and e["payload"]["vetoed"] and e["payload"]["grade"] == "合格" and e["schema_version"] == 2
        for e in scores_tap.drain()), message="the veto published")


def test_october_means_rank_xiangtang_first_then_zhoujiashan_and_shilihe(stack):
    """October, two inspections each: means 88, 95, 82 (worked by hand) rank 飨堂, 周家山, 十里河."""
    worked_example(stack)
    october = settled(stack["scoring"], "2026-10", 2)
    assert [r["node"] for r in october["ranking"]] == [XIANGTANG, ZHOUJIASHAN, SHILIHE]
    assert {r["node"]: r["score"] for r in october["ranking"]} == OCT_MEAN


def test_november_means_ranks_movement_and_grades_match_the_hand_worked_figures(stack):
    """November, four inspections each: means 95, 91, 88 rank 周家山 (up 1), 飨堂 (down 1), 十里河
    (unchanged), graded 优秀, 先进, 合格; each child unit under its division code, none vetoed."""
    worked_example(stack)
    november = settled_november(stack["scoring"])
    assert november["peers"] == 3 and november["below_minimum_sample"] == []
    assert [r["node"] for r in november["ranking"]] == [ZHOUJIASHAN, XIANGTANG, SHILIHE]
    rows = by_node(november["ranking"])
    for node in NAMES:
        assert rows[node]["score"] == pytest.approx(NOV_MEAN[node], abs=0.005)
        assert rows[node]["rank"] == NOV_RANK[node]
        assert rows[node]["movement"] == NOV_MOVEMENT[node]
        assert rows[node]["grade"] == NOV_GRADE[node]
        assert rows[node]["subject_id"] == node  # a child unit is scored under its division code
        assert rows[node]["vetoed"] is False


def ranking_counts(api) -> dict[str, float]:
    """chuangwei_ranking_figures_total and chuangwei_ranking_answers_total, by source."""
    text = api.get("/metrics").text
    return {f"{what}.{m.group(1)}": float(m.group(2)) for what in ("figures", "answers")
            for m in re.finditer(r'chuangwei_ranking_%s_total\{source="(\w+)"\} ([0-9.e+]+)' % what, text)}


def test_a_ranking_asked_again_comes_from_its_cache_and_shows_any_write_to_its_rows(stack):
    """GET /rankings gives an earlier answer again while the group's rows are the versions it
    was made from, and otherwise serialises only the rows that changed (operations/ranking_cache.py):
    a write by any path, even SQL that no scoring code made, shows in the next answer."""
    worked_example(stack)
    scoring = stack["scoring"]
    table = settled_november(scoring)

    def counted(before: dict) -> dict:
        after = ranking_counts(scoring)
        return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}

    before = ranking_counts(scoring)
    assert ranking(scoring, "2026-11") == table
    assert counted(before) == {"answers.cache": 1}  # the same answer: no figure assembled

    engine = create_engine(stack["database_url"])
    with engine.begin() as conn:
        conn.execute(update(PeriodScore).where(PeriodScore.node == XIANGTANG, PeriodScore.period == "2026-11")
                     .values(name="飨堂社区（更名）", score=91.5))
    engine.dispose()
    before = ranking_counts(scoring)
    renamed = ranking(scoring, "2026-11")
    assert by_node(renamed["ranking"])[XIANGTANG] == {**by_node(table["ranking"])[XIANGTANG],
                                                      "name": "飨堂社区（更名）", "score": 91.5}
    assert [r for r in renamed["ranking"] if r["node"] != XIANGTANG] == \
        [r for r in table["ranking"] if r["node"] != XIANGTANG]
    assert counted(before) == {"answers.built": 1, "figures.database": 1, "figures.cache": 2}
    before = ranking_counts(scoring)
    assert ranking(scoring, "2026-11") == renamed
    assert counted(before) == {"answers.cache": 1}


def test_the_cached_rankings_answer_keeps_its_access_rules_and_refuses_hostile_queries(stack):
    """GET /rankings is answered from assembled text now: it still refuses an anonymous caller,
    refuses hostile queries with a 4xx naming the field (changing nothing: the next answer is
    the cached one), gives a community's own caller its own row only even right after a full
    answer was kept, and every answer still fits the response schema in openapi.json."""
    worked_example(stack)
    scoring = stack["scoring"]
    table = settled_november(scoring)
    assert scoring.anonymous().get("/rankings?period=2026-11").status_code == 401

    for query, field in [("period=2026-11%00", "query.period"), ("period=%3DHYPERLINK(%22x%22)", "query.period"),
                         ("period=2026-00", "query.period"), ("period=99999", "query.period"),
                         ("period=2026-W54", "query.period"), ("period=2026-11&tier=%2Bcmd", "query.tier"),
                         ("period=2026-11&subject_type=%7B%22a%22%3A%7B%22b%22%3A1%7D%7D", "query.subject_type")]:
        refused = scoring.get(f"/rankings?{query}")
        assert 400 <= refused.status_code < 500, (query, refused.text)
        assert field in [e["field"] for e in refused.json()["errors"]], (query, refused.text)
    before = ranking_counts(scoring)
    assert ranking(scoring, "2026-11") == table
    assert ranking_counts(scoring)["answers.cache"] == before["answers.cache"] + 1

    own = scoring.as_user("飨堂社区查看者", [("viewer", XIANGTANG)]).get("/rankings?period=2026-11&tier=community")
    assert own.status_code == 200, own.text
    assert [r["node"] for r in own.json()["ranking"]] == [XIANGTANG] and own.json()["peers"] == 3

    import jsonschema
    spec = scoring.get("/openapi.json").json()
    ref = spec["paths"]["/rankings"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schema = {**spec["components"]["schemas"][ref.rsplit("/", 1)[1]], "components": spec["components"]}
    for answer in (table, own.json()):
        jsonschema.validate(answer, schema, format_checker=jsonschema.FormatChecker())


def test_weeks_are_scored_but_not_ranked_under_the_street_scheme(stack):
    """ISO week 47 (one inspection each) has scores 98, 94, 89 but no ranking, each row saying why."""
    worked_example(stack)
    week = ranking(stack["scoring"], "2026-W47")  # Monday 2026-11-16
    assert week["ranking"] == [] and {r["node"]: r["score"] for r in week["below_minimum_sample"]} == {
        ZHOUJIASHAN: 98.0, XIANGTANG: 94.0, SHILIHE: 89.0}
    assert all("minimum sample" in r["why_unranked"] or "does not rank" in r["why_unranked"]
               for r in week["below_minimum_sample"])


def test_the_street_rolls_up_the_mean_of_its_communities(stack):
    """金牛山街道 has no inspections of its own: its November figure is (95 + 91 + 88) / 3, explained
    by its three communities combined by mean."""
    worked_example(stack)
    scoring = stack["scoring"]
    street = support.wait_until(
        lambda: next((s for s in scoring.get(f"/subjects/{STREET}/scores?period_kind=month").json()["scores"]
                      if s["period"] == "2026-11" and s["inputs"] == 3), None), message="street roll-up")
    assert street["score"] == pytest.approx(STREET_NOVEMBER, abs=0.005)
    explained = scoring.get(f"/subjects/{STREET}/scores/2026-11").json()["explain"]
    assert {c["node"]: c["score"] for c in explained["children"]} == NOV_MEAN
    assert explained["children_combine"] == "mean"


def test_a_monthly_score_is_explained_by_the_inspections_behind_it(stack):
    """周家山's November mean, asked for by the inspection's subject id, lists its four inspections,
    the rule and the policy."""
    ids = worked_example(stack)
    explain = stack["scoring"].get(f"/subjects/{ids[ZHOUJIASHAN]}/scores/2026-11")  # the inspection id works too
    assert explain.status_code == 200, explain.text
    detail = explain.json()["explain"]
    assert sorted(i["score"] for i in detail["inspections"]) == [92, 94, 96, 98]
    assert detail["rule"] == "mean_of_inspections" and detail["policy"]["policy_id"] == "street-scheme"


def test_the_half_year_composite_is_the_mean_of_monthly_means_with_a_quarter_appraisal(stack):
    """十里河 2026-H2: routine only (82 + 88) / 2 = 85 until an appraisal of 93 is entered, then
    0.75 × 85 + 0.25 × 93 = 87; the appraisal records the signed-in caller."""
    worked_example(stack)
    scoring = stack["scoring"]
    h2 = scoring.get(f"/subjects/{SHILIHE}/scores/2026-H2").json()
    assert h2["score"] == pytest.approx(SHILIHE_H2_ROUTINE, abs=0.005)  # no appraisal yet: routine only
    assert [m["month"] for m in h2["explain"]["months"]] == ["2026-10", "2026-11"]
    appraisal = appraise_shilihe(scoring)
    assert appraisal.status_code == 201, appraisal.text
    assert appraisal.json()["appraised_by"] == TEST_USER  # who entered it: the signed-in caller
    assert appraisal.json()["period_score"]["score"] == pytest.approx(SHILIHE_H2_COMPOSITE, abs=0.005)
    h2 = scoring.get(f"/subjects/{SHILIHE}/scores/2026-H2").json()
    assert h2["score"] == pytest.approx(SHILIHE_H2_COMPOSITE, abs=0.005)
    assert h2["routine"] == pytest.approx(SHILIHE_H2_ROUTINE, abs=0.005) and h2["appraisal"] == SHILIHE_APPRAISAL
    assert h2["explain"]["composite"]["appraisal_weight"] == 25


def test_a_criticised_community_keeps_its_score_and_rank_but_cannot_be_xianjin(stack, event_tap):
    """A 通报批评 veto on 飨堂 for November caps it to 合格 (also in 2026-H2) with the same score and
    rank 2, a reason and a new revision, published as score_published v2."""
    scores_tap = event_tap(("scoring.events", "score_published"))
    worked_example(stack)
    scoring = stack["scoring"]
    settled_november(scoring)
    before = by_node(ranking(scoring, "2026-11")["ranking"])[XIANGTANG]
    veto = criticise_xiangtang(scoring)
    assert veto.status_code == 201, veto.text
    after = by_node(ranking(scoring, "2026-11")["ranking"])[XIANGTANG]
    assert after["vetoed"] is True and after["grade"] == "合格"
    assert after["score"] == before["score"] and after["rank"] == before["rank"] == 2
    assert any("通报批评" in reason for reason in after["veto_reasons"])
    assert after["revision"] == before["revision"] + 1
    assert scoring.get(f"/subjects/{XIANGTANG}/scores/2026-H2").json()["vetoed"] is True
    wait_veto_published(scores_tap)


def test_every_staged_score_and_ranking_reaches_the_bus_and_adds_up_to_the_table(stack, event_tap):
    """After the example, an appraisal and a veto: every score_published the outbox staged is on the
    bus with revisions growing per (subject, period), and the ranking_published changes, latest
    version first, give each community its rank and movement in the table."""
    scores_tap = event_tap(("scoring.events", "score_published"))
    rankings_tap = event_tap(("scoring.events", "ranking_published"))
    worked_example(stack)
    scoring = stack["scoring"]
    settled_november(scoring)
    assert appraise_shilihe(scoring).status_code == 201
    assert criticise_xiangtang(scoring).status_code == 201
    wait_veto_published(scores_tap)

    # Every staged score_published reached the bus; revisions only grow per (subject, period).
    all_published(stack["database_url"], scores_tap)
    latest: dict[tuple, dict] = {}
    for e in scores_tap.drain():
        p = e["payload"]
        key = (p["subject"]["subject_id"], p["period"])
        assert key not in latest or p["revision"] > latest[key]["revision"]
        latest[key] = p
    assert latest[(ZHOUJIASHAN, "2026-11")]["inputs"] == 4
    # The ranking events, each subject's entry of the highest version, add up to the table.
    told: dict[str, tuple] = {}
    support.wait_until(lambda: len(rankings_tap.drain()) == staged_count(stack["database_url"], "ranking_published"),
                       message="rankings relayed")
    for e in sorted(rankings_tap.drain(), key=lambda e: e["payload"]["version"]):
        p = e["payload"]
        if (p["period"], p["tier"]) == ("2026-11", "community"):
            for change in p["changes"]:
                told[change["subject"]["subject_id"]] = (change["rank"], change["movement"])
    assert told == {r["subject_id"]: (r["rank"], r["movement"]) for r in ranking(scoring, "2026-11")["ranking"]}
    assert latest[(ZHOUJIASHAN, "2026-11")]["policy"] == {"policy_id": "street-scheme", "version": 1}


def test_a_redelivered_inspection_event_changes_no_score_and_publishes_nothing(stack, event_tap):
    """十里河's 2026-11-09 inspection_submitted sent again is counted as a duplicate: the scores, the
    inputs, the table and the published events stay as they were."""
    submitted_tap = event_tap(("inspection.events", "inspection_submitted"))
    scores_tap = event_tap(("scoring.events", "score_published"))
    worked_example(stack)
    scoring = stack["scoring"]
    settled_november(scoring)
    [original] = [e for e in submitted_tap.drain() if e["payload"]["subject"]["node"] == SHILIHE
                  and e["payload"]["inspected_at"].startswith("2026-11-09")]
    published_before = all_published(stack["database_url"], scores_tap)
    snapshot = scores_snapshot(stack["database_url"])
    table_before = ranking(scoring, "2026-11")
    duplicates = consumed(scoring, "duplicate")
    with Connection(stack["amqp_uri"]) as conn:
        Producer(conn.default_channel).publish(
            original, exchange=Exchange("inspection.events", type="topic", durable=True),
            routing_key="inspection_submitted", serializer="json", delivery_mode=2)
    support.wait_until(lambda: consumed(scoring, "duplicate") == duplicates + 1, message="duplicate seen")
    assert scores_snapshot(stack["database_url"]) == snapshot
    assert len(scores_tap.drain()) == published_before
    assert ranking(scoring, "2026-11") == table_before
    assert by_node(ranking(scoring, "2026-11")["ranking"])[SHILIHE]["inputs"] == 4


def all_published(database_url: str, tap) -> int:
    """Wait until the tap holds every score_published the scoring outbox staged; return how many."""
    engine = create_engine(database_url)
    try:
        def staged():
            with engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(scoring_outbox).where(
                    scoring_outbox.c.event_type == "score_published",
                    scoring_outbox.c.exchange == "scoring.events")).scalar_one()  # not the upward copies
        support.wait_until(lambda: len(tap.drain()) == staged(), message="outbox relayed")
        return staged()
    finally:
        engine.dispose()


def staged_count(database_url: str, event_type: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(scoring_outbox).where(
                scoring_outbox.c.event_type == event_type)).scalar_one()
    finally:
        engine.dispose()


def scores_snapshot(database_url: str):
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(PeriodScore.subject_id, PeriodScore.period, PeriodScore.score,
                                       PeriodScore.rank, PeriodScore.revision, PeriodScore.inputs)
                                .order_by(PeriodScore.subject_id, PeriodScore.period)).all()
            inputs = conn.execute(select(func.count()).select_from(ScoreInputRow)).scalar_one()
        return [tuple(r) for r in rows], inputs
    finally:
        engine.dispose()


def test_bad_input_is_refused_and_changes_nothing(stack):
    inspection, scoring = stack["inspection"], stack["scoring"]
    ids = register_communities(inspection)
    inspect(inspection, ids[ZHOUJIASHAN], "2026-11-02", 90)
    support.wait_until(lambda: scoring.get(f"/subjects/{ZHOUJIASHAN}/scores").status_code == 200,
                       message="first score")

    def error_field(response, status=422):
        assert response.status_code == status, response.text
        return [e["field"] for e in response.json()["errors"]]

    assert "query.period" in error_field(scoring.get("/rankings?period=2026-13"))
    assert "query.period" in error_field(scoring.get("/rankings?period=November"))
    assert "period" in error_field(scoring.post("/vetoes", {"subject_id": ZHOUJIASHAN, "period": "2026/11",
                                                            "reason": "criticism"}))
    assert "subject_id" in error_field(scoring.post("/vetoes", {"subject_id": "nobody", "period": "2026-11",
                                                                "reason": "criticism"}))
    # The actor is the signed-in caller, never a body field.
    assert "issued_by" in error_field(scoring.post("/vetoes", {"subject_id": ZHOUJIASHAN, "period": "2026-11",
                                                               "reason": "criticism", "issued_by": "区爱卫办"}))
    assert "period" in error_field(scoring.post("/appraisals", {"subject_id": ZHOUJIASHAN, "period": "2026-11",
                                                                "score": 90}))
    assert "score" in error_field(scoring.post("/appraisals", {"subject_id": ZHOUJIASHAN, "period": "2026-H2",
                                                               "score": 101}))
    assert "appraised_by" in error_field(scoring.post("/appraisals", {
        "subject_id": ZHOUJIASHAN, "period": "2026-H2", "score": 90, "appraised_by": "领导小组"}))

    current = scoring.get(f"/policies/{STREET}")
    assert current.status_code == 200 and current.json()["version"] == 1
    document = current.json()["document"]
    city = dict(document, source_weights=[{"name": "暗访", "kinds": ["unannounced"], "weight": 40},
                                          {"name": "明查", "kinds": ["announced"], "weight": 50},
                                          {"name": "数字城管", "kinds": ["digital_city"], "weight": 5}])
    assert error_field(scoring.put(f"/policies/{STREET}", city)) == ["source_weights"]
    composite = dict(document, composite={"periods": ["half_year"], "routine_weight": 75, "appraisal_weight": 20})
    assert error_field(scoring.put(f"/policies/{STREET}", composite)) == ["composite"]
    unranked = dict(document, ranking={"periods": ["month"], "tiers": {"street": {"min_inspections": 2}}})
    assert error_field(scoring.put(f"/policies/{STREET}", unranked)) == ["ranking.tiers.community"]
    assert "scale" in error_field(scoring.put(f"/policies/{STREET}", dict(document, scale=150)))
    assert len(scoring.get(f"/policies/{STREET}/versions").json()) == 1

    # A valid update is proposed, then approved by a second administrator: version 2 is added,
    # version 1 kept; the current month is rescored with it.
    stricter = dict(document, ranking={**document["ranking"], "tiers": {
        **document["ranking"]["tiers"], "community": {"min_inspections": 1}}})
    proposed = scoring.put(f"/policies/{STREET}", stricter)
    assert proposed.status_code == 202, proposed.text
    assert proposed.json()["status"] == "pending" and len(scoring.get(f"/policies/{STREET}/versions").json()) == 1
    second = scoring.as_user("赵敏", [("administrator", STREET)])
    updated = second.post(f"/approvals/{proposed.json()['approval_id']}/approve", {})
    assert updated.status_code == 200, updated.text
    assert updated.json()["policy"]["version"] == 2
    assert updated.json()["policy"]["created_by"] == TEST_USER
    assert updated.json()["policy"]["approved_by"] == "赵敏 (user-赵敏)"
    versions = scoring.get(f"/policies/{STREET}/versions").json()
    assert [v["version"] for v in versions] == [1, 2] and versions[0]["document"] == document
    engine = create_engine(stack["database_url"])
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(PolicyVersion)).scalar_one() == 2
    engine.dispose()
    assert scoring.get(f"/policies/{ZHOUJIASHAN}").json()["inherited"] is True

    # Recomputing a period applies the new version: one inspection now suffices to be ranked.
    recomputed = scoring.post("/recompute", {"period": "2026-11", "reason": "考评办法第2版：一次检查即可排名"})
    assert recomputed.status_code == 200, recomputed.text
    [row] = ranking(scoring, "2026-11")["ranking"]
    assert row["node"] == ZHOUJIASHAN and row["rank"] == 1 and row["policy"] == {"policy_id": "street-scheme",
                                                                                 "version": 2}
    assert "period" in error_field(scoring.post("/recompute", {"period": "2026-Q5"}))
    assert scoring.get("/policies/411503001001").status_code == 404  # outside this stack


def test_metrics_and_openapi(stack):
    inspection, scoring = stack["inspection"], stack["scoring"]
    ids = register_communities(inspection)
    kinds = ("week", "month", "quarter", "half_year", "year")
    # The registry is the process's: earlier tests' counts stay in it, so compare differences.
    before = {k: support.metric(scoring, "chuangwei_scores_published_total", period_kind=k) for k in kinds}
    recomputed = support.metric(scoring, "chuangwei_score_recompute_seconds_count", trigger="inspection")
    handled = support.events_consumed(scoring, "scoring", "inspection_submitted")
    inspect(inspection, ids[SHILIHE], "2026-11-02", 90)
    support.wait_consumed(scoring, "scoring", "inspection_submitted", handled + 1)

    # Every score_published staged in the outbox is counted once, by period kind: 十里河 and the
    # street it rolls up into, in each of the five periods the inspection falls in.
    staged = dict(support.scalar_rows(stack["database_url"], """
        SELECT body -> 'payload' ->> 'period_kind', count(*) FROM scoring_outbox
        WHERE exchange = 'scoring.events' AND event_type = 'score_published' GROUP BY 1"""))
    assert staged == {k: 2 for k in kinds}
    assert {k: support.metric(scoring, "chuangwei_scores_published_total", period_kind=k) - before[k]
            for k in kinds} == staged
    assert support.metric(scoring, "chuangwei_score_recompute_seconds_count", trigger="inspection") \
        - recomputed == 1
    # One inspection is short of the street scheme's sample of 2: nobody ranked this month.
    assert support.metric(scoring, "chuangwei_subjects_ranked", tier="community", subject_type="child_unit",
                          period_kind="month") == 0

    spec = scoring.get("/openapi.json").json()
    assert {"/rankings", "/subjects/{subject_id}/scores", "/subjects/{subject_id}/scores/{period}",
            "/appraisals", "/vetoes", "/policies/{node}"} <= set(spec["paths"])
    rankings = spec["paths"]["/rankings"]["get"]
    assert {p["name"]: p["required"] for p in rankings["parameters"] if p["in"] == "query"}["period"] is True
    ranking_ref = rankings["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    ranking_schema = spec["components"]["schemas"][ranking_ref.rsplit("/", 1)[1]]
    assert {"period", "tier", "peers", "ranking", "below_minimum_sample"} <= set(ranking_schema["required"])
    # The document describes what the service answers: this month's table validates against it.
    import jsonschema
    jsonschema.validate(ranking(scoring, "2026-11"), {**ranking_schema, "components": spec["components"]},
                        format_checker=jsonschema.FormatChecker())


def publish(amqp_uri: str, exchange: str, body: dict) -> None:
    with Connection(amqp_uri) as conn:
        Producer(conn.default_channel).publish(
            body, exchange=Exchange(exchange, type="topic", durable=True), routing_key=body["event_type"],
            serializer="json", delivery_mode=2)


def ledger_event(subject_id: str, node: str, overdue_open: int, computed_at: str) -> dict:
    from services.contracts.events import Producer as EventProducer, make_event
    from services.contracts.events.tasks import LedgerFiguresUpdated
    payload = LedgerFiguresUpdated(subject_id=subject_id, node=node, period="2026-11", opened=8, closed=5,
                                   closed_on_time=4, overdue_open=overdue_open, relapses=0, close_rate=0.625,
                                   on_time_rate=0.8, mean_hours_to_fix=30.0, computed_at=computed_at)
    return make_event(payload, EventProducer(node=STREET, service="tasks")).to_message()


def test_overdue_condition_from_the_tasks_ledger_vetoes_and_lifts(stack):
    inspection, scoring = stack["inspection"], stack["scoring"]
    ids = register_communities(inspection)
    for day, score in (("2026-11-02", 96), ("2026-11-09", 98)):  # mean 97: 优秀
        inspect(inspection, ids[ZHOUJIASHAN], day, score)
    month = lambda: scoring.get(f"/subjects/{ZHOUJIASHAN}/scores/2026-11").json()  # noqa: E731
    support.wait_until(lambda: month().get("inputs") == 2, message="November scored")
    assert month()["grade"] == "优秀" and month()["vetoed"] is False

    # The street scheme vetoes at 3 or more overdue tasks open; the ledger names the inspection's subject id.
    publish(stack["amqp_uri"], "tasks.events", ledger_event(ids[ZHOUJIASHAN], ZHOUJIASHAN, 3, "2026-11-20T08:00:00Z"))
    vetoed = support.wait_until(lambda: month() if month()["vetoed"] else None, message="ledger veto")
    assert vetoed["grade"] == "合格" and vetoed["score"] == 97.0
    assert any("整改超期" in r for r in vetoed["veto_reasons"])
    assert vetoed["explain"]["vetoes"][0]["source"] == "ledger"

    # An older figure arriving late changes nothing; a newer one lifts the veto.
    processed = consumed(scoring, "processed", "ledger_figures_updated")
    publish(stack["amqp_uri"], "tasks.events", ledger_event(ids[ZHOUJIASHAN], ZHOUJIASHAN, 0, "2026-11-19T08:00:00Z"))
    support.wait_until(lambda: consumed(scoring, "processed", "ledger_figures_updated") == processed + 1,
                       message="stale figure consumed")
    assert month()["vetoed"] and "3 overdue" in " ".join(month()["veto_reasons"])
    publish(stack["amqp_uri"], "tasks.events", ledger_event(ids[ZHOUJIASHAN], ZHOUJIASHAN, 5, "2026-11-21T08:00:00Z"))
    support.wait_until(lambda: "5 overdue" in " ".join(month()["veto_reasons"]), message="newer figure applied")
    publish(stack["amqp_uri"], "tasks.events", ledger_event(ids[ZHOUJIASHAN], ZHOUJIASHAN, 1, "2026-11-22T08:00:00Z"))
    lifted = support.wait_until(lambda: month() if not month()["vetoed"] else None, message="veto lifted")
    assert lifted["grade"] == "优秀"


# --- 通报批评 of a 先进 community, then revoked on appeal (申诉成立) ------------------------------------
# Worked by hand: 周家山 (96 + 94) / 2 = 95 → 优秀, rank 1; 飨堂 (92 + 90) / 2 = 91 → 先进, rank 2.
# Vetoed, 飨堂 keeps 91 and rank 2 but is capped to 合格 in 2026-11, 2026-Q4, 2026-H2 and 2026;
# revoked, it is 先进 again everywhere, each figure republished with a higher revision.
# Each test starts its own stack and builds the stage it needs with the helpers below.

LONGER = ("2026-11", "2026-Q4", "2026-H2", "2026")
REVOKE_REASON = "经复核，申诉成立，撤销通报批评"


def xiangtang_figure(scoring, period: str) -> dict:
    return scoring.get(f"/subjects/{XIANGTANG}/scores/{period}").json()


def xiangtang_published(scores_tap, period: str) -> dict | None:
    """The highest revision of 飨堂's `period` figure published so far."""
    events = [e["payload"] for e in scores_tap.drain() if e["payload"]["subject"]["subject_id"] == XIANGTANG
              and e["payload"]["period"] == period]
    return max(events, key=lambda p: p["revision"]) if events else None


def refused(response, status):
    assert response.status_code == status, response.text
    return [e["field"] for e in response.json()["errors"]]


def two_communities_in_november(stack, scores_tap) -> dict[str, str]:
    """周家山 96 and 94, 飨堂 92 and 90 on two November Mondays; wait until 飨堂 is scored in every
    longer period and the tap holds every score_published staged. The subject ids by node."""
    inspection, scoring = stack["inspection"], stack["scoring"]
    ids = register_communities(inspection)
    for node, scores in ((ZHOUJIASHAN, (96, 94)), (XIANGTANG, (92, 90))):
        for day, score in zip(("2026-11-02", "2026-11-09"), scores):
            inspect(inspection, ids[node], day, score)
    settled(scoring, "2026-11", 2, count=2)
    support.wait_until(lambda: all(xiangtang_figure(scoring, k).get("inputs") == 2 for k in LONGER),
                       message="longer periods scored")
    all_published(stack["database_url"], scores_tap)
    return ids


def veto_xiangtang(scoring, ids):
    return scoring.post("/vetoes", {"subject_id": ids[XIANGTANG], "period": "2026-11", "reason": "criticism",
                                    "note": "背街小巷垃圾堆积", "reference": "浉爱卫〔2026〕15号"})


def wait_veto_published_everywhere(scores_tap) -> dict[str, int]:
    """Wait until the vetoed figure of every longer period is published; their revisions."""
    support.wait_until(lambda: all((xiangtang_published(scores_tap, k) or {}).get("vetoed") for k in LONGER),
                       message="the veto published")
    return {k: xiangtang_published(scores_tap, k)["revision"] for k in LONGER}


def vetoed_xiangtang(stack, scores_tap) -> dict:
    """The stage after the veto: issued, published for every longer period, every event relayed.
    The veto id, the capped figures and the vetoed figures' published revisions."""
    scoring = stack["scoring"]
    ids = two_communities_in_november(stack, scores_tap)
    veto = veto_xiangtang(scoring, ids)
    assert veto.status_code == 201, veto.text
    capped = {k: xiangtang_figure(scoring, k) for k in LONGER}
    vetoed_revision = wait_veto_published_everywhere(scores_tap)
    all_published(stack["database_url"], scores_tap)
    return {"ids": ids, "veto_id": veto.json()["veto_id"], "capped": capped, "vetoed_revision": vetoed_revision}


def propose_revocation(scoring, veto_id: str):
    return scoring.post(f"/vetoes/{veto_id}/revoke", {"reason": REVOKE_REASON})


def second_administrator(scoring):
    return scoring.as_user("赵敏", [("administrator", STREET)])


def revoked_xiangtang(stack, scores_tap) -> dict:
    """The stage after the revocation: proposed by the test user, approved by 赵敏, the restored
    figures published; plus the approval id."""
    scoring = stack["scoring"]
    vetoed = vetoed_xiangtang(stack, scores_tap)
    proposed = propose_revocation(scoring, vetoed["veto_id"])
    assert proposed.status_code == 202, proposed.text
    approval_id = proposed.json()["approval_id"]
    approved = second_administrator(scoring).post(f"/approvals/{approval_id}/approve", {"note": "已核对申诉材料"})
    assert approved.status_code == 200, approved.text
    support.wait_until(lambda: all(not (xiangtang_published(scores_tap, k) or {"vetoed": True})["vetoed"]
                                   for k in LONGER), message="the revocation published")
    return {**vetoed, "approval_id": approval_id}


def test_before_any_veto_xiangtang_is_xianjin_in_every_longer_period(stack, event_tap):
    """飨堂's November mean of 91 makes it 先进 in 2026-11, 2026-Q4, 2026-H2 and 2026."""
    scores_tap = event_tap(("scoring.events", "score_published"))
    two_communities_in_november(stack, scores_tap)
    scoring = stack["scoring"]
    assert {k: xiangtang_figure(scoring, k)["grade"] for k in LONGER} == {k: "先进" for k in LONGER}


def test_a_veto_caps_every_period_containing_the_month_to_hege_and_is_published(stack, event_tap):
    """Vetoed for November, 飨堂 keeps 91 and rank 2 but is 合格 in every longer period, each figure
    explaining the veto and republished as vetoed."""
    scores_tap = event_tap(("scoring.events", "score_published"))
    ids = two_communities_in_november(stack, scores_tap)
    scoring = stack["scoring"]
    veto = veto_xiangtang(scoring, ids)
    assert veto.status_code == 201, veto.text
    veto_id = veto.json()["veto_id"]
    capped = {k: xiangtang_figure(scoring, k) for k in LONGER}
    for k, f in capped.items():
        assert f["vetoed"] is True and f["grade"] == "合格" and f["score"] == 91.0, k
        assert f["explain"]["vetoes"][0]["veto_id"] == veto_id
    assert capped["2026-11"]["rank"] == 2
    wait_veto_published_everywhere(scores_tap)


def test_a_veto_is_listed_by_subject_and_period_with_who_issued_it(stack, event_tap):
    """GET /vetoes finds the veto under 飨堂 and any period containing the month, with its subject's
    name, issuer and reference, not revoked; other subjects and months have none; month 13 is refused."""
    scores_tap = event_tap(("scoring.events", "score_published"))
    veto_id = vetoed_xiangtang(stack, scores_tap)["veto_id"]
    scoring = stack["scoring"]
    listed = scoring.get(f"/vetoes?subject_id={XIANGTANG}&period=2026-H2")
    assert listed.status_code == 200, listed.text
    [entry] = listed.json()
    assert entry["veto_id"] == veto_id and entry["subject_id"] == XIANGTANG and entry["subject_name"] == "飨堂社区"
    assert entry["issued_by"] == TEST_USER and entry["reference"] == "浉爱卫〔2026〕15号"
    assert entry["revoked"] is False and entry["revoked_at"] is None
    assert scoring.get(f"/vetoes?subject_id={ZHOUJIASHAN}").json() == []
    assert scoring.get("/vetoes?period=2026-10").json() == []
    assert scoring.get("/vetoes?period=2026-13").status_code == 422


def test_refused_revocations_name_the_field_and_change_nothing(stack, event_tap):
    """A body naming who revokes, no reason, a blank reason and an unknown veto are refused with the
    field named; the scores are untouched and the veto still counts."""
    scores_tap = event_tap(("scoring.events", "score_published"))
    veto_id = vetoed_xiangtang(stack, scores_tap)["veto_id"]
    scoring = stack["scoring"]
    snapshot = scores_snapshot(stack["database_url"])
    assert refused(scoring.post(f"/vetoes/{veto_id}/revoke", {"reason": "申诉成立", "revoked_by": "区爱卫办"}),
                   422) == ["revoked_by"]  # who revokes comes from the token
    assert refused(scoring.post(f"/vetoes/{veto_id}/revoke", {}), 422) == ["reason"]
    assert refused(scoring.post(f"/vetoes/{veto_id}/revoke", {"reason": "  "}), 422) == ["reason"]
    assert refused(scoring.post("/vetoes/00000000-0000-0000-0000-000000000000/revoke",
                                {"reason": "申诉成立"}), 404) == ["veto_id"]
    assert scores_snapshot(stack["database_url"]) == snapshot
    assert all(xiangtang_figure(scoring, k)["vetoed"] for k in LONGER)


def test_a_proposed_revocation_changes_nothing_until_a_second_administrator_approves(stack, event_tap):
    """Proposing a revocation answers 202 with a pending approval on the veto; the proposer cannot
    approve it; the scores are untouched and the veto still counts."""
    scores_tap = event_tap(("scoring.events", "score_published"))
    veto_id = vetoed_xiangtang(stack, scores_tap)["veto_id"]
    scoring = stack["scoring"]
    snapshot = scores_snapshot(stack["database_url"])
    proposed = propose_revocation(scoring, veto_id)
    assert proposed.status_code == 202, proposed.text
    approval_id = proposed.json()["approval_id"]
    assert proposed.json()["status"] == "pending" and proposed.json()["veto"]["pending_revocation"] == approval_id
    assert refused(scoring.post(f"/approvals/{approval_id}/approve", {}), 403) == ["approval_id"]  # not the proposer
    assert scores_snapshot(stack["database_url"]) == snapshot
    assert all(xiangtang_figure(scoring, k)["vetoed"] for k in LONGER)


def test_an_approved_revocation_restores_the_grade_everywhere_and_republishes_it(stack, event_tap):
    """Approved by a second administrator, the veto no longer counts: 飨堂 is 先进 with 91 and rank 2
    again in every longer period, each figure a higher revision, published above the vetoed one."""
    scores_tap = event_tap(("scoring.events", "score_published"))
    vetoed = vetoed_xiangtang(stack, scores_tap)
    scoring = stack["scoring"]
    capped, vetoed_revision = vetoed["capped"], vetoed["vetoed_revision"]
    proposed = propose_revocation(scoring, vetoed["veto_id"])
    assert proposed.status_code == 202, proposed.text
    approval_id = proposed.json()["approval_id"]
    revoked = second_administrator(scoring).post(f"/approvals/{approval_id}/approve", {"note": "已核对申诉材料"})
    assert revoked.status_code == 200, revoked.text
    body = revoked.json()
    assert body["status"] == "approved" and body["decided_by"] == "赵敏 (user-赵敏)"
    assert body["veto"]["revoked"] is True and body["veto"]["revoked_by"] == TEST_USER and body["veto"]["revoked_at"]
    assert body["veto"]["revoke_approved_by"] == "赵敏 (user-赵敏)"
    assert {f["period"]: (f["grade"], f["vetoed"]) for f in body["period_scores"]} == {
        k: ("先进", False) for k in LONGER}
    for k in LONGER:
        f = xiangtang_figure(scoring, k)
        assert f["grade"] == "先进" and f["vetoed"] is False and f["veto_reasons"] == [] and f["score"] == 91.0
        assert f["explain"]["vetoes"] == [] and f["revision"] > capped[k]["revision"]
    assert by_node(ranking(scoring, "2026-11")["ranking"])[XIANGTANG]["rank"] == 2
    support.wait_until(lambda: all(not (xiangtang_published(scores_tap, k) or {"vetoed": True})["vetoed"]
                                   for k in LONGER), message="the revocation published")
    for k in LONGER:
        event = xiangtang_published(scores_tap, k)
        assert event["grade"] == "先进" and event["revision"] > vetoed_revision[k]


def test_a_revoked_veto_is_kept_on_record_but_listed_only_on_request(stack, event_tap):
    """After the revocation GET /vetoes no longer lists the veto; include_revoked=true shows it with
    the revocation's reason and who proposed it."""
    scores_tap = event_tap(("scoring.events", "score_published"))
    veto_id = revoked_xiangtang(stack, scores_tap)["veto_id"]
    scoring = stack["scoring"]
    assert scoring.get(f"/vetoes?subject_id={XIANGTANG}").json() == []
    [kept] = scoring.get(f"/vetoes?subject_id={XIANGTANG}&include_revoked=true").json()
    assert kept["veto_id"] == veto_id and kept["revoked"] is True
    assert kept["revoke_reason"] == REVOKE_REASON and kept["revoked_by"] == TEST_USER


def test_revoking_a_revoked_veto_twice_is_a_conflict_and_changes_nothing(stack, event_tap):
    """A second revocation and a second approval of the same request answer 409 naming the id; no
    score changes and nothing more is published."""
    scores_tap = event_tap(("scoring.events", "score_published"))
    revoked = revoked_xiangtang(stack, scores_tap)
    scoring, veto_id, approval_id = stack["scoring"], revoked["veto_id"], revoked["approval_id"]
    published_before = all_published(stack["database_url"], scores_tap)
    snapshot = scores_snapshot(stack["database_url"])
    assert refused(scoring.post(f"/vetoes/{veto_id}/revoke", {"reason": "再次撤销"}), 409) == ["veto_id"]
    assert refused(second_administrator(scoring).post(f"/approvals/{approval_id}/approve", {}), 409) == ["approval_id"]
    assert scores_snapshot(stack["database_url"]) == snapshot
    assert all_published(stack["database_url"], scores_tap) == published_before
    [kept] = scoring.get("/vetoes?include_revoked=true").json()
    assert kept["revoked_by"] == TEST_USER
    assert "/vetoes/{veto_id}/revoke" in scoring.get("/openapi.json").json()["paths"]


def test_the_child_last_heard_gauge_comes_back_from_the_database_after_a_restart(amqp_uri, database_url):
    from datetime import datetime, timezone
    from prometheus_client import REGISTRY
    from sqlalchemy.orm import Session
    from services.plumbing.db import make_engine
    from services.scoring import metrics
    from services.scoring.models import ChildFreshness

    child = "411502009000"
    heard = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)
    port = support.free_port()
    config = support.base_config(amqp_uri, database_url, WEB_ADDRESSES={"scoring": f"127.0.0.1:{port}"},
                                 SCORING_FRESHNESS_SECONDS=0.2)
    gauge = lambda: REGISTRY.get_sample_value("chuangwei_child_last_heard_timestamp_seconds", {"child": child})  # noqa: E731
    with support.running_services(config, ScoringService):
        engine = make_engine(database_url)
        try:
            with Session(engine) as session, session.begin():  # what the stack remembered before it stopped
                session.add(ChildFreshness(child_node=child, name="某街道", last_heard_at=heard, last_event_at=heard,
                                           last_event_type="score_published", events=3))
        finally:
            engine.dispose()
        if gauge() is not None:  # a fresh process knows nothing
            metrics.CHILD_LAST_HEARD.remove(child)
        assert gauge() is None
        support.wait_until(lambda: gauge() == heard.timestamp(), timeout=10, message="the gauge refreshed")
