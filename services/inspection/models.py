"""Tables owned by the inspection service (prefixed: several services may share a database)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint, Index
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from services.plumbing.idempotency import make_processed_events_table
from services.plumbing.outbox import make_outbox_table
from services.plumbing.sql import UtcDateTime


class Base(DeclarativeBase):
    pass


class Subject(Base):
    __tablename__ = "inspection_subjects"
    __table_args__ = (UniqueConstraint("node", "subject_type", "name", name="uq_inspection_subject_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject_type: Mapped[str] = mapped_column(String(32))
    node: Mapped[str] = mapped_column(String(12), index=True)
    name: Mapped[str] = mapped_column(String(200))
    contacts: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Place(Base):
    __tablename__ = "inspection_places"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    place_type: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str | None] = mapped_column(String(500))
    lat: Mapped[float | None] = mapped_column(Float)
    lng: Mapped[float | None] = mapped_column(Float)
    node: Mapped[str] = mapped_column(String(12), index=True)
    responsible_subject_id: Mapped[str | None] = mapped_column(ForeignKey("inspection_subjects.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Inspection(Base):
    __tablename__ = "inspection_inspections"
    __table_args__ = (Index("ix_inspection_subject_time", "subject_id", "inspected_at"),
                      UniqueConstraint("idempotency_scope", "idempotency_key", name="uq_inspection_idempotency"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # A client's key is unique only in its scope: who sent it to which endpoint
    # (plumbing/idempotency.py client_key); the fingerprint of the body it came with.
    # NULL scope: a key stored before keys were scoped (issue 27).
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    idempotency_scope: Mapped[str | None] = mapped_column(String(64))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(ForeignKey("inspection_subjects.id"))
    place_id: Mapped[str | None] = mapped_column(ForeignKey("inspection_places.id"))
    catalogue_id: Mapped[str] = mapped_column(String(64))
    checklist_version: Mapped[str] = mapped_column(String(32))
    checklist_code: Mapped[str] = mapped_column(String(64))
    inspectors: Mapped[list] = mapped_column(JSON)
    inspected_at: Mapped[datetime] = mapped_column(UtcDateTime())
    submitted_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    note: Mapped[str | None] = mapped_column(Text)
    scale: Mapped[int] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)
    points_available: Mapped[float | None] = mapped_column(Float)
    points_deducted: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # The office that made the inspection (its stack's home node): its side sees an
    # unannounced inspection (暗访) before release and the inspectors' names always.
    # NULL on rows from before it was recorded: those were made by this stack's home.
    inspecting_node: Mapped[str | None] = mapped_column(String(12))
    # Who did it, from the verified caller (never from the request body).
    recorded_by: Mapped[str | None] = mapped_column(Text)
    submitted_by: Mapped[str | None] = mapped_column(Text)
    # 暗访 only: when and by whom the inspecting office made it known to its subject.
    released_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    released_by: Mapped[str | None] = mapped_column(Text)

    results: Mapped[list["ItemResult"]] = relationship(
        back_populates="inspection", cascade="all, delete-orphan", order_by="ItemResult.position")


class ItemResult(Base):
    __tablename__ = "inspection_item_results"
    __table_args__ = (UniqueConstraint("inspection_id", "item_code", name="uq_inspection_item"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inspection_id: Mapped[str] = mapped_column(ForeignKey("inspection_inspections.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    item_code: Mapped[str] = mapped_column(String(32))
    category_code: Mapped[str] = mapped_column(String(32))
    findings: Mapped[int] = mapped_column(Integer)
    deduction: Mapped[float] = mapped_column(Float)
    note: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[list] = mapped_column(JSON, default=list)
    lat: Mapped[float | None] = mapped_column(Float)
    lng: Mapped[float | None] = mapped_column(Float)
    deadline_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    inspection: Mapped[Inspection] = relationship(back_populates="results")


class Schedule(Base):
    """An office's rhythm (检查计划): which subjects or place types are checked how often, by whom."""
    __tablename__ = "inspection_schedules"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node: Mapped[str] = mapped_column(String(12), index=True)
    name: Mapped[str] = mapped_column(String(200))
    frequency: Mapped[str] = mapped_column(String(16))  # daily | weekly | monthly
    subject_type: Mapped[str | None] = mapped_column(String(32))
    subject_id: Mapped[str | None] = mapped_column(String(36))
    place_type: Mapped[str | None] = mapped_column(String(32))
    inspectors: Mapped[list] = mapped_column(JSON, default=list)
    counts: Mapped[bool] = mapped_column(Boolean, default=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    starts_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str | None] = mapped_column(Text)


class MissedCheck(Base):
    """A scheduled check that did not happen in an ended period: flagged (and told) once."""
    __tablename__ = "inspection_missed_checks"
    __table_args__ = (UniqueConstraint("schedule_id", "target_id", "period", name="uq_inspection_missed_check"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule_id: Mapped[str] = mapped_column(ForeignKey("inspection_schedules.id"), index=True)
    target_kind: Mapped[str] = mapped_column(String(16))
    target_id: Mapped[str] = mapped_column(String(36))
    target_name: Mapped[str] = mapped_column(String(200))
    target_node: Mapped[str] = mapped_column(String(12))
    period: Mapped[str] = mapped_column(String(16))
    period_start: Mapped[datetime] = mapped_column(UtcDateTime())
    period_end: Mapped[datetime] = mapped_column(UtcDateTime())
    flagged_at: Mapped[datetime] = mapped_column(UtcDateTime())


outbox = make_outbox_table(Base.metadata, "inspection")
processed_events = make_processed_events_table(Base.metadata, "inspection")
