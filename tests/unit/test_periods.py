from datetime import date, datetime, timezone

import pytest

from services.contracts.periods import InvalidPeriod, Period, PeriodKind


@pytest.mark.parametrize("key,kind,start,end", [
    ("2026-W47", PeriodKind.week, date(2026, 11, 16), date(2026, 11, 23)),
    ("2026-11", PeriodKind.month, date(2026, 11, 1), date(2026, 12, 1)),
    ("2026-12", PeriodKind.month, date(2026, 12, 1), date(2027, 1, 1)),
    ("2026-Q4", PeriodKind.quarter, date(2026, 10, 1), date(2027, 1, 1)),
    ("2026-H1", PeriodKind.half_year, date(2026, 1, 1), date(2026, 7, 1)),
    ("2026", PeriodKind.year, date(2026, 1, 1), date(2027, 1, 1)),
])
def test_parse_and_bounds(key, kind, start, end):
    period = Period.parse(key)
    assert period.kind == kind and period.bounds() == (start, end)


@pytest.mark.parametrize("bad", ["2026-13", "2026-W60", "2026-Q5", "26-11", "", "2026/11"])
def test_bad_period_keys(bad):
    with pytest.raises(InvalidPeriod):
        Period.parse(bad)


def test_periods_follow_beijing_time():
    # 17:00 UTC on 30 November is 01:00 on 1 December in Beijing.
    moment = datetime(2026, 11, 30, 17, 0, tzinfo=timezone.utc)
    assert Period.containing(PeriodKind.month, moment).key == "2026-12"


def test_months_and_previous():
    assert [p.key for p in Period.parse("2026-H2").months()] == [f"2026-{m:02d}" for m in range(7, 13)]
    assert Period.parse("2026-01").previous().key == "2025-12"
    assert Period.parse("2026-Q1").previous().key == "2025-Q4"
    assert Period.parse("2026-W01").previous().key == "2025-W52"


def test_instants_are_beijing_midnights():
    start, end = Period.parse("2026-11").instants()
    assert start == datetime(2026, 10, 31, 16, 0, tzinfo=timezone.utc)
    assert end == datetime(2026, 11, 30, 16, 0, tzinfo=timezone.utc)
