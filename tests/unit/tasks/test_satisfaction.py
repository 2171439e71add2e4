"""A low satisfaction item (群众满意率, `satisfaction_item_low`) shaped as a one-finding
inspection for the ledger: the survey item as the finding, the rate in the note, a one-point
marker, a deterministic task id and the office's time limit."""
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.contracts.events import parse_event
from services.contracts.events.indicators import SatisfactionItemLow
from services.tasks import satisfaction
from services.tasks.operations import Settings

SAMPLE = Path(__file__).resolve().parents[3] / "services" / "contracts" / "events" / "samples" \
    / "satisfaction_item_low.v1.json"
FOUND = datetime(2026, 11, 23, 6, 30, tzinfo=timezone.utc)


def sample() -> SatisfactionItemLow:
    _, payload = parse_event(json.loads(SAMPLE.read_text(encoding="utf-8")), "satisfaction_item_low")
    return payload


def low(**changes) -> SatisfactionItemLow:
    data = sample().model_dump(mode="json")
    for key, value in changes.items():
        if isinstance(value, dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return SatisfactionItemLow.model_validate(data)


def test_a_low_item_becomes_a_one_finding_inspection_of_the_surveying_office():
    event = sample()
    inspection = satisfaction.as_inspection(event)
    [finding] = inspection.findings
    assert (inspection.inspecting_node, inspection.kind.value, inspection.inspectors) == (
        "411502008000", "citizen_report", ["群众满意度调查"])
    assert (inspection.subject.subject_id, inspection.subject.node, inspection.subject.name,
            inspection.subject.subject_type.value) == ("411502008001", "411502008001", "周家山社区", "child_unit")
    assert inspection.place is None
    assert (inspection.checklist.catalogue_id, inspection.checklist.version, inspection.checklist.code) == (
        "survey", "1", "residents-2026")
    assert (inspection.inspected_at, inspection.points_deducted) == (FOUND, 0.0)
    assert (finding.item_code, finding.item_text) == ("Q1", "您对辖区公厕的卫生状况是否满意？")
    assert (finding.category_code, finding.category_name, finding.severity.value) == ("satisfaction", "群众满意率", "minor")
    assert (finding.findings, finding.deduction, finding.max_points) == (1, 1.0, 1.0)
    assert finding.note == "群众满意度调查 2026-11：「您对辖区公厕的卫生状况是否满意？」满意率 56.00%（28/50），低于 60%"
    assert finding.deadline_at == FOUND + timedelta(days=30)   # our default time limit
    assert finding.evidence == []


def test_the_note_states_the_rate_answers_and_threshold():
    event = low(item={"text": "您对公厕卫生是否满意？"}, rate=0.72, satisfied=18, answers=25, finding_below=0.9)
    assert satisfaction.note(event) == "群众满意度调查 2026-11：「您对公厕卫生是否满意？」满意率 72.00%（18/25），低于 90%"
    assert satisfaction.note(low(rate=0.8333, satisfied=5, answers=6, finding_below=0.855)).endswith(
        "满意率 83.33%（5/6），低于 85.5%")


def test_the_task_id_is_the_same_for_the_same_finding_whatever_else_changed():
    first = sample()
    tid = satisfaction.task_id(first)
    assert uuid.UUID(tid).version == 5 and satisfaction.task_id(sample()) == tid
    # The same finding published again (another time, another count): the same task.
    assert satisfaction.task_id(low(rate=0.5, satisfied=25, found_at="2026-11-24T00:00:00Z")) == tid
    # Another survey, period, item or responsible area: another task.
    others = {satisfaction.task_id(low(survey_id="1f3e2d1c-5b4a-4c3d-9e8f-7a6b5c4d3e2f")),
              satisfaction.task_id(low(period="2026-12")), satisfaction.task_id(low(item={"code": "Q2"})),
              satisfaction.task_id(low(responsible={"subject_id": "411502008002", "node": "411502008002"}))}
    assert tid not in others and len(others) == 4
    # One area's low items of one wave are one inspection; the unique (inspection, item) holds.
    assert satisfaction.inspection_id(low(item={"code": "Q2"})) == satisfaction.inspection_id(first)
    assert satisfaction.inspection_id(low(responsible={"subject_id": "411502008002", "node": "411502008002"})) \
        != satisfaction.inspection_id(first)


def test_the_time_limit_is_the_offices_setting():
    assert Settings.from_config({}).satisfaction_deadline_days == 30
    assert Settings.from_config({"TASKS_SATISFACTION_DEADLINE_DAYS": ""}).satisfaction_deadline_days == 30
    days = Settings.from_config({"TASKS_SATISFACTION_DEADLINE_DAYS": "14"}).satisfaction_deadline_days
    [finding] = satisfaction.as_inspection(sample(), days).findings
    assert finding.deadline_at == FOUND + timedelta(days=14)
    # Not positive: a task needs a time limit after its finding, so the default applies.
    assert satisfaction.as_inspection(sample(), 0).findings[0].deadline_at == FOUND + timedelta(days=30)


def test_a_long_item_code_fits_the_ledger_and_keeps_its_own_task():
    code = "Q-" + "x" * 60
    event = low(item={"code": code})
    [finding] = satisfaction.as_inspection(event).findings
    assert finding.item_code == code[:32]
    assert satisfaction.task_id(event) != satisfaction.task_id(low(item={"code": code[:32]}))


@pytest.mark.parametrize("fraction,text", [(0.9, "90%"), (0.6, "60%"), (0.855, "85.5%"), (0.8888, "88.88%")])
def test_thresholds_read_as_percentages(fraction, text):
    assert satisfaction.percent(fraction) == text
