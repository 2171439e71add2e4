"""Run a tier's whole stack in one process: `chuangwei-stack` (or `python -m services.tools.stack`).

Every service gets its own port (see WEB_ADDRESSES in infra/nameko.yaml). Settings come
from the environment: NODE_CODE, AMQP_URI, DATABASE_URL (SQLite file by default), ...
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

def _root() -> Path:
    """Where infra/ lives: $CHUANGWEI_HOME, the working directory, or this source checkout."""
    for candidate in (os.environ.get("CHUANGWEI_HOME"), os.getcwd(), Path(__file__).resolve().parent.parent.parent):
        if candidate and (Path(candidate) / "infra" / "nameko.yaml").exists():
            return Path(candidate)
    raise SystemExit("cannot find infra/nameko.yaml: run from the Chuangwei directory or set CHUANGWEI_HOME")


ROOT = _root()
ALL_SERVICES = ["accounts", "inspection", "scoring", "tasks", "notify", "indicators", "photos", "console",
                "intake"]


def available_services() -> list[str]:
    return [name for name in ALL_SERVICES
            if importlib.util.find_spec(f"services.{name}.service") is not None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "infra" / "nameko.yaml"))
    parser.add_argument("--services", default=",".join(available_services()),
                        help="comma-separated subset of: " + ", ".join(ALL_SERVICES))
    args = parser.parse_args(argv)
    modules = [f"services.{name.strip()}.service" for name in args.services.split(",") if name.strip()]
    os.chdir(ROOT)  # relative paths in the config (divisions, SQLite file) are from the repo root
    command = [sys.executable, "-m", "nameko", "run", "--config", args.config, *modules]
    print("starting:", " ".join(command), flush=True)
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
