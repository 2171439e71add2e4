from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest

from services.contracts.checklists import default_catalogue
from services.inspection.domain import InspectionRuleViolation, check_inspected_at, score_results

NOW = datetime(2026, 11, 20, 1, 30, tzinfo=timezone.utc)
TOILET = default_catalogue().checklist("2010.1", "public-toilet")  # PT-02: 20 points, 5 per finding


@dataclass
class Result:
    item_code: str
    findings: int
    deduction: float | None = None
    note: str | None = None
    evidence: list = field(default_factory=list)
    gps: object = None
    deadline_at: datetime | None = None


def test_a_clean_inspection_scores_full_marks():
    sheet = score_results(TOILET, [], NOW)
    assert sheet.score == 100 and sheet.points_deducted == 0 and sheet.findings == ()


def test_deductions_per_finding_and_explicit():
    sheet = score_results(TOILET, [Result("PT-02", 2), Result("PT-03", 1, deduction=3), Result("PT-01", 0)], NOW)
    assert sheet.points_deducted == 13
    assert sheet.score == 87
    assert [s.item.code for s in sheet.findings] == ["PT-02", "PT-03"]


def test_each_item_is_capped_at_its_points():
    sheet = score_results(TOILET, [Result("PT-02", 9)], NOW)  # 9 × 5 = 45 > 20
    assert sheet.items[0].deduction == 20 and sheet.score == 80


def test_score_never_below_zero_and_scaled():
    everything = [Result(item.code, 50) for _, item in TOILET.items()]
    assert score_results(TOILET, everything, NOW).score == 0
    half = score_results(TOILET, [Result("PT-02", 4)], NOW, scale=1000)
    assert half.score == 800


def test_explicit_deduction_above_the_cap_is_refused():
    with pytest.raises(InspectionRuleViolation) as info:
        score_results(TOILET, [Result("PT-01", 1), Result("PT-02", 1, deduction=21)], NOW)
    assert info.value.field == "results[1].deduction"
    assert "20" in info.value.reason


def test_unknown_item_names_the_field():
    with pytest.raises(InspectionRuleViolation) as info:
        score_results(TOILET, [Result("RV-01", 1)], NOW)
    assert info.value.field == "results[0].item_code"


def test_deduction_without_a_finding_is_refused():
    with pytest.raises(InspectionRuleViolation, match="at least one finding"):
        score_results(TOILET, [Result("PT-02", 0, deduction=5)], NOW)


def test_deadline_must_follow_the_inspection():
    with pytest.raises(InspectionRuleViolation) as info:
        score_results(TOILET, [Result("PT-02", 1, deadline_at=NOW - timedelta(hours=1))], NOW)
    assert info.value.field == "results[0].deadline_at"


def test_future_inspections_beyond_clock_drift_are_refused():
    check_inspected_at(NOW + timedelta(minutes=4), NOW)
    with pytest.raises(InspectionRuleViolation, match="future"):
        check_inspected_at(NOW + timedelta(minutes=6), NOW)
