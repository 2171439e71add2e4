"""Pure inspection rules: validating item results against a checklist and scoring them.

No nameko or database imports: unit-tested directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Protocol, Sequence

from services.contracts.bounds import not_in_future
from services.contracts.errors import RuleViolation
from services.contracts.identity import INSPECTOR, Principal
from services.contracts.checklists import Checklist, ChecklistCategory, ChecklistItem, ChecklistLookupError
from services.contracts.nodes import subtree_prefix

DEFAULT_SCALE = 100
# Phones' clocks drift and offline captures carry the phone's time: up to a day ahead is a
# clock, more is a mistake (or a lie).
FUTURE_TOLERANCE_HOURS = 24

UNANNOUNCED = "unannounced"
# What the subject side of an unannounced inspection (暗访) never learns: who inspected it,
# the office's private note, and who recorded, submitted and released it.
REDACTED_FIELDS = ("inspectors", "note", "recorded_by", "submitted_by", "released_by")


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
    if not not_in_future(inspected_at, now, FUTURE_TOLERANCE_HOURS):
        raise InspectionRuleViolation(
            field_name, f"{inspected_at.isoformat()} lies more than {FUTURE_TOLERANCE_HOURS} hours in the "
                        f"future (检查时间不能晚于当前时间一天以上)")


# --- who sees what --------------------------------------------------------------------


def subtree_prefixes(nodes: Iterable[str]) -> list[str]:
    return sorted({subtree_prefix(n) for n in nodes})


def on_inspecting_side(caller: Principal, inspecting_node: str) -> bool:
    return caller.on_inspecting_side(inspecting_node)


def may_see_inspection(caller: Principal, *, kind: str, subject_node: str, inspecting_node: str,
                       released: bool, draft: bool = False) -> bool:
    """An inspection is seen by whoever sees its subject's node, except an unannounced one
    (暗访), drafts included: only the inspecting side sees it until the office releases it.
    A draft of any kind is the inspecting office's work in progress, not a finding yet: the
    subject side (its rectifiers and viewers) never sees one; besides the inspecting side,
    only an inspector who may inspect the subject sees it (it may finish and submit it)."""
    if on_inspecting_side(caller, inspecting_node):
        return True
    if not caller.sees(subject_node):
        return False
    if draft and not caller.holds(INSPECTOR, subject_node):
        return False
    return kind != UNANNOUNCED or released


def redacted_for(caller: Principal, *, kind: str, inspecting_node: str) -> tuple[str, ...]:
    """The fields withheld from this caller: for an unannounced inspection, everything that
    names the inspecting office's people, for anyone not on the inspecting side."""
    if kind == UNANNOUNCED and not on_inspecting_side(caller, inspecting_node):
        return REDACTED_FIELDS
    return ()


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
