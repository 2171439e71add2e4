"""Use cases of the intake service: taking cases in (Open311), locating and routing them,
merging duplicates, following their tasks, and what reporters and offices read.

Each function takes a SQLAlchemy session, `now` (the controllable clock) and, where it
publishes, an outbox; the caller owns the transaction. No nameko imports.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Protocol

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from services.contracts.bounds import campaign_start, reported_instant_problem
from services.contracts.errors import DomainError, PermissionDenied, RuleViolation, StateConflict, UnknownReference
from services.contracts.events.inspection import InspectionSubmitted, PlaceRef, SubjectRef
from services.contracts.events.intake import CaseHandled, CaseReported
from services.contracts.events.tasks import TaskRef
from services.contracts.identity import ADMINISTRATOR, ALL_ROLES, INSPECTOR
from services.contracts.nodes import is_within, parent_of, subtree_prefix
from services.intake import domain
from services.intake.domain import CaseStatus, Catalogue, Category
from services.intake.models import Case, KnownPlace, KnownSubject, PublicSubmission
from services.intake.schemas import (PublicRequestOut, RequestCreatedOut, RequestQuery, ServiceOut,
                                     ServiceRequestIn, ServiceRequestOut)
from services.plumbing.config import number_setting
from services.plumbing.rate_limit import RateLimit
from services.plumbing.sql import insert_for


class OutboxLike(Protocol):
    def add(self, session: Session, payload, correlation_id: str | None = None, **kw): ...


class TooManyRequests(DomainError):
    """An anonymous client submitted too often (429, with Retry-After)."""
    status = 429
    code = "too_many_requests"

    def __init__(self, field: str, reason: str, retry_after: int):
        super().__init__(field, reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Settings:
    """Config keys (nameko YAML): INTAKE_DUPLICATE_WINDOW_HOURS (24), INTAKE_DUPLICATE_RADIUS_M
    (50), INTAKE_PUBLIC_MAX_PER_WINDOW (5), INTAKE_PUBLIC_WINDOW_SECONDS (3600),
    INTAKE_PUBLIC_DUPLICATE_HOURS (24), INTAKE_TRUST_FORWARDED_FOR (false), INTAKE_MAX_BACKDATE_HOURS (168:
    how long before it is sent a platform's case may have been registered), CAMPAIGN_START (an ISO
    date: no case is older)."""
    duplicate_window: timedelta = domain.DEFAULT_DUPLICATE_WINDOW
    duplicate_radius_m: float = domain.DEFAULT_DUPLICATE_RADIUS_M
    public_max_per_window: int = domain.DEFAULT_PUBLIC_MAX_PER_WINDOW
    public_window: timedelta = domain.DEFAULT_PUBLIC_WINDOW
    public_duplicate_window: timedelta = timedelta(hours=24)
    trust_forwarded_for: bool = False
    max_backdate: timedelta = timedelta(hours=168)
    campaign_start: datetime | None = None

    @classmethod
    def from_config(cls, config: dict) -> "Settings":
        def number(key, default):
            return number_setting(config, key, default)
        return cls(
            duplicate_window=timedelta(hours=number("INTAKE_DUPLICATE_WINDOW_HOURS", 24)),
            duplicate_radius_m=number("INTAKE_DUPLICATE_RADIUS_M", domain.DEFAULT_DUPLICATE_RADIUS_M),
            public_max_per_window=int(number("INTAKE_PUBLIC_MAX_PER_WINDOW", domain.DEFAULT_PUBLIC_MAX_PER_WINDOW)),
            public_window=timedelta(seconds=number("INTAKE_PUBLIC_WINDOW_SECONDS", 3600)),
            public_duplicate_window=timedelta(hours=number("INTAKE_PUBLIC_DUPLICATE_HOURS", 24)),
            trust_forwarded_for=str(config.get("INTAKE_TRUST_FORWARDED_FOR", "false")).lower() == "true",
            max_backdate=timedelta(hours=number("INTAKE_MAX_BACKDATE_HOURS", 168)),
            campaign_start=campaign_start(config))


@dataclass(frozen=True)
class Channel:
    """Who brings a case in."""
    source: str          # digital_city (a platform) | citizen_report (a resident)
    name: str            # the platform's name, or 群众
    submitted_by: str    # the principal's subject, or anonymous
    public: bool = False
    client: str | None = None


# --- the service list --------------------------------------------------------------------


def services_list(catalogue: Catalogue) -> list[ServiceOut]:
    return [ServiceOut(service_code=c.code, service_name=c.name, description=c.description,
                       keywords=f"处置时限{c.hours:g}小时,{c.severity}", group=c.group_name)
            for c in catalogue.categories]


# --- what intake learns from inspections: subjects and places ---------------------------


def _upsert(session: Session, table, values: dict, key: str) -> None:
    stmt = insert_for(session)(table).values(**values)
    session.execute(stmt.on_conflict_do_update(index_elements=[key],
                                               set_={k: v for k, v in values.items() if k != key}))


def learn_from_inspection(session: Session, event: InspectionSubmitted, now: datetime) -> None:
    """Keep the subject and the place an inspection names: cases at their nodes go to them."""
    subject = event.subject
    _upsert(session, KnownSubject.__table__, dict(subject_id=subject.subject_id, node=subject.node,
                                                  name=subject.name, subject_type=subject.subject_type.value,
                                                  updated_at=now), "subject_id")
    if event.place is not None:
        _upsert(session, KnownPlace.__table__, dict(place_id=event.place.place_id, node=event.place.node,
                                                    ref=event.place.model_dump(mode="json"), updated_at=now),
                "place_id")


# --- locating and routing ----------------------------------------------------------------


def _locate(session: Session, body: ServiceRequestIn, divisions: Iterable[tuple[str, str]], home: str
            ) -> tuple[str, dict | None, str]:
    """(division code, the place's PlaceRef as JSON or None, the field that located it)."""
    place = None
    if body.address_id is not None:
        known = session.get(KnownPlace, body.address_id)
        if known is None:
            raise UnknownReference("address_id", f"未知的地点 {body.address_id}; no place with this id is known "
                                                 "(places are registered in the inspection service)")
        node, place, field = known.node, dict(known.ref), "address_id"
    elif body.division_code is not None:
        node, field = body.division_code, "division_code"
    elif body.address_string is not None:
        field = "address_string"
        node = domain.node_from_address(body.address_string, divisions, home)
        if node is None:
            raise RuleViolation("address_string", "地址中没有本辖区的街道或社区名称; the address names no division "
                                                  "of this office's area: add division_code or address_id")
    elif body.lat is not None:
        raise RuleViolation("address_string", "仅凭经纬度无法确定所属区划; coordinates alone do not place a case in "
                                              "a division: add address_string, address_id or division_code")
    else:
        raise RuleViolation("address_string", "缺少位置; a location is required: address_string, address_id or "
                                              "division_code (with lat/long if known)")
    if not is_within(node, home):
        raise RuleViolation(field, f"{node} 不在本辖区 {home} 内; {node} is not within this office's area {home}")
    return node, place, field


def _subject_ref(subject: KnownSubject) -> SubjectRef:
    return SubjectRef(subject_id=subject.subject_id, node=subject.node, name=subject.name,
                      subject_type=subject.subject_type)


def responsible_for(session: Session, node: str, place: dict | None, home: str, field: str) -> SubjectRef:
    """The place's responsible subject (属地/门前三包) if it has one, else the unit (child unit
    first) registered at the case's division or the nearest division above it in this area."""
    if place and place.get("responsible_subject_id"):
        known = session.get(KnownSubject, place["responsible_subject_id"])
        if known is not None:
            return _subject_ref(known)
    code: str | None = node
    while code is not None and is_within(code, home):
        candidates = session.execute(select(KnownSubject).where(KnownSubject.node == code)).scalars().all()
        if candidates:
            best = min(candidates, key=lambda s: (s.subject_type != "child_unit", s.name, s.subject_id))
            return _subject_ref(best)
        code = parent_of(code)
    raise RuleViolation(field, f"{node} 暂无已知的责任单位; no responsible subject is known for {node} yet "
                               "(subjects become known from inspections of them)")


def _facts(case: Case) -> domain.CaseFacts:
    return domain.CaseFacts(case_id=case.id, service_code=case.service_code, node=case.node,
                            reported_at=case.reported_at, place_id=case.place_id, address=case.address,
                            gps=(case.lat, case.lng) if case.lat is not None else None, status=case.status)


# A resident's anonymous report (source citizen_report) and an official case (a 数字城管 or
# 12345 platform's, an inspector's) are of different standing: one never absorbs the other.
RESIDENT_SOURCE = "citizen_report"


def _official(case: Case) -> bool:
    return case.source != RESIDENT_SOURCE


def _first_duplicate(session: Session, case: Case, settings: Settings) -> Case | None:
    """The earlier case `case` repeats and is merged into: only a case the office has taken
    on (routed or later — never a report still awaiting acceptance, 待受理) and of the same
    standing (official with official, resident with resident). So an unaccepted anonymous
    report never swallows a platform's or an inspector's case."""
    earliest = case.reported_at - settings.duplicate_window
    conditions = [Case.node == case.node]
    if case.place_id:
        conditions.append(Case.place_id == case.place_id)
    standing = Case.source != RESIDENT_SOURCE if _official(case) else Case.source == RESIDENT_SOURCE
    rows = session.execute(select(Case).where(
        Case.service_code == case.service_code, Case.reported_at >= earliest, Case.reported_at <= case.reported_at,
        Case.status.notin_([CaseStatus.merged.value, CaseStatus.rejected.value, CaseStatus.submitted.value]),
        Case.merged_into.is_(None), standing, Case.id != case.id,
        or_(*conditions)).order_by(Case.reported_at, Case.id)).scalars().all()
    first = domain.first_of_duplicates(_facts(case), [_facts(r) for r in rows], settings.duplicate_window,
                                       settings.duplicate_radius_m)
    return next((r for r in rows if first is not None and r.id == first.case_id), None)


def _unmerge(session: Session, absorber: Case, catalogue: Catalogue, outbox: OutboxLike, home: str, now: datetime,
             keep=lambda case: False) -> list[Case]:
    """Undo the merges into `absorber` that do not hold (all of them when it is refused, those
    of another standing when it is accepted; merges made before these rules): an official case
    is routed now (its time limit runs from now: its subject was never told), a resident's
    report waits for acceptance again."""
    released = []
    for case in session.execute(select(Case).where(Case.merged_into == absorber.id).order_by(
            Case.reported_at, Case.id).with_for_update()).scalars().all():
        if case.status != CaseStatus.merged.value or keep(case):
            continue
        case.merged_into, case.updated_at = None, now
        absorber.duplicates = max((absorber.duplicates or 0) - 1, 0)
        if _official(case):
            route(session, case, catalogue.get(case.service_code, "case_id"), outbox, home, now, "case_id",
                  clock_starts=now)
        else:
            case.status = CaseStatus.submitted.value
        released.append(case)
    return released


def route(session: Session, case: Case, category: Category, outbox: OutboxLike, home: str, now: datetime,
          field: str = "address_string", clock_starts: datetime | None = None) -> None:
    """Hand the case to its responsible subject's ledger: `case_reported` in this transaction."""
    responsible = responsible_for(session, case.node, case.place, home, field)
    case.deadline_at = category.deadline_from(clock_starts or case.reported_at)
    case.responsible_subject_id, case.responsible_name = responsible.subject_id, responsible.name
    case.responsible = responsible.model_dump(mode="json")
    case.status, case.updated_at = CaseStatus.routed.value, now
    outbox.add(session, CaseReported(
        case_id=case.id, source=case.source, receiving_node=home, channel=case.channel,
        service_code=case.service_code, service_name=case.service_name, group_code=case.group_code,
        group_name=case.group_name, severity=case.severity, description=case.description, address=case.address,
        gps={"lat": case.lat, "lng": case.lng} if case.lat is not None else None, node=case.node,
        place=PlaceRef.model_validate(case.place) if case.place else None, responsible=responsible,
        media=[], media_url=case.media_url, reported_at=case.reported_at, deadline_at=case.deadline_at),
        correlation_id=case.id)


# --- taking a case in --------------------------------------------------------------------


def _check_public_bounds(session: Session, channel: Channel, digest: str, settings: Settings, now: datetime) -> None:
    """Per client address: at most N submissions a window (429); identical content from
    anyone within a day is refused (409). Only accepted submissions count."""
    keep = max(settings.public_window, settings.public_duplicate_window)
    session.execute(delete(PublicSubmission).where(PublicSubmission.at < now - keep))
    times = session.execute(select(PublicSubmission.at).where(
        PublicSubmission.client == channel.client, PublicSubmission.at > now - settings.public_window)).scalars().all()
    wait = RateLimit(settings.public_max_per_window, settings.public_window).retry_after(times, now)
    if wait is not None:
        raise TooManyRequests("client", f"提交过于频繁，请 {wait} 秒后再试; too many reports from this address, "
                                        f"try again in {wait} s", wait)
    same = session.execute(select(PublicSubmission.id).where(
        PublicSubmission.content_digest == digest,
        PublicSubmission.at > now - settings.public_duplicate_window).limit(1)).first()
    if same is not None:
        raise StateConflict("description", "相同内容的举报已收到; an identical report was received already")
    session.add(PublicSubmission(client=channel.client or "unknown", content_digest=digest, at=now))


def submit(session: Session, body: ServiceRequestIn, channel: Channel, catalogue: Catalogue,
           divisions: Iterable[tuple[str, str]], home: str, settings: Settings, outbox: OutboxLike,
           now: datetime) -> list[RequestCreatedOut]:
    """A platform's case is routed at once; a resident's report waits for the office to accept
    it; a report of a problem already reported (same category and place, within the window)
    is merged into the first case and routed nowhere — only into a case the office has taken on
    and of the same standing (`_first_duplicate`)."""
    category = catalogue.get(body.service_code)
    digest = domain.content_digest(category.code, body.description)
    if channel.public:
        _check_public_bounds(session, channel, digest, settings, now)
    reported_at = now
    if body.requested_datetime is not None and not channel.public:
        # A platform's instant is bounded like a person's: a backdated case would be overdue,
        # escalated and scored at once (issue 27).
        problem = reported_instant_problem(body.requested_datetime, now, not_before=settings.campaign_start,
                                           max_age=settings.max_backdate)
        if problem:
            raise RuleViolation("requested_datetime", problem)
        reported_at = body.requested_datetime
    node, place, field = _locate(session, body, divisions, home)
    case = Case(
        id=str(uuid.uuid4()), source=channel.source, channel=channel.name[:200], submitted_by=channel.submitted_by[:200],
        client=channel.client, service_code=category.code, service_name=category.name,
        group_code=category.group_code, group_name=category.group_name, severity=category.severity,
        description=body.description, content_digest=digest, address=body.address_string,
        lat=body.lat, lng=body.long, node=node, place_id=body.address_id if place else None, place=place,
        media_url=str(body.media_url) if body.media_url else None, reported_at=reported_at,
        status=CaseStatus.submitted.value, duplicates=0, updated_at=now)
    first = _first_duplicate(session, case, settings)
    session.add(case)
    if first is not None:
        case.status, case.merged_into = CaseStatus.merged.value, first.id
        first.duplicates = (first.duplicates or 0) + 1
        notice = f"与案件 {first.id} 为同一问题，已合并处理; merged into the earlier report {first.id}"
    elif channel.public:
        notice = "已收到，待受理; received, awaiting acceptance by the office"
    else:
        route(session, case, category, outbox, home, now, field)
        notice = (f"已受理，派遣至{case.responsible_name}，处置时限{category.hours:g}小时; "
                  f"accepted and routed to {case.responsible_name}")
    session.flush()
    return [RequestCreatedOut(service_request_id=case.id, service_notice=notice)]


# --- the office's side: accepting or refusing a resident's report ------------------------


def _case(session: Session, case_id: str, lock: bool = False) -> Case:
    try:
        uuid.UUID(case_id)
    except ValueError:
        raise UnknownReference("case_id", f"未知的案件 {case_id}; no such case") from None
    stmt = select(Case).where(Case.id == case_id)
    if lock:
        stmt = stmt.with_for_update()
    case = session.execute(stmt).scalar_one_or_none()
    if case is None:
        raise UnknownReference("case_id", f"未知的案件 {case_id}; no such case")
    return case


def accept(session: Session, case_id: str, principal, catalogue: Catalogue, outbox: OutboxLike, home: str,
           now: datetime) -> ServiceRequestOut:
    case = _case(session, case_id, lock=True)
    principal.require((INSPECTOR, ADMINISTRATOR), case.node, "case_id")
    if case.status != CaseStatus.submitted.value:
        raise StateConflict("case_id", f"案件状态为 {case.status}，无需受理; only a report awaiting acceptance "
                                       f"can be accepted, this one is {case.status}")
    # The time limit runs from acceptance: the subject could not act on it before.
    route(session, case, catalogue.get(case.service_code, "case_id"), outbox, home, now, "case_id",
          clock_starts=now)
    # Official cases merged into it (before these rules) go their own way: not of its standing.
    _unmerge(session, case, catalogue, outbox, home, now, keep=lambda merged: not _official(merged))
    session.flush()
    return request_out(session, case)


def reject(session: Session, case_id: str, principal, reason: str, now: datetime, catalogue: Catalogue,
           outbox: OutboxLike, home: str) -> ServiceRequestOut:
    case = _case(session, case_id, lock=True)
    principal.require((INSPECTOR, ADMINISTRATOR), case.node, "case_id")
    if case.status != CaseStatus.submitted.value:
        raise StateConflict("case_id", f"案件状态为 {case.status}，不能退回; only a report awaiting acceptance "
                                       f"can be refused, this one is {case.status}")
    case.status, case.status_reason, case.closed_at, case.updated_at = CaseStatus.rejected.value, reason, now, now
    # What was merged into a refused report is not refused with it.
    _unmerge(session, case, catalogue, outbox, home, now)
    session.flush()
    return request_out(session, case)


# --- following the case's task -------------------------------------------------------------


def follow_task(session: Session, task: TaskRef, to_status: str, now: datetime, at: datetime | None = None,
                only_from: Iterable[str] | None = None) -> Case | None:
    """Mirror the task's status on its case (the task has the case's id). Close-out is final:
    a status event delivered late never reopens a closed case."""
    case = session.execute(select(Case).where(Case.id == task.task_id).with_for_update()).scalar_one_or_none()
    if case is None or case.status in (CaseStatus.merged.value, CaseStatus.rejected.value, CaseStatus.closed.value):
        return None
    if only_from is not None and case.status not in set(only_from):
        return None
    case.status = domain.case_status_of_task(to_status).value
    case.responsible_name, case.deadline_at, case.updated_at = task.responsible.name, task.deadline_at, now
    if case.status == CaseStatus.closed.value:
        case.closed_at = at or now
    return case


def record_handling(session: Session, task: TaskRef, outcome: str, outbox: OutboxLike, now: datetime,
                    at: datetime | None = None) -> Case | None:
    """Publish how the case counts for its subject (`case_handled`), when it changes that."""
    case = session.execute(select(Case).where(Case.id == task.task_id).with_for_update()).scalar_one_or_none()
    if case is None or case.merged_into or case.responsible is None or not domain.improves(case.handled_outcome, outcome):
        return None
    case.handled_outcome, case.updated_at = outcome, now
    outbox.add(session, CaseHandled(
        case_id=case.id, source=case.source, receiving_node=task.inspecting_node,
        responsible=SubjectRef.model_validate(case.responsible), service_code=case.service_code,
        service_name=case.service_name, reported_at=case.reported_at, deadline_at=task.deadline_at,
        outcome=outcome, score=domain.HANDLING_POINTS[outcome], scale=domain.HANDLING_SCALE,
        handled_at=at or now), correlation_id=case.id)
    return case


# --- reading -------------------------------------------------------------------------------


def _shown(session: Session, case: Case) -> Case:
    """Whose status a reporter sees: a merged report shows the case it was merged into."""
    if case.merged_into:
        first = session.get(Case, case.merged_into)
        if first is not None:
            return first
    return case


def _notes(session: Session, case: Case) -> tuple[str, Case]:
    shown = _shown(session, case)
    notes = domain.status_note(shown.status, shown.responsible_name, shown.deadline_at, shown.status_reason)
    if shown is not case:
        notes = f"与案件 {shown.id} 为同一问题，已合并：{notes}"
    return notes, shown


def request_out(session: Session, case: Case) -> ServiceRequestOut:
    notes, shown = _notes(session, case)
    return ServiceRequestOut(
        service_request_id=case.id, status=domain.open311_status(shown.status), status_notes=notes,
        service_code=case.service_code, service_name=case.service_name, description=case.description,
        agency_responsible=shown.responsible_name, service_notice=None, requested_datetime=case.reported_at,
        updated_datetime=max(case.updated_at, shown.updated_at), expected_datetime=shown.deadline_at,
        address=case.address, address_id=case.place_id, lat=case.lat, long=case.lng, media_url=case.media_url,
        division_code=case.node, case_status=case.status, merged_into=case.merged_into, source=case.source)


def public_request_out(session: Session, case: Case) -> PublicRequestOut:
    notes, shown = _notes(session, case)
    return PublicRequestOut(
        service_request_id=case.id, status=domain.open311_status(shown.status), status_notes=notes,
        service_code=case.service_code, service_name=case.service_name, requested_datetime=case.reported_at,
        updated_datetime=max(case.updated_at, shown.updated_at), expected_datetime=shown.deadline_at)


def _visible(principal, case: Case) -> bool:
    return principal.sees(case.node)


def get_request(session: Session, case_id: str, principal) -> list[ServiceRequestOut]:
    case = _case(session, case_id)
    if not _visible(principal, case):
        raise PermissionDenied("case_id", f"无权查看 {case.node} 的案件; no role on {case.node} or above it")
    return [request_out(session, case)]


def get_public_request(session: Session, case_id: str) -> list[PublicRequestOut]:
    return [public_request_out(session, _case(session, case_id))]


def list_requests(session: Session, query: RequestQuery, principal, now: datetime) -> list[ServiceRequestOut]:
    """Open311's list, within the caller's subtrees; by default the last 90 days (the spec's)."""
    nodes = principal.nodes_with(ALL_ROLES)
    if not nodes:
        return []
    stmt = select(Case).where(or_(*[Case.node.like(subtree_prefix(n) + "%") for n in nodes]))
    if query.service_request_id:
        ids = [i for i in query.service_request_id.split(",") if i][:100]
        stmt = stmt.where(Case.id.in_(ids))
    if query.service_code:
        stmt = stmt.where(Case.service_code == query.service_code)
    start = query.start_date or (now - timedelta(days=90) if not query.service_request_id else None)
    if start is not None:
        stmt = stmt.where(Case.reported_at >= start)
    if query.end_date is not None:
        stmt = stmt.where(Case.reported_at <= query.end_date)
    if query.start_date and query.end_date and query.start_date > query.end_date:
        raise RuleViolation("query.end_date", "结束时间早于开始时间; end_date is before start_date")
    rows = session.execute(stmt.order_by(Case.reported_at.desc(), Case.id)).scalars().all()
    out = [request_out(session, c) for c in rows]
    if query.status:
        out = [r for r in out if r.status == query.status]
    return out[query.offset: query.offset + query.limit]
