"""Deliveries over e-mail and webhooks: leases, attempts, dead letters and their replay."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.contracts.errors import StateConflict, UnknownReference
from services.notify.domain import RetryPolicy
from services.notify.models import DeadLetter, Delivery, Notification
from services.notify.schemas import DeadLetterOut, DeadLetterQuery
from services.contracts.identity import ADMINISTRATOR, Principal
from services.notify.operations.common import _now, within_any


# --- deliveries -----------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryJob:
    delivery_id: str
    notification_id: str
    channel: str
    target: str
    target_format: str | None
    title: str
    markdown: str
    html: str
    created_at: datetime
    attempts: int
    notice_type: str = "unknown"


def claim_due(session: Session, channel: str, limit: int, lease: timedelta,
              now: datetime | None = None) -> list[DeliveryJob]:
    """Take up to `limit` due deliveries of a channel and lease them (several instances may run:
    rows another instance holds are skipped; a lease that expires, e.g. after a crash, makes
    the delivery due again, hence at least once)."""
    now = now or _now()
    stmt = (select(Delivery, Notification).join(Notification, Notification.id == Delivery.notification_id)
            .where(Delivery.channel == channel, Delivery.status == "pending", Delivery.next_attempt_at <= now)
            .order_by(Delivery.next_attempt_at).limit(limit))
    stmt = stmt.with_for_update(skip_locked=True, of=Delivery)
    jobs = []
    for d, n in session.execute(stmt).all():
        d.next_attempt_at = now + lease
        jobs.append(DeliveryJob(d.id, n.id, d.channel, d.target, d.target_format, n.title, n.body_markdown,
                                n.body_html, d.created_at, d.attempts, n.notice_type))
    session.flush()
    return jobs


def record_attempt(session: Session, delivery_id: str, error: str | None, policy: RetryPolicy,
                   now: datetime | None = None) -> str:
    """Record one try: 'sent', 'retried' (next try after the backoff) or 'dead_lettered'."""
    now = now or _now()
    stmt = select(Delivery).where(Delivery.id == delivery_id)
    stmt = stmt.with_for_update()
    d = session.execute(stmt).scalar_one()
    if d.status != "pending":
        return d.status  # someone else finished it meanwhile
    d.attempts += 1
    if error is None:
        d.status, d.sent_at, d.last_error = "sent", now, None
        return "sent"
    d.last_error = error[:4000]
    if policy.exhausted(d.attempts):
        d.status = "dead"
        session.add(DeadLetter(id=str(uuid.uuid4()), delivery_id=d.id, notification_id=d.notification_id,
                               channel=d.channel, target=d.target, attempts=d.attempts, last_error=d.last_error,
                               dead_at=now))
        return "dead_lettered"
    d.next_attempt_at = now + policy.delay_after(d.attempts)
    return "retried"


def _dead_letter_out(dl: DeadLetter, title: str) -> DeadLetterOut:
    return DeadLetterOut(dead_letter_id=dl.id, delivery_id=dl.delivery_id, notification_id=dl.notification_id,
                         channel=dl.channel, target=dl.target, title=title, attempts=dl.attempts,
                         last_error=dl.last_error, dead_at=dl.dead_at, replayed_at=dl.replayed_at,
                         replayed_by=dl.replayed_by)


def list_dead_letters(session: Session, query: DeadLetterQuery, principal: Principal) -> list[DeadLetterOut]:
    """Dead letters of notices in the caller's administered subtrees (targets are addresses and bot keys)."""
    nodes = principal.nodes_with((ADMINISTRATOR,))
    stmt = (select(DeadLetter, Notification.title).join(Notification, Notification.id == DeadLetter.notification_id)
            .where(within_any(Notification.node, nodes))
            .order_by(DeadLetter.dead_at.desc(), DeadLetter.id))
    if query.state == "open":
        stmt = stmt.where(DeadLetter.replayed_at.is_(None))
    elif query.state == "replayed":
        stmt = stmt.where(DeadLetter.replayed_at.is_not(None))
    if query.channel:
        stmt = stmt.where(DeadLetter.channel == query.channel)
    return [_dead_letter_out(dl, title) for dl, title in session.execute(stmt.limit(query.limit).offset(query.offset))]


def replay_dead_letter(session: Session, dead_letter_id: str, principal: Principal,
                       now: datetime | None = None) -> DeadLetterOut:
    """Give a dead delivery a fresh set of attempts, due now (administrators of the notice's node)."""
    now = now or _now()
    stmt = select(DeadLetter).where(DeadLetter.id == dead_letter_id)
    stmt = stmt.with_for_update()
    dl = session.execute(stmt).scalar_one_or_none()
    if dl is None:
        raise UnknownReference("dead_letter_id", f"unknown dead letter {dead_letter_id!r}")
    notice = session.get(Notification, dl.notification_id)
    principal.require(ADMINISTRATOR, notice.node, "dead_letter_id")
    if dl.replayed_at is not None:
        raise StateConflict("dead_letter_id", f"already replayed at {dl.replayed_at.isoformat()}")
    delivery = session.get(Delivery, dl.delivery_id)
    delivery.status, delivery.attempts, delivery.next_attempt_at = "pending", 0, now
    dl.replayed_at, dl.replayed_by = now, principal.label[:128]
    session.flush()
    return _dead_letter_out(dl, notice.title)
