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


@event_payload("score_published", 2)
class ScorePublishedV2(Payload):
    """A subject's own figure for a period changed (or was first computed): its score,
    grade, vetoes, inputs or policy. Its rank is not part of it any more: ranks travel in
    `ranking_published`, one event per peer group and period, so that one inspection no
    longer publishes an event for every peer it moves past (issue 11).

    `revision` grows with every change of the same (subject, period); a consumer keeps the
    highest revision it has seen and ignores older ones arriving late. Parent tiers take
    v1 and v2 alike (a child stack may run the older version during an upgrade).
    """
    scoring_node: NodeCode = Field(description="the stack that computed this score")
    subject: ScoredSubject
    period_kind: PeriodKind
    period: str = Field(examples=["2026-11"])
    score: float | None = Field(description="on `scale` points; None when there were no inputs")
    scale: int
    grade: str | None = Field(default=None, examples=["优秀"])
    vetoed: bool = False
    veto_reasons: list[str] = Field(default_factory=list)
    inputs: int = Field(ge=0, description="inspections (or child scores) behind the figure")
    policy: PolicyRef
    revision: int = Field(ge=1)
    computed_at: AwareDatetime


class RankChange(Payload):
    subject: ScoredSubject
    rank: int | None = Field(description="among the group's ranked peers; None when not ranked")
    ranked: bool = Field(description="False below the minimum sample (样本不足) or without a score")
    movement: int | None = Field(default=None, description="positions gained since the previous period")


@event_payload("ranking_published", 1)
class RankingPublished(Payload):
    """A peer group's ranking for a period changed: the subjects whose rank, ranked flag or
    movement changed, with the group's number of ranked peers.

    `version` grows with every ranking_published of the same (scoring node, period, tier,
    subject type). Each change is a subject's whole ranking state, not a difference: a
    consumer applies a subject's entry when the version is higher than the one it last
    applied for that subject, so late or repeated events do no harm.
    """
    scoring_node: NodeCode
    period_kind: PeriodKind
    period: str = Field(examples=["2026-11"])
    tier: str = Field(examples=["community"])
    subject_type: SubjectType
    version: int = Field(ge=1)
    peers: int = Field(ge=0, description="ranked subjects in the group")
    changes: list[RankChange]
    computed_at: AwareDatetime


@event_payload("stack_heartbeat", 1)
class StackHeartbeat(Payload):
    """A tier's stack is up and its link to the parent works, whether or not any figure
    changed: a parent tells a quiet child (nothing inspected lately, figures current) from
    a silent one (link down, figures possibly out of date and marked stale, issue 12).

    Sent every SCORING_HEARTBEAT_SECONDS by each running scoring instance; a parent only
    notes when it last heard from the node, so repeats and duplicates do no harm.
    """
    node: NodeCode = Field(description="the stack's home node")
    name: str = Field(examples=["金牛山街道"])
    sent_at: AwareDatetime


@event_payload("child_freshness_changed", 1)
class ChildFreshnessChanged(Payload):
    """A child stack has been silent longer than the policy allows (`stale`: the figures
    built from its reports may no longer be true), or was heard from again after that.

    Published by the tier's own scoring on its local exchange, once per change; notify
    marks the child's rows in the monthly bulletin (issue 12). A consumer keeps, per child,
    the change with the latest `changed_at`.
    """
    child: NodeCode
    name: str = Field(examples=["金牛山街道"])
    stale: bool
    reason: str | None = Field(default=None, examples=["金牛山街道 (411502008000) 自 2026-11-20 16:00 起未上报"])
    last_heard_at: AwareDatetime
    stale_after_hours: float = Field(gt=0)
    changed_at: AwareDatetime
