"""Accounts service: users, their grants, sign-in, API tokens for machines, and the issuer's
keys (the JWKS every other service verifies access tokens against).

Entrypoints only: parsing and validation happen in the shared HTTP layer, rules in
`domain`, use cases in `operations`. (The operator-endpoints mixin is imported as a module
so that `nameko run services.accounts.service` finds only this service class.)

Config (infra/nameko.yaml): AUTH_ISSUER, AUTH_AUDIENCE, ACCOUNTS_ACCESS_TTL (seconds, 300),
ACCOUNTS_REFRESH_TTL (seconds, 43200), ACCOUNTS_REFRESH_GRACE_SECONDS (10: a replaced refresh token
still renews this long), ACCOUNTS_SIGNING_KEY_FILE (PEM; else a key generated
and kept in the database, encrypted with ACCOUNTS_KEY_ENCRYPTION_KEY or the file
ACCOUNTS_KEY_ENCRYPTION_KEY_FILE, by default var/accounts-key-encryption.key, made at the first
start), ACCOUNTS_MIN_PASSWORD_LENGTH (10), ACCOUNTS_LOGIN_MAX_FAILURES (5
per username and client address), ACCOUNTS_LOGIN_MAX_USERNAME_FAILURES (50 per username from
anywhere), ACCOUNTS_LOGIN_MAX_CLIENT_FAILURES (20 per client address),
ACCOUNTS_LOGIN_WINDOW_SECONDS (900), ACCOUNTS_TRUST_FORWARDED_FOR (false: behind a reverse
proxy, true takes the client address from X-Forwarded-For), CONSOLE_RELAY_SECRET (shared with
the console: its relayed sign-ins name the person's address in X-Forwarded-For), ACCOUNTS_API_TOKEN_DEFAULT_DAYS
(90), ACCOUNTS_API_TOKEN_MAX_DAYS (366), ACCOUNTS_ARGON2_TIME_COST / _MEMORY_KIB / _PARALLELISM.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from nameko.extensions import DependencyProvider
from werkzeug.wrappers import Response

from services.accounts import operations as ops
from services.accounts.schemas import (AccessTokenOut, ApiTokenCreate, ApiTokenCreated, ApiTokenExchangeIn,
                                       ApiTokenOut, ApiTokenQuery, GrantIn, LoginIn, LoginOut, MeOut, PasswordChange,
                                       PasswordReset, RefreshIn, RefreshOut, UserCreate, UserOut, UserQuery)
from services.plumbing import operator_endpoints
from services.plumbing.auth import ACCESS_COOKIE, ADMINISTRATOR, ALL_ROLES, PUBLIC, signed_in
from services.plumbing.clock import Clock
from services.plumbing.db import Database
from services.plumbing.http import CSRF_COOKIE, api, error_response, json_response
from services.plumbing.rate_limit import client_address, relay_secret

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)
ADMINS = signed_in(ADMINISTRATOR)
# One's own account and API tokens: people and machine accounts alike (a 数字城管 platform's
# account signs in once to make the API token its machine client uses).
ANY_ACCOUNT = signed_in(*ALL_ROLES)


@dataclass
class Issuer:
    settings: ops.Settings
    passwords: ops.Passwords
    keys: ops.KeyRing
    trust_forwarded_for: bool
    relay_secret: str | None = None


class IssuerProvider(DependencyProvider):
    """Settings, password hasher and signing keys, built once per container."""

    def setup(self):
        config = self.container.config
        settings = ops.Settings.from_config(config)
        self.issuer = Issuer(settings, ops.Passwords.from_config(config),
                             ops.KeyRing(settings, ops.KeyCipher.from_config(config)),
                             str(config.get("ACCOUNTS_TRUST_FORWARDED_FOR", "false")).lower() == "true",
                             relay_secret(config))

    def start(self):
        # Keys stored in plain text by an earlier version are encrypted now, not at the first
        # sign-in (the Database provider has run the migrations in its setup).
        database = Database.of(self.container)
        if database.session_factory is None:
            return
        try:
            with database.session_factory() as session, session.begin():
                self.issuer.keys.seal_plain_keys(session)
        except Exception:  # the database may be down at start: the first use seals them then
            log.warning("could not encrypt plain-text signing keys at start; will at first use", exc_info=True)

    def get_dependency(self, worker_ctx):
        return self.issuer


class AccountsService(operator_endpoints.OperatorEndpoints):
    name = "accounts"

    db = Database(MIGRATIONS)
    issuer = IssuerProvider()
    clock = Clock()

    # --- helpers: how sign-in outcomes become responses ---

    def _client(self, request) -> str:
        # Also the console's relay of a person's sign-in, vouched for by the shared secret.
        return client_address(request, trust_forwarded_for=self.issuer.trust_forwarded_for,
                              relay_secret=self.issuer.relay_secret)

    def _respond(self, request, outcome, status: int = 200) -> Response:
        if isinstance(outcome, ops.Throttled):
            reason = (f"尝试次数过多，请 {outcome.retry_after} 秒后再试; too many failed attempts, "
                      f"try again in {outcome.retry_after} s")
            response = error_response(429, "too_many_requests", reason, [{"field": outcome.field, "reason": reason}])
            response.headers["Retry-After"] = str(outcome.retry_after)
            return response
        if isinstance(outcome, ops.Refused):
            code = "unauthenticated" if outcome.status == 401 else "forbidden"
            response = error_response(outcome.status, code, outcome.reason,
                                      [{"field": outcome.field, "reason": outcome.reason}])
            if outcome.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="chuangwei"'
            return response
        if isinstance(outcome, ops.SignedIn):
            response = json_response(outcome.result, status=status)
            response.headers["Cache-Control"] = "no-store"
            if outcome.set_cookies:
                self._set_cookies(request, response, outcome.result)
            return response
        return json_response(outcome, status=status)

    def _set_cookies(self, request, response: Response, access: AccessTokenOut) -> None:
        settings = self.issuer.settings
        # For the web console: the access token where scripts cannot read it, and a CSRF
        # token they must read and repeat in X-CSRF-Token (plumbing/http.py checks both).
        response.set_cookie(ACCESS_COOKIE, access.access_token, max_age=settings.access_ttl, path="/",
                            secure=True, httponly=True, samesite="Strict")
        if isinstance(access, LoginOut) or not request.cookies.get(CSRF_COOKIE):
            # Kept across refreshes: requests in flight still carry the one they read.
            response.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(32), max_age=settings.refresh_ttl, path="/",
                                secure=True, httponly=False, samesite="Strict")

    # --- signing in (public) ---

    @api("POST", "/auth/login", body=LoginIn, response=LoginOut, access=PUBLIC,
         summary="登录 Sign in with username and password: access token, refresh token and console cookies")
    def login(self, request, body: LoginIn):
        with self.db.transaction() as session:
            outcome = ops.login(session, body, self._client(request), self.issuer.settings, self.issuer.passwords,
                                self.issuer.keys, self.clock.now())
        return self._respond(request, outcome)

    @api("POST", "/auth/refresh", body=RefreshIn, response=RefreshOut, access=PUBLIC,
         summary="刷新访问令牌 A fresh access token and a new refresh token replacing the one sent (rotation; "
                 "refused once the user is disabled)",
         description="Each refresh token renews once: the answer carries its replacement. The replaced token "
                     "sent again within ACCOUNTS_REFRESH_GRACE_SECONDS (10) gets another pair (a page renewing "
                     "twice at once); later, it ends the session (every token of that sign-in is revoked).")
    def refresh(self, request, body: RefreshIn):
        with self.db.transaction() as session:
            outcome = ops.refresh(session, body.refresh_token, self.issuer.settings, self.issuer.keys,
                                  self.clock.now(), self._client(request))
        return self._respond(request, outcome)

    @api("POST", "/auth/logout", body=RefreshIn, status=204, raw=True, access=PUBLIC,
         summary="退出登录 Sign out: revoke the refresh token and clear the console cookies")
    def logout(self, request, body: RefreshIn):
        with self.db.transaction() as session:
            ops.logout(session, body.refresh_token, self.clock.now())
        response = Response(status=204)
        response.delete_cookie(ACCESS_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        response.delete_cookie(CSRF_COOKIE, path="/", secure=True, samesite="Strict")
        return response

    @api("POST", "/auth/token", body=ApiTokenExchangeIn, response=AccessTokenOut, access=PUBLIC,
         summary="API 令牌换取访问令牌 Exchange an API token's secret for a machine access token")
    def exchange_api_token(self, request, body: ApiTokenExchangeIn):
        with self.db.transaction() as session:
            outcome = ops.exchange_api_token(session, body.token, self.issuer.settings, self.issuer.keys,
                                             self.clock.now())
        return self._respond(request, outcome)

    @api("GET", "/.well-known/jwks.json", raw=True, access=PUBLIC,
         summary="签名公钥 The issuer's public keys (JWKS) that every service verifies tokens with")
    def jwks(self, request):
        with self.db.transaction() as session:
            document = self.issuer.keys.jwks(session, self.clock.now())
        response = json_response(document)
        response.headers["Cache-Control"] = "public, max-age=60"
        return response

    # --- the caller ---

    @api("GET", "/me", response=MeOut, access=ANY_ACCOUNT, summary="当前用户 Who is calling, with its grants")
    def me(self, request, principal):
        return ops.me(self.db.session, principal)

    @api("PUT", "/me/password", body=PasswordChange, response=MeOut, access=ANY_ACCOUNT,
         summary="修改密码 Change one's own password (signs out every other session)")
    def change_own_password(self, request, body: PasswordChange, principal):
        with self.db.transaction() as session:
            outcome = ops.change_own_password(session, principal, body, self._client(request),
                                              self.issuer.settings, self.issuer.passwords, self.clock.now())
        return self._respond(request, outcome)

    # --- users and grants (administrators, within their subtree) ---

    @api("POST", "/users", body=UserCreate, response=UserOut, status=201, access=ADMINS,
         summary="创建用户 Create a user of an office within the administrator's subtree")
    def create_user(self, request, body: UserCreate, principal):
        with self.db.transaction() as session:
            return ops.create_user(session, principal, body, self.issuer.settings, self.issuer.passwords,
                                   self.clock.now())

    @api("GET", "/users", query=UserQuery, response=list[UserOut], access=ADMINS,
         summary="用户列表 Users of the offices the administrator manages")
    def list_users(self, request, query: UserQuery, principal):
        return ops.list_users(self.db.session, principal, query)

    @api("GET", "/users/<username>", response=UserOut, access=ADMINS, summary="查看用户 Get a user")
    def get_user(self, request, username, principal):
        return ops.get_user(self.db.session, principal, username)

    @api("POST", "/users/<username>/disable", response=UserOut, access=ADMINS,
         summary="停用用户 Disable a user: sessions end now, access tokens within minutes")
    def disable_user(self, request, username, principal):
        with self.db.transaction() as session:
            return ops.disable_user(session, principal, username, self.clock.now())

    @api("POST", "/users/<username>/enable", response=UserOut, access=ADMINS, summary="启用用户 Enable a user")
    def enable_user(self, request, username, principal):
        with self.db.transaction() as session:
            return ops.enable_user(session, principal, username, self.clock.now())

    @api("PUT", "/users/<username>/password", body=PasswordReset, response=UserOut, access=ADMINS,
         summary="重置密码 Reset a user's password (signs out the user's sessions)")
    def reset_password(self, request, username, body: PasswordReset, principal):
        with self.db.transaction() as session:
            return ops.reset_password(session, principal, username, body, self.issuer.settings,
                                      self.issuer.passwords, self.clock.now())

    @api("POST", "/users/<username>/grants", body=GrantIn, response=UserOut, status=201, access=ADMINS,
         summary="授予角色 Grant a role on a node within the administrator's subtree")
    def add_grant(self, request, username, body: GrantIn, principal):
        with self.db.transaction() as session:
            return ops.add_grant(session, principal, username, body, self.clock.now())

    @api("DELETE", "/users/<username>/grants/<role>/<node>", response=UserOut, access=ADMINS,
         summary="收回角色 Take a role on a node away")
    def remove_grant(self, request, username, role, node, principal):
        with self.db.transaction() as session:
            return ops.remove_grant(session, principal, username, role, node, self.clock.now())

    # --- API tokens for machines ---

    @api("POST", "/api-tokens", body=ApiTokenCreate, response=ApiTokenCreated, status=201, access=ANY_ACCOUNT,
         summary="创建 API 令牌 Create an API token (the secret is shown once) with at most one's own grants")
    def create_api_token(self, request, body: ApiTokenCreate, principal):
        with self.db.transaction() as session:
            created = ops.create_api_token(session, principal, body, self.issuer.settings, self.clock.now())
        return 201, {"Cache-Control": "no-store"}, created

    @api("GET", "/api-tokens", query=ApiTokenQuery, response=list[ApiTokenOut], access=ANY_ACCOUNT,
         summary="API 令牌列表 One's own API tokens (administrators: a managed user's)")
    def list_api_tokens(self, request, query: ApiTokenQuery, principal):
        return ops.list_api_tokens(self.db.session, principal, query, self.clock.now())

    @api("POST", "/api-tokens/<token_id>/revoke", response=ApiTokenOut, access=ANY_ACCOUNT,
         summary="撤销 API 令牌 Revoke an API token (its owner or an administrator of the owner)")
    def revoke_api_token(self, request, token_id, principal):
        with self.db.transaction() as session:
            return ops.revoke_api_token(session, principal, token_id, self.clock.now())
