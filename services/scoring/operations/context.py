"""What every use case shares: the stack's context, who may do what, the scoring lock."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from sqlalchemy.orm import Session

from services.contracts.errors import PermissionDenied, UnknownReference
from services.contracts.nodes import NodeTree, Tier, is_within, normalize_code, parent_of, tier_of, InvalidNodeCode
from services.contracts.vocab import SubjectType
from services.plumbing.sql import advisory_xact_lock
from services.scoring.models import Subject


CHILD = SubjectType.child_unit.value


UNANNOUNCED = "unannounced"


# The office's own roles: what a rectifier (the contact of an evaluated subject) is not.
VETO_REVOCATION, POLICY_CHANGE = "veto_revocation", "policy_change"


PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"


class PrincipalLike(Protocol):
    """The authenticated caller (services.contracts.identity.Principal)."""
    subject: str
    name: str
    grants: tuple

    def holds(self, role: str, node: str) -> bool: ...
    def holds_any(self, roles, node: str) -> bool: ...
    def sees(self, node: str) -> bool: ...
    def seen_prefixes(self) -> tuple[str, ...]: ...
    def require(self, roles, node: str, field: str = "node") -> str: ...
    def require_sees(self, node: str, field: str = "node") -> None: ...

    @property
    def label(self) -> str: ...

    @property
    def person(self) -> str: ...


class OutboxLike(Protocol):
    def add(self, session: Session, payload, correlation_id: str | None = None, **kw): ...


@dataclass
class Context:
    home: str
    tree: NodeTree | None
    outbox: OutboxLike
    default_policy: str = "street"  # shipped policy name or a YAML path (config SCORING_POLICY)

    @property
    def home_tier(self) -> Tier:
        return tier_of(self.home)

    def name_of(self, code: str) -> str:
        return (self.tree.name_of(code) if self.tree else None) or code


def _now() -> datetime:
    return datetime.now(timezone.utc)


def lock_scoring(session: Session) -> None:
    """Serialise scoring work of this stack (rankings read and write whole peer groups)."""
    advisory_xact_lock(session, "chuangwei.scoring")


def actor(principal: PrincipalLike) -> str:
    """Who, for a record (the column holds 100 characters)."""
    return principal.label[:100]


def actor_id(principal: PrincipalLike) -> str:
    return principal.subject[:200]


def require_in_stack(ctx: Context, principal: PrincipalLike, field_name: str = "node") -> None:
    """The caller holds some role in this office's area: on its home node, above or below it.
    (Otherwise even an empty list would tell another street what this one keeps.)"""
    if principal.sees(ctx.home) or any(is_within(g.node, ctx.home) for g in principal.grants):
        return
    raise PermissionDenied(field_name, f"在 {ctx.home} 辖区内没有角色; no role on {ctx.home} or any node in it")


def evaluating_node(ctx: Context, subject: Subject) -> str:
    """The office that evaluates `subject` and owns its scoring: a child unit's parent (a street
    evaluates its communities; the home node itself is this office's own figure), else the
    node the department or area unit belongs to. Its policy applies and its administrators
    enter appraisals and vetoes."""
    if subject.subject_type == CHILD and subject.node != ctx.home:
        return parent_of(subject.node) or ctx.home
    return subject.node


def on_inspecting_side(principal: PrincipalLike, inspecting_node: str | None) -> bool:
    return principal.on_inspecting_side(inspecting_node)


def _check_node(ctx: Context, node: str, field_name: str = "node") -> str:
    try:
        code = normalize_code(node)
    except InvalidNodeCode as exc:
        raise UnknownReference(field_name, str(exc)) from None
    if not is_within(code, ctx.home):
        raise UnknownReference(field_name, f"node {code} is outside this stack ({ctx.home})")
    return code


__all__ = ['CHILD', 'UNANNOUNCED', 'VETO_REVOCATION', 'POLICY_CHANGE', 'PENDING', 'APPROVED', 'REJECTED', 'PrincipalLike', 'OutboxLike', 'Context', '_now', 'lock_scoring', 'actor', 'actor_id', 'require_in_stack', 'evaluating_node', 'on_inspecting_side', '_check_node']
