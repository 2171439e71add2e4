"""Office entries over HTTP: vetoes, revocations, approvals, appraisals, recomputes."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.contracts.errors import RuleViolation, StateConflict, UnknownReference
from services.contracts.identity import ADMINISTRATOR, OFFICE_ROLES, require_second_approver
from services.contracts.nodes import tier_of
from services.contracts.periods import Period, PeriodKind
from services.plumbing import audit
from services.scoring import domain
from services.scoring.domain import ScoringRuleViolation
from services.scoring.models import Appraisal, Approval, PolicyVersion, RecomputeLog, Subject, SubjectAlias, Veto
from services.scoring.operations.context import _check_node, VETO_REVOCATION, POLICY_CHANGE, PENDING, APPROVED, REJECTED, PrincipalLike, Context, _now, lock_scoring, actor, actor_id, require_in_stack, evaluating_node
from services.scoring.operations.policies import seed_default_policy, policy_out
from services.scoring.operations.scorer import Scorer, resolve_subject, score_row, figure_out


def propose_policy(session: Session, ctx: Context, principal: PrincipalLike, node: str, document: dict,
                   now: datetime | None = None) -> dict:
    """Propose a new version of `node`'s policy: validated now, adopted only when a second
    administrator of the node approves it (`approve`). Nothing is rescored until then."""
    code = _check_node(ctx, node)
    principal.require(ADMINISTRATOR, code, "node")
    policy = domain.parse_policy(document, tier_of(code))
    lock_scoring(session)
    pending = session.execute(select(Approval).where(
        Approval.kind == POLICY_CHANGE, Approval.target == code, Approval.status == PENDING)).scalars().first()
    if pending is not None:
        raise StateConflict("node", f"{code} 已有待审批的考评办法修订 {pending.id}; a policy change for {code} "
                                    f"is already awaiting approval ({pending.id}): approve or reject it first")
    row = Approval(id=str(uuid.uuid4()), kind=POLICY_CHANGE, node=code, target=code, status=PENDING,
                   reason=policy.note, document=policy.model_dump(mode="json"), proposed_by=actor(principal),
                   proposed_by_subject=principal.person[:200], proposed_at=now or _now())
    session.add(row)
    session.flush()
    return approval_out(session, row)


def _adopt_policy(session: Session, ctx: Context, approval: Approval, now: datetime) -> dict:
    """Add the approved version of a node's policy (never edits one); rescore the current periods."""
    code = approval.target
    policy = domain.parse_policy(approval.document, tier_of(code))
    seed_default_policy(session, ctx)
    last = session.execute(select(PolicyVersion).where(PolicyVersion.node == code)
                           .order_by(PolicyVersion.version.desc()).limit(1)).scalar_one_or_none()
    row = PolicyVersion(node=code, version=(last.version + 1) if last else 1, policy_id=policy.policy_id,
                        document=policy.model_dump(mode="json"), created_by=approval.proposed_by,
                        created_at=now, approved_by=approval.decided_by, approved_at=now, approval_id=approval.id)
    session.add(row)
    session.flush()
    scorer = Scorer(session, ctx, correlation_id=f"policy:{code}:{row.version}")
    for period in domain.periods_of(now):
        scorer.recompute_period(period)
    published = scorer.finish("policy")
    return {"policy": policy_out(row, code), "published": published}


def _log_changes(session: Session, periods: list[Period], trigger: str, principal: PrincipalLike | None,
                 reason: str | None, subject_id: str | None, published: int, now: datetime,
                 only_closed: bool = True, requested_by: tuple[str, str] | None = None) -> list[RecomputeLog]:
    """Record a recomputation in the recompute log: always for POST /recompute, and whenever an
    entry (a veto, a revocation, an appraisal) changes the figures of a period that has ended."""
    who, who_id = requested_by or (actor(principal), actor_id(principal))
    rows = []
    for period in periods:
        closed = domain.period_closed(period, now)
        if only_closed and not closed:
            continue
        row = RecomputeLog(period_kind=str(period.kind), period=period.key, closed=closed, trigger=trigger,
                           reason=reason, requested_by=who, requested_by_subject=who_id, subject_id=subject_id,
                           published=published, created_at=now)
        session.add(row)
        rows.append(row)
    session.flush()
    return rows


def recompute_out(row: RecomputeLog) -> dict:
    return {"recompute_id": row.id, "period": row.period, "period_kind": row.period_kind, "closed": row.closed,
            "trigger": row.trigger, "reason": row.reason, "requested_by": row.requested_by,
            "subject_id": row.subject_id, "published": row.published, "created_at": row.created_at}


def _veto_label(veto: Veto) -> str:
    return " · ".join(x for x in (domain.VETO_LABELS.get(veto.reason, veto.reason), veto.reference, veto.note) if x)


def add_veto(session: Session, ctx: Context, principal: PrincipalLike, subject_id: str, period_key: str,
             reason: str, note: str | None, reference: str | None, now: datetime | None = None) -> dict:
    """Enter a veto (by an administrator of the office that evaluates the subject)."""
    now = now or _now()
    period = domain.parse_period(period_key)
    lock_scoring(session)
    subject = resolve_subject(session, subject_id)
    principal.require(ADMINISTRATOR, evaluating_node(ctx, subject), "subject_id")
    veto = Veto(id=str(uuid.uuid4()), subject_id=subject.subject_id, period_kind=str(period.kind),
                period=period.key, reason=reason, issued_by=actor(principal), note=note, reference=reference,
                created_at=now)
    session.add(veto)
    session.flush()
    periods = domain.covering_periods(period)
    scorer = Scorer(session, ctx, correlation_id=veto.id)
    scorer.refresh(subject.subject_id, periods)
    published = scorer.finish("veto")
    _log_changes(session, periods, "veto", principal, f"一票否决 {veto.id}: {_veto_label(veto)}",
                 subject.subject_id, published, now)
    return veto_out(veto, subject)


def veto_out(veto: Veto, subject: Subject | None = None, pending: str | None = None) -> dict:
    period = Period(PeriodKind(veto.period_kind), veto.period)
    return {"veto_id": veto.id, "subject_id": veto.subject_id, "subject_name": subject.name if subject else None,
            "period": veto.period, "period_kind": veto.period_kind, "reason": veto.reason,
            "label": domain.VETO_LABELS.get(veto.reason, veto.reason), "issued_by": veto.issued_by,
            "note": veto.note, "reference": veto.reference, "created_at": veto.created_at,
            "applies_to": [p.key for p in domain.covering_periods(period)],
            "revoked": veto.revoked_at is not None,
            "revoked_at": veto.revoked_at,
            "revoked_by": veto.revoked_by, "revoke_reason": veto.revoke_reason,
            "revoke_approved_by": veto.revoke_approved_by, "pending_revocation": pending}


def _pending_revocations(session: Session) -> dict[str, str]:
    return {target: approval_id for approval_id, target in session.execute(
        select(Approval.id, Approval.target).where(Approval.kind == VETO_REVOCATION, Approval.status == PENDING))}


def list_vetoes(session: Session, ctx: Context, principal: PrincipalLike, subject_id: str | None = None,
                period_key: str | None = None, include_revoked: bool = False) -> list[dict]:
    """Entered vetoes, oldest first: of one subject (its division code or an alias), those that
    count in `period` (entered for it or for a shorter period inside it), revoked ones on request;
    only of subjects the caller may see."""
    require_in_stack(ctx, principal, "query.subject_id")
    period = domain.parse_period(period_key, "query.period") if period_key else None
    stmt = select(Veto).order_by(Veto.created_at, Veto.id)
    if subject_id is not None:
        alias = session.get(SubjectAlias, subject_id)
        wanted = alias.subject_id if alias else subject_id
        subject = session.get(Subject, wanted)
        if subject is not None:
            principal.require_sees(subject.node, "query.subject_id")
        stmt = stmt.where(Veto.subject_id == wanted)
    if not include_revoked:
        stmt = stmt.where(Veto.revoked_at.is_(None))
    subjects: dict[str, Subject | None] = {}
    pending = _pending_revocations(session)
    out = []
    for veto in session.execute(stmt).scalars():
        if period is not None and not domain.applies_to(Period(PeriodKind(veto.period_kind), veto.period), period):
            continue
        if veto.subject_id not in subjects:
            subjects[veto.subject_id] = session.get(Subject, veto.subject_id)
        subject = subjects[veto.subject_id]
        if not principal.sees(subject.node if subject else ctx.home):
            continue
        out.append(veto_out(veto, subject, pending.get(veto.id)))
    return out


def propose_veto_revocation(session: Session, ctx: Context, principal: PrincipalLike, veto_id: str, reason: str,
                            now: datetime | None = None) -> dict:
    """Propose revoking an entered veto (申诉成立, 通报撤回). Nothing changes until a second
    administrator of the owning node approves it (`approve`)."""
    lock_scoring(session)
    veto = session.get(Veto, veto_id, with_for_update=True)
    if veto is None:
        raise UnknownReference("veto_id", f"unknown veto {veto_id!r}")
    subject = session.get(Subject, veto.subject_id)
    principal.require(ADMINISTRATOR, evaluating_node(ctx, subject), "veto_id")
    if veto.revoked_at is not None:
        raise StateConflict("veto_id", f"veto {veto_id} was already revoked at "
                                       f"{veto.revoked_at.isoformat()} by {veto.revoked_by}")
    pending = _pending_revocations(session).get(veto.id)
    if pending is not None:
        raise StateConflict("veto_id", f"撤销申请 {pending} 正待审批; a revocation of veto {veto_id} is already "
                                       f"awaiting approval ({pending})")
    row = Approval(id=str(uuid.uuid4()), kind=VETO_REVOCATION, node=evaluating_node(ctx, subject), target=veto.id,
                   status=PENDING, reason=reason, proposed_by=actor(principal),
                   proposed_by_subject=principal.person[:200], proposed_at=now or _now())
    session.add(row)
    session.flush()
    return approval_out(session, row)


def _apply_veto_revocation(session: Session, ctx: Context, approval: Approval, now: datetime) -> dict:
    """The approved revocation: the veto row is kept and marked, the subject's figures for the
    veto's period and every longer one containing it are recomputed, re-ranked and published
    where they change."""
    veto = session.get(Veto, approval.target, with_for_update=True)
    if veto.revoked_at is not None:
        raise StateConflict("approval_id", f"veto {veto.id} was already revoked")
    veto.revoked_at, veto.revoked_by, veto.revoke_reason = now, approval.proposed_by, approval.reason
    veto.revoke_approved_by, veto.revoke_approval_id = approval.decided_by, approval.id
    session.flush()
    periods = domain.covering_periods(Period(PeriodKind(veto.period_kind), veto.period))
    scorer = Scorer(session, ctx, correlation_id=f"veto-revoked:{veto.id}")
    scorer.refresh(veto.subject_id, periods)
    published = scorer.finish("veto_revoked")
    _log_changes(session, periods, "veto_revocation", None,
                 f"撤销一票否决 {veto.id}（{approval.proposed_by} 提议）: {approval.reason}", veto.subject_id,
                 published, now, requested_by=(approval.decided_by, approval.decided_by_subject))
    figures = [score_row(session, veto.subject_id, p) for p in periods]
    return {"published": published, "period_scores": [figure_out(f) for f in figures if f is not None]}


def approval_out(session: Session, row: Approval, effect: dict | None = None) -> dict:
    out = {"approval_id": row.id, "kind": row.kind, "node": row.node, "target": row.target, "status": row.status,
           "reason": row.reason, "document": row.document, "proposed_by": row.proposed_by,
           "proposed_at": row.proposed_at, "decided_by": row.decided_by, "decided_at": row.decided_at,
           "decision_note": row.decision_note, "veto": None, "policy": None, "period_scores": [], "published": 0}
    if row.kind == VETO_REVOCATION:
        veto = session.get(Veto, row.target)
        if veto is not None:
            out["veto"] = veto_out(veto, session.get(Subject, veto.subject_id),
                                   row.id if row.status == PENDING else None)
    elif row.status == APPROVED:
        version = session.execute(select(PolicyVersion).where(PolicyVersion.approval_id == row.id)).scalar_one_or_none()
        out["policy"] = policy_out(version, version.node) if version else None
    if effect:
        out.update(effect)
    return out


def list_approvals(session: Session, ctx: Context, principal: PrincipalLike, status: str = PENDING,
                   kind: str | None = None, limit: int = 100, offset: int = 0) -> list[dict]:
    """Proposals the caller may decide on (it administers their owning node), oldest first."""
    require_in_stack(ctx, principal, "query.status")
    stmt = select(Approval).where(Approval.status == status).order_by(Approval.proposed_at, Approval.id)
    if kind:
        stmt = stmt.where(Approval.kind == kind)
    rows = [r for r in session.execute(stmt).scalars() if principal.holds(ADMINISTRATOR, r.node)]
    return [approval_out(session, r) for r in rows[offset:offset + limit]]


def _pending_for(session: Session, principal: PrincipalLike, approval_id: str) -> Approval:
    row = session.get(Approval, approval_id, with_for_update=True)
    if row is None:
        raise UnknownReference("approval_id", f"unknown approval {approval_id!r}")
    principal.require(ADMINISTRATOR, row.node, "approval_id")
    if row.status != PENDING:
        raise StateConflict("approval_id", f"已{'批准' if row.status == APPROVED else '驳回'}; the proposal was "
                                           f"already {row.status} by {row.decided_by} at {row.decided_at.isoformat()}")
    return row


def approve(session: Session, ctx: Context, principal: PrincipalLike, approval_id: str, note: str | None = None,
            now: datetime | None = None) -> dict:
    """The second administrator approves: only now does the change take effect."""
    now = now or _now()
    lock_scoring(session)
    row = _pending_for(session, principal, approval_id)
    # Two different people: the approver signed in itself (no API token), and neither its
    # account nor its administrator grant is the proposer's doing or younger than the proposal.
    require_second_approver(principal, row.node, row.proposed_by_subject, row.proposed_at)
    row.status, row.decided_by, row.decided_by_subject = APPROVED, actor(principal), principal.person[:200]
    row.decided_at, row.decision_note = now, note
    session.flush()
    audit.describe(session, node=row.node, target=f"approval:{row.id}",
                   also={"two_person_rule": {"proposed_by": row.proposed_by, "approved_by": row.decided_by}})
    if row.kind == VETO_REVOCATION:
        effect = _apply_veto_revocation(session, ctx, row, now)
    else:
        effect = _adopt_policy(session, ctx, row, now)
    return approval_out(session, row, effect)


def reject(session: Session, ctx: Context, principal: PrincipalLike, approval_id: str, note: str | None = None,
           now: datetime | None = None) -> dict:
    """An administrator of the owning node rejects the proposal (or its proposer withdraws it):
    nothing changes, the proposal stays on record."""
    lock_scoring(session)
    row = _pending_for(session, principal, approval_id)
    row.status, row.decided_by, row.decided_by_subject = REJECTED, actor(principal), actor_id(principal)
    row.decided_at, row.decision_note = now or _now(), note
    session.flush()
    return approval_out(session, row)


def add_appraisal(session: Session, ctx: Context, principal: PrincipalLike, subject_id: str, period_key: str,
                  score: float, note: str | None, now: datetime | None = None) -> dict:
    now = now or _now()
    period = domain.parse_period(period_key)
    lock_scoring(session)
    subject = resolve_subject(session, subject_id)
    principal.require(ADMINISTRATOR, evaluating_node(ctx, subject), "subject_id")
    scorer = Scorer(session, ctx, correlation_id=None)
    _, policy = scorer.policy_for(subject)
    if policy.composite is None or period.kind not in policy.composite.periods:
        allowed = [str(k) for k in policy.composite.periods] if policy.composite else []
        raise ScoringRuleViolation("period", f"the policy {policy.policy_id} has no appraisal for a {period.kind} "
                                             f"(composite periods: {', '.join(allowed) or 'none'})")
    if score > policy.scale:
        raise ScoringRuleViolation("score", f"{score:g} is above the policy's scale of {policy.scale}")
    appraised_by = actor(principal)
    row = Appraisal(subject_id=subject.subject_id, period_kind=str(period.kind), period=period.key, score=score,
                    scale=policy.scale, appraised_by=appraised_by, note=note, created_at=now)
    session.add(row)
    session.flush()
    scorer.correlation_id = f"appraisal:{row.id}"
    scorer.refresh(subject.subject_id, [period])
    published = scorer.finish("appraisal")
    _log_changes(session, [period], "appraisal", principal, f"综合评议 {score:g}" + (f": {note}" if note else ""),
                 subject.subject_id, published, now)
    figure = score_row(session, subject.subject_id, period)
    return {"appraisal_id": row.id, "subject_id": subject.subject_id, "period": period.key, "score": score,
            "scale": policy.scale, "appraised_by": appraised_by, "note": note, "created_at": row.created_at,
            "period_score": figure_out(figure) if figure else None}


def recompute(session: Session, ctx: Context, principal: PrincipalLike, period_key: str, reason: str | None,
              now: datetime | None = None) -> dict:
    """Recompute every figure of a period (by an administrator of this office), recorded in the
    recompute log. A period that has ended is never recomputed silently: it needs a reason."""
    now = now or _now()
    period = domain.parse_period(period_key)
    principal.require(ADMINISTRATOR, ctx.home, "period")
    if domain.period_closed(period, now) and not reason:
        raise RuleViolation("reason", f"{period.key} 已结束，重新计算须说明理由; the period {period.key} has ended: "
                                      "recomputing it needs a reason, which is kept in the recompute log")
    lock_scoring(session)
    scorer = Scorer(session, ctx, correlation_id=f"recompute:{period.key}")
    scorer.recompute_period(period)
    published = scorer.finish("recompute")
    [row] = _log_changes(session, [period], "recompute", principal, reason, None, published, now, only_closed=False)
    return recompute_out(row)


def list_recomputes(session: Session, ctx: Context, principal: PrincipalLike, period_key: str | None = None,
                    limit: int = 100, offset: int = 0) -> list[dict]:
    """The recompute log, newest first (for the office's own roles)."""
    principal.require(OFFICE_ROLES, ctx.home, "node")
    stmt = select(RecomputeLog).order_by(RecomputeLog.created_at.desc(), RecomputeLog.id.desc())
    if period_key:
        period = domain.parse_period(period_key, "query.period")
        stmt = stmt.where(RecomputeLog.period_kind == str(period.kind), RecomputeLog.period == period.key)
    return [recompute_out(r) for r in session.execute(stmt.limit(limit).offset(offset)).scalars()]


__all__ = ['propose_policy', '_adopt_policy', '_log_changes', 'recompute_out', '_veto_label', 'add_veto', 'veto_out', '_pending_revocations', 'list_vetoes', 'propose_veto_revocation', '_apply_veto_revocation', 'approval_out', 'list_approvals', '_pending_for', 'approve', 'reject', 'add_appraisal', 'recompute', 'list_recomputes']
