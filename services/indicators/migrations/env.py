from services.indicators.models import Base
from services.plumbing.alembic_env import run_env

run_env(Base.metadata, "indicators")
