"""Planning notifications: route an event through the node's rules, render, store, queue."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.orm import Session

from services.plumbing.sql import insert_ignore
from services.contracts.nodes import parent_of
from services.notify import metrics
from services.notify.domain import Channel, plan_notices
from services.notify.models import Delivery, Notification
from services.notify.operations.common import NotifyContext, _now, node_chain
from services.notify.operations.contacts import contacts_of
from services.notify.operations.rules import effective_rules, template_overrides


# --- planning notifications -------------------------------------------------------------


def notify(session: Session, ctx: NotifyContext, trigger: str, event_id: str, event_type: str, facts: dict,
           template_context: dict, node: str, now: datetime | None = None) -> list[Notification]:
    """Route an event through the node's rules, render each notice once, store one
    notification per (notice, contact, channel) and a delivery row for each external one."""
    now = now or _now()
    document, _ = effective_rules(session, node)
    planned = plan_notices(document, trigger, event_id, facts, ctx.home, parent_of,
                           lambda owner: contacts_of(session, owner))
    if not planned:
        return []
    overrides = template_overrides(session, node)
    chain = node_chain(node)
    rendered: dict = {}
    created = []
    base_context = {"office": ctx.name_of(ctx.home), "sent_at": now, **template_context}
    for plan in planned:
        if plan.notice not in rendered:
            rendered[plan.notice] = ctx.templates.render_safely(plan.notice.value, base_context, chain, overrides)
            if rendered[plan.notice][1]:
                metrics.TEMPLATE_FALLBACKS.labels(plan.notice.value).inc()
        r, problem = rendered[plan.notice]
        notification_id = str(uuid.uuid4())
        inserted = insert_ignore(session, Notification.__table__, dict(
            id=notification_id, dedupe_key=plan.dedupe_key, event_id=event_id, event_type=event_type,
            notice_type=plan.notice.value, rule_id=plan.rule_id, node=node, contact_id=plan.contact.contact_id,
            role=plan.role.value, channel=plan.channel.value,
            inbox_user=plan.target if plan.channel == Channel.inbox else None,
            title=r.title[:500], body_markdown=r.markdown, body_html=r.html, created_at=now,
            render_problem=problem[:4000] if problem else None))
        if not inserted:
            continue  # this notice already went to this contact on this channel
        if plan.channel == Channel.inbox:
            metrics.SENT.labels("inbox").inc()
            metrics.LATENCY.labels("inbox").observe(0)
        else:
            session.execute(Delivery.__table__.insert().values(
                id=str(uuid.uuid4()), notification_id=notification_id, channel=plan.channel.value,
                target=plan.target, target_format=plan.contact.webhook_format if plan.channel == Channel.webhook else None,
                status="pending", attempts=0, next_attempt_at=now, created_at=now))
        created.append(session.get(Notification, notification_id))
    return created
