"""Secrets the operator keeps outside the database: a value from config or the environment,
else a file, else a file generated on first use (0600) under var/.

    operator_secret(config, "AUDIT_ANCHOR_KEY", "AUDIT_ANCHOR_KEY_FILE", "var/audit-anchor.key",
                    generate=lambda: secrets.token_bytes(32))

The point of such a key is that a copy of the database alone is not enough: keep the file
(or set the value) where database dumps do not go. (No nameko imports: the tools use it.)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


class SecretUnavailable(ValueError):
    """The configured secret cannot be read."""


def setting(config: dict | None, key: str) -> str | None:
    """The config's value of `key`, else the environment's; empty counts as unset."""
    value = (config or {}).get(key)
    if value in (None, ""):
        value = os.environ.get(key)
    return str(value) if value not in (None, "") else None


def secret_file_path(config: dict | None, file_key: str, default_file: str, base: Path | None = None) -> Path:
    path = Path(setting(config, file_key) or default_file)
    return path if path.is_absolute() or base is None else base / path


def operator_secret(config: dict | None, value_key: str, file_key: str, default_file: str,
                    generate: Callable[[], bytes] | None, base: Path | None = None) -> bytes:
    """The secret: `value_key` if set, else the file `file_key` names (read; it must exist),
    else `default_file` (relative to `base`, or the working directory), made by `generate`
    with mode 0600 if it does not exist yet (`generate=None`: a reader's call, which makes
    nothing and raises SecretUnavailable instead)."""
    value = setting(config, value_key)
    if value:
        return value.strip().encode("utf-8")
    configured = setting(config, file_key)
    path = secret_file_path(config, file_key, default_file, base)
    if configured:
        try:
            return path.read_bytes().strip()
        except OSError as exc:
            raise SecretUnavailable(f"无法读取密钥文件 {path}（{file_key}）; cannot read the key file: {exc}") from None
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        if generate is None:
            raise SecretUnavailable(f"找不到密钥文件 {path}（{value_key} / {file_key} 均未设置）; "
                                    f"no key file {path} and neither {value_key} nor {file_key} is set") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = generate()
    # Written whole to a temporary file, then linked into place (fails if it exists): two
    # instances starting together agree on the first one's key, and none reads half a file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret + b"\n")
    try:
        os.link(temporary, path)
    except FileExistsError:
        return path.read_bytes().strip()
    finally:
        temporary.unlink(missing_ok=True)
    return secret.strip()
