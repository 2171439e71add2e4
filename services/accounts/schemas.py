"""HTTP schemas of the accounts service (examples in Chinese for the OpenAPI page).

Passwords and secrets are never stripped or otherwise altered: what is typed is what counts.
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.accounts.domain import MAX_PASSWORD_LENGTH, USERNAME_PATTERN
from services.contracts.bounds import CampaignInstant, Offset
from services.contracts.nodes import NodeCode

Role = Literal["administrator", "inspector", "rectifier", "viewer", "platform"]

# Long enough for any real secret, short enough that a hostile body costs nothing.
SecretText = Field(min_length=1, max_length=512)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- signing in ---

class LoginIn(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [{"username": "zhangwei", "password": "周家山路12号公厕"}]})
    # Not the username pattern: a login with a malformed name is just a failed login, and
    # must look like every other failed login.
    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class RefreshIn(_In):
    refresh_token: str = SecretText


class ApiTokenExchangeIn(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [{"token": "cwt_Zx3…"}]})
    token: str = SecretText


class GrantIn(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [{"role": "inspector", "node": "411502008000"}]})
    role: Role
    node: NodeCode


class GrantOut(BaseModel):
    role: Role
    role_name: str = Field(description="角色中文名")
    node: str
    granted_at: datetime | None = None
    granted_by: str | None = None


class AccessTokenOut(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="seconds")
    expires_at: datetime
    kind: Literal["user", "machine"]


class MeOut(BaseModel):
    subject: str
    name: str
    kind: str
    grants: list[GrantOut]
    username: str | None = None
    display_name: str | None = None
    node: str | None = None


class RefreshOut(AccessTokenOut):
    refresh_token: str = Field(description="the refresh token that replaces the one sent (rotation): keep this one")
    refresh_expires_at: datetime = Field(description="the end of the signed-in session (not extended by renewals)")


class LoginOut(AccessTokenOut):
    refresh_token: str = Field(description="exchange at POST /auth/refresh; keep it secret")
    refresh_expires_at: datetime
    user: MeOut


# --- users ---

class UserCreate(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "username": "wangfang", "display_name": "王芳", "node": "411502008000",
        "password": "金牛山街道2026检查", "grants": [{"role": "inspector", "node": "411502008000"}]}]})
    username: str = Field(pattern=USERNAME_PATTERN, description="2–64 letters, digits or . _ @ -; case-insensitive")
    display_name: str = Field(min_length=1, max_length=100, description="姓名, as records show it")
    node: NodeCode = Field(description="the office the person belongs to")
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    grants: list[GrantIn] = Field(default_factory=list, max_length=50)


class UserOut(BaseModel):
    user_id: str
    username: str
    display_name: str
    node: str
    disabled: bool
    grants: list[GrantOut]
    created_at: datetime
    created_by: str
    updated_at: datetime
    password_changed_at: datetime
    disabled_at: datetime | None
    disabled_by: str | None


class UserQuery(_In):
    node: NodeCode | None = Field(default=None, description="users of this office and below")
    disabled: bool | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    offset: Offset = 0


class PasswordChange(_In):
    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    new_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class PasswordReset(_In):
    new_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


# --- API tokens ---

class ApiTokenCreate(_In):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "大屏展示", "grants": [{"role": "viewer", "node": "411502008000"}],
        "expires_at": "2027-03-31T23:59:59+08:00"}]})
    name: str = Field(min_length=1, max_length=100)
    grants: list[GrantIn] = Field(min_length=1, max_length=50)
    expires_at: CampaignInstant | None = Field(default=None, description="default: 90 days from now")


class ApiTokenOut(BaseModel):
    token_id: str
    name: str
    owner: str = Field(description="the username of the account the token acts for")
    hint: str = Field(description="the secret's first characters")
    grants: list[GrantOut]
    created_at: datetime
    created_by: str
    expires_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    status: Literal["active", "expired", "revoked"]


class ApiTokenCreated(ApiTokenOut):
    secret: str = Field(description="shown once, here; only a digest is stored")


class ApiTokenQuery(_In):
    owner: str | None = Field(default=None, max_length=64, description="another user's tokens (administrators)")
    include_inactive: bool = False
    limit: int = Field(default=100, ge=1, le=1000)
    offset: Offset = 0
