"""The review archive (创卫档案) of a span and content area, from this service's records."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.contracts.checklists import TEN_AREAS
from services.contracts.identity import ADMINISTRATOR, Principal
from services.contracts.periods import InvalidPeriod, Period, PeriodKind
from services.notify.archive import ArchiveInput, build_archive, span_window
from services.notify.domain import NotifyRuleViolation
from services.notify.models import Bulletin, InspectionRow, ScoreRow, TaskRow
from services.notify.operations.common import NotifyContext
from services.notify.pdf import render_bulletin_pdf

MAX_MONTHS = 60


def _month(key: str, field: str) -> Period:
    try:
        period = Period.parse(key)
    except InvalidPeriod as exc:
        raise NotifyRuleViolation(field, str(exc)) from None
    if period.kind != PeriodKind.month:
        raise NotifyRuleViolation(field, "a month (YYYY-MM)")
    return period


def review_archive(session: Session, ctx: NotifyContext, principal: Principal, since: str, until: str,
                   area: str | None) -> tuple[bytes, dict]:
    """Every inspection, task, close-out, ranking and bulletin of the office in the span (and
    area), with an index and a completeness report: the office's administrators only (the
    archive names the inspectors of every 暗访)."""
    principal.require(ADMINISTRATOR, ctx.home, "node")
    first, last = _month(since, "query.since"), _month(until, "query.until")
    if last.key < first.key:
        raise NotifyRuleViolation("query.until", "the span ends before it begins")
    if int(last.key[:4]) * 12 + int(last.key[5:]) - int(first.key[:4]) * 12 - int(first.key[5:]) >= MAX_MONTHS:
        raise NotifyRuleViolation("query.until", f"at most {MAX_MONTHS} months in one archive")
    if area is not None and area not in TEN_AREAS:
        raise NotifyRuleViolation("query.area", f"one of {sorted(TEN_AREAS)}")
    start, end = span_window(first, last)
    rows = session.execute(select(InspectionRow).where(
        InspectionRow.inspected_at >= start, InspectionRow.inspected_at < end,
        InspectionRow.payload.is_not(None))).scalars().all()
    inspections = [r.payload for r in rows]
    checklist_of = {r.inspection_id: r.payload["checklist"]["code"] for r in rows}
    found = func.coalesce(TaskRow.found_at, TaskRow.opened_at)
    tasks = [{"task_id": t.task_id, "inspection_id": t.inspection_id, "subject_name": t.subject_name,
              "place_name": t.place_name, "item_text": t.item_text, "category_code": t.category_code,
              "category_name": t.category_name, "checklist_code": checklist_of.get(t.inspection_id),
              "found_at": (t.found_at or t.opened_at).isoformat() if (t.found_at or t.opened_at) else None,
              "deadline_at": t.deadline_at.isoformat(), "status": t.status,
              "closed_at": t.closed_at.isoformat() if t.closed_at else None, "verified_by": t.verified_by,
              "evidence": t.evidence or [], "after_evidence": t.after_evidence or [], "relapse_of": t.relapse_of}
             for t in session.execute(select(TaskRow).where(found >= start, found < end)).scalars()]
    scores = [{"period": s.period, "subject_name": s.subject_name, "subject_node": s.subject_node, "score": s.score,
               "rank": s.rank, "peers": s.peers, "vetoed": s.vetoed, "veto_reasons": s.veto_reasons}
              for s in session.execute(select(ScoreRow).where(
                  ScoreRow.scoring_node == ctx.home, ScoreRow.period_kind == "month",
                  ScoreRow.period >= first.key, ScoreRow.period <= last.key)).scalars()
              if not (s.subject_type == "child_unit" and s.subject_node == ctx.home)]
    bulletins = [{"period": b.period, "revision": b.revision, "data": b.data}
                 for b in session.execute(select(Bulletin).where(
                     Bulletin.node == ctx.home, Bulletin.period >= first.key, Bulletin.period <= last.key)).scalars()]
    data = ArchiveInput(ctx.home, ctx.name_of(ctx.home), first, last, area, inspections, tasks, scores, bulletins)
    return build_archive(data, render_bulletin_pdf)
