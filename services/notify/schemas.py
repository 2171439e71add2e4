"""HTTP schemas of the notification service (examples in Chinese for the OpenAPI page)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, UrlConstraints, model_validator

from services.contracts.bounds import Offset
from services.contracts.nodes import NodeCode
from services.contracts.periods import InvalidPeriod, Period, PeriodKind


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# An address and nothing else: no display name, no second recipient, no header text.
EMAIL_PATTERN = r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
_LINE_BREAK = ("\r", "\n", "\t", "\x85", "\u2028", "\u2029", "\v", "\f")


def _single_line(value: str) -> str:
    """Names and titles end up in e-mail headers, bot titles and table cells: one line only."""
    if any(ch in value for ch in _LINE_BREAK):
        raise ValueError("must be a single line (no line breaks or tabs)")
    return value


def _month(value: str) -> str:
    """A month within the campaign years (YYYY-MM, 2000–2099)."""
    try:
        period = Period.parse(value)
    except InvalidPeriod as exc:
        raise ValueError(str(exc)) from None
    if period.kind != PeriodKind.month:
        raise ValueError("must be a month (YYYY-MM)")
    return period.key


SingleLine = Annotated[str, AfterValidator(_single_line)]
Month = Annotated[str, Field(pattern=r"^\d{4}-\d{2}$", description="month key YYYY-MM (2000–2099), China Standard Time"),
                  AfterValidator(_month)]
WebhookUrl = Annotated[HttpUrl, UrlConstraints(max_length=1024)]


class ContactIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"owner_kind": "subject", "owner_id": "8d3c0e8e-2f42-4d1c-9d8a-3f6a1c2b7e11", "node": "411502008001",
         "name": "周家山社区 张主任", "inbox_user": "zhang.zhuren", "email": "zjs@example.cn",
         "webhook_url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=xxxx", "webhook_format": "wecom"},
        {"owner_kind": "node", "owner_id": "411502008000", "node": "411502008000", "name": "金牛山街道创卫办",
         "inbox_user": "jns.cwb", "webhook_url": "https://oapi.dingtalk.com/robot/send?access_token=xxxx",
         "webhook_format": "dingtalk"}]})
    owner_kind: Literal["subject", "node"] = Field(description="subject: a 考评对象's contact; node: an office's")
    owner_id: SingleLine = Field(min_length=1, max_length=64, description="subject id, or the node's division code")
    node: NodeCode = Field(description="division code the subject or office belongs to")
    name: SingleLine = Field(min_length=1, max_length=200)
    inbox_user: SingleLine | None = Field(
        default=None, min_length=1, max_length=128,
        description="the user account (token subject) whose inbox receives this contact's notices")
    email: str | None = Field(default=None, max_length=320, pattern=EMAIL_PATTERN)
    webhook_url: WebhookUrl | None = Field(
        default=None, description="a group bot on the operator's allowlist of hosts (https; public addresses)")
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
    owner_id: str | None = Field(default=None, max_length=64)
    node: NodeCode | None = None
    limit: int = Field(default=500, ge=1, le=5000)
    offset: Offset = 0


class RuleSetIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "document": {"bulletin": {"commend_top": 3, "criticise_bottom": 3},
                     "rules": [{"id": "urge-notice", "event": "task_overdue", "notice": "urge",
                                "to": ["responsible", "inspecting_office"],
                                "channels": ["inbox", "email", "webhook"]}]}}]})
    document: dict[str, Any] = Field(description="rules and bulletin policy; see GET /rules/{node}")


class RuleSetOut(BaseModel):
    node: str
    version: int = Field(description="0 = the packaged default")
    source: Literal["default", "node", "inherited"]
    from_node: str | None = Field(description="the node whose rule set applies (itself or an ancestor)")
    author: str | None = Field(default=None, description="who stored this version (the signed-in administrator)")
    created_at: datetime | None = None
    document: dict[str, Any]


class TemplateIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "source": '{% set title = "督办单：" ~ task.responsible.name %}\n### 督办单\n请立即整改：{{ task.item_text }}\n'}]})
    source: str = Field(min_length=1, max_length=50_000,
                        description="Jinja template, test-rendered with sample data before it is stored")


class TemplateOut(BaseModel):
    node: str
    name: str
    source: str
    origin: Literal["default", "directory", "database"]
    from_node: str | None = None
    author: str | None = None
    updated_at: datetime | None = None


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
    render_problem: str | None = Field(default=None, description="why the node's template was not used, if it failed")


class InboxQuery(_In):
    """The signed-in caller's own inbox (notices addressed to its account)."""
    unread: bool = False
    unacknowledged: bool = False
    notice_type: str | None = Field(default=None, max_length=32)
    limit: int = Field(default=100, ge=1, le=1000)
    offset: Offset = 0


class NotificationQuery(_In):
    event_id: str | None = Field(default=None, max_length=64)
    node: NodeCode | None = Field(default=None, description="only this node's subtree (default: the caller's)")
    channel: Literal["inbox", "email", "webhook"] | None = None
    notice_type: str | None = Field(default=None, max_length=32)
    status: Literal["pending", "sent", "dead"] | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    offset: Offset = 0


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
    offset: Offset = 0


class BulletinIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"period": "2026-11"}]})
    period: Month
    notify: bool = Field(default=True, description="send it out by the bulletin_generated rules")


class BulletinOut(BaseModel):
    bulletin_id: str
    node: str
    period: str
    revision: int
    trigger: str
    title: str
    generated_at: datetime
    requested_by: str | None = Field(description="who asked for it (the signed-in administrator), or schedule")
    data: dict[str, Any] | None = None


class BulletinQuery(_In):
    period: Month | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    offset: Offset = 0


class NewsletterIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "issue": 12, "title": "金牛山街道开展背街小巷集中整治",
        "content": "11月18日起，街道组织城管、社区开展背街小巷专项整治……", "period": "2026-11"}]})
    issue: int | None = Field(default=None, ge=1, le=100_000)
    title: SingleLine = Field(min_length=1, max_length=200)
    content: str = Field(min_length=1, max_length=20_000)
    period: Month | None = Field(default=None, description="send to the subjects ranked in this month")


class NewsletterOut(BaseModel):
    newsletter_id: str
    notifications: int


class BoardEntryOut(BaseModel):
    rank: int
    name: str
    score: float | None
    scale: int
    grade: str | None
    movement: str = Field(description="↑2, ↓1, — or 新")
    vetoed: bool = Field(description="一票否决")


class BoardListOut(BaseModel):
    rank: int | None
    name: str
    score: float | None


class BoardBlackOut(BoardListOut):
    why: Literal["排名靠后", "一票否决"]


class BoardOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "node": "411502008000", "office": "金牛山街道", "period": "2026-11", "revision": 1,
        "title": "金牛山街道2026年11月创卫工作月度通报", "released_at": "2026-12-01T01:00:00Z",
        "ranking": [{"rank": 1, "name": "周家山社区", "score": 96.5, "scale": 100, "grade": "优", "movement": "↑2",
                     "vetoed": False}],
        "red": [{"rank": 1, "name": "周家山社区", "score": 96.5}],
        "black": [{"rank": 9, "name": "新华社区", "score": 71.0, "why": "排名靠后"}]}]})
    node: str
    office: str
    period: str
    revision: int
    title: str
    released_at: datetime = Field(description="when the monthly bulletin carrying this ranking was issued")
    ranking: list[BoardEntryOut]
    red: list[BoardListOut] = Field(description="红榜: commended")
    black: list[BoardBlackOut] = Field(description="黑榜: criticised")


class ArchiveQuery(_In):
    since: Month = Field(description="first month of the span")
    until: Month = Field(description="last month of the span")
    area: Literal["ORG", "EDU", "CITY", "ENVP", "PUB", "FOOD", "DIS", "VEC", "UNIT", "UV"] | None = Field(
        default=None, description="one of the ten content areas (十项内容); all when absent")
