"""Stored times are UTC; SQLite hands them back naive, PostgreSQL aware. (No nameko imports.)"""
from __future__ import annotations

from datetime import datetime, timezone


def as_utc(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment
