"""Fixtures: real broker and database, fresh per test (vhost and database), never skipped.

Where a Docker engine exists, pytest-docker starts RabbitMQ and PostgreSQL from
docker-compose.yml; otherwise the running local services are used (AMQP_URI,
RABBIT_API_URI, TEST_PG_ADMIN_URL override the defaults).
"""
from __future__ import annotations

# nameko needs a monkey-patched world, and it must come before anything opens a socket.
import eventlet

eventlet.monkey_patch()  # noqa: E402


def _green_ssl_context_for_modules_imported_before_the_patch() -> None:
    """pytest's plugins (schemathesis, via requests) import urllib3 before this conftest
    patches, so urllib3 holds the original ssl.SSLContext; once ssl is patched, setting
    `options` on such a context recurses forever (eventlet only repairs its own green
    class). botocore builds one for every client, even for http:// (the S3 photo store).
    `nameko run` patches before any import, so only this process needs it."""
    import ssl
    import sys
    ssl_util = sys.modules.get("urllib3.util.ssl_")
    if ssl_util is not None and getattr(ssl_util, "SSLContext", None) is not ssl.SSLContext \
            and not getattr(ssl_util, "IS_PYOPENSSL", False):
        ssl_util.SSLContext = ssl.SSLContext


_green_ssl_context_for_modules_imported_before_the_patch()

import os
import shutil
import subprocess

import pytest

from tests import support


# pytest-timeout's hook, made to work under eventlet (imported here, so pytest registers it).
from tests.timeouts import pytest_timeout_set_timer  # noqa: E402,F401


def _docker_engine_available() -> bool:
    if os.environ.get("CHUANGWEI_USE_DOCKER") == "0" or not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def docker_compose_file():
    return str(support.ROOT / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_setup():
    # Only the infrastructure: the services under test run inside the test process.
    return ["up --build -d rabbitmq postgres"]


@pytest.fixture(scope="session")
def infrastructure(request):
    """Where the broker and the database are: compose-started or already running."""
    if _docker_engine_available():
        docker_services = request.getfixturevalue("docker_services")
        docker_ip = request.getfixturevalue("docker_ip")
        amqp = f"amqp://guest:guest@{docker_ip}:{docker_services.port_for('rabbitmq', 5672)}/"
        api = f"http://guest:guest@{docker_ip}:{docker_services.port_for('rabbitmq', 15672)}"
        pg = f"postgresql://postgres:postgres@{docker_ip}:{docker_services.port_for('postgres', 5432)}/postgres"
        docker_services.wait_until_responsive(timeout=90.0, pause=1.0,
                                              check=lambda: _reachable(amqp, pg))
    else:
        amqp = os.environ.get("AMQP_URI", support.DEFAULT_AMQP_URI)
        api = os.environ.get("RABBIT_API_URI", support.DEFAULT_RABBIT_API)
        pg = os.environ.get("TEST_PG_ADMIN_URL", support.DEFAULT_PG_ADMIN_URL)
    support.check_broker(amqp)
    return {"amqp_uri": amqp, "rabbit_api": api, "pg_admin_url": pg}


def _reachable(amqp: str, pg: str) -> bool:
    try:
        support.check_broker(amqp)
        support.PostgresAdmin(pg)._connect().close()
        return True
    except support.InfrastructureMissing:
        return False


@pytest.fixture(scope="session")
def rabbit_admin(infrastructure):
    return support.RabbitAdmin(infrastructure["rabbit_api"])


@pytest.fixture
def vhost(infrastructure, rabbit_admin):
    name = support.unique_name("chuangwei-test")
    rabbit_admin.create_vhost(name)
    yield name
    rabbit_admin.delete_vhost(name)


@pytest.fixture
def amqp_uri(infrastructure, vhost):
    return support.with_vhost(infrastructure["amqp_uri"], vhost)


@pytest.fixture(scope="session")
def pg_admin(infrastructure):
    return support.PostgresAdmin(infrastructure["pg_admin_url"])


@pytest.fixture
def database_url(pg_admin):
    name = support.unique_name("chuangwei_test")
    url = pg_admin.create_database(name)
    yield url
    pg_admin.drop_database(name)


@pytest.fixture
def make_database(pg_admin):
    """Several fresh databases in one test (one per stack in the system tests)."""
    created = []

    def make():
        name = support.unique_name("chuangwei_test")
        created.append(name)
        return pg_admin.create_database(name)
    yield make
    for name in created:
        pg_admin.drop_database(name)


@pytest.fixture
def event_tap(amqp_uri):
    taps = []

    def make(*bindings):
        tap = support.EventTap(amqp_uri, list(bindings))
        taps.append(tap)
        return tap
    yield make
    for tap in taps:
        tap.close()


@pytest.fixture(autouse=True)
def real_clock():
    """The controllable clock is the process's: whatever a test set, the next test starts
    on real time (a clock left in March would back-date every later test's inspections)."""
    from services.plumbing import clock
    clock.reset()
    yield
    clock.reset()
