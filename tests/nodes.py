"""A RabbitMQ node (or cluster) and a PostgreSQL cluster of a test's own, under a temporary
directory, on free ports: fault tests stop, kill and restart these, never the machine's
shared servers.

    with RabbitNode(tmp / "rabbit", "faults-a") as node: node.amqp_uri ...
    with PostgresCluster(tmp / "pg") as pg: pg.url("postgres") ...
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from services.tools.broker import node_env
from tests import support

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
"""The scripts themselves: /usr/sbin/rabbitmq-server switches to the system's rabbitmq
user and its home, which would share the machine broker's cookie and directories."""


def _rabbit_bin(name: str) -> str:
    path = RABBIT_BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def rabbit_password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode("ascii")


def service_permissions(service: str) -> dict[str, str]:
    """What infra/README.md ("Broker users") grants a service's own broker user."""
    own = rf"{service}\..*|evt-.*--{service}\..*"
    bound = r"(inspection|scoring|tasks|indicators|intake)\.events|chuangwei\.(children|parent)"
    tier = r"chuangwei\.(up|down)" if service in ("scoring", "tasks", "indicators") else "$^"
    return {"configure": f"^({own}|{bound}|{tier})$", "write": f"^({own}|amq\\.default|{tier})$",
            "read": f"^({own}|{bound})$"}


class RabbitNode:
    """One node: its own name, AMQP and distribution ports, mnesia, logs and Erlang cookie
    (nodes meant to cluster share one `cookie`)."""

    def __init__(self, base: Path, name: str, cookie: str | None = None, plugins: tuple[str, ...] = (),
                 users: dict[str, tuple[str, dict[str, str]]] | None = None):
        """`users`: name → (password, permissions on the default vhost), loaded at every boot
        besides guest (who may do anything: the client with write access that forges)."""
        self.base = Path(base)
        self.nodename = f"{name}-{os.getpid()}@localhost"
        self.port = support.free_port()
        self.dist_port = support.free_port()
        self.cookie = cookie or secrets.token_hex(16)
        self.plugins = plugins
        self.management_port = support.free_port() if "rabbitmq_management" in plugins else None
        self.process: subprocess.Popen | None = None
        self.home = self.base / "home"
        for sub in ("home", "mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        cookie_file = self.home / ".erlang.cookie"
        cookie_file.write_text(self.cookie)
        cookie_file.chmod(0o400)
        (self.base / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        (self.base / "rabbitmq.conf").write_text(
            "loopback_users = none\n"
            # A test node has little disk and must not block publishers for it.
            "disk_free_limit.absolute = 50MB\n"
            "cluster_partition_handling = pause_minority\n"
            f"load_definitions = {self.base / 'definitions.json'}\n"
            + (f"management.tcp.port = {self.management_port}\nmanagement.tcp.ip = 127.0.0.1\n"
               if self.management_port else ""))
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        accounts = {"guest": ("guest", everything), **(users or {})}
        (self.base / "definitions.json").write_text(json.dumps({
            "vhosts": [{"name": "/"}],
            "users": [{"name": user, "password_hash": rabbit_password_hash(password),
                       "hashing_algorithm": "rabbit_password_hashing_sha256",
                       "tags": ["administrator"] if user == "guest" else []}
                      for user, (password, _) in accounts.items()],
            "permissions": [{"user": user, "vhost": "/", **permissions}
                            for user, (_, permissions) in accounts.items()]}))
        (self.base / "rabbitmq-env.conf").write_text("")

    @property
    def amqp_uri(self) -> str:
        return self.uri_for("guest", "guest")

    @property
    def management_api(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    def uri_for(self, user: str, password: str) -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        return node_env(self.base, self.nodename, self.port, self.dist_port)

    def start(self, wait: bool = True) -> "RabbitNode":
        log = open(self.base / "log" / "console.log", "ab")
        self.process = subprocess.Popen([_rabbit_bin("rabbitmq-server")], env=self.env(), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True, cwd=self.base)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                support.check_broker(self.amqp_uri)
                if self.management_port:
                    import requests
                    requests.get(f"http://127.0.0.1:{self.management_port}/api/overview",
                                 auth=("guest", "guest"), timeout=5).raise_for_status()
                return
            except (support.InfrastructureMissing, OSError):  # requests' errors are OSErrors
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"RabbitMQ node {self.nodename} exited: see {self.base / 'log'}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"RabbitMQ node {self.nodename} did not start within {timeout:g} s")
                time.sleep(0.5)

    def ctl(self, *args: str, timeout: float = 120.0) -> str:
        done = subprocess.run([_rabbit_bin("rabbitmqctl"), "-n", self.nodename, *args], env=self.env(),
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.nodename}: {done.stdout}{done.stderr}")
        return done.stdout

    def join(self, other: "RabbitNode") -> None:
        self.ctl("stop_app")
        self.ctl("join_cluster", other.nodename)
        self.ctl("start_app")
        self.wait_ready()

    def stop(self, timeout: float = 60.0) -> None:
        """A clean shutdown (SIGTERM to the node's process group)."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """As a crash: SIGKILL, no shutdown."""
        self._signal(signal.SIGKILL, 30.0)

    def _signal(self, sig, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        except ProcessLookupError:
            pass
        # The Erlang VM's helpers (erl_child_setup, inet_gethost) share the group; epmd is
        # the machine's and is left alone.
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()


def _pg_bin(name: str) -> str:
    """initdb and pg_ctl: on PATH, or where Debian's postgresql package keeps them (newest)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if not candidates:
        raise RuntimeError(f"{name} not found: install PostgreSQL's server package")
    return str(candidates[-1])


def _as_postgres_user() -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PostgresCluster:
    """initdb + pg_ctl on a free port under `base` (trust auth for the local user postgres)."""

    def __init__(self, base: Path | None = None, standby_of: "PostgresCluster | None" = None):
        """A new cluster (initdb), or with `standby_of` a hot standby streaming from that
        primary (pg_basebackup -R), which `promote()` turns into a primary."""
        # Its own directory under /tmp: a test's tmp_path (mode 700, root's) is closed to the
        # postgres user that the server runs as under root.
        self.base = Path(base) if base is not None else Path(tempfile.mkdtemp(prefix="chuangwei-pg-"))
        self._owns_base = base is None
        self.data = self.base / "data"
        self.port = support.free_port()
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self.base.chmod(0o755)
            shutil.chown(self.base, "postgres", "postgres")
        if standby_of is None:
            self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--locale=C.UTF-8")
        else:
            self._run(_pg_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(standby_of.port), "-U", "postgres",
                      "-D", str(self.data), "-R", "-X", "stream", "--checkpoint=fast")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.base}'\nmax_connections = 60\n"
                       "fsync = on\nshared_buffers = 32MB\n")

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*_as_postgres_user(), *cmd], capture_output=True, text=True,
                              cwd=self.base, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stdout}{done.stderr}")
        return done

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> "PostgresCluster":
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.base / "server.log"), "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """mode "immediate" is a crash: no checkpoint, recovery from the WAL at the next start."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def promote(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-w", "promote")

    def create_database(self, name: str) -> str:
        return support.PostgresAdmin(self.url()).create_database(name)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop("immediate")
        if self._owns_base:
            shutil.rmtree(self.base, ignore_errors=True)
