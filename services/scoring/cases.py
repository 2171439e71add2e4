"""The city scheme's 数字城管 source from intake's cases (issue 16).

Each `case_handled` becomes one score input of its source's kind (digital_city or
citizen_report) for the responsible subject, in the periods of the case's report, with the
points the subject's policy gives its outcome (`case_points`; shipped: closed on time full
marks, closed late half, overdue none), fixed when the outcome arrives. The
policy's source weights then treat it like any other input: the city scheme weighs the
source's mean at 10 % beside 暗访 40 % and 明查 50 %, and the score's explanation lists the
case by its id. A later event of the same case replaces its points only when they rise, so
a case counts once, whatever the order its events arrive in.
"""
from __future__ import annotations

from sqlalchemy.orm import Session

from services.contracts.events.intake import CaseHandled
from services.scoring import domain
from services.scoring import operations as ops
from services.scoring.models import ScoreInputRow, SubjectAlias


def apply_case_handled(session: Session, ctx: ops.Context, event_id: str, event: CaseHandled) -> int:
    """Record or raise one case's points and update everything they affect; returns events published."""
    if event.receiving_node != ctx.home:
        return 0  # another office's case: it scores there
    ref = event.responsible
    sid = ops.scoring_subject_id(str(ref.subject_type), ref.subject_id, ref.node)
    row = session.get(ScoreInputRow, event.case_id)
    scorer = ops.Scorer(session, ctx, correlation_id=event.case_id)
    periods = domain.periods_of(event.reported_at)
    subject = scorer.ensure_subject(sid, ref.node, ref.name, str(ref.subject_type))
    # The points come from the subject's policy (case_points), not from the event: intake
    # reports what happened, the office's scheme decides what it is worth.
    points = domain.case_points(scorer.policy_for(subject)[1], event.outcome)
    if row is None:
        if sid != ref.subject_id and session.get(SubjectAlias, ref.subject_id) is None:
            session.add(SubjectAlias(alias=ref.subject_id, subject_id=sid))
        session.add(ScoreInputRow(
            inspection_id=event.case_id, event_id=event_id, subject_id=sid, inspection_subject_id=ref.subject_id,
            inspecting_node=event.receiving_node, kind=event.source, score=points, scale=domain.CASE_SCALE,
            inspected_at=event.reported_at, inspectors=[], created_at=ops._now(),
            **{str(p.kind): p.key for p in periods}))
    elif points * row.scale > row.score * domain.CASE_SCALE:
        row.score, row.scale, row.event_id = points, domain.CASE_SCALE, event_id
    else:
        return 0
    session.flush()
    scorer.refresh(sid, periods)
    return scorer.finish("case")
