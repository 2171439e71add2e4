"""Run a tier's whole stack on this machine: `chuangwei-stack` (or `python -m services.tools.stack`).

Three `nameko run` processes by default (PROCESS_GROUPS), or one with --one-process.

Every service gets its own port (see WEB_ADDRESSES in infra/nameko.yaml). Settings come
from the environment: NODE_CODE, AMQP_URI, DATABASE_URL (SQLite file by default), ...
When AMQP_URI is this machine's and nothing listens there, a RabbitMQ node of the stack's
own is started under var/rabbitmq first (services/tools/broker.py); a broker that cannot be
had stops the command at once with a sentence saying what to do.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.tools import broker

def _root() -> Path:
    """Where infra/ lives: $CHUANGWEI_HOME, the working directory, or this source checkout."""
    for candidate in (os.environ.get("CHUANGWEI_HOME"), os.getcwd(), Path(__file__).resolve().parent.parent.parent):
        if candidate and (Path(candidate) / "infra" / "nameko.yaml").exists():
            return Path(candidate)
    raise SystemExit("cannot find infra/nameko.yaml: run from the Chuangwei directory or set CHUANGWEI_HOME")


ROOT = _root()
DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"  # infra/nameko.yaml's default
ALL_SERVICES = ["accounts", "inspection", "scoring", "tasks", "notify", "indicators", "photos", "console",
                "intake"]


PROCESS_GROUPS = (("accounts", "console", "photos", "inspection", "intake"), ("scoring",),
                  ("tasks", "notify", "indicators"))
"""The stack's processes by default (issue 25): what people wait for (sign-in, pages, photos,
submissions) in one, the scorer's CPU-heavy batches in another, the ledger and notices in a
third — so a re-ranking never holds a sign-in or a submission back, and two cores are used.
They share the embedded database through its writer lock (plumbing/embedded.py)."""


def process_groups(services: list[str], one_process: bool) -> list[list[str]]:
    if one_process:
        return [services]
    groups = [[name for name in group if name in services] for group in PROCESS_GROUPS]
    grouped = {name for group in groups for name in group}
    groups.append([name for name in services if name not in grouped])  # any service not placed above
    return [group for group in groups if group]


def supervise(commands: list[list[str]]) -> int:
    """Run each command as a child; a signal to this process goes to every child, and when one
    child ends the others are stopped too (an orchestrator or the operator restarts the stack)."""
    children = [subprocess.Popen(command) for command in commands]

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    code = 0
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        ended = next(child for child in children if child.poll() is not None)
        code = ended.returncode or 0
    finally:
        forward(signal.SIGTERM, None)
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return code if code >= 0 else 128 - code


def available_services() -> list[str]:
    return [name for name in ALL_SERVICES
            if importlib.util.find_spec(f"services.{name}.service") is not None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "infra" / "nameko.yaml"))
    parser.add_argument("--services", default=",".join(available_services()),
                        help="comma-separated subset of: " + ", ".join(ALL_SERVICES))
    parser.add_argument("--one-process", action="store_true",
                        help="every service in one process (default: three processes, see PROCESS_GROUPS)")
    parser.add_argument("--no-local-broker", action="store_true",
                        help="never start a RabbitMQ node of the stack's own; stop if AMQP_URI does not answer")
    args = parser.parse_args(argv)
    services = [name.strip() for name in args.services.split(",") if name.strip()]
    os.chdir(ROOT)  # relative paths in the config (divisions, SQLite file) are from the repo root
    amqp_uri = os.environ.get("AMQP_URI") or DEFAULT_AMQP_URI
    if args.no_local_broker:
        why = broker.answers(amqp_uri)
        if why is not None:
            raise SystemExit(f"消息队列不可用（{why}）：请启动 RabbitMQ 或修改 AMQP_URI。 (the broker does not answer.)")
    else:
        broker.ensure_broker(amqp_uri, ROOT / "var" / "rabbitmq")
    if "console" in args.services and not (ROOT / "services" / "console" / "assets" / "node_modules").exists() \
            and not os.environ.get("CONSOLE_ASSETS_DIR"):
        print("注意：控制台的图表库和中文字体未安装，仪表盘将没有图表：请运行 ./setup.sh"
              "（或 npm ci --prefix services/console/assets）。 (the console's assets are missing.)", flush=True)
    commands = [[sys.executable, "-m", "nameko", "run", "--config", args.config,
                 *(f"services.{name}.service" for name in group)]
                for group in process_groups(services, args.one_process)]
    for command in commands:
        print("starting:", " ".join(command), flush=True)
    if len(commands) == 1:
        os.execv(sys.executable, commands[0])
    sys.exit(supervise(commands))


if __name__ == "__main__":
    main()
