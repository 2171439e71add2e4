"""Per-entrypoint counts, errors and latency for every worker (HTTP, RPC, events, timers).

OperatorEndpoints carries an `EntrypointMetrics` provider, so every service gets it. The
labels are bounded by the code: the service, the entrypoint's kind and its method name.
"""
from __future__ import annotations

import time

from nameko.extensions import DependencyProvider
from nameko.rpc import Rpc
from nameko.timer import Timer

from services.plumbing import metrics


def entrypoint_kind(entrypoint) -> str:
    # Imported here: http and consumer import this module's neighbours, not the other way round.
    from services.plumbing.consumer import ReliableEventHandler
    from services.plumbing.http import JsonApi
    if isinstance(entrypoint, JsonApi):
        return "http"
    if isinstance(entrypoint, Rpc):
        return "rpc"
    if isinstance(entrypoint, ReliableEventHandler):
        return "event"
    if isinstance(entrypoint, Timer):
        return "timer"
    return "other"


class EntrypointMetrics(DependencyProvider):
    def setup(self):
        self._started: dict[int, float] = {}

    def worker_setup(self, worker_ctx):
        self._started[id(worker_ctx)] = time.perf_counter()

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        started = self._started.pop(id(worker_ctx), None)
        if started is None:
            return
        entrypoint = worker_ctx.entrypoint
        metrics.ENTRYPOINT_SECONDS.labels(
            self.container.service_name, entrypoint_kind(entrypoint), entrypoint.method_name,
            "error" if exc_info is not None else "ok",
        ).observe(time.perf_counter() - started)

    def worker_teardown(self, worker_ctx):
        self._started.pop(id(worker_ctx), None)
