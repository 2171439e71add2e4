"""A controllable clock: real UTC time plus an offset that tests (or a demo) can move.

Services that reason about deadlines ask `self.clock.now()` instead of `datetime.now()`, so
a test can let a rectification deadline pass without waiting days:

    from services.plumbing import clock
    clock.advance(timedelta(days=3))   # every Clock in this process now reads +3 days
    ...
    clock.reset()

Config: CLOCK_OFFSET_SECONDS (optional, default 0) shifts one stack's clock permanently,
e.g. for a training installation replaying last month. Both offsets add up. Production
leaves both at zero; the offset is process-wide and only ever set by tests and demos.
"""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from nameko.extensions import DependencyProvider

_lock = threading.Lock()
_offset = timedelta(0)


def now() -> datetime:
    """Real UTC time plus the process-wide offset (aware datetime)."""
    return datetime.now(timezone.utc) + _offset


def offset() -> timedelta:
    return _offset


def set_offset(delta: timedelta) -> None:
    global _offset
    with _lock:
        _offset = delta


def advance(delta: timedelta) -> None:
    global _offset
    with _lock:
        _offset = _offset + delta


def reset() -> None:
    set_offset(timedelta(0))


class WorkerClock:
    def __init__(self, config_offset: timedelta):
        self._config_offset = config_offset

    def now(self) -> datetime:
        return now() + self._config_offset


class Clock(DependencyProvider):
    """`self.clock.now()` in a worker: aware UTC, real time + offsets (see module doc)."""

    def setup(self):
        seconds = float(self.container.config.get("CLOCK_OFFSET_SECONDS", 0) or 0)
        self.config_offset = timedelta(seconds=seconds)

    def get_dependency(self, worker_ctx):
        return WorkerClock(self.config_offset)
