"""Pure inspection rules: validating item results against a checklist and scoring them.

No nameko or database imports: unit-tested directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, Sequence

from services.contracts.errors import RuleViolation
from services.contracts.checklists import Checklist, ChecklistCategory, ChecklistItem, ChecklistLookupError

DEFAULT_SCALE = 100
# Phones' clocks drift; an inspection a few minutes "in the future" is a clock, not a lie.
FUTURE_TOLERANCE = timedelta(minutes=5)


class InspectionRuleViolation(RuleViolation):
    """Input breaks an inspection rule; `field` names where, `reason` says why."""


class ItemResultInput(Protocol):
    item_code: str
    findings: int
    deduction: float | None
    note: str | None
    evidence: Sequence[Any]
    gps: Any
    deadline_at: datetime | None


@dataclass(frozen=True)
class ScoredItem:
    category: ChecklistCategory
    item: ChecklistItem
    findings: int
    deduction: float
    note: str | None
    evidence: tuple
    gps: Any
    deadline_at: datetime | None


@dataclass(frozen=True)
class ScoreSheet:
    scale: int
    points_available: float
    points_deducted: float
    score: float
    items: tuple[ScoredItem, ...] = field(default_factory=tuple)

    @property
    def findings(self) -> tuple[ScoredItem, ...]:
        """Items with a deduction: each becomes a rectification task."""
        return tuple(i for i in self.items if i.deduction > 0)


def check_inspected_at(inspected_at: datetime, now: datetime, field_name: str = "inspected_at") -> None:
    if inspected_at > now + FUTURE_TOLERANCE:
        raise InspectionRuleViolation(field_name, f"{inspected_at.isoformat()} is in the future")


def deduction_for(item: ChecklistItem, findings: int, requested: float | None, where: str) -> float:
    if requested is not None:
        if requested > item.max_points:
            raise InspectionRuleViolation(
                f"{where}.deduction",
                f"deduction {requested:g} exceeds the item's maximum of {item.max_points:g} points "
                f"(扣分超过该项分值上限)")
        if requested > 0 and findings == 0:
            raise InspectionRuleViolation(f"{where}.deduction", "a deduction needs at least one finding")
        return float(requested)
    # Each item is capped at its own points, so one bad item cannot eat the others' points.
    return min(findings * item.deduction_per_finding, item.max_points)


def score_results(checklist: Checklist, results: Sequence[ItemResultInput], inspected_at: datetime,
                  scale: int = DEFAULT_SCALE) -> ScoreSheet:
    """Score = scale × (points available − deductions) / points available, never below zero."""
    if scale <= 0:
        raise InspectionRuleViolation("scale", "must be positive")
    scored = []
    for index, result in enumerate(results):
        where = f"results[{index}]"
        try:
            item = checklist.item(result.item_code)
        except ChecklistLookupError as exc:
            raise InspectionRuleViolation(f"{where}.item_code", str(exc)) from None
        category = next(cat for cat, it in checklist.items() if it.code == item.code)
        deduction = deduction_for(item, result.findings, result.deduction, where)
        if result.deadline_at is not None and result.deadline_at <= inspected_at:
            raise InspectionRuleViolation(f"{where}.deadline_at", "the deadline must be after the inspection time")
        scored.append(ScoredItem(category, item, result.findings, deduction, result.note,
                                 tuple(result.evidence), result.gps, result.deadline_at))
    available = checklist.max_points
    deducted = round(sum(s.deduction for s in scored), 4)
    score = max(0.0, round(scale * (available - deducted) / available, 2))
    return ScoreSheet(scale, available, deducted, score, tuple(scored))
