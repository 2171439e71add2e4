"""The sweeper: overdue tasks, urge notices (督办) and escalations, on the clock."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from services.contracts.events.tasks import TaskEscalated, TaskOverdue, TaskStatus
from services.tasks import domain, metrics
from services.tasks.domain import Action, Role
from services.tasks.models import Task, TaskHistory
from services.tasks.schemas import SweepOut
from services.tasks.operations.common import OutboxLike, SYSTEM_ACTOR, Settings
from services.tasks.operations.figures import _figure_keys, refresh_figures
from services.tasks.operations.lifecycle import SYSTEM, _transition
from services.tasks.operations.tiers import _report_upward
from services.tasks.operations.views import task_ref


# --- the sweeper --------------------------------------------------------------------------


def sweep(session: Session, outbox: OutboxLike, now: datetime, settings: Settings) -> SweepOut:
    """Mark overdue tasks, urge (督办) them, escalate those past the grace period.

    Safe with several instances: rows are taken with FOR UPDATE SKIP LOCKED (PostgreSQL) and
    re-read after locking, and every effect is decided from the row's state (`sweep_decision`),
    so a task another instance has just handled yields nothing to do.
    """
    # An embargoed task is not yet the subject's to fix: no urge notice tells it of the visit.
    stmt = (select(Task).where(Task.status.in_([s.value for s in domain.OWING_STATUSES]), Task.deadline_at <= now,
                               Task.delegated_to.is_(None), Task.embargoed.is_(False))
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
            overdue = TaskOverdue(task=task_ref(task), overdue_since=task.overdue_since, urge_count=task.urge_count)
            outbox.add(session, overdue, correlation_id=task.id)
            _report_upward(session, task, outbox, overdue)  # the tier that handed it down counts it too
            metrics.URGES.inc()
            urged += 1
        if decision.escalate:
            hours = settings.escalation_grace.total_seconds() / 3600
            _transition(session, task, Action.escalate, SYSTEM, now, outbox, settings,
                        note=f"逾期超过{hours:g}小时仍未整改，自动上报协调 (overdue beyond the grace period)",
                        evidence=[])
            escalated += 1
    retargeted = retarget_escalations(session, outbox, now, settings)
    session.flush()
    published = refresh_figures(session, outbox, _figure_keys(touched), now)
    return SweepOut(swept_at=now, examined=len(tasks), marked_overdue=marked, urged=urged, escalated=escalated,
                    figures_published=published, retargeted=len(retargeted))


def retarget_escalations(session: Session, outbox: OutboxLike, now: datetime, settings: Settings) -> list[Task]:
    """Escalations still waiting on another tier's office while this stack has no parent stack
    (PARENT_STACK unset) are handed to this office (改由本级督办), so that someone can answer them.

    Before issue 25 every escalation went to the tier above, which need not run a stack: its
    tasks waited for an answer that never came. This follows the config (a stack later given a
    parent stack keeps escalating upward) and is idempotent: a retargeted task is addressed to
    its own node and no longer matches. The office is told as for a new escalation
    (`task_escalated` to its own node, on this stack's exchange only: nothing goes up a link)."""
    if settings.parent_stack is not None:
        return []
    stmt = (select(Task).where(Task.escalated_to.is_not(None), Task.escalated_to != Task.owner_node,
                               Task.status != TaskStatus.closed.value, Task.delegated_to.is_(None),
                               or_(Task.answered_at.is_(None), Task.answered_at < Task.escalated_at))
            .order_by(Task.escalated_at, Task.id).limit(settings.sweep_batch)
            .with_for_update(skip_locked=True).execution_options(populate_existing=True))
    moved = []
    for task in session.execute(stmt).scalars().all():
        if not (domain.coordination_pending(task.status, task.escalated_at, task.answered_at)
                and domain.escalated_outside(task.escalated_to, task.owner_node)):
            continue  # re-read after locking: another instance has just handled it
        previous = task.escalated_to
        task.escalated_to = domain.escalation_target(task.owner_node, None)
        task.answer_due_at = now + timedelta(hours=settings.answer_hours)
        task.updated_at = now
        reason = (f"上级 {previous} 未部署系统（未配置 PARENT_STACK），上报协调改由本级督办答复 "
                  f"(no parent stack: the escalation is answered inside this office)")
        task.history.append(TaskHistory(at=now, actor=SYSTEM_ACTOR, role=Role.system.value, action="retarget",
                                        from_status=task.status, to_status=task.status, reason=reason, evidence=[]))
        outbox.add(session, TaskEscalated(task=task_ref(task), to_node=task.escalated_to,
                                          reason=task.escalation_reason or reason,
                                          answer_due_at=task.answer_due_at, at=now), correlation_id=task.id)
        moved.append(task)
    return moved
