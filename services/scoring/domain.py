"""Pure scoring rules: policies, period scores, composites, roll-up, vetoes, grades, ranking.

No nameko or database imports: unit-tested directly. Everything here works on plain
values; `operations` loads them from the database and stores the results.

Numbers are kept unrounded while they are combined and rounded to two decimals only in
the figures handed out (a mean of monthly means uses the exact monthly means).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.contracts.errors import RuleViolation
from services.contracts.nodes import Tier, normalize_code, InvalidNodeCode
from services.contracts.periods import InvalidPeriod, Period, PeriodKind
from services.contracts.vocab import InspectionKind

POLICY_DIR = Path(__file__).parent / "policy_data"
CASE_SCALE = 100  # case_points are percents of the scale
SHIPPED_POLICIES = {"street": POLICY_DIR / "street.yaml", "city": POLICY_DIR / "city.yaml"}

KIND_ORDER = {PeriodKind.week: 0, PeriodKind.month: 1, PeriodKind.quarter: 2, PeriodKind.half_year: 3,
              PeriodKind.year: 4}
SHORT_PERIODS = (PeriodKind.week, PeriodKind.month)
TIER_ORDER = (Tier.province, Tier.city, Tier.district, Tier.street, Tier.community)

VETO_LABELS = {"criticism": "通报批评", "media_exposure": "媒体曝光", "overdue": "整改超期",
               "vector_density": "病媒生物密度"}
VECTOR_VETO_TEXT = {"fail": "病媒生物密度未达标", "incomplete": "病媒生物密度监测不完整"}
DECIMALS = 2


class ScoringRuleViolation(RuleViolation):
    """Input breaks a scoring rule; `field` names where, `reason` says why."""


# --- Policy (data, not code) ----------------------------------------------------------


class _PolicyModel(BaseModel):
    # No Infinity/NaN anywhere in a policy: it is stored as JSON, and no rule can use them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class IndicatorKind(StrEnum):
    """Score input kinds that come from the indicators service, not from an inspection.

    Scoring's own vocabulary, kept out of the shared `InspectionKind` on purpose: that enum is
    parsed on the wire (`inspection_submitted`, and the inspection inside `task_delegated`),
    and the inspection service accepts any of its members as an inspection's kind, so a new
    member there could reach a child stack not yet upgraded and be refused. A policy is
    scoring's own document (stored here, exchanged only over scoring's HTTP API), so its
    source kinds may name these too. A policy counts them only where its `source_weights`
    name them: with no source weights, or without the kind in any group, they are ignored
    (not even listed in a score's explanation), so a policy that does not mention them scores
    exactly as before."""
    satisfaction_survey = "satisfaction_survey"  # 群众满意率 (a survey wave's rate × 100)


INDICATOR_KINDS = frozenset(k.value for k in IndicatorKind)
INDICATOR_KIND_LABELS = {IndicatorKind.satisfaction_survey: "群众满意率"}


class SourceWeight(_PolicyModel):
    name: str = Field(min_length=1, max_length=50, examples=["暗访"])
    kinds: list[InspectionKind | IndicatorKind] = Field(min_length=1)
    weight: float = Field(gt=0, le=100, description="percent")


class CompositeRule(_PolicyModel):
    """综合评定: routine inspection score and comprehensive appraisal (综合评议 / 民主测评)."""
    periods: list[PeriodKind] = Field(default_factory=lambda: [PeriodKind.half_year], min_length=1)
    routine_weight: float = Field(ge=0, le=100, description="percent")
    appraisal_weight: float = Field(ge=0, le=100, description="percent")
    missing_appraisal: Literal["routine_only", "zero"] = Field(
        default="routine_only", description="until the appraisal is entered: use the routine score alone, or count it as 0")


class GradeBand(_PolicyModel):
    name: str = Field(min_length=1, max_length=20, examples=["先进"])
    min: float = Field(ge=0, description="lowest score (on the policy scale) for this grade")
    advanced: bool = Field(default=False, description="先进 or above: a vetoed subject cannot receive it")


class TierRanking(_PolicyModel):
    min_inspections: int = Field(ge=1, le=1000, description="minimum sample before a subject is ranked")


class RankingRule(_PolicyModel):
    periods: list[PeriodKind] = Field(description="which periods are ranked")
    tiers: dict[Tier, TierRanking] = Field(description="every tier from the office's own down to community")


class OverdueVeto(_PolicyModel):
    overdue_open_at_least: int | None = Field(default=None, ge=1,
                                              description="veto when this many overdue tasks are open")
    on_time_rate_below: float | None = Field(default=None, gt=0, le=1,
                                             description="veto when the on-time close-out rate falls below")


class VectorDensityVeto(_PolicyModel):
    """一票否决 on the vector density rule (病媒生物密度, indicators' `vector_verdict_published`):
    an area's figure for a month, and for the longer periods containing it, is vetoed while the
    area's latest verdict revision for that month is one of `verdicts`."""
    verdicts: list[Literal["fail", "incomplete"]] = Field(
        default_factory=lambda: ["fail"], min_length=1,
        description="which verdicts veto: fail (未达标), and if the office says so incomplete (监测不完整)")


class VetoRule(_PolicyModel):
    overdue: OverdueVeto | None = None
    vector_density: VectorDensityVeto | None = Field(
        default=None, description="veto an area whose vector density verdict for the month fails (off when absent)")


class RollupRule(_PolicyModel):
    combine: Literal["mean", "weighted", "minimum"] = "mean"
    child_weights: dict[str, Annotated[float, Field(le=1_000_000)]] = Field(
        default_factory=dict, description="division code → weight (combine=weighted; default 1)")
    own_inspections_weight: float = Field(
        default=50, ge=0, le=100,
        description="percent of a parent's score from its own inspections when it has both")
    stale_after_hours: float = Field(
        default=48, gt=0, le=8760,
        description="a child stack not heard from for longer marks the figures built from its reports stale")


class CasePoints(_PolicyModel):
    """Points of one 数字城管 or citizen case by how it was handled, as a percent of the
    scale: the mean over a subject's cases is then the source's figure. The shipped split
    (100 / 50 / 0) makes it 50 % close-out rate (结案率) + 50 % on-time rate (按期处置率)."""
    closed_on_time: float = Field(default=100, ge=0, le=100, description="closed within the deadline")
    closed_late: float = Field(default=50, ge=0, le=100, description="closed after the deadline")
    overdue: float = Field(default=0, ge=0, le=100, description="past its deadline and still open")

    def of(self, outcome: str) -> float:
        return float(getattr(self, outcome))


def case_points(policy: "Policy", outcome: str) -> float:
    """A case's points on a 100-point scale under `policy` (ScoreInput scales them)."""
    return policy.case_points.of(outcome)


class Policy(_PolicyModel):
    """A scoring policy (考评办法) as data; stored per node, versioned."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, json_schema_extra={"examples": [{
        "policy_id": "street-scheme", "name": "街道考评办法（百分制）", "scale": 100,
        "short_period_rule": "mean_of_inspections", "long_period_rule": "mean_of_months",
        "source_weights": [],
        "composite": {"periods": ["half_year"], "routine_weight": 75, "appraisal_weight": 25},
        "grades": [{"name": "优秀", "min": 95, "advanced": True}, {"name": "先进", "min": 90, "advanced": True},
                   {"name": "合格", "min": 60}, {"name": "不合格", "min": 0}],
        "ranking": {"periods": ["month", "quarter", "half_year", "year"],
                    "tiers": {"street": {"min_inspections": 2}, "community": {"min_inspections": 2}}},
        "vetoes": {"overdue": {"overdue_open_at_least": 3}},
        "rollup": {"combine": "mean", "own_inspections_weight": 50}}]})

    policy_id: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: str = Field(min_length=1, max_length=200)
    scale: Literal[100, 1000]
    short_period_rule: Literal["mean_of_inspections"] = Field(
        default="mean_of_inspections", description="week and month: the mean of the inspection scores")
    long_period_rule: Literal["mean_of_months", "mean_of_inspections"] = Field(
        default="mean_of_months", description="quarter, half year, year: the mean of the monthly scores, "
                                              "so a month with more inspections does not weigh more")
    source_weights: list[SourceWeight] = Field(
        default_factory=list, description="weights by inspection source; empty = every inspection counts equally")
    composite: CompositeRule | None = None
    grades: list[GradeBand] = Field(min_length=1)
    ranking: RankingRule
    vetoes: VetoRule = Field(default_factory=VetoRule)
    rollup: RollupRule = Field(default_factory=RollupRule)
    case_points: CasePoints = Field(default_factory=CasePoints)
    note: str | None = Field(default=None, max_length=2000)


def _tiers_from(tier: Tier) -> list[Tier]:
    return list(TIER_ORDER[TIER_ORDER.index(tier):])


def check_policy(policy: Policy, office_tier: Tier) -> Policy:
    """Cross-field rules pydantic cannot express; raises ScoringRuleViolation naming the field."""
    if policy.source_weights:
        total = sum(w.weight for w in policy.source_weights)
        if round(total, 6) != 100:
            raise ScoringRuleViolation("source_weights", f"weights total {total:g} %; they must total 100 %")
        seen: dict[str, int] = {}
        for i, group in enumerate(policy.source_weights):
            for kind in group.kinds:
                if kind in seen:
                    raise ScoringRuleViolation(f"source_weights[{i}].kinds",
                                               f"{kind} is already weighted in source_weights[{seen[kind]}]")
                seen[kind] = i
    if policy.composite is not None:
        total = policy.composite.routine_weight + policy.composite.appraisal_weight
        if round(total, 6) != 100:
            raise ScoringRuleViolation("composite", f"routine_weight + appraisal_weight = {total:g} %; "
                                                    "they must total 100 %")
    points = policy.case_points
    if not points.closed_on_time >= points.closed_late >= points.overdue:
        # A case only ever moves up (overdue, then closed late); points must follow, or a
        # later close-out would lower the subject's figure.
        raise ScoringRuleViolation("case_points", "closed_on_time ≥ closed_late ≥ overdue is required")
    names = [g.name for g in policy.grades]
    if len(set(names)) != len(names):
        raise ScoringRuleViolation("grades", "grade names must be unique")
    mins = [g.min for g in policy.grades]
    if any(a <= b for a, b in zip(mins, mins[1:])):
        raise ScoringRuleViolation("grades", "list grades from the highest to the lowest, with falling minimums")
    if mins[-1] != 0:
        raise ScoringRuleViolation(f"grades[{len(mins) - 1}].min", "the lowest grade must start at 0")
    if mins[0] > policy.scale:
        raise ScoringRuleViolation("grades[0].min", f"above the scale of {policy.scale}")
    if all(g.advanced for g in policy.grades):
        raise ScoringRuleViolation("grades", "at least one grade must be open to a vetoed subject (advanced: false)")
    if not policy.ranking.periods:
        raise ScoringRuleViolation("ranking.periods", "no period is ranked: every tier would be left unranked")
    for tier in _tiers_from(office_tier):
        if tier not in policy.ranking.tiers:
            raise ScoringRuleViolation(f"ranking.tiers.{tier}",
                                       f"tier {tier} ({tier.label}) would be left unranked")
    for code, weight in policy.rollup.child_weights.items():
        try:
            normalize_code(code)
        except InvalidNodeCode as exc:
            raise ScoringRuleViolation(f"rollup.child_weights.{code}", str(exc)) from None
        if weight <= 0:
            raise ScoringRuleViolation(f"rollup.child_weights.{code}", "a weight must be positive")
    weights = {normalize_code(code): weight for code, weight in policy.rollup.child_weights.items()}
    if weights != policy.rollup.child_weights:  # 9-digit codes as the NBS lists write them → 12 digits
        policy = policy.model_copy(update={"rollup": policy.rollup.model_copy(update={"child_weights": weights})})
    return policy


def parse_policy(document: object, office_tier: Tier) -> Policy:
    """Validate a policy document (YAML- or JSON-loaded) for an office of `office_tier`."""
    if not isinstance(document, dict):
        raise ScoringRuleViolation("body", "a policy must be a mapping")
    try:
        policy = Policy.model_validate(document)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        path = ".".join(str(p) for p in err["loc"]) or "body"
        raise ScoringRuleViolation(path, err["msg"]) from None
    return check_policy(policy, office_tier)


def load_shipped_policy(name_or_path: str, office_tier: Tier) -> Policy:
    path = SHIPPED_POLICIES.get(name_or_path) or Path(name_or_path)
    with open(path, encoding="utf-8") as handle:
        return parse_policy(yaml.safe_load(handle), office_tier)


# --- Periods ---------------------------------------------------------------------------


def parse_period(key: str, field_name: str = "period") -> Period:
    try:
        return Period.parse(key)
    except InvalidPeriod as exc:
        raise ScoringRuleViolation(field_name, str(exc)) from None


def period_closed(period: Period, now: datetime) -> bool:
    """Whether `period` has ended by `now` (its last day over, China Standard Time)."""
    return period.instants()[1] <= now


def next_period(period: Period) -> Period:
    return Period.containing(period.kind, period.bounds()[1])


def periods_of(moment: datetime) -> list[Period]:
    """The week, month, quarter, half year and year a moment falls in (CST calendar)."""
    return [Period.containing(kind, moment) for kind in KIND_ORDER]


def covering_periods(period: Period) -> list[Period]:
    """The period itself and every longer period containing its first day."""
    start = period.bounds()[0]
    return [period] + [Period.containing(kind, start) for kind, order in KIND_ORDER.items()
                       if order > KIND_ORDER[period.kind]]


def applies_to(source: Period, target: Period) -> bool:
    """A veto (or ledger figure) for `source` counts in `target` if target is at least as long and contains it."""
    if KIND_ORDER[target.kind] < KIND_ORDER[source.kind]:
        return False
    start, end = target.bounds()
    return start <= source.bounds()[0] < end


# --- Inputs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreInput:
    """One submitted inspection of a subject."""
    inspection_id: str
    kind: str
    score: float
    scale: int
    inspected_at: datetime

    def on_scale(self, scale: int) -> float:
        return self.score * scale / self.scale

    @property
    def month(self) -> str:
        return Period.containing(PeriodKind.month, self.inspected_at).key


REPORT_SOURCE = "report:"  # ChildInput.source prefix of a child stack's own report (report:<node>)


@dataclass(frozen=True)
class ChildInput:
    """A child unit's score for the same period (computed in this stack or received from its own)."""
    node: str
    name: str
    score: float | None
    scale: int
    inputs: int
    source: str = "stack"


@dataclass(frozen=True)
class VetoInput:
    reason: str  # criticism | media_exposure | overdue
    period: str
    detail: str | None = None
    source: str = "api"  # api | ledger
    veto_id: str | None = None  # an entered veto's id (api)
    revoked: bool = False  # revoked (appeal upheld, notice withdrawn): kept on record, no longer counts


@dataclass(frozen=True)
class LedgerInput:
    period: str  # month key
    overdue_open: int
    on_time_rate: float | None


@dataclass(frozen=True)
class VectorInput:
    """An area's latest vector density verdict (pass | fail | incomplete) for a month."""
    period: str
    verdict: str
    revision: int = 1


@dataclass(frozen=True)
class AppraisalInput:
    score: float
    appraised_by: str | None = None
    note: str | None = None


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value + 0.0, DECIMALS)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --- Scores -----------------------------------------------------------------------------


@dataclass
class InspectionMean:
    score: float | None
    counted: int
    groups: list[dict] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)


def weighted_kinds(policy: Policy) -> set[str]:
    return {str(k) for g in policy.source_weights for k in g.kinds}


def policy_inputs(inputs: Sequence[ScoreInput], policy: Policy) -> list[ScoreInput]:
    """The inputs a policy looks at: every inspection, and an indicator's input (e.g.
    `satisfaction_survey`) only when the policy's source weights name its kind."""
    named = weighted_kinds(policy)
    return [i for i in inputs if i.kind not in INDICATOR_KINDS or i.kind in named]


def inspection_mean(inputs: Sequence[ScoreInput], policy: Policy) -> InspectionMean:
    """Mean of inspection scores on the policy scale, weighted by source when the policy says so.

    With source weights, each source's mean counts with its weight; a source without any
    inspection in the period drops out and the others' weights are scaled up to 100 %.
    Inspections of a kind no source lists do not count; an indicator's input counts only in a
    source that names its kind.
    """
    inputs = policy_inputs(inputs, policy)
    if not policy.source_weights:
        values = [i.on_scale(policy.scale) for i in inputs]
        return InspectionMean(mean(values), len(values))
    groups, excluded, total_weight, weighted, counted = [], [], 0.0, 0.0, 0
    for group in policy.source_weights:
        kinds = {str(k) for k in group.kinds}
        values = [i.on_scale(policy.scale) for i in inputs if i.kind in kinds]
        group_mean = mean(values)
        groups.append({"name": group.name, "kinds": sorted(kinds), "weight": group.weight,
                       "inspections": len(values), "mean": rounded(group_mean)})
        if group_mean is not None:
            total_weight += group.weight
            weighted += group.weight * group_mean
            counted += len(values)
    listed = {str(k) for g in policy.source_weights for k in g.kinds}
    excluded = [i.inspection_id for i in inputs if i.kind not in listed]
    for g in groups:
        g["effective_weight"] = rounded(g["weight"] * 100 / total_weight) if g["mean"] is not None else 0
    return InspectionMean(weighted / total_weight if total_weight else None, counted, groups, excluded)


@dataclass
class RoutineScore:
    score: float | None
    counted: int
    rule: str
    months: list[dict] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)


def routine_score(inputs: Sequence[ScoreInput], period: Period, policy: Policy) -> RoutineScore:
    """A subject's score from its own inspections in `period` (inputs already limited to it)."""
    if period.kind in SHORT_PERIODS or policy.long_period_rule == "mean_of_inspections":
        m = inspection_mean(inputs, policy)
        rule = policy.short_period_rule if period.kind in SHORT_PERIODS else policy.long_period_rule
        return RoutineScore(m.score, m.counted, rule, groups=m.groups, excluded=m.excluded)
    months, values, counted, excluded = [], [], 0, []
    by_month: dict[str, list[ScoreInput]] = {}
    for i in inputs:  # once each: a year's 52 inputs were dated 12 times over (issue 11)
        by_month.setdefault(i.month, []).append(i)
    for month in period.months():
        month_inputs = by_month.get(month.key)
        if not month_inputs:
            continue
        m = inspection_mean(month_inputs, policy)
        excluded += m.excluded
        months.append({"month": month.key, "score": rounded(m.score), "inspections": m.counted})
        if m.score is not None:
            values.append(m.score)
            counted += m.counted
    return RoutineScore(mean(values), counted, "mean_of_months", months=months, excluded=excluded)


def combine_children(children: Sequence[ChildInput], rule: RollupRule, scale: int) -> tuple[float | None, list[dict]]:
    """A parent's score from its children's (mean, weighted by per-child weight, or minimum)."""
    scored = [c for c in children if c.score is not None]
    detail = [{"node": c.node, "name": c.name, "score": rounded(c.score * scale / c.scale) if c.score is not None else None,
               "weight": rule.child_weights.get(c.node, 1.0) if rule.combine == "weighted" else None,
               "inputs": c.inputs, "source": c.source} for c in children]
    if not scored:
        return None, detail
    values = [c.score * scale / c.scale for c in scored]
    if rule.combine == "minimum":
        return min(values), detail
    if rule.combine == "weighted":
        weights = [rule.child_weights.get(c.node, 1.0) for c in scored]
        return sum(w * v for w, v in zip(weights, values)) / sum(weights), detail
    return mean(values), detail


def blend(own: float | None, children: float | None, own_weight: float) -> float | None:
    """Own inspections and children together; either alone counts fully."""
    if own is None:
        return children
    if children is None:
        return own
    return (own * own_weight + children * (100 - own_weight)) / 100


def composite_score(routine: float | None, appraisal: float | None, rule: CompositeRule) -> float | None:
    """半年综合 = routine × routine_weight + appraisal × appraisal_weight."""
    if routine is None:
        return None
    if appraisal is None:
        if rule.missing_appraisal == "routine_only":
            return routine
        appraisal = 0.0
    return (routine * rule.routine_weight + appraisal * rule.appraisal_weight) / 100


def veto_reasons(period: Period, vetoes: Sequence[VetoInput], ledger: Sequence[LedgerInput],
                 policy: Policy, vectors: Sequence[VectorInput] = ()) -> list[VetoInput]:
    """The vetoes (一票否决) that apply to `period`: entered ones not revoked, the configured
    overdue condition, and the configured vector density condition (the latest verdict of a
    month inside `period`)."""
    out = [v for v in vetoes if not v.revoked and applies_to(Period.parse(v.period), period)]
    condition = policy.vetoes.overdue
    if condition is not None:
        for fig in sorted(ledger, key=lambda f: f.period):
            if not applies_to(Period.parse(fig.period), period):
                continue
            why = []
            if condition.overdue_open_at_least is not None and fig.overdue_open >= condition.overdue_open_at_least:
                why.append(f"{fig.overdue_open} overdue tasks open (limit {condition.overdue_open_at_least})")
            if (condition.on_time_rate_below is not None and fig.on_time_rate is not None
                    and fig.on_time_rate < condition.on_time_rate_below):
                why.append(f"on-time rate {fig.on_time_rate:.0%} below {condition.on_time_rate_below:.0%}")
            if why:
                out.append(VetoInput("overdue", fig.period, f"{fig.period}: " + "; ".join(why), "ledger"))
    vector = policy.vetoes.vector_density
    if vector is not None:
        for fig in sorted(vectors, key=lambda f: f.period):
            if fig.verdict in vector.verdicts and applies_to(Period.parse(fig.period), period):
                out.append(VetoInput("vector_density", fig.period,
                                     f"{VECTOR_VETO_TEXT.get(fig.verdict, fig.verdict)}（{fig.period}）", "indicators"))
    return out


def veto_text(veto: VetoInput) -> str:
    label = VETO_LABELS.get(veto.reason, veto.reason)
    return f"{label}（{veto.reason}）" + (f"：{veto.detail}" if veto.detail else "")


def grade_for(score: float | None, vetoed: bool, grades: Sequence[GradeBand]) -> tuple[str | None, str | None]:
    """(grade, the grade the score would have earned if a veto capped it, else None)."""
    if score is None:
        return None, None
    value = rounded(score)
    earned = next((g for g in grades if value >= g.min), grades[-1])
    if not vetoed or not earned.advanced:
        return earned.name, None
    capped = next(g for g in grades if value >= g.min and not g.advanced) if any(
        value >= g.min and not g.advanced for g in grades) else grades[-1]
    return capped.name, earned.name


@dataclass
class SubjectScore:
    score: float | None
    routine: float | None
    own: float | None
    children: float | None
    appraisal: float | None
    inputs: int
    vetoes: list[VetoInput]
    grade: str | None
    explain: dict

    @property
    def vetoed(self) -> bool:
        return bool(self.vetoes)

    @property
    def veto_reasons(self) -> list[str]:
        return [veto_text(v) for v in self.vetoes]


def subject_score(period: Period, policy: Policy, inputs: Sequence[ScoreInput],
                  children: Sequence[ChildInput] = (), appraisal: AppraisalInput | None = None,
                  vetoes: Sequence[VetoInput] = (), ledger: Sequence[LedgerInput] = (),
                  vectors: Sequence[VectorInput] = ()) -> SubjectScore:
    """One subject's figure for one period, with everything needed to explain it."""
    inputs = policy_inputs(inputs, policy)
    own = routine_score(inputs, period, policy)
    child_score, child_detail = combine_children(children, policy.rollup, policy.scale)
    routine = blend(own.score, child_score, policy.rollup.own_inspections_weight)
    composite = policy.composite if policy.composite and period.kind in policy.composite.periods else None
    appraisal_score = appraisal.score if (composite and appraisal) else None
    score = composite_score(routine, appraisal_score, composite) if composite else routine
    applied = veto_reasons(period, vetoes, ledger, policy, vectors)
    grade, capped_from = grade_for(score, bool(applied), policy.grades)
    # A child scored here counts once; a child stack's own report stands for the
    # inspections behind it, so a well-inspected district is not "a sample of one".
    inputs_count = own.counted + sum((c.inputs if c.source.startswith(REPORT_SOURCE) else 1)
                                     for c in children if c.score is not None)
    explain = {
        "period": period.key, "period_kind": str(period.kind), "scale": policy.scale,
        "rule": own.rule,
        "inspections": [{"inspection_id": i.inspection_id, "kind": i.kind, "score": i.score, "scale": i.scale,
                         "on_policy_scale": rounded(i.on_scale(policy.scale)),
                         "inspected_at": i.inspected_at.isoformat(), "month": i.month,
                         "counted": i.inspection_id not in own.excluded}
                        for i in sorted(inputs, key=lambda i: (i.inspected_at, i.inspection_id))],
        "source_weights": own.groups,
        "months": own.months,
        "own_score": rounded(own.score),
        "children": child_detail,
        "children_combine": policy.rollup.combine if children else None,
        "children_score": rounded(child_score),
        "own_inspections_weight": (policy.rollup.own_inspections_weight
                                   if own.score is not None and child_score is not None else None),
        "routine_score": rounded(routine),
        "composite": ({"routine_weight": composite.routine_weight, "appraisal_weight": composite.appraisal_weight,
                       "appraisal": (None if appraisal is None else
                                     {"score": appraisal.score, "appraised_by": appraisal.appraised_by,
                                      "note": appraisal.note}),
                       "missing_appraisal": composite.missing_appraisal if appraisal is None else None}
                      if composite else None),
        "vetoes": [{"reason": v.reason, "label": VETO_LABELS.get(v.reason, v.reason), "period": v.period,
                    "detail": v.detail, "source": v.source, **({"veto_id": v.veto_id} if v.veto_id else {})}
                   for v in applied],
        "grade": grade, "grade_before_veto": capped_from,
        "score": rounded(score),
    }
    return SubjectScore(rounded(score), rounded(routine), rounded(own.score), rounded(child_score),
                        appraisal_score, inputs_count, applied, grade, explain)


# --- Ranking ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankEntry:
    subject_id: str
    name: str
    score: float | None
    inputs: int
    min_inputs: int | None  # None: this period is not ranked under the subject's policy


@dataclass(frozen=True)
class RankResult:
    subject_id: str
    rank: int | None
    ranked: bool
    peers: int
    movement: int | None
    position: int  # display order: ranked first by rank, then the rest


def rank_peers(entries: Sequence[RankEntry], previous_ranks: dict[str, int] | None = None) -> list[RankResult]:
    """Rank peers by score, highest first.

    Ties share a rank (competition ranking: 1, 1, 3) and are listed by name, then id, so
    the table is the same however often it is computed. Subjects below the minimum sample
    (or without a score) are not ranked and are listed apart. Movement is the number of
    positions gained since the previous period's rank (None without one).
    """
    previous_ranks = previous_ranks or {}
    eligible = [e for e in entries if e.score is not None and e.min_inputs is not None and e.inputs >= e.min_inputs]
    rest = [e for e in entries if e not in eligible]
    eligible.sort(key=lambda e: (-rounded(e.score), e.name, e.subject_id))
    rest.sort(key=lambda e: (e.score is None, -(rounded(e.score) or 0), e.name, e.subject_id))
    out, rank, last = [], 0, None
    for position, entry in enumerate(eligible, start=1):
        value = rounded(entry.score)
        if value != last:
            rank, last = position, value
        prev = previous_ranks.get(entry.subject_id)
        out.append(RankResult(entry.subject_id, rank, True, len(eligible),
                              None if prev is None else prev - rank, position))
    for offset, entry in enumerate(rest, start=len(eligible) + 1):
        out.append(RankResult(entry.subject_id, None, False, len(eligible), None, offset))
    return out
