"""Ledger figures per subject and period (closure and on-time rates) and their events."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.contracts.events.tasks import LedgerFiguresUpdated, TaskStatus
from services.contracts.periods import Period, PeriodKind
from services.tasks import domain
from services.tasks.models import LedgerFigures, Task
from services.tasks.schemas import FiguresOut, LedgerQuery
from services.tasks.operations.common import OutboxLike, _upsert
from services.tasks.operations.views import _ledger_stmt


# --- figures ------------------------------------------------------------------------------


def _facts(task: Task) -> domain.TaskFacts:
    return domain.TaskFacts(status=TaskStatus(task.status), deadline_at=task.deadline_at,
                            closed=task.status == TaskStatus.closed.value, on_time=task.on_time,
                            hours_to_fix=task.hours_to_fix, relapse=task.relapse_of is not None,
                            marked_overdue=task.overdue_since is not None)


def figures_for_tasks(session: Session, stmt, now: datetime, period: str) -> list[FiguresOut]:
    """Figures of announced tasks: an embargoed one is not yet the subject's (暗访未公开)."""
    by_subject: dict[str, list[Task]] = {}
    for task in session.execute(stmt.where(Task.embargoed.is_(False))).scalars():
        by_subject.setdefault(task.responsible_subject_id, []).append(task)
    out = []
    for subject_id, tasks in sorted(by_subject.items(), key=lambda kv: kv[1][0].responsible_name):
        figures = domain.compute_figures([_facts(t) for t in tasks], now)
        out.append(FiguresOut(subject_id=subject_id, node=tasks[0].responsible_node,
                              name=tasks[0].responsible_name, period=period, **figures.as_dict()))
    return out


def figures(session: Session, period: str | None, subject_id: str | None, now: datetime,
            principal=None) -> list[FiguresOut]:
    """Figures per responsible subject for tasks found in the period (default: this month, CST),
    over the tasks the caller may see."""
    period = period or Period.containing(PeriodKind.month, now).key
    query = LedgerQuery(period=period, subject_id=subject_id, limit=1)
    return figures_for_tasks(session, _ledger_stmt(query, now, principal), now, period)


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
