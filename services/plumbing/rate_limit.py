"""The sliding-window rate limit shared by every endpoint that bounds a caller's attempts:
login failures (accounts), residents' public reports (intake) and public survey answers
(indicators). Pure arithmetic over the attempt times each service keeps in its own table,
so the rule and its Retry-After are the same everywhere."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` attempts within `window`; then wait."""
    limit: int
    window: timedelta

    def retry_after(self, attempts: Iterable[datetime], now: datetime) -> int | None:
        """Seconds until another attempt is allowed, or None if one is allowed now.

        Once the limit is reached, an attempt is allowed again when enough attempts have
        left the window that fewer than `limit` remain in it.
        """
        recent = sorted((t for t in attempts if now - self.window < t <= now), reverse=True)
        if len(recent) < self.limit:
            return None
        # The attempt that must age out is the limit-th most recent one.
        frees_at = recent[self.limit - 1] + self.window
        return max(1, math.ceil((frees_at - now).total_seconds()))
