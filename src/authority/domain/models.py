"""Plain domain objects: what the store persists and the api shows. No ORM, no protobuf."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime

from authority.domain.errors import InvalidArgument, shown

_ORG_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])")
_PRINCIPAL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._@-]{0,127}")


class Role(enum.StrEnum):
    """A principal's role in an organisation, strongest first."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class PrincipalKind(enum.StrEnum):
    USER = "user"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class Organization:
    name: str
    display_name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    kind: PrincipalKind
    global_admin: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Membership:
    organization: str
    principal: str
    role: Role


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A stored token. `secret_hash` is the keyed hash of the value; the value is never kept."""

    token_id: str
    secret_hash: bytes
    organization: str | None
    subject: str | None
    label: str
    description: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    created_by: str
    properties: dict[str, str] = field(default_factory=dict)


def check_organization_name(name: str, field_name: str = "organization") -> str:
    """Organisation slugs: lowercase letters, digits and inner dashes, 2 to 63 characters."""
    if not name:
        raise InvalidArgument(field_name, "is required (an organisation name such as acme)")
    if _ORG_NAME_RE.fullmatch(name) is None:
        raise InvalidArgument(
            field_name,
            f"{shown(name)} is not an organisation name: use 2 to 63 lowercase letters, digits "
            "and dashes, starting and ending with a letter or digit",
        )
    return name


def check_principal_name(name: str, field_name: str = "principal") -> str:
    """Principal names: lowercase letters, digits and `._@-`, at most 128 characters."""
    if not name:
        raise InvalidArgument(field_name, "is required (a principal name such as alice)")
    if _PRINCIPAL_NAME_RE.fullmatch(name) is None:
        raise InvalidArgument(
            field_name,
            f"{shown(name)} is not a principal name: use lowercase letters, digits and . _ @ -, "
            "starting with a letter or digit, at most 128 characters",
        )
    return name


def check_text(field_name: str, value: str, limit: int, multiline: bool = False) -> str:
    """Length and no control characters (a NUL byte would not even store on PostgreSQL)."""
    if len(value) > limit:
        raise InvalidArgument(field_name, f"at most {limit} characters (got {len(value)})")
    allowed = "\n\t" if multiline else ""
    if any((ord(char) < 32 and char not in allowed) or char == "\x7f" for char in value):
        raise InvalidArgument(field_name, "must not contain control characters")
    return value
