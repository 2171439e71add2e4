"""Shared by the notify use cases: the stack's context, node scoping, clock, default rules."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from sqlalchemy import false, or_

from services.contracts.nodes import parent_of, subtree_prefix
from services.notify.domain import RuleSetDocument, load_default_rules
from services.notify.templates import Templates
from services.notify.webhooks import WebhookPolicy
from services.contracts.identity import Principal



log = logging.getLogger(__name__)

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
    webhooks: WebhookPolicy = field(default_factory=WebhookPolicy)

    def name_of(self, code: str) -> str:
        return self.names(code) or code


def within_any(column, nodes: list[str]):
    """SQL: `column` (a division code) lies in one of these subtrees."""
    if not nodes:
        return false()
    return or_(*[column.like(subtree_prefix(n) + "%") for n in nodes])


def visible_nodes(principal: Principal, node: str | None, roles=None, field: str = "node") -> list[str]:
    """The subtrees a list covers: the asked-for node (which the caller must reach with one of
    `roles`), else the top nodes of the caller's own subtrees."""
    from services.contracts.identity import ROLES
    roles = tuple(roles or ROLES)
    if node is not None:
        principal.require(roles, node, field)
        return [node]
    return principal.nodes_with(roles)


def node_chain(node: str) -> list[str]:
    """The node itself, then its ancestors up to the province: where per-node data is looked up."""
    chain = [node]
    while (up := parent_of(chain[-1])) is not None:
        chain.append(up)
    return chain
