"""Tables owned by the accounts service (prefixed: several services may share a database)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from services.plumbing.sql import UtcDateTime


class Base(DeclarativeBase):
    pass


class User(Base):
    """A person who signs in. Never deleted (records name them): disabled instead."""
    __tablename__ = "accounts_users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(100))
    # The office the person belongs to: administrators of it (or above) manage the account.
    node: Mapped[str] = mapped_column(String(12), index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    # The account name of the person who created it (None: the create-admin command): what the
    # two-person rule checks (an administrator's own creations cannot second its proposals).
    created_by_subject: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    password_changed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    disabled_by: Mapped[str | None] = mapped_column(String(200))

    grants: Mapped[list["UserGrant"]] = relationship(
        back_populates="user", cascade="all, delete-orphan", order_by="[UserGrant.node, UserGrant.role]")


class UserGrant(Base):
    """A role a user holds on a node (valid for the node's subtree)."""
    __tablename__ = "accounts_grants"
    __table_args__ = (UniqueConstraint("user_id", "role", "node", name="uq_accounts_grant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("accounts_users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    node: Mapped[str] = mapped_column(String(12), index=True)
    granted_at: Mapped[datetime] = mapped_column(UtcDateTime())
    granted_by: Mapped[str] = mapped_column(String(200))
    # The account name of the person who granted it (None: the create-admin command).
    granted_by_subject: Mapped[str | None] = mapped_column(String(200))

    user: Mapped[User] = relationship(back_populates="grants")


class RefreshToken(Base):
    """A signed-in session: exchanged for fresh access tokens until it expires or is revoked."""
    __tablename__ = "accounts_refresh_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("accounts_users.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    client: Mapped[str | None] = mapped_column(String(64))
    # Rotation (issue 27): each use replaces the token with a new one of the same family (the
    # sign-in's first token's id; NULL on that first token and on tokens from before). A
    # replaced token used again after the grace ends the whole family.
    family_id: Mapped[str | None] = mapped_column(String(36), index=True)
    replaced_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ApiToken(Base):
    """A machine's credential: a named secret (shown once, stored as a digest) that is
    exchanged for short-lived access tokens carrying at most its owner's grants."""
    __tablename__ = "accounts_api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("accounts_users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the secret, so an operator can tell which token leaked.
    hint: Mapped[str] = mapped_column(String(16))
    grants: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_by: Mapped[str | None] = mapped_column(String(200))


class LoginAttempt(Base):
    """Recent sign-in attempts, shared by every instance so the rate limit holds stack-wide.
    `username` is what was typed (normalised), whether or not such a user exists."""
    __tablename__ = "accounts_login_attempts"
    __table_args__ = (Index("ix_accounts_login_username_at", "username", "at"),
                      Index("ix_accounts_login_client_at", "client", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128))
    client: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    succeeded: Mapped[bool] = mapped_column(Boolean)


class SigningKey(Base):
    """The issuer's token-signing keys. One is active; retired ones stay published in the
    JWKS until the tokens they signed have expired."""
    __tablename__ = "accounts_signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Encrypted: "fernet:<token>" (operations.KeyCipher, with a key kept outside the database).
    # A plain PEM here is an earlier version's, encrypted at the next start.
    private_pem: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), index=True)
