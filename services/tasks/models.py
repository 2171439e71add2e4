"""Tables owned by the tasks service (prefixed `tasks_`: several services may share a database)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint, false)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from services.plumbing.idempotency import make_processed_events_table
from services.plumbing.outbox import make_outbox_table
from services.plumbing.sql import UtcDateTime


class Base(DeclarativeBase):
    pass


class Task(Base):
    """One rectification task (整改任务): a finding with a deduction, until it is closed (销号)."""
    __tablename__ = "tasks_tasks"
    __table_args__ = (
        UniqueConstraint("inspection_id", "item_code", name="uq_tasks_inspection_item"),
        Index("ix_tasks_status_deadline", "status", "deadline_at"),
        Index("ix_tasks_relapse_key", "relapse_key", "item_code", "closed_at"),
        Index("ix_tasks_responsible_found", "responsible_subject_id", "found_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    inspection_id: Mapped[str] = mapped_column(String(36), index=True)
    inspection_kind: Mapped[str] = mapped_column(String(32))
    inspecting_node: Mapped[str] = mapped_column(String(12))
    owner_node: Mapped[str] = mapped_column(String(12))
    inspectors: Mapped[list] = mapped_column(JSON, default=list)
    subject_id: Mapped[str] = mapped_column(String(64))
    subject_name: Mapped[str] = mapped_column(String(200))
    subject_node: Mapped[str] = mapped_column(String(12))
    responsible_subject_id: Mapped[str] = mapped_column(String(64))
    responsible_name: Mapped[str] = mapped_column(String(200))
    responsible_node: Mapped[str] = mapped_column(String(12))
    place_id: Mapped[str | None] = mapped_column(String(64))
    place: Mapped[dict | None] = mapped_column(JSON)
    relapse_key: Mapped[str] = mapped_column(String(80))
    checklist_code: Mapped[str] = mapped_column(String(64))
    item_code: Mapped[str] = mapped_column(String(32))
    item_text: Mapped[str] = mapped_column(String(500))
    category_code: Mapped[str] = mapped_column(String(32), index=True)
    category_name: Mapped[str] = mapped_column(String(200))
    severity: Mapped[str] = mapped_column(String(16))
    findings: Mapped[int] = mapped_column(Integer)
    deduction: Mapped[float] = mapped_column(Float)
    note: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[list] = mapped_column(JSON, default=list)
    found_at: Mapped[datetime] = mapped_column(UtcDateTime())
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime())
    deadline_at: Mapped[datetime] = mapped_column(UtcDateTime())
    deadline_source: Mapped[str] = mapped_column(String(16))
    yellow_at: Mapped[datetime] = mapped_column(UtcDateTime())
    status: Mapped[str] = mapped_column(String(16))
    fixed_by: Mapped[str | None] = mapped_column(String(100))
    fix_submitted_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    fix_note: Mapped[str | None] = mapped_column(Text)
    after_evidence: Mapped[list] = mapped_column(JSON, default=list)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    verified_by: Mapped[str | None] = mapped_column(String(100))
    on_time: Mapped[bool | None] = mapped_column(Boolean)
    hours_to_fix: Mapped[float | None] = mapped_column(Float)
    overdue_since: Mapped[datetime | None] = mapped_column(UtcDateTime())
    urge_count: Mapped[int] = mapped_column(Integer, default=0)
    last_urged_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    escalated_to: Mapped[str | None] = mapped_column(String(12))
    escalated_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    escalation_reason: Mapped[str | None] = mapped_column(Text)
    answer_due_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # When the latest escalation was answered: the coordination is pending while the task is
    # escalated and not answered since (domain.coordination_pending), whatever its status.
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    relapse_of: Mapped[str | None] = mapped_column(ForeignKey("tasks_tasks.id"))
    # Set when the task was handed down to a child stack (its ledger owns the lifecycle);
    # this row then follows the child's status events.
    delegated_to: Mapped[str | None] = mapped_column(String(12), index=True)
    # An unannounced inspection's task (暗访) is kept but held back from the subject side
    # until the inspecting office releases the inspection (`inspection_released`).
    embargoed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    released_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # While embargoed, the `task_delegated` payload for the child stack, sent on release.
    handover: Mapped[dict | None] = mapped_column(JSON)
    # The account (principal.subject) that submitted the accepted fix: it may not verify it.
    fixed_by_subject: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    history: Mapped[list["TaskHistory"]] = relationship(
        back_populates="task", cascade="all, delete-orphan", order_by="TaskHistory.id")


class TaskHistory(Base):
    """Every transition and sweeper action: who, when, why (履职记录)."""
    __tablename__ = "tasks_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks_tasks.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    actor: Mapped[str] = mapped_column(String(100))
    # The authenticated account behind `actor` (None for the sweeper, a tier or older rows).
    actor_subject: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[list] = mapped_column(JSON, default=list)

    task: Mapped[Task] = relationship(back_populates="history")


class SubjectName(Base):
    """Names of subjects seen in inspections, to name a place's responsible subject."""
    __tablename__ = "tasks_subjects"

    subject_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node: Mapped[str] = mapped_column(String(12))
    name: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class InspectionRelease(Base):
    """An unannounced inspection its office has released (暗访公开). Kept even when the
    inspection's tasks have not arrived yet: the release may overtake the submission."""
    __tablename__ = "tasks_inspection_releases"

    inspection_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    inspecting_node: Mapped[str] = mapped_column(String(12))
    released_at: Mapped[datetime] = mapped_column(UtcDateTime())
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class LedgerFigures(Base):
    """The last published figures per responsible subject and month (to publish only changes)."""
    __tablename__ = "tasks_ledger_figures"

    subject_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)
    node: Mapped[str] = mapped_column(String(12))
    figures: Mapped[dict] = mapped_column(JSON)
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class CoordinationRequest(Base):
    """An escalation from a child stack's ledger that this tier owes an answer to (上报协调)."""
    __tablename__ = "tasks_coordination_requests"

    task_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    from_node: Mapped[str] = mapped_column(String(12), index=True)
    task: Mapped[dict] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)
    escalated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    answer_due_at: Mapped[datetime] = mapped_column(UtcDateTime())
    status: Mapped[str] = mapped_column(String(16))  # open | answered
    answered_by: Mapped[str | None] = mapped_column(String(100))
    answer: Mapped[str | None] = mapped_column(Text)
    new_deadline_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


outbox = make_outbox_table(Base.metadata, "tasks")
processed_events = make_processed_events_table(Base.metadata, "tasks")
