"""Every service's Alembic migrations build exactly the tables its models describe."""
import importlib
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from services.plumbing.db import run_migrations

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("service", ["inspection", "scoring", "tasks", "notify", "accounts", "indicators",
                                     "intake"])
def test_migrations_match_the_models(service, tmp_path):
    models = importlib.import_module(f"services.{service}.models")
    engine = create_engine(f"sqlite:///{tmp_path}/{service}.db")
    try:
        run_migrations(engine, ROOT / "services" / service / "migrations", f"alembic_version_{service}")
        run_migrations(engine, ROOT / "services" / service / "migrations", f"alembic_version_{service}")  # idempotent
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                             "version_table": f"alembic_version_{service}"})
            assert compare_metadata(context, models.Base.metadata) == []
    finally:
        engine.dispose()
