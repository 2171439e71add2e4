"""Bounds every API field shares, stated in the schemas so clients and fuzzers see them."""
from __future__ import annotations

import re
from datetime import datetime
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
