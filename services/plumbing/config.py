"""Reading a stack's settings from the nameko config (YAML, with ${ENV:default})."""
from __future__ import annotations

import os

from services.contracts.nodes import is_within, normalize_code

DEFAULT_DATABASE_URL = "sqlite:///var/chuangwei.db"


def home_node(config: dict) -> str:
    """The division code of the office this stack serves (config NODE_CODE)."""
    raw = config.get("NODE_CODE") or os.environ.get("NODE_CODE")
    if not raw:
        raise RuntimeError("NODE_CODE is not configured: set the stack's home division code")
    return normalize_code(str(raw))


def parent_stack(config: dict) -> str | None:
    """PARENT_STACK as a 12-digit code: the tier above that runs a stack and is federated with
    this one (escalations go up the link to it). None when unset or empty: no parent stack. A
    code that is not above the stack's own NODE_CODE is a wiring mistake, refused by name."""
    raw = config.get("PARENT_STACK")
    if raw is None or not str(raw).strip():
        return None
    code = normalize_code(str(raw).strip())
    home = config.get("NODE_CODE") or os.environ.get("NODE_CODE")
    if home:
        home = normalize_code(str(home))
        if code == home or not is_within(home, code):
            raise RuntimeError(f"PARENT_STACK: {code} 不是本级 {home} 的上级区划 (the parent stack must be a tier "
                               f"above this stack's home node {home})")
    return code


def database_url(config: dict, service_name: str) -> str:
    """Per-service DB_URIS[service] wins over DATABASE_URL; SQLite file by default."""
    per_service = config.get("DB_URIS") or {}
    return (per_service.get(service_name) or config.get("DATABASE_URL")
            or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)


def service_amqp_uri(config: dict, service_name: str) -> str:
    """The broker connection a service publishes and consumes its events with: its own
    AMQP_URIS[service] (its own broker user, so its events carry a user_id only it can set),
    else the stack's AMQP_URI."""
    return (config.get("AMQP_URIS") or {}).get(service_name) or config["AMQP_URI"]


def broker_user(amqp_uri: str) -> str:
    """The user a connection to `amqp_uri` authenticates as (kombu's default: guest)."""
    from urllib.parse import unquote, urlsplit
    username = urlsplit(amqp_uri).username
    return unquote(username) if username else "guest"


def event_producers(config: dict) -> dict[str, str]:
    """EVENT_PRODUCERS: producing service → the broker user it publishes as. Empty (the
    dev and test setup, where everything connects as guest): producers are not checked by
    broker user."""
    return {service: str(user) for service, user in (config.get("EVENT_PRODUCERS") or {}).items() if user}


def number_setting(config: dict, key: str, default: float, kind: type = float):
    """A numeric setting from the stack's config; absent or empty (an unset ${VAR:}) means
    the default. A value that is no number fails at start, naming nothing worse than int()."""
    value = config.get(key)
    return kind(default) if value in (None, "") else kind(value)
