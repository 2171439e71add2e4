"""Shared by the task use cases: settings, the outbox's shape, event scrubbing, who sees what."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from services.plumbing.config import number_setting, parent_stack
from services.plumbing.sql import insert_for
from services.contracts.errors import UnknownReference
from services.contracts.identity import OFFICE_ROLES
from services.tasks import domain
from services.tasks.domain import UNANNOUNCED
from services.tasks.models import Task


SYSTEM_ACTOR = "督办系统"
NAME_MAX, SUBJECT_MAX = 100, 200


class OutboxLike(Protocol):
    def add(self, session: Session, payload, correlation_id: str | None = None, **kw): ...


@dataclass(frozen=True)
class Settings:
    """Config keys (nameko YAML): TASKS_RELAPSE_WINDOW_DAYS (90), TASKS_URGE_REPEAT_HOURS (24),
    TASKS_ESCALATION_GRACE_HOURS (72), TASKS_ANSWER_HOURS (72), TASKS_SWEEP_BATCH (500),
    TASKS_SATISFACTION_DEADLINE_DAYS (30: the time limit of a low satisfaction item's task; our
    default, the policy leaves it to the office; not positive means the default),
    PARENT_STACK (the node code of the tier above that runs a stack and is federated with this
    one; empty: none, and escalations stay inside this office)."""
    relapse_window: timedelta = domain.DEFAULT_RELAPSE_WINDOW
    urge_repeat: timedelta = domain.DEFAULT_URGE_REPEAT
    escalation_grace: timedelta = domain.DEFAULT_ESCALATION_GRACE
    answer_hours: float = domain.DEFAULT_ANSWER_HOURS
    sweep_batch: int = 500
    satisfaction_deadline_days: float = 30.0
    parent_stack: str | None = None

    @classmethod
    def from_config(cls, config: dict) -> "Settings":
        def number(key, default):
            return number_setting(config, key, default)
        return cls(
            parent_stack=parent_stack(config),
            relapse_window=timedelta(days=number("TASKS_RELAPSE_WINDOW_DAYS", 90)),
            urge_repeat=timedelta(hours=number("TASKS_URGE_REPEAT_HOURS", 24)),
            escalation_grace=timedelta(hours=number("TASKS_ESCALATION_GRACE_HOURS", 72)),
            answer_hours=number("TASKS_ANSWER_HOURS", domain.DEFAULT_ANSWER_HOURS),
            sweep_batch=int(number("TASKS_SWEEP_BATCH", 500)),
            satisfaction_deadline_days=number("TASKS_SATISFACTION_DEADLINE_DAYS", 30))


def scrub_nul(body):
    """An event body with every NUL in its text replaced by U+FFFD. PostgreSQL cannot store
    NUL, and an older stack's event may carry one: one character must not dead-letter a
    whole inspection's tasks. Iterative, so no nesting can exhaust the stack."""
    if not isinstance(body, (dict, list)):
        return body.replace("\x00", "\ufffd") if isinstance(body, str) else body
    root = [body]
    stack = [(root, 0)]
    while stack:
        container, key = stack.pop()
        value = container[key]
        if isinstance(value, str):
            if "\x00" in value:
                container[key] = value.replace("\x00", "\ufffd")
        elif isinstance(value, dict):
            if any(isinstance(k, str) and "\x00" in k for k in value):
                value = {(k.replace("\x00", "\ufffd") if isinstance(k, str) else k): v for k, v in value.items()}
                container[key] = value
            stack.extend((value, k) for k in value)
        elif isinstance(value, list):
            stack.extend((value, i) for i in range(len(value)))
    return root[0]


# --- who sees what ------------------------------------------------------------------------
# `principal` is the authenticated caller (services.plumbing.auth.Principal, duck-typed here:
# this module has no nameko imports). None means a trusted internal caller (RPC, tools).


def can_see(principal, task: Task) -> bool:
    """An office reads its subtree: the task's subject, the office that inspected, or the
    ledger's own office. An embargoed task (暗访 not yet released) only the inspecting side sees."""
    if principal is None:
        return True
    if not any(principal.sees(n) for n in (task.responsible_node, task.inspecting_node, task.owner_node)):
        return False
    return not task.embargoed or domain.on_inspecting_side(principal, task.inspecting_node)


def _within(column, node: str):
    return column.like(domain.subtree_prefix(node) + "%")


def visible_filter(principal):
    """`can_see` as a WHERE clause (None: no restriction)."""
    if principal is None:
        return None
    nodes = principal.nodes_with()
    if not nodes:
        return Task.id.is_(None)  # no grants, nothing to see
    reach = or_(*[_within(col, n) for n in nodes
                  for col in (Task.responsible_node, Task.inspecting_node, Task.owner_node)])
    office = principal.nodes_with(OFFICE_ROLES)
    announced = Task.embargoed.is_(False)
    if office:
        announced = or_(announced, *[_within(Task.inspecting_node, n) for n in office])
    return and_(reach, announced)


def _redacted(task: Task, principal) -> bool:
    """Whether the caller is on the subject side of an unannounced inspection's task: it then
    never learns who inspected, nor the inspectors' notes."""
    return (principal is not None and task.inspection_kind == UNANNOUNCED
            and not domain.on_inspecting_side(principal, task.inspecting_node))


def _upsert(session: Session, table, values: dict, keys: list[str], update: dict | None) -> None:
    """INSERT ... ON CONFLICT: concurrent consumers must not fail on a duplicate key."""
    stmt = insert_for(session)(table).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_=update) if update \
        else stmt.on_conflict_do_nothing(index_elements=keys)
    session.execute(stmt)


def get_task(session: Session, task_id: str, lock: bool = False) -> Task:
    stmt = select(Task).where(Task.id == task_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    task = session.execute(stmt).scalar_one_or_none()
    if task is None:
        raise UnknownReference("task_id", f"unknown task {task_id!r}")
    return task


def get_visible_task(session: Session, task_id: str, principal, lock: bool = False) -> Task:
    """A task the caller may see; any other is unknown to it (404: an embargoed task's very
    existence is the inspecting office's secret)."""
    task = get_task(session, task_id, lock=lock)
    if not can_see(principal, task):
        raise UnknownReference("task_id", f"unknown task {task_id!r}")
    return task
