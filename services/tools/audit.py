"""Check or lock down a database's audit log.

    python -m services.tools.audit verify [--database-url URL] [--anchors FILE] [--service NAME]
    python -m services.tools.audit anchor --service NAME [--database-url URL] [--anchors FILE]
    python -m services.tools.audit migrate [--database-url URL]
    python -m services.tools.audit seal --writer chuangwei_svc [--owner chuangwei_audit] [--database-url URL]

verify walks the hash chain and checks it against the signed anchors of its head that the
stack appends to the anchor file (--anchors, else AUDIT_ANCHOR_FILE, else
var/audit-anchors.jsonl; --service: only that service's anchors, for a stack whose services
have databases of their own). It exits 0 if every entry is present, linked and unaltered and
every anchored entry is there with its anchored hash; 1 at the first broken entry, a
rewritten chain (a hash that differs from its anchor), a cut tail (an anchored entry gone) or
an anchor line that is not signed with the key (AUDIT_ANCHOR_KEY, or the file
AUDIT_ANCHOR_KEY_FILE, else var/audit-anchor.key).

anchor appends the head now, signed, as the stack does every AUDIT_ANCHOR_INTERVAL seconds
(e.g. before a backup).

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
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from services.plumbing import audit
from services.plumbing.config import DEFAULT_DATABASE_URL

_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def verify(database_url: str, anchors: Path | None = None, service: str | None = None) -> audit.Verification:
    """The chain, checked against the anchors in `anchors` (default: AUDIT_ANCHOR_FILE)."""
    path = anchors or audit.anchor_file()
    try:
        key = audit.anchor_key(create=False)
    except audit.SecretUnavailable:
        key = None  # anchors in the file are then reported as uncheckable
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return audit.verify_anchored(conn, path, key, service)
    finally:
        engine.dispose()


def anchor(database_url: str, service: str, anchors: Path | None = None) -> dict | None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return audit.write_anchor(anchors or audit.anchor_file(), audit.anchor_key(), service, conn)
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
    parser.add_argument("action", choices=["verify", "anchor", "migrate", "seal"])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--anchors", type=Path, help="verify, anchor: the anchor file (default AUDIT_ANCHOR_FILE, "
                                                    "else var/audit-anchors.jsonl)")
    parser.add_argument("--service", help="verify: only this service's anchors; anchor: the service it is made for")
    parser.add_argument("--writer", help="seal: the service's database user")
    parser.add_argument("--owner", default="chuangwei_audit", help="seal: the role that will own the log")
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except (ValueError, SQLAlchemyError) as exc:
        print(f"错误 error: {exc}", file=sys.stderr)
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
        result = verify(args.database_url, args.anchors, args.service)
        print(json.dumps(result.__dict__, ensure_ascii=False))
        if not result.ok:
            where = f"第 {result.broken_seq} 条" if result.broken_seq else "锚文件"
            print(f"审计日志核验未通过（{where}）：{result.reason}\n"
                  f"audit log broken at entry {result.broken_seq}", file=sys.stderr)
            return 1
        if not result.anchors:
            print(f"注意：{args.anchors or audit.anchor_file()} 中没有可核验的锚，截断或整体改写无法发现; "
                  "note: no anchors to check, a cut tail or a rewritten chain would go unnoticed", file=sys.stderr)
        else:
            print(f"审计日志完好：{result.entries} 条，已对照 {result.anchors} 个锚（最新锚到第 {result.anchored_seq} 条）; "
                  f"the audit log checks out against {result.anchors} anchors", file=sys.stderr)
        return 0
    if args.action == "anchor":
        if not args.service:
            parser.error("anchor needs --service (whose anchor it is)")
        made = anchor(args.database_url, args.service, args.anchors)
        print(json.dumps(made, ensure_ascii=False) if made else "头部已有锚，未重复写入; the head is anchored already")
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
