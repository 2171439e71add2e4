"""Tables owned by the indicators service (prefixed `indicators_`: services may share a database)."""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import JSON, Boolean, Date, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.plumbing.idempotency import make_processed_events_table
from services.plumbing.outbox import make_outbox_table
from services.plumbing.sql import UtcDateTime


class Base(DeclarativeBase):
    pass


# --- vector density (病媒生物密度) ---

class ControlLevel(Base):
    """An office's control level for one method (控制水平), valid for the node's subtree."""
    __tablename__ = "indicators_control_levels"

    node: Mapped[str] = mapped_column(String(12), primary_key=True)
    method: Mapped[str] = mapped_column(String(32), primary_key=True)
    level: Mapped[float] = mapped_column(Float)
    set_by: Mapped[str] = mapped_column(String(200))
    set_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DensityForm(Base):
    """One submitted monitoring form (the centre's figures for an area): the idempotency unit."""
    __tablename__ = "indicators_density_forms"
    __table_args__ = (UniqueConstraint("idempotency_scope", "idempotency_key", name="uq_indicators_form_idempotency"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Unique in its scope (who sent it to which endpoint: plumbing/idempotency.py client_key),
    # with the fingerprint of the body it came with; NULL scope: stored before issue 27.
    idempotency_key: Mapped[str] = mapped_column(String(128))
    idempotency_scope: Mapped[str | None] = mapped_column(String(64))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    area: Mapped[str] = mapped_column(String(12), index=True)
    period: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(200))
    recorded_by: Mapped[str] = mapped_column(String(200))
    recorded_by_subject: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DensityRecord(Base):
    """One figure: area, species, method, sampling date and value."""
    __tablename__ = "indicators_density_records"
    __table_args__ = (Index("ix_indicators_density_area_period", "area", "period"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    form_id: Mapped[str] = mapped_column(ForeignKey("indicators_density_forms.id"), index=True)
    area: Mapped[str] = mapped_column(String(12))
    period: Mapped[str] = mapped_column(String(8))
    species: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
    sample_size: Mapped[int | None] = mapped_column(Integer)
    sampled_on: Mapped[date] = mapped_column(Date)
    site: Mapped[str | None] = mapped_column(String(200))


class VectorVerdict(Base):
    """The last verdict per area and month (to publish only changes, and detect slips)."""
    __tablename__ = "indicators_vector_verdicts"

    area: Mapped[str] = mapped_column(String(12), primary_key=True)
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    verdict: Mapped[str] = mapped_column(String(16))
    species: Mapped[list] = mapped_column(JSON)
    explanation: Mapped[str] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer)
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime())


# --- surveys (群众满意率) ---

class Questionnaire(Base):
    """A questionnaire version (like checklists: a survey pins the version it used)."""
    __tablename__ = "indicators_questionnaires"

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    node: Mapped[str] = mapped_column(String(12))
    title: Mapped[str] = mapped_column(String(200))
    threshold: Mapped[float] = mapped_column(Float)
    items: Mapped[list] = mapped_column(JSON)
    defined_by: Mapped[str] = mapped_column(String(200))
    defined_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Survey(Base):
    """A survey wave: the questionnaire version, the period, the seed and the drawn sample."""
    __tablename__ = "indicators_surveys"
    __table_args__ = (UniqueConstraint("idempotency_scope", "idempotency_key", name="uq_indicators_survey_idempotency"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    idempotency_scope: Mapped[str | None] = mapped_column(String(64))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(12), index=True)
    questionnaire_code: Mapped[str] = mapped_column(String(64))
    questionnaire_version: Mapped[int] = mapped_column(Integer)
    period: Mapped[str] = mapped_column(String(8))
    seed: Mapped[int] = mapped_column(Integer)
    areas: Mapped[list] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # open | closed
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revision: Mapped[int] = mapped_column(Integer, default=0)


class Respondent(Base):
    """A sampled respondent and the one-time code of its public answer link (kept hashed)."""
    __tablename__ = "indicators_respondents"
    __table_args__ = (UniqueConstraint("survey_id", "label", "area", name="uq_indicators_respondent"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    survey_id: Mapped[str] = mapped_column(ForeignKey("indicators_surveys.id"), index=True)
    area: Mapped[str] = mapped_column(String(12))
    label: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    channel: Mapped[str | None] = mapped_column(String(16))  # interviewer | public
    recorded_by: Mapped[str | None] = mapped_column(String(200))
    answers: Mapped[dict | None] = mapped_column(JSON)


class PublicAttempt(Base):
    """Anonymous answer attempts per client address (abuse bounds of the public link)."""
    __tablename__ = "indicators_public_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    succeeded: Mapped[bool] = mapped_column(Boolean)


class SatisfactionResult(Base):
    """A closed wave's published figure per area."""
    __tablename__ = "indicators_satisfaction_results"

    survey_id: Mapped[str] = mapped_column(ForeignKey("indicators_surveys.id"), primary_key=True)
    area: Mapped[str] = mapped_column(String(12), primary_key=True)
    period: Mapped[str] = mapped_column(String(8))
    figure: Mapped[dict] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(Integer)


# --- tiers: what child stacks reported ---

class ChildReport(Base):
    """A child stack's verdict or rate for one of its areas (highest revision wins)."""
    __tablename__ = "indicators_child_reports"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # vector | satisfaction
    area: Mapped[str] = mapped_column(String(12), primary_key=True)
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)  # "" for vector, the survey id
    reporting_node: Mapped[str] = mapped_column(String(12), index=True)
    payload: Mapped[dict] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


outbox = make_outbox_table(Base.metadata, "indicators")
processed_events = make_processed_events_table(Base.metadata, "indicators")
