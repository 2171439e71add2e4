"""The delivery worker: sends pending e-mail and webhook deliveries, retries, dead-letters.

One green thread per channel claims due rows of the deliveries table (leased, and with
FOR UPDATE SKIP LOCKED on PostgreSQL, so several instances share the work) and hands each
to that channel's own pool, with a hard timeout per attempt: a slow SMTP server never
holds up the webhooks, and one slow bot never holds up the other bots.

Config: SMTP_HOST, SMTP_PORT, SMTP_FROM (SMTP_USER, SMTP_PASSWORD, SMTP_STARTTLS, SMTP_TIMEOUT),
WEBHOOK_TIMEOUT, NOTIFY_POLL_INTERVAL, NOTIFY_MAX_ATTEMPTS, NOTIFY_RETRY_BASE_SECONDS,
NOTIFY_RETRY_FACTOR, NOTIFY_RETRY_MAX_SECONDS, NOTIFY_SEND_TIMEOUT, NOTIFY_CHANNEL_CONCURRENCY,
NOTIFY_LEASE_SECONDS; webhook targets: NOTIFY_WEBHOOK_HOSTS, NOTIFY_WEBHOOK_ALLOW_HTTP,
NOTIFY_WEBHOOK_ALLOW_PRIVATE (see `webhooks`).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

import eventlet
from eventlet.event import Event
from eventlet.greenpool import GreenPool
from nameko.extensions import DependencyProvider
from sqlalchemy.orm import Session

from services.plumbing.db import Database
from services.notify import metrics
from services.notify import operations as ops
from services.notify.channels import DeliveryFailed, SmtpSettings, send_email, send_webhook
from services.notify.domain import RetryPolicy
from services.notify.webhooks import WebhookPolicy

log = logging.getLogger(__name__)

CHANNELS = ("email", "webhook")
STOP_GRACE_SECONDS = 2.0


def retry_policy(config: dict) -> RetryPolicy:
    return RetryPolicy(max_attempts=int(config.get("NOTIFY_MAX_ATTEMPTS", 5)),
                       base_seconds=float(config.get("NOTIFY_RETRY_BASE_SECONDS", 30)),
                       factor=float(config.get("NOTIFY_RETRY_FACTOR", 2)),
                       max_seconds=float(config.get("NOTIFY_RETRY_MAX_SECONDS", 3600)))


class DeliveryWorker(DependencyProvider):
    """`self.delivery.nudge()` from a worker; delivers in the background."""

    def setup(self):
        config = self.container.config
        self.policy = retry_policy(config)
        self.poll_interval = float(config.get("NOTIFY_POLL_INTERVAL", 1.0))
        self.send_timeout = float(config.get("NOTIFY_SEND_TIMEOUT", 30))
        self.concurrency = int(config.get("NOTIFY_CHANNEL_CONCURRENCY", 10))
        self.lease = timedelta(seconds=max(float(config.get("NOTIFY_LEASE_SECONDS", 120)), 2 * self.send_timeout))
        self.smtp = SmtpSettings.from_config(config)
        self.webhook_timeout = float(config.get("WEBHOOK_TIMEOUT", 10))
        self.webhook_policy = WebhookPolicy.from_config(config)
        self.senders = {"email": self._send_email, "webhook": self._send_webhook}
        self.pools = {c: GreenPool(self.concurrency) for c in CHANNELS}
        self.wakeups = {c: Event() for c in CHANNELS}
        self.threads = []
        self._running = False

    @property
    def engine(self):
        return Database.of(self.container).engine

    def start(self):
        self._running = True
        self.threads = [self.container.spawn_managed_thread(lambda c=c: self._loop(c)) for c in CHANNELS]

    def stop(self):
        self._running = False
        self.nudge()
        for gt in self.threads:
            gt.wait()
        # Give attempts in flight a moment; the rest are abandoned: their lease runs out and
        # another instance (or this one, restarted) tries again.
        for pool in self.pools.values():
            with eventlet.Timeout(STOP_GRACE_SECONDS, False):
                pool.waitall()
            for gt in list(pool.coroutines_running):
                gt.kill()

    def kill(self):
        self._running = False
        for gt in self.threads:
            gt.kill()
        for pool in self.pools.values():
            for gt in list(pool.coroutines_running):
                gt.kill()

    def get_dependency(self, worker_ctx):
        return self

    def worker_teardown(self, worker_ctx):
        self.nudge()

    def nudge(self, channel: str | None = None):
        for c in ([channel] if channel else CHANNELS):
            if not self.wakeups[c].ready():
                self.wakeups[c].send(True)

    # --- the loop ---

    def _loop(self, channel: str):
        pool = self.pools[channel]
        while self._running:
            claimed = 0
            try:
                free = pool.free()
                if free:
                    with Session(self.engine) as session, session.begin():
                        jobs = ops.claim_due(session, channel, free, self.lease)
                    for job in jobs:
                        pool.spawn(self._attempt, job)
                    claimed = len(jobs)
            except Exception:  # keep delivering whatever happens; leased rows come due again
                log.exception("notify %s delivery loop failed; retrying", channel)
            if claimed and claimed == free:
                eventlet.sleep(0)  # more may be due: claim again as slots free up
                continue
            with eventlet.Timeout(self.poll_interval, False):
                self.wakeups[channel].wait()
            self.wakeups[channel] = Event()

    def _attempt(self, job: ops.DeliveryJob):
        started = time.perf_counter()
        error = None
        try:
            with eventlet.Timeout(self.send_timeout):
                self.senders[job.channel](job)
        except eventlet.Timeout:
            error = f"timed out after {self.send_timeout:g}s"
        except DeliveryFailed as exc:
            error = str(exc)
        except Exception as exc:  # a sender bug must not kill the loop
            log.exception("notify %s sender crashed", job.channel)
            error = f"{exc.__class__.__name__}: {exc}"
        metrics.ATTEMPT_SECONDS.labels(job.channel).observe(time.perf_counter() - started)
        try:
            with Session(self.engine) as session, session.begin():
                outcome = ops.record_attempt(session, job.delivery_id, error, self.policy)
        except Exception:
            log.exception("notify: could not record the attempt of %s; the lease will bring it back",
                          job.delivery_id)
            return
        if outcome in ("sent", "dead_lettered") or error is not None:
            metrics.NOTICE_DELIVERIES.labels(job.notice_type, "failed" if outcome == "retried" else outcome).inc()
        if outcome == "sent":
            metrics.SENT.labels(job.channel).inc()
            metrics.LATENCY.labels(job.channel).observe(
                (datetime.now(timezone.utc) - job.created_at).total_seconds())
            return
        if error is not None:
            metrics.FAILED.labels(job.channel).inc()
            log.warning("notify %s delivery %s failed (%s): %s", job.channel, job.delivery_id, outcome, error)
        if outcome == "retried":
            metrics.RETRIED.labels(job.channel).inc()
        elif outcome == "dead_lettered":
            metrics.DEAD_LETTERED.labels(job.channel).inc()

    # --- senders ---

    def _send_email(self, job: ops.DeliveryJob):
        send_email(self.smtp, job.target, job.title, job.markdown, job.html, message_id=job.delivery_id)

    def _send_webhook(self, job: ops.DeliveryJob):
        send_webhook(job.target, job.target_format or "wecom", job.title, job.markdown, timeout=self.webhook_timeout,
                     policy=self.webhook_policy)
