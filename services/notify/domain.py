"""Pure notification rules: routing rules as data, rule matching, recipients, backoff.

No nameko or database imports: unit-tested directly.

A rule set is a document (YAML by default, per node in the database once replaced):

    bulletin: {commend_top: 3, criticise_bottom: 3, top_categories: 5, min_category_count: 2}
    rules:
      - id: urge-notice
        event: task_overdue              # event type (or bulletin_generated / newsletter)
        notice: urge                     # which notice (template) to send
        to: [responsible, inspecting_office]
        channels: [inbox, email, webhook]
        when: {severity: [major, critical], urge_count_at_least: 2}   # optional, all must hold
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.contracts.errors import RuleViolation

DEFAULT_RULES_PATH = Path(__file__).parent / "rules_data" / "default.yaml"


class Channel(StrEnum):
    inbox = "inbox"      # 站内信
    email = "email"      # 电子邮件
    webhook = "webhook"  # 企业微信 / 钉钉 群机器人


class NoticeType(StrEnum):
    rectification = "rectification"  # 整改通知书
    urge = "urge"                    # 督办单
    escalation = "escalation"        # 上报协调函
    verification = "verification"    # 复查（核实）结果
    relapse = "relapse"              # 反弹提醒
    commendation = "commendation"    # 通报表扬
    criticism = "criticism"          # 通报批评
    inspection = "inspection"        # 检查结果告知
    bulletin = "bulletin"            # 月度通报
    newsletter = "newsletter"        # 创卫简报
    coordination = "coordination"    # 协调请求 (a child stack asks this tier to coordinate)
    missed_check = "missed_check"    # 漏检提醒 (a scheduled check did not happen)


NOTICE_LABELS = {
    NoticeType.rectification: "整改通知书", NoticeType.urge: "督办单", NoticeType.escalation: "上报协调函",
    NoticeType.verification: "复查结果通知", NoticeType.relapse: "反弹提醒", NoticeType.commendation: "通报表扬",
    NoticeType.criticism: "通报批评", NoticeType.inspection: "检查结果告知", NoticeType.bulletin: "月度通报",
    NoticeType.newsletter: "创卫简报", NoticeType.coordination: "协调请求", NoticeType.missed_check: "漏检提醒",
}


class Role(StrEnum):
    responsible = "responsible"              # the responsible subject (属地/责任单位)
    responsible_office = "responsible_office"  # the office of the node the subject sits in
    inspecting_office = "inspecting_office"  # the office that inspected
    owner_office = "owner_office"            # the office whose ledger holds the task
    tier_above = "tier_above"                # escalation target, else the tier above this stack
    home_office = "home_office"              # this stack's own office
    ranked_subjects = "ranked_subjects"      # every subject in a bulletin's ranking


TRIGGERS = {"task_opened", "task_status_changed", "task_overdue", "task_escalated", "task_closed",
            "task_relapsed", "score_published", "inspection_submitted", "bulletin_generated", "newsletter",
            "coordination_requested", "check_missed"}

# Conditions a rule may put in `when`; each tests one fact of the event.
CONDITIONS: dict[str, Callable[[Any, Any], bool]] = {
    "severity": lambda fact, want: fact in want,
    "kind": lambda fact, want: fact in want,
    "from_status": lambda fact, want: fact in want,
    "to_status": lambda fact, want: fact in want,
    "period_kind": lambda fact, want: fact in want,
    "place_type": lambda fact, want: fact in want,
    "vetoed": lambda fact, want: bool(fact) == bool(want),
    "ranked": lambda fact, want: bool(fact) == bool(want),
    "on_time": lambda fact, want: bool(fact) == bool(want),
    "urge_count_at_least": lambda fact, want: fact is not None and fact >= want,
    "rank_at_most": lambda fact, want: fact is not None and fact <= want,
    "rank_from_bottom_at_most": lambda fact, want: fact is not None and fact <= want,
    "score_below": lambda fact, want: fact is not None and fact < want,
    "findings_at_least": lambda fact, want: fact is not None and fact >= want,
    # A score for a period long gone (history imported months later) commends or criticises nobody;
    # an age that could not be told counts as recent (the behaviour before the condition).
    "periods_ago_at_most": lambda fact, want: fact is None or fact <= want,
}
CONDITION_TYPES = {"severity": "list", "kind": "list", "from_status": "list", "to_status": "list",
                   "period_kind": "list", "place_type": "list", "vetoed": "bool", "ranked": "bool",
                   "on_time": "bool", "urge_count_at_least": "number", "rank_at_most": "number",
                   "rank_from_bottom_at_most": "number", "score_below": "number", "findings_at_least": "number",
                   "periods_ago_at_most": "number"}
CONDITION_TYPE_NAMES = {"list": "a list of values", "bool": "true or false", "number": "a number"}
# Which fact each condition reads.
CONDITION_FACT = {"urge_count_at_least": "urge_count", "rank_at_most": "rank",
                  "rank_from_bottom_at_most": "rank_from_bottom", "score_below": "score",
                  "findings_at_least": "findings", "periods_ago_at_most": "periods_ago"}


class NotifyRuleViolation(RuleViolation):
    pass


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: str = Field(min_length=1, max_length=64)
    event: str = Field(description="event type that triggers the rule (YAML: not `on`, which YAML reads as true)")
    notice: NoticeType
    to: list[Role] = Field(min_length=1)
    channels: list[Channel] = Field(min_length=1)
    when: dict[str, Any] = Field(default_factory=dict)
    dedupe: str = Field(default="event", pattern="^(event|subject_period)$",
                        description="event: once per event; subject_period: once per subject and period")

    @field_validator("event")
    @classmethod
    def _known_trigger(cls, value: str) -> str:
        if value not in TRIGGERS:
            raise ValueError(f"unknown trigger {value!r}; one of {sorted(TRIGGERS)}")
        return value

    @field_validator("when")
    @classmethod
    def _known_conditions(cls, value: dict) -> dict:
        for key, want in value.items():
            if key not in CONDITIONS:
                raise ValueError(f"unknown condition {key!r}; one of {sorted(CONDITIONS)}")
            # A condition of the wrong type would fail on every matching event (and silence
            # its notices): refuse it now.
            kind = CONDITION_TYPES[key]
            if kind == "list":
                ok = isinstance(want, list) and len(want) <= 50 and all(isinstance(w, str) for w in want)
            elif kind == "bool":
                ok = isinstance(want, bool)
            else:
                ok = isinstance(want, (int, float)) and not isinstance(want, bool) and abs(want) <= 1_000_000
            if not ok:
                raise ValueError(f"condition {key!r} needs {CONDITION_TYPE_NAMES[kind]}, not {want!r}")
        return value


class BulletinPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    commend_top: int = Field(default=3, ge=0, le=100, description="通报表扬: the first N ranked")
    criticise_bottom: int = Field(default=3, ge=0, le=100, description="通报批评: the last N ranked")
    top_categories: int = Field(default=5, ge=1, le=50)
    min_category_count: int = Field(default=2, ge=1, description="a category recurs from this many tasks on")


class RuleSetDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[Rule] = Field(default_factory=list, max_length=500)
    bulletin: BulletinPolicy = Field(default_factory=BulletinPolicy)

    @model_validator(mode="after")
    def _unique_ids(self):
        seen = set()
        for index, rule in enumerate(self.rules):
            if rule.id in seen:
                raise ValueError(f"rules[{index}].id {rule.id!r} appears twice")
            seen.add(rule.id)
        return self


def parse_rule_set(data: Any) -> RuleSetDocument:
    try:
        return RuleSetDocument.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "rules"
        raise NotifyRuleViolation(where, first["msg"]) from None


def load_default_rules(path: Path | str = DEFAULT_RULES_PATH) -> RuleSetDocument:
    with open(path, encoding="utf-8") as handle:
        return parse_rule_set(yaml.safe_load(handle))


def rule_matches(rule: Rule, trigger: str, facts: dict) -> bool:
    if rule.event != trigger:
        return False
    for name, want in rule.when.items():
        fact = facts.get(CONDITION_FACT.get(name, name))
        if not CONDITIONS[name](fact, want):
            return False
    return True


def matching_rules(document: RuleSetDocument, trigger: str, facts: dict) -> list[Rule]:
    return [r for r in document.rules if rule_matches(r, trigger, facts)]


@dataclass(frozen=True)
class Owner:
    """Whose contacts to look up: a subject's or a node office's."""
    kind: str  # subject | node
    id: str


def owners_for(role: Role, facts: dict, home: str, parent_of: Callable[[str], str | None]) -> list[Owner]:
    """The contact owners a role names for this event (empty when the event has no such party)."""
    if role == Role.responsible:
        return [Owner("subject", facts["subject_id"])] if facts.get("subject_id") else []
    if role == Role.responsible_office:
        return [Owner("node", facts["subject_node"])] if facts.get("subject_node") else []
    if role == Role.inspecting_office:
        return [Owner("node", facts["inspecting_node"])] if facts.get("inspecting_node") else []
    if role == Role.owner_office:
        return [Owner("node", facts["owner_node"])] if facts.get("owner_node") else []
    if role == Role.tier_above:
        above = facts.get("to_node") or parent_of(home)
        return [Owner("node", above)] if above else []
    if role == Role.home_office:
        return [Owner("node", home)]
    if role == Role.ranked_subjects:
        return [Owner("subject", s) for s in facts.get("ranked_subject_ids", [])]
    return []  # pragma: no cover - Role is closed


@dataclass(frozen=True)
class ContactInfo:
    contact_id: str
    inbox_user: str | None
    email: str | None
    webhook_url: str | None
    webhook_format: str = "wecom"

    def target(self, channel: Channel) -> str | None:
        return {Channel.inbox: self.inbox_user, Channel.email: self.email,
                Channel.webhook: self.webhook_url}[channel]


@dataclass(frozen=True)
class PlannedNotice:
    rule_id: str
    notice: NoticeType
    role: Role
    contact: ContactInfo
    channel: Channel
    target: str
    dedupe_key: str


def dedupe_key(rule: Rule, event_id: str, facts: dict) -> str:
    if rule.dedupe == "subject_period" and facts.get("subject_id") and facts.get("period"):
        return f"{rule.notice.value}:{facts['subject_id']}:{facts['period']}"
    return f"{rule.notice.value}:{event_id}"


def plan_notices(document: RuleSetDocument, trigger: str, event_id: str, facts: dict, home: str,
                 parent_of: Callable[[str], str | None],
                 contacts_of: Callable[[Owner], Iterable[ContactInfo]]) -> list[PlannedNotice]:
    """Who gets what on which channel: one entry per (notice, contact, channel).

    A contact reached through two roles or two rules of the same notice gets it once.
    """
    planned: dict[tuple, PlannedNotice] = {}
    for rule in matching_rules(document, trigger, facts):
        key = dedupe_key(rule, event_id, facts)
        for role in rule.to:
            for owner in owners_for(role, facts, home, parent_of):
                for contact in contacts_of(owner):
                    for channel in rule.channels:
                        target = contact.target(channel)
                        if not target:
                            continue
                        planned.setdefault((key, contact.contact_id, channel),
                                           PlannedNotice(rule.id, rule.notice, role, contact, channel, target, key))
    return list(planned.values())


# --- retries --------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: base × factor^(attempt-1), capped; dead after max_attempts."""
    max_attempts: int = 5
    base_seconds: float = 30.0
    factor: float = 2.0
    max_seconds: float = 3600.0

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_seconds < 0 or self.factor < 1 or self.max_seconds < 0:
            raise ValueError("backoff must be non-negative and non-decreasing")

    def delay_after(self, attempts: int) -> timedelta:
        """Wait before the next try, after `attempts` failed tries (1 = the first failure)."""
        seconds = self.base_seconds * self.factor ** max(attempts - 1, 0)
        return timedelta(seconds=min(seconds, self.max_seconds))

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts

    def schedule(self) -> list[timedelta]:
        """Every wait between tries, first failure to last (for the operator's page)."""
        return [self.delay_after(n) for n in range(1, self.max_attempts)]


# --- webhooks -------------------------------------------------------------------------

WEBHOOK_FORMATS = ("wecom", "dingtalk", "text")
WECOM_MARKDOWN_LIMIT = 4096  # bytes


def _truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", errors="ignore") + "…"


def webhook_payload(fmt: str, title: str, markdown: str) -> dict:
    """The body a WeCom (企业微信) or DingTalk (钉钉) group bot accepts."""
    if fmt == "wecom":
        return {"msgtype": "markdown", "markdown": {"content": _truncate_utf8(markdown, WECOM_MARKDOWN_LIMIT)}}
    if fmt == "dingtalk":
        return {"msgtype": "markdown", "markdown": {"title": title, "text": markdown}}
    if fmt == "text":
        return {"msgtype": "text", "text": {"content": _truncate_utf8(f"{title}\n{markdown}", 2048)}}
    raise ValueError(f"unknown webhook format {fmt!r}; one of {WEBHOOK_FORMATS}")


def webhook_accepted(status: int, body: Any) -> tuple[bool, str | None]:
    """Bots answer 200 with {"errcode": 0}; anything else is a failure to retry."""
    if not 200 <= status < 300:
        return False, f"HTTP {status}"
    if isinstance(body, dict) and body.get("errcode") not in (None, 0):
        return False, f"errcode {body.get('errcode')}: {body.get('errmsg')}"
    return True, None
