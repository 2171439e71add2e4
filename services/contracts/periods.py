"""Scoring periods and their keys: 2026-W47, 2026-11, 2026-Q4, 2026-H2, 2026.

Periods are calendar periods in China Standard Time (UTC+8), the offices' own calendar:
an inspection at 01:00 on 1 December Beijing time (17:00 on 30 November UTC) is December's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from enum import StrEnum

CST = timezone(timedelta(hours=8), "CST")


class PeriodKind(StrEnum):
    week = "week"
    month = "month"
    quarter = "quarter"
    half_year = "half_year"
    year = "year"


class InvalidPeriod(ValueError):
    pass


# The years a campaign record can belong to. The sanitary-city campaign long predates 2000's
# records only on paper; beyond 2099 is a typo. Keeping periods and instants inside these
# bounds also keeps every date computation (previous period, next month) inside Python's.
FIRST_YEAR = 2000
LAST_YEAR = 2099
EARLIEST = datetime(FIRST_YEAR, 1, 1, tzinfo=CST)
LATEST = datetime(LAST_YEAR + 1, 1, 1, tzinfo=CST)


def check_campaign_instant(moment: datetime) -> datetime:
    """`moment` if it lies within the campaign years, else ValueError (for pydantic fields)."""
    if moment.tzinfo is None:
        raise ValueError("needs a time zone (e.g. +08:00)")
    if not EARLIEST <= moment < LATEST:
        raise ValueError(f"must lie between {FIRST_YEAR}-01-01 and {LAST_YEAR}-12-31 (China Standard Time)")
    return moment


_PATTERNS = [
    (PeriodKind.week, re.compile(r"^(\d{4})-W(\d{2})$")),
    (PeriodKind.month, re.compile(r"^(\d{4})-(\d{2})$")),
    (PeriodKind.quarter, re.compile(r"^(\d{4})-Q([1-4])$")),
    (PeriodKind.half_year, re.compile(r"^(\d{4})-H([12])$")),
    (PeriodKind.year, re.compile(r"^(\d{4})$")),
]


@dataclass(frozen=True, order=True)
class Period:
    kind: PeriodKind
    key: str

    @classmethod
    def parse(cls, key: str) -> "Period":
        for kind, pattern in _PATTERNS:
            m = pattern.match(key or "")
            if m:
                year, n = int(m.group(1)), int(m.group(2)) if m.lastindex and m.lastindex > 1 else 0
                if not FIRST_YEAR <= year <= LAST_YEAR:
                    raise InvalidPeriod(f"period {key!r}: the year must lie between {FIRST_YEAR} and {LAST_YEAR}")
                if kind == PeriodKind.week and not 1 <= n <= date(year, 12, 28).isocalendar()[1]:
                    raise InvalidPeriod(f"period {key!r}: week {n} does not exist in {year}")
                if kind == PeriodKind.month and not 1 <= n <= 12:
                    raise InvalidPeriod(f"period {key!r}: month must be 01-12")
                return cls(kind, key)
        raise InvalidPeriod(
            f"period {key!r} is not one of YYYY-Www (week), YYYY-MM (month), YYYY-Qn (quarter), "
            "YYYY-Hn (half year), YYYY (year)")

    @classmethod
    def containing(cls, kind: PeriodKind, moment: datetime | date) -> "Period":
        day = moment.astimezone(CST).date() if isinstance(moment, datetime) else moment
        if kind == PeriodKind.week:
            iso = day.isocalendar()
            return cls(kind, f"{iso[0]}-W{iso[1]:02d}")
        if kind == PeriodKind.month:
            return cls(kind, f"{day.year}-{day.month:02d}")
        if kind == PeriodKind.quarter:
            return cls(kind, f"{day.year}-Q{(day.month - 1) // 3 + 1}")
        if kind == PeriodKind.half_year:
            return cls(kind, f"{day.year}-H{1 if day.month <= 6 else 2}")
        return cls(kind, f"{day.year}")

    def bounds(self) -> tuple[date, date]:
        """First day and the day after the last day (local calendar)."""
        year = int(self.key[:4])
        if self.kind == PeriodKind.week:
            start = date.fromisocalendar(year, int(self.key[6:]), 1)
            return start, start + timedelta(days=7)
        if self.kind == PeriodKind.month:
            m = int(self.key[5:])
            return date(year, m, 1), date(year + (m == 12), m % 12 + 1, 1)
        if self.kind == PeriodKind.quarter:
            q = int(self.key[-1])
            return date(year, 3 * q - 2, 1), (date(year + 1, 1, 1) if q == 4 else date(year, 3 * q + 1, 1))
        if self.kind == PeriodKind.half_year:
            h = int(self.key[-1])
            return (date(year, 1, 1), date(year, 7, 1)) if h == 1 else (date(year, 7, 1), date(year + 1, 1, 1))
        return date(year, 1, 1), date(year + 1, 1, 1)

    def instants(self) -> tuple[datetime, datetime]:
        """The bounds as aware instants: midnight China Standard Time of the first day and
        of the day after the last."""
        start, end = self.bounds()
        return (datetime(start.year, start.month, start.day, tzinfo=CST),
                datetime(end.year, end.month, end.day, tzinfo=CST))

    def months(self) -> list["Period"]:
        """The months a quarter, half year or year is made of (a month is itself)."""
        start, end = self.bounds()
        out, day = [], start
        while day < end:
            out.append(Period.containing(PeriodKind.month, day))
            day = date(day.year + (day.month == 12), day.month % 12 + 1, 1)
        return out

    def previous(self) -> "Period":
        start, _ = self.bounds()
        return Period.containing(self.kind, start - timedelta(days=1))

    def __str__(self) -> str:
        return self.key
