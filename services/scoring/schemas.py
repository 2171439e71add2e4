"""HTTP schemas of the scoring service (examples in Chinese for the OpenAPI page)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from services.contracts.bounds import Offset
from services.contracts.nodes import Tier
from services.contracts.periods import InvalidPeriod, Period, PeriodKind
from services.contracts.vocab import SubjectType


class _In(BaseModel):
    # No Infinity/NaN: they cannot be stored as JSON and make no score.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)


MAX_LIMIT = 500
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description="rows to return (at most 500)")]


def _period(value: str) -> str:
    try:
        return Period.parse(value).key
    except InvalidPeriod as exc:
        raise ValueError(str(exc)) from None


PeriodKey = Annotated[str, AfterValidator(_period)]
"""2026-W47 (week), 2026-11 (month), 2026-Q4, 2026-H2 or 2026; anything else is a 422."""


class RankingQuery(_In):
    period: PeriodKey = Field(description="2026-W47, 2026-11, 2026-Q4, 2026-H2 or 2026", examples=["2026-11"])
    tier: Tier | None = Field(default=None, description="default: the tier below this office")
    subject_type: SubjectType = SubjectType.child_unit


class HistoryQuery(_In):
    period_kind: PeriodKind | None = None


class VetoIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False,
                              json_schema_extra={"examples": [{
                                  "subject_id": "411502008006", "period": "2026-11", "reason": "criticism",
                                  "note": "浉河区爱卫办通报：11月暗访发现背街小巷垃圾堆积",
                                  "reference": "浉爱卫〔2026〕15号"}]})
    subject_id: str = Field(min_length=1, max_length=64,
                            description="a child unit's division code, or the inspection service's subject id")
    period: PeriodKey = Field(examples=["2026-11"], description="the veto counts for this period and every longer one containing it")
    reason: Literal["criticism", "media_exposure"] = Field(description="通报批评 or 媒体曝光")
    note: str | None = Field(default=None, max_length=2000)
    reference: str | None = Field(default=None, max_length=200, description="document number (文号) or link")


class VetoOut(BaseModel):
    veto_id: str
    subject_id: str
    subject_name: str | None = None
    period: str
    period_kind: PeriodKind
    reason: str
    label: str
    issued_by: str = Field(description="who entered it (the signed-in administrator)")
    note: str | None
    reference: str | None
    created_at: datetime
    applies_to: list[str]
    revoked: bool = Field(default=False, description="撤销 a revoked veto is kept on record but no longer counts")
    revoked_at: datetime | None = None
    revoked_by: str | None = Field(default=None, description="the administrator who proposed the revocation")
    revoke_reason: str | None = None
    revoke_approved_by: str | None = Field(default=None, description="the second administrator, who approved it")
    pending_revocation: str | None = Field(default=None, description="id of a revocation awaiting approval")


class VetoQuery(_In):
    subject_id: str | None = Field(default=None, min_length=1, max_length=64,
                                   description="a child unit's division code, or the inspection service's subject id")
    period: PeriodKey | None = Field(default=None, examples=["2026-11"],
                                     description="vetoes that count in this period: entered for it or for a "
                                                 "shorter period inside it (a month's vetoes are listed for its "
                                                 "quarter, half year and year)")
    include_revoked: bool = Field(default=False, description="also list revoked vetoes (kept on record)")

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:  # ?subject_id=&period= lists everything
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
        return data


class VetoRevokeIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False,
                              json_schema_extra={"examples": [{
                                  "reason": "经复核，申诉成立，撤销浉爱卫〔2026〕15号通报批评"}]})
    reason: str = Field(min_length=1, max_length=2000, description="why: appeal upheld (申诉成立), notice withdrawn…",
                        examples=["通报撤回"])


class AppraisalIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False,
                              json_schema_extra={"examples": [{
                                  "subject_id": "411502008001", "period": "2026-H2", "score": 92,
                                  "note": "金牛山街道创卫领导小组民主测评"}]})
    subject_id: str = Field(min_length=1, max_length=64)
    period: PeriodKey = Field(examples=["2026-H2"])
    score: float = Field(ge=0, description="on the policy's scale")
    note: str | None = Field(default=None, max_length=2000)


class PolicyRefOut(BaseModel):
    policy_id: str
    version: int


class FigureOut(BaseModel):
    subject_id: str
    node: str
    name: str
    subject_type: SubjectType
    tier: Tier
    period_kind: PeriodKind
    period: str
    score: float | None
    scale: int
    routine: float | None
    appraisal: float | None
    grade: str | None
    rank: int | None
    peers: int
    ranked: bool
    movement: int | None = Field(description="positions gained since the previous period")
    vetoed: bool
    veto_reasons: list[str]
    inputs: int
    policy: PolicyRefOut
    revision: int
    computed_at: datetime
    stale: bool = Field(default=False, description="built from a child stack's report, and that child has been "
                                                   "silent longer than the policy's rollup.stale_after_hours")
    stale_reason: str | None = Field(default=None, examples=["金牛山街道 (411502008000) 自 2026-11-20 16:00 起未上报"])
    held_back: bool = Field(default=False, description="withheld from this reader: a figure below it holds an "
                                                        "unannounced inspection (暗访) its office has not released")
    held_back_reason: str | None = Field(default=None, examples=["本期得分待发布 (this period's figure is held back "
                                                                 "until the inspecting office releases its results)"])


class UnrankedOut(FigureOut):
    why_unranked: str


class RankingOut(BaseModel):
    period: str
    period_kind: PeriodKind
    tier: Tier
    subject_type: SubjectType
    scoring_node: str
    peers: int
    ranking: list[FigureOut]
    below_minimum_sample: list[UnrankedOut]


class HistoryOut(BaseModel):
    subject_id: str
    node: str
    name: str
    subject_type: SubjectType
    tier: Tier
    scores: list[FigureOut]


class ExplainOut(FigureOut):
    explain: dict[str, Any] = Field(description="inspections, weights, months, children, appraisal and vetoes behind the score")


class AppraisalOut(BaseModel):
    appraisal_id: int
    subject_id: str
    period: str
    score: float
    scale: int
    appraised_by: str = Field(description="who entered it (the signed-in administrator)")
    note: str | None
    created_at: datetime
    period_score: FigureOut | None


class PolicyOut(BaseModel):
    node: str
    defined_at: str = Field(description="the node whose policy applies (this one or the nearest above it)")
    inherited: bool
    version: int
    policy_id: str
    created_by: str = Field(description="the administrator who proposed this version")
    created_at: datetime
    approved_by: str | None = Field(default=None, description="the second administrator, who approved it")
    approved_at: datetime | None = None
    document: dict[str, Any]


class RecomputeIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False,
                              json_schema_extra={"examples": [{
                                  "period": "2026-10", "reason": "十里河社区10月检查记录补录后重新计算"}]})
    period: PeriodKey = Field(examples=["2026-11"])
    reason: str | None = Field(default=None, min_length=1, max_length=2000,
                               description="why; required for a period that has ended (kept in the recompute log)")


class RecomputeLogOut(BaseModel):
    recompute_id: int
    period: str
    period_kind: PeriodKind
    closed: bool = Field(description="the period had ended when it was recomputed")
    trigger: str = Field(description="recompute, veto, veto_revocation or appraisal")
    reason: str | None
    requested_by: str
    subject_id: str | None = Field(description="one subject's figures, or null for the whole period")
    published: int
    created_at: datetime


class RecomputeOut(RecomputeLogOut):
    pass


class RecomputeQuery(_In):
    period: PeriodKey | None = Field(default=None, examples=["2026-10"])
    limit: Limit = 100
    offset: Offset = 0


class FreshnessOut(BaseModel):
    child: str
    name: str
    last_heard_at: str | None
    seconds_since: float | None
    last_event_type: str | None
    events: int


class ApprovalDecisionIn(_In):
    note: str | None = Field(default=None, min_length=1, max_length=2000, examples=["已核对申诉材料"])


class ApprovalQuery(_In):
    status: Literal["pending", "approved", "rejected"] = "pending"
    kind: Literal["veto_revocation", "policy_change"] | None = None
    limit: Limit = 100
    offset: Offset = 0


class ApprovalOut(BaseModel):
    """A change awaiting (or past) its second administrator."""
    approval_id: str
    kind: Literal["veto_revocation", "policy_change"]
    node: str = Field(description="the owning node: its administrators decide")
    target: str = Field(description="the veto id, or the node whose policy changes")
    status: Literal["pending", "approved", "rejected"]
    reason: str | None
    document: dict[str, Any] | None = Field(default=None, description="the proposed policy (policy_change)")
    proposed_by: str
    proposed_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_note: str | None = None
    veto: VetoOut | None = None
    policy: PolicyOut | None = Field(default=None, description="the adopted version (policy_change, approved)")
    period_scores: list[FigureOut] = Field(default_factory=list,
                                           description="figures recomputed by the approved change (veto_revocation)")
    published: int = Field(default=0, description="score_published events staged by the approved change")
