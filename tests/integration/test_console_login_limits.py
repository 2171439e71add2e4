"""Sign-in limits through the console (issue 27): the console relays each person's address to
accounts (vouched for by the shared CONSOLE_RELAY_SECRET), so one address's failures do not
lock every console user out, and a username's lockout is per address: an attacker elsewhere
does not lock its owner out."""
from __future__ import annotations

import re

import pytest
import requests

from tests import support
from tests.integration.console_stack import console_stack
from tests.integration.test_accounts_service import PASSWORD

pytestmark = pytest.mark.integration

ATTACKER, OWNER, OTHER = "203.0.113.7", "198.51.100.9", "192.0.2.44"


@pytest.fixture(scope="module")
def stack(infrastructure, rabbit_admin, pg_admin, tmp_path_factory):
    vhost = support.unique_name("chuangwei-console-limits")
    rabbit_admin.create_vhost(vhost)
    database_url = pg_admin.create_database(support.unique_name("chuangwei_console_limits"))
    try:
        # The console sits behind a reverse proxy (that sets X-Forwarded-For) here, so that the
        # test can speak from several addresses.
        with console_stack(support.with_vhost(infrastructure["amqp_uri"], vhost), database_url,
                           tmp_path_factory.mktemp("photos"), CONSOLE_SECURE_COOKIES=False,
                           CONSOLE_TRUST_FORWARDED_FOR=True, CONSOLE_RELAY_SECRET="relay-secret-for-tests",
                           ACCOUNTS_LOGIN_MAX_FAILURES=3, ACCOUNTS_LOGIN_MAX_CLIENT_FAILURES=5,
                           ACCOUNTS_LOGIN_MAX_USERNAME_FAILURES=12) as running:
            yield running
    finally:
        rabbit_admin.delete_vhost(vhost)
        pg_admin.drop_database(database_url.rsplit("/", 1)[1])


def console_login(stack, address: str, username: str, password: str) -> requests.Response:
    session = requests.Session()
    session.headers["X-Forwarded-For"] = address
    page = session.get(f"{stack.console}/login", timeout=30)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return session.post(f"{stack.console}/login", data={"username": username, "password": password,
                                                         "csrf_token": csrf}, allow_redirects=False, timeout=30)


def attempts_from(stack, client: str) -> int:
    return support.scalar(stack.database_url, f"SELECT count(*) FROM accounts_login_attempts WHERE client = '{client}'")


def test_an_attacker_does_not_lock_the_owner_or_other_console_users_out(stack):
    # The attacker guesses wangfang's password from one address until refused.
    answers = [console_login(stack, ATTACKER, "wangfang", f"猜错的密码{n:04d}").status_code for n in range(6)]
    assert answers[:3] == [401, 401, 401] and set(answers[3:]) == {429}, answers
    # ... and guesses another's, until the address's own limit refuses it.
    others = [console_login(stack, ATTACKER, "zhangwei", f"猜错的密码9{n:03d}").status_code for n in range(3)]
    assert others == [401, 401, 429], others
    assert attempts_from(stack, ATTACKER) >= 3

    # The owner, from her own address, signs in; so does another person from another.
    assert console_login(stack, OWNER, "wangfang", PASSWORD).status_code == 303
    assert console_login(stack, OTHER, "zhangwei", PASSWORD).status_code == 303


def test_only_the_console_can_name_the_client_address(stack):
    """A client calling accounts itself cannot pick its bucket with X-Forwarded-For, nor claim
    to be the console without the secret."""
    before = attempts_from(stack, "127.0.0.1")
    for headers in ({"X-Forwarded-For": "10.9.8.7"},
                    {"X-Forwarded-For": "10.9.8.7", "X-Chuangwei-Relay": "guessed"}):
        answer = requests.post(f"{stack.urls['accounts']}/auth/login", headers=headers, timeout=30,
                               json={"username": "zhoujie", "password": "不对的密码1234"})
        assert answer.status_code == 401, answer.text
    assert attempts_from(stack, "10.9.8.7") == 0
    assert attempts_from(stack, "127.0.0.1") == before + 2


def test_a_username_attacked_from_many_addresses_still_meets_a_ceiling(stack):
    addresses = [f"203.0.113.{n}" for n in range(100, 106)]
    answers = [console_login(stack, address, "zhoujie", f"猜错的密码{n:04d}{i}").status_code
               for address in addresses for n, i in ((1, 0), (2, 1))]
    assert answers[:10] == [401] * 10 and answers[-2:] == [429, 429], answers
