"""Cases from the intake service (数字城管 / 群众举报) as rectification tasks.

A `case_reported` event becomes one task in this ledger, with the case's id as the task's id
(so the case's reporter follows the task's lifecycle events) and the category's time limit
as its deadline. The case is shaped as a one-finding inspection by the receiving office, so
every ledger rule applies unchanged: lights, urge notices, escalation, hand-down to a child
stack, relapse links and close-out with evidence. A case carries no points: its finding's
deduction is the one-point marker every task needs.
"""
from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy.orm import Session

from services.contracts.events.inspection import ChecklistRef, Finding, InspectionSubmitted
from services.contracts.events.intake import CaseReported
from services.tasks import operations as ops

CASE_CATALOGUE = "open311"
CASE_MARKER_POINTS = 1.0


def as_inspection(case: CaseReported) -> InspectionSubmitted:
    note = case.description
    if case.address:
        note = f"{note}（{case.address}）"
    if case.media_url:
        note = f"{note} 照片: {case.media_url}"
    finding = Finding(
        item_code=case.service_code, item_text=case.service_name, category_code=case.group_code,
        category_name=case.group_name, severity=case.severity, findings=1, deduction=CASE_MARKER_POINTS,
        max_points=CASE_MARKER_POINTS, note=note[:4000], evidence=list(case.media), gps=case.gps,
        deadline_hours=0, deadline_at=case.deadline_at)
    return InspectionSubmitted(
        inspection_id=UUID(case.case_id), inspecting_node=case.receiving_node, kind=case.source,
        subject=case.responsible, place=case.place,
        checklist=ChecklistRef(catalogue_id=CASE_CATALOGUE, version="v2", code=case.service_code),
        inspected_at=case.reported_at, submitted_at=case.reported_at, inspectors=[case.channel], score=0.0,
        scale=100, points_available=0.0, points_deducted=0.0, findings=[finding])


def open_case_task(session: Session, case: CaseReported, outbox, home: str, settings, now: datetime,
                   child_stacks: tuple[str, ...] = ()) -> list:
    if case.receiving_node != home:
        return []  # another office's intake: its cases are not in this ledger
    return ops.open_tasks(session, as_inspection(case), outbox, home, settings, now, correlation_id=case.case_id,
                          child_stacks=child_stacks, task_ids={case.service_code: case.case_id})
