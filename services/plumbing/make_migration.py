"""Autogenerate an Alembic revision for one service against a scratch SQLite database.

    python -m services.plumbing.make_migration inspection "add places gps"
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

from services.plumbing.db import run_migrations


def main(service: str, message: str) -> None:
    migrations = Path(__file__).resolve().parent.parent / service / "migrations"
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/scratch.db")
        run_migrations(engine, migrations, f"alembic_version_{service}")
        cfg = Config()
        cfg.set_main_option("script_location", str(migrations))
        cfg.attributes["version_table"] = f"alembic_version_{service}"
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.revision(cfg, message=message, autogenerate=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "change")
