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
