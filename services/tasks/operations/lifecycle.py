"""The task lifecycle: actions by the responsible and the inspecting side, and their effects."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from sqlalchemy.orm import Session

from services.contracts.errors import StateConflict
from services.contracts.tiers import UP_EXCHANGE, routing_key as tier_routing_key
from services.contracts.events.inspection import Evidence
from services.contracts.events.tasks import TaskClosed, TaskEscalated, TaskStatus, TaskStatusChanged
from services.tasks import domain, metrics
from services.tasks.domain import REDACTED_INSPECTORS, UNANNOUNCED, Action, Role, TaskRuleViolation
from services.tasks.models import Task, TaskHistory
from services.tasks.schemas import TaskOut
from services.tasks.operations.common import NAME_MAX, SUBJECT_MAX, OutboxLike, SYSTEM_ACTOR, Settings, get_visible_task
from services.tasks.operations.figures import _figure_keys, refresh_figures
from services.tasks.operations.tiers import _report_upward
from services.tasks.operations.views import task_out, task_ref


# --- the lifecycle ------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """Who acts, as recorded: the authenticated person, its account and the role acted in."""
    name: str
    subject: str | None
    role: str

    @classmethod
    def of(cls, principal, role: str) -> "Actor":
        # Cut to the columns' sizes: an identity platform's long display name must not fail a write.
        return cls(principal.name[:NAME_MAX], principal.subject[:SUBJECT_MAX], role)


def act(session: Session, task_id: str, action: Action, principal, now: datetime,
        outbox: OutboxLike, settings: Settings, *, note: str | None = None,
        evidence: Iterable[Evidence] = (), new_deadline_at: datetime | None = None) -> TaskOut:
    """Apply one lifecycle action for the authenticated caller; refuse illegal ones (nothing
    is changed then): an unseen task 404, the wrong role or node 403, the wrong state 409."""
    task = get_visible_task(session, task_id, principal, lock=True)
    role = domain.acting_role(principal, action, inspecting_node=task.inspecting_node, owner_node=task.owner_node,
                              responsible_node=task.responsible_node, escalated_to=task.escalated_to)
    if task.delegated_to is not None:
        raise StateConflict("task_id", f"the task was handed down to {task.delegated_to}; "
                                       "it is handled in that tier's ledger (整改在下级台账办理)")
    _transition(session, task, action, Actor.of(principal, role), now, outbox, settings,
                note=note, evidence=[Evidence.model_validate(e.model_dump()) for e in evidence],
                new_deadline_at=new_deadline_at)
    session.flush()
    refresh_figures(session, outbox, _figure_keys([task]), now)
    return task_out(task, now, with_history=True, principal=principal)


SYSTEM = Actor(SYSTEM_ACTOR, None, Role.system.value)


def _transition(session: Session, task: Task, action: Action, actor: Actor, now: datetime,
                outbox: OutboxLike, settings: Settings, *, note: str | None, evidence: list[Evidence],
                new_deadline_at: datetime | None = None) -> None:
    from_status = TaskStatus(task.status)
    side = Role.system if actor.role == Role.system.value else domain.side_of(action)
    target = domain.check_transition(from_status, action, side, actor.subject or actor.name,
                                     task.fixed_by_subject if actor.subject else None,
                                     pending=domain.coordination_pending(task.status, task.escalated_at,
                                                                         task.answered_at))
    evidence_json = [e.model_dump(mode="json") for e in evidence]
    # What events say about who acted: for an unannounced inspection the inspecting side is
    # its office, never its people (notices reach the subject).
    public_actor = REDACTED_INSPECTORS if (task.inspection_kind == UNANNOUNCED
                                           and side == Role.inspector) else actor.name
    if action == Action.submit_fix:
        task.fixed_by, task.fix_submitted_at, task.fix_note, task.after_evidence = actor.name, now, note, evidence_json
        task.fixed_by_subject = actor.subject
    elif action == Action.verify:
        fixed_at = task.fix_submitted_at
        task.closed_at, task.verified_by = now, actor.name
        task.on_time = fixed_at <= task.deadline_at
        task.hours_to_fix = domain.hours_between(task.found_at, fixed_at)
        metrics.HOURS_TO_FIX.observe(task.hours_to_fix)
    elif action == Action.escalate:
        task.escalated_to = domain.escalation_target(task.owner_node, settings.parent_stack)
        task.escalated_at, task.escalation_reason = now, note
        task.answer_due_at = now + timedelta(hours=settings.answer_hours)
        task.answered_at = None
        metrics.ESCALATIONS.labels("sweeper" if side == Role.system else "responsible").inc()
    elif action == Action.answer:
        if new_deadline_at is not None:
            if new_deadline_at <= now:
                raise TaskRuleViolation("new_deadline_at", "新期限必须晚于当前时间 (a new deadline must lie in the future)")
            task.deadline_at, task.deadline_source = new_deadline_at, "coordinator"
            task.yellow_at = domain.yellow_from(task.found_at, new_deadline_at)
            task.overdue_since = None
            task.last_urged_at = None
        task.answered_at = now
    task.status = target.value
    task.updated_at = now
    task.history.append(TaskHistory(at=now, actor=actor.name, actor_subject=actor.subject, role=actor.role,
                                    action=action.value, from_status=from_status.value, to_status=target.value,
                                    reason=note, evidence=evidence_json))
    ref = task_ref(task)
    outbox.add(session, TaskStatusChanged(task=ref, from_status=from_status, to_status=target, actor=public_actor,
                                          reason=note, at=now), correlation_id=task.id)
    _report_upward(session, task, outbox, TaskStatusChanged(task=ref, from_status=from_status, to_status=target,
                                                            actor=public_actor, reason=note, at=now))
    if action == Action.verify:
        closed = TaskClosed(task=ref, closed_at=now, verified_by=public_actor, on_time=task.on_time,
                            hours_to_fix=task.hours_to_fix,
                            after_evidence=[Evidence.model_validate(e) for e in task.after_evidence or []])
        outbox.add(session, closed, correlation_id=task.id)
        _report_upward(session, task, outbox, closed)
    elif action == Action.escalate:
        escalated = TaskEscalated(task=ref, to_node=task.escalated_to, reason=note,
                                  answer_due_at=task.answer_due_at, at=now)
        outbox.add(session, escalated, correlation_id=task.id)
        if domain.escalated_outside(task.escalated_to, task.owner_node):
            # The parent stack's office coordinates: the request goes up the federation link.
            # An escalation inside this office (no parent stack) stays here.
            outbox.add(session, escalated, correlation_id=task.id, exchange=UP_EXCHANGE,
                       routing_key=tier_routing_key("task_escalated", task.owner_node))
    metrics.TRANSITIONS.labels(action.value).inc()
