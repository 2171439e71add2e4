"""Use cases of the inspection service: registry and inspections.

Each function takes a SQLAlchemy session and, where it publishes, an outbox; the caller
owns the transaction. No nameko imports, so these run the same from HTTP, RPC or a test.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session

from services.contracts.errors import StateConflict, UnknownReference
from services.contracts.checklists import Catalogue, ChecklistLookupError
from services.contracts.events.inspection import (ChecklistRef, Evidence, Finding, GeoPoint,
                                                  InspectionSubmitted, PlaceRef, SubjectRef)
from services.contracts.nodes import is_within, NodeTree
from services.inspection.domain import InspectionRuleViolation, check_inspected_at, score_results
from services.inspection.models import Inspection, ItemResult, Place, Subject
from services.inspection.schemas import (InspectionIn, InspectionOut, ItemResultOut, ListQuery, NodeQuery,
                                         PlaceCreate, PlaceOut, PlaceQuery, SubjectCreate, SubjectOut,
                                         ChecklistChoice)




class OutboxLike(Protocol):
    def add(self, session: Session, payload, correlation_id: str | None = None, **kw): ...


class Jurisdiction:
    """Which nodes this stack may register and inspect: its home node and below."""

    def __init__(self, home: str, tree: NodeTree | None = None):
        self.home = home
        self.tree = tree

    def check(self, code: str, field: str) -> None:
        if not is_within(code, self.home):
            raise InspectionRuleViolation(field, f"node {code} is outside this stack's jurisdiction ({self.home})")
        if self.tree is not None and self.tree.nodes and code not in self.tree.nodes:
            raise InspectionRuleViolation(field, f"node {code} is not a known division code")


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- registry -------------------------------------------------------------------------


def subject_out(s: Subject) -> SubjectOut:
    return SubjectOut(subject_id=s.id, subject_type=s.subject_type, node=s.node, name=s.name,
                      contacts=s.contacts or [], created_at=s.created_at)


def register_subject(session: Session, data: SubjectCreate, jurisdiction: Jurisdiction) -> SubjectOut:
    # A child unit at the home node itself is the office's own unit (本级), for its self-checks
    # (自查): a community stack's own score is what it reports to the street.
    jurisdiction.check(data.node, "node")
    existing = session.execute(select(Subject).where(
        Subject.node == data.node, Subject.subject_type == data.subject_type.value,
        Subject.name == data.name)).scalar_one_or_none()
    if existing is not None:
        raise StateConflict("name", f"subject {data.name!r} is already registered as {existing.id}")
    subject = Subject(id=str(uuid.uuid4()), subject_type=data.subject_type.value, node=data.node,
                      name=data.name, contacts=data.contacts, created_at=_now())
    session.add(subject)
    session.flush()
    return subject_out(subject)


def get_subject(session: Session, subject_id: str, field: str = "subject_id") -> Subject:
    subject = session.get(Subject, subject_id)
    if subject is None:
        raise UnknownReference(field, f"unknown subject {subject_id!r}")
    return subject


def list_subjects(session: Session, query: NodeQuery) -> list[SubjectOut]:
    stmt = select(Subject).order_by(Subject.node, Subject.name)
    if query.node:
        stmt = stmt.where(Subject.node == query.node)
    if query.subject_type:
        stmt = stmt.where(Subject.subject_type == query.subject_type.value)
    rows = session.execute(stmt.limit(query.limit).offset(query.offset)).scalars()
    return [subject_out(s) for s in rows]


def place_out(p: Place) -> PlaceOut:
    gps = GeoPoint(lat=p.lat, lng=p.lng) if p.lat is not None else None
    return PlaceOut(place_id=p.id, place_type=p.place_type, name=p.name, address=p.address, gps=gps,
                    node=p.node, responsible_subject_id=p.responsible_subject_id, created_at=p.created_at)


def register_place(session: Session, data: PlaceCreate, jurisdiction: Jurisdiction) -> PlaceOut:
    jurisdiction.check(data.node, "node")
    if data.responsible_subject_id is not None:
        get_subject(session, data.responsible_subject_id, "responsible_subject_id")
    place = Place(id=str(uuid.uuid4()), place_type=data.place_type.value, name=data.name,
                  address=data.address, lat=data.gps.lat if data.gps else None,
                  lng=data.gps.lng if data.gps else None, node=data.node,
                  responsible_subject_id=data.responsible_subject_id, created_at=_now())
    session.add(place)
    session.flush()
    return place_out(place)


def get_place(session: Session, place_id: str, field: str = "place_id") -> Place:
    place = session.get(Place, place_id)
    if place is None:
        raise UnknownReference(field, f"unknown place {place_id!r}")
    return place


def list_places(session: Session, query: PlaceQuery) -> list[PlaceOut]:
    stmt = select(Place).order_by(Place.node, Place.name)
    if query.node:
        stmt = stmt.where(Place.node == query.node)
    if query.place_type:
        stmt = stmt.where(Place.place_type == query.place_type.value)
    return [place_out(p) for p in session.execute(stmt.limit(query.limit).offset(query.offset)).scalars()]


# --- inspections ----------------------------------------------------------------------


def inspection_out(insp: Inspection, catalogue: Catalogue) -> InspectionOut:
    checklist = catalogue.checklist(insp.checklist_version, insp.checklist_code)
    results = []
    for r in insp.results:
        item = checklist.item(r.item_code)
        results.append(ItemResultOut(
            item_code=r.item_code, item_text=item.text, category_code=r.category_code,
            findings=r.findings, deduction=r.deduction, note=r.note,
            evidence=[Evidence.model_validate(e) for e in r.evidence or []],
            gps=GeoPoint(lat=r.lat, lng=r.lng) if r.lat is not None else None, deadline_at=r.deadline_at))
    return InspectionOut(
        inspection_id=insp.id, status=insp.status, kind=insp.kind, subject_id=insp.subject_id,
        place_id=insp.place_id, checklist=ChecklistChoice(version=insp.checklist_version, code=insp.checklist_code),
        catalogue_id=insp.catalogue_id, inspectors=insp.inspectors, inspected_at=insp.inspected_at,
        submitted_at=insp.submitted_at, note=insp.note, score=insp.score, scale=insp.scale,
        points_available=insp.points_available, points_deducted=insp.points_deducted, results=results,
        idempotency_key=insp.idempotency_key)


def _validated_sheet(session: Session, data: InspectionIn, catalogue: Catalogue, jurisdiction: Jurisdiction,
                     scale: int, now: datetime):
    check_inspected_at(data.inspected_at, now)
    subject = get_subject(session, data.subject_id)
    jurisdiction.check(subject.node, "subject_id")
    place = None
    if data.place_id is not None:
        place = get_place(session, data.place_id)
        jurisdiction.check(place.node, "place_id")
    try:
        catalogue.version(data.checklist.version)
    except ChecklistLookupError as exc:
        raise InspectionRuleViolation("checklist.version", str(exc)) from None
    try:
        checklist = catalogue.checklist(data.checklist.version, data.checklist.code)
    except ChecklistLookupError as exc:
        raise InspectionRuleViolation("checklist.code", str(exc)) from None
    if place is not None and checklist.place_types and place.place_type not in checklist.place_types:
        raise InspectionRuleViolation(
            "checklist.code", f"checklist {checklist.code!r} is not for a place of type {place.place_type!r}")
    sheet = score_results(checklist, data.results, data.inspected_at, scale)
    return subject, place, checklist, sheet


def _apply(insp: Inspection, data: InspectionIn, sheet) -> None:
    insp.kind = data.kind.value
    insp.subject_id = data.subject_id
    insp.place_id = data.place_id
    insp.checklist_version = data.checklist.version
    insp.checklist_code = data.checklist.code
    insp.inspectors = list(data.inspectors)
    insp.inspected_at = data.inspected_at
    insp.note = data.note
    insp.scale = sheet.scale
    session = object_session(insp)
    if session is not None and insp.results:
        # Delete the draft's old rows before inserting their replacements (unique item per inspection).
        insp.results.clear()
        session.flush()
    insp.results = [
        ItemResult(position=i, item_code=s.item.code, category_code=s.category.code, findings=s.findings,
                   deduction=s.deduction, note=s.note,
                   evidence=[e.model_dump(mode="json") for e in s.evidence],
                   lat=s.gps.lat if s.gps else None, lng=s.gps.lng if s.gps else None, deadline_at=s.deadline_at)
        for i, s in enumerate(sheet.items)]


def _place_ref(session: Session, place: Place) -> PlaceRef:
    responsible = session.get(Subject, place.responsible_subject_id) if place.responsible_subject_id else None
    return PlaceRef(place_id=place.id, name=place.name, place_type=place.place_type, address=place.address,
                    gps=GeoPoint(lat=place.lat, lng=place.lng) if place.lat is not None else None,
                    node=place.node, responsible_subject_id=place.responsible_subject_id,
                    responsible_subject_name=responsible.name if responsible else None,
                    responsible_subject_node=responsible.node if responsible else None)


def _submit(session: Session, insp: Inspection, subject: Subject, place: Place | None, checklist, sheet,
            catalogue: Catalogue, outbox: OutboxLike, home: str, now: datetime) -> None:
    insp.status = "submitted"
    insp.submitted_at = now
    insp.score = sheet.score
    insp.points_available = sheet.points_available
    insp.points_deducted = sheet.points_deducted
    findings = [
        Finding(item_code=s.item.code, item_text=s.item.text, category_code=s.category.code,
                category_name=s.category.name, severity=s.item.severity, findings=max(s.findings, 1),
                deduction=s.deduction, max_points=s.item.max_points, note=s.note, evidence=list(s.evidence),
                gps=s.gps, deadline_hours=s.item.deadline_hours, deadline_at=s.deadline_at)
        for s in sheet.findings]
    event = InspectionSubmitted(
        inspection_id=insp.id, inspecting_node=home, kind=insp.kind,
        subject=SubjectRef(subject_id=subject.id, node=subject.node, name=subject.name,
                           subject_type=subject.subject_type),
        place=_place_ref(session, place) if place else None,
        checklist=ChecklistRef(catalogue_id=catalogue.catalogue_id, version=insp.checklist_version,
                               code=insp.checklist_code),
        inspected_at=insp.inspected_at, submitted_at=now, inspectors=insp.inspectors, score=sheet.score,
        scale=sheet.scale, points_available=sheet.points_available, points_deducted=sheet.points_deducted,
        findings=findings)
    outbox.add(session, event, correlation_id=insp.id)


def record_inspection(session: Session, data: InspectionIn, catalogue: Catalogue, jurisdiction: Jurisdiction,
                      outbox: OutboxLike, scale: int, now: datetime | None = None) -> tuple[InspectionOut, bool]:
    """Create a draft or submitted inspection. Returns (inspection, created).

    A repeated idempotency key returns the stored inspection unchanged (created=False):
    phones retry offline captures and must never create a duplicate.
    """
    now = now or _now()
    if data.idempotency_key:
        existing = session.execute(select(Inspection).where(
            Inspection.idempotency_key == data.idempotency_key)).scalar_one_or_none()
        if existing is not None:
            return inspection_out(existing, catalogue), False
    subject, place, checklist, sheet = _validated_sheet(session, data, catalogue, jurisdiction, scale, now)
    insp = Inspection(id=str(uuid.uuid4()), idempotency_key=data.idempotency_key, status="draft",
                      catalogue_id=catalogue.catalogue_id, created_at=now)
    _apply(insp, data, sheet)
    session.add(insp)
    if data.submit:
        _submit(session, insp, subject, place, checklist, sheet, catalogue, outbox, jurisdiction.home, now)
    try:
        session.flush()
    except IntegrityError:
        # Two retries raced past the lookup; the caller retries and finds the winner.
        raise StateConflict("idempotency_key", "a concurrent request with this key is in progress; retry")
    return inspection_out(insp, catalogue), True


def _draft(session: Session, inspection_id: str) -> Inspection:
    insp = session.get(Inspection, inspection_id)
    if insp is None:
        raise UnknownReference("inspection_id", f"unknown inspection {inspection_id!r}")
    if insp.status != "draft":
        raise StateConflict("status", "the inspection is already submitted; submitted inspections are final")
    return insp


def update_draft(session: Session, inspection_id: str, data: InspectionIn, catalogue: Catalogue,
                 jurisdiction: Jurisdiction, outbox: OutboxLike, scale: int,
                 now: datetime | None = None) -> InspectionOut:
    now = now or _now()
    insp = _draft(session, inspection_id)
    subject, place, checklist, sheet = _validated_sheet(session, data, catalogue, jurisdiction, scale, now)
    _apply(insp, data, sheet)
    if data.submit:
        _submit(session, insp, subject, place, checklist, sheet, catalogue, outbox, jurisdiction.home, now)
    session.flush()
    return inspection_out(insp, catalogue)


def submit_draft(session: Session, inspection_id: str, catalogue: Catalogue, jurisdiction: Jurisdiction,
                 outbox: OutboxLike, now: datetime | None = None) -> InspectionOut:
    insp = _draft(session, inspection_id)
    stored = InspectionIn(
        kind=insp.kind, subject_id=insp.subject_id, place_id=insp.place_id,
        checklist=ChecklistChoice(version=insp.checklist_version, code=insp.checklist_code),
        inspectors=insp.inspectors, inspected_at=insp.inspected_at, note=insp.note, submit=True,
        results=[dict(item_code=r.item_code, findings=r.findings, deduction=r.deduction, note=r.note,
                      evidence=r.evidence or [], deadline_at=r.deadline_at,
                      gps={"lat": r.lat, "lng": r.lng} if r.lat is not None else None) for r in insp.results])
    return update_draft(session, inspection_id, stored, catalogue, jurisdiction, outbox, insp.scale, now)


def get_inspection(session: Session, inspection_id: str, catalogue: Catalogue) -> InspectionOut:
    insp = session.get(Inspection, inspection_id)
    if insp is None:
        raise UnknownReference("inspection_id", f"unknown inspection {inspection_id!r}")
    return inspection_out(insp, catalogue)


def list_inspections(session: Session, query: ListQuery, catalogue: Catalogue) -> list[InspectionOut]:
    stmt = select(Inspection).order_by(Inspection.inspected_at.desc(), Inspection.id)
    if query.subject_id:
        stmt = stmt.where(Inspection.subject_id == query.subject_id)
    if query.kind:
        stmt = stmt.where(Inspection.kind == query.kind.value)
    if query.status:
        stmt = stmt.where(Inspection.status == query.status)
    if query.since:
        stmt = stmt.where(Inspection.inspected_at >= query.since)
    if query.until:
        stmt = stmt.where(Inspection.inspected_at < query.until)
    rows = session.execute(stmt.limit(query.limit).offset(query.offset)).scalars()
    return [inspection_out(i, catalogue) for i in rows]
