"""Reading a stack's settings from the nameko config (YAML, with ${ENV:default})."""
from __future__ import annotations

import os

from services.contracts.nodes import normalize_code

DEFAULT_DATABASE_URL = "sqlite:///var/chuangwei.db"


def home_node(config: dict) -> str:
    """The division code of the office this stack serves (config NODE_CODE)."""
    raw = config.get("NODE_CODE") or os.environ.get("NODE_CODE")
    if not raw:
        raise RuntimeError("NODE_CODE is not configured: set the stack's home division code")
    return normalize_code(str(raw))


def database_url(config: dict, service_name: str) -> str:
    """Per-service DB_URIS[service] wins over DATABASE_URL; SQLite file by default."""
    per_service = config.get("DB_URIS") or {}
    return (per_service.get(service_name) or config.get("DATABASE_URL")
            or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
