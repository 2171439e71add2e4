"""Metrics every service shares. Service-specific metrics live beside each service."""
from prometheus_client import Counter, Gauge, Histogram

HTTP_LATENCY = Histogram(
    "chuangwei_http_request_seconds", "HTTP request latency",
    ["service", "method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
OUTBOX_BACKLOG = Gauge("chuangwei_outbox_backlog", "Events committed but not yet published", ["service"])
EVENTS_PUBLISHED = Counter("chuangwei_events_published_total", "Events published from the outbox", ["service"])
EVENTS_CONSUMED = Counter(
    "chuangwei_events_consumed_total", "Events handled by consumers",
    ["service", "event_type", "outcome"],  # outcome: processed | duplicate | dead_lettered | requeued
)
OUTBOX_OLDEST_AGE = Gauge("chuangwei_outbox_oldest_age_seconds",
                          "Age of the oldest event committed but not yet published (0 when none)", ["service"])
OUTBOX_RELAY_FAILURES = Counter("chuangwei_outbox_relay_failures_total",
                                "Outbox relay rounds that failed (broker or database unreachable)", ["service"])
# Every worker of every entrypoint: kind is http | rpc | event | timer | other; entrypoint is the
# method name (bounded by the code, never an id); outcome is ok | error (an unhandled exception).
ENTRYPOINT_SECONDS = Histogram(
    "chuangwei_entrypoint_seconds", "Duration of each worker, by entrypoint",
    ["service", "kind", "entrypoint", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HEALTH_CHECK = Gauge("chuangwei_health_check_up",
                     "1 when the check passed at the last /metrics or /health (database:<service>, broker)",
                     ["check"])
DB_POOL_IN_USE = Gauge("chuangwei_db_pool_connections_in_use", "Database connections checked out of the pool",
                       ["service"])
DB_POOL_LIMIT = Gauge("chuangwei_db_pool_connections_limit", "Most connections the pool may open (size + overflow)",
                      ["service"])
