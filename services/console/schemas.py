"""Query models of the console's pages (the shared layer validates them: a bad filter is a
clear 422 page, never a 500)."""
from __future__ import annotations

from typing import Literal

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.contracts.periods import InvalidPeriod, Period


def _period(value: str | None) -> str | None:
    if value in (None, ""):
        return None
    try:
        Period.parse(value)
    except InvalidPeriod as exc:
        raise ValueError(str(exc)) from None
    return value


PeriodText = Annotated[str | None, AfterValidator(_period)]


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class NextQuery(_Query):
    next: str | None = Field(default=None, max_length=2000, description="where to go after signing in")


class DashboardQuery(_Query):
    period: PeriodText = Field(default=None, description="a month, default this month (2026-11)")


class LedgerFilters(_Query):
    subject_id: str | None = Field(default=None, max_length=64)
    status: Literal["", "open", "in_progress", "fix_submitted", "closed", "escalated"] | None = None
    light: Literal["", "red", "yellow", "green"] | None = None
    category: str | None = Field(default=None, max_length=32)
    severity: Literal["", "minor", "major", "critical"] | None = None
    period: PeriodText = None


class ScoresQuery(_Query):
    subject_id: str | None = Field(default=None, max_length=64)
    period: PeriodText = None
