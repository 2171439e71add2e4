"""Assembling the monthly bulletin (月度通报) from the notify service's projections.

Pure: takes plain facts (scores as published by scoring, tasks as told by the task
events) and returns the bulletin's data; `templates` renders it as HTML and Markdown.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from services.contracts.periods import Period, PeriodKind
from services.notify.domain import BulletinPolicy


@dataclass(frozen=True)
class ScoreFact:
    subject_id: str
    name: str
    node: str
    score: float | None
    scale: int
    rank: int | None
    ranked: bool
    movement: int | None = None
    grade: str | None = None
    vetoed: bool = False
    veto_reasons: tuple[str, ...] = ()
    inputs: int = 0


@dataclass(frozen=True)
class TaskFact:
    task_id: str
    subject_id: str
    subject_name: str
    place_name: str | None
    item_text: str
    category_code: str
    category_name: str
    severity: str
    status: str
    deadline_at: datetime
    opened_at: datetime | None = None
    overdue_since: datetime | None = None
    urge_count: int = 0
    closed_at: datetime | None = None
    relapse_of: str | None = None
    relapsed_at: datetime | None = None


@dataclass
class RankingEntry:
    position: int
    rank: int
    subject_id: str
    name: str
    node: str
    score: float | None
    scale: int
    grade: str | None
    previous_rank: int | None
    movement: int | None
    movement_text: str
    vetoed: bool
    inputs: int


@dataclass
class BulletinData:
    node: str
    node_name: str
    period: str
    previous_period: str
    title: str
    generated_at: str
    ranking: list[RankingEntry] = field(default_factory=list)
    unranked: list[dict] = field(default_factory=list)
    commended: list[dict] = field(default_factory=list)
    criticised: list[dict] = field(default_factory=list)
    vetoed: list[dict] = field(default_factory=list)
    overdue_tasks: list[dict] = field(default_factory=list)
    relapsed_tasks: list[dict] = field(default_factory=list)
    top_categories: list[dict] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def period_window(period: Period) -> tuple[datetime, datetime]:
    """The period's bounds as UTC instants (periods are China Standard Time calendar periods)."""
    return tuple(moment.astimezone(timezone.utc) for moment in period.instants())


def movement_text(movement: int | None) -> str:
    if movement is None:
        return "新"
    if movement > 0:
        return f"↑{movement}"
    if movement < 0:
        return f"↓{-movement}"
    return "—"


def _in(moment: datetime | None, start: datetime, end: datetime) -> bool:
    return moment is not None and start <= moment < end


def _task_dict(t: TaskFact) -> dict:
    return {"task_id": t.task_id, "subject_name": t.subject_name, "place_name": t.place_name,
            "item_text": t.item_text, "category_name": t.category_name, "severity": t.severity,
            "status": t.status, "deadline_at": t.deadline_at.isoformat(),
            "overdue_since": t.overdue_since.isoformat() if t.overdue_since else None,
            "urge_count": t.urge_count, "closed_at": t.closed_at.isoformat() if t.closed_at else None,
            "relapse_of": t.relapse_of}


def assemble_bulletin(period_key: str, node: str, node_name: str, scores: Iterable[ScoreFact],
                      previous_scores: Iterable[ScoreFact], tasks: Iterable[TaskFact],
                      policy: BulletinPolicy, generated_at: datetime) -> BulletinData:
    period = Period.parse(period_key)
    if period.kind != PeriodKind.month:
        raise ValueError(f"a monthly bulletin needs a month period (YYYY-MM), got {period_key!r}")
    previous = period.previous()
    start, end = period_window(period)
    year, month = period.key.split("-")
    data = BulletinData(node=node, node_name=node_name, period=period.key, previous_period=previous.key,
                        title=f"{node_name}{int(year)}年{int(month)}月创卫工作月度通报",
                        generated_at=generated_at.isoformat())

    # Ranking: the published ranks; movement as published, else against last month's rank.
    prev_rank = {s.subject_id: s.rank for s in previous_scores if s.ranked and s.rank is not None}
    scores = list(scores)
    ranked = sorted((s for s in scores if s.ranked and s.rank is not None), key=lambda s: (s.rank, s.name))
    for position, s in enumerate(ranked, start=1):
        before = prev_rank.get(s.subject_id)
        movement = s.movement if s.movement is not None else (before - s.rank if before is not None else None)
        data.ranking.append(RankingEntry(position, s.rank, s.subject_id, s.name, s.node, s.score, s.scale, s.grade,
                                         before, movement, movement_text(movement), s.vetoed, s.inputs))
    data.unranked = [{"subject_id": s.subject_id, "name": s.name, "score": s.score, "inputs": s.inputs,
                      "note": "样本不足，不参加排名" if s.score is not None else "本月无检查记录"}
                     for s in sorted(scores, key=lambda s: s.name) if not (s.ranked and s.rank is not None)]

    # Veto (一票否决): never commended, always criticised, whatever the score.
    data.vetoed = [{"subject_id": s.subject_id, "name": s.name, "reasons": list(s.veto_reasons)}
                   for s in sorted(scores, key=lambda s: s.name) if s.vetoed]
    eligible = [e for e in data.ranking if not e.vetoed]
    data.commended = [{"subject_id": e.subject_id, "name": e.name, "rank": e.rank, "score": e.score}
                      for e in eligible[: policy.commend_top]]
    criticised: dict[str, dict] = {}
    if policy.criticise_bottom:
        for e in data.ranking[-policy.criticise_bottom:]:
            if e.subject_id not in {c["subject_id"] for c in data.commended}:
                criticised[e.subject_id] = {"subject_id": e.subject_id, "name": e.name, "rank": e.rank,
                                            "score": e.score, "reasons": [f"排名后{policy.criticise_bottom}位"]}
    by_subject = {e.subject_id: e for e in data.ranking}
    for v in data.vetoed:
        ranked_entry = by_subject.get(v["subject_id"])
        entry = criticised.setdefault(v["subject_id"], {
            "subject_id": v["subject_id"], "name": v["name"], "rank": ranked_entry.rank if ranked_entry else None,
            "score": ranked_entry.score if ranked_entry else None, "reasons": []})
        entry["reasons"].append("一票否决" + (f"：{'；'.join(v['reasons'])}" if v["reasons"] else ""))
    data.criticised = sorted(criticised.values(), key=lambda c: (c["rank"] is None, c["rank"] or 0, c["name"]))

    # Tasks: overdue at some moment of the month, relapses found in it, recurring categories.
    tasks = list(tasks)
    overdue = [t for t in tasks if t.overdue_since is not None and t.overdue_since < end
               and (t.closed_at is None or t.closed_at >= start)]
    data.overdue_tasks = [_task_dict(t) for t in sorted(overdue, key=lambda t: (t.overdue_since, t.task_id))]
    relapsed = [t for t in tasks if t.relapse_of and _in(t.relapsed_at or t.opened_at, start, end)]
    data.relapsed_tasks = [_task_dict(t) for t in sorted(relapsed, key=lambda t: (t.subject_name, t.task_id))]
    opened = [t for t in tasks if _in(t.opened_at, start, end)]
    counts = Counter((t.category_code, t.category_name) for t in opened)
    data.top_categories = [{"category_code": code, "category_name": name, "count": n}
                           for (code, name), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][0]))
                           if n >= policy.min_category_count][: policy.top_categories]
    closed = [t for t in tasks if _in(t.closed_at, start, end)]
    on_time = [t for t in closed if t.closed_at <= t.deadline_at]
    data.figures = {
        "subjects": len(scores), "ranked": len(ranked), "tasks_opened": len(opened), "tasks_closed": len(closed),
        "closed_on_time": len(on_time), "overdue": len(overdue), "relapses": len(relapsed),
        "close_rate": round(len(closed) / len(opened), 4) if opened else None,
    }
    return data
