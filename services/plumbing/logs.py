"""JSON log lines that carry the correlation of the work they belong to.

Every worker gets a log context (the `LogContext` provider on OperatorEndpoints): its
service and entrypoint, the HTTP request id (`X-Request-Id`, as in the audit log) and, for an
event consumer, the event's id, type and `correlation_id`. `JsonFormatter` writes one JSON
object per line with that context, so `grep <id>` over every tier's logs follows one
inspection from the request that recorded it through each event, and to the city: events
published by a worker carry its correlation id onward (see `current_correlation_id`), and
the outbox logs one line per event it stages.

    LOGGING: {formatters: {json: {(): services.plumbing.logs.JsonFormatter}}, ...}
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from eventlet.corolocal import local
from nameko.extensions import DependencyProvider

_context = local()  # per green thread: each worker has its own

CONTEXT_FIELDS = ("service", "entrypoint", "request_id", "correlation_id", "event_id", "event_type")


def current() -> dict:
    return getattr(_context, "fields", None) or {}


def current_correlation_id() -> str | None:
    """What an event staged now should carry onward: the consumed event's correlation id, or the
    HTTP request's id."""
    fields = current()
    return fields.get("correlation_id") or fields.get("request_id")


def worker_fields(worker_ctx) -> dict:
    entrypoint = worker_ctx.entrypoint
    fields = {"service": worker_ctx.container.service_name, "entrypoint": entrypoint.method_name}
    first = worker_ctx.args[0] if worker_ctx.args else None
    request_id = getattr(first, "request_id", None)
    if request_id:
        fields["request_id"] = request_id
    elif isinstance(first, dict) and isinstance(first.get("event_id"), str):  # an event envelope
        for key in ("event_id", "event_type", "correlation_id"):
            if isinstance(first.get(key), str):
                fields[key] = first[key][:128]
    return fields


class LogContext(DependencyProvider):
    def worker_setup(self, worker_ctx):
        _context.fields = worker_fields(worker_ctx)

    def worker_teardown(self, worker_ctx):
        _context.fields = None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, the worker's context,
    anything passed as `extra={"chuangwei": {...}}`, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        line.update(current())
        extra = getattr(record, "chuangwei", None)
        if isinstance(extra, dict):
            line.update(extra)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)
