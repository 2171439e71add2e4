"""The monthly bulletin (月度通报) and the campaign newsletter (创卫简报)."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.plumbing.sql import advisory_xact_lock
from services.contracts.errors import UnknownReference
from services.contracts.periods import CST, InvalidPeriod, Period, PeriodKind
from services.notify import metrics
from services.notify.bulletin import CHILD_UNIT, IndicatorFact, ScoreFact, TaskFact, assemble_bulletin, period_window
from services.notify.bulletin import public_board as public_board_data
from services.notify.domain import NotifyRuleViolation
from services.notify.models import Bulletin, ChildStalenessRow, IndicatorRow, MissedCheckRow, ScoreRow, TaskRow
from services.notify.schemas import BoardOut, BulletinOut, NewsletterIn
from services.contracts.identity import ADMINISTRATOR, Principal
from services.notify.operations.common import NotifyContext, _now, node_chain
from services.notify.operations.notices import notify
from services.notify.operations.rules import effective_rules, template_overrides


# --- bulletins ------------------------------------------------------------------------


def bulletin_out(b: Bulletin, with_data: bool = False) -> BulletinOut:
    return BulletinOut(bulletin_id=b.id, node=b.node, period=b.period, revision=b.revision, trigger=b.trigger,
                       title=b.title, generated_at=b.generated_at, requested_by=b.requested_by,
                       data=b.data if with_data else None)


def _score_facts(session: Session, node: str, period: str) -> list[ScoreFact]:
    rows = session.execute(select(ScoreRow).where(ScoreRow.scoring_node == node, ScoreRow.period_kind == "month",
                                                  ScoreRow.period == period)).scalars()
    stale = dict(session.execute(select(ChildStalenessRow.child_node, ChildStalenessRow.reason)
                                 .where(ChildStalenessRow.stale.is_(True))).all())
    return [ScoreFact(r.subject_id, r.subject_name, r.subject_node, r.score, r.scale, r.rank, r.ranked, r.movement,
                      r.grade, r.vetoed, tuple(r.veto_reasons or ()), r.inputs, r.subject_type,
                      stale.get(r.subject_node) if r.subject_type == CHILD_UNIT else None) for r in rows]


def _task_facts_for(session: Session, start: datetime, end: datetime) -> list[TaskFact]:
    # A task belongs to the month its problem was found in (not the day it was entered), or
    # to any month it was overdue or closed in.
    found = func.coalesce(TaskRow.found_at, TaskRow.opened_at)
    rows = session.execute(select(TaskRow).where(
        found.is_(None) | (found < end),
        (TaskRow.closed_at.is_(None)) | (TaskRow.closed_at >= start))).scalars()
    return [TaskFact(r.task_id, r.subject_id, r.subject_name, r.place_name, r.item_text, r.category_code,
                     r.category_name, r.severity, r.status, r.deadline_at, r.opened_at,
                     r.overdue_since, r.urge_count or 0, r.closed_at, r.relapse_of,
                     r.relapsed_at, r.found_at) for r in rows]


def _indicator_facts(session: Session, period: str) -> list[IndicatorFact]:
    rows = session.execute(select(IndicatorRow).where(IndicatorRow.period == period)).scalars()
    return [IndicatorFact(r.kind, r.area, r.name, r.flagged, r.figure) for r in rows]


def _missed_checks(session: Session, node: str, start: datetime, end: datetime) -> int:
    return session.execute(select(func.count()).select_from(MissedCheckRow).where(
        MissedCheckRow.office_node == node, MissedCheckRow.counts.is_(True),
        MissedCheckRow.period_end > start, MissedCheckRow.period_end <= end)).scalar_one()


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
    if end > now:
        # The bulletin goes to the public board and to every subject ranked: a month's figures
        # are published once the month has ended (Beijing time), never half-way (issue 27).
        raise NotifyRuleViolation("period", f"本月尚未结束，不能发布本月通报（{period.key}于北京时间"
                                            f"{end.astimezone(CST):%Y-%m-%d %H:%M}结束） "
                                            f"(the month {period.key} has not ended: no bulletin for it yet)")
    node = ctx.home
    document, _ = effective_rules(session, node)
    data = assemble_bulletin(period.key, node, ctx.name_of(node), _score_facts(session, node, period.key),
                             _score_facts(session, node, period.previous().key), _task_facts_for(session, start, end),
                             document.bulletin, now, indicators=_indicator_facts(session, period.key),
                             missed_checks=_missed_checks(session, node, start, end))
    b = data.to_dict()
    rendered, problem = ctx.templates.render_safely("bulletin", {"b": b, "office": ctx.name_of(node), "sent_at": now},
                                                    node_chain(node), template_overrides(session, node))
    if problem:
        metrics.TEMPLATE_FALLBACKS.labels("bulletin").inc()
    advisory_xact_lock(session, f"notify-bulletin:{node}:{period.key}")
    latest = session.execute(select(func.max(Bulletin.revision)).where(
        Bulletin.node == node, Bulletin.period == period.key)).scalar_one()
    bulletin = Bulletin(id=str(uuid.uuid4()), node=node, period=period.key, revision=(latest or 0) + 1,
                        trigger=trigger, title=rendered.title, data=b, markdown=rendered.markdown,
                        html=rendered.html, generated_at=now, requested_by=requested_by[:128] if requested_by else None)
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
        metrics.BULLETIN_MISSING.set(0)
        return None
    period = Period.containing(PeriodKind.month, local).previous()
    advisory_xact_lock(session, f"notify-bulletin:{ctx.home}:{period.key}")
    # Made at or after the end only (one mid-month is refused since issue 27; older ones missed the end).
    _, end = period_window(period)
    exists = session.execute(select(Bulletin.id).where(Bulletin.node == ctx.home, Bulletin.period == period.key,
                                                       Bulletin.generated_at >= end).limit(1)).first()
    if exists:
        metrics.BULLETIN_MISSING.set(0)
        return None
    # Due and missing until the caller's transaction commits (it then sets 0): a failing run stays visible.
    metrics.BULLETIN_MISSING.set(1)
    return generate_bulletin(session, ctx, period.key, trigger="schedule", requested_by="schedule", now=now)


def request_bulletin(session: Session, ctx: NotifyContext, period_key: str, principal: Principal, send: bool = True,
                     now: datetime | None = None) -> Bulletin:
    """A bulletin on demand: the administrators of this stack's office produce it."""
    principal.require(ADMINISTRATOR, ctx.home, "node")
    return generate_bulletin(session, ctx, period_key, "api", principal.label, send, now)


def get_bulletin(session: Session, bulletin_id: str, principal: Principal | None = None) -> Bulletin:
    b = session.get(Bulletin, bulletin_id)
    if b is None:
        raise UnknownReference("bulletin_id", f"unknown bulletin {bulletin_id!r}")
    if principal is not None:
        principal.require_sees(b.node, "bulletin_id")
    return b


def list_bulletins(session: Session, node: str, period: str | None, limit: int, offset: int,
                   principal: Principal | None = None) -> list[BulletinOut]:
    """This office's bulletins, for callers whose subtree includes it."""
    if principal is not None and not principal.sees(node):
        return []
    stmt = select(Bulletin).where(Bulletin.node == node).order_by(Bulletin.period.desc(), Bulletin.revision.desc())
    if period:
        stmt = stmt.where(Bulletin.period == period)
    return [bulletin_out(b) for b in session.execute(stmt.limit(limit).offset(offset)).scalars()]


def public_board(session: Session, node: str, office: str) -> BoardOut | None:
    """The latest released ranking of this office, for anyone: only what an issued bulletin
    published (its latest month, latest revision), trimmed to ranks and names. Nothing
    computed since, nor anything not yet issued, ever shows here. None before the first."""
    b = session.execute(select(Bulletin).where(Bulletin.node == node).order_by(
        Bulletin.period.desc(), Bulletin.revision.desc()).limit(1)).scalars().first()
    if b is None:
        return None
    return BoardOut(node=b.node, office=office, period=b.period, revision=b.revision, title=b.title,
                    released_at=b.generated_at, **public_board_data(b.data or {}))


# --- newsletters ----------------------------------------------------------------------


def send_newsletter(session: Session, ctx: NotifyContext, data: NewsletterIn, principal: Principal,
                    now: datetime | None = None) -> tuple[str, int]:
    principal.require(ADMINISTRATOR, ctx.home, "node")
    now = now or _now()
    newsletter_id = str(uuid.uuid4())
    ranked: list[str] = []
    if data.period:
        ranked = [s.subject_id for s in _score_facts(session, ctx.home, data.period)]
    facts = {"ranked_subject_ids": ranked, "period": data.period}
    sent = notify(session, ctx, "newsletter", newsletter_id, "newsletter", facts,
                  {"event": data.model_dump(mode="json")}, ctx.home, now)
    return newsletter_id, len(sent)
