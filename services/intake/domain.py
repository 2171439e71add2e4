"""Rules of case intake (数字城管 cases and residents' reports), without nameko or a database.

- the category catalogue (案件类别) with each category's time limit (处置时限);
- locating a case to a division (by the place it names, a division code, or the names of
  divisions in its address);
- duplicate reports of one problem (same category, same place, within a short span) are
  merged into the first case;
- bounds for anonymous submissions (per client address, identical content);
- what the reporter sees: Open311's open/closed and a status note in Chinese.
"""
from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Iterable

import yaml

from services.contracts.errors import RuleViolation
from services.contracts.nodes import is_within

DEFAULT_CATEGORIES = Path(__file__).parent / "categories_data" / "szcg.yaml"
DEFAULT_DUPLICATE_WINDOW = timedelta(hours=24)
DEFAULT_DUPLICATE_RADIUS_M = 50.0
DEFAULT_PUBLIC_MAX_PER_WINDOW = 5
DEFAULT_PUBLIC_WINDOW = timedelta(hours=1)
PUBLIC_CHANNEL = "群众"


class IntakeRuleViolation(RuleViolation):
    pass


class CaseStatus(StrEnum):
    submitted = "submitted"          # 待受理: a resident's report the office has not accepted yet
    routed = "routed"                # 已派遣: handed to the ledger, task not yet confirmed
    open = "open"                    # 待处置
    in_progress = "in_progress"      # 处置中
    fix_submitted = "fix_submitted"  # 已处置，待核查
    escalated = "escalated"          # 已上报协调
    closed = "closed"                # 已结案 (销号)
    rejected = "rejected"            # 不予受理
    merged = "merged"                # 已合并 (a duplicate of an earlier case)


CLOSED_STATUSES = frozenset({CaseStatus.closed, CaseStatus.rejected})
STATUS_NOTES = {
    CaseStatus.submitted: "已收到，待受理",
    CaseStatus.routed: "已受理，正在派遣",
    CaseStatus.open: "已派遣至{responsible}，限{deadline}前处置",
    CaseStatus.in_progress: "{responsible}正在处置，限{deadline}前完成",
    CaseStatus.fix_submitted: "{responsible}已处置，待核查",
    CaseStatus.escalated: "已上报上级协调处理",
    CaseStatus.closed: "已核查结案",
    CaseStatus.rejected: "不予受理：{reason}",
}


# --- the category catalogue ----------------------------------------------------------


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    group_code: str
    group_name: str
    hours: float
    severity: str
    description: str = ""

    def deadline_from(self, reported_at: datetime) -> datetime:
        return reported_at + timedelta(hours=self.hours)


@dataclass(frozen=True)
class Catalogue:
    catalogue_id: str
    version: str
    categories: tuple[Category, ...]

    def get(self, code: str, field: str = "service_code") -> Category:
        for category in self.categories:
            if category.code == code:
                return category
        raise IntakeRuleViolation(field, f"未知的案件类别 {code}; unknown service_code {code!r} "
                                         f"(GET /open311/v2/services.json lists them)")


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """The categories from `path` (an office's own file), else the shipped defaults."""
    data = yaml.safe_load(Path(path or DEFAULT_CATEGORIES).read_text(encoding="utf-8"))
    categories = []
    seen = set()
    for group in data["groups"]:
        for item in group["categories"]:
            code = str(item["code"])
            if code in seen:
                raise ValueError(f"category {code} is listed twice")
            seen.add(code)
            hours = float(item["hours"])
            if hours <= 0:
                raise ValueError(f"category {code}: the time limit must be positive hours")
            if item.get("severity", "minor") not in ("minor", "major", "critical"):
                raise ValueError(f"category {code}: unknown severity {item.get('severity')!r}")
            categories.append(Category(code=code, name=str(item["name"]), group_code=str(group["code"]),
                                       group_name=str(group["name"]), hours=hours,
                                       severity=item.get("severity", "minor"),
                                       description=str(item.get("description", ""))))
    return Catalogue(str(data["catalogue_id"]), str(data["version"]), tuple(categories))


# --- locating a case --------------------------------------------------------------------


def node_from_address(address: str, divisions: Iterable[tuple[str, str]], home: str) -> str | None:
    """The most specific division within `home`'s subtree whose name the address contains
    ("浉河区金牛山街道周家山社区…" → the community's code), or None. Divisions are (code,
    name) pairs of the stack's division tree; a name shorter than two characters never matches."""
    best: tuple[int, str] | None = None
    text = _normalized(address)
    for code, name in divisions:
        if not is_within(code, home) or not any(_normalized(alias) in text for alias in division_aliases(name)):
            continue
        depth = len(code.rstrip("0"))
        if best is None or depth > best[0]:
            best = (depth, code)
    return best[1] if best else None


# The statistical names end in the committee's title; addresses use the community's own name.
_COMMITTEE_SUFFIXES = ("居民委员会", "村民委员会", "居委会", "村委会")


def division_aliases(name: str) -> list[str]:
    """The names an address may use for a division: "周家山社区居民委员会" → also "周家山社区"."""
    aliases = [name]
    for suffix in _COMMITTEE_SUFFIXES:
        if name.endswith(suffix):
            aliases.append(name[: -len(suffix)])
    return [a for a in aliases if len(a) >= 2]


def _normalized(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).lower()


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in metres between two (lat, lng) points."""
    lat1, lng1, lat2, lng2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lng2 - lng1) / 2) ** 2
    return 2 * 6_371_000 * math.asin(math.sqrt(h))


# --- duplicates -------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseFacts:
    """What decides whether two reports describe one problem."""
    case_id: str
    service_code: str
    node: str
    reported_at: datetime
    place_id: str | None = None
    address: str | None = None
    gps: tuple[float, float] | None = None
    status: str = CaseStatus.open


def same_problem(new: CaseFacts, earlier: CaseFacts, window: timedelta = DEFAULT_DUPLICATE_WINDOW,
                 radius_m: float = DEFAULT_DUPLICATE_RADIUS_M) -> bool:
    """Same category at the same place within `window` of the earlier report: the same
    place id, or in the same division either within `radius_m` or at the same address."""
    if earlier.status in (CaseStatus.merged, CaseStatus.rejected) or new.service_code != earlier.service_code:
        return False
    if not (earlier.reported_at <= new.reported_at <= earlier.reported_at + window):
        return False
    if new.place_id and earlier.place_id:
        return new.place_id == earlier.place_id
    if new.node != earlier.node:
        return False
    if new.gps and earlier.gps:
        return distance_m(new.gps, earlier.gps) <= radius_m
    if new.address and earlier.address:
        return _normalized(new.address) == _normalized(earlier.address)
    return False


def first_of_duplicates(new: CaseFacts, earlier: Iterable[CaseFacts], window: timedelta = DEFAULT_DUPLICATE_WINDOW,
                        radius_m: float = DEFAULT_DUPLICATE_RADIUS_M) -> CaseFacts | None:
    """The earliest case `new` repeats, which it is merged into (never a merged one)."""
    matches = [e for e in earlier if e.case_id != new.case_id and same_problem(new, e, window, radius_m)]
    return min(matches, key=lambda e: (e.reported_at, e.case_id)) if matches else None


# --- bounds on anonymous submissions -----------------------------------------------------


def content_digest(service_code: str, description: str) -> str:
    """Identical content whatever its spacing, width or case: the spam bound's key."""
    return hashlib.sha256(f"{service_code}\n{_normalized(description)}".encode("utf-8")).hexdigest()


# --- what the reporter sees --------------------------------------------------------------


def open311_status(status: str) -> str:
    return "closed" if status in CLOSED_STATUSES else "open"


def status_note(status: str, responsible: str | None = None, deadline: datetime | None = None,
                reason: str | None = None) -> str:
    from services.contracts.periods import CST
    template = STATUS_NOTES.get(CaseStatus(status), "")
    local = deadline.astimezone(CST).strftime("%Y-%m-%d %H:%M") if deadline else ""
    return template.format(responsible=responsible or "责任单位", deadline=local, reason=reason or "")


# --- how a case counts for its subject (the city scheme's 数字城管 source) ------------------

# Points of a case on a 100-point scale: the mean over a subject's cases is then
# 50 % × close-out rate (结案率) + 50 % × on-time rate (按期处置率).
HANDLING_SCALE = 100
HANDLING_POINTS = {"overdue": 0.0, "closed_late": 50.0, "closed_on_time": 100.0}


def handling_outcome(closed: bool, on_time: bool | None = None) -> str:
    if not closed:
        return "overdue"
    return "closed_on_time" if on_time else "closed_late"


def improves(recorded: str | None, outcome: str) -> bool:
    """Whether `outcome` should replace what was published for the case: only with more points
    (overdue, then closed late), so late or repeated task events change nothing."""
    return recorded is None or HANDLING_POINTS[outcome] > HANDLING_POINTS[recorded]


TASK_STATUS_TO_CASE = {"open": CaseStatus.open, "in_progress": CaseStatus.in_progress,
                       "fix_submitted": CaseStatus.fix_submitted, "escalated": CaseStatus.escalated,
                       "closed": CaseStatus.closed}


def case_status_of_task(task_status: str) -> CaseStatus:
    return TASK_STATUS_TO_CASE[task_status]
