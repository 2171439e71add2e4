"""The measured indicators in a scoring policy (issue 17): residents' satisfaction (群众满意率)
as a weighted source, vector density (病媒生物密度) as a veto (一票否决). Both are off unless
the policy in force says otherwise; the shipped street and city policies say nothing, so
their figures are exactly what they were.

Whose score: an indicator's `area` (a division: node and name) is the area as responsible
subject (属地管理), i.e. the child unit scored under its division code, the same subject that
inspections of that community or street feed (`ops.scoring_subject_id` scores a child unit
under its node, and `SubjectAlias` maps the inspection service's id to it; the area's id *is*
the node, so no alias is needed). The home node's own area is the stack's own figure. The
policy that decides is the evaluating office's (`evaluating_node`: a community's street).
A department or area unit located in the area is not the area: the indicators never touch it.

Satisfaction (`satisfaction_published`, one survey wave's rate for one area). Like a case from
intake (`cases.py`), it becomes one score input, of kind `satisfaction_survey`
(`domain.IndicatorKind`), for the area's subject:

- score = rate × scale, on a scale of 100 (a rate of 0.85 is 85 of 100, 850 on a 1000-point
  policy); a wave without answers (rate None) is no input;
- it counts in the survey's period and in every longer period containing it (a month's wave
  in the month, its quarter, half year and year; never in a week; for a mean-of-months long
  period, in the first month of the survey's period);
- the policy's source weights weigh it like any other source, e.g. `{name: 群众满意率,
  kinds: [satisfaction_survey], weight: 10}`; a policy whose source weights do not name the
  kind ignores it entirely (`domain.policy_inputs`), and then scoring neither creates the
  area's subject nor recomputes anything;
- its id is derived from the survey and the area (uuid5), so each wave counts once per area;
  a higher `revision` replaces the score (or removes the input if the rate is gone), a lower
  or equal one changes nothing, whatever the order events arrive in;
- only the stack's own surveys count (`surveying_node` is the home node, as a case counts in
  the stack whose intake took it).

Vector density (`vector_verdict_published`, one area's verdict pass | fail | incomplete for a
month): the highest revision per area and month is kept (`VectorVerdictInput`). A policy with
`vetoes: {vector_density: {verdicts: [fail]}}` vetoes the area's figure for that month and
the quarter, half year and year containing it while that latest verdict is `fail`, with the
reason "病媒生物密度未达标（2026-11）"; a later `pass` revision lifts it. The verdict is kept
even for an area not scored yet (it counts once its first input arrives); only figures that
exist are recomputed, so a verdict never creates an empty figure.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.contracts.events import InvalidEvent
from services.contracts.events.indicators import SatisfactionPublished, VectorVerdictPublished
from services.contracts.nodes import is_within
from services.contracts.periods import InvalidPeriod, Period, PeriodKind
from services.scoring import domain
from services.scoring import operations as ops
from services.scoring.models import PeriodScore, ScoreInputRow, Subject, VectorVerdictInput

SATISFACTION_KIND = domain.IndicatorKind.satisfaction_survey.value
SATISFACTION_SCALE = 100
# uuid5 namespace of satisfaction inputs (fixed: the ids must not change).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:chuangwei:scoring:satisfaction_published")


def satisfaction_input_id(survey_id: str, area: str) -> str:
    """One input per survey wave and area."""
    return str(uuid.uuid5(NAMESPACE, f"{survey_id}|{area}"))


def _period(key: str) -> Period:
    try:
        return Period.parse(key)
    except InvalidPeriod as exc:
        raise InvalidEvent(f"period {key!r}: {exc}") from None


def _area_subject(session: Session, node: str, name: str) -> Subject:
    """The area's subject as stored, or an unsaved one to ask for the policy in force."""
    sid = ops.scoring_subject_id(ops.CHILD, node, node)
    return session.get(Subject, sid) or Subject(subject_id=sid, node=node, name=name, subject_type=ops.CHILD)


def _existing_periods(session: Session, subject_id: str, periods: list[Period]) -> list[Period]:
    """The periods among `periods` for which the subject already has a figure."""
    have = set(session.execute(select(PeriodScore.period_kind, PeriodScore.period).where(
        PeriodScore.subject_id == subject_id)).tuples())
    return [p for p in periods if (str(p.kind), p.key) in have]


def apply_satisfaction_published(session: Session, ctx: ops.Context, event_id: str,
                                 event: SatisfactionPublished) -> int:
    """Record or revise one area's satisfaction input; returns the events published."""
    area = event.area.node
    if event.surveying_node != ctx.home or not is_within(area, ctx.home):
        return 0  # another office's survey: it counts there
    period = _period(event.period)
    input_id = satisfaction_input_id(event.survey_id, area)
    row = session.get(ScoreInputRow, input_id)
    if row is not None and event.revision <= (row.revision or 0):
        return 0  # redelivered or older: the input stands
    score = None if event.rate is None else round(event.rate * SATISFACTION_SCALE, 6)
    subject = _area_subject(session, area, event.area.name)
    periods = domain.covering_periods(period)
    if row is None:
        if score is None:
            return 0  # no answers, no input
        keys = {str(kind): "" for kind in domain.KIND_ORDER}  # "" never matches a period key
        keys.update({str(p.kind): p.key for p in periods})
        row = ScoreInputRow(
            inspection_id=input_id, event_id=event_id, subject_id=subject.subject_id,
            inspection_subject_id=area, inspecting_node=event.surveying_node, kind=SATISFACTION_KIND,
            score=score, scale=SATISFACTION_SCALE, inspected_at=period.instants()[0], inspectors=[],
            created_at=ops._now(), revision=event.revision, **keys)
        session.add(row)
    elif score is None:
        session.delete(row)
    else:
        row.score, row.scale, row.event_id, row.revision = score, SATISFACTION_SCALE, event_id, event.revision
    session.flush()
    scorer = ops.Scorer(session, ctx, correlation_id=f"survey:{event.survey_id}")
    _, policy = scorer.policy_for(subject)
    if SATISFACTION_KIND not in domain.weighted_kinds(policy):
        return 0  # kept, but this policy does not weigh it: nothing to recompute
    if session.get(Subject, subject.subject_id) is None:
        # A new subject takes the area's name; a known one keeps its own (inspections name it).
        scorer.ensure_subject(subject.subject_id, area, event.area.name, ops.CHILD)
    scorer.refresh(subject.subject_id, periods)
    return scorer.finish("satisfaction")


def apply_vector_verdict_published(session: Session, ctx: ops.Context, event_id: str,
                                   event: VectorVerdictPublished) -> int:
    """Keep an area's latest vector density verdict for a month and re-evaluate the veto of
    the figures it reaches; returns the events published."""
    area = event.area.node
    if event.evaluating_node != ctx.home or not is_within(area, ctx.home):
        return 0  # another office's verdict
    month = _period(event.period)
    if month.kind != PeriodKind.month:
        raise InvalidEvent(f"vector density period {event.period!r} is not a month")
    sid = ops.scoring_subject_id(ops.CHILD, area, area)
    row = session.get(VectorVerdictInput, (sid, month.key))
    if row is not None and event.revision <= row.revision:
        return 0  # redelivered or older: the highest revision stands
    before = None if row is None else row.verdict
    if row is None:
        row = VectorVerdictInput(subject_id=sid, period=month.key)
        session.add(row)
    row.name, row.evaluating_node, row.verdict, row.revision = (event.area.name, event.evaluating_node,
                                                                event.verdict, event.revision)
    row.event_id, row.computed_at, row.updated_at = event_id, event.computed_at, datetime.now(timezone.utc)
    session.flush()
    if before == event.verdict:
        return 0
    periods = _existing_periods(session, sid, domain.covering_periods(month))
    if not periods:
        return 0  # no figure to veto yet: the verdict counts once the area's first input arrives
    scorer = ops.Scorer(session, ctx, correlation_id=f"vector:{area}:{month.key}")
    scorer.refresh(sid, periods)
    return scorer.finish("vector_density")
