"""How tasks and their history are shown: references for events, API views, redaction."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, not_, or_, select

from services.contracts.events.inspection import Evidence, PlaceRef
from services.contracts.events.tasks import Light, Responsible, TaskRef, TaskStatus
from services.contracts.periods import Period
from services.tasks import domain
from services.tasks.domain import REDACTED_INSPECTORS, Role
from services.tasks.models import Task, TaskHistory
from services.tasks.schemas import HistoryOut, LedgerQuery, ResponsibleOut, TaskOut
from services.tasks.operations.common import _redacted, visible_filter


# --- views -------------------------------------------------------------------------------


def task_ref(task: Task) -> TaskRef:
    return TaskRef(
        task_id=task.id, inspection_id=task.inspection_id, inspecting_node=task.inspecting_node,
        owner_node=task.owner_node,
        responsible=Responsible(subject_id=task.responsible_subject_id, node=task.responsible_node,
                                name=task.responsible_name),
        place=PlaceRef.model_validate(task.place) if task.place else None,
        item_code=task.item_code, item_text=task.item_text, category_code=task.category_code,
        category_name=task.category_name, severity=task.severity, deadline_at=task.deadline_at,
        status=task.status)


def _open_reason(kind: str, inspection_id: str, detail: str) -> str:
    return f"{kind} inspection {inspection_id}: {detail}"


def history_out(h: TaskHistory, task: Task | None = None, redact: bool = False) -> HistoryOut:
    actor, subject, reason = h.actor, h.actor_subject, h.reason
    if redact and h.role in (Role.inspector.value, domain.INSPECTOR):
        # The inspecting side acting on an unannounced inspection's task: the office, not the people.
        actor, subject = REDACTED_INSPECTORS, None
        if h.action == "open" and task is not None:
            reason = _open_reason(task.inspection_kind, task.inspection_id, task.item_text)
    return HistoryOut(at=h.at, actor=actor, actor_subject=subject, role=h.role, action=h.action,
                      from_status=h.from_status, to_status=h.to_status, reason=reason,
                      evidence=[Evidence.model_validate(e) for e in h.evidence or []])


def task_out(task: Task, now: datetime, with_history: bool = False, principal=None) -> TaskOut:
    found, deadline = task.found_at, task.deadline_at
    redact = _redacted(task, principal)
    return TaskOut(
        task_id=task.id, inspection_id=task.inspection_id, inspection_kind=task.inspection_kind,
        inspecting_node=task.inspecting_node, owner_node=task.owner_node,
        inspectors=[] if redact else (task.inspectors or []),
        subject_id=task.subject_id, subject_name=task.subject_name, subject_node=task.subject_node,
        responsible=ResponsibleOut(subject_id=task.responsible_subject_id, node=task.responsible_node,
                                   name=task.responsible_name),
        place=PlaceRef.model_validate(task.place) if task.place else None,
        checklist_code=task.checklist_code, item_code=task.item_code, item_text=task.item_text,
        category_code=task.category_code, category_name=task.category_name, severity=task.severity,
        findings=task.findings, deduction=task.deduction, note=None if redact else task.note,
        evidence=[Evidence.model_validate(e) for e in task.evidence or []],
        found_at=found, opened_at=task.opened_at, deadline_at=deadline,
        deadline_source=task.deadline_source, status=task.status,
        light=domain.light_of(task.status, found, deadline, now, task.overdue_since is not None),
        time_used=domain.time_used(found, deadline, task.closed_at or now),
        overdue=domain.is_overdue(task.status, deadline, now, task.overdue_since is not None),
        overdue_since=task.overdue_since,
        urge_count=task.urge_count or 0, fixed_by=task.fixed_by, fix_submitted_at=task.fix_submitted_at,
        fix_note=task.fix_note, after_evidence=[Evidence.model_validate(e) for e in task.after_evidence or []],
        closed_at=task.closed_at, verified_by=REDACTED_INSPECTORS if redact and task.verified_by else task.verified_by,
        on_time=task.on_time,
        hours_to_fix=task.hours_to_fix, escalated_to=task.escalated_to, escalated_at=task.escalated_at,
        escalation_reason=task.escalation_reason, answer_due_at=task.answer_due_at,
        coordination_pending=domain.coordination_pending(task.status, task.escalated_at, task.answered_at),
        relapse_of=task.relapse_of, relapse=task.relapse_of is not None, delegated_to=task.delegated_to,
        embargoed=bool(task.embargoed), released_at=task.released_at,
        history=[history_out(h, task, redact) for h in task.history] if with_history else None)


def _ledger_stmt(query: LedgerQuery, now: datetime, principal=None):
    stmt = select(Task)
    visible = visible_filter(principal)
    if visible is not None:
        stmt = stmt.where(visible)
    if query.subject_id:
        stmt = stmt.where(Task.responsible_subject_id == query.subject_id)
    if query.status:
        stmt = stmt.where(Task.status == query.status.value)
    if query.category:
        stmt = stmt.where(Task.category_code == query.category)
    if query.severity:
        stmt = stmt.where(Task.severity == query.severity.value)
    if query.place_id:
        stmt = stmt.where(Task.place_id == query.place_id)
    if query.relapse is not None:
        stmt = stmt.where(Task.relapse_of.is_not(None) if query.relapse else Task.relapse_of.is_(None))
    if query.period:
        start, end = Period.parse(query.period).instants()
        stmt = stmt.where(Task.found_at >= start, Task.found_at < end)
    if query.light:
        not_closed = Task.status != TaskStatus.closed.value
        red = or_(Task.deadline_at <= now, Task.overdue_since.is_not(None))
        stmt = stmt.where(not_closed, {
            Light.red: red,
            Light.yellow: and_(Task.yellow_at <= now, not_(red)),
            Light.green: and_(Task.yellow_at > now, not_(red)),
        }[query.light])
    return stmt.order_by(Task.found_at, Task.category_code, Task.item_code, Task.id)
