"""Operator endpoints every service inherits: /health, /metrics, /openapi.json, /audit,
/event-dead-letters.

    class InspectionService(OperatorEndpoints): ...

/health checks the databases of every service in the process and the broker; /health/live
answers whenever the process does (liveness); /health/ready answers 503 only when a
database is unreachable (readiness; a broker outage is "degraded"); /metrics is
the process's Prometheus registry; /openapi.json describes this service's routes; /audit
lists the audit log of the service's database to administrators (entries on their nodes)
and /audit/verify checks its hash chain, also against the service's signed anchors of its
head in AUDIT_ANCHOR_FILE; /event-dead-letters shows the administrators of the
stack's node the events the service's consumers dead-lettered, without taking them off the
queue.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import eventlet
from amqp.exceptions import NotFound
from kombu import Connection
from nameko.dependency_providers import Config
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from werkzeug.wrappers import Response

from services.contracts.bounds import CampaignInstant, Offset
from services.contracts.errors import RuleViolation, UnknownReference
from services.plumbing import audit, metrics as shared_metrics
from services.plumbing.instrumentation import EntrypointMetrics
from services.plumbing.logs import LogContext
from services.plumbing.memory import FrozenStartup
from services.plumbing.db import running_engines
from services.plumbing.auth import ADMINISTRATOR, PUBLIC, signed_in
from services.plumbing.config import home_node, service_amqp_uri
from services.plumbing.http import ROUTES, api, json_response
from services.plumbing.openapi import build_openapi


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    since: CampaignInstant | None = Field(None, description="entries at or after this instant")
    until: CampaignInstant | None = Field(None, description="entries before this instant")
    actor: str | None = Field(None, min_length=1, max_length=200, description="account (subject) or name")
    action: str | None = Field(None, min_length=1, max_length=300,
                               description='a route ("POST /vetoes/<veto_id>/revoke") or a method ("DELETE")')
    request_id: str | None = Field(None, min_length=1, max_length=64)
    service: str | None = Field(None, min_length=1, max_length=64)
    limit: int = Field(100, ge=1, le=1000)
    offset: Offset = 0


class EventDeadLetterQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(100, ge=1, le=1000, description="at most this many, oldest first")


class EventDeadLetterOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "event_id": "0b7f3c2e-5d1a-4c8e-9f00-3a2b1c4d5e6f", "event_type": "inspection_submitted",
        "queue": "evt-inspection-inspection_submitted--scoring.on_inspection_submitted",
        "reason": "refused producer: published by broker user 'guest', not by inspection's 'chuangwei-inspection'",
        "count": None, "published_by": "guest", "body": {"event_type": "inspection_submitted"}}]})
    event_id: str | None = None
    event_type: str | None = None
    queue: str | None = Field(None, description="the queue it died in (where a replay sends it)")
    reason: str | None = Field(None, description="why: refused producer, undecodable, retries exhausted, rejected")
    count: int | None = Field(None, description="times the broker dead-lettered it from that queue")
    published_by: str | None = Field(None, description="the broker user who published it (RabbitMQ-validated user_id)")
    body: Any = None


class AuditGrant(BaseModel):
    role: str
    node: str


class AuditEntryOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "seq": 42, "service": "scoring", "at": "2026-11-23T02:15:00.123456+00:00",
        "actor_subject": "u-wangfang", "actor_name": "王芳", "actor_kind": "user",
        "roles": [{"role": "administrator", "node": "411502000000"}], "node": "411502000000",
        "target": None, "action": "POST /vetoes/<veto_id>/revoke", "path": "/vetoes/VT-7/revoke",
        "request_id": "6f1c0c1e-8a0e-4c55-9d55-0d8e3c1b2a10", "request": {"reason": "复核后撤销"},
        "before": None, "after": None, "prev_hash": "…", "hash": "…"}]})
    seq: int
    service: str
    at: datetime
    actor_subject: str
    actor_name: str
    actor_kind: str
    roles: list[AuditGrant]
    node: str | None
    target: str | None
    action: str
    path: str
    request_id: str
    request: Any = None
    before: Any = None
    after: Any = None
    prev_hash: str
    hash: str


class AuditVerificationOut(BaseModel):
    ok: bool
    entries: int = Field(description="entries checked")
    head_seq: int | None = Field(None, description="the newest entry that checks out: note it to detect a cut tail")
    head_hash: str | None = None
    broken_seq: int | None = Field(None, description="the first entry that is missing, altered or unlinked, or "
                                                     "the first anchored entry rewritten or cut off")
    reason: str | None = None
    anchors: int = Field(0, description="this service's anchors (AUDIT_ANCHOR_FILE) checked against the chain")
    anchored_seq: int | None = Field(None, description="the newest anchored entry: the log must reach it")


HEALTH_CHECK_TIMEOUT = 1.0
"""Seconds each health check may take: a probe must answer promptly, even during an outage."""


def _select_one(engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _probe(check, timeout: float) -> str:
    """"ok", or why not; never longer than `timeout` (green: the checks yield to eventlet)."""
    try:
        with eventlet.Timeout(timeout):
            check()
        return "ok"
    except eventlet.Timeout:
        return f"error: no answer within {timeout:g} s"
    except Exception as exc:  # report, don't raise: this is the health page
        return f"error: {exc.__class__.__name__}"


def check_databases(timeout: float = HEALTH_CHECK_TIMEOUT) -> dict[str, str]:
    return {f"database:{service}": _probe(lambda: _select_one(engine), timeout)
            for service, engine in sorted(running_engines().items())}


def check_broker(amqp_uri: str, timeout: float = HEALTH_CHECK_TIMEOUT) -> str:
    def connect():
        with Connection(amqp_uri, connect_timeout=timeout) as conn:
            conn.connect()
    return _probe(connect, timeout)


def run_health_checks(amqp_uri: str) -> dict[str, str]:
    """The databases of every service in the process and the broker: "ok" or the error's
    class; each check bounded to HEALTH_CHECK_TIMEOUT."""
    checks = check_databases()
    checks["broker"] = check_broker(amqp_uri)
    for check, outcome in checks.items():
        shared_metrics.HEALTH_CHECK.labels(check).set(1 if outcome == "ok" else 0)
    return checks


# Several services share one process (and registry) in `nameko run`; Prometheus scrapes each
# of their ports, so /metrics reuses a recent check instead of opening a broker connection per scrape.
_HEALTH_CACHE: dict[str, tuple[float, dict[str, str]]] = {}
HEALTH_CACHE_SECONDS = 5.0


def recent_health_checks(amqp_uri: str) -> dict[str, str]:
    cached = _HEALTH_CACHE.get(amqp_uri)
    if cached is not None and time.monotonic() - cached[0] < HEALTH_CACHE_SECONDS:
        return cached[1]
    checks = run_health_checks(amqp_uri)
    _HEALTH_CACHE[amqp_uri] = (time.monotonic(), checks)
    return checks


def record_pool_usage() -> None:
    for service, engine in running_engines().items():
        pool = engine.pool
        if hasattr(pool, "checkedout") and hasattr(pool, "size"):
            shared_metrics.DB_POOL_IN_USE.labels(service).set(pool.checkedout())
            shared_metrics.DB_POOL_LIMIT.labels(service).set(pool.size() + max(getattr(pool, "_max_overflow", 0), 0))


class OperatorEndpoints:
    name: str
    config = Config()
    entrypoint_metrics = EntrypointMetrics()
    log_context = LogContext()
    frozen_startup = FrozenStartup()  # GC_FREEZE_AT_START

    @api("GET", "/health", raw=True, access=PUBLIC, statuses=(503,), summary="健康检查 Health (database and broker)")
    def health(self, request):
        """Every dependency, each checked within about a second: 503 if any is down."""
        checks = run_health_checks(self.config["AMQP_URI"])
        healthy = all(outcome == "ok" for outcome in checks.values())
        return json_response({"status": "ok" if healthy else "degraded", "service": self.name,
                              "checks": checks}, status=200 if healthy else 503)

    @api("GET", "/health/live", raw=True, access=PUBLIC, summary="存活检查 Liveness: the process answers (no dependency is checked)")
    def health_live(self, request):
        # A liveness probe restarts what fails it: a database or broker outage must not
        # make a healthy process look dead (it would be killed mid-recovery).
        return json_response({"status": "ok", "service": self.name})

    @api("GET", "/health/ready", raw=True, access=PUBLIC, statuses=(503,),
         summary="就绪检查 Readiness: the database answers (a broker outage only degrades it)")
    def health_ready(self, request):
        """503 when a database is unreachable; 200 with status "degraded" when only the broker
        is: writes still succeed (their events wait in the outbox), so a load balancer must
        not turn traffic away."""
        checks = check_databases()
        ready = all(v == "ok" for v in checks.values())
        checks["broker"] = check_broker(self.config["AMQP_URI"])
        status = "unavailable" if not ready else ("ok" if checks["broker"] == "ok" else "degraded")
        return json_response({"status": status, "service": self.name, "checks": checks},
                             status=200 if ready else 503)

    @api("GET", "/metrics", raw=True, access=PUBLIC, content_type="text/plain", summary="Prometheus metrics")
    def metrics(self, request):
        recent_health_checks(self.config["AMQP_URI"])
        record_pool_usage()
        return Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)

    @api("GET", "/openapi.json", raw=True, access=signed_in(), summary="本服务接口文档 This service's OpenAPI document")
    def openapi(self, request, principal):
        routes = [r for r in ROUTES.values() if r.service == self.name]
        return json_response(build_openapi(routes, title=f"Chuangwei 创卫 {self.name} API"))

    @api("GET", "/event-dead-letters", query=EventDeadLetterQuery, response=list[EventDeadLetterOut],
         access=signed_in(ADMINISTRATOR), statuses=(503,),
         summary="死信事件 Events this service's consumers dead-lettered, with why (left on the queue)")
    def event_dead_letters(self, request, query: EventDeadLetterQuery, principal):
        """Peeks at `<service>.dead-letters`: each message is fetched and put back. Replay is
        the operator's tool (`python -m services.tools.dead_letters replay`)."""
        from services.tools.dead_letters import list_dead_letters
        principal.require(ADMINISTRATOR, home_node(self.config))
        uri = service_amqp_uri(self.config, self.name)
        try:
            with eventlet.Timeout(10):
                letters = list_dead_letters(uri, self.name, limit=query.limit)
        except eventlet.Timeout:  # a broker that does not answer is down for the client: 503
            raise TimeoutError("the broker did not answer within 10 s") from None
        except NotFound:  # a service without consumers has no dead-letter queue
            letters = []
        return [EventDeadLetterOut.model_validate(
            {k: (str(v) if k in ("event_id", "event_type") and v is not None else v) for k, v in letter.items()})
            for letter in letters]

    def _audit_database(self):
        db = getattr(self, "db", None)
        if db is None or not hasattr(db, "session"):
            raise UnknownReference("audit", f"{self.name} keeps no database and so no audit log")
        return db

    @api("GET", "/audit", query=AuditQuery, response=list[AuditEntryOut], access=signed_in(ADMINISTRATOR),
         summary="审计日志 Audit log: every write, newest first (entries on the caller's administrator nodes)")
    def audit_log(self, request, query: AuditQuery, principal):
        if query.since and query.until and query.since >= query.until:
            raise RuleViolation("query.until", "until must be later than since")
        rows = audit.query(self._audit_database().session, nodes=principal.nodes_with([ADMINISTRATOR]),
                           since=query.since, until=query.until, actor=query.actor, action=query.action,
                           request_id=query.request_id, service=query.service, limit=query.limit,
                           offset=query.offset)
        return [AuditEntryOut.model_validate(row) for row in rows]

    @api("GET", "/audit/verify", response=AuditVerificationOut, access=signed_in(ADMINISTRATOR),
         summary="核验审计日志 Verify the audit log's hash chain (ok, or the first broken entry; administrators "
                 "of the stack's node or a node containing it)")
    def audit_verify(self, request, principal):
        """The chain in itself and against this service's anchors in AUDIT_ANCHOR_FILE: a
        rewritten chain or a cut tail fails too."""
        # The whole log's count and head are the stack's office's, not another office's (issue 27).
        principal.require(ADMINISTRATOR, home_node(self.config))
        try:
            key = audit.anchor_key(self.config, create=False)
        except audit.SecretUnavailable:
            key = None  # no key yet: there can be no anchors of ours either (read_anchors says so if there are)
        result = audit.verify_anchored(self._audit_database().session, audit.anchor_file(self.config), key,
                                       service=self.name)
        return AuditVerificationOut(**result.__dict__)
