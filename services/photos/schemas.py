"""HTTP schemas of the photo service (examples in Chinese for the OpenAPI page)."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from services.contracts.events.inspection import GeoPoint


class PhotoOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "sha256": "9f2c" + "0" * 60, "uri": "photos/" + "9f2c" + "0" * 60,
        "thumbnail_uri": "photos/" + "9f2c" + "0" * 60 + "/thumbnail", "content_type": "image/jpeg",
        "size": 2345678, "width": 4032, "height": 3024, "taken_at": "2026-11-20T09:31:12+08:00",
        "gps": {"lat": 32.1234, "lng": 114.0567}, "uploaded_at": "2026-11-20T09:35:00+08:00"}]})
    sha256: str = Field(description="the photo's name: sha256 of its bytes; inspections and task actions refer to it")
    uri: str = Field(description="put this in an evidence entry's uri (with the sha256)")
    thumbnail_uri: str
    content_type: str = Field(description="decided by decoding the content: image/jpeg, image/png or image/webp")
    size: int
    width: int
    height: int
    taken_at: datetime | None = Field(description="EXIF capture time, when the photo has it (拍摄时间)")
    gps: GeoPoint | None = Field(description="EXIF location, when the photo has it (拍摄位置)")
    uploaded_at: datetime


class PhotoQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    inspection_id: str | None = Field(default=None, min_length=1, max_length=64,
                                      description="the inspection that shows the photo (检查记录)")
    task_id: str | None = Field(default=None, min_length=1, max_length=64,
                                description="the task whose before/after photos include it (整改任务)")
