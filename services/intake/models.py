"""Tables owned by the intake service (prefixed `intake_`: several services may share a database)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.plumbing.idempotency import make_processed_events_table
from services.plumbing.outbox import make_outbox_table
from services.plumbing.sql import UtcDateTime


class Base(DeclarativeBase):
    pass


class Case(Base):
    """One case (案件): a platform's 数字城管 case or a resident's report (Open311 service request)."""
    __tablename__ = "intake_cases"
    __table_args__ = (
        Index("ix_intake_cases_duplicates", "service_code", "node", "reported_at"),
        Index("ix_intake_cases_responsible", "responsible_subject_id", "reported_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    source: Mapped[str] = mapped_column(String(32))            # digital_city | citizen_report
    channel: Mapped[str] = mapped_column(String(200))          # the platform's name, or 群众
    submitted_by: Mapped[str] = mapped_column(String(200))     # the principal's subject, or anonymous
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    service_code: Mapped[str] = mapped_column(String(32))
    service_name: Mapped[str] = mapped_column(String(100))
    group_code: Mapped[str] = mapped_column(String(32))
    group_name: Mapped[str] = mapped_column(String(100))
    severity: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text)
    content_digest: Mapped[str] = mapped_column(String(64), index=True)
    address: Mapped[str | None] = mapped_column(String(500), nullable=True)
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lng: Mapped[float | None] = mapped_column(Float, nullable=True)
    node: Mapped[str] = mapped_column(String(12), index=True)
    place_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    place: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    responsible_subject_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    responsible_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    responsible: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    media_url: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    reported_at: Mapped[datetime] = mapped_column(UtcDateTime())
    deadline_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    merged_into: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # What was last published as case_handled (overdue | closed_late | closed_on_time).
    handled_outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class KnownSubject(Base):
    """A subject (考评对象) as last seen in an inspection: who a case at its node goes to."""
    __tablename__ = "intake_subjects"

    subject_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node: Mapped[str] = mapped_column(String(12), index=True)
    name: Mapped[str] = mapped_column(String(200))
    subject_type: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class KnownPlace(Base):
    """A place as last seen in an inspection (the inspection service registers places)."""
    __tablename__ = "intake_places"

    place_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node: Mapped[str] = mapped_column(String(12), index=True)
    ref: Mapped[dict] = mapped_column(JSON)  # the PlaceRef as the inspection event carried it
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class PublicSubmission(Base):
    """One anonymous submission: the per-client rate limit and the identical-content bound."""
    __tablename__ = "intake_public_submissions"
    __table_args__ = (Index("ix_intake_public_client_at", "client", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client: Mapped[str] = mapped_column(String(64))
    content_digest: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())


outbox = make_outbox_table(Base.metadata, "intake")
processed_events = make_processed_events_table(Base.metadata, "intake")
