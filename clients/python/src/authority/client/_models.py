"""Plain, immutable results of the client's calls: no protobuf types leak out of the client."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


class Reason(enum.StrEnum):
    """Why Validate refused a token; the values are the proto enum names, as grpcurl shows them.

    A valid answer carries `UNSPECIFIED`. `UNRECOGNIZED` stands for a reason added to the
    service after this client was built: treat it as a refusal like any other.
    """

    UNSPECIFIED = "REASON_UNSPECIFIED"
    MALFORMED = "REASON_MALFORMED"
    UNKNOWN = "REASON_UNKNOWN"
    EXPIRED = "REASON_EXPIRED"
    REVOKED = "REASON_REVOKED"
    PERMISSION_DENIED = "REASON_PERMISSION_DENIED"
    INVALID_PERMISSION = "REASON_INVALID_PERMISSION"
    UNRECOGNIZED = "UNRECOGNIZED"


class ScopeProfile(enum.StrEnum):
    """Built-in scope sets: `all` is upload and download."""

    ALL = "all"
    UPLOAD_ONLY = "upload-only"
    DOWNLOAD_ONLY = "download-only"


class Role(enum.StrEnum):
    """A principal's role in an organisation."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class PrincipalKind(enum.StrEnum):
    """A person or a machine."""

    USER = "user"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """The answer to Validate. A refusal is `valid=False` with a `reason`, never an exception.

    The token's details are filled whenever the token was found, also when it was refused as
    expired, revoked or lacking the permission.
    """

    valid: bool
    reason: Reason
    token_id: str = ""
    organization: str = ""
    subject: str = ""
    scopes: tuple[str, ...] = ()
    expires_at: datetime | None = None
    # The token's properties as given when it was issued.
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Token:
    """A token as the service shows it: everything but its secret."""

    token_id: str
    organization: str
    subject: str
    label: str
    description: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    created_by: str
    properties: Mapping[str, str] = field(default_factory=dict, hash=False)
    display_hint: str = ""

    @property
    def revoked(self) -> bool:
        """True once the token has been revoked (it then never validates again)."""
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new token and its value. The secret is returned only once: store it now.

    `repr()` leaves the secret out so that it does not end up in logs by accident.
    """

    token: Token
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A short-lived signed access token (a JWT) from ExchangeKey or RefreshToken.

    Present `access_token` like an API key; `token_id` (its `jti`) is safe to log. RefreshToken
    accepts it, even once expired, until `refresh_until`; after that, exchange the key again.
    `repr()` leaves the token out: it is a bearer secret until it expires.
    """

    access_token: str = field(repr=False)
    token_id: str
    expires_at: datetime
    refresh_until: datetime | None


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
