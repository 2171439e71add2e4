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
