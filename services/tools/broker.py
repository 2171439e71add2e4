"""A RabbitMQ node of the stack's own, under var/rabbitmq (issue 25).

`chuangwei-stack` starts it when AMQP_URI names this machine and nothing listens there, so a
street office's machine needs no broker set up by hand: `./setup.sh` installs the
rabbitmq-server package, this runs a node with its own name, ports, data and logs — the
machine's own RabbitMQ service, if any, is left alone. The node outlives the stack (a restart
of the stack finds it running); `python -m services.tools.broker status|stop` looks after it.

    python -m services.tools.broker status | start | stop
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
"""The scripts themselves: /usr/sbin/rabbitmq-server switches to the system's rabbitmq user,
its home and cookie — the machine's own broker's."""
START_TIMEOUT = 120.0


class BrokerUnavailable(SystemExit):
    """A message for the person at the console and a non-zero exit: never a traceback."""


def _bin(name: str) -> str | None:
    path = RABBIT_BIN / name
    return str(path) if path.exists() else shutil.which(name)


def _host_port(amqp_uri: str) -> tuple[str, int]:
    parts = urlsplit(amqp_uri)
    return parts.hostname or "127.0.0.1", parts.port or 5672


def is_local(amqp_uri: str) -> bool:
    return _host_port(amqp_uri)[0] in ("127.0.0.1", "localhost", "::1")


def listening(amqp_uri: str, timeout: float = 3.0) -> bool:
    """Whether anything accepts connections at the URI's host and port (never hangs)."""
    try:
        with socket.create_connection(_host_port(amqp_uri), timeout=timeout):
            return True
    except OSError:
        return False


def answers(amqp_uri: str, timeout: float = 5.0) -> str | None:
    """None when a broker answers and lets this user in; else why not, in a sentence."""
    from kombu import Connection
    try:
        with Connection(amqp_uri, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return None
    except Exception as exc:  # kombu wraps socket, auth and protocol errors alike
        return f"{type(exc).__name__}: {exc}"


def node_env(base: Path, nodename: str, port: int, dist_port: int) -> dict[str, str]:
    """The environment of a RabbitMQ node whose name, ports, cookie (HOME), data, logs and
    config all live under `base` — never the machine's own node's (the fault tests' nodes too)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
    env.update({
        "HOME": str(base / "home"),
        "RABBITMQ_NODENAME": nodename,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "pid"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    })
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalNode:
    """The node's files under `base` (default var/rabbitmq of the working directory)."""

    def __init__(self, base: Path, port: int):
        self.base, self.port = Path(base), port
        self.nodename = f"chuangwei-{port}@localhost"  # one per port: never the machine's own node

    def env(self) -> dict[str, str]:
        return node_env(self.base, self.nodename, self.port, _free_port())

    def _prepare(self) -> None:
        for sub in ("home", "mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        cookie = self.base / "home" / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16))
            cookie.chmod(0o400)
        (self.base / "enabled_plugins").write_text("[].\n")
        # guest may sign in from this machine only (RabbitMQ's default): the node listens on
        # 127.0.0.1 alone.
        (self.base / "rabbitmq.conf").write_text("listeners.tcp.default = 127.0.0.1:%d\n" % self.port)
        (self.base / "rabbitmq-env.conf").write_text("")

    def start(self, amqp_uri: str, out=sys.stdout) -> None:
        server = _bin("rabbitmq-server")
        if server is None:
            raise BrokerUnavailable(
                "未找到消息队列 RabbitMQ：请先运行 ./setup.sh（会安装 rabbitmq-server），或把 AMQP_URI 指向可用的 "
                "RabbitMQ。 (RabbitMQ is not installed: run ./setup.sh, or point AMQP_URI at a running broker.)")
        self._prepare()
        print(f"正在启动本机 RabbitMQ 节点 {self.nodename}（端口 {self.port}，数据在 {self.base}）… "
              f"(starting a RabbitMQ node of this stack's own)", file=out, flush=True)
        log = open(self.base / "log" / "console.log", "ab")
        process = subprocess.Popen([server], env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=self.base)
        deadline = time.monotonic() + START_TIMEOUT
        while answers(amqp_uri, timeout=2.0) is not None:
            if process.poll() is not None:
                raise BrokerUnavailable(
                    f"RabbitMQ 节点启动失败（退出码 {process.returncode}），日志见 {self.base / 'log'}。 "
                    f"(the RabbitMQ node exited while starting: see its log.)")
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"RabbitMQ 节点在 {START_TIMEOUT:g} 秒内未就绪，日志见 {self.base / 'log'}。 "
                    f"(the RabbitMQ node was not ready in time.)")
            time.sleep(1.0)
        (self.base / "server.pid").write_text(str(process.pid))
        print(f"RabbitMQ 已就绪（停止：python -m services.tools.broker stop）。 (RabbitMQ is ready.)",
              file=out, flush=True)

    def pid(self) -> int | None:
        try:
            pid = int((self.base / "server.pid").read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 60.0) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        if self.pid() is not None:
            os.killpg(pid, signal.SIGKILL)
        (self.base / "server.pid").unlink(missing_ok=True)
        return True


def ensure_broker(amqp_uri: str, base: Path, out=sys.stdout) -> None:
    """Make sure the stack has a broker: the one AMQP_URI names, or a node of its own under
    `base` when that URI is this machine's and nothing listens there. Never hangs: every
    wait is bounded, and what cannot be mended is said in a sentence (BrokerUnavailable)."""
    if listening(amqp_uri):
        why = answers(amqp_uri)
        if why is None:
            return
        host, port = _host_port(amqp_uri)
        raise BrokerUnavailable(
            f"{host}:{port} 上的消息队列拒绝了连接（{why}）：请检查 AMQP_URI 的用户名、密码和 vhost。 "
            f"(the broker at AMQP_URI refused the connection: check its user, password and vhost.)")
    if not is_local(amqp_uri):
        host, port = _host_port(amqp_uri)
        raise BrokerUnavailable(
            f"连接不上消息队列 {host}:{port}：请确认 RabbitMQ 已启动、网络可达，或修改 AMQP_URI。 "
            f"(nothing answers at AMQP_URI's host and port.)")
    LocalNode(base, _host_port(amqp_uri)[1]).start(amqp_uri, out=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("status", "start", "stop"))
    parser.add_argument("--dir", default="var/rabbitmq", help="the node's directory (default var/rabbitmq)")
    parser.add_argument("--amqp-uri", default=os.environ.get("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"))
    args = parser.parse_args(argv)
    node = LocalNode(Path(args.dir), _host_port(args.amqp_uri)[1])
    try:
        if args.command == "start":
            ensure_broker(args.amqp_uri, Path(args.dir))
            return 0
        if args.command == "stop":
            print("已停止本机 RabbitMQ 节点。 (stopped)" if node.stop() else "本机 RabbitMQ 节点未在运行。 (not running)")
            return 0
        why = answers(args.amqp_uri)
        print("消息队列可用。 (the broker answers)" if why is None else f"消息队列不可用：{why}")
        print(f"本机节点 {node.nodename}: " + ("运行中 (running)" if node.pid() else "未运行 (not running)"))
        return 0 if why is None else 1
    except BrokerUnavailable as exc:
        print(exc.code, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
