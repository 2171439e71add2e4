"""Use cases of the notification service.

Each function takes a SQLAlchemy session (the caller owns the transaction) and a
`NotifyContext`; no nameko imports, so these run the same from an event handler, an HTTP
entrypoint, the delivery worker, a timer or a test.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.plumbing.sql import advisory_xact_lock, insert_ignore
from services.contracts.errors import RuleViolation, StateConflict, UnknownReference
from services.contracts.events import EventEnvelope
from services.contracts.events.inspection import InspectionSubmitted
from services.contracts.events.scoring import ScorePublished
from services.contracts.events.tasks import (CoordinationRequested, TaskClosed, TaskEscalated, TaskOpened,
                                             TaskOverdue, TaskRef, TaskRelapsed, TaskStatusChanged)
from services.contracts.nodes import parent_of
from services.contracts.periods import CST, InvalidPeriod, Period, PeriodKind
from services.notify import metrics
from services.notify.bulletin import ScoreFact, TaskFact, assemble_bulletin, period_window
from services.notify.domain import (Channel, ContactInfo, NotifyRuleViolation, Owner, RetryPolicy,
                                    RuleSetDocument, load_default_rules, parse_rule_set, plan_notices)
from services.notify.models import (Bulletin, Contact, DeadLetter, Delivery, InspectionRow, Notification,
                                    RuleSet, ScoreRow, TaskRow, TemplateOverride)
from services.notify.schemas import (BulletinOut, ContactIn, ContactOut, ContactQuery, DeadLetterOut,
                                     DeadLetterQuery, InboxQuery, NewsletterIn, NotificationOut,
                                     NotificationQuery, RuleSetOut, TemplateOut)
from services.notify.templates import TEMPLATE_NAMES, Templates, check_template

_DEFAULT_RULES: RuleSetDocument | None = None


def default_rules() -> RuleSetDocument:
    global _DEFAULT_RULES
    if _DEFAULT_RULES is None:
        _DEFAULT_RULES = load_default_rules()
    return _DEFAULT_RULES


def _now() -> datetime:
    return datetime.now(timezone.utc)




@dataclass
class NotifyContext:
    """What the use cases need to know about the stack: its home node, names, templates."""
    home: str
    templates: Templates = field(default_factory=Templates)
    names: Callable[[str], str | None] = lambda code: None

    def name_of(self, code: str) -> str:
        return self.names(code) or code


def node_chain(node: str) -> list[str]:
    """The node itself, then its ancestors up to the province: where per-node data is looked up."""
    chain = [node]
    while (up := parent_of(chain[-1])) is not None:
        chain.append(up)
    return chain


# --- contacts -------------------------------------------------------------------------


def contact_out(c: Contact) -> ContactOut:
    return ContactOut(contact_id=c.id, owner_kind=c.owner_kind, owner_id=c.owner_id, node=c.node, name=c.name,
                      inbox_user=c.inbox_user, email=c.email, webhook_url=c.webhook_url,
                      webhook_format=c.webhook_format, active=c.active, created_at=c.created_at,
                      updated_at=c.updated_at)


def _apply_contact(c: Contact, data: ContactIn, now: datetime) -> None:
    c.owner_kind, c.owner_id, c.node, c.name = data.owner_kind, data.owner_id, data.node, data.name
    c.inbox_user, c.email = data.inbox_user, data.email
    c.webhook_url = str(data.webhook_url) if data.webhook_url else None
    c.webhook_format, c.active, c.updated_at = data.webhook_format, data.active, now


def register_contact(session: Session, data: ContactIn, now: datetime | None = None) -> ContactOut:
    now = now or _now()
    if data.owner_kind == "node" and data.owner_id != data.node:
        raise RuleViolation("owner_id", "an office contact's owner_id must be its node code")
    existing = session.execute(select(Contact).where(
        Contact.owner_kind == data.owner_kind, Contact.owner_id == data.owner_id,
        Contact.name == data.name)).scalar_one_or_none()
    if existing is not None:
        raise StateConflict("name", f"contact {data.name!r} is already registered as {existing.id}")
    contact = Contact(id=str(uuid.uuid4()), created_at=now)
    _apply_contact(contact, data, now)
    session.add(contact)
    session.flush()
    return contact_out(contact)


def replace_contact(session: Session, contact_id: str, data: ContactIn, now: datetime | None = None) -> ContactOut:
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise UnknownReference("contact_id", f"unknown contact {contact_id!r}")
    _apply_contact(contact, data, now or _now())
    session.flush()
    return contact_out(contact)


def list_contacts(session: Session, query: ContactQuery) -> list[ContactOut]:
    stmt = select(Contact).order_by(Contact.node, Contact.owner_id, Contact.name)
    if query.owner_kind:
        stmt = stmt.where(Contact.owner_kind == query.owner_kind)
    if query.owner_id:
        stmt = stmt.where(Contact.owner_id == query.owner_id)
    if query.node:
        stmt = stmt.where(Contact.node == query.node)
    return [contact_out(c) for c in session.execute(stmt.limit(query.limit).offset(query.offset)).scalars()]


def contacts_of(session: Session, owner: Owner) -> list[ContactInfo]:
    rows = session.execute(select(Contact).where(Contact.owner_kind == owner.kind, Contact.owner_id == owner.id,
                                                 Contact.active.is_(True)).order_by(Contact.id)).scalars()
    return [ContactInfo(c.id, c.inbox_user, c.email, c.webhook_url, c.webhook_format) for c in rows]


# --- rules ----------------------------------------------------------------------------


def _latest_rule_set(session: Session, node: str) -> RuleSet | None:
    return session.execute(select(RuleSet).where(RuleSet.node == node).order_by(RuleSet.version.desc())
                           .limit(1)).scalar_one_or_none()


def effective_rules(session: Session, node: str) -> tuple[RuleSetDocument, RuleSetOut]:
    for candidate in node_chain(node):
        row = _latest_rule_set(session, candidate)
        if row is not None:
            doc = parse_rule_set(row.document)
            return doc, RuleSetOut(node=node, version=row.version,
                                   source="node" if candidate == node else "inherited", from_node=candidate,
                                   author=row.author, created_at=row.created_at,
                                   document=doc.model_dump(mode="json"))
    doc = default_rules()
    return doc, RuleSetOut(node=node, version=0, source="default", from_node=None,
                           document=doc.model_dump(mode="json"))


def replace_rules(session: Session, node: str, document: dict, author: str | None,
                  now: datetime | None = None) -> RuleSetOut:
    doc = parse_rule_set(document)
    advisory_xact_lock(session, f"notify-rules:{node}")
    latest = _latest_rule_set(session, node)
    row = RuleSet(node=node, version=(latest.version + 1) if latest else 1, document=doc.model_dump(mode="json"),
                  author=author, created_at=now or _now())
    session.add(row)
    session.flush()
    return effective_rules(session, node)[1]


def rule_versions(session: Session, node: str) -> list[RuleSetOut]:
    rows = session.execute(select(RuleSet).where(RuleSet.node == node).order_by(RuleSet.version)).scalars()
    return [RuleSetOut(node=node, version=r.version, source="node", from_node=node, author=r.author,
                       created_at=r.created_at, document=r.document) for r in rows]


# --- templates ------------------------------------------------------------------------


def template_overrides(session: Session, node: str) -> dict[str, str]:
    """Database overrides that apply to a node: its own win over its ancestors'."""
    chain = node_chain(node)
    rows = session.execute(select(TemplateOverride).where(TemplateOverride.node.in_(chain))).scalars()
    ranked = sorted(rows, key=lambda r: chain.index(r.node), reverse=True)
    return {r.name: r.source for r in ranked}


def put_template(session: Session, node: str, name: str, source: str, author: str | None,
                 now: datetime | None = None) -> TemplateOut:
    check_template(name, source)
    row = session.execute(select(TemplateOverride).where(TemplateOverride.node == node,
                                                         TemplateOverride.name == name)).scalar_one_or_none()
    if row is None:
        row = TemplateOverride(node=node, name=name)
        session.add(row)
    row.source, row.author, row.updated_at = source, author, now or _now()
    session.flush()
    return TemplateOut(node=node, name=name, source=source, origin="database", from_node=node)


def get_template(session: Session, ctx: NotifyContext, node: str, name: str) -> TemplateOut:
    if name not in TEMPLATE_NAMES:
        raise UnknownReference("name", f"unknown template {name!r}")
    chain = node_chain(node)
    for candidate in chain:
        row = session.execute(select(TemplateOverride).where(TemplateOverride.node == candidate,
                                                             TemplateOverride.name == name)).scalar_one_or_none()
        if row is not None:
            return TemplateOut(node=node, name=name, source=row.source, origin="database", from_node=candidate)
    if ctx.templates.template_dir is not None:
        for candidate in chain:
            path = ctx.templates.template_dir / candidate / name
            if path.is_file():
                return TemplateOut(node=node, name=name, source=path.read_text(encoding="utf-8"),
                                   origin="directory", from_node=candidate)
    return TemplateOut(node=node, name=name, source=ctx.templates.default_source(name), origin="default")


def delete_template(session: Session, node: str, name: str) -> None:
    row = session.execute(select(TemplateOverride).where(TemplateOverride.node == node,
                                                         TemplateOverride.name == name)).scalar_one_or_none()
    if row is None:
        raise UnknownReference("name", f"node {node} has no stored template {name!r}")
    session.delete(row)


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
    rendered = {}
    created = []
    base_context = {"office": ctx.name_of(ctx.home), "sent_at": now, **template_context}
    for plan in planned:
        if plan.notice not in rendered:
            rendered[plan.notice] = ctx.templates.render(plan.notice.value, base_context, chain, overrides)
        r = rendered[plan.notice]
        notification_id = str(uuid.uuid4())
        inserted = insert_ignore(session, Notification.__table__, dict(
            id=notification_id, dedupe_key=plan.dedupe_key, event_id=event_id, event_type=event_type,
            notice_type=plan.notice.value, rule_id=plan.rule_id, node=node, contact_id=plan.contact.contact_id,
            role=plan.role.value, channel=plan.channel.value,
            inbox_user=plan.target if plan.channel == Channel.inbox else None,
            title=r.title[:500], body_markdown=r.markdown, body_html=r.html, created_at=now))
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


# --- consuming events -----------------------------------------------------------------


def _task_facts(task: TaskRef) -> dict:
    return {"subject_id": task.responsible.subject_id, "subject_node": task.responsible.node,
            "inspecting_node": task.inspecting_node, "owner_node": task.owner_node,
            "severity": task.severity.value, "place_type": task.place.place_type.value if task.place else None,
            "status": task.status.value}


def _project_task(session: Session, task: TaskRef, at: datetime) -> TaskRow:
    # Events of one task arrive on several queues and may be handled at once.
    advisory_xact_lock(session, f"notify-task:{task.task_id}")
    row = session.get(TaskRow, task.task_id)
    if row is None:
        row = TaskRow(task_id=task.task_id, urge_count=0, last_event_at=at)
        session.add(row)
        newer = True
    else:
        newer = at >= row.last_event_at
    if newer:
        row.inspection_id, row.inspecting_node, row.owner_node = task.inspection_id, task.inspecting_node, task.owner_node
        row.subject_id, row.subject_node, row.subject_name = (task.responsible.subject_id, task.responsible.node,
                                                              task.responsible.name)
        row.place_name = task.place.name if task.place else None
        row.item_code, row.item_text = task.item_code, task.item_text
        row.category_code, row.category_name = task.category_code, task.category_name
        row.severity, row.status, row.deadline_at = task.severity.value, task.status.value, task.deadline_at
        row.last_event_at = at
    return row


def apply_task_event(session: Session, ctx: NotifyContext, envelope: EventEnvelope, payload,
                     now: datetime | None = None) -> list[Notification]:
    task: TaskRef = payload.task
    row = _project_task(session, task, envelope.occurred_at)
    facts = _task_facts(task)
    extra: dict = {}
    if isinstance(payload, TaskOpened):
        row.opened_at = payload.opened_at
        if payload.relapse_of:
            row.relapse_of, row.relapsed_at = payload.relapse_of, payload.opened_at
    elif isinstance(payload, TaskOverdue):
        row.overdue_since = min(filter(None, [row.overdue_since, payload.overdue_since]))
        row.urge_count = max(row.urge_count or 0, payload.urge_count)
        facts["urge_count"] = payload.urge_count
    elif isinstance(payload, TaskEscalated):
        row.escalated_at = payload.at
        facts["to_node"] = payload.to_node
    elif isinstance(payload, TaskClosed):
        row.closed_at = payload.closed_at
        facts["on_time"] = payload.on_time
        extra["passed"] = True
    elif isinstance(payload, TaskRelapsed):
        row.relapse_of = payload.relapse_of
        row.relapsed_at = row.relapsed_at or envelope.occurred_at
    elif isinstance(payload, TaskStatusChanged):
        facts["from_status"], facts["to_status"] = payload.from_status.value, payload.to_status.value
        if payload.to_status.value == "closed":
            row.closed_at = row.closed_at or payload.at
        extra["passed"] = payload.to_status.value == "closed"
    session.flush()
    event = payload.model_dump(mode="json")
    return notify(session, ctx, envelope.event_type, str(envelope.event_id), envelope.event_type, facts,
                  {"event": event, "task": event["task"], **extra}, task.responsible.node, now)


def apply_coordination_requested(session: Session, ctx: NotifyContext, envelope: EventEnvelope,
                                 payload: CoordinationRequested, now: datetime | None = None) -> list[Notification]:
    """A child stack escalated a task to this tier: tell this tier's office it owes an answer.

    The task stays out of this tier's task projection (it is the child's ledger's task, and
    the bulletin counts only this ledger's tasks); the rules are this stack's own.
    """
    facts = {**_task_facts(payload.task), "owner_node": payload.from_node, "from_node": payload.from_node}
    event = payload.model_dump(mode="json")
    context = {"event": event, "task": event["task"], "child": ctx.name_of(payload.from_node)}
    return notify(session, ctx, "coordination_requested", str(envelope.event_id), envelope.event_type, facts,
                  context, ctx.home, now)


def apply_score_published(session: Session, ctx: NotifyContext, envelope: EventEnvelope, payload: ScorePublished,
                          now: datetime | None = None) -> list[Notification]:
    """Keep the highest revision of each (subject, period); only a current revision notifies."""
    advisory_xact_lock(session, f"notify-score:{payload.scoring_node}:{payload.subject.subject_id}:{payload.period}")
    row = session.execute(select(ScoreRow).where(
        ScoreRow.scoring_node == payload.scoring_node, ScoreRow.subject_id == payload.subject.subject_id,
        ScoreRow.period_kind == payload.period_kind.value, ScoreRow.period == payload.period)
        .with_for_update()).scalar_one_or_none()
    if row is not None and row.revision >= payload.revision:
        return []  # a late, older revision
    if row is None:
        row = ScoreRow(scoring_node=payload.scoring_node, subject_id=payload.subject.subject_id,
                       period_kind=payload.period_kind.value, period=payload.period)
        session.add(row)
    row.subject_node, row.subject_name = payload.subject.node, payload.subject.name
    row.subject_type = payload.subject.subject_type.value
    row.score, row.scale, row.grade, row.rank, row.peers = (payload.score, payload.scale, payload.grade,
                                                            payload.rank, payload.peers)
    row.ranked, row.movement, row.vetoed = payload.ranked, payload.movement, payload.vetoed
    row.veto_reasons, row.inputs = list(payload.veto_reasons), payload.inputs
    row.revision, row.computed_at = payload.revision, payload.computed_at
    session.flush()
    facts = {"subject_id": payload.subject.subject_id, "subject_node": payload.subject.node,
             "period_kind": payload.period_kind.value, "period": payload.period, "ranked": payload.ranked,
             "rank": payload.rank, "vetoed": payload.vetoed, "score": payload.score,
             "rank_from_bottom": (payload.peers - payload.rank + 1) if payload.ranked and payload.rank else None}
    return notify(session, ctx, "score_published", str(envelope.event_id), envelope.event_type, facts,
                  {"event": payload.model_dump(mode="json")}, payload.subject.node, now)


def apply_inspection_submitted(session: Session, ctx: NotifyContext, envelope: EventEnvelope,
                               payload: InspectionSubmitted, now: datetime | None = None) -> list[Notification]:
    key = str(payload.inspection_id)
    advisory_xact_lock(session, f"notify-inspection:{key}")
    if session.get(InspectionRow, key) is None:
        session.add(InspectionRow(inspection_id=key, inspecting_node=payload.inspecting_node, kind=payload.kind.value,
                                  subject_id=payload.subject.subject_id, subject_name=payload.subject.name,
                                  score=payload.score, scale=payload.scale, findings=len(payload.findings),
                                  inspected_at=payload.inspected_at))
        session.flush()
    facts = {"subject_id": payload.subject.subject_id, "subject_node": payload.subject.node,
             "inspecting_node": payload.inspecting_node, "kind": payload.kind.value, "score": payload.score,
             "findings": len(payload.findings),
             "place_type": payload.place.place_type.value if payload.place else None}
    return notify(session, ctx, "inspection_submitted", str(envelope.event_id), envelope.event_type, facts,
                  {"event": payload.model_dump(mode="json")}, payload.subject.node, now)


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
                                n.body_html, d.created_at, d.attempts))
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


def list_dead_letters(session: Session, query: DeadLetterQuery) -> list[DeadLetterOut]:
    stmt = (select(DeadLetter, Notification.title).join(Notification, Notification.id == DeadLetter.notification_id)
            .order_by(DeadLetter.dead_at.desc(), DeadLetter.id))
    if query.state == "open":
        stmt = stmt.where(DeadLetter.replayed_at.is_(None))
    elif query.state == "replayed":
        stmt = stmt.where(DeadLetter.replayed_at.is_not(None))
    if query.channel:
        stmt = stmt.where(DeadLetter.channel == query.channel)
    return [_dead_letter_out(dl, title) for dl, title in session.execute(stmt.limit(query.limit).offset(query.offset))]


def replay_dead_letter(session: Session, dead_letter_id: str, operator: str | None,
                       now: datetime | None = None) -> DeadLetterOut:
    """Give a dead delivery a fresh set of attempts, due now."""
    now = now or _now()
    stmt = select(DeadLetter).where(DeadLetter.id == dead_letter_id)
    stmt = stmt.with_for_update()
    dl = session.execute(stmt).scalar_one_or_none()
    if dl is None:
        raise UnknownReference("dead_letter_id", f"unknown dead letter {dead_letter_id!r}")
    if dl.replayed_at is not None:
        raise StateConflict("dead_letter_id", f"already replayed at {dl.replayed_at.isoformat()}")
    delivery = session.get(Delivery, dl.delivery_id)
    delivery.status, delivery.attempts, delivery.next_attempt_at = "pending", 0, now
    dl.replayed_at, dl.replayed_by = now, operator
    session.flush()
    return _dead_letter_out(dl, session.get(Notification, dl.notification_id).title)


# --- notifications and the inbox --------------------------------------------------------


def notification_out(n: Notification, d: Delivery | None, with_html: bool = False) -> NotificationOut:
    return NotificationOut(
        notification_id=n.id, notice_type=n.notice_type, event_type=n.event_type, event_id=n.event_id,
        rule_id=n.rule_id, node=n.node, contact_id=n.contact_id, role=n.role, channel=n.channel,
        inbox_user=n.inbox_user, title=n.title, body_markdown=n.body_markdown,
        body_html=n.body_html if with_html else None, created_at=n.created_at, read_at=n.read_at,
        acknowledged_at=n.acknowledged_at, acknowledged_by=n.acknowledged_by,
        delivery_status=d.status if d else "sent", attempts=d.attempts if d else 1,
        last_error=d.last_error if d else None)


def list_notifications(session: Session, query: NotificationQuery) -> list[NotificationOut]:
    stmt = (select(Notification, Delivery).outerjoin(Delivery, Delivery.notification_id == Notification.id)
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


def list_inbox(session: Session, query: InboxQuery) -> list[NotificationOut]:
    stmt = (select(Notification).where(Notification.channel == "inbox", Notification.inbox_user == query.user)
            .order_by(Notification.created_at.desc(), Notification.id))
    if query.unread:
        stmt = stmt.where(Notification.read_at.is_(None))
    if query.unacknowledged:
        stmt = stmt.where(Notification.acknowledged_at.is_(None))
    if query.notice_type:
        stmt = stmt.where(Notification.notice_type == query.notice_type)
    return [notification_out(n, None) for n in session.execute(stmt.limit(query.limit).offset(query.offset)).scalars()]


def _inbox_item(session: Session, notification_id: str, user: str) -> Notification:
    n = session.get(Notification, notification_id)
    if n is None or n.channel != "inbox":
        raise UnknownReference("notification_id", f"unknown inbox notice {notification_id!r}")
    if n.inbox_user != user:
        from services.contracts.errors import PermissionDenied
        raise PermissionDenied("user", "this notice is in another user's inbox")
    return n


def read_inbox_item(session: Session, notification_id: str, user: str, now: datetime | None = None) -> NotificationOut:
    n = _inbox_item(session, notification_id, user)
    n.read_at = n.read_at or now or _now()
    session.flush()
    return notification_out(n, None, with_html=True)


def acknowledge_inbox_item(session: Session, notification_id: str, user: str,
                           now: datetime | None = None) -> NotificationOut:
    """签收: acknowledging also marks the notice read; acknowledging twice keeps the first time."""
    now = now or _now()
    n = _inbox_item(session, notification_id, user)
    n.read_at = n.read_at or now
    if n.acknowledged_at is None:
        n.acknowledged_at, n.acknowledged_by = now, user
    session.flush()
    return notification_out(n, None, with_html=True)


# --- bulletins ------------------------------------------------------------------------


def bulletin_out(b: Bulletin, with_data: bool = False) -> BulletinOut:
    return BulletinOut(bulletin_id=b.id, node=b.node, period=b.period, revision=b.revision, trigger=b.trigger,
                       title=b.title, generated_at=b.generated_at, requested_by=b.requested_by,
                       data=b.data if with_data else None)


def _score_facts(session: Session, node: str, period: str) -> list[ScoreFact]:
    rows = session.execute(select(ScoreRow).where(ScoreRow.scoring_node == node, ScoreRow.period_kind == "month",
                                                  ScoreRow.period == period)).scalars()
    return [ScoreFact(r.subject_id, r.subject_name, r.subject_node, r.score, r.scale, r.rank, r.ranked, r.movement,
                      r.grade, r.vetoed, tuple(r.veto_reasons or ()), r.inputs) for r in rows]


def _task_facts_for(session: Session, start: datetime, end: datetime) -> list[TaskFact]:
    rows = session.execute(select(TaskRow).where(
        (TaskRow.opened_at.is_(None)) | (TaskRow.opened_at < end),
        (TaskRow.closed_at.is_(None)) | (TaskRow.closed_at >= start))).scalars()
    return [TaskFact(r.task_id, r.subject_id, r.subject_name, r.place_name, r.item_text, r.category_code,
                     r.category_name, r.severity, r.status, r.deadline_at, r.opened_at,
                     r.overdue_since, r.urge_count or 0, r.closed_at, r.relapse_of,
                     r.relapsed_at) for r in rows]


def generate_bulletin(session: Session, ctx: NotifyContext, period_key: str, trigger: str = "api",
                      requested_by: str | None = None, send: bool = True, now: datetime | None = None) -> Bulletin:
    now = now or _now()
    try:
        period = Period.parse(period_key)
    except InvalidPeriod as exc:
        raise NotifyRuleViolation("period", str(exc)) from None
    if period.kind != PeriodKind.month:
        raise NotifyRuleViolation("period", "a monthly bulletin needs a month (YYYY-MM)")
    start, end = period_window(period)
    if start > now:
        raise NotifyRuleViolation("period", f"{period.key} has not begun")
    node = ctx.home
    document, _ = effective_rules(session, node)
    data = assemble_bulletin(period.key, node, ctx.name_of(node), _score_facts(session, node, period.key),
                             _score_facts(session, node, period.previous().key), _task_facts_for(session, start, end),
                             document.bulletin, now)
    b = data.to_dict()
    rendered = ctx.templates.render("bulletin", {"b": b, "office": ctx.name_of(node), "sent_at": now},
                                    node_chain(node), template_overrides(session, node))
    advisory_xact_lock(session, f"notify-bulletin:{node}:{period.key}")
    latest = session.execute(select(func.max(Bulletin.revision)).where(
        Bulletin.node == node, Bulletin.period == period.key)).scalar_one()
    bulletin = Bulletin(id=str(uuid.uuid4()), node=node, period=period.key, revision=(latest or 0) + 1,
                        trigger=trigger, title=rendered.title, data=b, markdown=rendered.markdown,
                        html=rendered.html, generated_at=now, requested_by=requested_by)
    session.add(bulletin)
    session.flush()
    metrics.BULLETINS.labels(trigger).inc()
    if send:
        facts = {"period": period.key, "ranked_subject_ids": [r["subject_id"] for r in b["ranking"]]}
        notify(session, ctx, "bulletin_generated", bulletin.id, "bulletin_generated", facts, {"b": b}, node, now)
    return bulletin


def generate_due_bulletin(session: Session, ctx: NotifyContext, day_of_month: int = 1,
                          now: datetime | None = None) -> Bulletin | None:
    """The scheduled run: last month's bulletin once the configured day has come, once.

    Every instance's timer calls this; the advisory lock and the existence check make one
    of them generate it and the others find it done.
    """
    now = now or _now()
    local = now.astimezone(CST)
    if local.day < day_of_month:
        return None
    period = Period.containing(PeriodKind.month, local).previous()
    advisory_xact_lock(session, f"notify-bulletin:{ctx.home}:{period.key}")
    # One made on demand while the month was still running does not count: it missed the end.
    _, end = period_window(period)
    exists = session.execute(select(Bulletin.id).where(Bulletin.node == ctx.home, Bulletin.period == period.key,
                                                       Bulletin.generated_at >= end).limit(1)).first()
    if exists:
        return None
    return generate_bulletin(session, ctx, period.key, trigger="schedule", requested_by="schedule", now=now)


def get_bulletin(session: Session, bulletin_id: str) -> Bulletin:
    b = session.get(Bulletin, bulletin_id)
    if b is None:
        raise UnknownReference("bulletin_id", f"unknown bulletin {bulletin_id!r}")
    return b


def list_bulletins(session: Session, node: str, period: str | None, limit: int, offset: int) -> list[BulletinOut]:
    stmt = select(Bulletin).where(Bulletin.node == node).order_by(Bulletin.period.desc(), Bulletin.revision.desc())
    if period:
        stmt = stmt.where(Bulletin.period == period)
    return [bulletin_out(b) for b in session.execute(stmt.limit(limit).offset(offset)).scalars()]


# --- newsletters ----------------------------------------------------------------------


def send_newsletter(session: Session, ctx: NotifyContext, data: NewsletterIn,
                    now: datetime | None = None) -> tuple[str, int]:
    now = now or _now()
    newsletter_id = str(uuid.uuid4())
    ranked: list[str] = []
    if data.period:
        ranked = [s.subject_id for s in _score_facts(session, ctx.home, data.period)]
    facts = {"ranked_subject_ids": ranked, "period": data.period}
    sent = notify(session, ctx, "newsletter", newsletter_id, "newsletter", facts,
                  {"event": data.model_dump(mode="json")}, ctx.home, now)
    return newsletter_id, len(sent)
