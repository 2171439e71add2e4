"""The sliding-window rate limit shared by every endpoint that bounds a caller's attempts:
login failures (accounts), residents' public reports (intake) and public survey answers
(indicators). Pure arithmetic over the attempt times each service keeps in its own table,
so the rule and its Retry-After are the same everywhere; and who the client is
(`client_address`), the same way everywhere."""
from __future__ import annotations

import hmac
import math
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
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


# --- who the client is ---------------------------------------------------------------------

RELAY_HEADER = "X-Chuangwei-Relay"
"""Sent by a trusted relay of this stack (the console) with the shared CONSOLE_RELAY_SECRET:
its X-Forwarded-For then names the client it relays for."""


DEFAULT_RELAY_SECRET_FILE = "var/console-relay.secret"


def relay_secret(config: dict) -> str | None:
    """CONSOLE_RELAY_SECRET if set; else the secret in CONSOLE_RELAY_SECRET_FILE (default
    var/console-relay.secret), made at the first start of a stack whose console and accounts
    share this machine — so the README's stack counts each person's address without a setting
    (containers on several machines set the variable). None when no file can be had."""
    value = config.get("CONSOLE_RELAY_SECRET")
    if value:
        return str(value)
    path = Path(str(config.get("CONSOLE_RELAY_SECRET_FILE") or DEFAULT_RELAY_SECRET_FILE))
    for _ in range(20):
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(32))
            secret = path.read_text().strip()
        except FileExistsError:  # another process of the stack made it at this moment
            secret = ""
        except OSError:
            return None
        if secret:
            return secret
        time.sleep(0.05)  # written in a moment by whoever created it
    return None


def client_address(request, *, trust_forwarded_for: bool = False, relay_secret: str | None = None) -> str:
    """The address a rate limit counts: the peer's, or the last X-Forwarded-For entry when
    it is vouched for — by a reverse proxy every request passes (`trust_forwarded_for`,
    e.g. INTAKE_TRUST_FORWARDED_FOR), or by the console relaying a person's sign-in with the
    shared relay secret. Anyone else's X-Forwarded-For is ignored: a client cannot pick its
    own bucket."""
    vouched = trust_forwarded_for
    if not vouched and relay_secret:
        offered = request.headers.get(RELAY_HEADER, "")
        vouched = bool(offered) and hmac.compare_digest(offered.encode("utf-8", "replace"),
                                                        relay_secret.encode("utf-8"))
    if vouched:
        # The proxy appends the address it saw: the last entry is the one it vouches for.
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        if forwarded:
            return forwarded[:64]
    return (request.remote_addr or "unknown")[:64]
