"""One authentication provider for every service: who is calling, and what they hold.

Callers present a short-lived signed access token (a JWT; `Authorization: Bearer …`, or the
console's HttpOnly cookie `cw_access`). Every service verifies it locally against the
issuer's public keys (a JWKS document), without a call per request. The accounts service
is the default issuer; an office's own identity platform (统一身份认证, OIDC) can be
configured instead, as long as its tokens carry the grants claim.

A grant is a role held on a node (division code) and valid for that node's subtree:

    administrator   manages the node: subjects, places, policies, rules, templates, contacts
    inspector       inspects, verifies and closes out (销号) on the inspecting side
    rectifier       the contact of a responsible subject: starts and submits fixes
    viewer          reads

Config:
    AUTH_JWKS_URL     where the issuer publishes its keys (e.g. the accounts service's
                      /.well-known/jwks.json), fetched and cached for AUTH_JWKS_TTL seconds
    AUTH_JWKS_FILE    or a file holding the JWKS document (tests, air-gapped installs)
    AUTH_JWKS         or the document itself (a dict or a JSON string)
    AUTH_ISSUER       the expected `iss` (default "chuangwei")
    AUTH_AUDIENCE     the expected `aud` (default "chuangwei")
    AUTH_GRANTS_CLAIM the claim that holds the grants (default "grants")
    AUTH_LEEWAY       clock skew tolerated, seconds (default 30)

Tokens carry: sub, name, grants [{"role", "node"}], kind ("user" | "machine"), jti, iat, exp;
and, from accounts: amr (how the token was obtained: ["pwd"] for a person's sign-in at
/auth/login and its refreshes, ["api_token"] for an API token exchanged at /auth/token),
owner and owner_name (an API token's person), prov (a person's account and grants: when and by
whom they were made — {"created_at": epoch, "created_by": username, "grants": [{"role",
"node", "at", "by"}]}), which the two-person rule asks of a second approver.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable

import jwt
import requests
from nameko.extensions import SharedExtension

from datetime import datetime, timezone

from services.contracts.identity import (ADMINISTRATOR, ALL_ROLES, API_TOKEN_METHOD, INSPECTOR,  # noqa: F401
                                         PLATFORM, RECTIFIER, ROLE_NAMES, ROLES, VIEWER, Grant, GrantOrigin,
                                         Principal, Provenance)
from services.contracts.nodes import normalize_code

log = logging.getLogger(__name__)

ACCESS_COOKIE = "cw_access"
ALGORITHMS = ["ES256", "RS256", "EdDSA", "PS256"]


class Unauthenticated(Exception):
    """No credentials, or credentials that do not verify (401)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def principal_from_claims(claims: dict, grants_claim: str = "grants") -> Principal:
    raw = claims.get(grants_claim) or []
    if not isinstance(raw, list):
        raise Unauthenticated(f"token claim {grants_claim!r} is not a list")
    grants = []
    for entry in raw:
        try:
            role, node = entry["role"], normalize_code(str(entry["node"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise Unauthenticated(f"token claim {grants_claim!r} holds a malformed grant") from exc
        if role in ALL_ROLES:
            grants.append(Grant(role, node))
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("token has no subject")
    name = claims.get("name") if isinstance(claims.get("name"), str) else subject
    amr = claims.get("amr")
    methods = tuple(m for m in amr if isinstance(m, str)) if isinstance(amr, list) else ()
    return Principal(subject=subject, name=name, grants=tuple(grants),
                     kind=str(claims.get("kind") or "user"), token_id=claims.get("jti"), methods=methods,
                     owner=_text(claims.get("owner")), owner_name=_text(claims.get("owner_name")),
                     provenance=provenance_from_claim(claims.get("prov")))


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _instant(value) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return datetime.fromtimestamp(value, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def provenance_from_claim(raw) -> Provenance | None:
    """The `prov` claim, or None when it is missing or malformed (then nothing is vouched for)."""
    if not isinstance(raw, dict):
        return None
    origins = []
    for entry in raw.get("grants") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("role"), str):
            continue
        try:
            node = normalize_code(str(entry.get("node")))
        except ValueError:
            continue
        origins.append(GrantOrigin(entry["role"], node, _instant(entry.get("at")), _text(entry.get("by"))))
    return Provenance(_instant(raw.get("created_at")), _text(raw.get("created_by")), tuple(origins))


def provenance_claim(created_at: datetime, created_by: str | None, grants: Iterable) -> dict:
    """The `prov` claim for a person's account (accounts issues it; tests sign it)."""
    return {"created_at": created_at.timestamp(), "created_by": created_by,
            "grants": [{"role": g.role, "node": g.node, "at": g.granted_at.timestamp(), "by": g.granted_by}
                       for g in grants]}


# --- declaring what an endpoint needs ---

@dataclass(frozen=True)
class Access:
    """What an endpoint needs. `public`: anyone. Otherwise a verified token holding at least
    one of `roles` on some node; node-level checks follow in the use case
    (`principal.require(role, node)`), where the node is known."""
    public: bool = False
    roles: tuple[str, ...] = ROLES
    description: str = ""

    def describe(self) -> str:
        if self.public:
            return "public"
        return "/".join(self.roles)


PUBLIC = Access(public=True, roles=(), description="anonymous callers allowed")


def signed_in(*roles: str) -> Access:
    """Any verified caller holding one of `roles` (every role of people when none are named;
    a machine role such as `platform` only where it is named)."""
    for role in roles:
        if role not in ALL_ROLES:
            raise ValueError(f"unknown role {role!r}")
    return Access(public=False, roles=tuple(roles) or ROLES)


# --- verifying tokens ---

class KeySet:
    """The issuer's public keys, fetched and cached; refreshed when an unknown key id shows up."""

    def __init__(self, config: dict):
        self.url = config.get("AUTH_JWKS_URL") or None
        self.path = config.get("AUTH_JWKS_FILE") or None
        inline = config.get("AUTH_JWKS") or None
        self.inline = json.loads(inline) if isinstance(inline, str) else inline
        self.ttl = float(config.get("AUTH_JWKS_TTL", 300))
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at = 0.0
        self._last_refresh_attempt = 0.0
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return bool(self.url or self.path or self.inline)

    def _document(self) -> dict:
        if self.inline is not None:
            return self.inline
        if self.path:
            with open(self.path, encoding="utf-8") as fh:
                return json.load(fh)
        response = requests.get(self.url, timeout=5)
        response.raise_for_status()
        return response.json()

    def _load(self) -> None:
        self._last_refresh_attempt = time.monotonic()
        document = self._document()
        keys = {}
        for entry in document.get("keys", []):
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError as exc:
                log.warning("JWKS key %s skipped: %s", entry.get("kid"), exc)
                continue
            keys[entry.get("kid") or ""] = key
        self._keys = keys
        self._loaded_at = time.monotonic()

    def key(self, kid: str | None) -> jwt.PyJWK:
        with self._lock:
            stale = time.monotonic() - self._loaded_at > self.ttl
            unknown = (kid or "") not in self._keys
            # An unknown kid may be a fresh rotation; but don't let a flood of forged kids
            # hammer the issuer: at most one refresh every 10 s for that reason.
            if stale or (unknown and time.monotonic() - self._last_refresh_attempt > 10):
                try:
                    self._load()
                except Exception as exc:  # keep serving with the keys we have
                    log.warning("cannot load the issuer's keys: %s", exc)
                    if not self._keys:
                        raise Unauthenticated("the token issuer's keys are unavailable") from exc
            found = self._keys.get(kid or "")
            if found is None and kid is None and len(self._keys) == 1:
                found = next(iter(self._keys.values()))
        if found is None:
            raise Unauthenticated("token signed by an unknown key")
        return found


class Authenticator(SharedExtension):
    """Shared by every HTTP entrypoint of a container: verifies the caller's token."""

    def setup(self):
        config = self.container.config
        self.keys = KeySet(config)
        self.issuer = config.get("AUTH_ISSUER", "chuangwei")
        self.audience = config.get("AUTH_AUDIENCE", "chuangwei")
        self.grants_claim = config.get("AUTH_GRANTS_CLAIM", "grants")
        self.leeway = float(config.get("AUTH_LEEWAY", 30))
        if not self.keys.configured:
            log.warning("%s: no AUTH_JWKS_URL/AUTH_JWKS_FILE/AUTH_JWKS configured: every "
                        "endpoint but the public ones answers 401", self.container.service_name)

    @staticmethod
    def token_of(request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthenticated("Authorization header must be 'Bearer <token>'")
            return value.strip()
        return request.cookies.get(ACCESS_COOKIE) or None

    def verify(self, token: str) -> Principal:
        return verify_token(token, self.keys, issuer=self.issuer, audience=self.audience,
                            leeway=self.leeway, grants_claim=self.grants_claim)

    def authenticate(self, request) -> Principal:
        token = self.token_of(request)
        if not token:
            raise Unauthenticated("sign in first: no access token")
        if not self.keys.configured:
            raise Unauthenticated("this service has no token issuer configured")
        return self.verify(token)


def verify_token(token: str, keys: KeySet, issuer: str, audience: str, leeway: float = 30,
                 grants_claim: str = "grants") -> Principal:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthenticated("access token is malformed") from exc
    if header.get("alg") not in ALGORITHMS:
        raise Unauthenticated(f"token algorithm {header.get('alg')!r} is not accepted")
    key = keys.key(header.get("kid"))
    try:
        claims = jwt.decode(token, key=key, algorithms=ALGORITHMS, audience=audience, issuer=issuer,
                            leeway=leeway, options={"require": ["exp", "iat", "sub"]})
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("access token has expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"access token rejected: {exc}") from exc
    return principal_from_claims(claims, grants_claim)


# --- issuing (the accounts service and the tests use this) ---

@dataclass
class SigningKey:
    """An issuer's private key and its public JWK."""
    private_pem: bytes
    kid: str
    algorithm: str = "ES256"
    public_jwk: dict = field(default_factory=dict)

    @classmethod
    def generate(cls, kid: str | None = None) -> "SigningKey":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cls.from_pem(pem, kid)

    @classmethod
    def from_pem(cls, pem: bytes, kid: str | None = None) -> "SigningKey":
        import hashlib
        from cryptography.hazmat.primitives import serialization
        from jwt.algorithms import ECAlgorithm
        private = serialization.load_pem_private_key(pem, password=None)
        public_jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
        kid = kid or hashlib.sha256(json.dumps(public_jwk, sort_keys=True).encode()).hexdigest()[:16]
        public_jwk.update({"kid": kid, "use": "sig", "alg": "ES256"})
        return cls(private_pem=pem, kid=kid, public_jwk=public_jwk)

    def jwks(self) -> dict:
        return {"keys": [self.public_jwk]}

    def sign(self, claims: dict) -> str:
        return jwt.encode(claims, self.private_pem, algorithm=self.algorithm, headers={"kid": self.kid})


def access_claims(subject: str, name: str, grants: Iterable[Grant | dict], *, issuer: str = "chuangwei",
                  audience: str = "chuangwei", ttl: int = 300, kind: str = "user",
                  token_id: str | None = None, now: float | None = None) -> dict:
    import uuid
    now = int(now if now is not None else time.time())
    return {
        "iss": issuer, "aud": audience, "sub": subject, "name": name, "kind": kind,
        "grants": [g if isinstance(g, dict) else {"role": g.role, "node": g.node} for g in grants],
        "jti": token_id or str(uuid.uuid4()), "iat": now, "nbf": now, "exp": now + ttl,
    }
