"""Coordination (协调): escalations from child stacks, answered by this tier."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from services.contracts.errors import StateConflict, UnknownReference
from services.contracts.tiers import DOWN_EXCHANGE, routing_key as tier_routing_key
from services.contracts.events.tasks import CoordinationAnswered, CoordinationRequested, TaskEscalated, TaskRef
from services.tasks import domain, metrics
from services.tasks.domain import Action, Role, TaskRuleViolation
from services.tasks.models import CoordinationRequest, Task
from services.tasks.schemas import CoordinationOut
from services.tasks.operations.common import NAME_MAX, OutboxLike, Settings, _within
from services.tasks.operations.figures import _figure_keys, refresh_figures
from services.tasks.operations.lifecycle import Actor, _transition


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


def list_coordination(session: Session, status: str | None, now: datetime, principal=None,
                      home: str | None = None) -> list[CoordinationOut]:
    """Requests this tier owes an answer to: this office sees them all, a child office its own."""
    stmt = select(CoordinationRequest).order_by(CoordinationRequest.answer_due_at, CoordinationRequest.task_id)
    if status in ("open", "answered"):
        stmt = stmt.where(CoordinationRequest.status == status)
    if principal is not None and not (home and principal.sees(home)):
        nodes = principal.nodes_with()
        stmt = stmt.where(or_(*[_within(CoordinationRequest.from_node, n) for n in nodes]) if nodes
                          else CoordinationRequest.task_id.is_(None))
    return [coordination_out(r, now) for r in session.execute(stmt).scalars()]


def answer_coordination(session: Session, task_id: str, principal, note: str,
                        new_deadline_at: datetime | None, outbox: OutboxLike, home: str,
                        now: datetime) -> CoordinationOut:
    """Answer a child's escalation; the answer travels down to the ledger that owns the task.
    Only this tier's office answers: an inspector or administrator of the home node."""
    principal.require((domain.INSPECTOR, domain.ADMINISTRATOR), home, "role")
    actor = principal.name[:NAME_MAX]
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
    """The tier above answered this ledger's escalation: back to work, maybe with a new deadline.

    The subject may have taken the task up again meanwhile (escalation never locks it): the
    answer then keeps its status. If the task was closed before the answer came, or the
    escalation was answered already (or retargeted to this office and answered here), the
    answer changes nothing: the parent's answer is kept on its own record only."""
    if answer.owner_node != home:
        return None
    task = session.execute(select(Task).where(Task.id == answer.task_id).with_for_update()
                           .execution_options(populate_existing=True)).scalar_one_or_none()
    if task is None or not domain.coordination_pending(task.status, task.escalated_at, task.answered_at):
        return None  # closed, answered already (or locally) — nothing left to do
    if task.escalated_to != answer.coordinator_node:
        return None  # the escalation now waits on another office (retargeted): not this answer's to settle
    # A deadline that has passed while the answer travelled is not granted.
    deadline = answer.new_deadline_at if answer.new_deadline_at and answer.new_deadline_at > now else None
    coordinator = Actor(answer.answered_by[:NAME_MAX], None, Role.coordinator.value)
    _transition(session, task, Action.answer, coordinator, now, outbox, settings, note=f"[{answer.coordinator_node}] {answer.answer}", evidence=[], new_deadline_at=deadline)
    session.flush()
    refresh_figures(session, outbox, _figure_keys([task]), now)
    return task
