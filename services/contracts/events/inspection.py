"""Events published by the inspection service."""
from __future__ import annotations

from uuid import UUID

from pydantic import AwareDatetime, Field

from services.contracts.events import Payload, event_payload
from services.contracts.nodes import NodeCode
from services.contracts.vocab import InspectionKind, PlaceType, Severity, SubjectType



class GeoPoint(Payload):
    lat: float = Field(ge=-90, le=90)
    lng: float = Field(ge=-180, le=180)


class Evidence(Payload):
    uri: str = Field(min_length=1, max_length=1024, description="where the photo is stored")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    taken_at: AwareDatetime | None = None
    gps: GeoPoint | None = None


class SubjectRef(Payload):
    subject_id: str
    node: NodeCode = Field(description="division code the subject belongs to (a child unit's own code)")
    name: str
    subject_type: SubjectType


class PlaceRef(Payload):
    place_id: str
    name: str
    place_type: PlaceType
    address: str | None = None
    gps: GeoPoint | None = None
    node: NodeCode
    responsible_subject_id: str | None = None
    responsible_subject_name: str | None = None
    responsible_subject_node: NodeCode | None = None


class ChecklistRef(Payload):
    catalogue_id: str
    version: str
    code: str


class CloseOut(Payload):
    """A finding's close-out (销号) as history records it: imported, not lived through here."""
    fix_note: str | None = None
    fixed_by: str | None = None
    fix_submitted_at: AwareDatetime | None = Field(default=None, description="defaults to closed_at")
    verified_by: str = Field(min_length=1)
    closed_at: AwareDatetime


class Finding(Payload):
    """One checklist item with a deduction: each becomes a rectification task."""
    item_code: str
    item_text: str
    category_code: str
    category_name: str
    severity: Severity
    findings: int = Field(ge=1, description="number of problems found for this item")
    deduction: float = Field(gt=0)
    max_points: float
    note: str | None = None
    evidence: list[Evidence] = Field(default_factory=list)
    gps: GeoPoint | None = None
    deadline_hours: int = Field(ge=0, description="0 = 立即整改")
    deadline_at: AwareDatetime | None = Field(default=None, description="set when the inspector fixed a date")
    close_out: CloseOut | None = Field(default=None, description="history only: how and when it was closed")


@event_payload("inspection_submitted", 1)
class InspectionSubmitted(Payload):
    inspection_id: UUID
    inspecting_node: NodeCode
    kind: InspectionKind
    subject: SubjectRef
    place: PlaceRef | None = None
    checklist: ChecklistRef
    inspected_at: AwareDatetime
    submitted_at: AwareDatetime
    inspectors: list[str]
    score: float = Field(description="on `scale` points")
    scale: int
    points_available: float
    points_deducted: float
    findings: list[Finding]
    historic: bool = Field(default=False, description=(
        "loaded from an office's records (历史导入), not made today: its tasks keep their own dates "
        "(closed in March is closed in March), and no notice goes out for it"))


@event_payload("inspection_released", 1)
class InspectionReleased(Payload):
    """An unannounced inspection (暗访) made known to its subject.

    Until this event, an unannounced inspection's findings, tasks and notices stay with the
    inspecting office: consumers hold back what the subject would see (tasks are kept, not
    announced) and act on this event, which may arrive before or after the submission."""
    inspection_id: UUID
    inspecting_node: NodeCode
    subject: SubjectRef
    released_at: AwareDatetime


@event_payload("check_missed", 1)
class CheckMissed(Payload):
    """A check the office's rhythm (检查计划: daily, weekly, monthly) called for did not happen
    in a period that has ended. Published once per schedule, target and period."""
    schedule_id: str
    schedule_name: str
    office_node: NodeCode = Field(description="the office whose rhythm it is")
    frequency: str = Field(examples=["weekly"], description="daily | weekly | monthly")
    period: str = Field(examples=["2026-W47"], description="2026-11-19 (a day), 2026-W47 or 2026-11")
    period_start: AwareDatetime
    period_end: AwareDatetime
    target_kind: str = Field(description="subject | place")
    target_id: str
    target_name: str
    subject: SubjectRef = Field(description="who answers for the missed check: the subject, or the place's responsible one")
    inspectors: list[str] = Field(default_factory=list, description="who the schedule names to do it")
    counts: bool = Field(description="whether the office's policy counts missed checks (e.g. in its bulletin)")
