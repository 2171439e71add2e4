"""Tables owned by the notification service (prefixed: several services may share a database).

Besides contacts, rules, notifications and their deliveries, the service keeps its own
projections of the events it consumed (scores, tasks, inspections): the monthly bulletin
is assembled from them without asking any other service.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.plumbing.idempotency import make_processed_events_table
from services.plumbing.sql import UtcDateTime


class Base(DeclarativeBase):
    pass


class Contact(Base):
    """Who to reach for a subject (考评对象) or a node's office, and on which channels."""
    __tablename__ = "notify_contacts"
    __table_args__ = (UniqueConstraint("owner_kind", "owner_id", "name", name="uq_notify_contact_name"),
                      Index("ix_notify_contact_owner", "owner_kind", "owner_id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_kind: Mapped[str] = mapped_column(String(16))  # subject | node
    owner_id: Mapped[str] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(12), index=True)
    name: Mapped[str] = mapped_column(String(200))
    inbox_user: Mapped[str | None] = mapped_column(String(128))
    email: Mapped[str | None] = mapped_column(String(320))
    webhook_url: Mapped[str | None] = mapped_column(String(1024))
    webhook_format: Mapped[str] = mapped_column(String(16), default="wecom")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RuleSet(Base):
    """A node's routing rules; every replacement is a new version, the highest is in force."""
    __tablename__ = "notify_rule_sets"
    __table_args__ = (UniqueConstraint("node", "version", name="uq_notify_rule_set_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(12), index=True)
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[dict] = mapped_column(JSON)
    author: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class TemplateOverride(Base):
    """A node's own version of one template file (e.g. `urge.md`), stored in the database."""
    __tablename__ = "notify_template_overrides"
    __table_args__ = (UniqueConstraint("node", "name", name="uq_notify_template_override"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(12), index=True)
    name: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    author: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Notification(Base):
    """One notice to one contact on one channel; rendered once, sent at least once.

    `dedupe_key` is `<notice>:<event id>` (or `<notice>:<subject>:<period>` for notices that
    several revisions of an event may trigger): the unique constraint makes a notice to a
    recipient on a channel happen once, whatever the redeliveries.
    """
    __tablename__ = "notify_notifications"
    __table_args__ = (UniqueConstraint("dedupe_key", "contact_id", "channel", name="uq_notify_notification"),
                      Index("ix_notify_inbox", "inbox_user", "created_at"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(200))
    event_id: Mapped[str | None] = mapped_column(String(36), index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    notice_type: Mapped[str] = mapped_column(String(32))
    rule_id: Mapped[str | None] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(12))
    contact_id: Mapped[str] = mapped_column(ForeignKey("notify_contacts.id"))
    role: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))
    inbox_user: Mapped[str | None] = mapped_column(String(128))
    title: Mapped[str] = mapped_column(String(500))
    body_markdown: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    read_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    acknowledged_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    # Set when the node's template failed and the default (or a minimal notice) was sent.
    render_problem: Mapped[str | None] = mapped_column(Text, nullable=True)


class Delivery(Base):
    """The sending of a notification over e-mail or a webhook, retried with backoff."""
    __tablename__ = "notify_deliveries"
    __table_args__ = (Index("ix_notify_delivery_due", "channel", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    notification_id: Mapped[str] = mapped_column(ForeignKey("notify_notifications.id"), unique=True)
    channel: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(1024))
    target_format: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # pending | sent | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class DeadLetter(Base):
    """A delivery that used up its attempts; an operator lists and replays it."""
    __tablename__ = "notify_dead_letters"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("notify_deliveries.id"), index=True)
    notification_id: Mapped[str] = mapped_column(String(36))
    channel: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(1024))
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    dead_at: Mapped[datetime] = mapped_column(UtcDateTime())
    replayed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    replayed_by: Mapped[str | None] = mapped_column(String(128))


# --- projections of consumed events ---------------------------------------------------


class ScoreRow(Base):
    """The latest revision of a subject's score for a period, as published by scoring."""
    __tablename__ = "notify_scores"
    __table_args__ = (UniqueConstraint("scoring_node", "subject_id", "period_kind", "period",
                                       name="uq_notify_score"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scoring_node: Mapped[str] = mapped_column(String(12))
    subject_id: Mapped[str] = mapped_column(String(64))
    subject_node: Mapped[str] = mapped_column(String(12))
    subject_name: Mapped[str] = mapped_column(String(200))
    subject_type: Mapped[str] = mapped_column(String(32))
    period_kind: Mapped[str] = mapped_column(String(16))
    period: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    scale: Mapped[int] = mapped_column(Integer)
    grade: Mapped[str | None] = mapped_column(String(32))
    rank: Mapped[int | None] = mapped_column(Integer)
    peers: Mapped[int] = mapped_column(Integer)
    ranked: Mapped[bool] = mapped_column(Boolean)
    movement: Mapped[int | None] = mapped_column(Integer)
    vetoed: Mapped[bool] = mapped_column(Boolean, default=False)
    veto_reasons: Mapped[list] = mapped_column(JSON, default=list)
    inputs: Mapped[int] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(Integer)
    # The version of the peer group's ranking_published that last set rank, ranked, movement
    # and peers (0: none yet, or only a score_published v1 carrying them).
    ranking_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class IndicatorRow(Base):
    """The latest figure per area and period of a measured indicator, as the indicators service
    published it: an area's vector density verdict, or a survey wave's satisfaction rate."""
    __tablename__ = "notify_indicators"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # vector | satisfaction
    area: Mapped[str] = mapped_column(String(12), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)  # "" for vector, else the survey id
    name: Mapped[str] = mapped_column(String(200))
    flagged: Mapped[bool] = mapped_column(Boolean)
    figure: Mapped[dict] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(Integer)


class ChildStalenessRow(Base):
    """Whether a child stack's figures are stale (silent longer than the policy allows), as
    this tier's scoring last published it (child_freshness_changed): the bulletin marks them."""
    __tablename__ = "notify_child_staleness"

    child_node: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    stale: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    last_heard_at: Mapped[datetime] = mapped_column(UtcDateTime())
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime())


class TaskRow(Base):
    """What the notify service knows of a rectification task from the task events."""
    __tablename__ = "notify_tasks"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    inspection_id: Mapped[str] = mapped_column(String(64))
    inspecting_node: Mapped[str] = mapped_column(String(12))
    owner_node: Mapped[str] = mapped_column(String(12), index=True)
    subject_id: Mapped[str] = mapped_column(String(64), index=True)
    subject_node: Mapped[str] = mapped_column(String(12))
    subject_name: Mapped[str] = mapped_column(String(200))
    place_name: Mapped[str | None] = mapped_column(String(200))
    item_code: Mapped[str] = mapped_column(String(32))
    item_text: Mapped[str] = mapped_column(Text)
    category_code: Mapped[str] = mapped_column(String(32))
    category_name: Mapped[str] = mapped_column(String(200))
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    deadline_at: Mapped[datetime] = mapped_column(UtcDateTime())
    opened_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # When the problem was found (the inspection's time): the month a bulletin counts it in.
    found_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    overdue_since: Mapped[datetime | None] = mapped_column(UtcDateTime())
    urge_count: Mapped[int] = mapped_column(Integer, default=0)
    escalated_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    relapse_of: Mapped[str | None] = mapped_column(String(64))
    relapsed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_event_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # Photo references for the archive: before (整改前) from task_opened, after from task_closed.
    evidence: Mapped[list | None] = mapped_column(JSON, nullable=True)
    after_evidence: Mapped[list | None] = mapped_column(JSON, nullable=True)
    verified_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class InspectionRow(Base):
    __tablename__ = "notify_inspections"

    inspection_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    inspecting_node: Mapped[str] = mapped_column(String(12))
    kind: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(64), index=True)
    subject_name: Mapped[str] = mapped_column(String(200))
    score: Mapped[float] = mapped_column(Float)
    scale: Mapped[int] = mapped_column(Integer)
    findings: Mapped[int] = mapped_column(Integer)
    inspected_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    # 暗访: the submission of an unannounced inspection not yet released, kept to notify on
    # release ({"event_id", "event_type", "payload"}); None once notified or when not held.
    notice_held: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # The submission as published (checklist, inspectors, findings, photo references): the archive's record.
    payload: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class InspectionRelease(Base):
    """An unannounced inspection released to its subject (may arrive before its submission)."""
    __tablename__ = "notify_inspection_releases"

    inspection_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    inspecting_node: Mapped[str] = mapped_column(String(12))
    released_at: Mapped[datetime] = mapped_column(UtcDateTime())


class MissedCheckRow(Base):
    """A scheduled check that did not happen (漏检), as told by the inspection service."""
    __tablename__ = "notify_missed_checks"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)  # schedule:target:period
    office_node: Mapped[str] = mapped_column(String(12))
    subject_id: Mapped[str] = mapped_column(String(64))
    subject_name: Mapped[str] = mapped_column(String(200))
    target_name: Mapped[str] = mapped_column(String(200))
    frequency: Mapped[str] = mapped_column(String(16))
    period: Mapped[str] = mapped_column(String(16))
    period_start: Mapped[datetime] = mapped_column(UtcDateTime())
    period_end: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    counts: Mapped[bool] = mapped_column(Boolean)


class Bulletin(Base):
    """A generated monthly bulletin (月度通报), kept with its data and both renderings."""
    __tablename__ = "notify_bulletins"
    __table_args__ = (UniqueConstraint("node", "period", "revision", name="uq_notify_bulletin"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node: Mapped[str] = mapped_column(String(12), index=True)
    period: Mapped[str] = mapped_column(String(16))
    revision: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(16))  # api | schedule
    title: Mapped[str] = mapped_column(String(500))
    data: Mapped[dict] = mapped_column(JSON)
    markdown: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)
    generated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    requested_by: Mapped[str | None] = mapped_column(String(128))


processed_events = make_processed_events_table(Base.metadata, "notify")
