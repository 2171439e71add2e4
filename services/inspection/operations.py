"""Use cases of the inspection service: registry and inspections.

Each function takes a SQLAlchemy session, the verified caller and, where it publishes, an
outbox; the caller owns the transaction. No nameko imports, so these run the same from
HTTP, RPC or a test.

Who may do what (issue 10): administrators of a node covering the record's node register
subjects and places; inspectors holding the role on a node covering the subject's node
record, edit and submit inspections; everyone reads only their own subtrees. An
unannounced inspection (暗访) is seen only by its inspecting office until that office
releases it, and its inspectors, its note and who recorded, submitted and released it are
never shown to the subject side.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Iterable, Protocol

from sqlalchemy import false, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session

from services.contracts.errors import DomainError, StateConflict, UnknownReference
from services.contracts.checklists import Catalogue, ChecklistLookupError
from services.contracts.events.inspection import (ChecklistRef, CloseOut, Evidence, Finding, GeoPoint,
                                                  InspectionReleased, InspectionSubmitted, PlaceRef, SubjectRef)
from services.contracts.nodes import is_within, NodeTree
from services.contracts.periods import CST
from services.contracts.identity import ADMINISTRATOR, INSPECTOR, OFFICE_ROLES, Principal
from services.inspection.domain import (UNANNOUNCED, InspectionRuleViolation,
                                        check_inspected_at, may_see_inspection, redacted_for, score_results,
                                        subtree_prefixes)
from services.inspection import imports
from services.inspection.models import Inspection, ItemResult, Place, Subject
from services.plumbing.idempotency import KEY_IN_FLIGHT, KEY_REUSED, client_key, key_scope, stored_for_key
from services.inspection.schemas import (InspectionIn, InspectionOut, ItemResultIn, ItemResultOut, ListQuery,
                                         NodeQuery, PlaceCreate, PlaceOut, PlaceQuery, SubjectCreate, SubjectOut,
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


def _within_any(column, nodes: Iterable[str]):
    """SQL: `column` (a division code) lies in one of these nodes' subtrees."""
    prefixes = subtree_prefixes(nodes)
    if not prefixes:
        return false()
    return or_(*[column.like(f"{prefix}%") for prefix in prefixes])


def _reach(caller: Principal, column, query_node: str | None, field: str = "query.node"):
    """The list filter: the caller's subtrees, or the asked node's if the caller reaches it."""
    if query_node:
        caller.require_sees(query_node, field)
        return _within_any(column, [query_node])
    return _within_any(column, caller.nodes_with())


# --- registry -------------------------------------------------------------------------


def subject_out(s: Subject) -> SubjectOut:
    return SubjectOut(subject_id=s.id, subject_type=s.subject_type, node=s.node, name=s.name,
                      contacts=s.contacts or [], created_at=s.created_at)


def register_subject(session: Session, data: SubjectCreate, jurisdiction: Jurisdiction,
                     caller: Principal) -> SubjectOut:
    # A child unit at the home node itself is the office's own unit (本级), for its self-checks
    # (自查): a community stack's own score is what it reports to the street.
    caller.require(ADMINISTRATOR, data.node, "node")
    jurisdiction.check(data.node, "node")
    existing = session.execute(select(Subject).where(
        Subject.node == data.node, Subject.subject_type == data.subject_type.value,
        Subject.name == data.name)).scalar_one_or_none()
    if existing is not None:
        raise StateConflict("name", f"subject {data.name!r} is already registered as {existing.id}")
    subject = Subject(id=str(uuid.uuid4()), subject_type=data.subject_type.value, node=data.node,
                      name=data.name, contacts=data.contacts, created_at=_now())
    session.add(subject)
    try:
        session.flush()
    except IntegrityError:
        # Another request registered the same name between the lookup and the insert (the
        # transaction is rolled back as the error leaves it).
        raise StateConflict("name", f"subject {data.name!r} is already registered at {data.node}") from None
    return subject_out(subject)


def get_subject(session: Session, subject_id: str, field: str = "subject_id") -> Subject:
    subject = session.get(Subject, subject_id)
    if subject is None:
        raise UnknownReference(field, f"unknown subject {subject_id!r}")
    return subject


def read_subject(session: Session, subject_id: str, caller: Principal) -> SubjectOut:
    subject = get_subject(session, subject_id)
    caller.require_sees(subject.node, "subject_id")
    return subject_out(subject)


def list_subjects(session: Session, query: NodeQuery, caller: Principal) -> list[SubjectOut]:
    stmt = select(Subject).order_by(Subject.node, Subject.name)
    stmt = stmt.where(_reach(caller, Subject.node, query.node))
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


def register_place(session: Session, data: PlaceCreate, jurisdiction: Jurisdiction, caller: Principal) -> PlaceOut:
    caller.require(ADMINISTRATOR, data.node, "node")
    jurisdiction.check(data.node, "node")
    if data.responsible_subject_id is not None:
        responsible = get_subject(session, data.responsible_subject_id, "responsible_subject_id")
        caller.require_sees(responsible.node, "responsible_subject_id")
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


def read_place(session: Session, place_id: str, caller: Principal) -> PlaceOut:
    place = get_place(session, place_id)
    caller.require_sees(place.node, "place_id")
    return place_out(place)


def list_places(session: Session, query: PlaceQuery, caller: Principal) -> list[PlaceOut]:
    stmt = select(Place).order_by(Place.node, Place.name)
    stmt = stmt.where(_reach(caller, Place.node, query.node))
    if query.node:
        stmt = stmt.where(Place.node == query.node)
    if query.place_type:
        stmt = stmt.where(Place.place_type == query.place_type.value)
    return [place_out(p) for p in session.execute(stmt.limit(query.limit).offset(query.offset)).scalars()]


# --- inspections ----------------------------------------------------------------------


class _Seen:
    """An inspection with what the visibility rules need (its subject's node)."""

    def __init__(self, insp: Inspection, subject_node: str, home: str):
        self.insp = insp
        self.subject_node = subject_node
        # Rows from before the inspecting node was recorded were made by this stack.
        self.inspecting_node = insp.inspecting_node or home

    def visible_to(self, caller: Principal) -> bool:
        return may_see_inspection(caller, kind=self.insp.kind, subject_node=self.subject_node,
                                  inspecting_node=self.inspecting_node, released=self.insp.released_at is not None,
                                  draft=self.insp.status == "draft")


def inspection_out(insp: Inspection, catalogue: Catalogue, caller: Principal, home: str) -> InspectionOut:
    inspecting_node = insp.inspecting_node or home
    hidden = redacted_for(caller, kind=insp.kind, inspecting_node=inspecting_node)
    checklist = catalogue.checklist(insp.checklist_version, insp.checklist_code)
    results = []
    for r in insp.results:
        item = checklist.item(r.item_code)
        results.append(ItemResultOut(
            item_code=r.item_code, item_text=item.text, category_code=r.category_code,
            findings=r.findings, deduction=r.deduction, note=r.note,
            evidence=[Evidence.model_validate(e) for e in r.evidence or []],
            gps=GeoPoint(lat=r.lat, lng=r.lng) if r.lat is not None else None, deadline_at=r.deadline_at))

    def shown(name, value, empty=None):
        return empty if name in hidden else value

    return InspectionOut(
        inspection_id=insp.id, status=insp.status, kind=insp.kind, subject_id=insp.subject_id,
        place_id=insp.place_id, checklist=ChecklistChoice(version=insp.checklist_version, code=insp.checklist_code),
        catalogue_id=insp.catalogue_id, inspecting_node=inspecting_node,
        inspectors=shown("inspectors", list(insp.inspectors or []), []), inspected_at=insp.inspected_at,
        submitted_at=insp.submitted_at, note=shown("note", insp.note), score=insp.score, scale=insp.scale,
        points_available=insp.points_available, points_deducted=insp.points_deducted, results=results,
        idempotency_key=insp.idempotency_key, recorded_by=shown("recorded_by", insp.recorded_by),
        submitted_by=shown("submitted_by", insp.submitted_by), released_at=insp.released_at,
        released_by=shown("released_by", insp.released_by), redacted=list(hidden))


def _validated_sheet(session: Session, data: InspectionIn, catalogue: Catalogue, jurisdiction: Jurisdiction,
                     scale: int, now: datetime, caller: Principal):
    # Who before what: the subject decides whether this caller may inspect at all.
    subject = get_subject(session, data.subject_id)
    caller.require(INSPECTOR, subject.node, "subject_id")
    if data.kind.value == UNANNOUNCED:
        # A 暗访 is the inspecting office's own: an inspector below it could not even see it.
        caller.require(INSPECTOR, jurisdiction.home, "kind")
    jurisdiction.check(subject.node, "subject_id")
    place = None
    if data.place_id is not None:
        place = get_place(session, data.place_id)
        caller.require(INSPECTOR, place.node, "place_id")
        jurisdiction.check(place.node, "place_id")
    check_inspected_at(data.inspected_at, now)
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


def _evidence(items) -> list[Evidence]:
    # Input evidence (EvidenceIn) carries the request's bounds; stored and published as Evidence.
    return [Evidence.model_validate(e.model_dump()) if isinstance(e, Evidence) else Evidence.model_validate(e)
            for e in items]


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
                   evidence=[e.model_dump(mode="json") for e in _evidence(s.evidence)],
                   lat=s.gps.lat if s.gps else None, lng=s.gps.lng if s.gps else None, deadline_at=s.deadline_at)
        for i, s in enumerate(sheet.items)]


def _place_ref(session: Session, place: Place) -> PlaceRef:
    responsible = session.get(Subject, place.responsible_subject_id) if place.responsible_subject_id else None
    return PlaceRef(place_id=place.id, name=place.name, place_type=place.place_type, address=place.address,
                    gps=GeoPoint(lat=place.lat, lng=place.lng) if place.lat is not None else None,
                    node=place.node, responsible_subject_id=place.responsible_subject_id,
                    responsible_subject_name=responsible.name if responsible else None,
                    responsible_subject_node=responsible.node if responsible else None)


def _subject_ref(subject: Subject) -> SubjectRef:
    return SubjectRef(subject_id=subject.id, node=subject.node, name=subject.name, subject_type=subject.subject_type)


def _submit(session: Session, insp: Inspection, subject: Subject, place: Place | None, checklist, sheet,
            catalogue: Catalogue, outbox: OutboxLike, caller: Principal, now: datetime,
            close_outs: dict[str, CloseOut] | None = None) -> None:
    """Score and publish. `close_outs` (item code → close-out): history being imported, which
    the event marks `historic` so its tasks keep their dates and nobody is notified."""
    insp.status = "submitted"
    insp.submitted_at = now
    insp.submitted_by = caller.label
    insp.score = sheet.score
    insp.points_available = sheet.points_available
    insp.points_deducted = sheet.points_deducted
    findings = [
        Finding(item_code=s.item.code, item_text=s.item.text, category_code=s.category.code,
                category_name=s.category.name, severity=s.item.severity, findings=max(s.findings, 1),
                deduction=s.deduction, max_points=s.item.max_points, note=s.note, evidence=_evidence(s.evidence),
                gps=s.gps, deadline_hours=s.item.deadline_hours, deadline_at=s.deadline_at,
                close_out=(close_outs or {}).get(s.item.code))
        for s in sheet.findings]
    event = InspectionSubmitted(
        inspection_id=insp.id, inspecting_node=insp.inspecting_node, kind=insp.kind,
        subject=_subject_ref(subject),
        place=_place_ref(session, place) if place else None,
        checklist=ChecklistRef(catalogue_id=catalogue.catalogue_id, version=insp.checklist_version,
                               code=insp.checklist_code),
        inspected_at=insp.inspected_at, submitted_at=now, inspectors=insp.inspectors, score=sheet.score,
        scale=sheet.scale, points_available=sheet.points_available, points_deducted=sheet.points_deducted,
        findings=findings, historic=close_outs is not None)
    outbox.add(session, event, correlation_id=insp.id)


def _seen(session: Session, insp: Inspection, home: str) -> _Seen:
    subject = session.get(Subject, insp.subject_id)
    return _Seen(insp, subject.node if subject is not None else home, home)


# Idempotency keys are scoped to the caller and this operation: POST /inspections and
# POST /inspection-batches record an inspection the same way, so a phone may sync a capture
# by either and a key means the same there. The history import keys by the file's own
# ids for the whole office (any administrator re-importing a file stores nothing twice).
INSPECTION_ENDPOINT = "POST /inspections"
IMPORT_ENDPOINT = "POST /imports"


def record_inspection(session: Session, data: InspectionIn, catalogue: Catalogue, jurisdiction: Jurisdiction,
                      outbox: OutboxLike, scale: int, caller: Principal,
                      now: datetime | None = None, key_field: str = "idempotency_key") -> tuple[InspectionOut, bool]:
    """Create a draft or submitted inspection. Returns (inspection, created).

    The caller's repeated idempotency key with the same body returns the stored inspection
    unchanged (created=False): phones retry offline captures and must never create a
    duplicate. The same key with another body is refused (409); another person's key is
    another request.
    """
    now = now or _now()
    key = client_key(data.idempotency_key, INSPECTION_ENDPOINT, caller.subject, data, key_field)
    if key is not None:
        existing = stored_for_key(session, Inspection, key, Inspection.recorded_by == caller.label)
        if existing is not None:
            key.check_retry(existing.request_fingerprint)
            if not _seen(session, existing, jurisdiction.home).visible_to(caller):
                # The caller's own key, but the inspection is no longer theirs to see.
                raise StateConflict(key.field, KEY_REUSED)
            if existing.request_fingerprint is None:
                existing.request_fingerprint = key.fingerprint
            return inspection_out(existing, catalogue, caller, jurisdiction.home), False
    subject, place, checklist, sheet = _validated_sheet(session, data, catalogue, jurisdiction, scale, now, caller)
    insp = Inspection(id=str(uuid.uuid4()), idempotency_key=data.idempotency_key, status="draft",
                      idempotency_scope=key.scope if key else None,
                      request_fingerprint=key.fingerprint if key else None,
                      catalogue_id=catalogue.catalogue_id, created_at=now, inspecting_node=jurisdiction.home,
                      recorded_by=caller.label)
    _apply(insp, data, sheet)
    session.add(insp)
    try:
        # Flushed before submitting: the outbox insert would otherwise autoflush the row and the
        # key's unique index would fail there, outside this guard (a 500 instead of a 409).
        session.flush()
    except IntegrityError:
        # Two retries raced past the lookup; the caller retries and finds the winner.
        raise key.in_flight() if key else StateConflict("idempotency_key", KEY_IN_FLIGHT)
    if data.submit:
        _submit(session, insp, subject, place, checklist, sheet, catalogue, outbox, caller, now)
        session.flush()
    return inspection_out(insp, catalogue, caller, jurisdiction.home), True


def record_inspections(session: Session, inspections: list[InspectionIn], catalogue: Catalogue,
                       jurisdiction: Jurisdiction, outbox: OutboxLike, scale: int, caller: Principal,
                       now: datetime | None = None) -> list[tuple[InspectionOut, bool]]:
    """Record many inspections in the caller's transaction, each as `record_inspection` does
    (same checks, same idempotency: a key used before, or earlier in the same batch, returns
    that inspection). A refused one raises with its place in the batch (`inspections[3].…`),
    and the caller's transaction then records none."""
    out = []
    for index, data in enumerate(inspections):
        try:
            out.append(record_inspection(session, data, catalogue, jurisdiction, outbox, scale, caller, now))
        except DomainError as exc:
            exc.field = f"inspections[{index}].{exc.field}"
            exc.args = (f"{exc.field}: {exc.reason}",)
            raise
    return out


def _visible(session: Session, inspection_id: str, caller: Principal, home: str, lock: bool = False) -> _Seen:
    """The inspection if the caller may see it; otherwise 404, as if it did not exist (a 暗访
    must not be confirmed to its subject even by a different error)."""
    stmt = select(Inspection).where(Inspection.id == inspection_id)
    insp = session.execute(stmt.with_for_update() if lock else stmt).scalar_one_or_none()
    seen = _seen(session, insp, home) if insp is not None else None
    if seen is None or not seen.visible_to(caller):
        raise UnknownReference("inspection_id", f"unknown inspection {inspection_id!r}")
    return seen


def _draft(session: Session, inspection_id: str, caller: Principal, home: str) -> Inspection:
    seen = _visible(session, inspection_id, caller, home, lock=True)
    caller.require(INSPECTOR, seen.subject_node, "inspection_id")
    if seen.insp.status != "draft":
        raise StateConflict("status", "the inspection is already submitted; submitted inspections are final")
    return seen.insp


def update_draft(session: Session, inspection_id: str, data: InspectionIn, catalogue: Catalogue,
                 jurisdiction: Jurisdiction, outbox: OutboxLike, scale: int, caller: Principal,
                 now: datetime | None = None) -> InspectionOut:
    now = now or _now()
    insp = _draft(session, inspection_id, caller, jurisdiction.home)
    subject, place, checklist, sheet = _validated_sheet(session, data, catalogue, jurisdiction, scale, now, caller)
    if insp.inspecting_node is None:
        insp.inspecting_node = jurisdiction.home
    _apply(insp, data, sheet)
    if data.submit:
        _submit(session, insp, subject, place, checklist, sheet, catalogue, outbox, caller, now)
    session.flush()
    return inspection_out(insp, catalogue, caller, jurisdiction.home)


def submit_draft(session: Session, inspection_id: str, catalogue: Catalogue, jurisdiction: Jurisdiction,
                 outbox: OutboxLike, caller: Principal, now: datetime | None = None) -> InspectionOut:
    insp = _draft(session, inspection_id, caller, jurisdiction.home)
    stored = InspectionIn(
        kind=insp.kind, subject_id=insp.subject_id, place_id=insp.place_id,
        checklist=ChecklistChoice(version=insp.checklist_version, code=insp.checklist_code),
        inspectors=insp.inspectors, inspected_at=insp.inspected_at, note=insp.note, submit=True,
        results=[dict(item_code=r.item_code, findings=r.findings, deduction=r.deduction, note=r.note,
                      evidence=r.evidence or [], deadline_at=r.deadline_at,
                      gps={"lat": r.lat, "lng": r.lng} if r.lat is not None else None) for r in insp.results])
    return update_draft(session, inspection_id, stored, catalogue, jurisdiction, outbox, insp.scale, caller, now)


def release_inspection(session: Session, inspection_id: str, catalogue: Catalogue, jurisdiction: Jurisdiction,
                       outbox: OutboxLike, caller: Principal, now: datetime | None = None) -> InspectionOut:
    """Make a submitted unannounced inspection (暗访) known to its subject: publishes
    `inspection_released` once; releasing it again changes nothing."""
    now = now or _now()
    # Locked: two concurrent releases must not both publish.
    seen = _visible(session, inspection_id, caller, jurisdiction.home, lock=True)
    insp = seen.insp
    caller.require((INSPECTOR, ADMINISTRATOR), seen.inspecting_node, "inspection_id")
    if insp.kind != UNANNOUNCED:
        raise StateConflict("kind", f"only an unannounced inspection (暗访) is released; a {insp.kind} "
                                    f"inspection is visible to its subject once submitted")
    if insp.status != "submitted":
        raise StateConflict("status", "submit the inspection before releasing it (请先提交再公开)")
    if insp.released_at is None:
        insp.released_at = now
        insp.released_by = caller.label
        subject = get_subject(session, insp.subject_id)
        outbox.add(session, InspectionReleased(inspection_id=insp.id, inspecting_node=seen.inspecting_node,
                                               subject=_subject_ref(subject), released_at=now),
                   correlation_id=insp.id)
        session.flush()
    return inspection_out(insp, catalogue, caller, jurisdiction.home)


def get_inspection(session: Session, inspection_id: str, catalogue: Catalogue, caller: Principal,
                   home: str) -> InspectionOut:
    return inspection_out(_visible(session, inspection_id, caller, home).insp, catalogue, caller, home)


def list_inspections(session: Session, query: ListQuery, catalogue: Catalogue, caller: Principal,
                     home: str) -> list[InspectionOut]:
    inspecting_node = func.coalesce(Inspection.inspecting_node, home)
    on_inspecting_side = _within_any(inspecting_node, caller.nodes_with(OFFICE_ROLES))
    stmt = (select(Inspection).join(Subject, Subject.id == Inspection.subject_id)
            .where(or_(on_inspecting_side, _reach(caller, Subject.node, None)))
            # 暗访 and its drafts: nobody but the inspecting side until released.
            .where(or_(Inspection.kind != UNANNOUNCED, Inspection.released_at.is_not(None), on_inspecting_side))
            # Drafts of any kind: the inspecting side and inspectors of the subject only (the
            # subject's rectifiers and viewers see findings once they are submitted).
            .where(or_(Inspection.status != "draft", on_inspecting_side,
                       _within_any(Subject.node, caller.nodes_with((INSPECTOR,)))))
            .order_by(Inspection.inspected_at.desc(), Inspection.id))
    if query.node:
        caller.require_sees(query.node, "query.node")
        stmt = stmt.where(_within_any(Subject.node, [query.node]))
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
    return [inspection_out(i, catalogue, caller, home) for i in rows]


# --- history import (历史导入) ----------------------------------------------------------------


IMPORT_KEY_PREFIX = "import:"


def _version_at(catalogue: Catalogue, moment: datetime) -> str:
    """The checklist version in force on the day of an old inspection (else the earliest)."""
    day = moment.astimezone(CST).date()
    in_force = [v for v in catalogue.versions if v.effective_from <= day]
    pick = max(in_force, key=lambda v: v.effective_from) if in_force else min(
        catalogue.versions, key=lambda v: v.effective_from)
    return pick.version


def import_history(session: Session, plan: imports.ImportPlan, catalogue: Catalogue, jurisdiction: Jurisdiction,
                   outbox: OutboxLike, scale: int, caller: Principal, now: datetime | None = None) -> dict:
    """Store an office's history: subjects, places and submitted inspections with their
    findings' close-outs, each inspection published as `historic` (its tasks keep their own
    dates; no notice, no overdue, no veto for the past).

    All or nothing: every row is checked against the registry and the checklists first, and
    any problem rejects the whole upload (`ImportRejected`, by sheet, row and column).
    Idempotent: subjects and places are matched by node and name, inspections by their key
    (检查编号), so uploading the same file twice stores nothing the second time.
    """
    now = now or _now()
    caller.require(ADMINISTRATOR, jurisdiction.home, "node")
    issues: list[imports.Issue] = []

    def problem(sheet: str, row: int, column: str, reason: str) -> None:
        issues.append(imports.Issue(sheet, row, column, reason))

    def in_jurisdiction(sheet: str, row: int, column: str, code: str) -> bool:
        try:
            jurisdiction.check(code, column)
        except InspectionRuleViolation as exc:
            problem(sheet, row, column, exc.reason)
            return False
        return True

    # Subjects: the registry's, plus the file's new ones (matched by node, type and name).
    known_subjects = session.execute(select(Subject).where(
        _within_any(Subject.node, [jurisdiction.home]))).scalars().all()
    subjects: dict[tuple[str, str, str], Subject] = {(s.node, s.subject_type, s.name): s for s in known_subjects}
    created = {"subjects": 0, "places": 0, "inspections": 0, "findings": 0, "closed": 0}
    new_subjects = []
    for row in plan.subjects:
        if not in_jurisdiction(imports.SUBJECTS, row.row, "区划代码", row.node):
            continue
        key = (row.node, row.subject_type, row.name)
        if key not in subjects:
            subject = Subject(id=str(uuid.uuid4()), subject_type=row.subject_type, node=row.node, name=row.name,
                              contacts=[], created_at=now)
            subjects[key] = subject
            new_subjects.append(subject)

    def subject_named(name: str, node: str | None) -> list[Subject]:
        return [s for (n, _, nm), s in subjects.items() if nm == name and (node is None or n == node)]

    known_places = session.execute(select(Place).where(
        _within_any(Place.node, [jurisdiction.home]))).scalars().all()
    places: dict[tuple[str, str], list[Place]] = {}
    for place in known_places:
        places.setdefault((place.node, place.name), []).append(place)
    new_places = []
    for row in plan.places:
        if not in_jurisdiction(imports.PLACES, row.row, "区划代码", row.node):
            continue
        responsible = None
        if row.responsible:
            found = subject_named(row.responsible, None)
            if len(found) > 1:
                found = [s for s in found if is_within(row.node, s.node)] or found
            if len(found) != 1:
                problem(imports.PLACES, row.row, "责任主体",
                        f"“{row.responsible}”{'不是考评对象' if not found else '有重名，无法确定'} "
                        f"({'unknown' if not found else 'ambiguous'} subject)")
                continue
            responsible = found[0]
        same = [p for p in places.get((row.node, row.name), []) if p.place_type == row.place_type]
        if not same:
            place = Place(id=str(uuid.uuid4()), place_type=row.place_type, name=row.name, address=row.address,
                          node=row.node, created_at=now)
            place.responsible = responsible  # resolved to an id once the subject is stored
            places.setdefault((row.node, row.name), []).append(place)
            new_places.append(place)

    # Inspections: resolved, checked and scored before anything is stored.
    keys = [IMPORT_KEY_PREFIX + i.key for i in plan.inspections]
    import_scope = key_scope(IMPORT_ENDPOINT, jurisdiction.home)
    stored_keys = set(session.execute(select(Inspection.idempotency_key).where(
        Inspection.idempotency_key.in_(keys),
        or_(Inspection.idempotency_scope == import_scope, Inspection.idempotency_scope.is_(None)))
    ).scalars()) if keys else set()
    ready = []
    skipped = 0
    for insp in plan.inspections:
        if IMPORT_KEY_PREFIX + insp.key in stored_keys:
            skipped += 1
            continue
        where = (insp.sheet, insp.row)
        if not in_jurisdiction(*where, "检查对象区划", insp.subject_node):
            continue
        found = subject_named(insp.subject_name, insp.subject_node)
        if len(found) != 1:
            problem(*where, "检查对象", f"区划{insp.subject_node}下{'没有' if not found else '有多个'}名为"
                                    f"“{insp.subject_name}”的考评对象 ({'unknown' if not found else 'ambiguous'} subject)")
            continue
        subject = found[0]
        place = None
        if insp.place_name:
            candidates = [p for (node, name), ps in places.items() for p in ps
                          if name == insp.place_name and is_within(node, jurisdiction.home)]
            if len(candidates) > 1:
                candidates = [p for p in candidates if p.node == subject.node] or candidates
            if not candidates and insp.place_type:
                # An exported ledger names the place and its type: register it with the subject.
                place = Place(id=str(uuid.uuid4()), place_type=insp.place_type, name=insp.place_name, address=None,
                              node=subject.node, created_at=now)
                place.responsible = subject
                places.setdefault((subject.node, insp.place_name), []).append(place)
                new_places.append(place)
            elif len(candidates) != 1:
                problem(*where, "点位", f"{'没有' if not candidates else '有多个'}名为“{insp.place_name}”的点位 "
                                      f"({'unknown' if not candidates else 'ambiguous'} place)")
                continue
            else:
                place = candidates[0]
        version = insp.version or _version_at(catalogue, insp.inspected_at)
        try:
            checklist = catalogue.checklist(version, insp.checklist_code)
        except ChecklistLookupError as exc:
            problem(*where, "检查表" if insp.version is None or "version" not in str(exc) else "检查表版本", str(exc))
            continue
        if place is not None and checklist.place_types and place.place_type not in checklist.place_types:
            problem(*where, "检查表", f"检查表{checklist.code}不适用于{place.place_type}类点位 (checklist not for this place)")
            continue
        results, close_outs, bad = [], {}, False
        for f in insp.findings:
            try:
                results.append(ItemResultIn(item_code=f.item_code, findings=f.findings, deduction=f.deduction,
                                            note=f.note, deadline_at=f.deadline_at))
            except ValueError as exc:
                problem(imports.LEDGER, f.row, "检查项目", str(exc).splitlines()[0])
                bad = True
                continue
            if f.closed_at is not None:
                close_outs[f.item_code] = CloseOut(fix_note=f.fix_note, fixed_by=f.fixed_by,
                                                   fix_submitted_at=f.fix_submitted_at or f.closed_at,
                                                   verified_by=f.verified_by or "", closed_at=f.closed_at)
        if bad:
            continue
        try:
            sheet = score_results(checklist, results, insp.inspected_at, scale)
        except InspectionRuleViolation as exc:
            # results[i].field → the ledger row of the i-th finding
            index = int(exc.field.split("[")[1].split("]")[0]) if exc.field.startswith("results[") else None
            row = insp.findings[index].row if index is not None else insp.row
            column = "整改期限" if exc.field.endswith("deadline_at") else "扣分" if "deduction" in exc.field \
                else "检查项目"
            problem(imports.LEDGER if index is not None else insp.sheet, row, column, exc.reason)
            continue
        try:
            data = InspectionIn(idempotency_key=IMPORT_KEY_PREFIX + insp.key, kind=insp.kind, subject_id=subject.id,
                                place_id=place.id if place else None,
                                checklist=ChecklistChoice(version=version, code=checklist.code),
                                inspectors=insp.inspectors, inspected_at=insp.inspected_at, note=insp.note,
                                results=results, submit=True)
        except ValueError as exc:
            problem(*where, "检查编号", str(exc).splitlines()[-1].strip())
            continue
        ready.append((insp, subject, place, data, checklist, sheet, close_outs))
    if issues:
        raise imports.ImportRejected(issues)

    for subject in new_subjects:
        session.add(subject)
    created["subjects"] = len(new_subjects)
    session.flush()
    for place in new_places:
        responsible = getattr(place, "responsible", None)
        place.responsible_subject_id = responsible.id if responsible is not None else None
        session.add(place)
    created["places"] = len(new_places)
    session.flush()
    for insp, subject, place, data, checklist, sheet, close_outs in sorted(
            ready, key=lambda r: (r[0].inspected_at, r[0].key)):
        row = Inspection(id=str(uuid.uuid4()), idempotency_key=data.idempotency_key, status="draft",
                         idempotency_scope=import_scope, catalogue_id=catalogue.catalogue_id, created_at=now, inspecting_node=jurisdiction.home,
                         recorded_by=caller.label)
        _apply(row, data, sheet)
        session.add(row)
        if insp.kind == UNANNOUNCED:
            # History is known to everyone it concerns: an old 暗访 is released as it is stored.
            row.released_at, row.released_by = insp.inspected_at, caller.label
        _submit(session, row, subject, place, checklist, sheet, catalogue, outbox, caller, now,
                close_outs=close_outs)
        if insp.kind == UNANNOUNCED:
            outbox.add(session, InspectionReleased(inspection_id=row.id, inspecting_node=row.inspecting_node,
                                                   subject=_subject_ref(subject), released_at=row.released_at),
                       correlation_id=row.id)
        created["inspections"] += 1
        created["findings"] += len(sheet.findings)
        created["closed"] += len(close_outs)
    session.flush()
    return {"stored": created, "already_present": {"inspections": skipped}}
