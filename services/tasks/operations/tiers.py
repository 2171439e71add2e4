"""Tiers: tasks handed down to a child stack's ledger, and their status reported up."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.contracts.nodes import is_within
from services.contracts.tiers import UP_EXCHANGE, routing_key as tier_routing_key
from services.contracts.events.tasks import TaskClosed, TaskDelegated, TaskOverdue, TaskStatus, TaskStatusChanged
from services.tasks.models import Task, TaskHistory
from services.tasks.operations.common import NAME_MAX, SYSTEM_ACTOR, OutboxLike, Settings
from services.tasks.operations.figures import _figure_keys, refresh_figures
from services.tasks.operations.opening import open_tasks


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
    # The tier above hands a task down only once it is released (暗访公开).
    return open_tasks(session, delegated.inspection, outbox, home, settings, now,
                      correlation_id=delegated.task_id, child_stacks=child_stacks,
                      task_ids={f.item_code: delegated.task_id for f in delegated.inspection.findings},
                      released=True)


def apply_child_update(session: Session, update: TaskStatusChanged | TaskClosed | TaskOverdue, outbox: OutboxLike,
                       now: datetime) -> Task | None:
    """A child stack reports a handed-down task's progress: mirror it, tell this stack's own
    consumers (a case's reporter at intake, notify's bulletin: the task is this ledger's
    too, and without the local event it would stay open here for ever), pass it on upward."""
    task = session.execute(select(Task).where(Task.id == update.task.task_id).with_for_update()
                           .execution_options(populate_existing=True)).scalar_one_or_none()
    if task is None or task.delegated_to is None:
        return None  # not a task this tier handed down: nothing to mirror
    from_status = task.status
    if isinstance(update, TaskOverdue):
        if task.status == TaskStatus.closed.value or (task.urge_count or 0) >= update.urge_count:
            return None  # closed meanwhile, or an urge already mirrored (arriving late or again)
        task.overdue_since = task.overdue_since or update.overdue_since
        task.urge_count, task.last_urged_at = update.urge_count, now
        actor, reason, at = SYSTEM_ACTOR, f"逾期未整改，第{update.urge_count}次督办 (overdue in the child's ledger)", now
    elif isinstance(update, TaskClosed):
        task.status = TaskStatus.closed.value
        task.closed_at, task.verified_by = update.closed_at, update.verified_by[:NAME_MAX]
        task.on_time, task.hours_to_fix = update.on_time, update.hours_to_fix
        actor, reason, at = update.verified_by, "销号 (closed in the child's ledger)", update.closed_at
    else:
        if task.status == TaskStatus.closed.value:
            return None  # a late status change must not reopen a closed task
        task.status = update.to_status.value
        actor, reason, at = update.actor, update.reason, update.at
    task.deadline_at = update.task.deadline_at
    task.updated_at = now
    task.history.append(TaskHistory(at=at, actor=actor[:NAME_MAX], role="child_tier", action="child_update",
                                    from_status=from_status, to_status=task.status,
                                    reason=f"[{task.delegated_to}] {reason or ''}".strip(), evidence=[]))
    outbox.add(session, update, correlation_id=task.id)
    if not is_within(task.inspecting_node, task.owner_node):
        outbox.add(session, update, correlation_id=task.id, exchange=UP_EXCHANGE,
                   routing_key=tier_routing_key(update.EVENT_TYPE, task.owner_node))
    session.flush()
    refresh_figures(session, outbox, _figure_keys([task]), now)
    return task
