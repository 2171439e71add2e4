"""The accounts service over real HTTP, a real PostgreSQL database and a real RabbitMQ,
running next to the inspection service, which verifies accounts' tokens against accounts'
JWKS (AUTH_JWKS_URL) like every service of a stack does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from services.accounts import operations as ops
from services.accounts.service import AccountsService
from services.inspection.service import InspectionService
from services.plumbing import clock
from services.plumbing.auth import Grant, SigningKey
from tests import support

pytestmark = pytest.mark.integration

DISTRICT = "411502000000"      # 浉河区
STREET = "411502008000"        # 金牛山街道
COMMUNITY = "411502008001"     # 周家山社区
OTHER_STREET = "411502001000"  # 老城街道
PASSWORD = "金牛山街道2026检查员"
OTHER_PASSWORD = "周家山路12号公厕整改"
ACCESS_TTL = 120


@dataclass
class Stack:
    accounts: str
    inspection: str
    database_url: str
    config: dict

    def login(self, username: str, password: str = PASSWORD, **kw) -> requests.Response:
        return requests.post(f"{self.accounts}/auth/login", json={"username": username, "password": password},
                             timeout=30, **kw)

    def token(self, username: str, password: str = PASSWORD) -> str:
        response = self.login(username, password)
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def api(self, token: str | None) -> support.ApiClient:
        return support.ApiClient(self.accounts, token=token)

    def as_(self, username: str, password: str = PASSWORD) -> support.ApiClient:
        return self.api(self.token(username, password))


def stack_config(amqp_uri: str, database_url: str, **extra) -> tuple[dict, dict]:
    ports = {"accounts": support.free_port(), "inspection": support.free_port()}
    config = support.base_config(
        amqp_uri, database_url, WEB_ADDRESSES={name: f"127.0.0.1:{port}" for name, port in ports.items()},
        AUTH_JWKS_URL=f"http://127.0.0.1:{ports['accounts']}/.well-known/jwks.json",
        ACCOUNTS_ACCESS_TTL=ACCESS_TTL, **extra)
    # Not the test issuer's keys: here every service trusts what accounts publishes.
    config.pop("AUTH_JWKS")
    return config, ports


@contextmanager
def run_stack(amqp_uri: str, database_url: str, **extra):
    config, ports = stack_config(amqp_uri, database_url, **extra)
    with support.running_services(config, AccountsService, InspectionService):
        yield Stack(f"http://127.0.0.1:{ports['accounts']}", f"http://127.0.0.1:{ports['inspection']}",
                    database_url, config)


@pytest.fixture
def stack(amqp_uri, database_url):
    with run_stack(amqp_uri, database_url) as running:
        make_user(database_url, "admin", STREET, [("administrator", STREET)], name="张伟")
        yield running


def make_user(database_url: str, username: str, node: str, grants, password: str = PASSWORD,
              name: str | None = None) -> None:
    """A user written straight into the database, as the create-admin command does."""
    engine = create_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            ops.new_user(session, username=username, display_name=name or username, node=node, password=password,
                         grants=[Grant(role, n) for role, n in grants], actor="test", settings=ops.Settings(),
                         passwords=ops.Passwords(), now=clock.now())
    finally:
        engine.dispose()


def set_cookies(response: requests.Response) -> dict[str, str]:
    """Set-Cookie headers by cookie name (requests folds repeated headers into one)."""
    return {h.split("=", 1)[0]: h for h in response.raw.headers.getlist("Set-Cookie")}


def error_fields(response: requests.Response) -> list[str]:
    return [e["field"] for e in response.json()["errors"]]


# --- signing in, and the token at work in another service ---

def test_login_gives_a_token_that_another_service_accepts(stack):
    response = stack.login("Admin")  # usernames are case-insensitive
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["kind"] == "user" and body["expires_in"] == ACCESS_TTL
    assert body["refresh_token"].startswith("cwr_")
    assert body["user"]["username"] == "admin" and body["user"]["display_name"] == "张伟"
    assert body["user"]["grants"] == [{"role": "administrator", "role_name": "管理员", "node": STREET,
                                       "granted_at": body["user"]["grants"][0]["granted_at"], "granted_by": "test"}]

    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["iss"] == "chuangwei" and claims["aud"] == "chuangwei"
    assert claims["sub"] == "admin" and claims["name"] == "张伟" and claims["kind"] == "user"
    assert claims["grants"] == [{"role": "administrator", "node": STREET}]
    assert claims["exp"] - claims["iat"] == ACCESS_TTL
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "ES256"

    # The inspection service verifies it locally against accounts' JWKS.
    inspection = support.ApiClient(stack.inspection, token=body["access_token"])
    assert inspection.get("/openapi.json").status_code == 200
    assert inspection.anonymous().get("/openapi.json").status_code == 401
    forged = support.token("冒充者", [("administrator", STREET)], subject="admin")  # another issuer's key
    assert support.ApiClient(stack.inspection, token=forged).get("/openapi.json").status_code == 401

    # The console's cookies: the access token out of scripts' reach, the CSRF token readable.
    cookies = set_cookies(response)
    access = cookies["cw_access"]
    assert f"cw_access={body['access_token']}" in access
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attribute in access, access
    csrf = cookies["cw_csrf"]
    assert "Secure" in csrf and "SameSite=Strict" in csrf and "Path=/" in csrf and "HttpOnly" not in csrf
    # The cookie alone signs the browser in on another service.
    by_cookie = requests.get(f"{stack.inspection}/openapi.json", cookies={"cw_access": body["access_token"]},
                             timeout=30)
    assert by_cookie.status_code == 200

    me = stack.api(body["access_token"]).get("/me")
    assert me.status_code == 200
    assert me.json()["username"] == "admin" and me.json()["node"] == STREET


def test_openapi_document_is_valid_and_lists_every_served_route(stack):
    import re
    from openapi_spec_validator import validate
    from services.plumbing.http import ROUTES

    response = stack.as_("admin").get("/openapi.json")
    assert response.status_code == 200, response.text
    document = response.json()
    validate(document)
    served = {(method.lower(), re.sub(r"<(?:[a-z]+:)?([a-zA-Z_]+)>", r"{\1}", route.url))
              for (service, methods, _), route in ROUTES.items() if service == "accounts"
              for method in methods.split(",")}
    documented = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert served == documented
    assert {("post", "/auth/login"), ("post", "/auth/token"), ("get", "/.well-known/jwks.json")} <= documented
    public = {path for path, operations in document["paths"].items()
              for op in operations.values() if op.get("security") == []}
    assert public == {"/auth/login", "/auth/refresh", "/auth/logout", "/auth/token", "/.well-known/jwks.json",
                      "/health", "/health/live", "/health/ready", "/metrics"}


def test_jwks_document_is_valid_and_shared_by_every_instance(stack, amqp_uri):
    response = requests.get(f"{stack.accounts}/.well-known/jwks.json", timeout=30)
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert len(keys) == 1
    [key] = keys
    assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256" and key["use"] == "sig"
    assert key["kid"] and "d" not in key  # the public half only

    token = stack.token("admin")
    assert jwt.get_unverified_header(token)["kid"] == key["kid"]
    claims = jwt.decode(token, key=jwt.PyJWK(key), algorithms=["ES256"], audience="chuangwei", issuer="chuangwei")
    assert claims["sub"] == "admin"

    # A second instance on the same database publishes and signs with the same key.
    config, ports = stack_config(amqp_uri, stack.database_url)
    with support.running_services(config, AccountsService):
        second = f"http://127.0.0.1:{ports['accounts']}"
        assert requests.get(f"{second}/.well-known/jwks.json", timeout=30).json()["keys"] == keys
        token = requests.post(f"{second}/auth/login", json={"username": "admin", "password": PASSWORD},
                              timeout=30).json()["access_token"]
        assert support.ApiClient(stack.inspection, token=token).get("/openapi.json").status_code == 200


def test_a_rotated_key_stays_published_until_its_tokens_expire(stack):
    old_token = stack.token("admin")
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    engine = create_engine(stack.database_url)
    try:
        with Session(engine) as session, session.begin():
            new_key, retired = ops.rotate_signing_key(session, clock.now(), ops.KeyCipher.from_config(stack.config))
    finally:
        engine.dispose()
    assert retired == [old_kid]
    kids = [k["kid"] for k in requests.get(f"{stack.accounts}/.well-known/jwks.json", timeout=30).json()["keys"]]
    assert set(kids) == {old_kid, new_key.kid}
    assert support.ApiClient(stack.inspection, token=old_token).get("/openapi.json").status_code == 200


def signing_key_rows(database_url: str) -> list[tuple]:
    """What a dump of the database holds of the issuer's keys: the rows, read with SQL."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(
                "SELECT kid, private_pem, public_jwk::text, created_at, retired_at FROM accounts_signing_keys"))]
    finally:
        engine.dispose()


def test_a_dump_of_the_database_cannot_sign_a_token(amqp_uri, database_url, tmp_path):
    """The issuer's private key is stored encrypted with a key kept outside the database: the
    rows read with SQL hold no PEM, and without the operator's key they open to nothing."""
    key_file = tmp_path / "kek"
    key_file.write_bytes(Fernet.generate_key())
    with run_stack(amqp_uri, database_url, ACCOUNTS_KEY_ENCRYPTION_KEY_FILE=str(key_file)) as running:
        make_user(database_url, "admin", STREET, [("administrator", STREET)])
        token = running.token("admin")
        rows = signing_key_rows(database_url)
        assert len(rows) == 1
        dump = repr(rows)
        assert "PRIVATE KEY" not in dump and "-----BEGIN" not in dump
        kid, stored = rows[0][0], rows[0][1]
        assert jwt.get_unverified_header(token)["kid"] == kid
        with pytest.raises(ops.KeyUnreadable, match="无法解密"):
            ops.KeyCipher(Fernet.generate_key()).open(stored, kid)
        # The operator's key opens it: the key that signed the token.
        private_pem = ops.KeyCipher(key_file.read_bytes()).open(stored, kid)
        jwt.decode(token, key=jwt.PyJWK(SigningKey.from_pem(private_pem, kid=kid).public_jwk), algorithms=["ES256"],
                   audience="chuangwei", issuer="chuangwei")

        # A rotation (the operator's command uses the same key) stores the new key encrypted too.
        engine = create_engine(database_url)
        try:
            with Session(engine) as session, session.begin():
                ops.rotate_signing_key(session, clock.now(), ops.KeyCipher(key_file.read_bytes()))
        finally:
            engine.dispose()
        assert len(signing_key_rows(database_url)) == 2
        assert "PRIVATE KEY" not in repr(signing_key_rows(database_url))


def test_a_key_an_earlier_version_stored_in_plain_text_is_encrypted_at_start(amqp_uri, database_url, tmp_path):
    from services.plumbing.db import run_migrations
    import services.accounts
    old = SigningKey.generate()
    engine = create_engine(database_url)
    try:
        run_migrations(engine, Path(services.accounts.__file__).parent / "migrations", "alembic_version_accounts")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO accounts_signing_keys (kid, private_pem, public_jwk, created_at) "
                              "VALUES (:kid, :pem, CAST(:jwk AS json), now())"),
                         {"kid": old.kid, "pem": old.private_pem.decode("ascii"), "jwk": json.dumps(old.public_jwk)})
    finally:
        engine.dispose()
    assert "PRIVATE KEY" in repr(signing_key_rows(database_url))  # as an earlier version left it

    key_file = tmp_path / "kek"
    key_file.write_text("运维人员保管的口令 an operator's passphrase of some length")
    with run_stack(amqp_uri, database_url, ACCOUNTS_KEY_ENCRYPTION_KEY_FILE=str(key_file)) as running:
        rows = signing_key_rows(database_url)
        assert [row[0] for row in rows] == [old.kid]
        assert "PRIVATE KEY" not in repr(rows) and rows[0][1].startswith(ops.SEALED_PREFIX)
        make_user(database_url, "admin", STREET, [("administrator", STREET)])
        token = running.token("admin")  # still signed with the same key, now decrypted
        assert jwt.get_unverified_header(token)["kid"] == old.kid
        jwt.decode(token, key=jwt.PyJWK(old.public_jwk), algorithms=["ES256"], audience="chuangwei",
                   issuer="chuangwei")
        assert support.ApiClient(running.inspection, token=token).get("/openapi.json").status_code == 200


def test_a_configured_key_file_signs_the_tokens(amqp_uri, database_url, tmp_path):
    from services.plumbing.auth import SigningKey
    key = SigningKey.generate()
    path = tmp_path / "issuer.pem"
    path.write_bytes(key.private_pem)
    with run_stack(amqp_uri, database_url, ACCOUNTS_SIGNING_KEY_FILE=str(path)) as running:
        make_user(database_url, "admin", STREET, [("administrator", STREET)])
        document = requests.get(f"{running.accounts}/.well-known/jwks.json", timeout=30).json()
        assert [k["kid"] for k in document["keys"]] == [key.kid]
        token = running.token("admin")
        assert jwt.get_unverified_header(token)["kid"] == key.kid
        assert support.ApiClient(running.inspection, token=token).get("/openapi.json").status_code == 200


def test_wrong_password_and_unknown_user_are_refused_alike(stack):
    wrong = stack.login("admin", "not-the-password-1")
    unknown = stack.login("nobody", "not-the-password-1")
    disabled_like = stack.login("admin ", "")  # empty password: refused by validation, 422
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert error_fields(wrong) == ["password"]
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert "cw_access" not in set_cookies(wrong)
    assert disabled_like.status_code == 422 and error_fields(disabled_like) == ["password"]


def test_failed_logins_are_rate_limited_per_username(stack):
    for _ in range(5):
        assert stack.login("admin", "not-the-password-1").status_code == 401
    limited = stack.login("admin")  # even the right password now waits
    assert limited.status_code == 429, limited.text
    assert 0 < int(limited.headers["Retry-After"]) <= 900
    assert error_fields(limited) == ["username"]
    # An unknown username is limited the same way: the limit reveals nothing.
    for _ in range(5):
        assert stack.login("ghost", "not-the-password-1").status_code == 401
    assert stack.login("ghost", "not-the-password-1").status_code == 429
    # Other usernames are unaffected.
    make_user(stack.database_url, "wangfang", STREET, [("inspector", STREET)])
    assert stack.login("wangfang").status_code == 200


def test_failed_logins_are_rate_limited_per_client(amqp_uri, database_url):
    with run_stack(amqp_uri, database_url, ACCOUNTS_LOGIN_MAX_CLIENT_FAILURES=6) as running:
        make_user(database_url, "admin", STREET, [("administrator", STREET)])
        for i in range(6):  # one failure each for six usernames: below the per-username limit
            assert running.login(f"guess{i}", "not-the-password-1").status_code == 401
        limited = running.login("admin")
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0


def test_refresh_is_refused_once_the_user_is_disabled(stack):
    admin = stack.as_("admin")
    created = admin.post("/users", {"username": "WangFang", "display_name": "王芳", "node": STREET,
                                    "password": OTHER_PASSWORD, "grants": [{"role": "inspector", "node": STREET}]})
    assert created.status_code == 201, created.text
    assert created.json()["username"] == "wangfang" and created.json()["created_by"] == "张伟 (admin)"

    signed_in = stack.login("wangfang", OTHER_PASSWORD).json()
    refreshed = requests.post(f"{stack.accounts}/auth/refresh", json={"refresh_token": signed_in["refresh_token"]},
                              timeout=30)
    assert refreshed.status_code == 200, refreshed.text
    fresh = refreshed.json()["access_token"]
    assert jwt.decode(fresh, options={"verify_signature": False})["grants"] == [{"role": "inspector", "node": STREET}]
    assert "cw_access" in set_cookies(refreshed)

    disabled = admin.post("/users/wangfang/disable")
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    assert disabled.json()["disabled_by"] == "张伟 (admin)"
    again = requests.post(f"{stack.accounts}/auth/refresh", json={"refresh_token": signed_in["refresh_token"]},
                          timeout=30)
    assert again.status_code == 401 and error_fields(again) == ["refresh_token"]
    assert stack.login("wangfang", OTHER_PASSWORD).status_code == 401

    assert admin.post("/users/wangfang/enable").status_code == 200
    # Disabling ended the session for good; signing in again starts a new one.
    assert requests.post(f"{stack.accounts}/auth/refresh", json={"refresh_token": signed_in["refresh_token"]},
                         timeout=30).status_code == 401
    assert stack.login("wangfang", OTHER_PASSWORD).status_code == 200


def test_logout_revokes_the_refresh_token_and_clears_the_cookies(stack):
    signed_in = stack.login("admin").json()
    out = requests.post(f"{stack.accounts}/auth/logout", json={"refresh_token": signed_in["refresh_token"]},
                        timeout=30)
    assert out.status_code == 204
    cleared = set_cookies(out)
    assert "cw_access=;" in cleared["cw_access"] and "cw_csrf=;" in cleared["cw_csrf"]
    refused = requests.post(f"{stack.accounts}/auth/refresh", json={"refresh_token": signed_in["refresh_token"]},
                            timeout=30)
    assert refused.status_code == 401


# --- API tokens for machines ---

def test_api_token_exchange_and_revocation(stack):
    admin = stack.as_("admin")
    created = admin.post("/api-tokens", {"name": "大屏展示", "grants": [{"role": "administrator", "node": COMMUNITY}],
                                         "expires_at": "2027-03-31T23:59:59+08:00"})
    assert created.status_code == 201, created.text
    assert created.headers["Cache-Control"] == "no-store"
    token = created.json()
    secret = token["secret"]
    assert secret.startswith("cwt_") and token["hint"] == secret[:8] and token["status"] == "active"
    assert token["owner"] == "admin" and token["created_by"] == "张伟 (admin)"

    exchanged = requests.post(f"{stack.accounts}/auth/token", json={"token": secret}, timeout=30)
    assert exchanged.status_code == 200, exchanged.text
    assert exchanged.json()["kind"] == "machine" and "cw_access" not in set_cookies(exchanged)
    claims = jwt.decode(exchanged.json()["access_token"], options={"verify_signature": False})
    assert claims["kind"] == "machine" and claims["sub"] == f"token:{token['token_id']}"
    assert claims["grants"] == [{"role": "administrator", "node": COMMUNITY}] and claims["owner"] == "admin"
    machine = support.ApiClient(stack.inspection, token=exchanged.json()["access_token"])
    assert machine.get("/openapi.json").status_code == 200
    # A machine cannot mint tokens of its own.
    minted = stack.api(exchanged.json()["access_token"]).post(
        "/api-tokens", {"name": "子令牌", "grants": [{"role": "administrator", "node": COMMUNITY}]})
    assert minted.status_code == 403

    listed = admin.get("/api-tokens")
    assert listed.status_code == 200
    assert [t["token_id"] for t in listed.json()] == [token["token_id"]]
    assert "secret" not in listed.json()[0] and listed.json()[0]["last_used_at"] is not None

    revoked = admin.post(f"/api-tokens/{token['token_id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert revoked.json()["revoked_by"] == "张伟 (admin)"
    refused = requests.post(f"{stack.accounts}/auth/token", json={"token": secret}, timeout=30)
    assert refused.status_code == 401 and error_fields(refused) == ["token"]
    assert admin.get("/api-tokens").json() == []
    assert [t["status"] for t in admin.get("/api-tokens?include_inactive=true").json()] == ["revoked"]


def test_api_tokens_carry_no_more_than_their_creator(stack):
    make_user(stack.database_url, "lisi", STREET, [("inspector", STREET)])
    lisi = stack.as_("lisi")
    for grants, field in [([{"role": "inspector", "node": DISTRICT}], "grants[0]"),
                          ([{"role": "viewer", "node": COMMUNITY}], "grants[0]"),
                          ([{"role": "inspector", "node": COMMUNITY}, {"role": "administrator", "node": STREET}],
                           "grants[1]")]:
        response = lisi.post("/api-tokens", {"name": "采集终端", "grants": grants})
        assert response.status_code == 403, (grants, response.text)
        assert error_fields(response) == [field]
    ok = lisi.post("/api-tokens", {"name": "采集终端", "grants": [{"role": "inspector", "node": COMMUNITY}]})
    assert ok.status_code == 201, ok.text
    assert lisi.post("/api-tokens", {"name": "采集终端", "grants": [{"role": "inspector", "node": COMMUNITY}]}
                     ).status_code == 409
    # Only the owner or an administrator of the owner revokes; the owner's disabling stops it.
    make_user(stack.database_url, "zhaoliu", STREET, [("inspector", STREET)])
    assert stack.as_("zhaoliu").post(f"/api-tokens/{ok.json()['token_id']}/revoke").status_code == 403
    assert stack.as_("admin").post("/users/lisi/disable").status_code == 200
    refused = requests.post(f"{stack.accounts}/auth/token", json={"token": ok.json()["secret"]}, timeout=30)
    assert refused.status_code == 401


def test_api_token_expiry_is_checked(stack):
    admin = stack.as_("admin")
    for expires_at in ["1999-12-31T23:59:59+08:00", "2100-01-01T00:00:00+08:00", "2027-03-31T23:59:59",
                       "2020-01-01T00:00:00+08:00", "2099-12-31T00:00:00+08:00", "明天"]:
        response = admin.post("/api-tokens", {"name": "x", "expires_at": expires_at,
                                              "grants": [{"role": "administrator", "node": STREET}]})
        assert response.status_code == 422, (expires_at, response.text)
        assert error_fields(response) == ["expires_at"], (expires_at, response.text)
    assert admin.get("/api-tokens?include_inactive=true").json() == []


# --- administrators, within their subtree ---

def test_an_administrator_manages_only_its_subtree(stack):
    make_user(stack.database_url, "district-admin", DISTRICT, [("administrator", DISTRICT)])
    make_user(stack.database_url, "laocheng", OTHER_STREET, [("inspector", OTHER_STREET)])
    admin = stack.as_("admin")

    def user(username, node, grants=()):
        return {"username": username, "display_name": "周敏", "node": node, "password": OTHER_PASSWORD,
                "grants": [{"role": r, "node": n} for r, n in grants]}

    assert admin.post("/users", user("zhoumin", COMMUNITY, [("rectifier", COMMUNITY)])).status_code == 201
    above = admin.post("/users", user("boss", DISTRICT))
    assert above.status_code == 403 and error_fields(above) == ["node"]
    beside = admin.post("/users", user("neighbour", STREET, [("viewer", STREET), ("inspector", OTHER_STREET)]))
    assert beside.status_code == 403 and error_fields(beside) == ["grants[1].node"]
    grant_up = admin.post("/users/zhoumin/grants", {"role": "viewer", "node": DISTRICT})
    assert grant_up.status_code == 403 and error_fields(grant_up) == ["node"]
    grant = admin.post("/users/zhoumin/grants", {"role": "viewer", "node": COMMUNITY})
    assert grant.status_code == 201
    assert {(g["role"], g["node"]) for g in grant.json()["grants"]} == {("rectifier", COMMUNITY),
                                                                       ("viewer", COMMUNITY)}
    assert admin.post("/users/zhoumin/grants", {"role": "viewer", "node": COMMUNITY}).status_code == 409

    # Users outside the subtree are neither listed nor managed.
    assert [u["username"] for u in admin.get("/users").json()] == ["admin", "zhoumin"]
    assert admin.get(f"/users?node={DISTRICT}").status_code == 403
    for path in ("/users/laocheng", "/users/district-admin"):
        assert admin.get(path).status_code == 403
    assert admin.post("/users/laocheng/disable").status_code == 403
    assert admin.put("/users/laocheng/password", {"new_password": OTHER_PASSWORD}).status_code == 403
    assert admin.get("/users/nobody").status_code == 404

    # The district administrator sees the street's users too (its subtree).
    district = stack.as_("district-admin")
    assert {u["username"] for u in district.get("/users").json()} == {"admin", "zhoumin", "laocheng",
                                                                      "district-admin"}
    assert [u["username"] for u in district.get(f"/users?node={STREET}&limit=1&offset=1").json()] == ["zhoumin"]

    removed = admin.request("DELETE", f"/users/zhoumin/grants/viewer/{COMMUNITY}")
    assert removed.status_code == 200 and [g["role"] for g in removed.json()["grants"]] == ["rectifier"]
    assert admin.request("DELETE", f"/users/zhoumin/grants/viewer/{COMMUNITY}").status_code == 404
    assert admin.request("DELETE", f"/users/laocheng/grants/inspector/{OTHER_STREET}").status_code == 403
    # No administrator locks itself out.
    assert admin.post("/users/admin/disable").status_code == 409
    assert admin.request("DELETE", f"/users/admin/grants/administrator/{STREET}").status_code == 409


def test_reset_password_signs_the_user_out(stack):
    admin = stack.as_("admin")
    assert admin.post("/users", {"username": "liqiang", "display_name": "李强", "node": STREET,
                                 "password": OTHER_PASSWORD}).status_code == 201
    session = stack.login("liqiang", OTHER_PASSWORD).json()
    weak = admin.put("/users/liqiang/password", {"new_password": "12345"})
    assert weak.status_code == 422 and error_fields(weak) == ["new_password"]
    assert admin.put("/users/liqiang/password", {"new_password": "浉河区新密码2026"}).status_code == 200
    assert requests.post(f"{stack.accounts}/auth/refresh", json={"refresh_token": session["refresh_token"]},
                         timeout=30).status_code == 401
    assert stack.login("liqiang", OTHER_PASSWORD).status_code == 401
    assert stack.login("liqiang", "浉河区新密码2026").status_code == 200


def test_users_change_their_own_password(stack):
    make_user(stack.database_url, "wangfang", STREET, [("inspector", STREET)])
    me = stack.as_("wangfang")
    wrong = me.put("/me/password", {"current_password": "not-the-password-1", "new_password": OTHER_PASSWORD})
    assert wrong.status_code == 403 and error_fields(wrong) == ["current_password"]
    weak = me.put("/me/password", {"current_password": PASSWORD, "new_password": "wangfang-1"})
    assert weak.status_code == 422 and error_fields(weak) == ["new_password"]
    changed = me.put("/me/password", {"current_password": PASSWORD, "new_password": OTHER_PASSWORD})
    assert changed.status_code == 200 and changed.json()["username"] == "wangfang"
    assert stack.login("wangfang").status_code == 401
    assert stack.login("wangfang", OTHER_PASSWORD).status_code == 200


ADMIN_ENDPOINTS = [
    ("POST", "/users", {"username": "x1", "display_name": "x", "node": STREET, "password": OTHER_PASSWORD}),
    ("GET", "/users", None),
    ("GET", "/users/admin", None),
    ("POST", "/users/admin/disable", None),
    ("POST", "/users/admin/enable", None),
    ("PUT", "/users/admin/password", {"new_password": OTHER_PASSWORD}),
    ("POST", "/users/admin/grants", {"role": "viewer", "node": STREET}),
    ("DELETE", f"/users/admin/grants/administrator/{STREET}", None),
]
SIGNED_IN_ENDPOINTS = [
    ("GET", "/me", None),
    ("PUT", "/me/password", {"current_password": PASSWORD, "new_password": OTHER_PASSWORD}),
    ("POST", "/api-tokens", {"name": "x", "grants": [{"role": "viewer", "node": STREET}]}),
    ("GET", "/api-tokens", None),
    ("POST", "/api-tokens/00000000-0000-0000-0000-000000000000/revoke", None),
]


def test_anonymous_callers_get_401_and_non_administrators_403(stack):
    make_user(stack.database_url, "viewer", STREET, [("viewer", STREET), ("inspector", STREET)])
    anonymous, viewer = stack.api(None), stack.as_("viewer")
    for method, path, body in ADMIN_ENDPOINTS + SIGNED_IN_ENDPOINTS:
        response = anonymous.request(method, path, json_body=body)
        assert response.status_code == 401, (method, path, response.text)
        assert error_fields(response) == ["Authorization"]
    for method, path, body in ADMIN_ENDPOINTS:
        response = viewer.request(method, path, json_body=body)
        assert response.status_code == 403, (method, path, response.text)
    # Nothing changed.
    assert [u["username"] for u in stack.as_("admin").get("/users").json()] == ["admin", "viewer"]


CALLERS = {  # username → the node it administers (None: no administrator grant)
    "street-admin": STREET, "district-admin": DISTRICT, "community-admin": COMMUNITY, "street-inspector": None}
TARGETS = {"t-community": COMMUNITY, "t-street": STREET, "t-other-street": OTHER_STREET, "t-district": DISTRICT}


def test_role_node_action_matrix(stack):
    """Every caller × target office × action: allowed exactly when the caller administers the
    target's office (its node or an ancestor); otherwise 403 and nothing changes."""
    from services.contracts.nodes import is_within
    for username, node in CALLERS.items():
        make_user(stack.database_url, username, node or STREET,
                  [("administrator", node)] if node else [("inspector", STREET), ("viewer", STREET)])
    for username, node in TARGETS.items():
        make_user(stack.database_url, username, node, [("viewer", node)])
    serial = iter(range(1000))
    for caller, admin_node in CALLERS.items():
        api = stack.as_(caller)
        for target, target_node in TARGETS.items():
            allowed = admin_node is not None and is_within(target_node, admin_node)
            cells = [
                ("read", api.get(f"/users/{target}"), 200),
                ("enable", api.post(f"/users/{target}/enable"), 200),
                ("grant", api.post(f"/users/{target}/grants", {"role": "inspector", "node": target_node}), 201),
                ("create", api.post("/users", {"username": f"new-{next(serial)}", "display_name": "新用户",
                                              "node": target_node, "password": OTHER_PASSWORD}), 201),
            ]
            for action, response, ok in cells:
                expected = ok if allowed else 403
                assert response.status_code == expected, (caller, target, action, response.text)
            if allowed:
                removed = api.request("DELETE", f"/users/{target}/grants/inspector/{target_node}")
                assert removed.status_code == 200, removed.text
                [given] = [g for g in cells[2][1].json()["grants"] if g["role"] == "inspector"]
                assert given["granted_by"] == caller  # the signed-in caller, nobody it could name
    # Denied cells changed nothing: no inspector grant anywhere, only the allowed creations.
    district = stack.as_("district-admin")
    listed = district.get("/users?limit=1000").json()
    assert all(g["role"] != "inspector" for u in listed if u["username"].startswith("t-") for g in u["grants"])
    created = sorted(u["node"] for u in listed if u["username"].startswith("new-"))
    expected_created = sorted(t for a in CALLERS.values() if a for t in TARGETS.values() if is_within(t, a))
    assert created == expected_created


def test_request_bodies_cannot_name_the_actor(stack):
    admin = stack.as_("admin")
    body = {"username": "zhoumin", "display_name": "周敏", "node": STREET, "password": OTHER_PASSWORD}
    for field in ("created_by", "actor", "role"):
        response = admin.post("/users", {**body, field: "王芳"})
        assert response.status_code == 422 and error_fields(response) == [field]
    assert admin.post("/users", body).json()["created_by"] == "张伟 (admin)"


def test_bad_input_gets_a_4xx_naming_the_field(stack):
    admin = stack.as_("admin")
    base = {"username": "zhoumin", "display_name": "周敏", "node": STREET, "password": OTHER_PASSWORD}
    for change, field in [({"username": "周敏"}, "username"), ({"username": "a"}, "username"),
                          ({"node": "4115020080"}, "node"), ({"display_name": ""}, "display_name"),
                          ({"display_name": "   "}, "display_name"), ({"password": "short"}, "password"),
                          ({"grants": [{"role": "boss", "node": STREET}]}, "grants[0].role"),
                          ({"extra": 1}, "extra")]:
        response = admin.post("/users", {**base, **change})
        assert response.status_code == 422, (change, response.text)
        assert error_fields(response) == [field], (change, response.json())
    assert admin.post("/users", base).status_code == 201
    duplicate = admin.post("/users", {**base, "username": "ZhouMin"})
    assert duplicate.status_code == 409 and error_fields(duplicate) == ["username"]
    for query, field in [("offset=1000001", "query.offset"), ("limit=0", "query.limit"), ("node=abc", "query.node")]:
        response = admin.get(f"/users?{query}")
        assert response.status_code == 422 and error_fields(response) == [field], response.text
    assert admin.get("/api-tokens?offset=-1").status_code == 422
    assert admin.request("DELETE", "/users/zhoumin/grants/boss/411502008000").status_code == 404
    assert admin.request("DELETE", "/users/zhoumin/grants/viewer/12").status_code == 404
    assert admin.post(f"/api-tokens/{'x' * 300}/revoke").status_code == 404
    too_long = stack.login("admin", "x" * 257)
    assert too_long.status_code == 422 and error_fields(too_long) == ["password"]


# --- the first administrator, by command ---

def run_command(database_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "services.tools.accounts", *args], input=stdin, env=env,
                          cwd=support.ROOT, capture_output=True, text=True, timeout=120)


def test_create_admin_command_makes_the_first_administrator(amqp_uri, database_url):
    # On a database no service has touched yet: the command runs the migrations itself.
    command = ("create-admin", "--node", STREET, "--username", "admin", "--name", "张伟", "--password-stdin")
    done = run_command(database_url, *command, stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert "admin" in done.stdout and PASSWORD not in done.stdout + done.stderr

    again = run_command(database_url, *command, stdin=OTHER_PASSWORD + "\n")
    assert again.returncode == 1 and "username" in again.stderr
    weak = run_command(database_url, "create-admin", "--node", STREET, "--username", "admin2", "--password-stdin",
                       stdin="1234567890\n")
    assert weak.returncode == 1 and "password" in weak.stderr

    with run_stack(amqp_uri, database_url) as running:
        signed_in = running.login("admin")
        assert signed_in.status_code == 200, signed_in.text
        assert signed_in.json()["user"]["display_name"] == "张伟"
        assert [(g["role"], g["node"]) for g in signed_in.json()["user"]["grants"]] == [("administrator", STREET)]
        assert running.login("admin", OTHER_PASSWORD).status_code == 401  # the second run changed nothing
        assert running.login("admin2", "1234567890").status_code == 401
        admin = running.api(signed_in.json()["access_token"])
        assert admin.post("/users", {"username": "wangfang", "display_name": "王芳", "node": COMMUNITY,
                                     "password": OTHER_PASSWORD}).status_code == 201

        old_kid = jwt.get_unverified_header(signed_in.json()["access_token"])["kid"]
        rotated = run_command(database_url, "rotate-key")
        assert rotated.returncode == 0, rotated.stderr
        assert old_kid in rotated.stdout
        kids = [k["kid"] for k in requests.get(f"{running.accounts}/.well-known/jwks.json", timeout=30).json()["keys"]]
        assert len(kids) == 2 and old_kid in kids


def test_refresh_tokens_rotate_and_a_replayed_one_ends_the_session(stack):
    """Issue 27: the same refresh token worked twice. Each renewal replaces it; the replaced
    one still renews within the grace (a page renewing twice at once), and replayed after it
    ends the sign-in's whole session."""
    from datetime import timedelta

    from services.plumbing import clock

    def renew(token):
        return requests.post(f"{stack.accounts}/auth/refresh", json={"refresh_token": token}, timeout=30)

    signed_in = stack.login("admin").json()
    first = signed_in["refresh_token"]
    renewed = renew(first)
    assert renewed.status_code == 200, renewed.text
    second = renewed.json()["refresh_token"]
    assert second.startswith("cwr_") and second != first
    assert renewed.json()["refresh_expires_at"] == signed_in["refresh_expires_at"]  # the session is not extended
    # A second renewal racing the first (the grace): a pair of its own, equally valid.
    raced = renew(first)
    assert raced.status_code == 200 and raced.json()["refresh_token"] not in (first, second)
    third = renew(second)
    assert third.status_code == 200, third.text

    other_session = stack.login("admin").json()["refresh_token"]
    try:
        clock.advance(timedelta(seconds=30))
        replayed = renew(first)  # long replaced: stolen or copied
        assert replayed.status_code == 401, replayed.text
        assert error_fields(replayed) == ["refresh_token"] and replayed.json()["message"].startswith("刷新令牌已被使用过")
        # Every token of that sign-in is revoked, the newest too; another sign-in is not.
        for token in (second, raced.json()["refresh_token"], third.json()["refresh_token"]):
            assert renew(token).status_code == 401
        assert renew(other_session).status_code == 200
    finally:
        clock.reset()


def test_logout_ends_the_whole_session_of_a_rotated_token(stack):
    first = stack.login("admin").json()["refresh_token"]
    latest = requests.post(f"{stack.accounts}/auth/refresh", json={"refresh_token": first},
                           timeout=30).json()["refresh_token"]
    assert requests.post(f"{stack.accounts}/auth/logout", json={"refresh_token": latest}, timeout=30).status_code == 204
    assert requests.post(f"{stack.accounts}/auth/refresh", json={"refresh_token": latest},
                         timeout=30).status_code == 401
