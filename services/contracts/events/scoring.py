"""Events published by the scoring service."""
from __future__ import annotations

from pydantic import AwareDatetime, Field

from services.contracts.events import Payload, event_payload
from services.contracts.nodes import NodeCode
from services.contracts.periods import PeriodKind
from services.contracts.vocab import SubjectType



class ScoredSubject(Payload):
    subject_id: str = Field(description="for a child unit, its division code is also its identity upward")
    node: NodeCode
    name: str
    subject_type: SubjectType


class PolicyRef(Payload):
    policy_id: str
    version: int


@event_payload("score_published", 1)
class ScorePublished(Payload):
    """A subject's score, rank or grade for a period changed (or was first computed).

    `revision` grows with every change of the same (subject, period); a consumer keeps the
    highest revision it has seen and ignores older ones arriving late.
    """
    scoring_node: NodeCode = Field(description="the stack that computed this score")
    subject: ScoredSubject
    period_kind: PeriodKind
    period: str = Field(examples=["2026-11"])
    score: float | None = Field(description="on `scale` points; None when there were no inputs")
    scale: int
    grade: str | None = Field(default=None, examples=["优秀"])
    rank: int | None = Field(default=None, description="among peers; None when below the minimum sample")
    peers: int = Field(ge=0, description="subjects in the ranking")
    ranked: bool
    movement: int | None = Field(default=None, description="positions gained since the previous period")
    vetoed: bool = False
    veto_reasons: list[str] = Field(default_factory=list)
    inputs: int = Field(ge=0, description="inspections (or child scores) behind the figure")
    policy: PolicyRef
    revision: int = Field(ge=1)
    computed_at: AwareDatetime
