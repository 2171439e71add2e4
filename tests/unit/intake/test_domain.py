"""Intake rules: categories and time limits, locating by address, duplicates, public bounds."""
from datetime import datetime, timedelta, timezone

import pytest

from services.contracts.events.intake import CaseReported
from services.contracts.events.inspection import SubjectRef
from services.contracts.nodes import load_division_rows
from services.intake import domain
from services.intake.domain import CaseFacts, CaseStatus
from services.plumbing.rate_limit import RateLimit
from services.tasks.cases import as_inspection
from tests.support import ROOT

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc)
HOME = "411502008000"


def divisions():
    return list(load_division_rows(sorted((ROOT / "infra" / "divisions").glob("*.csv"))))


def test_shipped_categories_carry_their_time_limits():
    catalogue = domain.load_catalogue()
    exposed = catalogue.get("0101")
    assert (exposed.name, exposed.group_name, exposed.hours, exposed.severity) == ("暴露垃圾", "市容环境", 2.0, "major")
    assert exposed.deadline_from(T0) == T0 + timedelta(hours=2)
    assert catalogue.get("0501").name == "占道经营"
    assert {c.name for c in catalogue.categories} >= {"暴露垃圾", "道路不洁", "乱张贴", "占道经营", "公厕不洁", "病媒生物孳生"}


def test_an_unknown_category_names_the_field():
    with pytest.raises(domain.IntakeRuleViolation) as raised:
        domain.load_catalogue().get("9999")
    assert raised.value.field == "service_code" and "9999" in raised.value.reason


def test_an_office_file_with_a_non_positive_time_limit_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('catalogue_id: x\nversion: "1"\ngroups:\n  - {code: "01", name: 市容, categories: '
                    '[{code: "0101", name: 暴露垃圾, hours: 0}]}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="positive"):
        domain.load_catalogue(path)


@pytest.mark.parametrize("address,node", [
    ("浉河区金牛山街道周家山社区周家山路12号", "411502008001"),   # the community's short name
    ("金牛山街道华森社区居民委员会门口", "411502008002"),           # the statistical name
    ("浉河区金牛山街道某路口", "411502008000"),                    # only the street
    ("平桥区某路", None),                                        # outside this office's area
    ("某某路3号", None),
])
def test_an_address_is_located_to_the_most_specific_division_it_names(address, node):
    assert domain.node_from_address(address, divisions(), HOME) == node


def facts(case_id="a", code="0101", node="411502008001", at=T0, place=None, address=None, gps=None,
          status=CaseStatus.open):
    return CaseFacts(case_id, code, node, at, place, address, gps, status)


def test_same_category_and_place_within_the_window_is_one_problem():
    first = facts("a", place="p1")
    assert domain.same_problem(facts("b", place="p1", at=T0 + timedelta(hours=23)), first)
    assert not domain.same_problem(facts("b", place="p1", at=T0 + timedelta(hours=25)), first)
    assert not domain.same_problem(facts("b", code="0103", place="p1", at=T0 + timedelta(hours=1)), first)
    assert not domain.same_problem(facts("b", place="p2", at=T0 + timedelta(hours=1)), first)


def test_without_a_place_nearby_coordinates_or_the_same_address_in_the_division_match():
    first = facts("a", gps=(32.1234, 114.0567), address="周家山路12号")
    assert domain.same_problem(facts("b", gps=(32.1236, 114.0567)), first)        # about 22 m away
    assert not domain.same_problem(facts("b", gps=(32.1250, 114.0567)), first)    # about 180 m away
    assert domain.same_problem(facts("b", address=" 周家山路１２号"), first)         # width and spacing
    assert not domain.same_problem(facts("b", node="411502008002", address="周家山路12号"), first)


def test_a_duplicate_merges_into_the_earliest_case_never_into_a_merged_one():
    earlier = [facts("c", at=T0 + timedelta(hours=1), place="p1"), facts("a", place="p1", status=CaseStatus.merged),
               facts("b", at=T0 + timedelta(minutes=30), place="p1")]
    assert domain.first_of_duplicates(facts("n", at=T0 + timedelta(hours=2), place="p1"), earlier).case_id == "b"


def test_public_rate_limit_counts_the_window_and_says_when_to_come_back():
    times = [T0 + timedelta(minutes=m) for m in (0, 10, 20)]
    assert RateLimit(4, timedelta(hours=1)).retry_after(times, T0 + timedelta(minutes=30)) is None
    assert RateLimit(3, timedelta(hours=1)).retry_after(times, T0 + timedelta(minutes=30)) == 30 * 60
    assert RateLimit(3, timedelta(hours=1)).retry_after(times, T0 + timedelta(minutes=61)) is None


def test_identical_content_is_identical_whatever_its_spacing_or_width():
    assert domain.content_digest("0101", "有 垃圾ＡＢ") == domain.content_digest("0101", "有垃圾ab")
    assert domain.content_digest("0101", "有垃圾") != domain.content_digest("0103", "有垃圾")


def test_the_reporter_sees_open_or_closed_and_a_note():
    assert domain.open311_status("fix_submitted") == "open"
    assert domain.open311_status("rejected") == "closed"
    assert domain.status_note("open", "周家山社区", T0) == "已派遣至周家山社区，限2026-11-20 10:00前处置"
    assert domain.status_note("rejected", reason="非本辖区事项") == "不予受理：非本辖区事项"


def test_a_case_becomes_a_one_finding_inspection_with_its_time_limit():
    case = CaseReported(
        case_id="5d0c7a52-3e0f-4a61-9a55-2b8f7e1c4d10", source="digital_city", receiving_node=HOME,
        channel="数字城管平台", service_code="0101", service_name="暴露垃圾", group_code="01", group_name="市容环境",
        severity="major", description="有暴露垃圾", address="周家山路12号", node="411502008001",
        responsible=SubjectRef(subject_id="s-1", node="411502008001", name="周家山社区", subject_type="child_unit"),
        reported_at=T0, deadline_at=T0 + timedelta(hours=2))
    inspection = as_inspection(case)
    [finding] = inspection.findings
    assert (str(inspection.inspection_id), inspection.kind.value, inspection.inspecting_node) == (
        case.case_id, "digital_city", HOME)
    assert (finding.item_code, finding.item_text, finding.deadline_at) == ("0101", "暴露垃圾", T0 + timedelta(hours=2))
    assert finding.note == "有暴露垃圾（周家山路12号）"
