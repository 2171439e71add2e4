"""HTTP schemas of the indicators service (examples in Chinese for the OpenAPI page)."""
from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.contracts.bounds import OneLine, line
from services.contracts.nodes import NodeCode
from services.contracts.periods import InvalidPeriod, Period, PeriodKind
from services.contracts.vocab import PlaceType
from services.indicators.domain import Method, Species, Verdict

Text = Annotated[str, line(200, 1), OneLine]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
AnswerValue = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]


def _month(value: str) -> str:
    try:
        period = Period.parse(value)
    except InvalidPeriod as exc:
        raise ValueError(str(exc)) from exc
    if period.kind != PeriodKind.month:
        raise ValueError("must be a month, YYYY-MM (按月监测)")
    return value


def _period(value: str) -> str:
    try:
        Period.parse(value)
    except InvalidPeriod as exc:
        raise ValueError(str(exc)) from exc
    return value


Month = Annotated[str, Field(min_length=7, max_length=7, pattern=r"^\d{4}-\d{2}$", examples=["2026-11"]),
                  AfterValidator(_month)]
PeriodKey = Annotated[str, Field(min_length=4, max_length=8, pattern=r"^\d{4}(-(W\d{2}|\d{2}|Q[1-4]|H[12]))?$",
                                 examples=["2026-11", "2026-Q4"]), AfterValidator(_period)]


class _In(BaseModel):
    # NaN and infinities are no densities: refused before anything is stored.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)


# --- vector density ---

class LevelIn(_In):
    method: Method
    level: float = Field(gt=0, le=1000, description="the control level in the method's unit")


class ControlLevelsIn(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"levels": [{"method": "powder", "level": 3}, {"method": "breteau", "level": 5}]}]})
    levels: list[LevelIn] = Field(min_length=1, max_length=len(Method))


class LevelOut(BaseModel):
    method: Method
    species: Species
    label: str
    unit: str
    level: float
    source: str = Field(description='"default" or the node whose office set it')
    set_by: str | None = None
    set_at: datetime | None = None


class DensityReadingIn(_In):
    species: Species
    method: Method
    value: float = Field(ge=0, description="the figure in the method's unit (%, per 100 houses, per person-hour)")
    sampled_on: date = Field(description="sampling date (China Standard Time), within the form's period")
    sample_size: int | None = Field(None, ge=1, le=1_000_000, description="houses, rooms or traps examined")
    site: Annotated[str | None, OneLine] = line(200, 1, default=None)


class DensityFormIn(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "idempotency_key": "cdc-2026-11-411502008001", "area": "411502008001", "period": "2026-11",
        "source": "浉河区疾病预防控制中心",
        "readings": [{"species": "rat", "method": "powder", "value": 2.5, "sampled_on": "2026-11-12",
                      "sample_size": 200},
                     {"species": "mosquito", "method": "breteau", "value": 4, "sampled_on": "2026-11-12"},
                     {"species": "fly", "method": "fly_rooms", "value": 5, "sampled_on": "2026-11-13"},
                     {"species": "cockroach", "method": "cockroach_rooms", "value": 2, "sampled_on": "2026-11-13"}]}]})
    idempotency_key: Annotated[str, OneLine] = line(128, 1, description="the same form sent twice is stored once")
    area: NodeCode = Field(description="division code of the monitored area")
    period: Month
    source: Text = Field(description="who measured (the disease-control centre)")
    readings: list[DensityReadingIn] = Field(min_length=1, max_length=200)


class ReadingOut(BaseModel):
    species: Species
    method: Method
    value: float
    sampled_on: date
    sample_size: int | None
    site: str | None


class MethodFigureOut(BaseModel):
    method: Method
    value: float
    level: float
    ratio: float
    readings: int


class SpeciesFigureOut(BaseModel):
    species: Species
    ratio: float | None
    at_level: bool
    methods: list[MethodFigureOut]


class VerdictOut(BaseModel):
    area: str
    name: str
    period: str
    verdict: Verdict
    species: list[SpeciesFigureOut]
    explanation: str
    revision: int | None = Field(None, description="for a month: the published revision")
    computed_at: datetime | None = None


class DensityFormOut(BaseModel):
    form_id: str
    idempotency_key: str
    area: str
    period: str
    source: str
    recorded_by: str
    recorded_at: datetime
    readings: list[ReadingOut]
    verdict: VerdictOut


class VerdictQuery(_In):
    period: PeriodKey
    area: NodeCode | None = Field(None, description="only this area and its subtree")


class FormQuery(_In):
    period: PeriodKey | None = None
    area: NodeCode | None = None
    limit: int = Field(100, ge=1, le=1000)


# --- questionnaires and surveys ---

class ScaleOption(_In):
    value: AnswerValue
    label: Text


class ItemIn(_In):
    code: Code
    text: Annotated[str, line(500, 1), OneLine]
    place_type: PlaceType | None = None
    content_area: Annotated[str | None, Field(None, min_length=2, max_length=8, pattern=r"^[A-Z]+$",
                                              examples=["CITY"])] = None
    scale: list[ScaleOption] = Field(min_length=2, max_length=11)
    satisfied: list[AnswerValue] = Field(min_length=1, max_length=11, description="answers that count as satisfied")
    excluded: list[AnswerValue] = Field(default_factory=list, max_length=10,
                                        description="answers counted in neither part (不了解)")
    finding_below: float | None = Field(None, gt=0, le=1, description="policy: an area whose rate on this item "
                                        "falls below this becomes a rectification finding for the area")


class QuestionnaireIn(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "code": "residents-2026", "title": "群众满意度调查问卷", "threshold": 0.9,
        "items": [{"code": "Q1", "text": "您对辖区公厕的卫生状况是否满意？", "place_type": "public_toilet",
                   "scale": [{"value": "5", "label": "满意"}, {"value": "3", "label": "基本满意"},
                             {"value": "1", "label": "不满意"}, {"value": "0", "label": "不了解"}],
                   "satisfied": ["5", "3"], "excluded": ["0"], "finding_below": 0.6}]}]})
    code: Code
    title: Text
    node: NodeCode | None = Field(None, description="the defining office (default: this stack's node)")
    threshold: float = Field(0.9, gt=0, le=1, description="areas below this rate are flagged")
    items: list[ItemIn] = Field(min_length=1, max_length=100)


class ItemOut(BaseModel):
    code: str
    text: str
    place_type: str | None
    content_area: str | None
    scale: list[dict]
    satisfied: list[str]
    excluded: list[str]
    finding_below: float | None


class QuestionnaireOut(BaseModel):
    code: str
    version: int
    node: str
    title: str
    threshold: float
    items: list[ItemOut]
    defined_by: str
    defined_at: datetime


class SurveyAreaIn(_In):
    node: NodeCode
    frame: list[Annotated[str, line(200, 1), OneLine]] | None = Field(
        None, max_length=20000, description="the sampling frame: households or residents (labels)")
    frame_size: int | None = Field(None, ge=1, le=1_000_000, description="without a frame: respondents #1..#N")
    sample_size: int = Field(ge=1, le=2000)


class SurveyIn(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "questionnaire": {"code": "residents-2026", "version": 1}, "period": "2026-11", "seed": 20261101,
        "areas": [{"node": "411502008001", "frame_size": 1200, "sample_size": 50}]}]})
    idempotency_key: Annotated[str | None, OneLine] = line(128, 1, default=None)
    questionnaire: "QuestionnaireRefIn"
    period: PeriodKey
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="recorded; the same seed draws the same sample")
    areas: list[SurveyAreaIn] = Field(min_length=1, max_length=200)


class QuestionnaireRefIn(_In):
    code: Code
    version: int = Field(ge=1, le=1_000_000)


class RespondentOut(BaseModel):
    respondent_id: str
    area: str
    label: str
    position: int
    answered: bool
    channel: str | None
    response_code: str | None = Field(None, description="only when the survey is created: the one-time code "
                                                        "of the resident's public answer link")


class SurveyOut(BaseModel):
    survey_id: str
    node: str
    questionnaire: dict
    period: str
    seed: int
    areas: list[dict]
    status: str
    created_by: str
    created_at: datetime
    closed_at: datetime | None
    respondents: list[RespondentOut]


class SurveyQuery(_In):
    period: PeriodKey | None = None
    limit: int = Field(100, ge=1, le=1000)


class AnswerIn(_In):
    item_code: Code
    value: AnswerValue


class InterviewIn(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "respondent_id": "5d1e…", "answers": [{"item_code": "Q1", "value": "3"}]}]})
    respondent_id: Annotated[str, Field(min_length=1, max_length=64)]
    answers: list[AnswerIn] = Field(min_length=1, max_length=100)


class PublicAnswerIn(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "response_code": "K7QX-2M9P-TD4W", "answers": [{"item_code": "Q1", "value": "5"}]}]})
    response_code: Annotated[str, Field(min_length=8, max_length=32, pattern=r"^[A-Za-z0-9-]+$")]
    answers: list[AnswerIn] = Field(min_length=1, max_length=100)


class ResponseOut(BaseModel):
    survey_id: str
    respondent_id: str
    area: str
    channel: str
    answered_at: datetime
    answers: dict[str, str]


class PublicAnswerOut(BaseModel):
    accepted: bool
    message: str


class RateOut(BaseModel):
    key: str
    rate: float | None
    satisfied: int
    answers: int
    respondents: int
    ci_low: float | None
    ci_high: float | None


class AreaSatisfactionOut(BaseModel):
    area: str
    name: str
    rate: float | None
    satisfied: int
    answers: int
    respondents: int
    sample_size: int
    ci_low: float | None = Field(description="Wilson score interval, 95 %")
    ci_high: float | None
    threshold: float
    flagged: bool
    by_place_type: list[RateOut]
    by_content_area: list[RateOut]
    by_item: list[RateOut]


class SatisfactionOut(BaseModel):
    survey_id: str
    period: str
    questionnaire: dict
    status: str
    areas: list[AreaSatisfactionOut]


class CloseOut(BaseModel):
    survey_id: str
    status: str
    published: int
    findings: int
    flagged: list[str]


class ChildReportQuery(_In):
    period: PeriodKey | None = None
    kind: str | None = Field(None, pattern=r"^(vector|satisfaction)$")


class ChildReportOut(BaseModel):
    kind: str
    area: str
    period: str
    reporting_node: str
    revision: int
    received_at: datetime
    report: dict


SurveyIn.model_rebuild()
