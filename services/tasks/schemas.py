"""HTTP/RPC schemas of the tasks service (examples in Chinese for the OpenAPI page).

Who acts is never part of a request: the actor and the role it acts in come from the
authenticated caller (`principal`), so request bodies carry only what was done.
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.contracts.bounds import CampaignInstant, Offset
from services.contracts.events.inspection import Evidence, PlaceRef
from services.contracts.events.tasks import Light, TaskRef, TaskStatus
from services.contracts.periods import InvalidPeriod, Period
from services.contracts.vocab import Severity

PHOTO = {"uri": "photos/2026/11/21/pt-02-after.jpg", "sha256": "b" * 64}


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class EvidenceIn(Evidence):
    """A photo sent with a request: when it was taken lies within the campaign years."""
    taken_at: CampaignInstant | None = None


class StartIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"note": "已安排保洁员整改"}]})
    note: str | None = Field(default=None, max_length=2000)


class FixIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"note": "已冲洗便池并消毒，张贴保洁制度", "after_photos": [PHOTO]}]})
    note: str = Field(min_length=1, max_length=2000, description="what was done (整改措施)")
    after_photos: list[EvidenceIn] = Field(min_length=1, max_length=20, description="整改后照片 (at least one)")


class VerifyIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"note": "现场复查合格，予以销号"}]})
    note: str | None = Field(default=None, max_length=2000)
    evidence: list[EvidenceIn] = Field(default_factory=list, max_length=20, description="复查照片")


class RejectIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"reason": "便池仍有尿碱，退回重改"}]})
    reason: str = Field(min_length=1, max_length=2000)
    evidence: list[EvidenceIn] = Field(default_factory=list, max_length=20)


class EscalateIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"reason": "化粪池产权不清，社区无法协调，请街道协调"}]})
    reason: str = Field(min_length=1, max_length=2000)


class AnswerIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [
        {"note": "已协调环卫所清掏，请社区跟进", "new_deadline_at": "2026-11-28T18:00:00+08:00"}]})
    note: str = Field(min_length=1, max_length=2000, description="the coordination answer (协调意见)")
    new_deadline_at: CampaignInstant | None = Field(default=None, description="a new time limit, if granted")


class HistoryOut(BaseModel):
    at: datetime
    actor: str = Field(description="who acted (the authenticated person; 督办系统 for the sweeper)")
    actor_subject: str | None = Field(default=None, description="the account that acted")
    role: str = Field(description="the role acted in: rectifier, inspector, administrator, system, child_tier")
    action: str
    from_status: TaskStatus | None
    to_status: TaskStatus
    reason: str | None
    evidence: list[Evidence]


class ResponsibleOut(BaseModel):
    subject_id: str
    node: str
    name: str


class TaskOut(BaseModel):
    task_id: str
    inspection_id: str
    inspection_kind: str
    inspecting_node: str
    owner_node: str
    inspectors: list[str]
    subject_id: str = Field(description="the inspected subject")
    subject_name: str
    subject_node: str = Field(description="the inspected subject's division code")
    responsible: ResponsibleOut
    place: PlaceRef | None
    checklist_code: str
    item_code: str
    item_text: str
    category_code: str
    category_name: str
    severity: Severity
    findings: int
    deduction: float
    note: str | None
    evidence: list[Evidence] = Field(description="before-photos (整改前)")
    found_at: datetime
    opened_at: datetime
    deadline_at: datetime
    deadline_source: Literal["inspector", "item", "immediate", "coordinator"]
    status: TaskStatus
    light: Light | None = Field(description="None once closed")
    time_used: float = Field(description="fraction of the time limit used")
    overdue: bool
    overdue_since: datetime | None
    urge_count: int
    fixed_by: str | None
    fix_submitted_at: datetime | None
    fix_note: str | None
    after_evidence: list[Evidence]
    closed_at: datetime | None
    verified_by: str | None
    on_time: bool | None
    hours_to_fix: float | None
    escalated_to: str | None
    escalated_at: datetime | None
    escalation_reason: str | None
    answer_due_at: datetime | None
    coordination_pending: bool = Field(default=False, description="an escalation awaits its answer (待协调答复); "
                                                                  "the task stays workable meanwhile")
    delegated_to: str | None = Field(default=None, description="handed down to this child stack (下级台账办理)")
    relapse_of: str | None = Field(description="the closed task this one repeats (反弹)")
    relapse: bool = Field(description="flagged as a relapse (反弹)")
    embargoed: bool = Field(default=False, description="an unannounced inspection's task not yet released "
                                                        "to the subject (暗访未公开)")
    released_at: datetime | None = Field(default=None, description="when the unannounced inspection was released")
    history: list[HistoryOut] | None = None


def _period(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        Period.parse(value)
    except InvalidPeriod as exc:
        raise ValueError(str(exc)) from None
    return value


class LedgerQuery(_In):
    subject_id: str | None = Field(default=None, description="responsible subject")
    status: TaskStatus | None = None
    light: Light | None = None
    category: str | None = Field(default=None, max_length=32, description="category code, e.g. SAN")
    severity: Severity | None = None
    place_id: str | None = None
    period: str | None = Field(default=None, description="found in: 2026-11, 2026-Q4, 2026-W47, 2026-H2, 2026")
    relapse: bool | None = Field(default=None, description="only relapses (反弹) or only first findings")
    limit: int = Field(default=500, ge=1, le=10000)
    offset: Offset = 0

    @field_validator("period")
    @classmethod
    def _check_period(cls, value):
        return _period(value)


class FiguresQuery(_In):
    period: str | None = Field(default=None, description="default: the current month (CST)")
    subject_id: str | None = None

    @field_validator("period")
    @classmethod
    def _check_period(cls, value):
        return _period(value)


class FiguresOut(BaseModel):
    subject_id: str
    node: str
    name: str
    period: str
    opened: int
    closed: int
    closed_on_time: int
    overdue_open: int
    relapses: int
    close_rate: float | None = Field(description="销号率")
    on_time_rate: float | None = Field(description="按期整改率")
    mean_hours_to_fix: float | None = Field(description="平均整改用时（小时）")


class SweepOut(BaseModel):
    swept_at: datetime
    examined: int
    marked_overdue: int
    urged: int
    escalated: int
    figures_published: int
    retargeted: int = Field(default=0, description="escalations waiting on a tier that runs no stack, handed to "
                                                   "this office (改由本级督办; only without PARENT_STACK)")


class CoordinationOut(BaseModel):
    """An escalation from a child stack's ledger awaiting (or given) this tier's answer."""
    task_id: str
    from_node: str
    task: TaskRef
    reason: str | None
    escalated_at: datetime
    answer_due_at: datetime
    status: Literal["open", "answered"]
    overdue: bool = Field(description="the answer is late (this tier owes it)")
    answered_by: str | None
    answer: str | None
    new_deadline_at: datetime | None
    answered_at: datetime | None


class CoordinationQuery(_In):
    status: Literal["open", "answered", "all"] = "open"
