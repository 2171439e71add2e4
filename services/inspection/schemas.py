"""HTTP/RPC schemas of the inspection service (examples in Chinese for the OpenAPI page)."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from services.contracts.events.inspection import Evidence, GeoPoint
from services.contracts.nodes import NodeCode
from services.contracts.vocab import InspectionKind, PlaceType, SubjectType


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class SubjectCreate(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"subject_type": "child_unit", "node": "411502008001", "name": "周家山社区"},
        {"subject_type": "department", "node": "411502008000", "name": "金牛山街道城管中队"},
    ]})
    subject_type: SubjectType
    node: NodeCode = Field(description="division code; a child unit's own code, else the node it belongs to")
    name: str = Field(min_length=1, max_length=200)
    contacts: list[str] = Field(default_factory=list, max_length=20,
                                description="phone numbers or e-mail addresses of the responsible people")


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
    name: str = Field(min_length=1, max_length=200)
    address: str | None = Field(default=None, max_length=500)
    gps: GeoPoint | None = None
    node: NodeCode
    responsible_subject_id: str | None = Field(default=None, description="属地/门前三包 responsible subject")


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
    version: str = Field(min_length=1, max_length=32, examples=["2010.1"])
    code: str = Field(min_length=1, max_length=64, examples=["public-toilet"])


class ItemResultIn(_In):
    item_code: str = Field(min_length=1, max_length=32, examples=["PT-02"])
    findings: int = Field(ge=0, le=1000, description="number of problems found (0 = compliant)")
    deduction: float | None = Field(default=None, ge=0, description="points deducted; default findings × the item's deduction per finding, capped at the item's points")
    note: str | None = Field(default=None, max_length=2000, examples=["便池未及时冲洗，有异味"])
    evidence: list[Evidence] = Field(default_factory=list, max_length=20)
    gps: GeoPoint | None = None
    deadline_at: AwareDatetime | None = Field(default=None, description="set a deadline other than the item's default")


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
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128,
                                        description="client-chosen key; a retry with the same key returns the same inspection")
    kind: InspectionKind
    subject_id: str = Field(min_length=1, max_length=64)
    place_id: str | None = Field(default=None, max_length=64)
    checklist: ChecklistChoice
    inspectors: list[str] = Field(min_length=1, max_length=20)
    inspected_at: AwareDatetime
    note: str | None = Field(default=None, max_length=4000)
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
    inspectors: list[str]
    inspected_at: datetime
    submitted_at: datetime | None
    note: str | None
    score: float | None = Field(description="on `scale` points once submitted")
    scale: int
    points_available: float | None
    points_deducted: float | None
    results: list[ItemResultOut]
    idempotency_key: str | None


class ListQuery(_In):
    subject_id: str | None = None
    kind: InspectionKind | None = None
    status: Literal["draft", "submitted"] | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class NodeQuery(_In):
    node: NodeCode | None = None
    subject_type: SubjectType | None = None
    limit: int = Field(default=500, ge=1, le=5000)
    offset: int = Field(default=0, ge=0)


class PlaceQuery(_In):
    node: NodeCode | None = None
    place_type: PlaceType | None = None
    limit: int = Field(default=500, ge=1, le=5000)
    offset: int = Field(default=0, ge=0)
