"""Gauges of the ledger's state for /metrics."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from services.contracts.events.tasks import Light, TaskStatus
from services.contracts.vocab import Severity
from services.tasks import metrics
from services.tasks.models import Task


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
