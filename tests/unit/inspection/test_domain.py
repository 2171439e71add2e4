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


def test_future_inspections_beyond_a_day_of_clock_drift_are_refused():
    check_inspected_at(NOW + timedelta(hours=23, minutes=59), NOW)
    check_inspected_at(NOW + timedelta(hours=24), NOW)
    with pytest.raises(InspectionRuleViolation, match="future") as info:
        check_inspected_at(NOW + timedelta(hours=24, seconds=1), NOW)
    assert info.value.field == "inspected_at"


# --- who sees what ---

STREET, COMMUNITY, OTHER_STREET = "411502008000", "411502008001", "411502003000"


def Caller(*nodes):
    """A viewer of these nodes (an office role: the inspecting side where it covers the office)."""
    from services.contracts.identity import Grant, Principal
    return Principal(subject="u-1", name="王芳", grants=tuple(Grant("viewer", n) for n in nodes))


SIDES = [
    # caller's node, kind, released → may see, redacted fields
    (STREET, "unannounced", False, True, ()),
    (STREET, "unannounced", True, True, ()),
    ("410000000000", "unannounced", False, True, ()),
    (COMMUNITY, "unannounced", False, False, None),
    (COMMUNITY, "unannounced", True, True, ("inspectors", "note", "recorded_by", "submitted_by", "released_by")),
    (COMMUNITY, "routine", False, True, ()),
    (COMMUNITY, "announced", False, True, ()),
    (OTHER_STREET, "routine", False, False, None),
    (OTHER_STREET, "unannounced", True, False, None),
]


@pytest.mark.parametrize("node,kind,released,sees,redacted", SIDES)
def test_an_unannounced_inspection_is_the_inspecting_sides_until_released(node, kind, released, sees, redacted):
    from services.inspection.domain import may_see_inspection, redacted_for
    caller = Caller(node)
    assert may_see_inspection(caller, kind=kind, subject_node=COMMUNITY, inspecting_node=STREET,
                              released=released) is sees
    if sees:
        assert redacted_for(caller, kind=kind, inspecting_node=STREET) == redacted


def test_subtree_prefixes_match_is_within():
    from services.contracts.nodes import is_within
    from services.inspection.domain import subtree_prefix
    for node in ("410000000000", "411500000000", "411502000000", STREET, COMMUNITY, "441900003000"):
        prefix = subtree_prefix(node)
        for code in (STREET, COMMUNITY, "411502008010", OTHER_STREET, "411503001001", "441900003001"):
            assert code.startswith(prefix) == is_within(code, node), (node, code)
