"""Consuming events: projections of tasks, scores and inspections, and the notices they trigger."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from services.contracts.periods import InvalidPeriod, Period, PeriodKind
from sqlalchemy.orm import Session

from services.plumbing.sql import advisory_xact_lock
from services.contracts.events import EventEnvelope
from services.contracts.events.indicators import SatisfactionPublished, VectorVerdictPublished
from services.contracts.events.inspection import CheckMissed, InspectionReleased, InspectionSubmitted
from services.contracts.events.scoring import ChildFreshnessChanged, RankingPublished, ScorePublished, ScorePublishedV2
from services.contracts.events.tasks import (CoordinationRequested, TaskClosed, TaskEscalated, TaskOpened,
                                             TaskOverdue, TaskRef, TaskRelapsed, TaskStatusChanged)
from services.notify.models import (ChildStalenessRow, IndicatorRow, InspectionRelease, InspectionRow, MissedCheckRow, Notification, ScoreRow,
                                   TaskRow)
from services.notify.operations.common import NotifyContext
from services.notify.operations.notices import notify


# --- consuming events -----------------------------------------------------------------


def _task_facts(task: TaskRef) -> dict:
    return {"subject_id": task.responsible.subject_id, "subject_node": task.responsible.node,
            "inspecting_node": task.inspecting_node, "owner_node": task.owner_node,
            "severity": task.severity.value, "place_type": task.place.place_type.value if task.place else None,
            "status": task.status.value}


def _project_task(session: Session, task: TaskRef, at: datetime) -> TaskRow:
    # Events of one task arrive on several queues and may be handled at once.
    advisory_xact_lock(session, f"notify-task:{task.task_id}")
    row = session.get(TaskRow, task.task_id)
    if row is None:
        row = TaskRow(task_id=task.task_id, urge_count=0, last_event_at=at)
        session.add(row)
        newer = True
    else:
        newer = at >= row.last_event_at
    if newer:
        row.inspection_id, row.inspecting_node, row.owner_node = task.inspection_id, task.inspecting_node, task.owner_node
        row.subject_id, row.subject_node, row.subject_name = (task.responsible.subject_id, task.responsible.node,
                                                              task.responsible.name)
        row.place_name = task.place.name if task.place else None
        row.item_code, row.item_text = task.item_code, task.item_text
        row.category_code, row.category_name = task.category_code, task.category_name
        row.severity, row.status, row.deadline_at = task.severity.value, task.status.value, task.deadline_at
        row.last_event_at = at
    return row


def _inspected_at(session: Session, inspection_id: str) -> datetime | None:
    """An older producer's task_opened has no found_at: the inspection's time, if it came first."""
    row = session.get(InspectionRow, str(inspection_id))
    return row.inspected_at if row is not None else None


def apply_task_event(session: Session, ctx: NotifyContext, envelope: EventEnvelope, payload,
                     now: datetime | None = None) -> list[Notification]:
    task: TaskRef = payload.task
    row = _project_task(session, task, envelope.occurred_at)
    facts = _task_facts(task)
    extra: dict = {}
    if isinstance(payload, TaskOpened):
        row.opened_at = payload.opened_at
        row.evidence = [e.model_dump(mode="json") for e in payload.evidence]
        row.found_at = payload.found_at or _inspected_at(session, task.inspection_id) or payload.opened_at
        if payload.relapse_of:
            row.relapse_of, row.relapsed_at = payload.relapse_of, payload.opened_at
    elif isinstance(payload, TaskOverdue):
        row.overdue_since = min(filter(None, [row.overdue_since, payload.overdue_since]))
        row.urge_count = max(row.urge_count or 0, payload.urge_count)
        facts["urge_count"] = payload.urge_count
    elif isinstance(payload, TaskEscalated):
        row.escalated_at = payload.at
        facts["to_node"] = payload.to_node
    elif isinstance(payload, TaskClosed):
        row.closed_at = payload.closed_at
        row.after_evidence = [e.model_dump(mode="json") for e in payload.after_evidence]
        row.verified_by = payload.verified_by[:128]
        facts["on_time"] = payload.on_time
        extra["passed"] = True
    elif isinstance(payload, TaskRelapsed):
        row.relapse_of = payload.relapse_of
        row.relapsed_at = row.relapsed_at or envelope.occurred_at
    elif isinstance(payload, TaskStatusChanged):
        facts["from_status"], facts["to_status"] = payload.from_status.value, payload.to_status.value
        if payload.to_status.value == "closed":
            row.closed_at = row.closed_at or payload.at
        extra["passed"] = payload.to_status.value == "closed"
    session.flush()
    if getattr(payload, "historic", False):
        return []  # imported history: kept for bulletins and archives, told to nobody
    event = payload.model_dump(mode="json")
    return notify(session, ctx, envelope.event_type, str(envelope.event_id), envelope.event_type, facts,
                  {"event": event, "task": event["task"], **extra}, task.responsible.node, now)


def apply_coordination_requested(session: Session, ctx: NotifyContext, envelope: EventEnvelope,
                                 payload: CoordinationRequested, now: datetime | None = None) -> list[Notification]:
    """A child stack escalated a task to this tier: tell this tier's office it owes an answer.

    The task stays out of this tier's task projection (it is the child's ledger's task, and
    the bulletin counts only this ledger's tasks); the rules are this stack's own.
    """
    facts = {**_task_facts(payload.task), "owner_node": payload.from_node, "from_node": payload.from_node}
    event = payload.model_dump(mode="json")
    context = {"event": event, "task": event["task"], "child": ctx.name_of(payload.from_node)}
    return notify(session, ctx, "coordination_requested", str(envelope.event_id), envelope.event_type, facts,
                  context, ctx.home, now)


def periods_ago(kind, key: str, at: datetime) -> int | None:
    """How many periods of its kind lie between a score's period and the one it was computed
    in: 0 for the running month, 1 for last month, 6 for a month of history imported now."""
    try:
        period = Period.parse(key)
        current = Period.containing(PeriodKind(kind), at)
        if period.kind != current.kind:
            return None
    except (InvalidPeriod, ValueError):
        return None
    count = 0
    while current.key > period.key and count < 1000:
        current, count = current.previous(), count + 1
    return count


def _score_row(session: Session, scoring_node: str, subject, period_kind: str, period: str) -> ScoreRow:
    advisory_xact_lock(session, f"notify-score:{scoring_node}:{subject.subject_id}:{period}")
    row = session.execute(select(ScoreRow).where(
        ScoreRow.scoring_node == scoring_node, ScoreRow.subject_id == subject.subject_id,
        ScoreRow.period_kind == period_kind, ScoreRow.period == period)
        .with_for_update()).scalar_one_or_none()
    if row is None:
        row = ScoreRow(scoring_node=scoring_node, subject_id=subject.subject_id, period_kind=period_kind,
                       period=period, score=None, scale=100, grade=None, rank=None, peers=0, ranked=False,
                       movement=None, vetoed=False, veto_reasons=[], inputs=0, revision=0, ranking_version=0)
        session.add(row)
    row.subject_node, row.subject_name = subject.node, subject.name
    row.subject_type = subject.subject_type.value
    return row


def _notify_score(session: Session, ctx: NotifyContext, envelope: EventEnvelope, row: ScoreRow, event: dict,
                  now: datetime | None) -> list[Notification]:
    """Score rules see the subject's whole current figure: its own (score_published) and its
    place (ranking_published), whichever event changed it."""
    facts = {"subject_id": row.subject_id, "subject_node": row.subject_node, "period_kind": row.period_kind,
             "period": row.period, "ranked": row.ranked, "rank": row.rank, "vetoed": row.vetoed, "score": row.score,
             "rank_from_bottom": (row.peers - row.rank + 1) if row.ranked and row.rank else None,
             "periods_ago": periods_ago(PeriodKind(row.period_kind), row.period, row.computed_at)}
    return notify(session, ctx, "score_published", str(envelope.event_id), envelope.event_type, facts,
                  {"event": event}, row.subject_node, now)


def _figure(row: ScoreRow, scoring_node: str) -> dict:
    """The figure as templates know it (score_published v1's fields), from the kept row."""
    return {"scoring_node": scoring_node,
            "subject": {"subject_id": row.subject_id, "node": row.subject_node, "name": row.subject_name,
                        "subject_type": row.subject_type},
            "period_kind": row.period_kind, "period": row.period, "score": row.score, "scale": row.scale,
            "grade": row.grade, "rank": row.rank, "peers": row.peers, "ranked": row.ranked,
            "movement": row.movement, "vetoed": row.vetoed, "veto_reasons": list(row.veto_reasons or []),
            "inputs": row.inputs, "revision": row.revision}


def apply_score_published(session: Session, ctx: NotifyContext, envelope: EventEnvelope,
                          payload: ScorePublished | ScorePublishedV2,
                          now: datetime | None = None) -> list[Notification]:
    """Keep the highest revision of each (subject, period); only a current revision notifies.
    v1 carries the rank too; v2 only the subject's own figure (its rank comes in ranking_published)."""
    row = _score_row(session, payload.scoring_node, payload.subject, payload.period_kind.value, payload.period)
    if row.revision >= payload.revision:
        session.flush()
        return []  # a late, older revision
    row.score, row.scale, row.grade = payload.score, payload.scale, payload.grade
    row.vetoed, row.veto_reasons, row.inputs = payload.vetoed, list(payload.veto_reasons), payload.inputs
    row.revision, row.computed_at = payload.revision, payload.computed_at
    if isinstance(payload, ScorePublished) and not row.ranking_version:
        row.rank, row.peers, row.ranked, row.movement = payload.rank, payload.peers, payload.ranked, payload.movement
    session.flush()
    event = {**_figure(row, payload.scoring_node), **payload.model_dump(mode="json")}
    return _notify_score(session, ctx, envelope, row, event, now)


def apply_ranking_published(session: Session, ctx: NotifyContext, envelope: EventEnvelope, payload: RankingPublished,
                            now: datetime | None = None) -> list[Notification]:
    """A peer group's changed places: each subject's entry is applied when this ranking
    version is newer than the one last applied to it, and its score rules are evaluated."""
    out: list[Notification] = []
    for change in payload.changes:
        row = _score_row(session, payload.scoring_node, change.subject, payload.period_kind.value, payload.period)
        if row.ranking_version >= payload.version:
            continue  # a late, older ranking
        row.rank, row.ranked, row.movement, row.peers = change.rank, change.ranked, change.movement, payload.peers
        row.ranking_version = payload.version
        if row.computed_at is None:
            row.computed_at = payload.computed_at
        session.flush()
        out.extend(_notify_score(session, ctx, envelope, row, _figure(row, payload.scoring_node), now))
    return out


def apply_child_freshness_changed(session: Session, ctx: NotifyContext, envelope: EventEnvelope,
                                  payload: ChildFreshnessChanged) -> None:
    """Keep, per child stack, the latest change of its staleness (a late, older one is ignored)."""
    row = session.get(ChildStalenessRow, payload.child, with_for_update=True)
    if row is not None and row.changed_at >= payload.changed_at:
        return
    if row is None:
        row = ChildStalenessRow(child_node=payload.child)
        session.add(row)
    row.name, row.stale, row.reason = payload.name, payload.stale, payload.reason
    row.last_heard_at, row.changed_at = payload.last_heard_at, payload.changed_at
    session.flush()


def apply_indicator(session: Session, ctx: NotifyContext, envelope: EventEnvelope,
                    payload: VectorVerdictPublished | SatisfactionPublished) -> None:
    """Keep the latest figure of each area's measured indicator for the monthly bulletin."""
    if isinstance(payload, VectorVerdictPublished):
        key = ("vector", payload.area.node, payload.period, "")
        flagged, figure = payload.verdict == "fail", {"verdict": payload.verdict, "explanation": payload.explanation}
    else:
        key = ("satisfaction", payload.area.node, payload.period, payload.survey_id)
        flagged = payload.flagged
        figure = {"rate": payload.rate, "answers": payload.answers, "ci_low": payload.ci_low,
                  "ci_high": payload.ci_high, "threshold": payload.threshold}
    row = session.get(IndicatorRow, key, with_for_update=True)
    if row is not None and row.revision >= payload.revision:
        return  # a late, older revision
    if row is None:
        row = IndicatorRow(kind=key[0], area=key[1], period=key[2], source=key[3])
        session.add(row)
    row.name, row.flagged, row.figure, row.revision = payload.area.name, flagged, figure, payload.revision
    session.flush()


def subject_view(event: dict) -> dict:
    """An unannounced inspection as its subject may see it: never the inspectors' names or the
    private notes (a notice is rendered once for every recipient, so always this view)."""
    view = dict(event, inspectors=[])
    view["findings"] = [dict(f, note=None) for f in event.get("findings", [])]
    if "note" in view:
        view["note"] = None
    return view


def _notify_inspection(session: Session, ctx: NotifyContext, event_id: str, event_type: str, event: dict,
                       now: datetime | None) -> list[Notification]:
    if event.get("kind") == "unannounced":
        event = subject_view(event)
    facts = {"subject_id": event["subject"]["subject_id"], "subject_node": event["subject"]["node"],
             "inspecting_node": event["inspecting_node"], "kind": event["kind"], "score": event["score"],
             "findings": len(event["findings"]),
             "place_type": event["place"]["place_type"] if event.get("place") else None}
    return notify(session, ctx, "inspection_submitted", event_id, event_type, facts, {"event": event},
                  event["subject"]["node"], now)


def apply_inspection_submitted(session: Session, ctx: NotifyContext, envelope: EventEnvelope,
                               payload: InspectionSubmitted, now: datetime | None = None) -> list[Notification]:
    """An inspection's result notice. 暗访: an unannounced inspection is held until its office
    releases it (`inspection_released`, which may come first), then told without inspectors
    or notes."""
    key = str(payload.inspection_id)
    advisory_xact_lock(session, f"notify-inspection:{key}")
    row = session.get(InspectionRow, key)
    if row is None:
        row = InspectionRow(inspection_id=key, inspecting_node=payload.inspecting_node, kind=payload.kind.value,
                            subject_id=payload.subject.subject_id, subject_name=payload.subject.name,
                            score=payload.score, scale=payload.scale, findings=len(payload.findings),
                            inspected_at=payload.inspected_at, payload=payload.model_dump(mode="json"))
        session.add(row)
        session.flush()
    if payload.historic:
        return []  # imported history: no result notice months after the visit
    event = payload.model_dump(mode="json")
    if payload.kind.value == "unannounced" and session.get(InspectionRelease, key) is None:
        row.notice_held = {"event_id": str(envelope.event_id), "event_type": envelope.event_type, "payload": event}
        session.flush()
        return []
    return _notify_inspection(session, ctx, str(envelope.event_id), envelope.event_type, event, now)


def apply_inspection_released(session: Session, ctx: NotifyContext, envelope: EventEnvelope,
                              payload: InspectionReleased, now: datetime | None = None) -> list[Notification]:
    """The office released an unannounced inspection: send the notice held back, if the
    submission is here; otherwise remember the release for when it comes."""
    key = str(payload.inspection_id)
    advisory_xact_lock(session, f"notify-inspection:{key}")
    if session.get(InspectionRelease, key) is None:
        session.add(InspectionRelease(inspection_id=key, inspecting_node=payload.inspecting_node,
                                      released_at=payload.released_at))
        session.flush()
    row = session.get(InspectionRow, key)
    if row is None or not row.notice_held:
        return []
    held, row.notice_held = row.notice_held, None
    session.flush()
    # The submission's event id keeps the notice once per recipient, whatever is redelivered.
    return _notify_inspection(session, ctx, held["event_id"], held["event_type"], held["payload"], now)


def apply_check_missed(session: Session, ctx: NotifyContext, envelope: EventEnvelope, payload: CheckMissed,
                       now: datetime | None = None) -> list[Notification]:
    """A scheduled check was missed (漏检): tell the subject who answers for it and the office;
    kept for the bulletin, which counts it when the office's policy does (`counts`)."""
    key = f"{payload.schedule_id}:{payload.target_id}:{payload.period}"
    if session.get(MissedCheckRow, key) is None:
        session.add(MissedCheckRow(key=key, office_node=payload.office_node, subject_id=payload.subject.subject_id,
                                   subject_name=payload.subject.name, target_name=payload.target_name,
                                   frequency=payload.frequency, period=payload.period,
                                   period_start=payload.period_start, period_end=payload.period_end,
                                   counts=payload.counts))
        session.flush()
    facts = {"subject_id": payload.subject.subject_id, "subject_node": payload.subject.node,
             "frequency": payload.frequency, "kind": payload.frequency}
    return notify(session, ctx, "check_missed", str(envelope.event_id), envelope.event_type, facts,
                  {"event": payload.model_dump(mode="json")}, payload.subject.node, now)
