"""SQLAlchemy 2 typed ORM models. Names (slugs) are the keys: they never change once made."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class OrganizationRow(Base):
    __tablename__ = "organizations"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PrincipalRow(Base):
    __tablename__ = "principals"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    global_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MembershipRow(Base):
    __tablename__ = "memberships"

    organization: Mapped[str] = mapped_column(
        ForeignKey("organizations.name", ondelete="CASCADE"), primary_key=True
    )
    principal: Mapped[str] = mapped_column(
        ForeignKey("principals.name", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))


class TokenRow(Base):
    """`seq` orders tokens (newest first) and is the list cursor; `token_id` is public."""

    __tablename__ = "tokens"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_id: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    organization: Mapped[str | None] = mapped_column(ForeignKey("organizations.name"))
    subject: Mapped[str | None] = mapped_column(ForeignKey("principals.name"))
    label: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    scopes: Mapped[list[str]] = mapped_column(JSON)
    properties: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(160))
    # When the change log told of its expiry (token.expired) and of its coming expiry
    # (token.expiring): set once, in the unit of work that records the event.
    expiry_announced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expiring_announced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_tokens_organization_seq", "organization", "seq"),
        Index("ix_tokens_organization_subject_seq", "organization", "subject", "seq"),
        # Only the tokens still to announce (see migration 0004).
        Index(
            "ix_tokens_expiry_announced_pending",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL AND expiry_announced_at IS NULL"),
            sqlite_where=text("expires_at IS NOT NULL AND expiry_announced_at IS NULL"),
        ),
        Index(
            "ix_tokens_expiring_announced_pending",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL AND expiring_announced_at IS NULL"),
            sqlite_where=text("expires_at IS NOT NULL AND expiring_announced_at IS NULL"),
        ),
    )


class FactRow(Base):
    """Installation-wide facts, e.g. the pepper's fingerprint (never the pepper)."""

    __tablename__ = "facts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class EventRow(Base):
    """The change log: append-only, `seq` strictly increasing in commit order.

    The audit trail, WatchEvents and every process's cache all read it. No secret, hash or
    password is ever written here.
    """

    __tablename__ = "events"

    # BIGINT on PostgreSQL; on SQLite an INTEGER PRIMARY KEY is the rowid, which only grows.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(48))
    organization: Mapped[str | None] = mapped_column(String(63))
    subject: Mapped[str] = mapped_column(String(160))
    token_id: Mapped[str | None] = mapped_column(String(16))
    actor_principal: Mapped[str | None] = mapped_column(String(128))
    actor_token_id: Mapped[str | None] = mapped_column(String(16))
    peer: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    details: Mapped[dict[str, str]] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_events_organization_seq", "organization", "seq"),
        Index("ix_events_occurred_at", "occurred_at"),
        # The audit trail's filters (migration 0005).
        Index("ix_events_actor_principal_seq", "actor_principal", "seq"),
        Index("ix_events_subject_seq", "subject", "seq"),
    )


class SigningKeyRow(Base):
    """The keys that sign access tokens: public raw, private sealed (see domain/signing.py).
    At most one has no retired_at (the current key); rotation keeps it so."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(32), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    sealed_private_key: Mapped[bytes] = mapped_column(LargeBinary(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
