"""Routing rules (per node, versioned) and template overrides (per node)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.plumbing.sql import advisory_xact_lock
from services.contracts.errors import UnknownReference
from services.notify.domain import NotifyRuleViolation, RuleSetDocument, parse_rule_set
from services.notify.models import RuleSet, TemplateOverride
from services.notify.schemas import RuleSetOut, TemplateOut
from services.notify.templates import TEMPLATE_NAMES, check_template
from services.contracts.identity import ADMINISTRATOR, Principal
from services.notify.operations.common import NotifyContext, _now, default_rules, log, node_chain


# --- rules ----------------------------------------------------------------------------


def _latest_rule_set(session: Session, node: str) -> RuleSet | None:
    return session.execute(select(RuleSet).where(RuleSet.node == node).order_by(RuleSet.version.desc())
                           .limit(1)).scalar_one_or_none()


def _usable_rule_set(session: Session, node: str) -> tuple[RuleSet, RuleSetDocument] | None:
    """A node's newest rule set that still parses. One stored before today's checks (e.g. a
    condition of the wrong type) must not stop every notice: the version before it applies."""
    rows = session.execute(select(RuleSet).where(RuleSet.node == node).order_by(RuleSet.version.desc())).scalars()
    for row in rows:
        try:
            return row, parse_rule_set(row.document)
        except NotifyRuleViolation as exc:
            log.warning("notify: rule set %s v%s no longer parses (%s: %s); using the one before", node,
                        row.version, exc.field, exc.reason)
    return None


def effective_rules(session: Session, node: str) -> tuple[RuleSetDocument, RuleSetOut]:
    for candidate in node_chain(node):
        found = _usable_rule_set(session, candidate)
        if found is not None:
            row, doc = found
            return doc, RuleSetOut(node=node, version=row.version,
                                   source="node" if candidate == node else "inherited", from_node=candidate,
                                   author=row.author, created_at=row.created_at,
                                   document=doc.model_dump(mode="json"))
    doc = default_rules()
    return doc, RuleSetOut(node=node, version=0, source="default", from_node=None,
                           document=doc.model_dump(mode="json"))


def get_rules(session: Session, node: str, principal: Principal) -> RuleSetOut:
    principal.require_sees(node)
    return effective_rules(session, node)[1]


def replace_rules(session: Session, node: str, document: dict, principal: Principal,
                  now: datetime | None = None) -> RuleSetOut:
    principal.require(ADMINISTRATOR, node, "node")
    author = principal.label
    doc = parse_rule_set(document)
    advisory_xact_lock(session, f"notify-rules:{node}")
    latest = _latest_rule_set(session, node)
    row = RuleSet(node=node, version=(latest.version + 1) if latest else 1, document=doc.model_dump(mode="json"),
                  author=author, created_at=now or _now())
    session.add(row)
    session.flush()
    return effective_rules(session, node)[1]


def rule_versions(session: Session, node: str, principal: Principal) -> list[RuleSetOut]:
    principal.require_sees(node)
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


def put_template(session: Session, ctx: NotifyContext, node: str, name: str, source: str, principal: Principal,
                 now: datetime | None = None) -> TemplateOut:
    """Store a node's template after a test render with sample data (within the sandbox's
    limits); a template that fails is refused and nothing is stored."""
    principal.require(ADMINISTRATOR, node, "node")
    check_template(name, source, template_overrides(session, node), node_chain(node), ctx.templates.template_dir)
    author = principal.label
    row = session.execute(select(TemplateOverride).where(TemplateOverride.node == node,
                                                         TemplateOverride.name == name)).scalar_one_or_none()
    if row is None:
        row = TemplateOverride(node=node, name=name)
        session.add(row)
    row.source, row.author, row.updated_at = source, author, now or _now()
    session.flush()
    return TemplateOut(node=node, name=name, source=source, origin="database", from_node=node, author=author,
                       updated_at=row.updated_at)


def get_template(session: Session, ctx: NotifyContext, node: str, name: str, principal: Principal) -> TemplateOut:
    principal.require_sees(node)
    if name not in TEMPLATE_NAMES:
        raise UnknownReference("name", f"unknown template {name!r}")
    chain = node_chain(node)
    for candidate in chain:
        row = session.execute(select(TemplateOverride).where(TemplateOverride.node == candidate,
                                                             TemplateOverride.name == name)).scalar_one_or_none()
        if row is not None:
            return TemplateOut(node=node, name=name, source=row.source, origin="database", from_node=candidate,
                               author=row.author, updated_at=row.updated_at)
    if ctx.templates.template_dir is not None:
        for candidate in chain:
            path = ctx.templates.template_dir / candidate / name
            if path.is_file():
                return TemplateOut(node=node, name=name, source=path.read_text(encoding="utf-8"),
                                   origin="directory", from_node=candidate)
    return TemplateOut(node=node, name=name, source=ctx.templates.default_source(name), origin="default")


def delete_template(session: Session, node: str, name: str, principal: Principal) -> None:
    principal.require(ADMINISTRATOR, node, "node")
    row = session.execute(select(TemplateOverride).where(TemplateOverride.node == node,
                                                         TemplateOverride.name == name)).scalar_one_or_none()
    if row is None:
        raise UnknownReference("name", f"node {node} has no stored template {name!r}")
    session.delete(row)
