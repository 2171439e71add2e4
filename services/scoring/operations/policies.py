"""Scoring policies: the shipped default, versions per node, proposals (adopted in `entries.approve`)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.contracts.nodes import is_within, parent_of
from services.scoring import domain
from services.scoring.models import PolicyVersion
from services.scoring.operations.context import PrincipalLike, Context, _now, _check_node


def seed_default_policy(session: Session, ctx: Context) -> None:
    """Store the configured shipped policy as version 1 of the home node's policy, once."""
    if session.execute(select(PolicyVersion.id).where(PolicyVersion.node == ctx.home)).first():
        return
    policy = domain.load_shipped_policy(ctx.default_policy, ctx.home_tier)
    session.add(PolicyVersion(node=ctx.home, version=1, policy_id=policy.policy_id,
                              document=policy.model_dump(mode="json"), created_by="system (shipped default)",
                              created_at=_now()))
    session.flush()


def _latest_policy_rows(session: Session) -> dict[str, PolicyVersion]:
    latest: dict[str, PolicyVersion] = {}
    for row in session.execute(select(PolicyVersion).order_by(PolicyVersion.version)).scalars():
        latest[row.node] = row
    return latest


def policy_out(row: PolicyVersion, node: str) -> dict:
    return {"node": node, "defined_at": row.node, "inherited": row.node != node, "version": row.version,
            "policy_id": row.policy_id, "created_by": row.created_by, "created_at": row.created_at,
            "approved_by": row.approved_by, "approved_at": row.approved_at, "document": row.document}


def get_policy(session: Session, ctx: Context, node: str, principal: PrincipalLike) -> dict:
    code = _check_node(ctx, node)
    principal.require_sees(code, "node")
    seed_default_policy(session, ctx)
    latest = _latest_policy_rows(session)
    return policy_out(_effective_row(latest, code, ctx.home), code)


def policy_versions(session: Session, ctx: Context, node: str, principal: PrincipalLike) -> list[dict]:
    code = _check_node(ctx, node)
    principal.require_sees(code, "node")
    seed_default_policy(session, ctx)
    rows = session.execute(select(PolicyVersion).where(PolicyVersion.node == code)
                           .order_by(PolicyVersion.version)).scalars()
    return [policy_out(r, code) for r in rows]


def _effective_row(latest: dict[str, PolicyVersion], node: str, home: str) -> PolicyVersion:
    current: str | None = node if is_within(node, home) else home
    while current is not None:
        if current in latest:
            return latest[current]
        if current == home:
            break
        current = parent_of(current)
    return latest[home]


__all__ = ['seed_default_policy', '_latest_policy_rows', 'policy_out', 'get_policy', 'policy_versions', '_effective_row']
