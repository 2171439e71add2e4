"""Check or lock down a database's audit log.

    python -m services.tools.audit verify [--database-url URL]
    python -m services.tools.audit migrate [--database-url URL]
    python -m services.tools.audit seal --writer chuangwei_svc [--owner chuangwei_audit] [--database-url URL]

verify walks the hash chain and exits 0 if every entry is present, linked and unaltered
(it prints the head: note it, a cut tail shows as a head older than one noted before), 1
at the first broken entry.

migrate creates or upgrades the log's table, for stacks started with DB_AUTO_MIGRATE=false
(every HTTP write fails until it exists: no write goes unrecorded).

seal (PostgreSQL, run as a superuser) gives `audit_log` to a role that cannot log in and
leaves the service's database user (`--writer`) only SELECT and INSERT: that user can then
neither rewrite entries nor switch the append-only trigger off. An event trigger refuses to
drop the table, which the owner of the database (and so of its `public` schema) could
otherwise do. Run it after the first start (the migrations create the table as the
service's user); a later audit-log migration needs the owner role (SET ROLE) or a superuser.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from services.plumbing import audit
from services.plumbing.config import DEFAULT_DATABASE_URL

_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def verify(database_url: str) -> audit.Verification:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return audit.verify(conn)
    finally:
        engine.dispose()


def seal(database_url: str, writer: str, owner: str = "chuangwei_audit") -> bool:
    """Lock the log down; True if `writer` is a superuser (whom nothing here binds)."""
    for role in (writer, owner):
        if not _ROLE.fullmatch(role):
            raise ValueError(f"{role!r} is not a plain PostgreSQL role name")
    engine = create_engine(database_url)
    try:
        if engine.dialect.name != "postgresql":
            raise ValueError("seal works on PostgreSQL; on SQLite protect the file instead")
        with engine.begin() as conn:
            writer_role = conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"),
                                       {"r": writer}).first()
            if writer_role is None:
                raise ValueError(f"no database role {writer!r}")
            exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": owner}).first()
            if not exists:
                conn.execute(text(f'CREATE ROLE "{owner}" NOLOGIN'))
            conn.execute(text(f'ALTER TABLE audit_log OWNER TO "{owner}"'))
            conn.execute(text(f'ALTER FUNCTION audit_log_append_only() OWNER TO "{owner}"'))
            conn.execute(text(f'REVOKE ALL ON audit_log FROM "{writer}"'))
            conn.execute(text(f'GRANT SELECT, INSERT ON audit_log TO "{writer}"'))
            # Only a superuser can make (or remove) an event trigger. Its function lives in a
            # schema of the owner's: in `public`, DROP SCHEMA public CASCADE by the database's
            # owner would take the function and the event trigger along before it fired.
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS chuangwei_audit AUTHORIZATION "{owner}"'))
            conn.execute(text(r"""
                CREATE OR REPLACE FUNCTION chuangwei_audit.audit_log_keep() RETURNS event_trigger
                LANGUAGE plpgsql AS $$
                BEGIN
                    -- the table, its triggers and their function
                    IF EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects()
                               WHERE object_identity LIKE '%audit\_log%') THEN
                        RAISE EXCEPTION 'audit_log is append-only: it cannot be dropped'
                            USING ERRCODE = 'insufficient_privilege';
                    END IF;
                END $$"""))
            conn.execute(text("DROP EVENT TRIGGER IF EXISTS audit_log_keep"))
            conn.execute(text("CREATE EVENT TRIGGER audit_log_keep ON sql_drop "
                              "EXECUTE FUNCTION chuangwei_audit.audit_log_keep()"))
        return bool(writer_role.rolsuper)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["verify", "migrate", "seal"])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--writer", help="seal: the service's database user")
    parser.add_argument("--owner", default="chuangwei_audit", help="seal: the role that will own the log")
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except (ValueError, SQLAlchemyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(parser, args) -> int:
    if args.action == "migrate":
        from services.plumbing.db import run_migrations
        engine = create_engine(args.database_url)
        try:
            run_migrations(engine, audit.MIGRATIONS, audit.VERSION_TABLE)
        finally:
            engine.dispose()
        print("audit_log is up to date")
        return 0
    if args.action == "verify":
        result = verify(args.database_url)
        print(json.dumps(result.__dict__, ensure_ascii=False))
        if not result.ok:
            print(f"audit log broken at entry {result.broken_seq}: {result.reason}", file=sys.stderr)
            return 1
        return 0
    if not args.writer:
        parser.error("seal needs --writer (the service's database user)")
    superuser = seal(args.database_url, args.writer, args.owner)
    print(f"audit_log now owned by {args.owner}; {args.writer} may only read and append")
    if superuser:
        print(f"warning: {args.writer} is a superuser and can still do anything: give the service "
              "a role of its own", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
