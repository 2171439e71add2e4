"""Operator commands of the accounts service, working directly on the stack's database.

    python -m services.tools.accounts create-admin --node 411502008000 --username admin \\
        [--name 张伟] [--password-stdin]
    python -m services.tools.accounts rotate-key

create-admin makes a stack's first administrator (there is no default password, ever): it
reads the password from stdin (--password-stdin, first line) or asks twice without echo,
and refuses a username that exists. rotate-key makes a new token-signing key; the old one
stays published in the JWKS until the tokens it signed have expired.

The signing keys are stored encrypted with the key-encryption key the stack uses
(ACCOUNTS_KEY_ENCRYPTION_KEY, or the file ACCOUNTS_KEY_ENCRYPTION_KEY_FILE, by default
var/accounts-key-encryption.key from the checkout's root, made on first use); both commands
also encrypt any key an earlier version stored in plain text.

The database is the services' own: DATABASE_URL (or DB_URIS.accounts) from the environment
or from the stack's config (--config, infra/nameko.yaml by default, ${ENV:default} resolved
as `nameko run` does). The accounts migrations run first, so this works on a new database.
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def load_config(path: str | Path) -> dict:
    import yaml
    from nameko.cli.main import setup_yaml_parser
    setup_yaml_parser()  # ${ENV:default} in the YAML, as `nameko run` reads it
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def _database_url(config: dict, config_path: Path) -> str:
    from services.plumbing.config import database_url
    url = database_url(config, "accounts")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        # A relative SQLite path means what it means to the stack: from the checkout's root.
        base = config_path.resolve().parent.parent
        url = "sqlite:///" + str(base / url[len("sqlite:///"):])
    return url


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("新管理员密码 New administrator's password: ")
    second = getpass.getpass("再输入一次 Repeat it: ")
    if first != second:
        raise SystemExit("两次输入的密码不一致; the two passwords differ")
    return first


def key_cipher(config: dict, config_path: Path):
    """The stack's key-encryption key; a relative file path is from the checkout's root, as
    the stack (which runs there) reads it."""
    from services.accounts import operations as ops
    return ops.KeyCipher.from_config(config, base=config_path.resolve().parent.parent)


def _open(config: dict, config_path: Path):
    from sqlalchemy.orm import sessionmaker
    import services.accounts
    from services.accounts import operations as ops
    from services.plumbing.db import make_engine, run_migrations
    engine = make_engine(_database_url(config, config_path), pool_size=1, max_overflow=0)
    run_migrations(engine, Path(services.accounts.__file__).parent / "migrations", "alembic_version_accounts")
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    with sessions() as session, session.begin():
        ops.seal_plain_keys(session, key_cipher(config, config_path))
    return engine, sessions


def create_admin(args, config: dict, config_path: Path) -> int:
    from services.accounts import operations as ops
    from services.contracts.errors import DomainError
    from services.contracts.nodes import InvalidNodeCode, normalize_code
    from services.plumbing import clock
    from services.plumbing.auth import ADMINISTRATOR, Grant

    try:
        node = normalize_code(args.node)
    except InvalidNodeCode as exc:
        print(f"--node: {exc}", file=sys.stderr)
        return 2
    password = _read_password(args.password_stdin)
    settings = ops.Settings.from_config(config)
    engine, sessions = _open(config, config_path)
    try:
        with sessions() as session, session.begin():
            user = ops.new_user(session, username=args.username, display_name=args.name or args.username,
                                node=node, password=password, grants=[Grant(ADMINISTRATOR, node)],
                                actor="create-admin (operator command)", settings=settings,
                                passwords=ops.Passwords.from_config(config), now=clock.now())
            print(f"已创建管理员 {user.username}（{user.display_name}），管辖 {node}; "
                  f"created administrator {user.username} on {node}")
    except DomainError as exc:
        print(f"{exc.field}: {exc.reason}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


def rotate_key(args, config: dict, config_path: Path) -> int:
    from services.accounts import operations as ops
    from services.plumbing import clock

    if config.get("ACCOUNTS_SIGNING_KEY_FILE"):
        print("签名密钥来自 ACCOUNTS_SIGNING_KEY_FILE，请替换该文件; the signing key comes from "
              "ACCOUNTS_SIGNING_KEY_FILE: replace that file instead", file=sys.stderr)
        return 1
    engine, sessions = _open(config, config_path)
    try:
        with sessions() as session, session.begin():
            key, retired = ops.rotate_signing_key(session, clock.now(), key_cipher(config, config_path))
        print(f"新签名密钥 {key.kid}（已加密保存）；停用 {', '.join(retired) or '无'}（其签发的令牌过期前仍公布）; "
              f"new signing key {key.kid} (stored encrypted); retired {', '.join(retired) or 'none'} "
              "(published until their tokens expire)")
    finally:
        engine.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("CHUANGWEI_CONFIG", str(ROOT / "infra" / "nameko.yaml")),
                        help="the stack's nameko config (default infra/nameko.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    admin = commands.add_parser("create-admin", help="create a stack's first administrator")
    admin.add_argument("--node", required=True, help="division code the administrator manages (and below)")
    admin.add_argument("--username", required=True)
    admin.add_argument("--name", help="the person's name as records show it (default: the username)")
    admin.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    commands.add_parser("rotate-key", help="replace the token-signing key (the old one stays published a while)")
    args = parser.parse_args(argv)
    config_path = Path(args.config)
    config = load_config(config_path)
    from services.plumbing.keyfiles import SecretUnavailable
    try:
        if args.command == "create-admin":
            return create_admin(args, config, config_path)
        return rotate_key(args, config, config_path)
    except SecretUnavailable as exc:  # the key-encryption key is configured but cannot be read
        print(str(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
