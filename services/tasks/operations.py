"""Use cases of the tasks service: opening tasks from findings, the lifecycle, the sweeper,
the ledger (工作台账) and its figures.

Each function takes a SQLAlchemy session, `now` (from the controllable clock) and, where it
publishes, an outbox; the caller owns the transaction. No nameko imports.
"""
from __future__ import annotations

import csv
import io
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Protocol

from sqlalchemy import and_, case, func, not_, or_, select
from sqlalchemy.orm import Session

from services.plumbing.sql import insert_for
from services.contracts.errors import PermissionDenied, StateConflict, UnknownReference
from services.contracts.nodes import is_within
from services.contracts.tiers import DOWN_EXCHANGE, UP_EXCHANGE, routing_key as tier_routing_key
from services.contracts.events.inspection import Evidence, InspectionSubmitted, PlaceRef
from services.contracts.events.tasks import (CoordinationAnswered, CoordinationRequested, LedgerFiguresUpdated,
                                             Light, Responsible, TaskClosed, TaskDelegated, TaskEscalated, TaskOpened,
                                             TaskOverdue, TaskRef, TaskRelapsed, TaskStatus, TaskStatusChanged)
from services.contracts.periods import CST, Period, PeriodKind
from services.contracts.vocab import SEVERITY_LABELS, Severity
from services.tasks import domain, metrics
from services.tasks.domain import Action, Role, TaskRuleViolation
from services.tasks.models import CoordinationRequest, LedgerFigures, SubjectName, Task, TaskHistory
from services.tasks.schemas import CoordinationOut, FiguresOut, HistoryOut, LedgerQuery, ResponsibleOut, SweepOut, TaskOut

SYSTEM_ACTOR = "督办系统"


class OutboxLike(Protocol):
    def add(self, session: Session, payload, correlation_id: str | None = None, **kw): ...


@dataclass(frozen=True)
class Settings:
    """Config keys (nameko YAML): TASKS_RELAPSE_WINDOW_DAYS (90), TASKS_URGE_REPEAT_HOURS (24),
    TASKS_ESCALATION_GRACE_HOURS (72), TASKS_ANSWER_HOURS (72), TASKS_SWEEP_BATCH (500)."""
    relapse_window: timedelta = domain.DEFAULT_RELAPSE_WINDOW
    urge_repeat: timedelta = domain.DEFAULT_URGE_REPEAT
    escalation_grace: timedelta = domain.DEFAULT_ESCALATION_GRACE
    answer_hours: float = domain.DEFAULT_ANSWER_HOURS
    sweep_batch: int = 500

    @classmethod
    def from_config(cls, config: dict) -> "Settings":
        def number(key, default):
            value = config.get(key)
            return float(value) if value not in (None, "") else float(default)
        return cls(
            relapse_window=timedelta(days=number("TASKS_RELAPSE_WINDOW_DAYS", 90)),
            urge_repeat=timedelta(hours=number("TASKS_URGE_REPEAT_HOURS", 24)),
            escalation_grace=timedelta(hours=number("TASKS_ESCALATION_GRACE_HOURS", 72)),
            answer_hours=number("TASKS_ANSWER_HOURS", domain.DEFAULT_ANSWER_HOURS),
            sweep_batch=int(number("TASKS_SWEEP_BATCH", 500)))


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


def history_out(h: TaskHistory) -> HistoryOut:
    return HistoryOut(at=h.at, actor=h.actor, role=h.role, action=h.action, from_status=h.from_status,
                      to_status=h.to_status, reason=h.reason,
                      evidence=[Evidence.model_validate(e) for e in h.evidence or []])


def task_out(task: Task, now: datetime, with_history: bool = False) -> TaskOut:
    found, deadline = task.found_at, task.deadline_at
    return TaskOut(
        task_id=task.id, inspection_id=task.inspection_id, inspection_kind=task.inspection_kind,
        inspecting_node=task.inspecting_node, owner_node=task.owner_node, inspectors=task.inspectors or [],
        subject_id=task.subject_id, subject_name=task.subject_name,
        responsible=ResponsibleOut(subject_id=task.responsible_subject_id, node=task.responsible_node,
                                   name=task.responsible_name),
        place=PlaceRef.model_validate(task.place) if task.place else None,
        checklist_code=task.checklist_code, item_code=task.item_code, item_text=task.item_text,
        category_code=task.category_code, category_name=task.category_name, severity=task.severity,
        findings=task.findings, deduction=task.deduction, note=task.note,
        evidence=[Evidence.model_validate(e) for e in task.evidence or []],
        found_at=found, opened_at=task.opened_at, deadline_at=deadline,
        deadline_source=task.deadline_source, status=task.status,
        light=domain.light_of(task.status, found, deadline, now, task.overdue_since is not None),
        time_used=domain.time_used(found, deadline, task.closed_at or now),
        overdue=domain.is_overdue(task.status, deadline, now, task.overdue_since is not None),
        overdue_since=task.overdue_since,
        urge_count=task.urge_count or 0, fixed_by=task.fixed_by, fix_submitted_at=task.fix_submitted_at,
        fix_note=task.fix_note, after_evidence=[Evidence.model_validate(e) for e in task.after_evidence or []],
        closed_at=task.closed_at, verified_by=task.verified_by, on_time=task.on_time,
        hours_to_fix=task.hours_to_fix, escalated_to=task.escalated_to, escalated_at=task.escalated_at,
        escalation_reason=task.escalation_reason, answer_due_at=task.answer_due_at,
        relapse_of=task.relapse_of, relapse=task.relapse_of is not None, delegated_to=task.delegated_to,
        history=[history_out(h) for h in task.history] if with_history else None)


# --- opening tasks from an inspection ------------------------------------------------------


def _upsert(session: Session, table, values: dict, keys: list[str], update: dict | None) -> None:
    """INSERT ... ON CONFLICT: concurrent consumers must not fail on a duplicate key."""
    stmt = insert_for(session)(table).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_=update) if update \
        else stmt.on_conflict_do_nothing(index_elements=keys)
    session.execute(stmt)


def _responsible(session: Session, event: InspectionSubmitted) -> tuple[str, str, str]:
    """(subject_id, node, name): the place's responsible subject (属地/门前三包), else the inspected one."""
    subject = event.subject
    place = event.place
    if place is None or not place.responsible_subject_id or place.responsible_subject_id == subject.subject_id:
        return subject.subject_id, subject.node, subject.name
    if place.responsible_subject_name and place.responsible_subject_node:
        return place.responsible_subject_id, place.responsible_subject_node, place.responsible_subject_name
    known = session.get(SubjectName, place.responsible_subject_id)
    if known is not None:
        return known.subject_id, known.node, known.name
    # Not yet seen in any inspection: name it after the place until it is.
    return place.responsible_subject_id, place.node, f"{place.name}责任单位"


def open_tasks(session: Session, event: InspectionSubmitted, outbox: OutboxLike, owner_node: str,
               settings: Settings, now: datetime, correlation_id: str | None = None,
               child_stacks: tuple[str, ...] = (), task_ids: dict[str, str] | None = None) -> list[Task]:
    """One task per finding with a deduction; a repeat of a recently closed task is linked (反弹).

    A finding whose responsible subject lies in a child stack's subtree is handed down to
    that stack (`task_delegated` on the down exchange): its ledger owns the lifecycle and
    this ledger follows its status events. `task_ids` keeps a handed-down task's id.
    """
    _upsert(session, SubjectName.__table__,
            dict(subject_id=event.subject.subject_id, node=event.subject.node, name=event.subject.name,
                 updated_at=now),
            ["subject_id"], dict(node=event.subject.node, name=event.subject.name, updated_at=now))
    resp_id, resp_node, resp_name = _responsible(session, event)
    place_id = event.place.place_id if event.place else None
    key = domain.relapse_key(place_id, event.subject.subject_id)
    found_at = event.inspected_at
    tasks = []
    for finding in event.findings:
        if finding.deduction <= 0:
            continue
        deadline, source = domain.deadline_for(found_at, finding.deadline_hours, finding.deadline_at)
        relapse = _find_relapse(session, key, finding.item_code, found_at, settings.relapse_window)
        delegate_to = next((c for c in child_stacks if is_within(resp_node, c)), None)
        task = Task(
            id=(task_ids or {}).get(finding.item_code) or str(uuid.uuid4()), inspection_id=str(event.inspection_id), inspection_kind=event.kind.value,
            inspecting_node=event.inspecting_node, owner_node=owner_node, inspectors=list(event.inspectors),
            subject_id=event.subject.subject_id, subject_name=event.subject.name, subject_node=event.subject.node,
            responsible_subject_id=resp_id, responsible_name=resp_name, responsible_node=resp_node,
            place_id=place_id, place=event.place.model_dump(mode="json") if event.place else None,
            relapse_key=key, checklist_code=event.checklist.code, item_code=finding.item_code,
            item_text=finding.item_text, category_code=finding.category_code,
            category_name=finding.category_name, severity=finding.severity.value, findings=finding.findings,
            deduction=finding.deduction, note=finding.note,
            evidence=[e.model_dump(mode="json") for e in finding.evidence],
            found_at=found_at, opened_at=now, deadline_at=deadline, deadline_source=source,
            yellow_at=domain.yellow_from(found_at, deadline), status=TaskStatus.open.value, urge_count=0,
            after_evidence=[], relapse_of=relapse.task_id if relapse else None, delegated_to=delegate_to,
            updated_at=now)
        session.add(task)
        task.history.append(TaskHistory(
            at=now, actor=", ".join(event.inspectors) or "检查组", role=Role.inspector.value, action="open",
            from_status=None, to_status=TaskStatus.open.value,
            reason=f"{event.kind.value} inspection {event.inspection_id}: {finding.note or finding.item_text}",
            evidence=[e.model_dump(mode="json") for e in finding.evidence]))
        ref = task_ref(task)
        outbox.add(session, TaskOpened(task=ref, opened_at=now, evidence=list(finding.evidence), note=finding.note,
                                       relapse_of=task.relapse_of), correlation_id=correlation_id)
        if delegate_to is not None:
            handed_down = event.model_copy(update={"findings": [finding]})
            outbox.add(session, TaskDelegated(task_id=task.id, delegated_by=owner_node, inspection=handed_down),
                       correlation_id=correlation_id, exchange=DOWN_EXCHANGE,
                       routing_key=tier_routing_key("task_delegated", resp_node))
        if relapse is not None:
            outbox.add(session, TaskRelapsed(task=ref, relapse_of=relapse.task_id, closed_at=relapse.closed_at),
                       correlation_id=correlation_id)
            metrics.RELAPSES.inc()
        metrics.TASKS_OPENED.labels(finding.severity.value).inc()
        tasks.append(task)
    session.flush()
    refresh_figures(session, outbox, _figure_keys(tasks), now)
    return tasks


def _find_relapse(session: Session, key: str, item_code: str, found_at: datetime,
                  window: timedelta) -> domain.ClosedTask | None:
    rows = session.execute(select(Task.id, Task.closed_at).where(
        Task.relapse_key == key, Task.item_code == item_code, Task.status == TaskStatus.closed.value,
        Task.closed_at >= found_at - window, Task.closed_at <= found_at)).all()
    closed = [domain.ClosedTask(r.id, key, item_code, r.closed_at) for r in rows]
    return domain.find_relapse(closed, key, item_code, found_at, window)


# --- the lifecycle ------------------------------------------------------------------------


def get_task(session: Session, task_id: str, lock: bool = False) -> Task:
    stmt = select(Task).where(Task.id == task_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    task = session.execute(stmt).scalar_one_or_none()
    if task is None:
        raise UnknownReference("task_id", f"unknown task {task_id!r}")
    return task


def act(session: Session, task_id: str, action: Action, actor: str, role: str, now: datetime,
        outbox: OutboxLike, settings: Settings, *, note: str | None = None,
        evidence: Iterable[Evidence] = (), new_deadline_at: datetime | None = None) -> TaskOut:
    """Apply one lifecycle action; refuse illegal ones (nothing is changed then)."""
    task = get_task(session, task_id, lock=True)
    if task.delegated_to is not None:
        raise StateConflict("task_id", f"the task was handed down to {task.delegated_to}; "
                                       "it is handled in that tier's ledger (整改在下级台账办理)")
    _transition(session, task, action, actor, role, now, outbox, settings, note=note, evidence=list(evidence),
                new_deadline_at=new_deadline_at)
    session.flush()
    refresh_figures(session, outbox, _figure_keys([task]), now)
    return task_out(task, now, with_history=True)


def _transition(session: Session, task: Task, action: Action, actor: str, role: str, now: datetime,
                outbox: OutboxLike, settings: Settings, *, note: str | None, evidence: list[Evidence],
                new_deadline_at: datetime | None = None) -> None:
    from_status = TaskStatus(task.status)
    target = domain.check_transition(from_status, action, role, actor, task.fixed_by)
    evidence_json = [e.model_dump(mode="json") for e in evidence]
    if action == Action.submit_fix:
        task.fixed_by, task.fix_submitted_at, task.fix_note, task.after_evidence = actor, now, note, evidence_json
    elif action == Action.verify:
        fixed_at = task.fix_submitted_at
        task.closed_at, task.verified_by = now, actor
        task.on_time = fixed_at <= task.deadline_at
        task.hours_to_fix = domain.hours_between(task.found_at, fixed_at)
        metrics.HOURS_TO_FIX.observe(task.hours_to_fix)
    elif action == Action.escalate:
        task.escalated_to = domain.escalation_target(task.owner_node)
        task.escalated_at, task.escalation_reason = now, note
        task.answer_due_at = now + timedelta(hours=settings.answer_hours)
        metrics.ESCALATIONS.labels("sweeper" if role == Role.system else "responsible").inc()
    elif action == Action.answer and new_deadline_at is not None:
        if new_deadline_at <= now:
            raise TaskRuleViolation("new_deadline_at", "a new deadline must lie in the future")
        task.deadline_at, task.deadline_source = new_deadline_at, "coordinator"
        task.yellow_at = domain.yellow_from(task.found_at, new_deadline_at)
        task.overdue_since = None
        task.last_urged_at = None
    task.status = target.value
    task.updated_at = now
    task.history.append(TaskHistory(at=now, actor=actor, role=str(role), action=action.value,
                                    from_status=from_status.value, to_status=target.value, reason=note,
                                    evidence=evidence_json))
    ref = task_ref(task)
    outbox.add(session, TaskStatusChanged(task=ref, from_status=from_status, to_status=target, actor=actor,
                                          reason=note, at=now), correlation_id=task.id)
    _report_upward(session, task, outbox, TaskStatusChanged(task=ref, from_status=from_status, to_status=target,
                                                            actor=actor, reason=note, at=now))
    if action == Action.verify:
        closed = TaskClosed(task=ref, closed_at=now, verified_by=actor, on_time=task.on_time,
                            hours_to_fix=task.hours_to_fix)
        outbox.add(session, closed, correlation_id=task.id)
        _report_upward(session, task, outbox, closed)
    elif action == Action.escalate:
        escalated = TaskEscalated(task=ref, to_node=task.escalated_to, reason=note,
                                  answer_due_at=task.answer_due_at, at=now)
        outbox.add(session, escalated, correlation_id=task.id)
        if not is_within(task.escalated_to, task.owner_node):
            # The tier above runs its own stack: the request for coordination goes up the link.
            outbox.add(session, escalated, correlation_id=task.id, exchange=UP_EXCHANGE,
                       routing_key=tier_routing_key("task_escalated", task.owner_node))
    metrics.TRANSITIONS.labels(action.value).inc()


# --- tiers: tasks handed down, status reported up ------------------------------------------


def _report_upward(session: Session, task: Task, outbox: OutboxLike, payload) -> None:
    """A task that came from a higher tier reports its status up, one link at a time."""
    if is_within(task.inspecting_node, task.owner_node):
        return
    outbox.add(session, payload, correlation_id=task.id, exchange=UP_EXCHANGE,
               routing_key=tier_routing_key(payload.EVENT_TYPE, task.owner_node))


def accept_delegated(session: Session, delegated: TaskDelegated, outbox: OutboxLike, home: str,
                     settings: Settings, now: datetime, child_stacks: tuple[str, ...]) -> list[Task]:
    """A task handed down by the tier above: into this ledger, or further down."""
    if session.get(Task, delegated.task_id) is not None:
        return []
    return open_tasks(session, delegated.inspection, outbox, home, settings, now,
                      correlation_id=delegated.task_id, child_stacks=child_stacks,
                      task_ids={f.item_code: delegated.task_id for f in delegated.inspection.findings})


def apply_child_update(session: Session, update: TaskStatusChanged | TaskClosed, outbox: OutboxLike,
                       now: datetime) -> Task | None:
    """A child stack reports a handed-down task's progress: mirror it, pass it on upward."""
    task = session.execute(select(Task).where(Task.id == update.task.task_id).with_for_update()
                           .execution_options(populate_existing=True)).scalar_one_or_none()
    if task is None or task.delegated_to is None:
        return None  # not a task this tier handed down: nothing to mirror
    from_status = task.status
    if isinstance(update, TaskClosed):
        task.status = TaskStatus.closed.value
        task.closed_at, task.verified_by = update.closed_at, update.verified_by
        task.on_time, task.hours_to_fix = update.on_time, update.hours_to_fix
        actor, reason, at = update.verified_by, "销号 (closed in the child's ledger)", update.closed_at
    else:
        if task.status == TaskStatus.closed.value:
            return None  # a late status change must not reopen a closed task
        task.status = update.to_status.value
        actor, reason, at = update.actor, update.reason, update.at
    task.deadline_at = update.task.deadline_at
    task.updated_at = now
    task.history.append(TaskHistory(at=at, actor=actor, role="child_tier", action="child_update",
                                    from_status=from_status, to_status=task.status,
                                    reason=f"[{task.delegated_to}] {reason or ''}".strip(), evidence=[]))
    if not is_within(task.inspecting_node, task.owner_node):
        outbox.add(session, update, correlation_id=task.id, exchange=UP_EXCHANGE,
                   routing_key=tier_routing_key(update.EVENT_TYPE, task.owner_node))
    session.flush()
    refresh_figures(session, outbox, _figure_keys([task]), now)
    return task


# --- coordination: escalations from child stacks, answered by this tier --------------------


def coordination_out(req: CoordinationRequest, now: datetime) -> CoordinationOut:
    due = req.answer_due_at
    return CoordinationOut(
        task_id=req.task_id, from_node=req.from_node, task=TaskRef.model_validate(req.task), reason=req.reason,
        escalated_at=req.escalated_at, answer_due_at=due, status=req.status,
        overdue=req.status == "open" and now > due, answered_by=req.answered_by, answer=req.answer,
        new_deadline_at=req.new_deadline_at, answered_at=req.answered_at)


def record_coordination_request(session: Session, escalated: TaskEscalated, home: str,
                                now: datetime, outbox: OutboxLike) -> CoordinationRequest | None:
    """A child stack's ledger asks this tier to coordinate (上报协调); this tier owes an answer.

    A request newly opened or reopened (a later escalation of the same task) is published
    locally as `coordination_requested` in the same transaction, so this tier's office is
    told (notify); a copy of an escalation already recorded changes nothing and publishes
    nothing.
    """
    if escalated.to_node != home:
        return None  # addressed to another tier
    req = session.get(CoordinationRequest, escalated.task.task_id)
    if req is None:
        req = CoordinationRequest(task_id=escalated.task.task_id)
        session.add(req)
    elif req.escalated_at >= escalated.at:
        return req  # a copy of this escalation, or an older one (open or already answered)
    req.from_node, req.task = escalated.task.owner_node, escalated.task.model_dump(mode="json")
    req.reason, req.escalated_at, req.answer_due_at = escalated.reason, escalated.at, escalated.answer_due_at
    req.status, req.answered_by, req.answer, req.new_deadline_at, req.answered_at = "open", None, None, None, None
    outbox.add(
        session, CoordinationRequested(task=escalated.task, from_node=escalated.task.owner_node,
                                       reason=escalated.reason, answer_due_at=escalated.answer_due_at,
                                       requested_at=escalated.at),
        correlation_id=escalated.task.task_id)
    session.flush()
    metrics.COORDINATION_REQUESTS.inc()
    return req


def list_coordination(session: Session, status: str | None, now: datetime) -> list[CoordinationOut]:
    stmt = select(CoordinationRequest).order_by(CoordinationRequest.answer_due_at, CoordinationRequest.task_id)
    if status in ("open", "answered"):
        stmt = stmt.where(CoordinationRequest.status == status)
    return [coordination_out(r, now) for r in session.execute(stmt).scalars()]


def answer_coordination(session: Session, task_id: str, actor: str, role: str, note: str,
                        new_deadline_at: datetime | None, outbox: OutboxLike, home: str,
                        now: datetime) -> CoordinationOut:
    """Answer a child's escalation; the answer travels down to the ledger that owns the task."""
    if role != Role.coordinator.value:
        raise PermissionDenied("role", "only the coordinating tier (role coordinator) answers an escalation")
    req = session.execute(select(CoordinationRequest).where(CoordinationRequest.task_id == task_id)
                          .with_for_update()).scalar_one_or_none()
    if req is None:
        raise UnknownReference("task_id", f"no escalation of task {task_id!r} awaits this tier's answer")
    if req.status != "open":
        raise StateConflict("task_id", f"the escalation was already answered by {req.answered_by}")
    if new_deadline_at is not None and new_deadline_at <= now:
        raise TaskRuleViolation("new_deadline_at", "a new deadline must lie in the future")
    req.status, req.answered_by, req.answer = "answered", actor, note
    req.new_deadline_at, req.answered_at = new_deadline_at, now
    outbox.add(session, CoordinationAnswered(task_id=task_id, coordinator_node=home, owner_node=req.from_node,
                                             answered_by=actor, answer=note, new_deadline_at=new_deadline_at,
                                             answered_at=now),
               correlation_id=task_id, exchange=DOWN_EXCHANGE,
               routing_key=tier_routing_key("coordination_answered", req.from_node))
    session.flush()
    return coordination_out(req, now)


def apply_coordination_answer(session: Session, answer: CoordinationAnswered, outbox: OutboxLike,
                              settings: Settings, now: datetime, home: str) -> Task | None:
    """The tier above answered this ledger's escalation: back to work, maybe with a new deadline."""
    if answer.owner_node != home:
        return None
    task = session.execute(select(Task).where(Task.id == answer.task_id).with_for_update()
                           .execution_options(populate_existing=True)).scalar_one_or_none()
    if task is None or task.status != TaskStatus.escalated.value:
        return None  # answered already (or locally) — nothing left to do
    # A deadline that has passed while the answer travelled is not granted.
    deadline = answer.new_deadline_at if answer.new_deadline_at and answer.new_deadline_at > now else None
    _transition(session, task, Action.answer, answer.answered_by, Role.coordinator.value, now, outbox, settings,
                note=f"[{answer.coordinator_node}] {answer.answer}", evidence=[], new_deadline_at=deadline)
    session.flush()
    refresh_figures(session, outbox, _figure_keys([task]), now)
    return task


# --- the sweeper --------------------------------------------------------------------------


def sweep(session: Session, outbox: OutboxLike, now: datetime, settings: Settings) -> SweepOut:
    """Mark overdue tasks, urge (督办) them, escalate those past the grace period.

    Safe with several instances: rows are taken with FOR UPDATE SKIP LOCKED (PostgreSQL) and
    re-read after locking, and every effect is decided from the row's state (`sweep_decision`),
    so a task another instance has just handled yields nothing to do.
    """
    stmt = (select(Task).where(Task.status.in_([s.value for s in domain.OWING_STATUSES]), Task.deadline_at <= now,
                               Task.delegated_to.is_(None))
            .order_by(Task.deadline_at, Task.id).limit(settings.sweep_batch)
            .execution_options(populate_existing=True))
    stmt = stmt.with_for_update(skip_locked=True)
    tasks = session.execute(stmt).scalars().all()
    marked = urged = escalated = 0
    touched = []
    for task in tasks:
        deadline = task.deadline_at
        decision = domain.sweep_decision(
            task.status, deadline, now, overdue_since=task.overdue_since,
            last_urged_at=task.last_urged_at, escalated_at=task.escalated_at,
            urge_repeat=settings.urge_repeat, grace=settings.escalation_grace)
        if not decision.any:
            continue
        touched.append(task)
        if decision.mark_overdue:
            task.overdue_since = deadline
            marked += 1
        if decision.urge:
            task.urge_count = (task.urge_count or 0) + 1
            task.last_urged_at = now
            task.updated_at = now
            task.history.append(TaskHistory(
                at=now, actor=SYSTEM_ACTOR, role=Role.system.value, action="urge", from_status=task.status,
                to_status=task.status, reason=f"逾期未整改，第{task.urge_count}次督办 (urge notice #{task.urge_count})",
                evidence=[]))
            outbox.add(session, TaskOverdue(task=task_ref(task), overdue_since=task.overdue_since,
                                            urge_count=task.urge_count), correlation_id=task.id)
            metrics.URGES.inc()
            urged += 1
        if decision.escalate:
            hours = settings.escalation_grace.total_seconds() / 3600
            _transition(session, task, Action.escalate, SYSTEM_ACTOR, Role.system.value, now, outbox, settings,
                        note=f"逾期超过{hours:g}小时仍未整改，自动上报协调 (overdue beyond the grace period)",
                        evidence=[])
            escalated += 1
    session.flush()
    published = refresh_figures(session, outbox, _figure_keys(touched), now)
    return SweepOut(swept_at=now, examined=len(tasks), marked_overdue=marked, urged=urged, escalated=escalated,
                    figures_published=published)


# --- ledger views and exports ---------------------------------------------------------------


def _ledger_stmt(query: LedgerQuery, now: datetime):
    stmt = select(Task)
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


def list_tasks(session: Session, query: LedgerQuery, now: datetime) -> list[TaskOut]:
    rows = session.execute(_ledger_stmt(query, now).limit(query.limit).offset(query.offset)).scalars()
    return [task_out(t, now) for t in rows]


def task_history(session: Session, task_id: str) -> list[HistoryOut]:
    return [history_out(h) for h in get_task(session, task_id).history]


LEDGER_COLUMNS = [
    ("序号", None), ("任务编号", "task_id"), ("责任主体", "responsible"), ("检查对象", "subject_name"),
    ("点位", "place"), ("问题类别", "category_name"), ("检查项目", "item_code"), ("问题描述", "item_text"),
    ("检查记录", "note"), ("严重程度", "severity"), ("扣分", "deduction"), ("发现时间", "found_at"),
    ("整改期限", "deadline_at"), ("状态", "status"), ("亮灯", "light"), ("整改措施", "fix_note"),
    ("整改人", "fixed_by"), ("提交整改时间", "fix_submitted_at"), ("核实人", "verified_by"),
    ("销号时间", "closed_at"), ("是否按期", "on_time"), ("整改用时(小时)", "hours_to_fix"),
    ("督办次数", "urge_count"), ("上报协调至", "escalated_to"), ("反弹(关联任务)", "relapse_of"),
]


def _local(value: datetime | None) -> str:
    return value.astimezone(CST).strftime("%Y-%m-%d %H:%M") if value else ""


EXPORT_LIMIT = 10000


def ledger_rows(session: Session, query: LedgerQuery, now: datetime) -> list[list]:
    """The ledger (工作台账) as rows under LEDGER_COLUMNS' Chinese headers, times in CST.

    An export lists the whole ledger (up to EXPORT_LIMIT rows) unless a limit is asked for."""
    if "limit" not in query.model_fields_set:
        query = query.model_copy(update={"limit": EXPORT_LIMIT})
    rows = []
    for index, t in enumerate(list_tasks(session, query, now), start=1):
        light = domain.LIGHT_LABELS[t.light] if t.light else ""
        rows.append([
            index, t.task_id, t.responsible.name, t.subject_name, t.place.name if t.place else "",
            t.category_name, t.item_code, t.item_text, t.note or "", SEVERITY_LABELS[Severity(t.severity)],
            t.deduction, _local(t.found_at), _local(t.deadline_at), domain.STATUS_LABELS[t.status], light,
            t.fix_note or "", t.fixed_by or "", _local(t.fix_submitted_at), t.verified_by or "",
            _local(t.closed_at), "" if t.on_time is None else ("是" if t.on_time else "否"),
            "" if t.hours_to_fix is None else t.hours_to_fix, t.urge_count, t.escalated_to or "",
            t.relapse_of or ""])
    return rows


def export_csv(session: Session, query: LedgerQuery, now: datetime) -> bytes:
    """UTF-8 with a BOM, so Excel opens the Chinese headers correctly."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([name for name, _ in LEDGER_COLUMNS])
    writer.writerows(ledger_rows(session, query, now))
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


def export_xlsx(session: Session, query: LedgerQuery, now: datetime) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font, PatternFill

    rows = ledger_rows(session, query, now)
    book = Workbook()
    sheet = book.active
    sheet.title = "整改台账"
    sheet.append([name for name, _ in LEDGER_COLUMNS])
    for cell in sheet[1]:
        cell.font = Font(bold=True)
        cell.alignment = Alignment(horizontal="center")
    fills = {"红灯": "FFC7CE", "黄灯": "FFEB9C", "绿灯": "C6EFCE"}
    light_col = [name for name, _ in LEDGER_COLUMNS].index("亮灯") + 1
    for row in rows:
        sheet.append(row)
        light = row[light_col - 1]
        if light in fills:
            sheet.cell(row=sheet.max_row, column=light_col).fill = PatternFill("solid", fgColor=fills[light])
    widths = {"任务编号": 38, "问题描述": 40, "检查记录": 30, "整改措施": 30, "责任主体": 18, "点位": 18,
              "发现时间": 17, "整改期限": 17, "提交整改时间": 17, "销号时间": 17, "反弹(关联任务)": 38}
    for col, (name, _) in enumerate(LEDGER_COLUMNS, start=1):
        sheet.column_dimensions[sheet.cell(row=1, column=col).column_letter].width = widths.get(name, 12)
    sheet.freeze_panes = "A2"
    summary = book.create_sheet("汇总")
    summary.append(["责任主体", "任务数", "已销号", "按期销号", "逾期未销号", "反弹", "销号率", "按期率", "平均整改用时(小时)"])
    for cell in summary[1]:
        cell.font = Font(bold=True)
    for out in figures_for_tasks(session, _ledger_stmt(query, now), now, query.period or ""):
        summary.append([out.name, out.opened, out.closed, out.closed_on_time, out.overdue_open, out.relapses,
                        out.close_rate, out.on_time_rate, out.mean_hours_to_fix])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


# --- figures ------------------------------------------------------------------------------


def _facts(task: Task) -> domain.TaskFacts:
    return domain.TaskFacts(status=TaskStatus(task.status), deadline_at=task.deadline_at,
                            closed=task.status == TaskStatus.closed.value, on_time=task.on_time,
                            hours_to_fix=task.hours_to_fix, relapse=task.relapse_of is not None,
                            marked_overdue=task.overdue_since is not None)


def figures_for_tasks(session: Session, stmt, now: datetime, period: str) -> list[FiguresOut]:
    by_subject: dict[str, list[Task]] = {}
    for task in session.execute(stmt).scalars():
        by_subject.setdefault(task.responsible_subject_id, []).append(task)
    out = []
    for subject_id, tasks in sorted(by_subject.items(), key=lambda kv: kv[1][0].responsible_name):
        figures = domain.compute_figures([_facts(t) for t in tasks], now)
        out.append(FiguresOut(subject_id=subject_id, node=tasks[0].responsible_node,
                              name=tasks[0].responsible_name, period=period, **figures.as_dict()))
    return out


def figures(session: Session, period: str | None, subject_id: str | None, now: datetime) -> list[FiguresOut]:
    """Figures per responsible subject for tasks found in the period (default: this month, CST)."""
    period = period or Period.containing(PeriodKind.month, now).key
    query = LedgerQuery(period=period, subject_id=subject_id, limit=1)
    return figures_for_tasks(session, _ledger_stmt(query, now), now, period)


def _figure_keys(tasks: Iterable[Task]) -> set[tuple[str, str]]:
    return {(t.responsible_subject_id, Period.containing(PeriodKind.month, t.found_at).key) for t in tasks}


def refresh_figures(session: Session, outbox: OutboxLike, keys: set[tuple[str, str]], now: datetime) -> int:
    """Recompute the monthly figures of (subject, month) pairs; publish those that changed.

    The stored row is locked first, so concurrent refreshes of one subject's month serialise
    and the later one computes from the committed state of the earlier.
    """
    published = 0
    for subject_id, period in sorted(keys):
        _upsert(session, LedgerFigures.__table__,
                dict(subject_id=subject_id, period=period, node="000000000000", figures={}, computed_at=now),
                ["subject_id", "period"], None)
        row_stmt = select(LedgerFigures).where(LedgerFigures.subject_id == subject_id,
                                               LedgerFigures.period == period)
        row = session.execute(row_stmt.with_for_update().execution_options(populate_existing=True)).scalar_one()
        [out] = figures(session, period, subject_id, now) or [None]
        if out is None:
            continue
        current = out.model_dump(include={"opened", "closed", "closed_on_time", "overdue_open", "relapses",
                                          "close_rate", "on_time_rate", "mean_hours_to_fix"})
        if row.figures == current:
            continue
        # Consumers keep the latest computed_at: never let it go backwards (clock offsets, skew).
        previous = row.computed_at if row.figures else None
        computed_at = max(now, previous + timedelta(microseconds=1)) if previous else now
        row.figures, row.node, row.computed_at = current, out.node, computed_at
        outbox.add(session, LedgerFiguresUpdated(subject_id=subject_id, node=out.node, period=period,
                                                 computed_at=computed_at, **current), correlation_id=subject_id)
        published += 1
    session.flush()
    return published


# --- metrics ------------------------------------------------------------------------------


def refresh_gauges(session: Session, now: datetime) -> None:
    red = or_(Task.deadline_at <= now, Task.overdue_since.is_not(None))
    light = case((red, "red"), (Task.yellow_at <= now, "yellow"), else_="green")
    rows = session.execute(select(light.label("light"), Task.severity, func.count())
                           .where(Task.status != TaskStatus.closed.value)
                           .group_by(light, Task.severity)).all()
    counts = {(r[0], r[1]): r[2] for r in rows}
    for lt in Light:
        for sev in Severity:
            metrics.OPEN_TASKS.labels(lt.value, sev.value).set(counts.get((lt.value, sev.value), 0))
    metrics.OVERDUE_TASKS.set(sum(v for (lt, _), v in counts.items() if lt == "red"))
