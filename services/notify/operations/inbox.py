"""Notifications as listed to offices, and the in-app inbox (站内信): read and acknowledge."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.contracts.errors import PermissionDenied, UnknownReference
from services.notify.models import Delivery, Notification
from services.notify.schemas import InboxQuery, NotificationOut, NotificationQuery
from services.contracts.identity import Principal
from services.notify.operations.common import _now, visible_nodes, within_any


# --- notifications and the inbox --------------------------------------------------------


def notification_out(n: Notification, d: Delivery | None, with_html: bool = False) -> NotificationOut:
    return NotificationOut(
        notification_id=n.id, notice_type=n.notice_type, event_type=n.event_type, event_id=n.event_id,
        rule_id=n.rule_id, node=n.node, contact_id=n.contact_id, role=n.role, channel=n.channel,
        inbox_user=n.inbox_user, title=n.title, body_markdown=n.body_markdown,
        body_html=n.body_html if with_html else None, created_at=n.created_at, read_at=n.read_at,
        acknowledged_at=n.acknowledged_at, acknowledged_by=n.acknowledged_by,
        delivery_status=d.status if d else "sent", attempts=d.attempts if d else 1,
        last_error=d.last_error if d else None, render_problem=n.render_problem)


def list_notifications(session: Session, query: NotificationQuery, principal: Principal) -> list[NotificationOut]:
    """Notifications about nodes within the caller's subtrees (or the asked-for node's)."""
    nodes = visible_nodes(principal, query.node)
    stmt = (select(Notification, Delivery).outerjoin(Delivery, Delivery.notification_id == Notification.id)
            .where(within_any(Notification.node, nodes))
            .order_by(Notification.created_at.desc(), Notification.id))
    if query.event_id:
        stmt = stmt.where(Notification.event_id == query.event_id)
    if query.channel:
        stmt = stmt.where(Notification.channel == query.channel)
    if query.notice_type:
        stmt = stmt.where(Notification.notice_type == query.notice_type)
    if query.status == "sent":
        stmt = stmt.where((Delivery.status == "sent") | (Notification.channel == "inbox"))
    elif query.status:
        stmt = stmt.where(Delivery.status == query.status)
    return [notification_out(n, d) for n, d in session.execute(stmt.limit(query.limit).offset(query.offset))]


def inbox_owner(principal: Principal) -> str:
    """Whose inbox the caller reads: a contact's `inbox_user` is a user account (the token's
    subject), so the caller reads exactly the notices addressed to its own account."""
    return principal.subject


def list_inbox(session: Session, query: InboxQuery, principal: Principal) -> list[NotificationOut]:
    user = inbox_owner(principal)
    stmt = (select(Notification).where(Notification.channel == "inbox", Notification.inbox_user == user)
            .order_by(Notification.created_at.desc(), Notification.id))
    if query.unread:
        stmt = stmt.where(Notification.read_at.is_(None))
    if query.unacknowledged:
        stmt = stmt.where(Notification.acknowledged_at.is_(None))
    if query.notice_type:
        stmt = stmt.where(Notification.notice_type == query.notice_type)
    return [notification_out(n, None) for n in session.execute(stmt.limit(query.limit).offset(query.offset)).scalars()]


def _inbox_item(session: Session, notification_id: str, principal: Principal) -> Notification:
    n = session.get(Notification, notification_id)
    if n is None or n.channel != "inbox":
        raise UnknownReference("notification_id", f"unknown inbox notice {notification_id!r}")
    if n.inbox_user != inbox_owner(principal):
        raise PermissionDenied("notification_id", "此通知不在您的站内信中; this notice is in another user's inbox")
    return n


def read_inbox_item(session: Session, notification_id: str, principal: Principal,
                    now: datetime | None = None) -> NotificationOut:
    n = _inbox_item(session, notification_id, principal)
    n.read_at = n.read_at or now or _now()
    session.flush()
    return notification_out(n, None, with_html=True)


def acknowledge_inbox_item(session: Session, notification_id: str, principal: Principal,
                           now: datetime | None = None) -> NotificationOut:
    """签收: acknowledging also marks the notice read; acknowledging twice keeps the first time."""
    now = now or _now()
    n = _inbox_item(session, notification_id, principal)
    n.read_at = n.read_at or now
    if n.acknowledged_at is None:
        n.acknowledged_at, n.acknowledged_by = now, principal.label[:128]
    session.flush()
    return notification_out(n, None, with_html=True)
