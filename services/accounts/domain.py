"""Pure rules of the accounts service: usernames, the password policy, who may grant what,
API-token grants, the login rate limit and the secrets' storage form. No I/O here."""
from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from datetime import datetime, timedelta
from typing import Iterable, Sequence

from services.contracts.errors import RuleViolation
from services.contracts.nodes import subtree_prefix  # noqa: F401 (domain API)
from services.contracts.identity import ADMINISTRATOR, ROLE_NAMES, Grant

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{1,63}$"
_USERNAME = re.compile(USERNAME_PATTERN)
MIN_PASSWORD_LENGTH = 10
# argon2 hashes whatever it is given; a megabyte "password" would only cost CPU and memory.
MAX_PASSWORD_LENGTH = 256

# The passwords tried first by every guessing script (and the ones people pick when told
# "at least ten characters"). Lower-cased; compared case-insensitively.
COMMON_PASSWORDS = frozenset({
    "1234567890", "12345678910", "0123456789", "0987654321", "1234567890a", "a123456789",
    "abc1234567", "abcd123456", "abcdefghij", "qwertyuiop", "qwerty1234", "1qaz2wsx3edc",
    "1q2w3e4r5t", "password12", "password123", "password1234", "passw0rd123", "iloveyou12",
    "admin12345", "admin123456", "administrator", "woaini1314", "woaini520", "5201314520",
    "1314520520", "chuangwei123", "changeme123", "welcome123", "letmein123", "p@ssw0rd123",
})


def normalize_username(raw: str) -> str:
    """Usernames compare case-insensitively and in one Unicode form: 'ZhangWei' is 'zhangwei'."""
    return unicodedata.normalize("NFKC", raw).strip().lower()


def check_username(raw: str, field: str = "username") -> str:
    name = normalize_username(raw)
    if not _USERNAME.fullmatch(name):
        raise RuleViolation(field, "用户名须为 2–64 个字母、数字或 . _ @ -，以字母或数字开头; "
                                   "a username is 2-64 letters, digits or . _ @ -, starting with a letter or digit")
    return name


def password_problems(password: str, username: str | None = None,
                      min_length: int = MIN_PASSWORD_LENGTH) -> list[str]:
    """Why `password` may not be used (empty when it may)."""
    problems = []
    if len(password) < min_length:
        problems.append(f"密码至少 {min_length} 个字符; a password needs at least {min_length} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        problems.append(f"密码最多 {MAX_PASSWORD_LENGTH} 个字符; a password has at most "
                        f"{MAX_PASSWORD_LENGTH} characters")
    if password != password.strip():
        # Copy-paste adds spaces the user never sees; refuse rather than store a password
        # that can never be typed again.
        problems.append("密码不能以空白开头或结尾; a password may not start or end with whitespace")
    if any(unicodedata.category(c) == "Cc" for c in password):
        problems.append("密码不能包含控制字符; a password may not contain control characters")
    lowered = password.lower()
    if len(set(password)) < 4:
        problems.append("密码字符种类过少; a password needs at least four different characters")
    if lowered in COMMON_PASSWORDS:
        problems.append("密码过于常见; this password is among the first ones guessed")
    if username and len(username) >= 4 and normalize_username(username) in lowered:
        problems.append("密码不能包含用户名; a password may not contain the username")
    return problems


def check_password(password: str, username: str | None = None, min_length: int = MIN_PASSWORD_LENGTH,
                   field: str = "password") -> None:
    problems = password_problems(password, username, min_length)
    if problems:
        raise RuleViolation(field, "; ".join(problems))


# --- grants ---

def role_name(role: str) -> str:
    return ROLE_NAMES.get(role, role)


def administers(grants: Iterable[Grant], node: str) -> bool:
    """Whether these grants make their holder an administrator of `node` (of it or above it)."""
    return any(g.role == ADMINISTRATOR and g.covers(node) for g in grants)


def grants_outside_administration(admin_grants: Sequence[Grant], wanted: Sequence[Grant]) -> list[int]:
    """Indexes of the `wanted` grants an administrator holding `admin_grants` may not give:
    an administrator grants any role, but only on nodes within its own subtree."""
    return [i for i, grant in enumerate(wanted) if not administers(admin_grants, grant.node)]


def grants_wider_than(holder_grants: Sequence[Grant], wanted: Sequence[Grant]) -> list[int]:
    """Indexes of the `wanted` grants the holder does not itself hold (the same role on the
    node or above it): an API token carries no more than its creator."""
    return [i for i, grant in enumerate(wanted)
            if not any(h.role == grant.role and h.covers(grant.node) for h in holder_grants)]


def effective_token_grants(token_grants: Sequence[Grant], owner_grants: Sequence[Grant]) -> list[Grant]:
    """What an API token may still do: its grants that its owner still holds. A grant taken
    from the owner is taken from the owner's tokens too."""
    wider = set(grants_wider_than(owner_grants, token_grants))
    return [g for i, g in enumerate(token_grants) if i not in wider]


def distinct_grants(grants: Iterable[Grant]) -> list[Grant]:
    seen, out = set(), []
    for grant in grants:
        if grant not in seen:
            seen.add(grant)
            out.append(grant)
    return out




# --- secrets (refresh tokens, API tokens) ---

REFRESH_PREFIX = "cwr_"
API_TOKEN_PREFIX = "cwt_"


def new_secret(prefix: str) -> str:
    """256 random bits; the prefix tells a leaked secret's kind (and secret scanners) apart."""
    return prefix + secrets.token_urlsafe(32)


def secret_digest(secret: str) -> str:
    """How a secret is stored. The secrets are random and long, so a fast hash is enough:
    nobody can guess their way through 2^256 candidates (unlike passwords)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_token_expiry(expires_at: datetime, now: datetime, max_days: int, field: str = "expires_at") -> None:
    if expires_at <= now:
        raise RuleViolation(field, "有效期须在将来; the expiry must lie in the future")
    if expires_at > now + timedelta(days=max_days):
        raise RuleViolation(field, f"有效期最长 {max_days} 天; an API token lives at most {max_days} days")
