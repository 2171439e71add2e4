"""Tables owned by the scoring service (prefixed: several services may share a database)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, Float, Index, Integer, String, Text, UniqueConstraint, false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.plumbing.idempotency import make_processed_events_table
from services.plumbing.outbox import make_outbox_table
from services.plumbing.sql import UtcDateTime


class Base(DeclarativeBase):
    pass


class Subject(Base):
    """Who is scored. A child unit's identity is its division code (so roll-up nodes and
    inspected child units are one subject); departments and area units keep the
    inspection service's subject id."""
    __tablename__ = "scoring_subjects"

    subject_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node: Mapped[str] = mapped_column(String(12), index=True)
    name: Mapped[str] = mapped_column(String(200))
    subject_type: Mapped[str] = mapped_column(String(32))
    tier: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class SubjectAlias(Base):
    """Other ids a subject is known by (the inspection service's id of a child unit)."""
    __tablename__ = "scoring_subject_aliases"

    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(64), index=True)


class ScoreInputRow(Base):
    """A submitted inspection, with the period keys it falls in (CST calendar)."""
    __tablename__ = "scoring_inputs"
    __table_args__ = (Index("ix_scoring_inputs_subject_month", "subject_id", "month"),)

    inspection_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36))
    subject_id: Mapped[str] = mapped_column(String(64))
    inspection_subject_id: Mapped[str] = mapped_column(String(64))
    inspecting_node: Mapped[str] = mapped_column(String(12))
    kind: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    scale: Mapped[int] = mapped_column(Integer)
    inspected_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # Who inspected: shown in a score explanation only to the inspecting side (暗访 inspectors
    # must never reach the inspected subject).
    inspectors: Mapped[list | None] = mapped_column(JSON, nullable=True)
    week: Mapped[str] = mapped_column(String(8))
    month: Mapped[str] = mapped_column(String(7))
    quarter: Mapped[str] = mapped_column(String(7))
    half_year: Mapped[str] = mapped_column(String(7))
    year: Mapped[str] = mapped_column(String(4))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # The producer's revision of an input that may be published again with another figure (a
    # survey wave's satisfaction rate): a higher one replaces the score. None: inspections, cases.
    revision: Mapped[int | None] = mapped_column(Integer, nullable=True)


class VectorVerdictInput(Base):
    """An area's latest vector density verdict (病媒生物密度: pass | fail | incomplete) for a
    month, from indicators' `vector_verdict_published`: the highest revision seen wins. A
    policy with `vetoes.vector_density` vetoes the area's figures while it fails."""
    __tablename__ = "scoring_vector_verdicts"

    subject_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the area's division code
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    evaluating_node: Mapped[str] = mapped_column(String(12))
    verdict: Mapped[str] = mapped_column(String(16))
    revision: Mapped[int] = mapped_column(Integer)
    event_id: Mapped[str] = mapped_column(String(36))
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ChildScore(Base):
    """The latest score of a child unit for a period, as its parent's roll-up input.

    From this stack's own computation (source "stack") or, later, from a child stack's
    score_published (source = that stack's node; the highest revision wins)."""
    __tablename__ = "scoring_child_scores"

    parent_node: Mapped[str] = mapped_column(String(12), primary_key=True)
    child_node: Mapped[str] = mapped_column(String(12), primary_key=True)
    period_kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    score: Mapped[float | None] = mapped_column(Float)
    scale: Mapped[int] = mapped_column(Integer)
    inputs: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(32))
    revision: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class PeriodScore(Base):
    """A subject's figure for one period: score, grade, rank, vetoes and how it was made."""
    __tablename__ = "scoring_period_scores"
    __table_args__ = (
        UniqueConstraint("subject_id", "period_kind", "period", name="uq_scoring_period_score"),
        Index("ix_scoring_period_scores_group", "period_kind", "period", "tier", "subject_type"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_id: Mapped[str] = mapped_column(String(64))
    period_kind: Mapped[str] = mapped_column(String(16))
    period: Mapped[str] = mapped_column(String(8))
    node: Mapped[str] = mapped_column(String(12))
    name: Mapped[str] = mapped_column(String(200))
    tier: Mapped[str] = mapped_column(String(16))
    subject_type: Mapped[str] = mapped_column(String(32))
    score: Mapped[float | None] = mapped_column(Float)
    scale: Mapped[int] = mapped_column(Integer)
    routine: Mapped[float | None] = mapped_column(Float)
    appraisal: Mapped[float | None] = mapped_column(Float)
    inputs: Mapped[int] = mapped_column(Integer)
    vetoed: Mapped[bool] = mapped_column(Boolean)
    veto_reasons: Mapped[list] = mapped_column(JSON)
    grade: Mapped[str | None] = mapped_column(String(20))
    rank: Mapped[int | None] = mapped_column(Integer)
    peers: Mapped[int] = mapped_column(Integer, default=0)
    ranked: Mapped[bool] = mapped_column(Boolean, default=False)
    movement: Mapped[int | None] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer, default=0)
    # The policy's minimum sample for ranking this row (None: its policy does not rank this
    # period or tier), kept on the row so that the database ranks a peer group by itself.
    rank_min_inputs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    policy_id: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[int] = mapped_column(Integer)
    explain: Mapped[dict] = mapped_column(JSON)
    published: Mapped[dict | None] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Ranking(Base):
    """A peer group's ranking for a period: its version grows with every ranking_published."""
    __tablename__ = "scoring_rankings"

    period_kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    tier: Mapped[str] = mapped_column(String(16), primary_key=True)
    subject_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    peers: Mapped[int] = mapped_column(Integer)
    published_at: Mapped[datetime] = mapped_column(UtcDateTime())


class PolicyVersion(Base):
    """Scoring policies per node; an update adds a version, never edits one."""
    __tablename__ = "scoring_policies"
    __table_args__ = (UniqueConstraint("node", "version", name="uq_scoring_policy_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(12), index=True)
    version: Mapped[int] = mapped_column(Integer)
    policy_id: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # A policy change takes two administrators: created_by proposed it, approved_by adopted it.
    approved_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    approval_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


class Appraisal(Base):
    """综合评议 / 民主测评 entered for a subject and period; the latest entry counts."""
    __tablename__ = "scoring_appraisals"
    __table_args__ = (Index("ix_scoring_appraisals_subject", "subject_id", "period"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_id: Mapped[str] = mapped_column(String(64))
    period_kind: Mapped[str] = mapped_column(String(16))
    period: Mapped[str] = mapped_column(String(8))
    score: Mapped[float] = mapped_column(Float)
    scale: Mapped[int] = mapped_column(Integer)
    appraised_by: Mapped[str] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Veto(Base):
    """一票否决 entered through the API: a criticism notice or a media exposure.

    Never deleted: a revoked veto (an appeal upheld, a notice withdrawn) keeps its row,
    marked with when, by whom and why, and no longer counts."""
    __tablename__ = "scoring_vetoes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(64), index=True)
    period_kind: Mapped[str] = mapped_column(String(16))
    period: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(32))
    issued_by: Mapped[str] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Revocation takes two administrators: revoked_by proposed it, revoke_approved_by approved it.
    revoke_approved_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    revoke_approval_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


class LedgerFigures(Base):
    """The tasks service's ledger figures for a subject and month (latest computed_at wins)."""
    __tablename__ = "scoring_ledger_figures"

    subject_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    node: Mapped[str] = mapped_column(String(12))
    overdue_open: Mapped[int] = mapped_column(Integer)
    on_time_rate: Mapped[float | None] = mapped_column(Float)
    close_rate: Mapped[float | None] = mapped_column(Float)
    opened: Mapped[int] = mapped_column(Integer)
    closed: Mapped[int] = mapped_column(Integer)
    relapses: Mapped[int] = mapped_column(Integer)
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ChildFreshness(Base):
    """When this tier last heard from each child stack (a silent district must be noticed)."""
    __tablename__ = "scoring_child_freshness"

    child_node: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    last_heard_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_event_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_event_type: Mapped[str] = mapped_column(String(64))
    events: Mapped[int] = mapped_column(Integer, default=0)
    # Whether the figures built from its reports were last published as stale
    # (child_freshness_changed), so that a change is published once.
    stale: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())


class Approval(Base):
    """A change that takes two administrators of the owning node (四眼原则): revoking a veto or
    adopting a policy version. One proposes, a different one approves or rejects; only an
    approval makes the change. Kept for the record whatever the outcome."""
    __tablename__ = "scoring_approvals"
    __table_args__ = (Index("ix_scoring_approvals_status", "status", "node"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # veto_revocation | policy_change
    node: Mapped[str] = mapped_column(String(12))  # the owning node: its administrators decide
    target: Mapped[str] = mapped_column(String(64))  # the veto id, or the node whose policy changes
    status: Mapped[str] = mapped_column(String(16))  # pending | approved | rejected
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    document: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the proposed policy
    proposed_by: Mapped[str] = mapped_column(String(100))
    proposed_by_subject: Mapped[str] = mapped_column(String(200))
    proposed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    decided_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    decided_by_subject: Mapped[str | None] = mapped_column(String(200), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    decision_note: Mapped[str | None] = mapped_column(Text, nullable=True)


class RecomputeLog(Base):
    """Every recomputation of a whole period, and every change to a closed period's figures:
    who, when, why (a closed period is never recomputed silently)."""
    __tablename__ = "scoring_recomputes"
    __table_args__ = (Index("ix_scoring_recomputes_period", "period_kind", "period"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    period_kind: Mapped[str] = mapped_column(String(16))
    period: Mapped[str] = mapped_column(String(8))
    closed: Mapped[bool] = mapped_column(Boolean)
    trigger: Mapped[str] = mapped_column(String(32))  # recompute | veto | veto_revocation | appraisal
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    requested_by: Mapped[str] = mapped_column(String(100))
    requested_by_subject: Mapped[str] = mapped_column(String(200))
    subject_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # one subject's figures, or all
    published: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ReleasedInspection(Base):
    """An unannounced inspection (暗访) its inspecting office has released to the subject
    (inspection_released, which may arrive before or after the submission). Until then
    score explanations do not show it to the subject side."""
    __tablename__ = "scoring_released_inspections"

    inspection_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    inspecting_node: Mapped[str] = mapped_column(String(12))
    subject_id: Mapped[str] = mapped_column(String(64))
    released_at: Mapped[datetime] = mapped_column(UtcDateTime())
    event_id: Mapped[str] = mapped_column(String(36))


outbox = make_outbox_table(Base.metadata, "scoring")
processed_events = make_processed_events_table(Base.metadata, "scoring")
