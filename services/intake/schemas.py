"""HTTP schemas of the intake service: Open311 GeoReport v2 field names (examples in Chinese).

Open311 bodies are flat so that they can come form-encoded (the spec's norm) or as JSON.
The reporter's personal fields (email, names, phone, device and account ids) are accepted
because Open311 clients send them, and never stored.
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationInfo, field_validator

from services.contracts.bounds import CampaignInstant, Offset
from services.contracts.nodes import NodeCode

MAX_DESCRIPTION = 4000


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceOut(BaseModel):
    """One category (案件类别) as Open311 lists it."""
    service_code: str
    service_name: str
    description: str
    metadata: bool = Field(False, description="no extra attributes: every category takes the same fields")
    type: Literal["realtime"] = "realtime"
    keywords: str = Field(description="处置时限 in hours and the severity")
    group: str = Field(description="大类")


class ServiceRequestIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "service_code": "0101", "description": "周家山路12号公厕旁有一堆暴露垃圾",
        "address_string": "浉河区金牛山街道周家山社区周家山路12号", "lat": 32.1234, "long": 114.0567,
        "media_url": "https://szcg.xinyang.example.cn/photos/20261120/0101-88.jpg"}]})
    service_code: str = Field(min_length=1, max_length=32, description="the category (GET services.json)")
    description: str = Field(min_length=1, max_length=MAX_DESCRIPTION)
    lat: float | None = Field(default=None, ge=-90, le=90)
    long: float | None = Field(default=None, ge=-180, le=180, validate_default=True)
    address_string: str | None = Field(default=None, min_length=1, max_length=500,
                                       description="located by the division names it contains")
    address_id: str | None = Field(default=None, min_length=1, max_length=64,
                                   description="a place id registered in the inspection service")
    division_code: NodeCode | None = Field(default=None, description="extension: the 12-digit division code")
    media_url: HttpUrl | None = Field(default=None, description="the photo (https or http URL)")
    requested_datetime: CampaignInstant | None = Field(
        default=None, description="extension for platforms: when the case was registered there (default: now)")
    jurisdiction_id: str | None = Field(default=None, max_length=64, description="accepted and ignored")
    email: str | None = Field(default=None, max_length=254, description="not stored")
    device_id: str | None = Field(default=None, max_length=128, description="not stored")
    account_id: str | None = Field(default=None, max_length=128, description="not stored")
    first_name: str | None = Field(default=None, max_length=100, description="not stored")
    last_name: str | None = Field(default=None, max_length=100, description="not stored")
    phone: str | None = Field(default=None, max_length=40, description="not stored")

    @field_validator("description", "address_string")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("may not be blank")
        return value.strip() if value is not None else None

    @field_validator("media_url")
    @classmethod
    def _short_url(cls, value):
        if value is not None and len(str(value)) > 1024:
            raise ValueError("URL longer than 1024 characters")
        return value

    @field_validator("long")
    @classmethod
    def _both_coordinates(cls, value: float | None, info: ValidationInfo) -> float | None:
        # `long` is declared after `lat`, so lat is known here (absent if it failed itself).
        if "lat" in info.data and (info.data["lat"] is None) != (value is None):
            raise ValueError("lat and long come together: give both or neither")
        return value


class RequestCreatedOut(BaseModel):
    service_request_id: str
    service_notice: str = Field(description="受理/合并说明")
    account_id: str | None = None
    token: str | None = Field(default=None, description="unused (Open311 field)")


class ServiceRequestOut(BaseModel):
    service_request_id: str
    status: Literal["open", "closed"]
    status_notes: str
    service_code: str
    service_name: str
    description: str
    agency_responsible: str | None = Field(description="the responsible subject (责任单位)")
    service_notice: str | None = None
    requested_datetime: datetime
    updated_datetime: datetime
    expected_datetime: datetime | None = Field(description="the time limit (处置时限)")
    address: str | None
    address_id: str | None
    lat: float | None
    long: float | None
    media_url: str | None
    division_code: str = Field(description="extension: the division the case was located to")
    case_status: str = Field(description="extension: submitted | routed | open | in_progress | fix_submitted | "
                                         "escalated | closed | rejected | merged")
    merged_into: str | None = Field(description="extension: the earlier case this report repeats")
    source: str = Field(description="extension: digital_city | citizen_report")


class PublicRequestOut(BaseModel):
    """What anyone holding a request's id sees: its status, nothing about the reporter."""
    service_request_id: str
    status: Literal["open", "closed"]
    status_notes: str
    service_code: str
    service_name: str
    requested_datetime: datetime
    updated_datetime: datetime
    expected_datetime: datetime | None


class RequestQuery(_In):
    service_request_id: str | None = Field(default=None, max_length=2000, pattern=r"^[0-9a-f,-]+$",
                                           description="comma-separated ids")
    service_code: str | None = Field(default=None, max_length=32)
    status: Literal["open", "closed"] | None = None
    start_date: CampaignInstant | None = None
    end_date: CampaignInstant | None = None
    limit: int = Field(default=200, ge=1, le=1000)
    offset: Offset = 0


class AcceptIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"note": "已核实，派遣处置"}]})
    note: str | None = Field(default=None, max_length=1000)


class RejectIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "非本辖区事项"}]})
    reason: str = Field(min_length=1, max_length=1000)

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("may not be blank")
        return value.strip()
