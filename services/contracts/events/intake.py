"""Events published by the intake service (数字城管 cases and residents' reports, Open311)."""
from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field

from services.contracts.events import Payload, event_payload
from services.contracts.events.inspection import Evidence, GeoPoint, PlaceRef, SubjectRef
from services.contracts.nodes import NodeCode
from services.contracts.vocab import Severity


@event_payload("case_reported", 1)
class CaseReported(Payload):
    """A case (案件) accepted for handling and routed to its responsible subject: the tasks
    service opens one rectification task with the case's id and time limit; the case's
    reporter follows it through that task's lifecycle events."""
    case_id: str = Field(description="the Open311 service_request_id; also the task's id")
    source: Literal["digital_city", "citizen_report"] = Field(
        description="数字城管 (a platform's case) or 群众举报 (a resident's report)")
    receiving_node: NodeCode = Field(description="the office whose intake took the case: it verifies the fix")
    channel: str = Field(max_length=200, description="who brought the case in: a platform's name or 群众")
    service_code: str = Field(max_length=32)
    service_name: str = Field(max_length=100)
    group_code: str = Field(max_length=32)
    group_name: str = Field(max_length=100)
    severity: Severity
    description: str = Field(max_length=4000)
    address: str | None = Field(default=None, max_length=500)
    gps: GeoPoint | None = None
    node: NodeCode = Field(description="the division the case was located to")
    place: PlaceRef | None = None
    responsible: SubjectRef
    media: list[Evidence] = Field(default_factory=list)
    media_url: str | None = Field(default=None, max_length=1024)
    reported_at: AwareDatetime
    deadline_at: AwareDatetime = Field(description="the category's time limit (处置时限) from reported_at")


@event_payload("case_handled", 1)
class CaseHandled(Payload):
    """How a case's handling counts for its responsible subject (the city scheme's 数字城管
    source): published when the case goes overdue and again when it is closed. A case's
    points on `scale`: closed on time full marks, closed late half, overdue and open none —
    so a subject's mean over its cases is half its close-out rate plus half its on-time rate.
    A later event of the same case replaces an earlier one only with more points."""
    case_id: str
    source: Literal["digital_city", "citizen_report"]
    receiving_node: NodeCode
    responsible: SubjectRef
    service_code: str = Field(max_length=32)
    service_name: str = Field(max_length=100)
    reported_at: AwareDatetime = Field(description="the case counts in the periods of this instant")
    deadline_at: AwareDatetime
    outcome: Literal["overdue", "closed_late", "closed_on_time"]
    score: float = Field(ge=0)
    scale: int = Field(gt=0)
    handled_at: AwareDatetime
