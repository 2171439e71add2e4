"""HTTP schemas of the notification service (examples in Chinese for the OpenAPI page)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from services.contracts.nodes import NodeCode


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+$"


class ContactIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"owner_kind": "subject", "owner_id": "8d3c0e8e-2f42-4d1c-9d8a-3f6a1c2b7e11", "node": "411502008001",
         "name": "周家山社区 张主任", "inbox_user": "zhang.zhuren", "email": "zjs@example.cn",
         "webhook_url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=xxxx", "webhook_format": "wecom"},
        {"owner_kind": "node", "owner_id": "411502008000", "node": "411502008000", "name": "金牛山街道创卫办",
         "inbox_user": "jns.cwb", "webhook_url": "https://oapi.dingtalk.com/robot/send?access_token=xxxx",
         "webhook_format": "dingtalk"}]})
    owner_kind: Literal["subject", "node"] = Field(description="subject: a 考评对象's contact; node: an office's")
    owner_id: str = Field(min_length=1, max_length=64, description="subject id, or the node's division code")
    node: NodeCode = Field(description="division code the subject or office belongs to")
    name: str = Field(min_length=1, max_length=200)
    inbox_user: str | None = Field(default=None, min_length=1, max_length=128)
    email: str | None = Field(default=None, max_length=320, pattern=EMAIL_PATTERN)
    webhook_url: HttpUrl | None = None
    webhook_format: Literal["wecom", "dingtalk", "text"] = "wecom"
    active: bool = True

    @model_validator(mode="after")
    def _reachable(self):
        if not (self.inbox_user or self.email or self.webhook_url):
            raise ValueError("a contact needs at least one of inbox_user, email, webhook_url")
        return self


class ContactOut(BaseModel):
    contact_id: str
    owner_kind: str
    owner_id: str
    node: str
    name: str
    inbox_user: str | None
    email: str | None
    webhook_url: str | None
    webhook_format: str
    active: bool
    created_at: datetime
    updated_at: datetime


class ContactQuery(_In):
    owner_kind: Literal["subject", "node"] | None = None
    owner_id: str | None = None
    node: NodeCode | None = None
    limit: int = Field(default=500, ge=1, le=5000)
    offset: int = Field(default=0, ge=0)


class RuleSetIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "author": "金牛山街道创卫办 王芳",
        "document": {"bulletin": {"commend_top": 3, "criticise_bottom": 3},
                     "rules": [{"id": "urge-notice", "event": "task_overdue", "notice": "urge",
                                "to": ["responsible", "inspecting_office"],
                                "channels": ["inbox", "email", "webhook"]}]}}]})
    author: str | None = Field(default=None, max_length=128)
    document: dict[str, Any] = Field(description="rules and bulletin policy; see GET /rules/{node}")


class RuleSetOut(BaseModel):
    node: str
    version: int = Field(description="0 = the packaged default")
    source: Literal["default", "node", "inherited"]
    from_node: str | None = Field(description="the node whose rule set applies (itself or an ancestor)")
    author: str | None = None
    created_at: datetime | None = None
    document: dict[str, Any]


class TemplateIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "author": "王芳",
        "source": '{% set title = "督办单：" ~ task.responsible.name %}\n### 督办单\n请立即整改：{{ task.item_text }}\n'}]})
    author: str | None = Field(default=None, max_length=128)
    source: str = Field(min_length=1, max_length=100_000)


class TemplateOut(BaseModel):
    node: str
    name: str
    source: str
    origin: Literal["default", "directory", "database"]
    from_node: str | None = None


class NotificationOut(BaseModel):
    notification_id: str
    notice_type: str
    event_type: str
    event_id: str | None
    rule_id: str | None
    node: str
    contact_id: str
    role: str
    channel: str
    inbox_user: str | None
    title: str
    body_markdown: str
    body_html: str | None = None
    created_at: datetime
    read_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None = None
    delivery_status: str = Field(description="sent (inbox: on creation) | pending | dead")
    attempts: int = 0
    last_error: str | None = None


class InboxQuery(_In):
    user: str = Field(min_length=1, max_length=128, description="inbox user name")
    unread: bool = False
    unacknowledged: bool = False
    notice_type: str | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class InboxAction(_In):
    user: str = Field(min_length=1, max_length=128, examples=["zhang.zhuren"])


class NotificationQuery(_In):
    event_id: str | None = None
    channel: Literal["inbox", "email", "webhook"] | None = None
    notice_type: str | None = None
    status: Literal["pending", "sent", "dead"] | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class DeadLetterOut(BaseModel):
    dead_letter_id: str
    delivery_id: str
    notification_id: str
    channel: str
    target: str
    title: str
    attempts: int
    last_error: str | None
    dead_at: datetime
    replayed_at: datetime | None
    replayed_by: str | None


class DeadLetterQuery(_In):
    state: Literal["open", "replayed", "all"] = "open"
    channel: Literal["email", "webhook"] | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class ReplayIn(_In):
    operator: str | None = Field(default=None, max_length=128, examples=["值班员 李强"])


class BulletinIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"period": "2026-11", "requested_by": "金牛山街道创卫办"}]})
    period: str = Field(pattern=r"^\d{4}-\d{2}$", description="month key, China Standard Time")
    requested_by: str | None = Field(default=None, max_length=128)
    notify: bool = Field(default=True, description="send it out by the bulletin_generated rules")


class BulletinOut(BaseModel):
    bulletin_id: str
    node: str
    period: str
    revision: int
    trigger: str
    title: str
    generated_at: datetime
    requested_by: str | None
    data: dict[str, Any] | None = None


class BulletinQuery(_In):
    period: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}$")
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class NewsletterIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "issue": 12, "title": "金牛山街道开展背街小巷集中整治",
        "content": "11月18日起，街道组织城管、社区开展背街小巷专项整治……", "period": "2026-11"}]})
    issue: int | None = Field(default=None, ge=1)
    title: str = Field(min_length=1, max_length=200)
    content: str = Field(min_length=1, max_length=20_000)
    period: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}$",
                               description="send to the subjects ranked in this month")


class NewsletterOut(BaseModel):
    newsletter_id: str
    notifications: int
