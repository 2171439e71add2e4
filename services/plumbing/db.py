"""One database provider for every service.

One engine per container, one session per worker (as nameko-sqlalchemy does, but for
SQLAlchemy 2, which nameko-sqlalchemy does not support). The service's Alembic
migrations run at container setup unless DB_AUTO_MIGRATE is false.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nameko.extensions import DependencyProvider
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from services.plumbing.sql import advisory_xact_lock
from services.plumbing.config import database_url

log = logging.getLogger(__name__)

# Engines of the services running in this process, for /health.
ENGINES: dict[str, Engine] = {}

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


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
        return engine
    _green_psycopg2()
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


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
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


class WorkerDatabase:
    """What a worker sees as `self.db`: a lazily opened session and a transaction helper."""

    def __init__(self, session_factory: sessionmaker):
        self._factory = session_factory
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self._factory()
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
            self._session.close()
            self._session = None


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

    def setup(self):
        service_name = self.container.service_name
        url = database_url(self.container.config, service_name)
        self.engine = make_engine(url)
        self.session_factory = sessionmaker(bind=self.engine, expire_on_commit=False)
        auto_migrate = str(self.container.config.get("DB_AUTO_MIGRATE", "true")).lower() != "false"
        if self.migrations_dir and auto_migrate:
            run_migrations(self.engine, self.migrations_dir, f"alembic_version_{service_name}")
        ENGINES[service_name] = self.engine
        log.info("%s database: %s", service_name, self.engine.url.render_as_string(hide_password=True))

    def stop(self):
        ENGINES.pop(self.container.service_name, None)
        if self.engine is not None:
            self.engine.dispose()

    def kill(self):
        self.stop()

    def get_dependency(self, worker_ctx):
        db = WorkerDatabase(self.session_factory)
        self.workers[worker_ctx] = db
        return db

    def worker_teardown(self, worker_ctx):
        db = self.workers.pop(worker_ctx, None)
        if db is not None:
            db.close()
