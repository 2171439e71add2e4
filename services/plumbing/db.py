"""One database provider for every service.

One engine per container, one session per worker (as nameko-sqlalchemy does, but for
SQLAlchemy 2, which nameko-sqlalchemy does not support). The service's Alembic
migrations, and plumbing's audit-log migrations, run at container setup unless
DB_AUTO_MIGRATE is false.

Every commit made by an HTTP write request (POST/PUT/PATCH/DELETE) or an RPC call appends an
entry to the audit log in the same transaction (`services.plumbing.audit`), and an HTTP
write that succeeds without committing anything still gets one entry: no service has to
remember.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from nameko.extensions import DependencyProvider
from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from services.plumbing import audit
from services.plumbing.sql import advisory_xact_lock
from services.plumbing.config import database_url, home_node
from services.plumbing.embedded import DEFAULT_BUSY_TIMEOUT, DEFAULT_WRITER_WAIT, make_sqlite_engine, take_writer

log = logging.getLogger(__name__)

# The Database provider of every container set up in this process, for /health and the pool
# gauges. Keyed by the provider, not the service name: two containers of one service (tests,
# a blue/green restart) must not drop each other's entry.
# Weak values: a container that failed to start is dropped without stop(); its provider must
# not outlive it here.
_PROVIDERS: "weakref.WeakValueDictionary[int, Database]" = weakref.WeakValueDictionary()


def running_engines() -> dict[str, Engine]:
    """The engines of the services running in this process, by service name. A container that
    has stopped, died or been collected is left out even if its provider never got to
    unregister (a start that failed after the database was set up never calls stop): its
    database may be gone, and it must not make every /health in the process 503."""
    engines = {}
    for key, provider in list(_PROVIDERS.items()):
        try:
            container = provider.container  # nameko binds extensions to a weak proxy
            running = container.started and not container._died.ready()
            name = container.service_name
        except ReferenceError:
            _PROVIDERS.pop(key, None)
            continue
        if provider.engine is not None and running:
            engines[name] = provider.engine
    return engines

# --- a dependency that is down: 503 for clients, one log line per outage for operators ---

RETRY_AFTER_SECONDS = 5
"""What a client is told to wait (Retry-After) when the database or the broker is down."""

_DATABASE_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
                  sa_exc.TimeoutError)  # TimeoutError: no pooled connection came free in time


def _broker_errors() -> tuple:
    from kombu.exceptions import OperationalError as KombuOperationalError
    from amqp.exceptions import ConnectionError as AmqpConnectionError, RecoverableConnectionError
    return (KombuOperationalError, AmqpConnectionError, RecoverableConnectionError)


# Other dependencies' outage exceptions, by the name a client and the log are told (an
# object store's client library, say): registered by the module that talks to it.
_OUTAGES: dict[type, str] = {}


def register_outage(dependency: str, *exception_types: type) -> None:
    """Declare that `exception_types` (and their subclasses) mean `dependency` cannot be
    reached or is too busy to answer. Such a failure is then a 503 with Retry-After at the
    HTTP layer, one throttled log line instead of a traceback, and an outage for the relays,
    like a database or broker outage. Idempotent."""
    for exception_type in exception_types:
        _OUTAGES[exception_type] = dependency


def unavailable_dependency(exc: BaseException) -> str | None:
    """"database", "broker", a registered dependency (`register_outage`), or "dependency" when
    `exc` means that dependency cannot be reached (or is too busy to answer: a pool timeout, a
    deadlock victim): the request may succeed if retried later. None for any other error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _DATABASE_DOWN):
            return "database"
        if isinstance(exc, _broker_errors()):
            return "broker"
        for exception_type, dependency in list(_OUTAGES.items()):
            if isinstance(exc, exception_type):
                return dependency
        if isinstance(exc, (ConnectionError, TimeoutError)):  # a socket to something else
            return "dependency"
        exc = exc.__cause__ or exc.__context__
    return None


class OutageLog:
    """Logs a failing dependency once per outage, not once per failure: the first failure
    as one warning line (no traceback), then silence until `recovered()` (which says how
    long it lasted and how many failures were suppressed), or a reminder every `remind` s."""

    def __init__(self, logger: logging.Logger, what: str, remind: float = 300.0):
        self.logger, self.what, self.remind = logger, what, remind
        self.since: float | None = None
        self.last_logged = 0.0
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.failures += 1
        first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
        if self.since is None:
            self.since, self.last_logged = now, now
            self.logger.warning("%s unavailable: %s: %s", self.what, exc.__class__.__name__, first_line)
        elif now - self.last_logged >= self.remind:
            self.last_logged = now
            self.logger.warning("%s still unavailable after %.0f s (%d failures): %s", self.what,
                                now - self.since, self.failures, first_line)

    def recovered(self) -> None:
        if self.since is not None:
            self.logger.warning("%s available again after %.1f s (%d failures)", self.what,
                                time.monotonic() - self.since, self.failures)
        self.since, self.failures = None, 0


_REQUEST_OUTAGES: dict[str, list] = {}
_REQUEST_OUTAGES_LOCK = threading.Lock()


def log_unavailable(service: str, dependency: str, exc: BaseException) -> None:
    """For the HTTP layer: a request was answered 503 because `dependency` is down. One line
    (no traceback) at most once a minute per service and dependency, with how many requests
    were turned away since the previous line: an outage does not flood the log."""
    key = f"{service}:{dependency}"
    now = time.monotonic()
    with _REQUEST_OUTAGES_LOCK:
        state = _REQUEST_OUTAGES.setdefault(key, [0.0, 0])  # [last logged, suppressed since]
        if state[0] and now - state[0] < 60.0:
            state[1] += 1
            return
        suppressed, state[0], state[1] = state[1], now, 0
    first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
    log.warning("%s: %s unavailable, answering 503: %s: %s%s", service, dependency,
                exc.__class__.__name__, first_line,
                f" ({suppressed} more requests turned away since the last message)" if suppressed else "")


class _OutageTracebackFilter(logging.Filter):
    """Drops nameko's "error handling worker" traceback when the worker failed only because
    the database or the broker is down: the HTTP layer and the consumers already log such a
    failure in one line (throttled), and an outage must not flood the log with tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or unavailable_dependency(exc) is None


_OUTAGE_FILTER = _OutageTracebackFilter()


def quiet_outage_tracebacks() -> None:
    """Install the filter on nameko's container logger (idempotent)."""
    logger = logging.getLogger("nameko.containers")
    if _OUTAGE_FILTER not in logger.filters:
        logger.addFilter(_OUTAGE_FILTER)


# Alembic keeps its migration context in module globals, so two services starting together
# in one process (nameko run a b, ServiceRunner) must not migrate at the same time.
# (Green under eventlet's monkey patching.)
_MIGRATION_LOCK = threading.RLock()


def _green_psycopg2() -> None:
    # psycopg2 blocks the whole eventlet hub unless its wait callback is green.
    try:
        import eventlet.patcher
        if eventlet.patcher.is_monkey_patched("socket"):
            from psycogreen.eventlet import patch_psycopg
            patch_psycopg()
    except ImportError:  # pragma: no cover - eventlet always present with nameko
        pass


DEFAULT_POOL_SIZE, DEFAULT_MAX_OVERFLOW = 2, 1
"""Per service: a stack of six services then holds at most 18 PostgreSQL connections."""


def pool_limits(config: dict, service_name: str) -> tuple[int, int]:
    """A service's pool: DB_POOL_SIZE_<SERVICE> / DB_MAX_OVERFLOW_<SERVICE> if set (e.g.
    DB_POOL_SIZE_INSPECTION for a stack that takes many submissions), else the stack-wide
    DB_POOL_SIZE / DB_MAX_OVERFLOW. A stack's worst case is the sum over its services."""
    suffix = service_name.upper()

    def pick(name: str, default: int) -> int:
        value = config.get(f"{name}_{suffix}")
        return int(value if value not in (None, "") else config.get(name, default))
    return max(1, pick("DB_POOL_SIZE", DEFAULT_POOL_SIZE)), max(0, pick("DB_MAX_OVERFLOW", DEFAULT_MAX_OVERFLOW))


def make_engine(url: str, pool_size: int = DEFAULT_POOL_SIZE, max_overflow: int = DEFAULT_MAX_OVERFLOW,
                config: dict | None = None) -> Engine:
    if url.startswith("sqlite"):
        # The embedded default: one writer at a time, waited for green (plumbing/embedded.py).
        config = config or {}
        return make_sqlite_engine(url, busy_timeout=float(config.get("SQLITE_BUSY_TIMEOUT") or DEFAULT_BUSY_TIMEOUT),
                                  writer_wait=float(config.get("SQLITE_WRITER_WAIT") or DEFAULT_WRITER_WAIT))
    _green_psycopg2()
    # The shared PostgreSQL allows 100 connections for every stack and tool on it: small
    # pools, set per installation (DB_POOL_SIZE, DB_MAX_OVERFLOW).
    # values_plus_batch: an executemany UPDATE (a re-ranked peer group's moved rows) goes in
    # pages of statements per round trip instead of one round trip per row.
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow,
                         executemany_mode="values_plus_batch")


def run_migrations(engine: Engine, migrations_dir: str | Path, version_table: str) -> None:
    """alembic upgrade head, serialised across instances on PostgreSQL."""
    from alembic.config import Config
    from alembic import command

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.attributes["version_table"] = version_table
    with _MIGRATION_LOCK, engine.begin() as connection:
        # Two instances starting together must not both create the tables.
        advisory_xact_lock(connection, version_table)
        # The stack's processes share the embedded database: the whole migration (its reads
        # of the version table included) under its writer lock.
        take_writer(connection)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


RETENTION_DAYS = 30.0
"""Processed-event claims are kept this long (config PROCESSED_EVENTS_RETENTION_DAYS): far
longer than any redelivery takes (retries give up after minutes; a dead letter is replayed
within days), so a claim is never forgotten while its event may still come again."""
PRUNE_INTERVAL = 3600.0
"""Seconds between prunings (config PROCESSED_EVENTS_PRUNE_INTERVAL; 0 disables)."""
AUDIT_ANCHOR_INTERVAL = 300.0
"""Seconds between anchors of the audit log's head (config AUDIT_ANCHOR_INTERVAL; 0 disables):
what was written since the last anchor is what a rewrite could still change unnoticed."""


def prune_processed_events(engine: Engine, older_than: timedelta) -> int:
    """Delete claims older than `older_than` from every `*_processed_events` table in the
    database (each service's, whichever share it); returns how many rows went."""
    from sqlalchemy import Column, MetaData, String, Table, inspect
    from services.plumbing.sql import UtcDateTime
    cutoff = datetime.now(timezone.utc) - older_than
    names = [n for n in inspect(engine).get_table_names() if n.endswith("_processed_events")]
    pruned = 0
    for name in names:
        table = Table(name, MetaData(), Column("event_id", String(36)), Column("processed_at", UtcDateTime()))
        with engine.begin() as conn:
            pruned += conn.execute(table.delete().where(table.c.processed_at < cutoff)).rowcount or 0
    return pruned


class WorkerDatabase:
    """What a worker sees as `self.db`: a lazily opened session and a transaction helper."""

    def __init__(self, session_factory: sessionmaker, audit_context: audit.AuditContext | None = None):
        self._factory = session_factory
        self._session: Session | None = None
        self.audit_context = audit_context

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self._factory()
            if self.audit_context is not None:
                audit.attach(self._session, self.audit_context)
        return self._session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Commit on success, roll back on any error."""
        session = self.session
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise

    def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            try:
                session.close()
            except Exception as exc:  # the database went away mid-request
                # Closing rolls back on the connection, which fails when the database is
                # gone; raised from a worker's teardown it would kill the whole container.
                log.debug("closing a session on a lost connection: %s", exc)
                try:
                    session.invalidate()
                except Exception:  # nothing left to release
                    pass


class Database(DependencyProvider):
    @classmethod
    def of(cls, container) -> "Database":
        """The container's Database, for other extensions that work on it (relays, seeds)."""
        for dep in container.dependencies:
            if isinstance(dep, cls):
                return dep
        raise RuntimeError(f"{container.service_name} has no Database dependency")

    def __init__(self, migrations_dir: str | Path | None = None):
        self.migrations_dir = migrations_dir
        self.engine: Engine | None = None
        self.session_factory: sessionmaker | None = None
        self.workers: dict = {}
        self.stopped = False

    def setup(self):
        quiet_outage_tracebacks()
        service_name = self.container.service_name
        url = database_url(self.container.config, service_name)
        config = self.container.config
        self.engine = make_engine(url, *pool_limits(config, service_name), config=config)
        self.session_factory = sessionmaker(bind=self.engine, expire_on_commit=False)
        auto_migrate = str(self.container.config.get("DB_AUTO_MIGRATE", "true")).lower() != "false"
        if self.migrations_dir and auto_migrate:
            self._until_reachable(lambda: run_migrations(self.engine, self.migrations_dir,
                                                         f"alembic_version_{service_name}"))
        if auto_migrate:
            self._until_reachable(lambda: run_migrations(self.engine, audit.MIGRATIONS, audit.VERSION_TABLE))
        audit.install(self.session_factory)
        try:
            self.home = home_node(config)
        except (RuntimeError, ValueError):
            self.home = None  # entries then name no node unless the service says which
        _PROVIDERS[id(self)] = self
        log.info("%s database: %s", service_name, self.engine.url.render_as_string(hide_password=True))

    def start(self):
        interval = float(self.container.config.get("PROCESSED_EVENTS_PRUNE_INTERVAL", PRUNE_INTERVAL) or 0)
        if interval > 0:
            self.container.spawn_managed_thread(lambda: self._prune_forever(interval),
                                                identifier="prune_processed_events")
        anchor_every = float(self.container.config.get("AUDIT_ANCHOR_INTERVAL", AUDIT_ANCHOR_INTERVAL) or 0)
        if anchor_every > 0:
            self.container.spawn_managed_thread(lambda: self._anchor_forever(anchor_every),
                                                identifier="anchor_audit_log")

    def anchor_audit_log(self) -> dict | None:
        """Sign the log's head into the anchor file (AUDIT_ANCHOR_FILE), unless it is the
        service's last anchor already; the anchor, or None."""
        config = self.container.config
        with self.engine.connect() as conn:
            return audit.write_anchor(audit.anchor_file(config), audit.anchor_key(config),
                                      self.container.service_name, conn)

    def _anchor_forever(self, interval: float) -> None:
        """Every instance runs this (a timer fires in each): the file is locked while a line
        is appended, and a head already anchored is not written again."""
        outage = OutageLog(log, f"{self.container.service_name} anchoring the audit log")
        while True:
            time.sleep(interval)
            try:
                anchor = self.anchor_audit_log()
                outage.recovered()
                if anchor:
                    log.info("%s: audit log anchored at entry %d", self.container.service_name, anchor["seq"])
            except Exception as exc:
                if unavailable_dependency(exc) is None:
                    log.exception("%s: anchoring the audit log failed", self.container.service_name)
                else:
                    outage.failed(exc)

    def _prune_forever(self, interval: float) -> None:
        """Forget processed-event claims older than PROCESSED_EVENTS_RETENTION_DAYS. Every
        instance runs this: the DELETE is idempotent, so running it twice is harmless."""
        days = float(self.container.config.get("PROCESSED_EVENTS_RETENTION_DAYS", RETENTION_DAYS))
        outage = OutageLog(log, f"{self.container.service_name} pruning processed events")
        while True:
            time.sleep(interval)
            try:
                pruned = prune_processed_events(self.engine, timedelta(days=days))
                outage.recovered()
                if pruned:
                    log.info("%s: pruned %d processed-event claims older than %g days",
                             self.container.service_name, pruned, days)
            except Exception as exc:
                if unavailable_dependency(exc) is None:
                    log.exception("%s: pruning processed events failed", self.container.service_name)
                else:
                    outage.failed(exc)

    def _until_reachable(self, work, first_pause: float = 1.0, max_pause: float = 30.0):
        """Run `work`, retrying with backoff while the database cannot be reached: a stack
        started before its database (a reboot, an orchestrator starting everything at
        once) waits for it instead of exiting."""
        outage = OutageLog(log, f"{self.container.service_name} database (starting)", remind=60.0)
        pause = first_pause
        while True:
            try:
                result = work()
            except Exception as exc:
                if unavailable_dependency(exc) != "database":
                    raise
                # A container stopped or killed while it waits (an orchestrator giving up,
                # a runner shut down) must not leave this loop polling forever.
                if self.stopped:
                    raise RuntimeError(f"{self.container.service_name} stopped while waiting for its "
                                       f"database") from exc
                outage.failed(exc)
                time.sleep(pause)  # green under nameko's monkey patching
                pause = min(pause * 2, max_pause)
                continue
            outage.recovered()
            return result

    def stop(self):
        self.stopped = True
        _PROVIDERS.pop(id(self), None)
        if self.engine is not None:
            self.engine.dispose()

    def kill(self):
        self.stop()

    def get_dependency(self, worker_ctx):
        db = WorkerDatabase(self.session_factory, self._audit_context(worker_ctx))
        self.workers[worker_ctx] = db
        return db

    def _audit_context(self, worker_ctx) -> audit.AuditContext | None:
        """An AuditContext for an HTTP write request or an RPC call; None for HTTP reads,
        event consumers and timers (their writes follow from facts already on record)."""
        from nameko.rpc import Rpc
        from services.plumbing.http import UNSAFE_METHODS, JsonApi
        entrypoint = worker_ctx.entrypoint
        if isinstance(entrypoint, Rpc):
            # Whoever holds the broker's credentials (operators' tools): recorded by the
            # calling program, and only when the call commits.
            origin = (worker_ctx.call_id_stack or [worker_ctx.call_id])[0].split(".")[0]
            return audit.AuditContext(
                service=self.container.service_name, method="RPC", route=entrypoint.method_name,
                path=entrypoint.method_name, request_id=worker_ctx.call_id.rsplit(".", 1)[-1],
                actor=audit.Actor(f"rpc:{origin}", f"rpc:{origin}", "rpc"), home=self.home,
                request={"args": list(worker_ctx.args), "kwargs": dict(worker_ctx.kwargs)},
                always=False)
        if not isinstance(entrypoint, JsonApi) or not worker_ctx.args:
            return None
        request = worker_ctx.args[0]
        if getattr(request, "method", None) not in UNSAFE_METHODS:
            return None
        principal = getattr(request, "principal", None)
        if principal is None and not entrypoint.authenticated:
            # A route that does not (yet) declare its access: whoever the token proves, else anonymous.
            try:
                if entrypoint.authenticator.token_of(request):
                    principal = entrypoint.authenticator.authenticate(request)
            except Exception:  # an unverifiable token proves nobody
                principal = None
        body = worker_ctx.kwargs.get("body")
        return audit.AuditContext(
            service=self.container.service_name, method=request.method, route=entrypoint.url,
            path=request.full_path.rstrip("?") if request.query_string else request.path,
            request_id=getattr(request, "request_id", None) or worker_ctx.call_id,
            actor=audit.Actor.of(principal), home=self.home,
            request=body.model_dump(mode="json") if hasattr(body, "model_dump") else None)

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        db = self.workers.get(worker_ctx)
        context = db.audit_context if db is not None else None
        if context is None or not context.always or exc_info is not None or context.entries:
            return
        # A write that succeeded without committing here (e.g. it only published or sent)
        # is still a write: its entry in a transaction of its own.
        try:
            with self.session_factory() as session, session.begin():
                audit.append_for(session, context)
        except Exception:  # the response has gone; the operator must hear of the missing entry
            log.exception("%s: no audit entry for %s %s (request %s)", self.container.service_name,
                          context.method, context.path, context.request_id)

    def worker_teardown(self, worker_ctx):
        db = self.workers.pop(worker_ctx, None)
        if db is not None:
            db.close()
