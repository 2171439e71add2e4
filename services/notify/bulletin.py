"""Assembling the monthly bulletin (月度通报) from the notify service's projections.

Pure: takes plain facts (scores as published by scoring, tasks as told by the task
events) and returns the bulletin's data; `templates` renders it as HTML and Markdown.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from services.contracts.nodes import InvalidNodeCode, Tier, tier_of
from services.contracts.periods import Period, PeriodKind
from services.contracts.vocab import movement_text
from services.notify.domain import BulletinPolicy

CHILD_UNIT = "child_unit"


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
    subject_type: str = CHILD_UNIT
    # Why the figure may no longer be true: the child stack behind it has been silent longer
    # than the policy allows (child_freshness_changed); None when it is current.
    stale_reason: str | None = None


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
    # When the problem was found (the inspection's time): a back-dated inspection entered
    # today is still that month's problem. None for tasks told before it was carried.
    found_at: datetime | None = None

    @property
    def problem_at(self) -> datetime | None:
        return self.found_at or self.opened_at


PEER_GROUP_LABELS = {"child_unit": "下级单位", "department": "机关部门", "area_unit": "辖区单位"}


def _tier(node: str) -> str | None:
    try:
        return str(tier_of(node))
    except InvalidNodeCode:
        return None


def peer_tier(node: str) -> str | None:
    """The tier a node's office ranks: the one below it (a street ranks its communities)."""
    here = _tier(node)
    if here is None:
        return None
    order = [str(t) for t in Tier]  # declared from the province down
    below = order.index(here) + 1
    return order[below] if below < len(order) else None


@dataclass(frozen=True)
class IndicatorFact:
    """A measured indicator of an area for the month: a vector density verdict (四害) or a
    satisfaction rate (群众满意率), as the indicators service published it."""
    kind: str  # vector | satisfaction
    area: str
    name: str
    flagged: bool
    figure: dict


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
    stale_reason: str | None = None


@dataclass
class BulletinData:
    node: str
    node_name: str
    period: str
    previous_period: str
    title: str
    generated_at: str
    ranking: list[RankingEntry] = field(default_factory=list)
    # The office's other peer groups (departments, units in its area), each ranked apart.
    other_rankings: list[dict] = field(default_factory=list)
    unranked: list[dict] = field(default_factory=list)
    commended: list[dict] = field(default_factory=list)
    criticised: list[dict] = field(default_factory=list)
    vetoed: list[dict] = field(default_factory=list)
    # Figures shown as last reported: their child stack has been silent too long (issue 12).
    stale: list[dict] = field(default_factory=list)
    overdue_tasks: list[dict] = field(default_factory=list)
    relapsed_tasks: list[dict] = field(default_factory=list)
    top_categories: list[dict] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    indicators: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def period_window(period: Period) -> tuple[datetime, datetime]:
    """The period's bounds as UTC instants (periods are China Standard Time calendar periods)."""
    return tuple(moment.astimezone(timezone.utc) for moment in period.instants())


def _in(moment: datetime | None, start: datetime, end: datetime) -> bool:
    return moment is not None and start <= moment < end


def _task_dict(t: TaskFact) -> dict:
    return {"task_id": t.task_id, "subject_name": t.subject_name, "place_name": t.place_name,
            "item_text": t.item_text, "category_name": t.category_name, "severity": t.severity,
            "status": t.status, "deadline_at": t.deadline_at.isoformat(),
            "overdue_since": t.overdue_since.isoformat() if t.overdue_since else None,
            "urge_count": t.urge_count, "closed_at": t.closed_at.isoformat() if t.closed_at else None,
            "relapse_of": t.relapse_of, "found_at": t.problem_at.isoformat() if t.problem_at else None}


def assemble_bulletin(period_key: str, node: str, node_name: str, scores: Iterable[ScoreFact],
                      previous_scores: Iterable[ScoreFact], tasks: Iterable[TaskFact],
                      policy: BulletinPolicy, generated_at: datetime,
                      indicators: Iterable[IndicatorFact] = (), missed_checks: int = 0) -> BulletinData:
    period = Period.parse(period_key)
    if period.kind != PeriodKind.month:
        raise ValueError(f"a monthly bulletin needs a month period (YYYY-MM), got {period_key!r}")
    previous = period.previous()
    start, end = period_window(period)
    year, month = period.key.split("-")
    data = BulletinData(node=node, node_name=node_name, period=period.key, previous_period=previous.key,
                        title=f"{node_name}{int(year)}年{int(month)}月创卫工作月度通报",
                        generated_at=generated_at.isoformat())

    # Ranking: only the peers of the period's tier (scoring ranks each (tier, subject type)
    # apart, so mixing groups would show two "rank 1"s); the office's own aggregate — the
    # home node scored as a child unit of the tier above — is nobody's peer here.
    prev_rank = {s.subject_id: s.rank for s in previous_scores if s.ranked and s.rank is not None}
    scores = [s for s in scores if not (s.subject_type == CHILD_UNIT and s.node == node)]
    main_group = (peer_tier(node), CHILD_UNIT)
    groups: dict[tuple[str | None, str], list[ScoreFact]] = {}
    for s in scores:
        groups.setdefault((_tier(s.node), s.subject_type), []).append(s)
    peers = groups.pop(main_group, [])

    def entries(group: list[ScoreFact]) -> list[RankingEntry]:
        out = []
        ranked_group = sorted((s for s in group if s.ranked and s.rank is not None), key=lambda s: (s.rank, s.name))
        for position, s in enumerate(ranked_group, start=1):
            before = prev_rank.get(s.subject_id)
            movement = s.movement if s.movement is not None else (before - s.rank if before is not None else None)
            out.append(RankingEntry(position, s.rank, s.subject_id, s.name, s.node, s.score, s.scale, s.grade,
                                    before, movement, movement_text(movement), s.vetoed, s.inputs,
                                    s.stale_reason))
        return out

    data.ranking = entries(peers)
    ranked = data.ranking
    for (tier, subject_type), group in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        group_entries = entries(group)
        if group_entries:
            data.other_rankings.append({"tier": tier, "subject_type": subject_type,
                                        "label": PEER_GROUP_LABELS.get(subject_type, subject_type),
                                        "ranking": [asdict(e) for e in group_entries]})
    data.unranked = [{"subject_id": s.subject_id, "name": s.name, "score": s.score, "inputs": s.inputs,
                      "note": "样本不足，不参加排名" if s.score is not None else "本月无检查记录"}
                     for s in sorted(scores, key=lambda s: s.name) if not (s.ranked and s.rank is not None)]

    data.stale = [{"subject_id": s.subject_id, "name": s.name, "node": s.node, "reason": s.stale_reason}
                  for s in sorted(scores, key=lambda s: s.name) if s.stale_reason]

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
    # Problems count in the month they were found, close-outs in the month they were closed:
    # when a task was entered (e.g. history loaded months later) changes neither.
    tasks = list(tasks)
    overdue = [t for t in tasks if t.overdue_since is not None and t.overdue_since < end
               and (t.closed_at is None or t.closed_at >= start)]
    data.overdue_tasks = [_task_dict(t) for t in sorted(overdue, key=lambda t: (t.overdue_since, t.task_id))]
    relapsed = [t for t in tasks if t.relapse_of and _in(t.found_at or t.relapsed_at or t.opened_at, start, end)]
    data.relapsed_tasks = [_task_dict(t) for t in sorted(relapsed, key=lambda t: (t.subject_name, t.task_id))]
    found = [t for t in tasks if _in(t.problem_at, start, end)]
    counts = Counter((t.category_code, t.category_name) for t in found)
    data.top_categories = [{"category_code": code, "category_name": name, "count": n}
                           for (code, name), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][0]))
                           if n >= policy.min_category_count][: policy.top_categories]
    closed = [t for t in tasks if _in(t.closed_at, start, end)]
    on_time = [t for t in closed if t.closed_at <= t.deadline_at]
    data.figures = {
        "subjects": len(peers), "ranked": len(ranked), "problems_found": len(found),
        # `tasks_opened` kept for templates written before `problems_found`: the same count.
        "tasks_opened": len(found), "tasks_closed": len(closed),
        "closed_on_time": len(on_time), "overdue": len(overdue), "relapses": len(relapsed),
        "close_rate": round(len(closed) / len(found), 4) if found else None,
        # Scheduled checks missed in periods that ended this month, where the office counts them.
        "missed_checks": missed_checks,
    }
    data.indicators = indicator_section(indicators)
    return data


def indicator_section(indicators: Iterable[IndicatorFact]) -> dict:
    """The areas that failed the vector density rule and those below the satisfaction
    threshold; empty when the office records no indicators (the section is then left out)."""
    facts = sorted(indicators, key=lambda f: (f.kind, f.area))
    if not facts:
        return {}
    vector = [f for f in facts if f.kind == "vector"]
    satisfaction = [f for f in facts if f.kind == "satisfaction"]
    return {
        "vector_areas": len(vector),
        "vector_failed": [{"area": f.area, "name": f.name, "explanation": f.figure.get("explanation", "")}
                          for f in vector if f.flagged],
        "satisfaction_areas": len(satisfaction),
        "satisfaction_flagged": [{"area": f.area, "name": f.name, "rate": f.figure.get("rate"),
                                  "answers": f.figure.get("answers"), "ci_low": f.figure.get("ci_low"),
                                  "ci_high": f.figure.get("ci_high"), "threshold": f.figure.get("threshold")}
                                 for f in satisfaction if f.flagged],
    }


def public_board(data: dict) -> dict:
    """The public ranking board (张榜公布) from a released bulletin's data: ranks, names,
    scores, grades, movement and the red and black lists (红榜/黑榜), and nothing else: no
    task, note, inspector or reason text, which the bulletin may carry for the office."""
    # The board ranks the office's children: the office's own roll-up, ranked in its own
    # tier among the scores the bulletin read, is not one of them.
    office = {e["subject_id"] for e in data.get("ranking", []) if e.get("node") == data.get("node")}
    ranking = [{"rank": e["rank"], "name": e["name"], "score": e["score"], "scale": e["scale"],
                "grade": e.get("grade"), "movement": e.get("movement_text") or "—", "vetoed": bool(e.get("vetoed"))}
               for e in data.get("ranking", []) if e["subject_id"] not in office]
    red = [{"rank": c.get("rank"), "name": c["name"], "score": c.get("score")} for c in data.get("commended", [])
           if c["subject_id"] not in office]
    vetoed = {v["subject_id"] for v in data.get("vetoed", [])}
    black = [{"rank": c.get("rank"), "name": c["name"], "score": c.get("score"),
              "why": "一票否决" if c["subject_id"] in vetoed else "排名靠后"} for c in data.get("criticised", [])
             if c["subject_id"] not in office]
    return {"ranking": ranking, "red": red, "black": black}
