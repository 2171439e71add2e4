"""Pure scoring rules: every expected figure is worked out by hand in the comments."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.contracts.nodes import Tier
from services.contracts.periods import Period, PeriodKind
from services.scoring import domain
from services.scoring.domain import (AppraisalInput, ChildInput, LedgerInput, RankEntry, ScoreInput,
                                     ScoringRuleViolation, VetoInput)

CST = timezone(timedelta(hours=8))


@pytest.fixture(scope="module")
def street():
    return domain.load_shipped_policy("street", Tier.street)


@pytest.fixture(scope="module")
def city():
    return domain.load_shipped_policy("city", Tier.city)


def inp(score, day, kind="routine", scale=100, ident=None):
    when = datetime.fromisoformat(day).replace(hour=10, tzinfo=CST)
    return ScoreInput(ident or f"{kind}-{day}-{score}", kind, score, scale, when)


def p(key):
    return Period.parse(key)


# --- policies ---------------------------------------------------------------------------


def test_shipped_policies(street, city):
    assert street.scale == 100 and street.composite.routine_weight == 75 and street.composite.appraisal_weight == 25
    assert [g.name for g in street.grades] == ["优秀", "先进", "合格", "不合格"]
    assert street.long_period_rule == "mean_of_months"
    assert city.scale == 1000
    assert {g.name: g.weight for g in city.source_weights} == {"暗访": 40, "明查": 50, "数字城管": 10}
    assert city.ranking.periods == [PeriodKind.quarter]


@pytest.mark.parametrize("change,field", [
    ({"source_weights": [{"name": "暗访", "kinds": ["unannounced"], "weight": 40},
                         {"name": "明查", "kinds": ["announced"], "weight": 50}]}, "source_weights"),
    ({"source_weights": [{"name": "a", "kinds": ["unannounced"], "weight": 50},
                         {"name": "b", "kinds": ["unannounced"], "weight": 50}]}, "source_weights[1].kinds"),
    ({"composite": {"periods": ["half_year"], "routine_weight": 70, "appraisal_weight": 25}}, "composite"),
    ({"ranking": {"periods": ["month"], "tiers": {"street": {"min_inspections": 1}}}}, "ranking.tiers.community"),
    ({"ranking": {"periods": [], "tiers": {"street": {"min_inspections": 1}, "community": {"min_inspections": 1}}}},
     "ranking.periods"),
    ({"grades": [{"name": "合格", "min": 60}, {"name": "优秀", "min": 90}, {"name": "差", "min": 0}]}, "grades"),
    ({"grades": [{"name": "优秀", "min": 90, "advanced": True}, {"name": "合格", "min": 10}]}, "grades[1].min"),
    ({"grades": [{"name": "优秀", "min": 90, "advanced": True}, {"name": "先进", "min": 0, "advanced": True}]},
     "grades"),
    ({"scale": 150}, "scale"),
    ({"case_points": {"closed_on_time": 40, "closed_late": 50, "overdue": 0}}, "case_points"),
    ({"weights": {}}, "weights"),
    ({"rollup": {"combine": "weighted", "child_weights": {"41150200800X": 2}}}, "rollup.child_weights.41150200800X"),
])
def test_bad_policies_name_the_field(street, change, field):
    document = {**street.model_dump(mode="json"), **change}
    with pytest.raises(ScoringRuleViolation) as info:
        domain.parse_policy(document, Tier.street)
    assert info.value.field == field


def test_case_points_come_from_the_policy(street, city):
    # Shipped: closed on time full marks, closed late half, overdue none.
    assert [domain.case_points(city, o) for o in ("closed_on_time", "closed_late", "overdue")] == [100, 50, 0]
    assert domain.case_points(street, "closed_late") == 50  # the default where a policy is silent
    stricter = domain.parse_policy({**city.model_dump(mode="json"),
                                    "case_points": {"closed_on_time": 100, "closed_late": 30, "overdue": 0}}, Tier.city)
    assert domain.case_points(stricter, "closed_late") == 30
    with pytest.raises(ScoringRuleViolation) as info:
        domain.parse_policy({**city.model_dump(mode="json"), "case_points": {"closed_on_time": 120}}, Tier.city)
    assert (info.value.field, info.value.reason) == ("case_points.closed_on_time", "Input should be less than or equal to 100")


def test_a_tier_above_the_office_need_not_be_ranked(street):
    document = street.model_dump(mode="json")
    document["ranking"]["tiers"] = {"community": {"min_inspections": 2}}
    assert domain.parse_policy(document, Tier.community).ranking.tiers.keys() == {Tier.community}
    with pytest.raises(ScoringRuleViolation) as info:
        domain.parse_policy(document, Tier.street)
    assert (info.value.field, info.value.reason) == ("ranking.tiers.street", "tier street (街道) would be left unranked")


# --- periods ----------------------------------------------------------------------------


def test_periods_of_an_inspection_use_china_time():
    moment = datetime(2026, 11, 30, 17, 0, tzinfo=timezone.utc)  # 01:00 on 1 December in Beijing
    assert [x.key for x in domain.periods_of(moment)] == ["2026-W49", "2026-12", "2026-Q4", "2026-H2", "2026"]


def test_covering_periods_and_applies_to():
    assert [x.key for x in domain.covering_periods(p("2026-11"))] == ["2026-11", "2026-Q4", "2026-H2", "2026"]
    assert domain.applies_to(p("2026-11"), p("2026-H2"))
    assert not domain.applies_to(p("2026-11"), p("2026-H1"))
    assert not domain.applies_to(p("2026-11"), p("2026-W47"))  # a month veto does not reach back into weeks
    assert domain.next_period(p("2026-12")).key == "2027-01"
    with pytest.raises(ScoringRuleViolation) as info:
        domain.parse_period("2026-13")
    assert info.value.field == "period"


# --- means and weights ------------------------------------------------------------------


def test_month_is_the_mean_of_its_inspections(street):
    result = domain.subject_score(p("2026-11"), street, [inp(96, "2026-11-02"), inp(94, "2026-11-09"),
                                                          inp(98, "2026-11-16"), inp(92, "2026-11-23")])
    assert result.score == 95.0 and result.inputs == 4  # (96+94+98+92)/4
    assert result.grade == "优秀"


def test_longer_periods_average_the_months_not_the_inspections(street):
    # October: one inspection of 80; November: three of 90, 94, 98 (mean 94).
    inputs = [inp(80, "2026-10-12"), inp(90, "2026-11-02"), inp(94, "2026-11-09"), inp(98, "2026-11-16")]
    quarter = domain.subject_score(p("2026-Q4"), street, inputs)
    assert quarter.score == 87.0  # (80 + 94) / 2, not (80+90+94+98)/4 = 90.5
    assert [m["month"] for m in quarter.explain["months"]] == ["2026-10", "2026-11"]
    per_inspection = street.model_copy(update={"long_period_rule": "mean_of_inspections"})
    assert domain.subject_score(p("2026-Q4"), per_inspection, inputs).score == 90.5


def test_city_weights_by_source_on_1000_points(city):
    # 暗访 80 and 90 (mean 85 → 850), 明查 92 (920), 数字城管 70 (700), on 1000 points:
    # 0.4 × 850 + 0.5 × 920 + 0.1 × 700 = 340 + 460 + 70 = 870.
    inputs = [inp(80, "2026-11-02", "unannounced"), inp(90, "2026-11-09", "unannounced"),
              inp(92, "2026-11-10", "announced"), inp(70, "2026-11-11", "digital_city"),
              inp(10, "2026-11-12", "self_check")]
    result = domain.subject_score(p("2026-11"), city, inputs)
    assert result.score == 870.0
    assert result.inputs == 4  # the self-check is not a weighted source
    assert [i["counted"] for i in result.explain["inspections"]] == [True, True, True, True, False]
    assert result.grade == "良"


def test_missing_source_scales_the_other_weights_up(city):
    # No 数字城管: 40 and 50 become 40/90 and 50/90: (40 × 800 + 50 × 900) / 90 = 855.56
    inputs = [inp(80, "2026-11-02", "unannounced"), inp(90, "2026-11-09", "announced")]
    result = domain.subject_score(p("2026-11"), city, inputs)
    assert result.score == pytest.approx(855.56, abs=0.005)
    groups = {g["name"]: g for g in result.explain["source_weights"]}
    assert groups["数字城管"]["effective_weight"] == 0 and groups["暗访"]["effective_weight"] == 44.44


def test_no_inspections_no_score(street):
    result = domain.subject_score(p("2026-11"), street, [])
    assert result.score is None and result.grade is None and result.inputs == 0


# --- composite ----------------------------------------------------------------------------


def test_half_year_composite(street):
    inputs = [inp(80, "2026-10-12"), inp(84, "2026-10-19"), inp(88, "2026-11-02")]
    # routine = mean(82, 88) = 85; composite = 0.75 × 85 + 0.25 × 93 = 87
    result = domain.subject_score(p("2026-H2"), street, inputs, appraisal=AppraisalInput(93))
    assert result.routine == 85.0 and result.score == 87.0 and result.appraisal == 93
    assert result.explain["composite"]["appraisal"]["score"] == 93
    assert domain.subject_score(p("2026-H2"), street, inputs).score == 85.0  # not entered yet: routine only
    zero = street.model_copy(update={"composite": street.composite.model_copy(update={"missing_appraisal": "zero"})})
    assert domain.subject_score(p("2026-H2"), zero, inputs).score == 63.75  # 0.75 × 85
    # The appraisal counts only in the composite periods.
    assert domain.subject_score(p("2026-Q4"), street, inputs, appraisal=AppraisalInput(0)).score == 85.0


# --- roll-up ------------------------------------------------------------------------------


def children():
    return [ChildInput("411502008001", "周家山社区", 95, 100, 4), ChildInput("411502008006", "飨堂社区", 91, 100, 4),
            ChildInput("411502008008", "十里河社区", 88, 100, 4), ChildInput("411502008009", "无分社区", None, 100, 0)]


def test_parent_combines_children(street):
    mean = domain.subject_score(p("2026-11"), street, [], children())
    assert mean.score == pytest.approx(91.33, abs=0.005) and mean.inputs == 3  # (95+91+88)/3
    weighted = street.model_copy(update={"rollup": domain.RollupRule(
        combine="weighted", child_weights={"411502008001": 2})})
    assert domain.subject_score(p("2026-11"), weighted, [], children()).score == 92.25  # (190+91+88)/4
    minimum = street.model_copy(update={"rollup": domain.RollupRule(combine="minimum")})
    assert domain.subject_score(p("2026-11"), minimum, [], children()).score == 88.0


def test_child_weight_codes_are_normalised(street):
    document = street.model_dump(mode="json")
    document["rollup"] = {"combine": "weighted", "child_weights": {"411502008": 3}}
    policy = domain.parse_policy(document, Tier.district)
    assert policy.rollup.child_weights == {"411502008000": 3}


def test_parent_own_inspections_blend_with_children(street):
    # own 80, children 91.333…: 50 % each → 85.67
    result = domain.subject_score(p("2026-11"), street, [inp(80, "2026-11-03")], children())
    assert result.score == pytest.approx(85.67, abs=0.005) and result.inputs == 4
    assert result.explain["own_inspections_weight"] == 50


def test_children_on_another_scale_are_converted(city):
    kids = [ChildInput("411502000000", "浉河区", 90, 100, 3), ChildInput("411503000000", "平桥区", 800, 1000, 3)]
    assert domain.subject_score(p("2026-Q4"), city, [], kids).score == 850.0  # (900 + 800) / 2


# --- vetoes and grades --------------------------------------------------------------------


def test_veto_keeps_the_score_but_caps_the_grade(street):
    inputs = [inp(91, "2026-11-02"), inp(91, "2026-11-09")]
    veto = VetoInput("criticism", "2026-11", "区爱卫办通报")
    result = domain.subject_score(p("2026-11"), street, inputs, vetoes=[veto])
    assert result.score == 91.0 and result.vetoed and result.grade == "合格"
    assert result.explain["grade_before_veto"] == "先进"
    assert result.veto_reasons == ["通报批评（criticism）：区爱卫办通报"]
    # The November veto counts in the half year too, not in October.
    assert domain.subject_score(p("2026-H2"), street, inputs, vetoes=[veto]).vetoed
    assert not domain.subject_score(p("2026-10"), street, [inp(91, "2026-10-05")], vetoes=[veto]).vetoed


def test_a_revoked_veto_no_longer_counts(street):
    inputs = [inp(91, "2026-11-02"), inp(91, "2026-11-09")]
    revoked = VetoInput("criticism", "2026-11", "区爱卫办通报", veto_id="v-1", revoked=True)
    standing = VetoInput("media_exposure", "2026-11", "信阳日报曝光", veto_id="v-2")
    for key in ("2026-11", "2026-Q4", "2026-H2", "2026"):
        lifted = domain.subject_score(p(key), street, inputs, vetoes=[revoked])
        assert not lifted.vetoed and lifted.grade == "先进" and lifted.explain["vetoes"] == []
        assert lifted.explain["grade_before_veto"] is None
    # With another veto still standing, only that one applies and is explained.
    result = domain.subject_score(p("2026-11"), street, inputs, vetoes=[revoked, standing])
    assert result.vetoed and result.grade == "合格"
    assert [v["veto_id"] for v in result.explain["vetoes"]] == ["v-2"]
    assert result.veto_reasons == ["媒体曝光（media_exposure）：信阳日报曝光"]


def test_a_low_score_is_not_lifted_by_the_cap(street):
    result = domain.subject_score(p("2026-11"), street, [inp(50, "2026-11-02")],
                                  vetoes=[VetoInput("media_exposure", "2026-11")])
    assert result.grade == "不合格" and result.explain["grade_before_veto"] is None


def test_overdue_condition_from_the_ledger(street):
    inputs = [inp(96, "2026-11-02")]
    over = [LedgerInput("2026-11", overdue_open=3, on_time_rate=0.9)]
    under = [LedgerInput("2026-11", overdue_open=2, on_time_rate=0.9)]
    vetoed = domain.subject_score(p("2026-11"), street, inputs, ledger=over)
    assert vetoed.vetoed and vetoed.grade == "合格" and "整改超期" in vetoed.veto_reasons[0]
    assert not domain.subject_score(p("2026-11"), street, inputs, ledger=under).vetoed
    rate = street.model_copy(update={"vetoes": domain.VetoRule(overdue=domain.OverdueVeto(on_time_rate_below=0.95))})
    assert domain.subject_score(p("2026-11"), rate, inputs, ledger=under).vetoed
    no_rule = street.model_copy(update={"vetoes": domain.VetoRule()})
    assert not domain.subject_score(p("2026-11"), no_rule, inputs, ledger=over).vetoed


@pytest.mark.parametrize("score,grade", [(95, "优秀"), (94.999, "优秀"), (94.99, "先进"), (90, "先进"),
                                         (89.99, "合格"), (60, "合格"), (59.99, "不合格"), (0, "不合格")])
def test_grade_bands(street, score, grade):
    assert domain.grade_for(score, False, street.grades)[0] == grade


# --- ranking ------------------------------------------------------------------------------


def test_ranking_ties_movement_and_small_samples():
    entries = [RankEntry("c", "十里河社区", 88.0, 4, 2), RankEntry("a", "周家山社区", 95.0, 4, 2),
               RankEntry("b", "飨堂社区", 91.0, 4, 2), RankEntry("d", "贤山社区", 91.0, 5, 2),
               RankEntry("e", "新社区", 99.0, 1, 2), RankEntry("f", "空社区", None, 0, 2)]
    previous = {"a": 2, "b": 1, "c": 3}
    results = {r.subject_id: r for r in domain.rank_peers(entries, previous)}
    assert [results[s].rank for s in "abdc"] == [1, 2, 2, 4]  # 飨堂 and 贤山 tie at 91 and share 2nd
    # Ties are listed by name, whatever order the entries came in.
    assert results["d"].position == 2 and results["b"].position == 3  # 贤 (U+8D24) before 飨 (U+98E8)
    assert results["a"].movement == 1 and results["b"].movement == -1 and results["c"].movement == -1
    assert results["d"].movement is None  # not ranked last period
    assert not results["e"].ranked and results["e"].rank is None  # one inspection: below the minimum sample
    assert not results["f"].ranked
    assert all(r.peers == 4 for r in results.values())
    assert [r.subject_id for r in sorted(results.values(), key=lambda r: r.position)][-2:] == ["e", "f"]
    again = domain.rank_peers(list(reversed(entries)), previous)
    assert sorted(again, key=lambda r: r.subject_id) == sorted(results.values(), key=lambda r: r.subject_id)


def test_unranked_period_kind():
    [result] = domain.rank_peers([RankEntry("a", "周家山社区", 95.0, 9, None)])
    assert not result.ranked and result.peers == 0
