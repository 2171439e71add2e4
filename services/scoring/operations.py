"""Use cases of the scoring service: apply inspections, ledger figures, vetoes, appraisals
and policies; keep period scores, rankings and the roll-up current; publish changes.

Each function takes a SQLAlchemy session and a `Context` (home node, division tree,
outbox); the caller owns the transaction. No nameko imports.

How a change flows (`Scorer`):
1. the subject's score is recomputed for each affected period;
2. if it changed and the subject is a child unit, its parent's roll-up input is updated
   and the parent recomputed, up to the stack's home node (only the changed chain);
3. the peer group of every recomputed row is re-ranked (and the next period's group, whose
   movement depends on these ranks);
4. every row whose published figure (score, grade, rank, movement, vetoes, inputs, policy)
   differs from the last one published gets a new revision and a score_published event.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.plumbing.sql import advisory_xact_lock
from services.contracts.errors import StateConflict, UnknownReference
from services.contracts.events import InvalidEvent
from services.contracts.events.inspection import InspectionSubmitted
from services.contracts.events.scoring import PolicyRef, ScoredSubject, ScorePublished
from services.contracts.events.tasks import LedgerFiguresUpdated
from services.contracts.nodes import NodeTree, Tier, is_within, normalize_code, parent_of, tier_of, InvalidNodeCode
from services.contracts.periods import Period, PeriodKind
from services.contracts.vocab import SubjectType
from services.scoring import domain, metrics
from services.scoring.domain import ScoringRuleViolation
from services.contracts.tiers import UP_EXCHANGE, routing_key as tier_routing_key
from services.scoring.models import (Appraisal, ChildFreshness, ChildScore, LedgerFigures, PeriodScore, PolicyVersion,
                                     ScoreInputRow, Subject, SubjectAlias, Veto)

CHILD = SubjectType.child_unit.value


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


# --- policies --------------------------------------------------------------------------------


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


def _check_node(ctx: Context, node: str, field_name: str = "node") -> str:
    try:
        code = normalize_code(node)
    except InvalidNodeCode as exc:
        raise UnknownReference(field_name, str(exc)) from None
    if not is_within(code, ctx.home):
        raise UnknownReference(field_name, f"node {code} is outside this stack ({ctx.home})")
    return code


def policy_out(row: PolicyVersion, node: str) -> dict:
    return {"node": node, "defined_at": row.node, "inherited": row.node != node, "version": row.version,
            "policy_id": row.policy_id, "created_by": row.created_by, "created_at": row.created_at,
            "document": row.document}


def get_policy(session: Session, ctx: Context, node: str) -> dict:
    code = _check_node(ctx, node)
    seed_default_policy(session, ctx)
    latest = _latest_policy_rows(session)
    return policy_out(_effective_row(latest, code, ctx.home), code)


def policy_versions(session: Session, ctx: Context, node: str) -> list[dict]:
    code = _check_node(ctx, node)
    seed_default_policy(session, ctx)
    rows = session.execute(select(PolicyVersion).where(PolicyVersion.node == code)
                           .order_by(PolicyVersion.version)).scalars()
    return [policy_out(r, code) for r in rows]


def update_policy(session: Session, ctx: Context, node: str, document: dict, changed_by: str,
                  now: datetime | None = None) -> dict:
    """Add a new version of `node`'s policy (never edits one); rescore the current periods."""
    code = _check_node(ctx, node)
    policy = domain.parse_policy(document, tier_of(code))
    lock_scoring(session)
    seed_default_policy(session, ctx)
    last = session.execute(select(PolicyVersion).where(PolicyVersion.node == code)
                           .order_by(PolicyVersion.version.desc()).limit(1)).scalar_one_or_none()
    row = PolicyVersion(node=code, version=(last.version + 1) if last else 1, policy_id=policy.policy_id,
                        document=policy.model_dump(mode="json"), created_by=changed_by,
                        created_at=now or _now())
    session.add(row)
    session.flush()
    scorer = Scorer(session, ctx, correlation_id=f"policy:{code}:{row.version}")
    for period in domain.periods_of(now or _now()):
        scorer.recompute_period(period)
    scorer.finish("policy")
    return policy_out(row, code)


def _effective_row(latest: dict[str, PolicyVersion], node: str, home: str) -> PolicyVersion:
    current: str | None = node if is_within(node, home) else home
    while current is not None:
        if current in latest:
            return latest[current]
        if current == home:
            break
        current = parent_of(current)
    return latest[home]


# --- the scorer ------------------------------------------------------------------------------


@dataclass
class Scorer:
    session: Session
    ctx: Context
    correlation_id: str | None = None
    _latest: dict[str, PolicyVersion] | None = None
    _policies: dict[tuple[str, int], domain.Policy] = field(default_factory=dict)
    _groups: set[tuple[str, str, str, str]] = field(default_factory=set)
    started: float = field(default_factory=time.perf_counter)

    # policies
    def policy_for(self, subject: Subject) -> tuple[PolicyVersion, domain.Policy]:
        if self._latest is None:
            seed_default_policy(self.session, self.ctx)
            self._latest = _latest_policy_rows(self.session)
        evaluating = subject.node
        if subject.subject_type == CHILD and subject.node != self.ctx.home:
            evaluating = parent_of(subject.node) or self.ctx.home
        row = _effective_row(self._latest, evaluating, self.ctx.home)
        key = (row.node, row.version)
        if key not in self._policies:
            self._policies[key] = domain.Policy.model_validate(row.document)
        return row, self._policies[key]

    # subjects
    def ensure_subject(self, subject_id: str, node: str, name: str, subject_type: str) -> Subject:
        subject = self.session.get(Subject, subject_id)
        if subject is None:
            subject = Subject(subject_id=subject_id, node=node, name=name, subject_type=subject_type,
                              tier=str(tier_of(node)), created_at=_now())
            self.session.add(subject)
            self.session.flush()
        elif subject.name != name and name:
            subject.name = name
        return subject

    # recomputation
    def refresh(self, subject_id: str, periods: list[Period]) -> None:
        for period in periods:
            current: str | None = subject_id
            first = True
            while current is not None:
                row, changed = self._recompute(current, period)
                if not changed and not first:
                    break
                first = False
                current = self._roll_up(row, period) if changed else None

    def recompute_period(self, period: Period) -> None:
        """Recompute every subject with a figure for `period` (after a policy change)."""
        rows = self.session.execute(select(PeriodScore.subject_id, PeriodScore.tier).where(
            PeriodScore.period_kind == str(period.kind), PeriodScore.period == period.key)).all()
        # Lowest tier first, so that parents see their children's new figures.
        for subject_id, _ in sorted(rows, key=lambda r: (-Tier(r.tier).depth, r.subject_id)):
            self.refresh(subject_id, [period])

    def _recompute(self, subject_id: str, period: Period) -> tuple[PeriodScore, bool]:
        s = self.session
        subject = s.get(Subject, subject_id)
        policy_row, policy = self.policy_for(subject)
        column = getattr(ScoreInputRow, str(period.kind))
        inputs = [domain.ScoreInput(r.inspection_id, r.kind, r.score, r.scale, r.inspected_at)
                  for r in s.execute(select(ScoreInputRow).where(ScoreInputRow.subject_id == subject_id,
                                                                 column == period.key)).scalars()]
        children = []
        if subject.subject_type == CHILD and subject.subject_id == subject.node:
            children = [domain.ChildInput(c.child_node, c.name, c.score, c.scale, c.inputs, c.source)
                        for c in s.execute(select(ChildScore).where(
                            ChildScore.parent_node == subject.node, ChildScore.period_kind == str(period.kind),
                            ChildScore.period == period.key).order_by(ChildScore.child_node)).scalars()]
        appraisal = s.execute(select(Appraisal).where(
            Appraisal.subject_id == subject_id, Appraisal.period == period.key)
            .order_by(Appraisal.created_at.desc(), Appraisal.id.desc()).limit(1)).scalar_one_or_none()
        appraisal_in = (domain.AppraisalInput(appraisal.score * policy.scale / appraisal.scale,
                                              appraisal.appraised_by, appraisal.note) if appraisal else None)
        vetoes = [domain.VetoInput(v.reason, v.period, " · ".join(x for x in (v.issued_by, v.note, v.reference) if x),
                                   "api", veto_id=v.id, revoked=v.revoked_at is not None)
                  for v in s.execute(select(Veto).where(Veto.subject_id == subject_id)
                                     .order_by(Veto.created_at, Veto.id)).scalars()]
        ids = [subject_id] + list(s.execute(select(SubjectAlias.alias).where(
            SubjectAlias.subject_id == subject_id)).scalars())
        ledger = [domain.LedgerInput(f.period, f.overdue_open, f.on_time_rate)
                  for f in s.execute(select(LedgerFigures).where(LedgerFigures.subject_id.in_(ids))).scalars()]
        result = domain.subject_score(period, policy, inputs, children, appraisal_in, vetoes, ledger)

        row = s.execute(select(PeriodScore).where(
            PeriodScore.subject_id == subject_id, PeriodScore.period_kind == str(period.kind),
            PeriodScore.period == period.key)).scalar_one_or_none()
        changed = row is None or (row.score, row.inputs, row.scale) != (result.score, result.inputs, policy.scale)
        if row is None:
            row = PeriodScore(subject_id=subject_id, period_kind=str(period.kind), period=period.key,
                              peers=0, ranked=False, position=0, revision=0, published=None)
            s.add(row)
        row.node, row.name, row.tier, row.subject_type = subject.node, subject.name, subject.tier, subject.subject_type
        row.score, row.scale, row.routine, row.appraisal = result.score, policy.scale, result.routine, result.appraisal
        row.inputs, row.vetoed, row.veto_reasons, row.grade = result.inputs, result.vetoed, result.veto_reasons, result.grade
        row.policy_id, row.policy_version = policy_row.policy_id, policy_row.version
        row.explain = {**result.explain, "policy": {"policy_id": policy_row.policy_id, "version": policy_row.version,
                                                    "node": policy_row.node}}
        row.computed_at = _now()
        s.flush()
        self._groups.add((str(period.kind), period.key, row.tier, row.subject_type))
        return row, changed

    def _roll_up(self, row: PeriodScore, period: Period) -> str | None:
        """Hand a child unit's new figure to its parent; returns the parent to recompute."""
        if row.subject_type != CHILD or row.node == self.ctx.home:
            return None
        parent = parent_of(row.node)
        if parent is None or not is_within(parent, self.ctx.home):
            return None
        upsert_child_score(self.session, parent, row.node, row.name, period, row.score, row.scale, row.inputs,
                           "stack", row.revision + 1)
        self.ensure_subject(parent, parent, self.ctx.name_of(parent), CHILD)
        return parent

    # ranking
    def _rerank(self, kind: str, key: str, tier: str, subject_type: str) -> bool:
        s = self.session
        period = Period(PeriodKind(kind), key)
        rows = s.execute(select(PeriodScore).where(
            PeriodScore.period_kind == kind, PeriodScore.period == key, PeriodScore.tier == tier,
            PeriodScore.subject_type == subject_type)).scalars().all()
        if not rows:
            return False
        previous = period.previous()
        prev_ranks = {sid: rank for sid, rank in s.execute(select(PeriodScore.subject_id, PeriodScore.rank).where(
            PeriodScore.period_kind == kind, PeriodScore.period == previous.key, PeriodScore.tier == tier,
            PeriodScore.subject_type == subject_type, PeriodScore.rank.is_not(None)))}
        entries = []
        for row in rows:
            _, policy = self.policy_for(s.get(Subject, row.subject_id))
            tier_rule = policy.ranking.tiers.get(Tier(tier))
            min_inputs = tier_rule.min_inspections if (tier_rule and period.kind in policy.ranking.periods) else None
            entries.append(domain.RankEntry(row.subject_id, row.name, row.score, row.inputs, min_inputs))
        results = {r.subject_id: r for r in domain.rank_peers(entries, prev_ranks)}
        ranks_changed = False
        for row in rows:
            r = results[row.subject_id]
            if row.rank != r.rank:
                ranks_changed = True
            row.rank, row.ranked, row.peers, row.movement, row.position = r.rank, r.ranked, r.peers, r.movement, r.position
        metrics.SUBJECTS_RANKED.labels(tier, subject_type, kind).set(sum(1 for r in results.values() if r.ranked))
        s.flush()
        return ranks_changed

    def finish(self, trigger: str) -> int:
        """Re-rank the touched peer groups and publish every changed figure; returns how many."""
        groups = sorted(self._groups)
        for kind, key, tier, subject_type in groups:
            if self._rerank(kind, key, tier, subject_type):
                # The following period's movement is measured against these ranks (its own
                # ranks do not depend on them, so this goes one period forward only).
                following = domain.next_period(Period(PeriodKind(kind), key))
                self._rerank(kind, following.key, tier, subject_type)
                self._groups.add((kind, following.key, tier, subject_type))
        published = 0
        for kind, key, tier, subject_type in sorted(self._groups):
            rows = self.session.execute(select(PeriodScore).where(
                PeriodScore.period_kind == kind, PeriodScore.period == key, PeriodScore.tier == tier,
                PeriodScore.subject_type == subject_type).order_by(PeriodScore.position)).scalars().all()
            for row in rows:
                if self._publish_if_changed(row):
                    published += 1
        metrics.RECOMPUTE_SECONDS.labels(trigger).observe(time.perf_counter() - self.started)
        self._groups.clear()
        return published

    def _publish_if_changed(self, row: PeriodScore) -> bool:
        figure = {"score": row.score, "scale": row.scale, "grade": row.grade, "rank": row.rank, "peers": row.peers,
                  "ranked": row.ranked, "movement": row.movement, "vetoed": row.vetoed,
                  "veto_reasons": list(row.veto_reasons or []), "inputs": row.inputs, "name": row.name,
                  "policy": [row.policy_id, row.policy_version]}
        if row.published == figure:
            return False
        row.revision = (row.revision or 0) + 1
        row.published = figure
        event = ScorePublished(
            scoring_node=self.ctx.home,
            subject=ScoredSubject(subject_id=row.subject_id, node=row.node, name=row.name,
                                  subject_type=row.subject_type),
            period_kind=row.period_kind, period=row.period, score=row.score, scale=row.scale, grade=row.grade,
            rank=row.rank, peers=row.peers, ranked=row.ranked, movement=row.movement, vetoed=row.vetoed,
            veto_reasons=list(row.veto_reasons or []), inputs=row.inputs,
            policy=PolicyRef(policy_id=row.policy_id, version=row.policy_version), revision=row.revision,
            computed_at=row.computed_at)
        self.ctx.outbox.add(self.session, event, correlation_id=self.correlation_id)
        if row.subject_type == CHILD and row.node == self.ctx.home:
            # This tier's own aggregate goes up to the parent tier (over federation).
            self.ctx.outbox.add(self.session, event, correlation_id=self.correlation_id, exchange=UP_EXCHANGE,
                                routing_key=tier_routing_key("score_published", self.ctx.home))
        metrics.SCORES_PUBLISHED.labels(row.period_kind).inc()
        if row.subject_type == CHILD and row.node != self.ctx.home:
            parent = parent_of(row.node)
            if parent and is_within(parent, self.ctx.home):
                child = self.session.get(ChildScore, (parent, row.node, row.period_kind, row.period))
                if child is not None and child.source == "stack":
                    child.revision = row.revision
        self.session.flush()
        return True


def upsert_child_score(session: Session, parent: str, child: str, name: str, period: Period, score: float | None,
                       scale: int, inputs: int, source: str, revision: int) -> bool:
    """Keep the latest figure per child: this stack's own always wins over an older copy of
    itself; from another source, only a higher revision replaces the stored one."""
    row = session.get(ChildScore, (parent, child, str(period.kind), period.key))
    if row is None:
        session.add(ChildScore(parent_node=parent, child_node=child, period_kind=str(period.kind),
                               period=period.key, name=name, score=score, scale=scale, inputs=inputs,
                               source=source, revision=revision, updated_at=_now()))
        session.flush()
        return True
    if source != "stack" and row.source == source and revision <= row.revision:
        return False
    row.name, row.score, row.scale, row.inputs = name, score, scale, inputs
    row.source, row.revision, row.updated_at = source, revision, _now()
    session.flush()
    return True


def apply_child_score(session: Session, ctx: Context, parent: str, child: str, name: str, period: Period,
                      score: float | None, scale: int, inputs: int, source: str, revision: int,
                      correlation_id: str | None = None) -> bool:
    """A child's score from outside this stack's own computation (a child stack's
    score_published, issue 6): store it if newer and recompute the parent chain."""
    lock_scoring(session)
    if not upsert_child_score(session, parent, child, name, period, score, scale, inputs, source, revision):
        return False
    scorer = Scorer(session, ctx, correlation_id=correlation_id)
    if session.get(Subject, parent) is None:  # keep the name this tier knows it by (no flip-flop with the tree's)
        scorer.ensure_subject(parent, parent, name if parent == child else ctx.name_of(parent), CHILD)
    scorer.refresh(parent, [period])
    scorer.finish("child_score")
    return True


def apply_child_report(session: Session, ctx: Context, envelope_occurred_at: datetime, event: ScorePublished,
                       now: datetime | None = None) -> bool:
    """A child stack's own aggregate (its score_published for its home node, arrived over
    federation) becomes that child's input here: the highest revision wins, an older one
    arriving late is ignored. Returns whether anything changed."""
    child = event.subject.node
    if event.subject.node != event.scoring_node or event.subject.subject_type != CHILD:
        return False  # only a tier's own aggregate travels up; anything else is not for us
    if child == ctx.home or not is_within(child, ctx.home):
        raise InvalidEvent(f"score of {child} is not from a child of this tier ({ctx.home})")
    now = now or _now()
    fresh = session.get(ChildFreshness, child)
    if fresh is None:
        fresh = ChildFreshness(child_node=child, name=event.subject.name, events=0, last_event_type="")
        session.add(fresh)
    fresh.name, fresh.last_heard_at = event.subject.name, now
    fresh.last_event_at, fresh.last_event_type = envelope_occurred_at, "score_published"
    fresh.events = (fresh.events or 0) + 1
    metrics.CHILD_LAST_HEARD.labels(child).set(now.timestamp())
    period = Period(PeriodKind(event.period_kind), event.period)
    # Stored as the child's own input (parent = child): the child's subtree as it reports it,
    # blended with this tier's own inspections of the child by the policy's roll-up rule.
    return apply_child_score(session, ctx, child, child, event.subject.name, period, event.score, event.scale,
                             event.inputs, source=f"{domain.REPORT_SOURCE}{child}", revision=event.revision,
                             correlation_id=str(event.subject.node))


def child_freshness(session: Session, ctx: Context, now: datetime | None = None,
                    expected: tuple[str, ...] = ()) -> list[dict]:
    """Each child stack with when it was last heard from; expected children never heard from too."""
    now = now or _now()
    rows = {r.child_node: r for r in session.execute(select(ChildFreshness)).scalars()}
    out = []
    for child in sorted(set(rows) | set(expected)):
        row = rows.get(child)
        heard = row.last_heard_at if row else None
        out.append({"child": child, "name": row.name if row else ctx.name_of(child),
                    "last_heard_at": heard.isoformat() if heard else None,
                    "seconds_since": round((now - heard).total_seconds(), 1) if heard else None,
                    "last_event_type": row.last_event_type if row else None,
                    "events": row.events if row else 0})
        if heard:
            metrics.CHILD_LAST_HEARD.labels(child).set(heard.timestamp())
    return out


# --- events ----------------------------------------------------------------------------------


def scoring_subject_id(subject_type: str, subject_id: str, node: str) -> str:
    """A child unit is scored under its division code; others under their own id."""
    return node if subject_type == CHILD else subject_id


def apply_inspection(session: Session, ctx: Context, event_id: str, event: InspectionSubmitted) -> int:
    """Record one submitted inspection and update everything it affects; returns events published."""
    lock_scoring(session)
    if session.get(ScoreInputRow, str(event.inspection_id)) is not None:
        return 0  # the same inspection under another event id changes nothing either
    ref = event.subject
    sid = scoring_subject_id(str(ref.subject_type), ref.subject_id, ref.node)
    scorer = Scorer(session, ctx, correlation_id=str(event.inspection_id))
    scorer.ensure_subject(sid, ref.node, ref.name, str(ref.subject_type))
    if sid != ref.subject_id and session.get(SubjectAlias, ref.subject_id) is None:
        session.add(SubjectAlias(alias=ref.subject_id, subject_id=sid))
    periods = domain.periods_of(event.inspected_at)
    keys = {str(p.kind): p.key for p in periods}
    session.add(ScoreInputRow(
        inspection_id=str(event.inspection_id), event_id=event_id, subject_id=sid,
        inspection_subject_id=ref.subject_id, inspecting_node=event.inspecting_node, kind=str(event.kind),
        score=event.score, scale=event.scale, inspected_at=event.inspected_at, created_at=_now(), **keys))
    session.flush()
    scorer.refresh(sid, periods)
    return scorer.finish("inspection")


def resolve_subject(session: Session, subject_id: str, field_name: str = "subject_id") -> Subject:
    subject = session.get(Subject, subject_id)
    if subject is None:
        alias = session.get(SubjectAlias, subject_id)
        subject = session.get(Subject, alias.subject_id) if alias else None
    if subject is None:
        raise UnknownReference(field_name, f"unknown subject {subject_id!r}: it has no inspection here yet")
    return subject


def apply_ledger_figures(session: Session, ctx: Context, event_id: str, event: LedgerFiguresUpdated) -> int:
    """Store a subject's ledger figures; re-evaluate the overdue veto for the month and longer periods."""
    lock_scoring(session)
    month = Period.parse(event.period)
    if month.kind != PeriodKind.month:
        raise InvalidEvent(f"ledger period {event.period!r} is not a month")
    row = session.get(LedgerFigures, (event.subject_id, event.period))
    if row is not None and row.computed_at >= event.computed_at:
        return 0  # an older figure arriving late
    if row is None:
        row = LedgerFigures(subject_id=event.subject_id, period=event.period)
        session.add(row)
    row.node, row.overdue_open, row.on_time_rate, row.close_rate = (event.node, event.overdue_open,
                                                                    event.on_time_rate, event.close_rate)
    row.opened, row.closed, row.relapses, row.computed_at = event.opened, event.closed, event.relapses, event.computed_at
    session.flush()
    try:
        subject = resolve_subject(session, event.subject_id)
    except UnknownReference:
        return 0  # kept: it counts once the subject's first inspection arrives
    scorer = Scorer(session, ctx, correlation_id=event_id)
    scorer.refresh(subject.subject_id, domain.covering_periods(month))
    return scorer.finish("ledger")


# --- HTTP use cases --------------------------------------------------------------------------


def add_veto(session: Session, ctx: Context, subject_id: str, period_key: str, reason: str, issued_by: str,
             note: str | None, reference: str | None) -> dict:
    period = domain.parse_period(period_key)
    lock_scoring(session)
    subject = resolve_subject(session, subject_id)
    veto = Veto(id=str(uuid.uuid4()), subject_id=subject.subject_id, period_kind=str(period.kind),
                period=period.key, reason=reason, issued_by=issued_by, note=note, reference=reference,
                created_at=_now())
    session.add(veto)
    session.flush()
    scorer = Scorer(session, ctx, correlation_id=veto.id)
    scorer.refresh(subject.subject_id, domain.covering_periods(period))
    scorer.finish("veto")
    return veto_out(veto, subject)


def veto_out(veto: Veto, subject: Subject | None = None) -> dict:
    period = Period(PeriodKind(veto.period_kind), veto.period)
    return {"veto_id": veto.id, "subject_id": veto.subject_id, "subject_name": subject.name if subject else None,
            "period": veto.period, "period_kind": veto.period_kind, "reason": veto.reason,
            "label": domain.VETO_LABELS.get(veto.reason, veto.reason), "issued_by": veto.issued_by,
            "note": veto.note, "reference": veto.reference, "created_at": veto.created_at,
            "applies_to": [p.key for p in domain.covering_periods(period)],
            "revoked": veto.revoked_at is not None,
            "revoked_at": veto.revoked_at,
            "revoked_by": veto.revoked_by, "revoke_reason": veto.revoke_reason}


def list_vetoes(session: Session, subject_id: str | None = None, period_key: str | None = None,
                include_revoked: bool = False) -> list[dict]:
    """Entered vetoes, oldest first: of one subject (its division code or an alias), those that
    count in `period` (entered for it or for a shorter period inside it), revoked ones on request."""
    stmt = select(Veto).order_by(Veto.created_at, Veto.id)
    if subject_id is not None:
        alias = session.get(SubjectAlias, subject_id)
        stmt = stmt.where(Veto.subject_id == (alias.subject_id if alias else subject_id))
    if not include_revoked:
        stmt = stmt.where(Veto.revoked_at.is_(None))
    period = domain.parse_period(period_key, "query.period") if period_key else None
    subjects: dict[str, Subject | None] = {}
    out = []
    for veto in session.execute(stmt).scalars():
        if period is not None and not domain.applies_to(Period(PeriodKind(veto.period_kind), veto.period), period):
            continue
        if veto.subject_id not in subjects:
            subjects[veto.subject_id] = session.get(Subject, veto.subject_id)
        out.append(veto_out(veto, subjects[veto.subject_id]))
    return out


def revoke_veto(session: Session, ctx: Context, veto_id: str, revoked_by: str, reason: str,
                now: datetime | None = None) -> dict:
    """Revoke an entered veto (申诉成立, 通报撤回): the row is kept and marked, the subject's
    figures for the veto's period and every longer one containing it are recomputed, re-ranked
    and published where they change. A second revocation is a conflict; nothing changes then."""
    lock_scoring(session)
    veto = session.get(Veto, veto_id, with_for_update=True)
    if veto is None:
        raise UnknownReference("veto_id", f"unknown veto {veto_id!r}")
    if veto.revoked_at is not None:
        raise StateConflict("veto_id", f"veto {veto_id} was already revoked at "
                                       f"{veto.revoked_at.isoformat()} by {veto.revoked_by}")
    veto.revoked_at, veto.revoked_by, veto.revoke_reason = now or _now(), revoked_by, reason
    session.flush()
    subject = session.get(Subject, veto.subject_id)
    periods = domain.covering_periods(Period(PeriodKind(veto.period_kind), veto.period))
    scorer = Scorer(session, ctx, correlation_id=f"veto-revoked:{veto.id}")
    scorer.refresh(veto.subject_id, periods)
    published = scorer.finish("veto_revoked")
    figures = [score_row(session, veto.subject_id, p) for p in periods]
    return {**veto_out(veto, subject), "published": published,
            "period_scores": [figure_out(f) for f in figures if f is not None]}


def add_appraisal(session: Session, ctx: Context, subject_id: str, period_key: str, score: float,
                  appraised_by: str, note: str | None) -> dict:
    period = domain.parse_period(period_key)
    lock_scoring(session)
    subject = resolve_subject(session, subject_id)
    scorer = Scorer(session, ctx, correlation_id=None)
    _, policy = scorer.policy_for(subject)
    if policy.composite is None or period.kind not in policy.composite.periods:
        allowed = [str(k) for k in policy.composite.periods] if policy.composite else []
        raise ScoringRuleViolation("period", f"the policy {policy.policy_id} has no appraisal for a {period.kind} "
                                             f"(composite periods: {', '.join(allowed) or 'none'})")
    if score > policy.scale:
        raise ScoringRuleViolation("score", f"{score:g} is above the policy's scale of {policy.scale}")
    row = Appraisal(subject_id=subject.subject_id, period_kind=str(period.kind), period=period.key, score=score,
                    scale=policy.scale, appraised_by=appraised_by, note=note, created_at=_now())
    session.add(row)
    session.flush()
    scorer.correlation_id = f"appraisal:{row.id}"
    scorer.refresh(subject.subject_id, [period])
    scorer.finish("appraisal")
    figure = score_row(session, subject.subject_id, period)
    return {"appraisal_id": row.id, "subject_id": subject.subject_id, "period": period.key, "score": score,
            "scale": policy.scale, "appraised_by": appraised_by, "note": note, "created_at": row.created_at,
            "period_score": figure_out(figure) if figure else None}


def recompute(session: Session, ctx: Context, period_key: str) -> dict:
    period = domain.parse_period(period_key)
    lock_scoring(session)
    scorer = Scorer(session, ctx, correlation_id=f"recompute:{period.key}")
    scorer.recompute_period(period)
    return {"period": period.key, "published": scorer.finish("recompute")}


def score_row(session: Session, subject_id: str, period: Period) -> PeriodScore | None:
    return session.execute(select(PeriodScore).where(
        PeriodScore.subject_id == subject_id, PeriodScore.period_kind == str(period.kind),
        PeriodScore.period == period.key)).scalar_one_or_none()


def figure_out(row: PeriodScore) -> dict:
    return {"subject_id": row.subject_id, "node": row.node, "name": row.name, "subject_type": row.subject_type,
            "tier": row.tier, "period_kind": row.period_kind, "period": row.period, "score": row.score,
            "scale": row.scale, "routine": row.routine, "appraisal": row.appraisal, "grade": row.grade,
            "rank": row.rank, "peers": row.peers, "ranked": row.ranked, "movement": row.movement,
            "vetoed": row.vetoed, "veto_reasons": list(row.veto_reasons or []), "inputs": row.inputs,
            "policy": {"policy_id": row.policy_id, "version": row.policy_version}, "revision": row.revision,
            "computed_at": row.computed_at}


def ranking(session: Session, ctx: Context, period_key: str, tier: str | None, subject_type: str) -> dict:
    period = domain.parse_period(period_key, "query.period")
    if tier is None:
        below = domain.TIER_ORDER.index(ctx.home_tier) + 1
        tier = str(domain.TIER_ORDER[min(below, len(domain.TIER_ORDER) - 1)])
    rows = session.execute(select(PeriodScore).where(
        PeriodScore.period_kind == str(period.kind), PeriodScore.period == period.key, PeriodScore.tier == tier,
        PeriodScore.subject_type == subject_type).order_by(PeriodScore.position, PeriodScore.subject_id)).scalars().all()
    ranked = [figure_out(r) for r in rows if r.ranked]
    unranked = []
    scorer = Scorer(session, ctx)
    for r in rows:
        if r.ranked:
            continue
        out = figure_out(r)
        _, policy = scorer.policy_for(session.get(Subject, r.subject_id))
        rule = policy.ranking.tiers.get(Tier(tier))
        if r.score is None:
            out["why_unranked"] = "no score in this period"
        elif rule is None or period.kind not in policy.ranking.periods:
            out["why_unranked"] = f"policy {policy.policy_id} does not rank {period.kind} for tier {tier}"
        else:
            out["why_unranked"] = (f"{r.inputs} inputs, below the minimum sample of {rule.min_inspections} "
                                   f"(样本不足)")
        unranked.append(out)
    return {"period": period.key, "period_kind": str(period.kind), "tier": tier, "subject_type": subject_type,
            "scoring_node": ctx.home, "peers": len(ranked), "ranking": ranked, "below_minimum_sample": unranked}


def history(session: Session, subject_id: str, period_kind: str | None) -> dict:
    subject = resolve_subject(session, subject_id)
    stmt = select(PeriodScore).where(PeriodScore.subject_id == subject.subject_id)
    if period_kind:
        stmt = stmt.where(PeriodScore.period_kind == period_kind)
    rows = session.execute(stmt).scalars().all()
    order = {str(k): i for i, k in enumerate(domain.KIND_ORDER)}
    rows.sort(key=lambda r: (order[r.period_kind], r.period))
    return {"subject_id": subject.subject_id, "node": subject.node, "name": subject.name,
            "subject_type": subject.subject_type, "tier": subject.tier, "scores": [figure_out(r) for r in rows]}


def explain(session: Session, subject_id: str, period_key: str) -> dict:
    period = domain.parse_period(period_key)
    subject = resolve_subject(session, subject_id)
    row = score_row(session, subject.subject_id, period)
    if row is None:
        raise UnknownReference("period", f"no score for {subject.subject_id} in {period.key}")
    return {**figure_out(row), "explain": row.explain}
