"""The collector's view of a long-running service process.

CPython's full (generation 2) collection walks every tracked object, and a service holds
≈ 160,000 of them after start (imported modules, pydantic schemas, SQLAlchemy mappers): each
full collection took 70-90 ms, found nothing, and fell on every tenth `GET /rankings` or so
of a city stack (issue 11's read benchmark). Objects alive once a service has started live as
long as the process: `gc.freeze()` moves them where collections no longer look.

On by default in the shipped configuration (infra/nameko.yaml, GC_FREEZE_AT_START); off
unless set, so that a test process starting hundreds of stacks does not keep each one's
garbage for ever. Every service has it through the operator endpoints it inherits
(`FrozenStartup`).
"""
from __future__ import annotations

import gc
import logging

from nameko.extensions import DependencyProvider

log = logging.getLogger(__name__)


def enabled(config: dict) -> bool:
    return str(config.get("GC_FREEZE_AT_START", "false")).strip().lower() in ("1", "true", "yes", "on")


def freeze_startup_objects() -> int:
    """Collect what start-up left behind, then exempt everything still alive from later
    collections; returns how many objects are now frozen. Calling it again (another service
    of the same process starting) freezes what was made since."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("%d objects alive after start-up frozen out of the collector's full passes", frozen)
    return frozen


class FrozenStartup(DependencyProvider):
    """Freezes what start-up left alive once the service has started, where configured."""

    def start(self):
        if enabled(self.container.config):
            freeze_startup_objects()
