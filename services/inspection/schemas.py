"""HTTP/RPC schemas of the inspection service (examples in Chinese for the OpenAPI page)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.contracts.bounds import CampaignInstant, Offset, OneLine, line
from services.contracts.events.inspection import Evidence, GeoPoint
from services.contracts.nodes import NodeCode
from services.contracts.vocab import InspectionKind, PlaceType, SubjectType

Identifier = Annotated[str, line(64, 1, description="an id as this service returned it"), OneLine]


class _In(BaseModel):
    # NaN and infinities are no numbers an inspection has: they would poison scores and JSON.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)


class SubjectCreate(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"subject_type": "child_unit", "node": "411502008001", "name": "周家山社区"},
        {"subject_type": "department", "node": "411502008000", "name": "金牛山街道城管中队"},
    ]})
    subject_type: SubjectType
    node: NodeCode = Field(description="division code; a child unit's own code, else the node it belongs to")
    name: Annotated[str, OneLine] = line(200, 1)
    contacts: list[Annotated[str, line(200, 1), OneLine]] = Field(
        default_factory=list, max_length=20, description="phone numbers or e-mail addresses of the responsible people")


class SubjectOut(BaseModel):
    subject_id: str
    subject_type: SubjectType
    node: str
    name: str
    contacts: list[str]
    created_at: datetime


class PlaceCreate(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "place_type": "public_toilet", "name": "周家山社区公厕", "address": "浉河区金牛山街道周家山路12号",
        "gps": {"lat": 32.1234, "lng": 114.0567}, "node": "411502008001",
        "responsible_subject_id": "8d3c0e8e-2f42-4d1c-9d8a-3f6a1c2b7e11"}]})
    place_type: PlaceType
    name: Annotated[str, OneLine] = line(200, 1)
    address: Annotated[str | None, OneLine] = line(500, default=None)
    gps: GeoPoint | None = None
    node: NodeCode
    responsible_subject_id: Identifier | None = Field(default=None, description="属地/门前三包 responsible subject")


class PlaceOut(BaseModel):
    place_id: str
    place_type: PlaceType
    name: str
    address: str | None
    gps: GeoPoint | None
    node: str
    responsible_subject_id: str | None
    created_at: datetime


class ChecklistChoice(_In):
    version: Annotated[str, OneLine] = line(32, 1, examples=["2010.1"])
    code: Annotated[str, OneLine] = line(64, 1, examples=["public-toilet"])


class EvidenceIn(Evidence):
    """A photo as a phone sends it: its time within the campaign years."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    uri: Annotated[str, OneLine] = line(1024, 1, description="where the photo is stored")
    taken_at: CampaignInstant | None = None

    def as_evidence(self) -> Evidence:
        return Evidence.model_validate(self.model_dump())


class ItemResultIn(_In):
    item_code: Annotated[str, OneLine] = line(32, 1, examples=["PT-02"])
    findings: int = Field(ge=0, le=1000, description="number of problems found (0 = compliant)")
    deduction: float | None = Field(default=None, ge=0, le=1000, description="points deducted; default findings × the item's deduction per finding, capped at the item's points")
    note: str | None = Field(default=None, max_length=2000, examples=["便池未及时冲洗，有异味"])
    evidence: list[EvidenceIn] = Field(default_factory=list, max_length=20)
    gps: GeoPoint | None = None
    deadline_at: CampaignInstant | None = Field(default=None, description="set a deadline other than the item's default")


class InspectionIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [{
        "idempotency_key": "phone-7f3a-20261120-001",
        "kind": "routine", "subject_id": "8d3c0e8e-2f42-4d1c-9d8a-3f6a1c2b7e11",
        "place_id": "1b0e6f0c-6a4e-4b7e-8d1a-9e2f3c4d5e6f",
        "checklist": {"version": "2010.1", "code": "public-toilet"},
        "inspectors": ["王芳", "李强"], "inspected_at": "2026-11-20T09:30:00+08:00",
        "results": [{"item_code": "PT-02", "findings": 2, "note": "便池未及时冲洗，有异味",
                     "evidence": [{"uri": "photos/2026/11/20/pt-02-1.jpg", "sha256": "9f2c" + "0" * 60}]}],
        "submit": True}]})
    idempotency_key: Annotated[str | None, OneLine] = line(128, 1, default=None,
                                       description="client-chosen key; a retry with the same key returns the same inspection")
    kind: InspectionKind
    subject_id: Identifier
    place_id: Identifier | None = None
    checklist: ChecklistChoice
    inspectors: list[Annotated[str, line(100, 1), OneLine]] = Field(
        min_length=1, max_length=20, description="the inspection team (检查人员); withheld from the subject of a 暗访")
    inspected_at: CampaignInstant = Field(description="when it was inspected: within 2000–2099 and at most a day ahead")
    note: str | None = Field(default=None, max_length=4000,
                             description="the office's own note; withheld from the subject of a 暗访")
    results: list[ItemResultIn] = Field(default_factory=list, max_length=500)
    submit: bool = Field(default=True, description="false keeps it as a draft (草稿)")

    @model_validator(mode="after")
    def _unique_items(self):
        seen = set()
        for index, result in enumerate(self.results):
            if result.item_code in seen:
                raise ValueError(f"results[{index}].item_code {result.item_code!r} appears twice")
            seen.add(result.item_code)
        return self


class InspectionBatchIn(_In):
    """Many inspections in one request: a phone syncing a day's captures, or an import."""
    inspections: list[InspectionIn] = Field(min_length=1, max_length=200,
                                            description="each exactly as POST /inspections takes it")


class ItemResultOut(BaseModel):
    item_code: str
    item_text: str
    category_code: str
    findings: int
    deduction: float
    note: str | None
    evidence: list[Evidence]
    gps: GeoPoint | None
    deadline_at: datetime | None


class InspectionOut(BaseModel):
    inspection_id: str
    status: Literal["draft", "submitted"]
    kind: InspectionKind
    subject_id: str
    place_id: str | None
    checklist: ChecklistChoice
    catalogue_id: str
    inspecting_node: str = Field(description="the office that made the inspection")
    inspectors: list[str] = Field(description="empty when withheld (see `redacted`)")
    inspected_at: datetime
    submitted_at: datetime | None
    note: str | None
    score: float | None = Field(description="on `scale` points once submitted")
    scale: int
    points_available: float | None
    points_deducted: float | None
    results: list[ItemResultOut]
    idempotency_key: str | None
    recorded_by: str | None = Field(description="who recorded it (the signed-in caller)")
    submitted_by: str | None
    released_at: datetime | None = Field(description="暗访: when the inspecting office made it known to its subject")
    released_by: str | None
    redacted: list[str] = Field(default_factory=list, examples=[["inspectors", "note"]],
                                description="fields withheld from this caller: a 暗访 never names its "
                                            "inspectors or shows its note to the subject side")


class BatchItemOut(BaseModel):
    status: Literal[200, 201] = Field(description="201 recorded now; 200 its idempotency key was already used")
    inspection: "InspectionOut"


class InspectionBatchOut(BaseModel):
    created: int = Field(description="inspections recorded by this request")
    results: list[BatchItemOut] = Field(description="one per inspection, in the order sent")


class ListQuery(_In):
    subject_id: Identifier | None = None
    node: NodeCode | None = Field(default=None, description="only subjects in this node's subtree")
    kind: InspectionKind | None = None
    status: Literal["draft", "submitted"] | None = None
    since: CampaignInstant | None = Field(default=None, description="inspected at or after")
    until: CampaignInstant | None = Field(default=None, description="inspected before")
    limit: int = Field(default=100, ge=1, le=1000)
    offset: Offset = 0


class NodeQuery(_In):
    node: NodeCode | None = None
    subject_type: SubjectType | None = None
    limit: int = Field(default=500, ge=1, le=5000)
    offset: Offset = 0


class PlaceQuery(_In):
    node: NodeCode | None = None
    place_type: PlaceType | None = None
    limit: int = Field(default=500, ge=1, le=5000)
    offset: Offset = 0


class ImportIn(_In):
    """An Excel file of history (the template of `GET /imports/template.xlsx`, or a ledger
    exported by a stack), base64-encoded: the HTTP layer takes JSON only."""
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [{
        "filename": "金牛山街道2026年上半年检查台账.xlsx", "content_base64": "UEsDBBQABgAIAAAAIQ..."}]})
    filename: Annotated[str | None, OneLine] = line(200, 1, default=None)
    content_base64: str = Field(min_length=1, max_length=2_000_000, description="the .xlsx file, base64")


class ImportOut(BaseModel):
    stored: dict[str, int] = Field(description="what this upload added: subjects, places, inspections, findings, "
                                               "closed (findings with their close-out)")
    already_present: dict[str, int] = Field(description="inspections of this file stored by an earlier upload")
