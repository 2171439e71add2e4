from services.plumbing.audit import metadata
from services.plumbing.alembic_env import run_env

run_env(metadata, "audit")
