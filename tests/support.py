"""Real infrastructure for the tests: a fresh RabbitMQ vhost, a fresh PostgreSQL
database, services run in-process by nameko's ServiceRunner, an HTTP client and an
event tap. Nothing here is mocked; when the broker or the database is unreachable the
fixtures fail loudly (they never skip).
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_RABBIT_API = "http://guest:guest@127.0.0.1:15672"
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class InfrastructureMissing(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_vhost(amqp_uri: str, vhost: str) -> str:
    parts = urlsplit(amqp_uri)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))


class RabbitAdmin:
    """Creates and deletes vhosts through the management API, or rabbitmqctl if that is all there is."""

    def __init__(self, api_uri: str = DEFAULT_RABBIT_API):
        parts = urlsplit(api_uri)
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api"
        self.auth = (parts.username or "guest", parts.password or "guest")
        self.user = self.auth[0]

    def _api_ok(self) -> bool:
        try:
            return requests.get(f"{self.base}/overview", auth=self.auth, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def create_vhost(self, name: str) -> None:
        if self._api_ok():
            vh = quote(name, safe="")
            r = requests.put(f"{self.base}/vhosts/{vh}", auth=self.auth, timeout=10)
            r.raise_for_status()
            r = requests.put(f"{self.base}/permissions/{vh}/{self.user}", auth=self.auth, timeout=10,
                             json={"configure": ".*", "write": ".*", "read": ".*"})
            r.raise_for_status()
            return
        if shutil.which("rabbitmqctl"):
            subprocess.run(["rabbitmqctl", "add_vhost", name], check=True, capture_output=True)
            subprocess.run(["rabbitmqctl", "set_permissions", "-p", name, self.user, ".*", ".*", ".*"],
                           check=True, capture_output=True)
            return
        raise InfrastructureMissing(
            f"cannot create a RabbitMQ vhost: the management API at {self.base} is unreachable "
            "(enable it: rabbitmq-plugins enable rabbitmq_management) and rabbitmqctl is not installed")

    def delete_vhost(self, name: str) -> None:
        try:
            requests.delete(f"{self.base}/vhosts/{quote(name, safe='')}", auth=self.auth, timeout=10)
        except requests.RequestException:
            if shutil.which("rabbitmqctl"):
                subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True)

    def queue(self, vhost: str, queue: str) -> dict | None:
        if self._api_ok() or not shutil.which("rabbitmqctl"):
            r = requests.get(f"{self.base}/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}",
                             auth=self.auth, timeout=10)
            return r.json() if r.status_code == 200 else None
        # A broker without the management plugin (as create_vhost allows): ask rabbitmqctl.
        listed = subprocess.run(["rabbitmqctl", "list_queues", "-p", vhost, "name", "messages", "consumers",
                                 "--quiet", "--no-table-headers"], capture_output=True, text=True)
        for line in listed.stdout.splitlines():
            parts = line.split("\t")
            if parts[0] == queue and len(parts) == 3:
                return {"name": queue, "messages": int(parts[1]), "consumers": int(parts[2])}
        return None


def check_broker(amqp_uri: str) -> None:
    from kombu import Connection
    try:
        with Connection(amqp_uri, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        raise InfrastructureMissing(
            f"RabbitMQ is not reachable at {amqp_uri} ({exc}); start it (rabbitmq-server -detached) "
            "or set AMQP_URI") from exc


class PostgresAdmin:
    def __init__(self, admin_url: str = DEFAULT_PG_ADMIN_URL):
        self.admin_url = admin_url

    def _connect(self):
        import psycopg2
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = psycopg2.connect(self.admin_url, connect_timeout=5)
                break
            except psycopg2.OperationalError as exc:
                # The server is shared: its connection slots may all be taken for a moment.
                if "too many clients" in str(exc) and time.monotonic() < deadline:
                    time.sleep(1)
                    continue
                raise InfrastructureMissing(
                    f"PostgreSQL is not reachable at {self.admin_url} ({exc}); start it or set "
                    "TEST_PG_ADMIN_URL") from exc
        conn.autocommit = True
        return conn

    def create_database(self, name: str) -> str:
        conn = self._connect()  # not `with conn`: psycopg2 2.9 would open a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        parts = urlsplit(self.admin_url)
        return urlunsplit(("postgresql+psycopg2", parts.netloc, "/" + name, "", ""))

    def drop_database(self, name: str) -> None:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()


def scalar(database_url: str, sql: str):
    """One value from a database, read the way an operator would: a fresh connection."""
    from sqlalchemy import create_engine, text
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar_one()
    finally:
        engine.dispose()


def scalar_rows(database_url: str, sql: str) -> list[tuple]:
    """Every row of a query, read on a fresh connection (see `scalar`)."""
    from sqlalchemy import create_engine, text
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# --- identity for the tests: one issuer key per test run, tokens minted as needed ---

TEST_PROVINCE = "410000000000"
_ISSUER_KEY = None


def issuer_key():
    """The test run's token-signing key (the accounts service has its own in a real stack)."""
    global _ISSUER_KEY
    if _ISSUER_KEY is None:
        from services.plumbing.auth import SigningKey
        _ISSUER_KEY = SigningKey.generate(kid="test-issuer")
    return _ISSUER_KEY


def auth_config() -> dict:
    return {"AUTH_JWKS": issuer_key().jwks(), "AUTH_ISSUER": "chuangwei", "AUTH_AUDIENCE": "chuangwei"}


# When the test users' accounts and grants were made, by the operator command (`prov`).
TEST_ACCOUNTS_MADE = datetime(2026, 1, 1, tzinfo=timezone.utc)


def token(name: str = "测试管理员", grants=None, *, subject: str | None = None, ttl: int = 600,
          kind: str = "user", **claims_extra) -> str:
    """An access token for `grants` [(role, node), ...]; by default every role on the whole
    province, which is what tests that are not about permissions act as. A person's token
    says it came from a password sign-in (`amr`) of an account the operator made at
    TEST_ACCOUNTS_MADE (`prov`), as accounts' do; `claims_extra` overrides or adds claims."""
    from services.plumbing.auth import ROLES, GrantOrigin, access_claims, provenance_claim
    if grants is None:
        grants = [(role, TEST_PROVINCE) for role in ROLES]
    claims = access_claims(subject or f"user-{name}", name, [{"role": r, "node": n} for r, n in grants],
                           ttl=ttl, kind=kind)
    if kind == "user":
        claims["amr"] = ["pwd"]
        claims["prov"] = provenance_claim(TEST_ACCOUNTS_MADE, None, [GrantOrigin(r, n, TEST_ACCOUNTS_MADE, None)
                                                                     for r, n in grants])
    claims.update(claims_extra)
    return issuer_key().sign(claims)


def bearer(name: str = "测试管理员", grants=None, **kw) -> dict:
    return {"Authorization": f"Bearer {token(name, grants, **kw)}"}


class ApiClient:
    """A tiny JSON client for one service's HTTP port (nameko's web_session breaks on Werkzeug 3).

    Signed in by default as a test user holding every role on the province; pass `token`
    (a string, or None for an anonymous client) to act as someone else."""

    _DEFAULT = object()

    def __init__(self, base_url: str, token=_DEFAULT):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        if token is ApiClient._DEFAULT:
            token = globals()["token"]()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def as_user(self, name: str, grants, **kw) -> "ApiClient":
        """Another client on the same service, signed in as `name` with `grants`."""
        return ApiClient(self.base_url, token=token(name, grants, **kw))

    def anonymous(self) -> "ApiClient":
        return ApiClient(self.base_url, token=None)

    def request(self, method: str, path: str, json_body=None, data=None, headers=None, **kw):
        return self.session.request(method, self.base_url + path, json=json_body, data=data,
                                    headers=headers, timeout=30, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, json_body=None, **kw):
        return self.request("POST", path, json_body=json_body, **kw)

    def put(self, path, json_body=None, **kw):
        return self.request("PUT", path, json_body=json_body, **kw)


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")


def events_consumed(api: "ApiClient", service: str, event_type: str, outcomes=None) -> float:
    """How many `event_type` messages `service` has finished with, from its /metrics (every
    outcome, or only `outcomes`). A consumer counts a message after its transaction commits,
    so once this reaches the number sent, whatever those messages were going to change has
    changed: the point to check that nothing more happened, without sleeping."""
    from prometheus_client.parser import text_string_to_metric_families
    total = 0.0
    for family in text_string_to_metric_families(api.get("/metrics").text):
        if family.name != "chuangwei_events_consumed":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (sample.name == "chuangwei_events_consumed_total" and labels.get("service") == service
                    and labels.get("event_type") == event_type
                    and (outcomes is None or labels.get("outcome") in outcomes)):
                total += sample.value
    return total


def metric(api: "ApiClient", sample: str, **labels) -> float:
    """One sample's value from a service's /metrics (0 when it has not been recorded yet)."""
    from prometheus_client.parser import text_string_to_metric_families
    for family in text_string_to_metric_families(api.get("/metrics").text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def wait_consumed(api: "ApiClient", service: str, event_type: str, count: float, timeout: float = 30.0) -> None:
    """Wait until `service` has finished with `count` `event_type` messages (see events_consumed)."""
    wait_until(lambda: events_consumed(api, service, event_type) >= count, timeout,
               message=f"{service} to finish with {count:g} × {event_type}")


class EventTap:
    """Binds a private queue to exchanges and collects the events published to them."""

    def __init__(self, amqp_uri: str, bindings: list[tuple[str, str]]):
        from kombu import Connection, Exchange, Queue
        self.conn = Connection(amqp_uri)
        self.queue_name = unique_name("test-tap")
        self.channel = self.conn.channel()
        queues = []
        for exchange, routing_key in bindings:
            ex = Exchange(exchange, type="topic", durable=True)
            ex(self.channel).declare()
            queues.append(Queue(self.queue_name, exchange=ex, routing_key=routing_key, auto_delete=True))
        for q in queues:
            q(self.channel).declare()
        self.events: list[dict] = []

    def drain(self) -> list[dict]:
        while True:
            message = self.channel.basic_get(self.queue_name, no_ack=True)
            if message is None:
                break
            self.events.append(json.loads(message.body))
        return self.events

    def wait_for(self, event_type: str, count: int = 1, timeout: float = 15.0) -> list[dict]:
        def found():
            matching = [e for e in self.drain() if e.get("event_type") == event_type]
            return matching if len(matching) >= count else None
        return wait_until(found, timeout, message=f"{count} × {event_type}")

    def close(self):
        try:
            self.channel.close()
        finally:
            self.conn.release()


TEST_ANCHOR_KEY = "test-anchor-key-0123456789abcdef0123456789"


def base_config(amqp_uri: str, database_url: str, node: str = "411502008000", **extra) -> dict:
    config = {
        "AMQP_URI": amqp_uri,
        "DATABASE_URL": database_url,
        "NODE_CODE": node,
        "DIVISIONS_FILES": str(ROOT / "infra" / "divisions" / "*.csv"),
        "OUTBOX_POLL_INTERVAL": 0.2,
        "WEB_ADDRESSES": {},
        "max_workers": 10,
        "serializer": "json",
        "DB_POOL_SIZE": 3,
        "DB_MAX_OVERFLOW": 5,
        # Off unless a test turns it on: a heartbeat is an event no figure caused, and tests
        # count the events their inputs publish.
        "SCORING_HEARTBEAT_SECONDS": 0,
        # Most stacks under test run tasks or inspection without the photos service and cite
        # made-up photos; the tests of cited evidence turn the check on (production always checks).
        "EVIDENCE_CHECK": False,
        # Each stack under test anchors its audit log in a file of its own (never the checkout's
        # var/audit-anchors.jsonl, which holds a real stack's anchors), signed with a test key.
        "AUDIT_ANCHOR_FILE": str(Path(tempfile.gettempdir()) / f"chuangwei-anchors-{uuid.uuid4().hex}.jsonl"),
        "AUDIT_ANCHOR_KEY": TEST_ANCHOR_KEY,
        **auth_config(),
    }
    config.update(extra)
    return config


@contextmanager
def running_services(config: dict, *service_classes):
    """Start services in this process with nameko's ServiceRunner; stop them afterwards."""
    from nameko.runners import ServiceRunner
    runner = ServiceRunner(config)
    for cls in service_classes:
        runner.add_service(cls)
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


class MotoS3Server:
    """moto's S3-compatible HTTP server in a subprocess (`python -m moto.server`), on a free
    port: a real S3 API over real sockets for the S3 photo store, and a process the test can
    stop to see the store go down. (A subprocess, not moto's ThreadedMotoServer: the test
    process is monkey-patched by eventlet, and moto's own botocore hooks stay out of it.)"""

    ACCESS_KEY, SECRET_KEY, REGION = "testing-access-key", "testing-secret-key", "us-east-1"

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "MotoS3Server":
        import sys
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise InfrastructureMissing(f"moto.server exited with {self.process.returncode} "
                                            "(is moto[server] installed? pip install -e '.[test]')")
            try:
                requests.get(f"{self.url}/moto-api/", timeout=2)
                return self
            except requests.RequestException:
                if time.monotonic() > deadline:
                    self.stop()
                    raise InfrastructureMissing(f"moto.server did not answer on {self.url} within {timeout:.0f} s")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def client(self):
        import boto3
        return boto3.session.Session().client("s3", endpoint_url=self.url, region_name=self.REGION,
                                              aws_access_key_id=self.ACCESS_KEY,
                                              aws_secret_access_key=self.SECRET_KEY)

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"photos-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def store_config(self, bucket: str, **extra) -> dict:
        """PHOTOS_* settings for the S3 photo store against this server."""
        return {"PHOTOS_STORE": "s3", "PHOTOS_S3_ENDPOINT": self.url, "PHOTOS_S3_BUCKET": bucket,
                "PHOTOS_S3_REGION": self.REGION, "PHOTOS_S3_ACCESS_KEY": self.ACCESS_KEY,
                "PHOTOS_S3_SECRET_KEY": self.SECRET_KEY, "PHOTOS_S3_PATH_STYLE": "true", **extra}

    def __enter__(self) -> "MotoS3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
