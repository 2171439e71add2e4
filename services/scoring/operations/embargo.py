"""Figures as a reader on the inspected side sees them while a 暗访 awaits release.

An unannounced inspection (暗访) counts in its subject's stored figures as soon as it is
submitted: the inspecting office ranks, rolls up and reports with it. Its subject must not
learn of it before the office releases it (`inspection_released`), and a figure that moves,
an input count that grows or a rank that drops would tell. So a reader who is not on the
inspecting side of an unreleased 暗访 is shown each figure it touches computed without it,
with the subject's rank among its peers re-placed accordingly — as if the visit had not
happened. A figure that holds an unreleased 暗访 only through a child unit's figure (a
street's roll-up) cannot be computed without it from what is stored (the child's copy is a
number), so that figure is held back with a note instead, for those readers only. A figure
left with no input at all is not there for them. The inspecting side reads the stored figures.
No nameko imports.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.contracts.nodes import is_within, subtree_prefix
from services.contracts.periods import Period, PeriodKind
from services.scoring.models import PeriodScore, ReleasedInspection, ScoreInputRow, Subject
from services.scoring.operations.context import CHILD, UNANNOUNCED, Context, PrincipalLike, on_inspecting_side
from services.scoring.operations.scorer import Scorer

HELD_BACK = "本期得分待发布 (this period's figure is held back until the inspecting office releases its results)"
PERIOD_COLUMNS = ("week", "month", "quarter", "half_year", "year")


@dataclass(frozen=True)
class Secret:
    """An unreleased 暗访 the reader is not on the inspecting side of."""
    inspection_id: str
    subject_id: str
    subject_type: str
    node: str
    periods: dict


def secrets_for(session: Session, principal: PrincipalLike, period: Period | None = None,
                within: str | None = None) -> list[Secret]:
    """The unreleased 暗访 hidden from this reader (few: an office releases its visits), of
    one period and of subjects within one node if asked (what a read can be touched by)."""
    stmt = (select(ScoreInputRow.inspection_id, ScoreInputRow.subject_id, ScoreInputRow.inspecting_node,
                   Subject.subject_type, Subject.node, *(getattr(ScoreInputRow, c) for c in PERIOD_COLUMNS))
            .join(Subject, Subject.subject_id == ScoreInputRow.subject_id)
            .outerjoin(ReleasedInspection, ReleasedInspection.inspection_id == ScoreInputRow.inspection_id)
            .where(ScoreInputRow.kind == UNANNOUNCED, ReleasedInspection.inspection_id.is_(None)))
    if period is not None:
        stmt = stmt.where(getattr(ScoreInputRow, str(period.kind)) == period.key)
    if within is not None:
        stmt = stmt.where(Subject.node.like(f"{subtree_prefix(within)}%"))
    rows = session.execute(stmt).all()
    return [Secret(r.inspection_id, r.subject_id, r.subject_type, r.node, {c: getattr(r, c) for c in PERIOD_COLUMNS})
            for r in rows if not on_inspecting_side(principal, r.inspecting_node)]


def _touching(secrets: list[Secret], figure: dict) -> tuple[list[Secret], bool]:
    """The secrets in this figure's period: its subject's own, and whether one is below it
    (a child unit's, which reaches this figure through the roll-up)."""
    own, below = [], False
    for secret in secrets:
        if secret.periods.get(figure["period_kind"]) != figure["period"]:
            continue
        if secret.subject_id == figure["subject_id"]:
            own.append(secret)
        elif (figure["subject_type"] == CHILD and secret.subject_type == CHILD and secret.node != figure["node"]
              and is_within(secret.node, figure["node"])):
            below = True
    return own, below


def held_back(figure: dict) -> dict:
    figure.update(score=None, routine=None, appraisal=None, grade=None, rank=None, ranked=False, movement=None,
                  vetoed=False, veto_reasons=[], held_back=True, held_back_reason=HELD_BACK)
    return figure


def _placed(session: Session, figure: dict, score: float | None, inputs: int, min_inputs: int | None) -> None:
    """Re-place the figure among its peers' stored figures as if it had this score and inputs."""
    others = session.execute(select(PeriodScore.score, PeriodScore.inputs, PeriodScore.rank_min_inputs).where(
        PeriodScore.period_kind == figure["period_kind"], PeriodScore.period == figure["period"],
        PeriodScore.tier == figure["tier"], PeriodScore.subject_type == figure["subject_type"],
        PeriodScore.subject_id != figure["subject_id"])).all()
    eligible = [s for s, n, m in others if s is not None and m is not None and n >= m]
    ranked = score is not None and min_inputs is not None and inputs >= min_inputs
    rank = 1 + sum(1 for s in eligible if s > score) if ranked else None
    previous = Period(PeriodKind(figure["period_kind"]), figure["period"]).previous()
    before = session.execute(select(PeriodScore.rank).where(
        PeriodScore.subject_id == figure["subject_id"], PeriodScore.period_kind == figure["period_kind"],
        PeriodScore.period == previous.key, PeriodScore.tier == figure["tier"],
        PeriodScore.subject_type == figure["subject_type"])).scalar_one_or_none()
    figure.update(rank=rank, ranked=ranked, peers=len(eligible) + (1 if ranked else 0),
                  movement=before - rank if (rank is not None and before is not None) else None,
                  rank_min_inputs=min_inputs)


def as_seen(session: Session, ctx: Context, principal: PrincipalLike, figures: list[dict],
            with_explain: bool = False, secrets: list[Secret] | None = None) -> list[dict]:
    """`figures` (figure_out dicts) as this reader may see them: unchanged for the inspecting
    side and wherever no unreleased 暗访 is hidden from the reader; otherwise computed without
    it (its explanation too, under "explain", if `with_explain`), or held back (see above).
    Figures left with nothing in them are dropped."""
    if secrets is None:
        secrets = secrets_for(session, principal) if figures else []
    if not secrets:
        return figures
    out, scorer = [], None
    for figure in figures:
        own, below = _touching(secrets, figure)
        if below:
            out.append(held_back(figure))
            continue
        if not own:
            out.append(figure)
            continue
        scorer = scorer or Scorer(session, ctx)
        period = Period(PeriodKind(figure["period_kind"]), figure["period"])
        [(_, policy_row, result, min_inputs)] = scorer.compute_many(
            [figure["subject_id"]], period, without=frozenset(s.inspection_id for s in own)).values()
        if result.score is None and result.inputs == 0 and not result.vetoed:
            continue  # the 暗访 was all there was: no figure, as before the visit
        figure.update(score=result.score, routine=result.routine, appraisal=result.appraisal, grade=result.grade,
                      inputs=result.inputs, vetoed=result.vetoed, veto_reasons=list(result.veto_reasons))
        _placed(session, figure, result.score, result.inputs, min_inputs)
        if with_explain:
            figure["explain"] = {**result.explain, "policy": {"policy_id": policy_row.policy_id,
                                                              "version": policy_row.version, "node": policy_row.node}}
        out.append(figure)
    return out


__all__ = ['HELD_BACK', 'Secret', 'secrets_for', 'held_back', 'as_seen']
