"""Contacts (联系人): who is reached for a subject or an office, on which channels."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.contracts.errors import RuleViolation, StateConflict, UnknownReference
from services.notify.domain import ContactInfo, Owner
from services.notify.models import Contact
from services.notify.schemas import ContactIn, ContactOut, ContactQuery
from services.notify.webhooks import WebhookPolicy
from services.contracts.identity import ADMINISTRATOR, Principal
from services.notify.operations.common import _now, visible_nodes, within_any


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


def _check_contact(session: Session, data: ContactIn, webhooks: WebhookPolicy, contact_id: str | None) -> None:
    if data.owner_kind == "node" and data.owner_id != data.node:
        raise RuleViolation("owner_id", "an office contact's owner_id must be its node code")
    if data.webhook_url is not None:
        problem = webhooks.url_problem(str(data.webhook_url))
        if problem:
            raise RuleViolation("webhook_url", f"群机器人地址不允许 (webhook not allowed): {problem}")
    clash = session.execute(select(Contact).where(
        Contact.owner_kind == data.owner_kind, Contact.owner_id == data.owner_id,
        Contact.name == data.name, Contact.id != (contact_id or ""))).scalar_one_or_none()
    if clash is not None:
        raise StateConflict("name", f"contact {data.name!r} is already registered as {clash.id}")


def register_contact(session: Session, data: ContactIn, principal: Principal,
                     webhooks: WebhookPolicy | None = None, now: datetime | None = None) -> ContactOut:
    """Contacts belong to the node they sit in: only its administrators (or above) keep them."""
    now = now or _now()
    principal.require(ADMINISTRATOR, data.node, "node")
    _check_contact(session, data, webhooks or WebhookPolicy(), None)
    contact = Contact(id=str(uuid.uuid4()), created_at=now)
    _apply_contact(contact, data, now)
    session.add(contact)
    _flush_contact(session, data)
    return contact_out(contact)


def _flush_contact(session: Session, data: ContactIn) -> None:
    try:
        session.flush()
    except IntegrityError:  # the same name stored at the same moment by someone else
        raise StateConflict("name", f"contact {data.name!r} is already registered") from None


def replace_contact(session: Session, contact_id: str, data: ContactIn, principal: Principal,
                    webhooks: WebhookPolicy | None = None, now: datetime | None = None) -> ContactOut:
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise UnknownReference("contact_id", f"unknown contact {contact_id!r}")
    # Administrators of where it is and of where it goes: nobody moves another office's contact.
    principal.require(ADMINISTRATOR, contact.node, "contact_id")
    principal.require(ADMINISTRATOR, data.node, "node")
    _check_contact(session, data, webhooks or WebhookPolicy(), contact.id)
    _apply_contact(contact, data, now or _now())
    _flush_contact(session, data)
    return contact_out(contact)


def list_contacts(session: Session, query: ContactQuery, principal: Principal) -> list[ContactOut]:
    """Contacts (addresses, bot keys) are the administrators' business: those of their subtrees."""
    nodes = visible_nodes(principal, query.node, (ADMINISTRATOR,))
    stmt = (select(Contact).where(within_any(Contact.node, nodes))
            .order_by(Contact.node, Contact.owner_id, Contact.name, Contact.id))
    if query.owner_kind:
        stmt = stmt.where(Contact.owner_kind == query.owner_kind)
    if query.owner_id:
        stmt = stmt.where(Contact.owner_id == query.owner_id)
    return [contact_out(c) for c in session.execute(stmt.limit(query.limit).offset(query.offset)).scalars()]


def contacts_of(session: Session, owner: Owner) -> list[ContactInfo]:
    rows = session.execute(select(Contact).where(Contact.owner_kind == owner.kind, Contact.owner_id == owner.id,
                                                 Contact.active.is_(True)).order_by(Contact.id)).scalars()
    return [ContactInfo(c.id, c.inbox_user, c.email, c.webhook_url, c.webhook_format) for c in rows]
