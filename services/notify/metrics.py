"""Notification metrics: sent, failed, retried and dead-lettered by channel; delivery latency."""
from prometheus_client import Counter, Gauge, Histogram

SENT = Counter("chuangwei_notify_sent_total", "Notifications delivered", ["channel"])
FAILED = Counter("chuangwei_notify_failed_total", "Delivery attempts that failed", ["channel"])
RETRIED = Counter("chuangwei_notify_retried_total", "Failed deliveries scheduled for another try", ["channel"])
DEAD_LETTERED = Counter("chuangwei_notify_dead_lettered_total", "Deliveries that used up their attempts",
                        ["channel"])
REPLAYED = Counter("chuangwei_notify_replayed_total", "Dead letters replayed by an operator", ["channel"])
LATENCY = Histogram("chuangwei_notify_delivery_latency_seconds",
                    "From the notification's creation to its successful delivery", ["channel"],
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
ATTEMPT_SECONDS = Histogram("chuangwei_notify_attempt_seconds", "Duration of one delivery attempt", ["channel"],
                            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
BULLETINS = Counter("chuangwei_notify_bulletins_total", "Monthly bulletins generated", ["trigger"])
TEMPLATE_FALLBACKS = Counter("chuangwei_notify_template_fallbacks_total",
                             "Notices sent with the default template because the node's template failed",
                             ["notice"])
NOTICE_DELIVERIES = Counter("chuangwei_notify_notice_deliveries_total",
                            "Delivery outcomes by notice type (urge = 督办单): sent | failed (will retry) | dead_lettered",
                            ["notice", "outcome"])
BULLETIN_MISSING = Gauge("chuangwei_notify_bulletin_missing",
                         "1 while last month's scheduled bulletin is due (its day has come) and not yet produced")
