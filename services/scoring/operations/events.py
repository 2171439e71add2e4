"""Consuming other services' events: inspections, releases, ledger figures."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.contracts.errors import UnknownReference
from services.contracts.events import InvalidEvent
from services.contracts.events.inspection import InspectionReleased, InspectionSubmitted
from services.contracts.events.tasks import LedgerFiguresUpdated
from services.contracts.periods import Period, PeriodKind
from services.scoring import domain, metrics
from services.scoring.models import LedgerFigures, ReleasedInspection, ScoreInputRow, SubjectAlias
from services.scoring.operations.context import CHILD, Context, _now, lock_scoring
from services.scoring.operations.scorer import Scorer, resolve_subject


def scoring_subject_id(subject_type: str, subject_id: str, node: str) -> str:
    """A child unit is scored under its division code; others under their own id."""
    return node if subject_type == CHILD else subject_id


def apply_inspection(session: Session, ctx: Context, event_id: str, event: InspectionSubmitted) -> int:
    """Record one submitted inspection and update everything it affects; returns events published."""
    return apply_inspections(session, ctx, [(event_id, event)])


def batch_correlation(ids: list[str]) -> str:
    """The correlation id of what a batch publishes: its first input, and how many more."""
    return ids[0] if len(ids) == 1 else f"{ids[0]}+{len(ids) - 1}"


def apply_inspections(session: Session, ctx: Context, events: list[tuple[str, InspectionSubmitted]]) -> int:
    """Record submitted inspections and update everything they affect, together: each
    subject and period is recomputed once, each touched peer group re-ranked once, each
    changed figure and ranking published once. Returns the events published."""
    lock_scoring(session)
    ids = [str(event.inspection_id) for _, event in events]
    known = set(session.execute(select(ScoreInputRow.inspection_id).where(
        ScoreInputRow.inspection_id.in_(ids))).scalars())
    scorer = Scorer(session, ctx, correlation_id=batch_correlation(ids))
    dirty: dict[Period, set[str]] = {}
    aliases = set(session.execute(select(SubjectAlias.alias).where(SubjectAlias.alias.in_(
        [event.subject.subject_id for _, event in events]))).scalars())
    for event_id, event in events:
        inspection_id = str(event.inspection_id)
        if inspection_id in known:
            continue  # the same inspection under another event id changes nothing either
        known.add(inspection_id)
        ref = event.subject
        sid = scoring_subject_id(str(ref.subject_type), ref.subject_id, ref.node)
        scorer.ensure_subject(sid, ref.node, ref.name, str(ref.subject_type))
        if sid != ref.subject_id and ref.subject_id not in aliases:
            session.add(SubjectAlias(alias=ref.subject_id, subject_id=sid))
            aliases.add(ref.subject_id)
        periods = domain.periods_of(event.inspected_at)
        keys = {str(p.kind): p.key for p in periods}
        session.add(ScoreInputRow(
            inspection_id=inspection_id, event_id=event_id, subject_id=sid,
            inspection_subject_id=ref.subject_id, inspecting_node=event.inspecting_node, kind=str(event.kind),
            score=event.score, scale=event.scale, inspected_at=event.inspected_at, inspectors=list(event.inspectors),
            created_at=_now(), **keys))
        for period in periods:
            dirty.setdefault(period, set()).add(sid)
    if not dirty:
        return 0
    session.flush()
    for period, subjects in dirty.items():
        scorer.refresh_many(subjects, [period])
    metrics.EVENTS_PER_BATCH.labels("inspection_submitted").observe(len(events))
    return scorer.finish("inspection")


def apply_inspection_released(session: Session, event_id: str, event: InspectionReleased) -> bool:
    """An unannounced inspection made known to its subject: from now on its explanation shows
    it to the subject side (never its inspectors). It may come before the submission; the
    figures do not change either way. Returns whether it was new."""
    inspection_id = str(event.inspection_id)
    if session.get(ReleasedInspection, inspection_id) is not None:
        return False
    session.add(ReleasedInspection(inspection_id=inspection_id, inspecting_node=event.inspecting_node,
                                   subject_id=event.subject.subject_id, released_at=event.released_at,
                                   event_id=event_id))
    session.flush()
    return True


def apply_ledger_figures(session: Session, ctx: Context, event_id: str, event: LedgerFiguresUpdated) -> int:
    """Store a subject's ledger figures; re-evaluate the overdue veto for the month and longer periods."""
    return apply_ledger_figures_many(session, ctx, [(event_id, event)])


def apply_ledger_figures_many(session: Session, ctx: Context, events: list[tuple[str, LedgerFiguresUpdated]]) -> int:
    """Store subjects' ledger figures; re-evaluate the overdue veto for the months and longer
    periods whose figures can change. What scores read of a ledger is its overdue count and
    on-time rate: an update that changes neither (most do: one task opened or closed on
    time) is stored and changes nothing else. Returns the events published."""
    lock_scoring(session)
    dirty: dict[Period, set[str]] = {}
    ids = []
    for event_id, event in events:
        month = Period.parse(event.period)
        if month.kind != PeriodKind.month:
            raise InvalidEvent(f"ledger period {event.period!r} is not a month")
        row = session.get(LedgerFigures, (event.subject_id, event.period))
        if row is not None and row.computed_at >= event.computed_at:
            continue  # an older figure arriving late
        scored_before = None if row is None else (row.overdue_open, row.on_time_rate)
        if row is None:
            row = LedgerFigures(subject_id=event.subject_id, period=event.period)
            session.add(row)
        row.node, row.overdue_open, row.on_time_rate, row.close_rate = (event.node, event.overdue_open,
                                                                        event.on_time_rate, event.close_rate)
        row.opened, row.closed, row.relapses, row.computed_at = (event.opened, event.closed, event.relapses,
                                                                 event.computed_at)
        if scored_before == (event.overdue_open, event.on_time_rate):
            continue
        session.flush()
        try:
            subject = resolve_subject(session, event.subject_id)
        except UnknownReference:
            continue  # kept: it counts once the subject's first inspection arrives
        ids.append(event_id)
        for period in domain.covering_periods(month):
            dirty.setdefault(period, set()).add(subject.subject_id)
    session.flush()
    if not dirty:
        return 0
    scorer = Scorer(session, ctx, correlation_id=batch_correlation(ids))
    for period, subjects in dirty.items():
        scorer.refresh_many(subjects, [period])
    metrics.EVENTS_PER_BATCH.labels("ledger_figures_updated").observe(len(events))
    return scorer.finish("ledger")


__all__ = ['scoring_subject_id', 'apply_inspection', 'apply_inspections', 'batch_correlation', 'apply_inspection_released',
           'apply_ledger_figures', 'apply_ledger_figures_many']
