from services.inspection.models import Base
from services.plumbing.migrations import run_env

run_env(Base.metadata, "inspection")
