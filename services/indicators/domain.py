"""The measured indicators' rules (no nameko, no database): vector density (病媒生物密度, 四害)
against control levels, and residents' satisfaction (群众满意率) with its confidence interval.

Vector density. The disease-control centre reports one figure per area, species, method and
sampling date. Per area and period the figures of one method are averaged (weighted by the
sample size where given); a species' ratio is its worst method's figure divided by that
method's control level. The provincial rule ("鼠、蚊、蝇、蟑螂有三项达到全国爱卫会规定的标准,
另一项不超过国家标准的3倍"): the area passes when at least three species are at or below
their level and none is above three times it.

Satisfaction. An answer counts as satisfied when its value is one the questionnaire item
names as satisfied; answers the item excludes (不了解) count in neither numerator nor
denominator. Rate = satisfied / valid answers, with the Wilson score interval (95 %).
The interval treats each valid answer as one trial: for one item that is one per respondent;
for an area's overall rate over several items it is narrower than a per-respondent analysis
would give (the respondents behind every figure are reported beside it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Iterable, Sequence


class Species(StrEnum):
    rat = "rat"                # 鼠
    mosquito = "mosquito"      # 蚊
    fly = "fly"                # 蝇
    cockroach = "cockroach"    # 蟑螂


SPECIES_LABELS = {Species.rat: "鼠", Species.mosquito: "蚊", Species.fly: "蝇", Species.cockroach: "蟑螂"}


class Method(StrEnum):
    powder = "powder"                # 粉迹法：鼠迹阳性率 %
    trap = "trap"                    # 鼠夹法（夹夜法）：捕获率 %
    breteau = "breteau"              # 布雷图指数：每百户阳性容器数
    container = "container"          # 容器指数：阳性容器 %
    adult_landing = "adult_landing"  # 成蚊人诱停落指数：只/(人·时)
    fly_rooms = "fly_rooms"          # 室内有蝇房间阳性率 %
    cockroach_rooms = "cockroach_rooms"  # 蟑螂成若虫侵害率（房间）%


@dataclass(frozen=True)
class MethodSpec:
    species: Species
    label: str
    unit: str
    maximum: float  # above this a figure cannot be real (a percentage above 100, a typo)
    default_level: float


# Default control levels (控制水平). ../shared/domain.md names the rule but not the figures,
# and these were not checked against the text of GB/T 27770–27773 (控制水平 C 级): they are the
# figures the campaign's vector requirements are commonly quoted with, shipped as a starting
# point. Every office sets the ones its disease-control centre uses
# (PUT /vector/control-levels/<node>); a node's levels apply to its subtree.
METHODS: dict[Method, MethodSpec] = {
    Method.powder: MethodSpec(Species.rat, "粉迹法鼠迹阳性率", "%", 100.0, 3.0),
    Method.trap: MethodSpec(Species.rat, "鼠夹法捕获率", "%", 100.0, 1.0),
    Method.breteau: MethodSpec(Species.mosquito, "布雷图指数", "个/百户", 1000.0, 5.0),
    Method.container: MethodSpec(Species.mosquito, "容器指数", "%", 100.0, 3.0),
    Method.adult_landing: MethodSpec(Species.mosquito, "成蚊停落指数", "只/(人·时)", 1000.0, 1.5),
    Method.fly_rooms: MethodSpec(Species.fly, "室内有蝇房间阳性率", "%", 100.0, 6.0),
    Method.cockroach_rooms: MethodSpec(Species.cockroach, "蟑螂侵害率", "%", 100.0, 3.0),
}

REQUIRED_AT_LEVEL = 3
"""Species that must be at or below their control level."""
DEFAULT_TOLERANCE = 3.0
"""How many times its level the remaining species may reach."""


class Verdict(StrEnum):
    passed = "pass"              # 达标
    failed = "fail"              # 未达标
    incomplete = "incomplete"    # 数据不全


VERDICT_LABELS = {Verdict.passed: "达标", Verdict.failed: "未达标", Verdict.incomplete: "数据不全"}


class DensityProblem(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def check_figure(method: Method, species: Species, value: float, field: str = "value") -> None:
    """Refuse figures that cannot be: a method of another species, negative, NaN, impossible."""
    spec = METHODS[method]
    if spec.species != species:
        raise DensityProblem("method", f"{method} measures {spec.species}, not {species} "
                                       f"（{spec.label}不是{SPECIES_LABELS[species]}的监测方法）")
    if not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise DensityProblem(field, "must be a finite number (密度须为有限数值)")
    if value < 0:
        raise DensityProblem(field, "a density cannot be negative (密度不能为负)")
    if value > spec.maximum:
        raise DensityProblem(field, f"{value:g} {spec.unit} exceeds the largest possible figure "
                                    f"{spec.maximum:g} for {spec.label}（超出可能范围）")


def check_level(method: Method, level: float) -> None:
    spec = METHODS[method]
    if math.isnan(level) or math.isinf(level) or level <= 0:
        raise DensityProblem("level", "a control level must be a positive number (控制水平须大于0)")
    if level > spec.maximum:
        raise DensityProblem("level", f"{level:g} exceeds the largest possible figure {spec.maximum:g} "
                                      f"for {spec.label}")


@dataclass(frozen=True)
class Reading:
    method: Method
    value: float
    weight: float = 1.0  # the sample size (houses, rooms, traps) when the centre gives it


@dataclass
class MethodFigure:
    method: Method
    value: float
    level: float
    readings: int

    @property
    def ratio(self) -> float:
        return self.value / self.level


@dataclass
class SpeciesFigure:
    species: Species
    methods: list[MethodFigure] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        """The worst method's figure over its level; None without readings."""
        return max((m.ratio for m in self.methods), default=None)

    @property
    def at_level(self) -> bool:
        return self.ratio is not None and self.ratio <= 1.0


@dataclass
class VectorVerdict:
    verdict: Verdict
    species: list[SpeciesFigure]
    explanation: str


def weighted_mean(readings: Iterable[Reading]) -> float:
    readings = list(readings)
    total = sum(r.weight for r in readings)
    return sum(r.value * r.weight for r in readings) / total


def _times(ratio: float) -> str:
    return f"{math.floor(ratio * 100 + 0.5) / 100:.2f}"


def evaluate_vectors(readings: Iterable[Reading], levels: dict[Method, float],
                     tolerance: float = DEFAULT_TOLERANCE, required: int = REQUIRED_AT_LEVEL) -> VectorVerdict:
    """The area's verdict for a period from its readings, with the explanation (中文; English)."""
    by_method: dict[Method, list[Reading]] = {}
    for reading in readings:
        by_method.setdefault(reading.method, []).append(reading)
    figures = {s: SpeciesFigure(s) for s in Species}
    for method in Method:  # a fixed order: explanations and events do not depend on input order
        if method in by_method:
            figures[METHODS[method].species].methods.append(
                MethodFigure(method, round(weighted_mean(by_method[method]), 4), levels[method],
                             len(by_method[method])))
    species = [figures[s] for s in Species]
    at_level = [f for f in species if f.at_level]
    above = [f for f in species if f.ratio is not None and f.ratio > 1.0]
    far_above = [f for f in above if f.ratio > tolerance]
    missing = [f for f in species if f.ratio is None]

    def names(items):
        return "、".join(SPECIES_LABELS[f.species] for f in items)

    def english(items):
        return ", ".join(str(f.species) for f in items)

    def detail(items):
        return "，".join(f"{SPECIES_LABELS[f.species]}为控制水平的 {_times(f.ratio)} 倍" for f in items)

    def detail_en(items):
        return ", ".join(f"{f.species} at {_times(f.ratio)}×" for f in items)

    allowed_above = len(Species) - required
    if far_above:
        verdict = Verdict.failed
        text = (f"{detail(far_above)}，超过 {tolerance:g} 倍：未达标; "
                f"{detail_en(far_above)}, beyond {tolerance:g}× the control level: fail")
    elif len(above) > allowed_above:
        verdict = Verdict.failed
        text = (f"{names(above)}超过控制水平（{detail(above)}），仅 {len(at_level)} 项达标，"
                f"须 {required} 项达标：未达标; {english(above)} above the control level "
                f"({detail_en(above)}): {len(at_level)} of {len(Species)} at the level, {required} required: fail")
    elif missing:
        verdict = Verdict.incomplete
        text = (f"缺少{names(missing)}的监测数据：无法判定; no readings for {english(missing)}: "
                "cannot be judged yet")
    elif above:
        verdict = Verdict.passed
        text = (f"{names(at_level)}达到控制水平，{detail(above)}（不超过 {tolerance:g} 倍）：达标; "
                f"{english(at_level)} at the control level, {detail_en(above)} (within {tolerance:g}×): pass")
    else:
        verdict = Verdict.passed
        text = "鼠、蚊、蝇、蟑螂均达到控制水平：达标; all four species at the control level: pass"
    return VectorVerdict(verdict, species, text)


def slipped(previous: Verdict | str | None, current: Verdict | str) -> bool:
    """An area slips when it was passing and now fails (an incomplete month is no slip)."""
    return previous == Verdict.passed and current == Verdict.failed


# --- satisfaction (群众满意率) ---------------------------------------------------------------

SATISFACTION_THRESHOLD = 0.90
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def wilson_interval(satisfied: int, n: int, z: float = Z_95) -> Interval | None:
    """The Wilson score interval for a proportion; None when nothing was answered."""
    if n <= 0:
        return None
    if not 0 <= satisfied <= n:
        raise ValueError(f"satisfied {satisfied} must lie within 0..{n}")
    p = satisfied / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Item:
    code: str
    text: str
    satisfied: frozenset[str]
    excluded: frozenset[str] = frozenset()
    values: frozenset[str] = frozenset()
    place_type: str | None = None
    content_area: str | None = None
    finding_below: float | None = None


def answer_problem(item: Item, value: str) -> str | None:
    """Why `value` is no answer to `item`, or None."""
    if value not in item.values:
        return (f"{value!r} is not on the item's answer scale ({', '.join(sorted(item.values))})"
                "（答案不在量表内）")
    return None


@dataclass
class Tally:
    satisfied: int = 0
    answers: int = 0
    respondents: set = field(default_factory=set)

    def add(self, respondent: str, is_satisfied: bool) -> None:
        self.answers += 1
        self.satisfied += int(is_satisfied)
        self.respondents.add(respondent)

    @property
    def rate(self) -> float | None:
        return self.satisfied / self.answers if self.answers else None

    @property
    def interval(self) -> Interval | None:
        return wilson_interval(self.satisfied, self.answers)


@dataclass
class AreaSatisfaction:
    overall: Tally
    by_place_type: dict[str, Tally]
    by_content_area: dict[str, Tally]
    by_item: dict[str, Tally]


def tally_area(items: dict[str, Item], responses: Iterable[tuple[str, dict[str, str]]]) -> AreaSatisfaction:
    """Count one area's responses: (respondent id, {item code: value})."""
    result = AreaSatisfaction(Tally(), {}, {}, {})
    for respondent, answers in responses:
        for code, value in answers.items():
            item = items.get(code)
            if item is None or value in item.excluded:
                continue
            ok = value in item.satisfied
            result.overall.add(respondent, ok)
            result.by_item.setdefault(code, Tally()).add(respondent, ok)
            if item.place_type:
                result.by_place_type.setdefault(item.place_type, Tally()).add(respondent, ok)
            if item.content_area:
                result.by_content_area.setdefault(item.content_area, Tally()).add(respondent, ok)
    return result


def flagged(rate: float | None, threshold: float = SATISFACTION_THRESHOLD) -> bool:
    """Below the threshold (an area with no valid answers is not judged)."""
    return rate is not None and rate < threshold


def low_items(items: dict[str, Item], area: AreaSatisfaction) -> list[tuple[Item, Tally]]:
    """Items whose rate fell below the item's own finding threshold (the questionnaire's policy
    says which items turn into rectification findings, and from which rate)."""
    out = []
    for code, tally in sorted(area.by_item.items()):
        item = items[code]
        if item.finding_below is not None and tally.rate is not None and tally.rate < item.finding_below:
            out.append((item, tally))
    return out


def draw_sample(frame: Sequence, size: int, seed: int, area: str) -> list:
    """A simple random sample without replacement, reproducible from (seed, area)."""
    import random
    if size > len(frame):
        raise ValueError(f"cannot draw {size} respondents from a frame of {len(frame)}")
    rng = random.Random(f"{seed}:{area}")
    return rng.sample(frame, size)
