"""Bounds every API field shares, stated in the schemas so clients and fuzzers see them."""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, Field

from services.contracts.periods import check_campaign_instant

MAX_OFFSET = 1_000_000

CampaignInstant = Annotated[AwareDatetime, AfterValidator(check_campaign_instant),
                            Field(description="an instant with its time zone, within 2000–2099")]
"""An aware instant within the campaign years (2000–2099, China Standard Time)."""

Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET, description="rows to skip (at most 1,000,000)")]

# One line of text: a name, an address, a contact, an id. A line break in a name would
# break an e-mail header or a bot's Markdown downstream, so it is refused at the API.
ONE_LINE_PATTERN = r"^[^\r\n\t\u2028\u2029]*$"
_LINE_BREAKS = re.compile(ONE_LINE_PATTERN)


def _one_line(value: str | None) -> str | None:
    if value is not None and not _LINE_BREAKS.match(value):
        raise ValueError("must be one line: no line breaks or tabs (不能包含换行符或制表符)")
    return value


def line(max_length: int, min_length: int = 0, **kw):
    """A one-line text field; the pattern is stated in the schema, OneLine gives the reason."""
    return Field(min_length=min_length, max_length=max_length, json_schema_extra={"pattern": ONE_LINE_PATTERN}, **kw)


OneLine = AfterValidator(_one_line)


def not_in_future(moment: datetime, now: datetime, slack_hours: float = 24) -> bool:
    """Whether `moment` is not later than `now` (with slack for phones whose clocks run ahead)."""
    from datetime import timedelta
    return moment <= now + timedelta(hours=slack_hours)


def campaign_start(config: dict) -> datetime | None:
    """CAMPAIGN_START (an ISO date, China Standard Time): the day the office's campaign
    began; nothing reported to it happened earlier. None when not configured."""
    from services.contracts.periods import CST
    value = str(config.get("CAMPAIGN_START") or "").strip()
    if not value:
        return None
    day = date.fromisoformat(value)
    return datetime(day.year, day.month, day.day, tzinfo=CST)


def reported_instant_problem(moment: datetime, now: datetime, *, not_before: datetime | None = None,
                             max_age: timedelta | None = None,
                             future_slack: timedelta = timedelta(minutes=5)) -> str | None:
    """Why an instant a client reports for something that just happened (a machine's
    `requested_datetime`, like a person's `inspected_at`) cannot be taken, or None: it must
    be a CampaignInstant, not before the campaign's start, not older than `max_age` and not
    in the future (beyond the slack of a clock running ahead)."""
    if moment > now + future_slack:
        return f"不能晚于当前时间; {moment.isoformat()} lies in the future"
    if not_before is not None and moment < not_before:
        return (f"不能早于创卫工作开始日期 {not_before.date().isoformat()}; {moment.isoformat()} lies before "
                f"the campaign's start")
    if max_age is not None and moment < now - max_age:
        hours = max_age.total_seconds() / 3600
        return (f"不能早于 {hours:g} 小时之前; {moment.isoformat()} lies more than {hours:g} hours in the past "
                f"(a backdated case would be overdue at once)")
    return None
