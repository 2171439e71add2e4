"""Use cases of the accounts service: signing in, sessions, users and grants, API tokens,
and the issuer's signing keys.

Each function takes a SQLAlchemy session; the caller owns the transaction. No nameko
imports, so these run the same from HTTP, the operator command (services/tools/accounts.py)
or a test. Sign-in use cases that must record a failure return an outcome instead of
raising, so the failure is committed before the caller answers 401 or 429.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from argon2 import PasswordHasher
from cryptography.fernet import Fernet, InvalidToken
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.accounts import domain
from services.plumbing.config import number_setting
from services.plumbing.cooperative import off_hub
from services.plumbing.rate_limit import RateLimit
from services.accounts.models import ApiToken, LoginAttempt, RefreshToken, SigningKey as KeyRow, User, UserGrant
from services.accounts.schemas import (AccessTokenOut, ApiTokenCreate, ApiTokenCreated, ApiTokenOut, ApiTokenQuery,
                                       GrantOut, LoginIn, LoginOut, MeOut, PasswordChange, PasswordReset, RefreshOut,
                                       UserCreate, UserOut, UserQuery, GrantIn)
from services.contracts.errors import PermissionDenied, RuleViolation, StateConflict, UnknownReference
from services.contracts.nodes import InvalidNodeCode, normalize_code
from services.plumbing.auth import (ADMINISTRATOR, API_TOKEN_METHOD, Grant, GrantOrigin, Principal, SigningKey,
                                    access_claims, provenance_claim)
from services.plumbing.keyfiles import SecretUnavailable, operator_secret
from services.plumbing.sql import advisory_xact_lock

log = logging.getLogger(__name__)


# --- settings ---

@dataclass(frozen=True)
class Settings:
    issuer: str = "chuangwei"
    audience: str = "chuangwei"
    access_ttl: int = 300                 # seconds: how long a disabled user keeps working at most
    refresh_ttl: int = 12 * 3600          # seconds: one working day per sign-in
    min_password_length: int = domain.MIN_PASSWORD_LENGTH
    # Failures of one username from one client address: an attacker elsewhere does not lock
    # the owner out (issue 27) ...
    user_limit: RateLimit = RateLimit(5, timedelta(minutes=15))
    # ... but a username attacked from many addresses is still bounded, higher.
    user_ceiling: RateLimit = RateLimit(50, timedelta(minutes=15))
    client_limit: RateLimit = RateLimit(20, timedelta(minutes=15))
    api_token_default_days: int = 90
    api_token_max_days: int = 366
    key_file: str | None = None
    # How long a replaced refresh token still renews (a page or two tabs renewing at once).
    refresh_grace: timedelta = timedelta(seconds=10)

    @classmethod
    def from_config(cls, config: dict) -> "Settings":
        def number(key: str, default: int) -> int:
            return number_setting(config, key, default, int)

        window = timedelta(seconds=number("ACCOUNTS_LOGIN_WINDOW_SECONDS", 900))
        return cls(
            issuer=str(config.get("AUTH_ISSUER") or "chuangwei"),
            audience=str(config.get("AUTH_AUDIENCE") or "chuangwei"),
            access_ttl=number("ACCOUNTS_ACCESS_TTL", 300),
            refresh_ttl=number("ACCOUNTS_REFRESH_TTL", 12 * 3600),
            min_password_length=number("ACCOUNTS_MIN_PASSWORD_LENGTH", domain.MIN_PASSWORD_LENGTH),
            user_limit=RateLimit(number("ACCOUNTS_LOGIN_MAX_FAILURES", 5), window),
            user_ceiling=RateLimit(number("ACCOUNTS_LOGIN_MAX_USERNAME_FAILURES", 50), window),
            client_limit=RateLimit(number("ACCOUNTS_LOGIN_MAX_CLIENT_FAILURES", 20), window),
            api_token_default_days=number("ACCOUNTS_API_TOKEN_DEFAULT_DAYS", 90),
            api_token_max_days=number("ACCOUNTS_API_TOKEN_MAX_DAYS", 366),
            key_file=str(config.get("ACCOUNTS_SIGNING_KEY_FILE") or "") or None,
            refresh_grace=timedelta(seconds=number("ACCOUNTS_REFRESH_GRACE_SECONDS", 10)),
        )


# --- passwords ---

class Passwords:
    """argon2id with OWASP's minimum parameters (19 MiB, 2 passes) by default: ten
    concurrent sign-ins must not take a gigabyte of a shared machine's memory."""

    def __init__(self, time_cost: int = 2, memory_cost: int = 19456, parallelism: int = 1):
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
        # Made now, not at the first unknown username: that attempt must not take longer either.
        self._dummy = self.hasher.hash("chuangwei-no-such-user")

    @classmethod
    def from_config(cls, config: dict) -> "Passwords":
        return cls(int(config.get("ACCOUNTS_ARGON2_TIME_COST") or 2),
                   int(config.get("ACCOUNTS_ARGON2_MEMORY_KIB") or 19456),
                   int(config.get("ACCOUNTS_ARGON2_PARALLELISM") or 1))

    # argon2 spends ~0.1 s of CPU per call by design, with the GIL released: off the hub, or
    # every service of the process stood still for each sign-in (issue 25).
    def hash(self, password: str) -> str:
        return off_hub(self.hasher.hash, password)

    def verify(self, password_hash: str, password: str) -> bool:
        try:
            return off_hub(self.hasher.verify, password_hash, password)
        except VerifyMismatchError:
            return False
        except (VerificationError, InvalidHashError):
            log.warning("a stored password hash cannot be verified")
            return False

    def burn(self, password: str) -> bool:
        """Spend the time a real check takes, for a username that does not exist: the
        answer's timing must not tell which usernames do."""
        self.verify(self._dummy, password)
        return False

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True


# --- signing keys ---

# Instances re-read the active key this often, so a rotation reaches all of them quickly.
KEY_CACHE_SECONDS = 30
_KEY_LOCK = "accounts-signing-key"
# The key that encrypts the signing keys at rest: ACCOUNTS_KEY_ENCRYPTION_KEY (a Fernet key, or
# any text of 32 characters or more), else the file ACCOUNTS_KEY_ENCRYPTION_KEY_FILE, else this
# file, generated (0600) at the first start. Never in the database: a dump without it cannot
# sign a token.
DEFAULT_KEY_ENCRYPTION_FILE = "var/accounts-key-encryption.key"
SEALED_PREFIX = "fernet:"


class KeyUnreadable(RuntimeError):
    """A stored signing key that the configured key-encryption key cannot open."""


class KeyCipher:
    """Encrypts the issuer's private keys for the database (Fernet: AES-128-CBC + HMAC-SHA256)."""

    def __init__(self, key: bytes):
        try:
            self.fernet = Fernet(key)
        except (ValueError, TypeError):
            text = key.decode("utf-8", "replace")
            if len(text) < 32:
                raise SecretUnavailable(
                    "ACCOUNTS_KEY_ENCRYPTION_KEY 太短：需要 Fernet 密钥或至少 32 个字符; the key-encryption "
                    "key must be a Fernet key or at least 32 characters") from None
            self.fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(key).digest()))

    @classmethod
    def from_config(cls, config: dict | None, base: Path | None = None) -> "KeyCipher":
        return cls(operator_secret(config, "ACCOUNTS_KEY_ENCRYPTION_KEY", "ACCOUNTS_KEY_ENCRYPTION_KEY_FILE",
                                   DEFAULT_KEY_ENCRYPTION_FILE, Fernet.generate_key, base))

    @staticmethod
    def is_sealed(stored: str) -> bool:
        return stored.startswith(SEALED_PREFIX)

    def seal(self, private_pem: bytes) -> str:
        return SEALED_PREFIX + self.fernet.encrypt(private_pem).decode("ascii")

    def open(self, stored: str, kid: str = "") -> bytes:
        if not self.is_sealed(stored):  # written before keys were encrypted; sealed at the next start
            return stored.encode("ascii")
        try:
            return self.fernet.decrypt(stored[len(SEALED_PREFIX):].encode("ascii"))
        except InvalidToken:
            raise KeyUnreadable(
                f"签名密钥 {kid} 无法解密：密钥加密密钥（ACCOUNTS_KEY_ENCRYPTION_KEY / _FILE）不是加密它时用的那把; "
                f"the signing key {kid} cannot be decrypted with the configured key-encryption key") from None


def seal_plain_keys(session: Session, cipher: KeyCipher) -> list[str]:
    """Encrypt the signing keys stored in plain text (before this version); their kids."""
    sealed = []
    rows = session.execute(select(KeyRow).where(KeyRow.private_pem.startswith("-----"))
                           .with_for_update()).scalars().all()
    for row in rows:
        row.private_pem = cipher.seal(row.private_pem.encode("ascii"))
        sealed.append(row.kid)
    if sealed:
        session.flush()
        log.info("encrypted %d token-signing key(s) stored in plain text: %s", len(sealed), ", ".join(sealed))
    return sealed


class KeyRing:
    """The issuer's keys: the one that signs and the ones published in the JWKS.

    From ACCOUNTS_SIGNING_KEY_FILE (a PEM file) when configured; otherwise generated at the
    first start and kept in the database, encrypted with `cipher` (KeyCipher), so every
    instance signs with the same key. Retired keys stay published until every token they
    signed has expired.
    """

    def __init__(self, settings: Settings, cipher: KeyCipher | None = None):
        self.settings = settings
        self.cipher = cipher if cipher is not None else KeyCipher.from_config({})
        self.file_key = SigningKey.from_pem(Path(settings.key_file).read_bytes()) if settings.key_file else None
        self._cached: tuple[SigningKey, float] | None = None
        self._file_reconciled = False
        self._sealed = False
        self._lock = threading.Lock()

    @property
    def retention(self) -> timedelta:
        # Tokens live access_ttl; instances may sign with a retired key for KEY_CACHE_SECONDS
        # more; verifiers tolerate some clock skew. Ten minutes' margin covers all of it.
        return timedelta(seconds=self.settings.access_ttl + KEY_CACHE_SECONDS + 600)

    def seal_plain_keys(self, session: Session) -> None:
        """Once per process (also done at start): no key stays in plain text."""
        if not self._sealed:
            seal_plain_keys(session, self.cipher)
            self._sealed = True

    def signing_key(self, session: Session, now: datetime) -> SigningKey:
        if self.file_key is not None:
            self._reconcile_file_key(session, now)
            return self.file_key
        with self._lock:
            if self._cached and time.monotonic() - self._cached[1] < KEY_CACHE_SECONDS:
                return self._cached[0]
        self.seal_plain_keys(session)
        key = active_signing_key(session, now, self.cipher)
        with self._lock:
            self._cached = (key, time.monotonic())
        return key

    def forget(self) -> None:
        with self._lock:
            self._cached = None

    def jwks(self, session: Session, now: datetime) -> dict:
        """The public keys verifiers should trust now, the signing one first."""
        active = self.signing_key(session, now)
        keys = [active.public_jwk]
        rows = session.execute(select(KeyRow).where(
            or_(KeyRow.retired_at.is_(None), KeyRow.retired_at > now - self.retention))
            .order_by(KeyRow.created_at.desc())).scalars()
        keys += [row.public_jwk for row in rows if row.kid != active.kid]
        return {"keys": keys}

    def _reconcile_file_key(self, session: Session, now: datetime) -> None:
        # A stack that switches from a generated key to a file keeps the generated one
        # published only until its tokens have expired.
        if self._file_reconciled:
            return
        session.execute(update(KeyRow).where(KeyRow.retired_at.is_(None)).values(retired_at=now))
        self._file_reconciled = True


def _key_row(key: SigningKey, now: datetime, cipher: KeyCipher) -> KeyRow:
    return KeyRow(kid=key.kid, private_pem=cipher.seal(key.private_pem), public_jwk=key.public_jwk,
                  created_at=now, retired_at=None)


def active_signing_key(session: Session, now: datetime, cipher: KeyCipher) -> SigningKey:
    """The database's active key, generated on first use (once, whichever instance is first)."""
    row = _active_row(session)
    if row is None:
        advisory_xact_lock(session, _KEY_LOCK)
        row = _active_row(session)
        if row is None:
            key = SigningKey.generate()
            row = _key_row(key, now, cipher)
            session.add(row)
            session.flush()
            log.info("generated the token-signing key %s", key.kid)
    return SigningKey.from_pem(cipher.open(row.private_pem, row.kid), kid=row.kid)


def _active_row(session: Session) -> KeyRow | None:
    return session.execute(select(KeyRow).where(KeyRow.retired_at.is_(None))
                           .order_by(KeyRow.created_at.desc()).limit(1)).scalar_one_or_none()


def rotate_signing_key(session: Session, now: datetime, cipher: KeyCipher) -> tuple[SigningKey, list[str]]:
    """A new active key; the old ones retire (still published until their tokens expire)."""
    advisory_xact_lock(session, _KEY_LOCK)
    seal_plain_keys(session, cipher)
    retired = list(session.execute(select(KeyRow.kid).where(KeyRow.retired_at.is_(None))).scalars())
    session.execute(update(KeyRow).where(KeyRow.retired_at.is_(None)).values(retired_at=now))
    key = SigningKey.generate()
    session.add(_key_row(key, now, cipher))
    session.flush()
    return key, retired


# --- issuing access tokens ---

def _grants_of(user: User) -> list[Grant]:
    return [Grant(g.role, g.node) for g in user.grants]


def _grant_out(grant: Grant | UserGrant) -> GrantOut:
    return GrantOut(role=grant.role, role_name=domain.role_name(grant.role), node=grant.node,
                    granted_at=getattr(grant, "granted_at", None), granted_by=getattr(grant, "granted_by", None))


def issue_access_token(session: Session, keys: KeyRing, settings: Settings, now: datetime, *, subject: str,
                       name: str, grants: list[Grant], kind: str, extra: dict | None = None) -> AccessTokenOut:
    claims = access_claims(subject, name, grants, issuer=settings.issuer, audience=settings.audience,
                           ttl=settings.access_ttl, kind=kind, now=now.timestamp())
    claims.update(extra or {})
    token = keys.signing_key(session, now).sign(claims)
    return AccessTokenOut(access_token=token, expires_in=settings.access_ttl,
                          expires_at=datetime.fromtimestamp(claims["exp"], tz=now.tzinfo), kind=kind)


def _user_access(session: Session, keys: KeyRing, settings: Settings, user: User, now: datetime) -> AccessTokenOut:
    """A person's access token (a password sign-in, or a refresh of that session): says so
    (`amr`) and where the account and its grants came from (`prov`, for the two-person rule)."""
    origins = [GrantOrigin(g.role, g.node, g.granted_at, g.granted_by_subject) for g in user.grants]
    return issue_access_token(session, keys, settings, now, subject=user.username, name=user.display_name,
                              grants=_grants_of(user), kind="user",
                              extra={"amr": ["pwd"],
                                     "prov": provenance_claim(user.created_at, user.created_by_subject, origins)})


# --- signing in ---

@dataclass
class Throttled:
    """Too many failed attempts: answer 429 with Retry-After."""
    retry_after: int
    field: str = "username"


@dataclass
class Refused:
    """Not signed in (401), or a check of the caller's own password failed (`status`)."""
    reason: str
    field: str
    status: int = 401


@dataclass
class SignedIn:
    result: LoginOut | AccessTokenOut
    # The browser console's cookies go with a person's tokens, never with a machine's.
    set_cookies: bool = True


WRONG_CREDENTIALS = "用户名或密码错误; wrong username or password"
_ATTEMPTS_KEPT = timedelta(days=1)


def _throttle(session: Session, username: str, client: str, settings: Settings, now: datetime) -> int | None:
    """Seconds to wait before this username may try again from this client, or None: the
    username's failures from this client (user_limit), from anywhere (user_ceiling, higher)
    and this client's failures for any username (client_limit)."""
    user_window = now - settings.user_limit.window
    # A success clears the username's count: its owner knew the password.
    last_success = session.execute(select(func.max(LoginAttempt.at)).where(
        LoginAttempt.username == username, LoginAttempt.succeeded.is_(True),
        LoginAttempt.at > user_window)).scalar_one_or_none()
    since = max(user_window, last_success) if last_success else user_window
    failures = session.execute(select(LoginAttempt.at, LoginAttempt.client).where(
        LoginAttempt.username == username, LoginAttempt.succeeded.is_(False),
        LoginAttempt.at > since)).all()
    by_user_here = [at for at, where in failures if where == client]
    by_user_anywhere = [at for at, _ in failures]
    by_client = session.execute(select(LoginAttempt.at).where(
        LoginAttempt.client == client, LoginAttempt.succeeded.is_(False),
        LoginAttempt.at > now - settings.client_limit.window)).scalars().all()
    waits = [w for w in (settings.user_limit.retry_after(by_user_here, now),
                         settings.user_ceiling.retry_after(by_user_anywhere, now),
                         settings.client_limit.retry_after(by_client, now)) if w]
    return max(waits) if waits else None


def _record_attempt(session: Session, username: str, client: str, succeeded: bool, now: datetime) -> None:
    session.add(LoginAttempt(username=username, client=client, at=now, succeeded=succeeded))
    # Old attempts no longer count for anything.
    session.execute(delete(LoginAttempt).where(LoginAttempt.at < now - _ATTEMPTS_KEPT))


def _check_own_password(session: Session, username: str, password: str, client: str, settings: Settings,
                        passwords: Passwords, now: datetime) -> tuple[User | None, Throttled | None]:
    """The user if `password` is theirs and they may sign in; rate-limited and recorded."""
    # Serialise attempts on one username across instances: the count is then exact.
    advisory_xact_lock(session, f"accounts-login:{username}")
    wait = _throttle(session, username, client, settings, now)
    if wait:
        return None, Throttled(wait)
    user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    ok = passwords.verify(user.password_hash, password) if user else passwords.burn(password)
    # A disabled account fails exactly like a wrong password: nothing tells them apart.
    if not ok or user.disabled:
        _record_attempt(session, username, client, False, now)
        return None, None
    _record_attempt(session, username, client, True, now)
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash(password)
    return user, None


def login(session: Session, body: LoginIn, client: str, settings: Settings, passwords: Passwords, keys: KeyRing,
          now: datetime) -> SignedIn | Throttled | Refused:
    username = domain.normalize_username(body.username)[:128]
    user, throttled = _check_own_password(session, username, body.password, client, settings, passwords, now)
    if throttled:
        return throttled
    if user is None:
        return Refused(WRONG_CREDENTIALS, "password")
    secret = domain.new_secret(domain.REFRESH_PREFIX)
    refresh = RefreshToken(id=str(uuid.uuid4()), user_id=user.id, digest=domain.secret_digest(secret),
                           created_at=now, expires_at=now + timedelta(seconds=settings.refresh_ttl), client=client)
    session.add(refresh)
    access = _user_access(session, keys, settings, user, now)
    return SignedIn(LoginOut(**access.model_dump(), refresh_token=secret, refresh_expires_at=refresh.expires_at,
                             user=_me_of_user(user)))


REFRESH_REFUSED = "刷新令牌无效、已过期或已撤销; the refresh token is invalid, expired or revoked"
REFRESH_REUSED = ("刷新令牌已被使用过，为安全起见本次登录已结束，请重新登录; the refresh token was already "
                  "used: the session is ended for safety, sign in again")
ACCOUNT_REFUSED = "账号已停用; the account is disabled"


def refresh(session: Session, secret: str, settings: Settings, keys: KeyRing, now: datetime,
            client: str | None = None) -> SignedIn | Refused:
    """A fresh access token and a new refresh token that replaces the one sent (rotation).

    A replaced token sent again within `settings.refresh_grace` (a page renewing twice at
    once, two tabs) gets another new pair of the same family: both answers are valid, and
    whichever cookie the browser keeps works. Sent again later, it was replayed (stolen or
    copied): the whole family — every token of that sign-in — is revoked."""
    row = session.execute(select(RefreshToken).where(
        RefreshToken.digest == domain.secret_digest(secret)).with_for_update()).scalar_one_or_none()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return Refused(REFRESH_REFUSED, "refresh_token")
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return Refused(ACCOUNT_REFUSED, "refresh_token")
    if row.replaced_at is not None and now - row.replaced_at > settings.refresh_grace:
        _revoke_family(session, row, now)
        log.warning("a replaced refresh token of %s was used again: its session is revoked", user.username)
        return Refused(REFRESH_REUSED, "refresh_token")
    if row.replaced_at is None:
        row.replaced_at = now
    row.last_used_at = now
    new_secret = domain.new_secret(domain.REFRESH_PREFIX)
    successor = RefreshToken(id=str(uuid.uuid4()), user_id=user.id, digest=domain.secret_digest(new_secret),
                             created_at=now, expires_at=row.expires_at, client=client or row.client,
                             family_id=row.family_id or row.id)
    session.add(successor)
    access = _user_access(session, keys, settings, user, now)
    return SignedIn(RefreshOut(**access.model_dump(), refresh_token=new_secret,
                               refresh_expires_at=successor.expires_at))


def _revoke_family(session: Session, row: RefreshToken, now: datetime) -> None:
    family = row.family_id or row.id
    session.execute(update(RefreshToken).where(
        or_(RefreshToken.id == family, RefreshToken.family_id == family), RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now))


def logout(session: Session, secret: str, now: datetime) -> bool:
    """End the session of a refresh token (every token of its family); whether it still worked."""
    row = session.execute(select(RefreshToken).where(
        RefreshToken.digest == domain.secret_digest(secret))).scalar_one_or_none()
    if row is None:
        return False
    live = row.revoked_at is None
    _revoke_family(session, row, now)
    return live


def _revoke_sessions(session: Session, user: User, now: datetime) -> None:
    session.execute(update(RefreshToken).where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=now))


API_TOKEN_REFUSED = "API 令牌无效、已过期或已撤销; the API token is invalid, expired or revoked"


def exchange_api_token(session: Session, secret: str, settings: Settings, keys: KeyRing,
                       now: datetime) -> SignedIn | Refused:
    row = session.execute(select(ApiToken).where(
        ApiToken.digest == domain.secret_digest(secret))).scalar_one_or_none()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return Refused(API_TOKEN_REFUSED, "token")
    owner = session.get(User, row.owner_id)
    if owner is None or owner.disabled:
        return Refused("API 令牌的所有者账号已停用; the account that owns this API token is disabled", "token")
    grants = domain.effective_token_grants(_stored_grants(row), _grants_of(owner))
    if not grants:
        return Refused("API 令牌的权限已被收回; the token's owner no longer holds any of its grants", "token")
    row.last_used_at = now
    access = issue_access_token(session, keys, settings, now, subject=f"token:{row.id}", name=row.name,
                                grants=grants, kind="machine",
                                extra={"owner": owner.username, "owner_name": owner.display_name,
                                       "amr": [API_TOKEN_METHOD]})
    return SignedIn(access, set_cookies=False)


# --- who am I ---

def _me_of_user(user: User) -> MeOut:
    return MeOut(subject=user.username, name=user.display_name, kind="user",
                 grants=[_grant_out(g) for g in user.grants], username=user.username,
                 display_name=user.display_name, node=user.node)


def me(session: Session, principal: Principal) -> MeOut:
    user = _user_of(session, principal)
    if user is not None:
        return _me_of_user(user)
    # A machine, or a person signed in through another issuer (an office's OIDC platform).
    return MeOut(subject=principal.subject, name=principal.name, kind=principal.kind,
                 grants=[_grant_out(g) for g in principal.grants])


def _user_of(session: Session, principal: Principal) -> User | None:
    if principal.kind != "user":
        return None
    return session.execute(select(User).where(User.username == principal.subject)).scalar_one_or_none()


def _own_account(session: Session, principal: Principal) -> User:
    user = _user_of(session, principal)
    if user is None:
        raise PermissionDenied("Authorization", "只有本系统的用户账号可以这样做; only a person's account "
                                                "of this stack can do this (not an API token or another issuer's)")
    return user


def change_own_password(session: Session, principal: Principal, body: PasswordChange, client: str,
                        settings: Settings, passwords: Passwords, now: datetime) -> MeOut | Throttled | Refused:
    own = _own_account(session, principal)
    domain.check_password(body.new_password, own.username, settings.min_password_length, "new_password")
    # The current password is checked like a sign-in: a stolen session cannot guess it freely.
    user, throttled = _check_own_password(session, own.username, body.current_password, client, settings,
                                          passwords, now)
    if throttled:
        return Throttled(throttled.retry_after, "current_password")
    if user is None:
        return Refused("当前密码不正确; the current password is wrong", "current_password", status=403)
    _set_password(session, user, body.new_password, passwords, now)
    return _me_of_user(user)


def _set_password(session: Session, user: User, password: str, passwords: Passwords, now: datetime) -> None:
    user.password_hash = passwords.hash(password)
    user.password_changed_at = user.updated_at = now
    # Every signed-in browser of the account must sign in again with the new password.
    _revoke_sessions(session, user, now)


# --- users and grants (administrators) ---

def user_out(user: User) -> UserOut:
    return UserOut(user_id=user.id, username=user.username, display_name=user.display_name, node=user.node,
                   disabled=user.disabled, grants=[_grant_out(g) for g in user.grants],
                   created_at=user.created_at, created_by=user.created_by, updated_at=user.updated_at,
                   password_changed_at=user.password_changed_at, disabled_at=user.disabled_at,
                   disabled_by=user.disabled_by)


def _to_grants(items: list[GrantIn]) -> list[Grant]:
    return [Grant(g.role, g.node) for g in items]


def _check_may_grant(principal: Principal, grants: list[Grant], field: str = "grants") -> None:
    outside = domain.grants_outside_administration(principal.grants, grants)
    if outside:
        i = outside[0]
        raise PermissionDenied(f"{field}[{i}].node", f"只能在本级及下级授权; an administrator grants roles only "
                                                     f"within its own subtree, not on {grants[i].node}")


def new_user(session: Session, *, username: str, display_name: str, node: str, password: str,
             grants: list[Grant], actor: str, settings: Settings, passwords: Passwords, now: datetime,
             actor_subject: str | None = None) -> User:
    """Create a user (the checks of who may are the caller's). Also used by the create-admin command."""
    username = domain.check_username(username)
    display_name = display_name.strip()
    if not display_name:
        raise RuleViolation("display_name", "姓名不能为空; the display name may not be blank")
    domain.check_password(password, username, settings.min_password_length)
    if session.execute(select(User.id).where(User.username == username)).first() is not None:
        raise StateConflict("username", f"用户名 {username} 已存在; the username {username!r} is taken")
    user = User(id=str(uuid.uuid4()), username=username, display_name=display_name, node=normalize_code(node),
                password_hash=passwords.hash(password), disabled=False, created_at=now, created_by=actor,
                created_by_subject=actor_subject, updated_at=now, password_changed_at=now)
    user.grants = [UserGrant(role=g.role, node=g.node, granted_at=now, granted_by=actor,
                             granted_by_subject=actor_subject)
                   for g in domain.distinct_grants(grants)]
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent creation of the same username
        raise StateConflict("username", f"用户名 {username} 已存在; the username {username!r} is taken") from exc
    return user


def create_user(session: Session, principal: Principal, body: UserCreate, settings: Settings, passwords: Passwords,
                now: datetime) -> UserOut:
    principal.require(ADMINISTRATOR, body.node, "node")
    grants = _to_grants(body.grants)
    _check_may_grant(principal, grants)
    user = new_user(session, username=body.username, display_name=body.display_name, node=body.node,
                    password=body.password, grants=grants, actor=principal.label, settings=settings,
                    passwords=passwords, now=now, actor_subject=principal.person)
    return user_out(user)


def _find_user(session: Session, username: str, field: str = "username") -> User:
    user = session.execute(select(User).where(
        User.username == domain.normalize_username(username))).scalar_one_or_none()
    if user is None:
        raise UnknownReference(field, f"没有用户 {username}; no user {username!r}")
    return user


def _managed_user(session: Session, principal: Principal, username: str, field: str = "username") -> User:
    user = _find_user(session, username, field)
    principal.require(ADMINISTRATOR, user.node, field)
    return user


def get_user(session: Session, principal: Principal, username: str) -> UserOut:
    return user_out(_managed_user(session, principal, username))


def list_users(session: Session, principal: Principal, query: UserQuery) -> list[UserOut]:
    if query.node is not None:
        principal.require(ADMINISTRATOR, query.node, "query.node")
        tops = [query.node]
    else:
        tops = principal.nodes_with([ADMINISTRATOR])
    if not tops:
        return []
    statement = select(User).where(or_(*[User.node.like(domain.subtree_prefix(n) + "%") for n in tops]))
    if query.disabled is not None:
        statement = statement.where(User.disabled.is_(query.disabled))
    statement = statement.order_by(User.node, User.username).offset(query.offset).limit(query.limit)
    return [user_out(u) for u in session.execute(statement).scalars()]


def _is_self(principal: Principal, user: User) -> bool:
    return principal.kind == "user" and principal.subject == user.username


def disable_user(session: Session, principal: Principal, username: str, now: datetime) -> UserOut:
    user = _managed_user(session, principal, username)
    if _is_self(principal, user):
        raise StateConflict("username", "不能停用自己的账号; you cannot disable your own account")
    if not user.disabled:
        user.disabled, user.disabled_at, user.disabled_by, user.updated_at = True, now, principal.label, now
        # Sessions end now; access tokens already out expire within ACCOUNTS_ACCESS_TTL, and
        # the account's API tokens are refused at their next exchange.
        _revoke_sessions(session, user, now)
    return user_out(user)


def enable_user(session: Session, principal: Principal, username: str, now: datetime) -> UserOut:
    user = _managed_user(session, principal, username)
    if user.disabled:
        user.disabled, user.disabled_at, user.disabled_by, user.updated_at = False, None, None, now
    return user_out(user)


def reset_password(session: Session, principal: Principal, username: str, body: PasswordReset,
                   settings: Settings, passwords: Passwords, now: datetime) -> UserOut:
    user = _managed_user(session, principal, username)
    domain.check_password(body.new_password, user.username, settings.min_password_length, "new_password")
    _set_password(session, user, body.new_password, passwords, now)
    return user_out(user)


def add_grant(session: Session, principal: Principal, username: str, body: GrantIn, now: datetime) -> UserOut:
    user = _managed_user(session, principal, username)
    principal.require(ADMINISTRATOR, body.node, "node")
    if any(g.role == body.role and g.node == body.node for g in user.grants):
        raise StateConflict("node", f"{user.username} 已在 {body.node} 具有角色 {body.role}; "
                                    f"{user.username} already holds {body.role} on {body.node}")
    user.grants.append(UserGrant(role=body.role, node=body.node, granted_at=now, granted_by=principal.label,
                                 granted_by_subject=principal.person))
    user.updated_at = now
    session.flush()
    return user_out(user)


def remove_grant(session: Session, principal: Principal, username: str, role: str, node: str,
                 now: datetime) -> UserOut:
    user = _managed_user(session, principal, username)
    try:
        node = normalize_code(node)
    except InvalidNodeCode as exc:
        raise UnknownReference("node", f"不是区划代码; not a division code: {exc}") from exc
    found = next((g for g in user.grants if g.role == role and g.node == node), None)
    if found is None:
        raise UnknownReference("role", f"{user.username} 在 {node} 没有角色 {role}; "
                                       f"{user.username} holds no {role!r} grant on {node}")
    principal.require(ADMINISTRATOR, node, "node")
    if _is_self(principal, user) and role == ADMINISTRATOR:
        raise StateConflict("role", "不能收回自己的管理员角色，请由其他管理员操作; you cannot take away your own "
                                    "administrator grant (another administrator can)")
    user.grants.remove(found)
    user.updated_at = now
    session.flush()
    return user_out(user)


# --- API tokens ---

def _stored_grants(row: ApiToken) -> list[Grant]:
    return [Grant(g["role"], g["node"]) for g in row.grants]


def _token_status(row: ApiToken, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    return "expired" if row.expires_at <= now else "active"


def api_token_out(row: ApiToken, owner: User, now: datetime) -> ApiTokenOut:
    return ApiTokenOut(token_id=row.id, name=row.name, owner=owner.username, hint=row.hint,
                       grants=[_grant_out(g) for g in _stored_grants(row)], created_at=row.created_at,
                       created_by=row.created_by, expires_at=row.expires_at, last_used_at=row.last_used_at,
                       revoked_at=row.revoked_at, revoked_by=row.revoked_by, status=_token_status(row, now))


def create_api_token(session: Session, principal: Principal, body: ApiTokenCreate, settings: Settings,
                     now: datetime) -> ApiTokenCreated:
    owner = _own_account(session, principal)
    grants = domain.distinct_grants(_to_grants(body.grants))
    # Against the owner's grants as stored now (a grant taken away a minute ago does not
    # count, even if the caller's access token still carries it) and as presented.
    for held in (_grants_of(owner), list(principal.grants)):
        wider = domain.grants_wider_than(held, grants)
        if wider:
            i = wider[0]
            raise PermissionDenied(f"grants[{i}]", f"API 令牌的权限不能超出自己的权限; an API token carries only "
                                                   f"grants its owner holds, not {grants[i].role} on {grants[i].node}")
    expires_at = body.expires_at or now + timedelta(days=settings.api_token_default_days)
    domain.check_token_expiry(expires_at, now, settings.api_token_max_days)
    name = body.name.strip()
    if not name:
        raise RuleViolation("name", "名称不能为空; the name may not be blank")
    clash = session.execute(select(ApiToken.id).where(
        ApiToken.owner_id == owner.id, ApiToken.name == name, ApiToken.revoked_at.is_(None),
        ApiToken.expires_at > now)).first()
    if clash is not None:
        raise StateConflict("name", f"已有名为 {name} 的有效令牌; an active API token named {name!r} exists")
    secret = domain.new_secret(domain.API_TOKEN_PREFIX)
    row = ApiToken(id=str(uuid.uuid4()), owner_id=owner.id, name=name, digest=domain.secret_digest(secret),
                   hint=secret[:8], grants=[{"role": g.role, "node": g.node} for g in grants], created_at=now,
                   created_by=principal.label, expires_at=expires_at)
    session.add(row)
    session.flush()
    return ApiTokenCreated(**api_token_out(row, owner, now).model_dump(), secret=secret)


def list_api_tokens(session: Session, principal: Principal, query: ApiTokenQuery, now: datetime) -> list[ApiTokenOut]:
    if query.owner is not None:
        owner = _find_user(session, query.owner, "query.owner")
        if not _is_self(principal, owner):
            principal.require(ADMINISTRATOR, owner.node, "query.owner")
    else:
        owner = _own_account(session, principal)
    statement = select(ApiToken).where(ApiToken.owner_id == owner.id)
    if not query.include_inactive:
        statement = statement.where(ApiToken.revoked_at.is_(None), ApiToken.expires_at > now)
    statement = statement.order_by(ApiToken.created_at.desc(), ApiToken.id).offset(query.offset).limit(query.limit)
    return [api_token_out(row, owner, now) for row in session.execute(statement).scalars()]


def revoke_api_token(session: Session, principal: Principal, token_id: str, now: datetime) -> ApiTokenOut:
    row = session.get(ApiToken, token_id) if len(token_id) <= 36 else None
    if row is None:
        raise UnknownReference("token_id", f"没有 API 令牌 {token_id}; no API token {token_id!r}")
    owner = session.get(User, row.owner_id)
    if not _is_self(principal, owner):
        principal.require(ADMINISTRATOR, owner.node, "token_id")
    if row.revoked_at is None:
        row.revoked_at, row.revoked_by = now, principal.label
    return api_token_out(row, owner, now)
