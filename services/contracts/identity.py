"""Who acts: roles held on nodes, and the authenticated caller (no nameko, no HTTP).

A grant is a role held on a node (division code), valid for that node's whole subtree:

    administrator   manages the node: subjects, places, policies, rules, templates, contacts
    inspector       inspects, verifies and closes out (销号) on the inspecting side
    rectifier       the contact of a responsible subject: starts and submits fixes
    viewer          reads
    platform        a machine client of a 数字城管 / 12345 platform: submits cases to intake
                    and reads their status (issue 16); reaches only endpoints that name it

Use cases take a `Principal` and check it where the node is known
(`principal.require(INSPECTOR, node)`); `services.plumbing.auth` makes one from a verified
access token.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable

from services.contracts.errors import PermissionDenied
from services.contracts.nodes import is_within, subtree_prefix

ADMINISTRATOR = "administrator"
INSPECTOR = "inspector"
RECTIFIER = "rectifier"
VIEWER = "viewer"
PLATFORM = "platform"
# The roles of people; `signed_in()` without roles admits these, never a platform.
ROLES = (ADMINISTRATOR, INSPECTOR, RECTIFIER, VIEWER)
# Machine clients: a grant an endpoint must name explicitly (`signed_in(PLATFORM)`).
MACHINE_ROLES = (PLATFORM,)
ALL_ROLES = ROLES + MACHINE_ROLES
# The roles that speak for an office; a rectifier speaks for an inspected subject.
OFFICE_ROLES = (ADMINISTRATOR, INSPECTOR, VIEWER)
ROLE_NAMES = {ADMINISTRATOR: "管理员", INSPECTOR: "检查员", RECTIFIER: "整改责任人", VIEWER: "查看者", PLATFORM: "接入平台"}


@dataclass(frozen=True)
class Grant:
    role: str
    node: str

    def covers(self, node: str) -> bool:
        return is_within(node, self.node)


# How an access token was obtained (its `amr` claim, RFC 8176 values where they exist): a
# person's interactive sign-in ("pwd", "otp", "mfa", ...) or the exchange of an API token
# (API_TOKEN_METHOD, set by accounts at /auth/token). A token without `amr` is not interactive.
API_TOKEN_METHOD = "api_token"


@dataclass(frozen=True)
class GrantOrigin:
    """When and by whom (a person's account name) a grant was made."""
    role: str
    node: str
    granted_at: datetime | None
    granted_by: str | None


@dataclass(frozen=True)
class Provenance:
    """Where the caller's account and grants came from (the token's `prov` claim, set by
    accounts for a person's sign-in): what the two-person rule asks of a second approver."""
    account_created_at: datetime | None
    account_created_by: str | None
    grants: tuple[GrantOrigin, ...] = ()


@dataclass(frozen=True)
class Principal:
    """The authenticated caller. The actor and role recorded anywhere come from here."""
    subject: str
    name: str
    grants: tuple[Grant, ...]
    kind: str = "user"
    token_id: str | None = None
    # How the token was obtained (`amr`); see API_TOKEN_METHOD.
    methods: tuple[str, ...] = ()
    # An API token's owner: the person's account name and display name.
    owner: str | None = None
    owner_name: str | None = None
    provenance: Provenance | None = None

    @property
    def interactive(self) -> bool:
        """A person who signed in themselves (a password or another interactive method), not
        a machine holding an API token."""
        return self.kind == "user" and bool(self.methods) and API_TOKEN_METHOD not in self.methods

    @property
    def person(self) -> str:
        """The person who answers for the call: the account, or the owner of the API token."""
        if self.kind != "user" and self.owner:
            return self.owner
        return self.subject

    def holds(self, role: str, node: str) -> bool:
        """Whether this caller holds `role` on `node` (a grant on it or on an ancestor)."""
        return any(g.role == role and g.covers(node) for g in self.grants)

    def holds_any(self, roles: Iterable[str], node: str) -> bool:
        wanted = set(roles)
        return any(g.role in wanted and g.covers(node) for g in self.grants)

    def roles_on(self, node: str) -> set[str]:
        return {g.role for g in self.grants if g.covers(node)}

    def sees(self, node: str) -> bool:
        """Any role on `node` lets the caller read it."""
        return any(g.covers(node) for g in self.grants)

    def seen_prefixes(self) -> tuple[str, ...]:
        """What `sees` asks, for a list: a normalised 12-digit code is seen exactly when it
        starts with one of these (`code.startswith(prefixes)`, without parsing each code)."""
        return tuple(sorted({subtree_prefix(g.node) for g in self.grants}))

    def nodes_with(self, roles: Iterable[str] = ROLES) -> list[str]:
        """The nodes at the top of the caller's subtrees for these roles (for list filters)."""
        wanted = set(roles)
        nodes = sorted({g.node for g in self.grants if g.role in wanted})
        return [n for n in nodes if not any(o != n and is_within(n, o) for o in nodes)]

    def on_inspecting_side(self, inspecting_node: str | None) -> bool:
        """Whether the caller speaks for the office that made an inspection (an office role on
        its node): what an unannounced inspection (暗访) and its inspectors' names are shown to.
        A rectifier is an inspected subject's contact, never the inspecting side."""
        return bool(inspecting_node) and self.holds_any(OFFICE_ROLES, inspecting_node)

    def require(self, roles: str | Iterable[str], node: str, field: str = "node") -> str:
        """The first of `roles` the caller holds on `node`, or PermissionDenied (403)."""
        wanted = (roles,) if isinstance(roles, str) else tuple(roles)
        for role in wanted:
            if self.holds(role, node):
                return role
        raise PermissionDenied(field, f"需要在 {node} 具有角色 {'/'.join(wanted)}; "
                                      f"requires role {'/'.join(wanted)} on node {node}")

    def require_sees(self, node: str, field: str = "node") -> None:
        if not self.sees(node):
            raise PermissionDenied(field, f"无权查看 {node}; no role on node {node} or above it")

    @property
    def label(self) -> str:
        """Who, for records: the person's name and account; for an API token, the person who
        owns it and the token ("张伟 (admin; API 令牌「大屏展示」token:…)")."""
        if self.kind != "user" and self.owner:
            return f"{self.owner_name or self.owner} ({self.owner}; API 令牌「{self.name}」{self.subject})"
        return self.name if self.name == self.subject else f"{self.name} ({self.subject})"


INDEPENDENCE_WINDOW = timedelta(days=7)
"""How long before a proposal an account or grant made by the proposer still counts as the
proposer's own doing (a sock puppet). An office's first administrator creates everyone else:
after this week its colleagues can approve its proposals; a puppet made for a proposal cannot."""


def require_second_approver(principal: Principal, node: str, proposer: str, proposed_at: datetime,
                            field: str = "approval_id", window: timedelta = INDEPENDENCE_WINDOW) -> None:
    """The two-person rule: a proposal is approved only by another person, signed in
    interactively (never through an API token), who administers `node` with an account and an
    administrator grant that both predate the proposal and were not made by the proposer within
    `window` before it — so neither a token of the proposer's own nor an account or grant the
    proposer set up for the occasion can approve."""
    if not principal.interactive:
        raise PermissionDenied(field, "批准须由管理员本人登录后操作，API 令牌不能批准; an approval needs an "
                                      "administrator's own interactive sign-in, never an API token")
    if principal.person == proposer:
        raise PermissionDenied(field, "提议人不能批准自己的提议，须由另一名管理员批准; the proposer "
                                      "cannot approve its own proposal: another administrator must")
    prov = principal.provenance
    if prov is None or prov.account_created_at is None:
        raise PermissionDenied(field, "令牌未说明账号来源，无法确认批准人独立于提议人; the token does not say "
                                      "where the account came from, so the approver's independence is unknown")
    settled = proposed_at - window
    if prov.account_created_at >= proposed_at or (prov.account_created_by == proposer
                                                  and prov.account_created_at > settled):
        raise PermissionDenied(field, f"批准人的账号由提议人在提议前 {window.days} 天内创建，或创建于提议之后，不能批准; "
                                      f"the approver's account was created by the proposer within {window.days} "
                                      f"days before the proposal, or after it")
    if not any(g.role == ADMINISTRATOR and is_within(node, g.node) and g.granted_at is not None
               and g.granted_at < proposed_at and (g.granted_by != proposer or g.granted_at <= settled)
               for g in prov.grants):
        raise PermissionDenied(field, f"批准人在 {node} 的管理员角色须在提议之前授予，且不是提议人在提议前 {window.days} "
                                      f"天内授予的; the approver's administrator grant on {node} must predate the "
                                      f"proposal and not have come from the proposer within {window.days} days "
                                      f"before it")