"""The body of every service's Alembic env.py: each service has its own version table."""
from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData, create_engine

from services.plumbing.config import DEFAULT_DATABASE_URL


def run_env(target_metadata: MetaData, service_name: str) -> None:
    config = context.config
    version_table = config.attributes.get("version_table", f"alembic_version_{service_name}")
    connection = config.attributes.get("connection")
    options = dict(target_metadata=target_metadata, version_table=version_table,
                   render_as_batch=True, compare_type=True)
    if connection is not None:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    # Invoked from the alembic CLI (e.g. to autogenerate a revision).
    import os
    engine = create_engine(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    with engine.begin() as conn:
        context.configure(connection=conn, **options)
        with context.begin_transaction():
            context.run_migrations()
