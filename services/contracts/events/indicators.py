"""Events published by the indicators service: vector density verdicts (病媒生物密度, 四害) and
residents' satisfaction rates (群众满意率). The verdicts and rates of a stack's areas also go
up to the parent tier on `chuangwei.up`."""
from __future__ import annotations

from pydantic import AwareDatetime, Field

from services.contracts.events import Payload, event_payload
from services.contracts.nodes import NodeCode


class Area(Payload):
    node: NodeCode
    name: str


class MethodFigure(Payload):
    method: str = Field(examples=["powder"])
    value: float = Field(ge=0, description="the period's figure (mean of the readings)")
    level: float = Field(gt=0, description="the control level applied")
    ratio: float = Field(ge=0, description="value / level")
    readings: int = Field(ge=1)


class SpeciesFigure(Payload):
    species: str = Field(examples=["rat"])
    ratio: float | None = Field(description="the worst method's ratio; None without readings")
    at_level: bool
    methods: list[MethodFigure]


@event_payload("vector_verdict_published", 1)
class VectorVerdictPublished(Payload):
    """An area's vector density verdict for a month changed (or was first reached).

    `revision` grows with every change of the same (area, period); a consumer keeps the
    highest revision it has seen."""
    evaluating_node: NodeCode = Field(description="the stack that evaluated the readings")
    area: Area
    period: str = Field(examples=["2026-11"])
    verdict: str = Field(examples=["pass"], description="pass | fail | incomplete")
    previous_verdict: str | None = None
    species: list[SpeciesFigure]
    explanation: str
    revision: int = Field(ge=1)
    computed_at: AwareDatetime


@event_payload("vector_density_slipped", 1)
class VectorDensitySlipped(Payload):
    """An area that passed the vector density rule fails it now: a notice for the office."""
    evaluating_node: NodeCode
    area: Area
    period: str
    verdict: str
    previous_verdict: str
    previous_period: str = Field(description="the period of the passing verdict it slipped from")
    explanation: str
    computed_at: AwareDatetime


class RateFigure(Payload):
    key: str = Field(description="a place type or content area code, or an item code")
    rate: float | None = Field(ge=0, le=1)
    satisfied: int = Field(ge=0)
    answers: int = Field(ge=0)
    ci_low: float | None = Field(ge=0, le=1)
    ci_high: float | None = Field(ge=0, le=1)


class QuestionnaireRef(Payload):
    code: str
    version: int = Field(ge=1)


@event_payload("satisfaction_published", 1)
class SatisfactionPublished(Payload):
    """A survey wave's satisfaction rate for an area, computed when the wave was closed."""
    surveying_node: NodeCode
    survey_id: str
    questionnaire: QuestionnaireRef
    area: Area
    period: str
    rate: float | None = Field(ge=0, le=1)
    satisfied: int = Field(ge=0)
    answers: int = Field(ge=0)
    respondents: int = Field(ge=0)
    sample_size: int = Field(ge=0, description="respondents drawn for the area")
    ci_low: float | None = Field(ge=0, le=1, description="Wilson score interval, 95 %")
    ci_high: float | None = Field(ge=0, le=1)
    threshold: float = Field(gt=0, le=1)
    flagged: bool = Field(description="rate below the threshold")
    by_place_type: list[RateFigure]
    by_content_area: list[RateFigure]
    revision: int = Field(ge=1)
    computed_at: AwareDatetime


class Responsible(Payload):
    subject_id: str = Field(description="the area (territorial responsibility, 属地管理): its division code")
    node: NodeCode
    name: str


class SurveyItemRef(Payload):
    code: str
    text: str
    place_type: str | None = None
    content_area: str | None = None


@event_payload("satisfaction_item_low", 1)
class SatisfactionItemLow(Payload):
    """An item's satisfaction rate in an area fell below the questionnaire's finding threshold:
    a rectification finding (整改问题) for the responsible subject."""
    surveying_node: NodeCode
    survey_id: str
    questionnaire: QuestionnaireRef
    period: str
    responsible: Responsible
    item: SurveyItemRef
    rate: float = Field(ge=0, le=1)
    satisfied: int = Field(ge=0)
    answers: int = Field(ge=1)
    finding_below: float = Field(gt=0, le=1)
    found_at: AwareDatetime
