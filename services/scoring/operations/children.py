"""Child tiers: their reported aggregates as this tier's inputs, and when each was last heard from."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.contracts.events import InvalidEvent
from services.contracts.events.scoring import ChildFreshnessChanged, ScorePublished, ScorePublishedV2, StackHeartbeat
from services.contracts.identity import OFFICE_ROLES
from services.contracts.nodes import is_within
from services.contracts.periods import CST, Period, PeriodKind
from services.contracts.tiers import UP_EXCHANGE, routing_key as tier_routing_key
from services.scoring import domain, metrics
from services.scoring.models import ChildFreshness, Subject
from services.scoring.operations.context import CHILD, PrincipalLike, Context, _now, lock_scoring
from services.scoring.operations.events import batch_correlation
from services.scoring.operations.scorer import Scorer, upsert_child_score


def apply_child_score(session: Session, ctx: Context, parent: str, child: str, name: str, period: Period,
                      score: float | None, scale: int, inputs: int, source: str, revision: int,
                      correlation_id: str | None = None, scorer: Scorer | None = None) -> bool:
    """A child's score from outside this stack's own computation (a child stack's
    score_published, issue 6): store it if newer and recompute the parent chain. With a
    `scorer` (a batch), the caller re-ranks and publishes once for all (`scorer.finish`)."""
    lock_scoring(session)
    if not upsert_child_score(session, parent, child, name, period, score, scale, inputs, source, revision):
        return False
    batch = scorer
    scorer = scorer or Scorer(session, ctx, correlation_id=correlation_id)
    if session.get(Subject, parent) is None:  # keep the name this tier knows it by (no flip-flop with the tree's)
        scorer.ensure_subject(parent, parent, name if parent == child else ctx.name_of(parent), CHILD)
    scorer.refresh(parent, [period])
    if batch is None:
        scorer.finish("child_score")
    return True


def apply_child_reports(session: Session, ctx: Context, reports: list[tuple[datetime, ScorePublished]],
                        now: datetime | None = None) -> list[bool]:
    """Child stacks' aggregates arrived together (a burst over federation): each stored as
    `apply_child_report` does, then one re-ranking and one publication for all."""
    lock_scoring(session)
    scorer = Scorer(session, ctx, correlation_id=batch_correlation(sorted({str(e.subject.node) for _, e in reports})))
    changed = [apply_child_report(session, ctx, occurred_at, event, now, scorer=scorer) for occurred_at, event in reports]
    scorer.finish("child_score")
    return changed


def apply_child_report(session: Session, ctx: Context, envelope_occurred_at: datetime,
                       event: ScorePublished | ScorePublishedV2, now: datetime | None = None,
                       scorer: Scorer | None = None) -> bool:
    """A child stack's own aggregate (its score_published for its home node, arrived over
    federation) becomes that child's input here: the highest revision wins, an older one
    arriving late is ignored. Returns whether anything changed."""
    child = event.subject.node
    if event.subject.node != event.scoring_node or event.subject.subject_type != CHILD:
        return False  # only a tier's own aggregate travels up; anything else is not for us
    if child == ctx.home or not is_within(child, ctx.home):
        raise InvalidEvent(f"score of {child} is not from a child of this tier ({ctx.home})")
    _heard_from(session, ctx, child, event.subject.name, envelope_occurred_at, "score_published", now)
    period = Period(PeriodKind(event.period_kind), event.period)
    # Stored as the child's own input (parent = child): the child's subtree as it reports it,
    # blended with this tier's own inspections of the child by the policy's roll-up rule.
    return apply_child_score(session, ctx, child, child, event.subject.name, period, event.score, event.scale,
                             event.inputs, source=f"{domain.REPORT_SOURCE}{child}", revision=event.revision,
                             correlation_id=str(event.subject.node), scorer=scorer)


def _heard_from(session: Session, ctx: Context, child: str, name: str, occurred_at: datetime, event_type: str,
                now: datetime | None) -> None:
    now = now or _now()
    fresh = session.get(ChildFreshness, child)
    if fresh is None:
        fresh = ChildFreshness(child_node=child, name=name, events=0, last_event_type="", stale=False)
        session.add(fresh)
    fresh.name, fresh.last_heard_at = name, now
    fresh.last_event_at, fresh.last_event_type = occurred_at, event_type
    fresh.events = (fresh.events or 0) + 1
    metrics.CHILD_LAST_HEARD.labels(child).set(now.timestamp())
    if fresh.stale:  # heard again: its figures are current from now on
        _publish_staleness(session, ctx, fresh, None, stale_after_hours(Scorer(session, ctx), child), now)


def silence(fresh: ChildFreshness, hours: float, now: datetime) -> str | None:
    """Why the figures built from a child's reports may no longer be true (it has been
    silent for longer than `hours`), or None."""
    if now - fresh.last_heard_at <= timedelta(hours=hours):
        return None
    since = fresh.last_heard_at.astimezone(CST).strftime("%Y-%m-%d %H:%M")
    return f"{fresh.name} ({fresh.child_node}) 自 {since} 起未上报"


def stale_after_hours(scorer: Scorer, child: str) -> float:
    """The silence the policy that evaluates `child` allows (its parent's, i.e. this tier's)."""
    _, policy = scorer.policy_for(Subject(subject_id=child, node=child, subject_type=CHILD))
    return policy.rollup.stale_after_hours


def _publish_staleness(session: Session, ctx: Context, fresh: ChildFreshness, reason: str | None, hours: float,
                       now: datetime) -> None:
    fresh.stale = reason is not None
    ctx.outbox.add(session, ChildFreshnessChanged(
        child=fresh.child_node, name=fresh.name, stale=fresh.stale, reason=reason, last_heard_at=fresh.last_heard_at,
        stale_after_hours=hours, changed_at=now), correlation_id=fresh.child_node)


def publish_staleness_changes(session: Session, ctx: Context, now: datetime | None = None) -> int:
    """Publish child_freshness_changed for each child whose silence crossed the policy's
    limit since the last look (either way); returns how many. Safe in every instance at
    once: rows another instance is looking at are skipped, and a change is published only
    where the stored flag differs."""
    now, scorer = now or _now(), Scorer(session, ctx)
    changed = 0
    for fresh in session.execute(select(ChildFreshness).order_by(ChildFreshness.child_node)
                                 .with_for_update(skip_locked=True)).scalars():
        hours = stale_after_hours(scorer, fresh.child_node)
        reason = silence(fresh, hours, now)
        if (reason is not None) != bool(fresh.stale):
            _publish_staleness(session, ctx, fresh, reason, hours, now)
            changed += 1
    return changed


def send_heartbeat(session: Session, ctx: Context, now: datetime | None = None) -> None:
    """Tell the parent tier (over federation) that this stack is up and its link works, so
    that a quiet stack's figures are not taken for stale ones."""
    ctx.outbox.add(session, StackHeartbeat(node=ctx.home, name=ctx.name_of(ctx.home), sent_at=now or _now()),
                   exchange=UP_EXCHANGE, routing_key=tier_routing_key("stack_heartbeat", ctx.home))


def apply_child_heartbeat(session: Session, ctx: Context, envelope_occurred_at: datetime, event: StackHeartbeat,
                          now: datetime | None = None) -> bool:
    """A child stack's heartbeat: only when this tier last heard from it changes."""
    child = event.node
    if child == ctx.home or not is_within(child, ctx.home):
        raise InvalidEvent(f"heartbeat of {child} is not from a child of this tier ({ctx.home})")
    _heard_from(session, ctx, child, event.name, envelope_occurred_at, "stack_heartbeat", now)
    return True


def child_freshness(session: Session, ctx: Context, principal: PrincipalLike | None = None,
                    now: datetime | None = None, expected: tuple[str, ...] = ()) -> list[dict]:
    """Each child stack with when it was last heard from; expected children never heard from too.
    For the office's own roles (not its children's)."""
    if principal is not None:
        principal.require(OFFICE_ROLES, ctx.home, "node")
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


__all__ = ['apply_child_score', 'apply_child_report', 'apply_child_reports', 'child_freshness', 'send_heartbeat',
           'apply_child_heartbeat', 'silence', 'stale_after_hours', 'publish_staleness_changes']
