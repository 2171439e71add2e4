from services.notify.models import Base
from services.plumbing.migrations import run_env

run_env(Base.metadata, "notify")
