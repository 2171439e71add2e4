"""Inspection schedules (检查计划): an office's rhythm, what is due, and missed checks (漏检).

An office says which subjects (all of a type, or one) or which place types are checked how
often — daily, weekly, monthly (China Standard Time calendar) — and by whom. `due_checks`
lists every target with its current period and whether it has been checked; `flag_missed`
looks at the last ended period of each schedule and records every target without a
submitted inspection in it, once (`inspection_missed_checks`, unique per schedule, target
and period), publishing `check_missed` in the same transaction: notify tells the
responsible subject and the office; `counts` says whether the office's policy counts
missed checks. Use cases of the inspection service (no nameko imports).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.contracts.bounds import CampaignInstant
from services.contracts.errors import UnknownReference
from services.contracts.events.inspection import CheckMissed, SubjectRef
from services.contracts.identity import ADMINISTRATOR, Principal
from services.contracts.nodes import NodeCode, is_within
from services.contracts.periods import CST, Period, PeriodKind
from services.contracts.vocab import PlaceType, SubjectType
from services.inspection import metrics
from services.inspection.domain import UNANNOUNCED
from services.inspection.models import Inspection, MissedCheck, Place, Schedule, Subject
from services.plumbing.sql import insert_ignore

FREQUENCIES = ("daily", "weekly", "monthly")
FREQUENCY_LABELS = {"daily": "日检查", "weekly": "周检查", "monthly": "月检查"}


# --- periods ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    key: str
    start: datetime
    end: datetime


def window(frequency: str, moment: datetime) -> Window:
    """The calendar period (CST) of `frequency` containing `moment`, as UTC instants."""
    local = moment.astimezone(CST)
    if frequency == "daily":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        return Window(start.date().isoformat(), start.astimezone(timezone.utc),
                      (start + timedelta(days=1)).astimezone(timezone.utc))
    period = Period.containing(PeriodKind.week if frequency == "weekly" else PeriodKind.month, local)
    start, end = period.instants()
    return Window(period.key, start.astimezone(timezone.utc), end.astimezone(timezone.utc))


def last_ended(frequency: str, now: datetime) -> Window:
    return window(frequency, window(frequency, now).start - timedelta(microseconds=1))


# --- schemas ----------------------------------------------------------------------------


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"node": "411502008000", "name": "社区每周检查", "frequency": "weekly", "subject_type": "child_unit",
         "inspectors": ["王芳", "李强"], "counts": True},
        {"node": "411502008000", "name": "公厕每日巡查", "frequency": "daily", "place_type": "public_toilet",
         "inspectors": ["保洁巡查组"]}]})
    node: NodeCode = Field(description="the office whose rhythm it is; targets lie in its subtree")
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\r\n\t]*$")
    frequency: Literal["daily", "weekly", "monthly"]
    subject_type: SubjectType | None = Field(default=None, description="every subject of this type")
    subject_id: str | None = Field(default=None, min_length=1, max_length=64, description="or one subject")
    place_type: PlaceType | None = Field(default=None, description="or every place of this type")
    inspectors: list[str] = Field(default_factory=list, max_length=20, description="by whom (names or a team)")
    counts: bool = Field(default=True, description="missed checks count (policy): in the bulletin's figures")
    starts_at: CampaignInstant | None = Field(default=None, description="periods before this one are never missed "
                                                                        "(default: when it is created)")

    @model_validator(mode="after")
    def _one_target(self):
        given = [x for x in (self.subject_type, self.subject_id, self.place_type) if x is not None]
        if len(given) != 1:
            raise ValueError("name exactly one of subject_type, subject_id, place_type")
        if any(not n.strip() or len(n) > 100 or any(c in n for c in "\r\n\t") for n in self.inspectors):
            raise ValueError("inspectors: one line of 1–100 characters each")
        return self


class ScheduleOut(BaseModel):
    schedule_id: str
    node: str
    name: str
    frequency: str
    subject_type: str | None
    subject_id: str | None
    place_type: str | None
    inspectors: list[str]
    counts: bool
    active: bool
    starts_at: datetime
    created_at: datetime


class DueOut(BaseModel):
    schedule_id: str
    schedule_name: str
    frequency: str
    period: str
    due_by: datetime = Field(description="the end of the current period")
    target_kind: Literal["subject", "place"]
    target_id: str
    target_name: str
    target_node: str
    checked: bool = Field(description="a submitted inspection of the target in the current period")
    last_inspected_at: datetime | None
    missed_last_period: bool = Field(description="the last ended period had no inspection (flagged as 漏检)")


class MissedOut(BaseModel):
    schedule_id: str
    period: str
    target_kind: str
    target_id: str
    target_name: str
    target_node: str
    flagged_at: datetime


class SweepResult(BaseModel):
    flagged: int = Field(description="missed checks newly flagged (and told) by this run")


class ScheduleQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: NodeCode | None = None


# --- use cases ----------------------------------------------------------------------------


def schedule_out(s: Schedule) -> ScheduleOut:
    return ScheduleOut(schedule_id=s.id, node=s.node, name=s.name, frequency=s.frequency,
                       subject_type=s.subject_type, subject_id=s.subject_id, place_type=s.place_type,
                       inspectors=s.inspectors or [], counts=s.counts, active=s.active, starts_at=s.starts_at,
                       created_at=s.created_at)


def create_schedule(session: Session, data: ScheduleIn, jurisdiction, caller: Principal, now: datetime) -> ScheduleOut:
    caller.require(ADMINISTRATOR, data.node, "node")
    jurisdiction.check(data.node, "node")
    if data.subject_id is not None:
        subject = session.get(Subject, data.subject_id)
        if subject is None or not is_within(subject.node, data.node):
            raise UnknownReference("subject_id", f"no subject {data.subject_id!r} under {data.node}")
    schedule = Schedule(id=str(uuid.uuid4()), node=data.node, name=data.name, frequency=data.frequency,
                        subject_type=data.subject_type.value if data.subject_type else None,
                        subject_id=data.subject_id, place_type=data.place_type.value if data.place_type else None,
                        inspectors=list(data.inspectors), counts=data.counts, active=True,
                        starts_at=data.starts_at or now, created_at=now, created_by=caller.label)
    session.add(schedule)
    session.flush()
    return schedule_out(schedule)


def list_schedules(session: Session, caller: Principal, node: str | None) -> list[ScheduleOut]:
    rows = session.execute(select(Schedule).order_by(Schedule.node, Schedule.name, Schedule.id)).scalars()
    return [schedule_out(s) for s in rows if caller.sees(s.node) and (node is None or s.node == node)]


@dataclass(frozen=True)
class Target:
    kind: str
    id: str
    name: str
    node: str
    subject: Subject | None


def targets_of(session: Session, schedule: Schedule) -> list[Target]:
    if schedule.place_type is not None:
        places = session.execute(select(Place).where(Place.place_type == schedule.place_type)
                                 .order_by(Place.node, Place.name, Place.id)).scalars()
        out = []
        for p in places:
            if is_within(p.node, schedule.node):
                responsible = session.get(Subject, p.responsible_subject_id) if p.responsible_subject_id else None
                out.append(Target("place", p.id, p.name, p.node, responsible))
        return out
    stmt = select(Subject).order_by(Subject.node, Subject.name, Subject.id)
    if schedule.subject_id is not None:
        stmt = stmt.where(Subject.id == schedule.subject_id)
    else:
        stmt = stmt.where(Subject.subject_type == schedule.subject_type)
    return [Target("subject", s.id, s.name, s.node, s) for s in session.execute(stmt).scalars()
            if is_within(s.node, schedule.node) and s.node != schedule.node]


def _inspected(session: Session, target: Target, start: datetime, end: datetime,
               reader: Principal | None = None, office: str | None = None) -> datetime | None:
    """When the target was last inspected in [start, end). For a `reader` (someone asking
    GET /schedules/due), an unreleased unannounced inspection (暗访) counts only if the reader
    is on its inspecting side: otherwise "checked" and its time would tell the subject of the
    visit before the office releases it. `office`: the inspecting node of rows from before it
    was recorded (the schedule's office)."""
    column = Inspection.place_id if target.kind == "place" else Inspection.subject_id
    rows = session.execute(select(Inspection.inspected_at, Inspection.kind, Inspection.released_at,
                                  Inspection.inspecting_node).where(
        column == target.id, Inspection.status == "submitted", Inspection.inspected_at >= start,
        Inspection.inspected_at < end).order_by(Inspection.inspected_at.desc()))
    for inspected_at, kind, released_at, inspecting_node in rows:
        if (reader is None or kind != UNANNOUNCED or released_at is not None
                or reader.on_inspecting_side(inspecting_node or office)):
            return inspected_at
    return None


def due_checks(session: Session, caller: Principal, now: datetime, node: str | None = None) -> list[DueOut]:
    """Every scheduled target the caller sees, with this period's state and the last one's."""
    out = []
    for schedule in session.execute(select(Schedule).where(Schedule.active.is_(True))
                                    .order_by(Schedule.name, Schedule.id)).scalars():
        if not caller.sees(schedule.node) and not any(is_within(n, schedule.node) for n in caller.nodes_with()):
            continue
        current, previous = window(schedule.frequency, now), last_ended(schedule.frequency, now)
        for target in targets_of(session, schedule):
            if not caller.sees(target.node) or (node is not None and not is_within(target.node, node)):
                continue
            checked_at = _inspected(session, target, current.start, current.end, caller, schedule.node)
            missed = (previous.start >= window(schedule.frequency, schedule.starts_at).start
                      and _inspected(session, target, previous.start, previous.end, caller, schedule.node) is None)
            out.append(DueOut(schedule_id=schedule.id, schedule_name=schedule.name, frequency=schedule.frequency,
                              period=current.key, due_by=current.end, target_kind=target.kind,
                              target_id=target.id, target_name=target.name, target_node=target.node,
                              checked=checked_at is not None, last_inspected_at=checked_at,
                              missed_last_period=missed))
    return out


def flag_missed(session: Session, outbox, now: datetime) -> int:
    """Record and tell every check missed in each schedule's last ended period (once).

    Safe in every instance at once: the unique (schedule, target, period) row decides who
    tells it; a period that began before the schedule existed is never missed."""
    flagged = 0
    for schedule in session.execute(select(Schedule).where(Schedule.active.is_(True))
                                    .order_by(Schedule.id)).scalars().all():
        previous = last_ended(schedule.frequency, now)
        if previous.start < window(schedule.frequency, schedule.starts_at).start:
            continue
        for target in targets_of(session, schedule):
            if _inspected(session, target, previous.start, previous.end) is not None:
                continue
            inserted = insert_ignore(session, MissedCheck.__table__, dict(
                schedule_id=schedule.id, target_kind=target.kind, target_id=target.id,
                target_name=target.name, target_node=target.node, period=previous.key,
                period_start=previous.start, period_end=previous.end, flagged_at=now))
            if not inserted:
                continue
            answerable = target.subject
            subject = (SubjectRef(subject_id=answerable.id, node=answerable.node, name=answerable.name,
                                  subject_type=answerable.subject_type) if answerable is not None else
                       SubjectRef(subject_id=target.id, node=target.node, name=target.name,
                                  subject_type="area_unit"))
            outbox.add(session, CheckMissed(
                schedule_id=schedule.id, schedule_name=schedule.name, office_node=schedule.node,
                frequency=schedule.frequency, period=previous.key, period_start=previous.start,
                period_end=previous.end, target_kind=target.kind, target_id=target.id, target_name=target.name,
                subject=subject, inspectors=list(schedule.inspectors or []), counts=schedule.counts),
                correlation_id=schedule.id)
            metrics.CHECKS_MISSED.labels(schedule.frequency).inc()
            flagged += 1
    session.flush()
    return flagged


def list_missed(session: Session, caller: Principal, node: str | None) -> list[MissedOut]:
    rows = session.execute(select(MissedCheck).order_by(MissedCheck.period.desc(), MissedCheck.target_name)
                           .limit(1000)).scalars()
    return [MissedOut(schedule_id=m.schedule_id, period=m.period, target_kind=m.target_kind, target_id=m.target_id,
                      target_name=m.target_name, target_node=m.target_node, flagged_at=m.flagged_at)
            for m in rows if caller.sees(m.target_node) and (node is None or is_within(m.target_node, node))]
