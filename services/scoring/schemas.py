"""HTTP schemas of the scoring service (examples in Chinese for the OpenAPI page)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from services.contracts.nodes import Tier
from services.contracts.periods import InvalidPeriod, Period, PeriodKind
from services.contracts.vocab import SubjectType


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


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
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [{
        "subject_id": "411502008006", "period": "2026-11", "reason": "criticism",
        "issued_by": "浉河区爱卫办", "note": "11月暗访发现背街小巷垃圾堆积，通报批评",
        "reference": "浉爱卫〔2026〕15号"}]})
    subject_id: str = Field(min_length=1, max_length=64,
                            description="a child unit's division code, or the inspection service's subject id")
    period: PeriodKey = Field(examples=["2026-11"], description="the veto counts for this period and every longer one containing it")
    reason: Literal["criticism", "media_exposure"] = Field(description="通报批评 or 媒体曝光")
    issued_by: str = Field(min_length=1, max_length=100, examples=["市创卫办"])
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
    issued_by: str
    note: str | None
    reference: str | None
    created_at: datetime
    applies_to: list[str]
    revoked: bool = Field(default=False, description="撤销 a revoked veto is kept on record but no longer counts")
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None


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
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [{
        "revoked_by": "浉河区爱卫办", "reason": "经复核，申诉成立，撤销浉爱卫〔2026〕15号通报批评"}]})
    revoked_by: str = Field(min_length=1, max_length=100, examples=["浉河区爱卫办"])
    reason: str = Field(min_length=1, max_length=2000, description="why: appeal upheld (申诉成立), notice withdrawn…",
                        examples=["通报撤回"])


class AppraisalIn(_In):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [{
        "subject_id": "411502008001", "period": "2026-H2", "score": 92,
        "appraised_by": "金牛山街道创卫领导小组", "note": "民主测评"}]})
    subject_id: str = Field(min_length=1, max_length=64)
    period: PeriodKey = Field(examples=["2026-H2"])
    score: float = Field(ge=0, description="on the policy's scale")
    appraised_by: str = Field(min_length=1, max_length=100)
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
    appraised_by: str
    note: str | None
    created_at: datetime
    period_score: FigureOut | None


class PolicyOut(BaseModel):
    node: str
    defined_at: str = Field(description="the node whose policy applies (this one or the nearest above it)")
    inherited: bool
    version: int
    policy_id: str
    created_by: str
    created_at: datetime
    document: dict[str, Any]


class RecomputeIn(_In):
    period: PeriodKey = Field(examples=["2026-11"])


class VetoRevokedOut(VetoOut):
    period_scores: list[FigureOut] = Field(
        description="the subject's figures recomputed for the veto's period and every longer one containing it")
    published: int = Field(description="score_published events staged by the recomputation")
