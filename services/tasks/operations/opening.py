"""Opening tasks from an inspection's findings, releasing unannounced ones, finding relapses."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.plumbing.sql import advisory_xact_lock
from services.contracts.nodes import is_within
from services.contracts.tiers import DOWN_EXCHANGE, routing_key as tier_routing_key
from services.contracts.events.inspection import Evidence, InspectionReleased, InspectionSubmitted
from services.contracts.events.tasks import TaskClosed, TaskDelegated, TaskOpened, TaskRelapsed, TaskStatus
from services.tasks import domain, metrics
from services.tasks.domain import REDACTED_INSPECTORS, UNANNOUNCED, Role
from services.tasks.models import InspectionRelease, SubjectName, Task, TaskHistory
from services.tasks.operations.common import NAME_MAX, OutboxLike, Settings, _upsert
from services.tasks.operations.figures import _figure_keys, refresh_figures
from services.tasks.operations.views import _open_reason, task_ref


# --- opening tasks from an inspection ------------------------------------------------------


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
               child_stacks: tuple[str, ...] = (), task_ids: dict[str, str] | None = None,
               released: bool = False) -> list[Task]:
    """One task per finding with a deduction; a repeat of a recently closed task is linked (反弹).

    A finding whose responsible subject lies in a child stack's subtree is handed down to
    that stack (`task_delegated` on the down exchange): its ledger owns the lifecycle and
    this ledger follows its status events. `task_ids` keeps a handed-down task's id.

    An unannounced inspection's tasks (暗访) are kept but embargoed until the inspecting office
    releases the inspection (`release_inspection`; the release may have come first): nothing
    is announced or handed down before. `released`: the tier above released it already.
    """
    release, embargoed = None, False
    historic = event.historic
    if event.kind.value == UNANNOUNCED and not historic:
        _lock_release(session, str(event.inspection_id))
        release = session.get(InspectionRelease, str(event.inspection_id))
        embargoed = release is None and not released
    _upsert(session, SubjectName.__table__,
            dict(subject_id=event.subject.subject_id, node=event.subject.node, name=event.subject.name,
                 updated_at=now),
            ["subject_id"], dict(node=event.subject.node, name=event.subject.name, updated_at=now))
    resp_id, resp_node, resp_name = _responsible(session, event)
    place_id = event.place.place_id if event.place else None
    key = domain.relapse_key(place_id, event.subject.subject_id)
    found_at = event.inspected_at
    tasks, relinked = [], []
    if historic:
        # History arrives all at once and is consumed in any order: one place's history is
        # opened one inspection at a time, so each sees the close-outs before it (反弹).
        advisory_xact_lock(session, f"tasks-history:{key}")
    for finding in event.findings:
        if finding.deduction <= 0:
            continue
        deadline, source = domain.deadline_for(found_at, finding.deadline_hours, finding.deadline_at)
        if release is not None and not released:
            deadline = domain.deadline_after_release(found_at, deadline, release.released_at)
        yellow = domain.yellow_from(found_at, deadline)
        close_out = finding.close_out if historic else None
        if historic and close_out is None and deadline <= now:
            # History still open today is today's task: its time limit runs from the import,
            # never overdue (nor vetoed) for the months before anyone here knew of it.
            deadline, yellow = now + (deadline - found_at), domain.yellow_from(now, now + (deadline - found_at))
        relapse = _find_relapse(session, key, finding.item_code, found_at, settings.relapse_window)
        # A closed piece of history has nothing left to hand down.
        delegate_to = None if close_out else next((c for c in child_stacks if is_within(resp_node, c)), None)
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
            yellow_at=yellow, status=TaskStatus.open.value, urge_count=0,
            after_evidence=[], relapse_of=relapse.task_id if relapse else None, delegated_to=delegate_to,
            embargoed=embargoed, released_at=release.released_at if release else None, updated_at=now)
        session.add(task)
        task.history.append(TaskHistory(
            at=now, actor=(", ".join(event.inspectors) or "检查组")[:NAME_MAX], role=Role.inspector.value, action="open",
            from_status=None, to_status=TaskStatus.open.value,
            reason=_open_reason(event.kind.value, str(event.inspection_id), finding.note or finding.item_text),
            evidence=[e.model_dump(mode="json") for e in finding.evidence]))
        if close_out is not None:
            _close_from_history(task, close_out)
            session.flush()
            relinked += _relink_later_relapses(session, task, settings.relapse_window)
        delegated = None
        if delegate_to is not None:
            delegated = _handover(task, event, finding)
        if embargoed:
            # Handed down only once released: keep what the child stack will need.
            task.handover = delegated.model_dump(mode="json") if delegated else None
        else:
            _announce(session, task, outbox, now, correlation_id, delegated,
                      relapse_closed_at=relapse.closed_at if relapse else None, historic=close_out is not None)
        metrics.TASKS_OPENED.labels(finding.severity.value).inc()
        tasks.append(task)
    session.flush()
    refresh_figures(session, outbox, _figure_keys(t for t in tasks + relinked if not t.embargoed), now)
    return tasks


def _relink_later_relapses(session: Session, closed: Task, window: timedelta) -> list[Task]:
    """A piece of history closed before findings already imported: each later finding of the
    same item at the same place repeats the close-out nearest before it, as it would have
    had the history been lived in order. Returns the tasks whose link changed."""
    later = session.execute(select(Task).where(
        Task.relapse_key == closed.relapse_key, Task.item_code == closed.item_code, Task.id != closed.id,
        Task.found_at > closed.closed_at, Task.found_at <= closed.closed_at + window)).scalars().all()
    changed = []
    for task in later:
        best = _find_relapse(session, task.relapse_key, task.item_code, task.found_at, window)
        if best is not None and best.task_id != task.relapse_of and best.task_id != task.id:
            task.relapse_of = best.task_id
            changed.append(task)
    return changed


def _handover(task: Task, event: InspectionSubmitted, finding) -> TaskDelegated:
    """What the child stack gets: the one finding, with the time limit this ledger set (a
    release may have moved it: the child must not count from the visit)."""
    if domain.deadline_for(task.found_at, finding.deadline_hours, finding.deadline_at)[0] != task.deadline_at:
        finding = finding.model_copy(update={"deadline_at": task.deadline_at})
    return TaskDelegated(task_id=task.id, delegated_by=task.owner_node,
                         inspection=event.model_copy(update={"findings": [finding]}))


def _close_from_history(task: Task, close_out) -> None:
    """A finding imported with its close-out (销号) is closed as it was then: fixed, verified
    and on time (or not) by its own dates, so its month's figures read as if lived here."""
    fixed_at = close_out.fix_submitted_at or close_out.closed_at
    task.status = TaskStatus.closed.value
    task.fixed_by, task.fix_submitted_at, task.fix_note = close_out.fixed_by, fixed_at, close_out.fix_note
    task.closed_at, task.verified_by = close_out.closed_at, close_out.verified_by[:NAME_MAX]
    task.on_time = fixed_at <= task.deadline_at
    task.hours_to_fix = domain.hours_between(task.found_at, fixed_at)
    task.history.append(TaskHistory(
        at=fixed_at, actor=(close_out.fixed_by or task.responsible_name)[:NAME_MAX], role=Role.responsible.value,
        action="submit_fix", from_status=TaskStatus.open.value, to_status=TaskStatus.fix_submitted.value,
        reason=close_out.fix_note, evidence=[]))
    task.history.append(TaskHistory(
        at=close_out.closed_at, actor=close_out.verified_by[:NAME_MAX], role=Role.inspector.value, action="verify",
        from_status=TaskStatus.fix_submitted.value, to_status=TaskStatus.closed.value,
        reason="历史导入：按原始记录销号 (closed as recorded, imported)", evidence=[]))


def _announce(session: Session, task: Task, outbox: OutboxLike, now: datetime, correlation_id: str | None,
              delegated: TaskDelegated | None, relapse_closed_at: datetime | None = None,
              historic: bool = False) -> None:
    """Tell the subject side (notify) of a task, link a relapse, hand it down to a child stack.
    An unannounced inspection's notes stay with the inspecting side: the notice carries none.
    `historic`: a piece of closed history — its opening and close-out are told as facts with
    their own dates, marked so that nobody is notified and no relapse is announced again."""
    ref = task_ref(task)
    evidence = [Evidence.model_validate(e) for e in task.evidence or []]
    note = None if task.inspection_kind == UNANNOUNCED else task.note
    outbox.add(session, TaskOpened(task=ref, opened_at=now, found_at=task.found_at, evidence=evidence,
                                   note=note, relapse_of=task.relapse_of, historic=historic),
               correlation_id=correlation_id)
    if historic:
        outbox.add(session, TaskClosed(task=ref, closed_at=task.closed_at, verified_by=task.verified_by,
                                       on_time=task.on_time, hours_to_fix=task.hours_to_fix, historic=True),
                   correlation_id=correlation_id)
        metrics.TASKS_CLOSED_FROM_HISTORY.inc()
        return
    if delegated is not None:
        outbox.add(session, delegated, correlation_id=correlation_id, exchange=DOWN_EXCHANGE,
                   routing_key=tier_routing_key("task_delegated", task.responsible_node))
    if task.relapse_of is not None:
        if relapse_closed_at is None:
            earlier = session.get(Task, task.relapse_of)
            relapse_closed_at = earlier.closed_at if earlier is not None else task.found_at
        outbox.add(session, TaskRelapsed(task=ref, relapse_of=task.relapse_of, closed_at=relapse_closed_at),
                   correlation_id=correlation_id)
        metrics.RELAPSES.inc()


def _lock_release(session: Session, inspection_id: str) -> None:
    """Submission and release of one inspection are consumed concurrently: without this lock
    each could miss the other's uncommitted rows and leave the tasks embargoed for good."""
    advisory_xact_lock(session, f"tasks-release:{inspection_id}")


def release_inspection(session: Session, released: InspectionReleased, outbox: OutboxLike, now: datetime,
                       correlation_id: str | None = None) -> list[Task]:
    """The inspecting office released an unannounced inspection (暗访公开): its tasks are
    announced (`task_opened`, so notices follow), handed down and counted from now on. The
    release is remembered, so tasks of an inspection not yet seen open released."""
    inspection_id = str(released.inspection_id)
    _lock_release(session, inspection_id)
    _upsert(session, InspectionRelease.__table__,
            dict(inspection_id=inspection_id, inspecting_node=released.inspecting_node,
                 released_at=released.released_at, received_at=now), ["inspection_id"], None)
    tasks = session.execute(select(Task).where(Task.inspection_id == inspection_id, Task.embargoed.is_(True))
                            .order_by(Task.item_code).with_for_update()
                            .execution_options(populate_existing=True)).scalars().all()
    for task in tasks:
        task.embargoed, task.released_at, task.updated_at = False, released.released_at, now
        task.deadline_at = domain.deadline_after_release(task.found_at, task.deadline_at, released.released_at)
        task.yellow_at = domain.yellow_from(task.found_at, task.deadline_at)
        if task.handover:
            # The child counts from the release too: it gets the moved time limit as a date.
            handover = TaskDelegated.model_validate(task.handover)
            task.handover = _handover(task, handover.inspection, handover.inspection.findings[0]).model_dump(
                mode="json")
        task.history.append(TaskHistory(
            at=now, actor=REDACTED_INSPECTORS, role=Role.inspector.value, action="release",
            from_status=task.status, to_status=task.status,
            reason=f"暗访结果公开 (unannounced inspection released by {released.inspecting_node})", evidence=[]))
        delegated = TaskDelegated.model_validate(task.handover) if task.handover else None
        task.handover = None
        _announce(session, task, outbox, now, correlation_id or inspection_id, delegated)
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
