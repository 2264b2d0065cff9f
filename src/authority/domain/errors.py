"""One error hierarchy for every refusal; api/errors.py maps each class to a gRPC status.

Every refusal carries a stable machine-readable `reason` (sent as a google.rpc.ErrorInfo with
domain `authority.v1`), so that clients branch on data, not on message text. Messages are for
people: they never carry a secret, and a bad value appears in them only through `shown()`.
"""

from __future__ import annotations

import enum
import re

ERROR_DOMAIN = "authority.v1"

# How much of a bad value a message may quote: enough to recognise it, never enough to overflow
# gRPC's trailer limit (8 KiB by default) however many fields are wrong.
SHOWN_PREFIX = 40
# Anything shaped like one of our token values (or a long run of letters and digits, which a
# secret of another system could be) is never quoted back.
_SECRET_SHAPED = re.compile(r"tka_|[0-9A-Za-z]{32,}")


class Reason(enum.StrEnum):
    """Why a call was refused. Stable: clients compare against these strings."""

    # INVALID_ARGUMENT
    FIELD_INVALID = "FIELD_INVALID"
    BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
    PAGE_TOKEN_INVALID = "PAGE_TOKEN_INVALID"
    # UNAUTHENTICATED
    CREDENTIALS_MISSING = "CREDENTIALS_MISSING"
    TOKEN_MALFORMED = "TOKEN_MALFORMED"
    TOKEN_UNKNOWN = "TOKEN_UNKNOWN"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_REVOKED = "TOKEN_REVOKED"
    # PERMISSION_DENIED
    SCOPE_MISSING = "SCOPE_MISSING"
    GLOBAL_ADMIN_REQUIRED = "GLOBAL_ADMIN_REQUIRED"
    ROLE_TOO_LOW = "ROLE_TOO_LOW"
    SUBJECT_OUTRANKS_ISSUER = "SUBJECT_OUTRANKS_ISSUER"
    SCOPE_EXCEEDS_ISSUER = "SCOPE_EXCEEDS_ISSUER"
    LIFETIME_EXCEEDS_ISSUER = "LIFETIME_EXCEEDS_ISSUER"
    # NOT_FOUND (worded the same whether the thing is missing or hidden from the caller)
    ORGANIZATION_NOT_FOUND = "ORGANIZATION_NOT_FOUND"
    TOKEN_NOT_FOUND = "TOKEN_NOT_FOUND"
    PRINCIPAL_NOT_FOUND = "PRINCIPAL_NOT_FOUND"
    NOT_A_MEMBER = "NOT_A_MEMBER"
    # ALREADY_EXISTS
    ALREADY_EXISTS = "ALREADY_EXISTS"
    # FAILED_PRECONDITION
    SUBJECT_NOT_A_MEMBER = "SUBJECT_NOT_A_MEMBER"
    LAST_OWNER = "LAST_OWNER"
    LAST_GLOBAL_ADMIN_TOKEN = "LAST_GLOBAL_ADMIN_TOKEN"
    ALREADY_BOOTSTRAPPED = "ALREADY_BOOTSTRAPPED"
    POSITION_EXPIRED = "POSITION_EXPIRED"
    # RESOURCE_EXHAUSTED
    LIMIT_REACHED = "LIMIT_REACHED"
    # UNAVAILABLE
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    STORE_CONTENDED = "STORE_CONTENDED"
    # INTERNAL (not a refusal: a fault, with an incident id in the message)
    INTERNAL = "INTERNAL"


def shown(value: str) -> str:
    """A bad value as a message may quote it: escaped, at most SHOWN_PREFIX characters, and
    never anything shaped like a secret."""
    if _SECRET_SHAPED.search(value):
        return "(a value shaped like a secret, not shown)"
    if len(value) > SHOWN_PREFIX:
        return f"{value[:SHOWN_PREFIX]!r}... ({len(value)} characters)"
    return repr(value)


class AuthorityError(Exception):
    """A refusal a caller can act on. The message is shown to the caller as is."""

    default_reason = Reason.INTERNAL

    def __init__(self, message: str, reason: Reason | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason


class InvalidArgument(AuthorityError):
    """A field of the request is missing or malformed; `field` names it."""

    default_reason = Reason.FIELD_INVALID

    def __init__(self, field: str, message: str, reason: Reason | None = None) -> None:
        super().__init__(f"{field}: {message}", reason)
        self.field = field
        self.description = message


class Unauthenticated(AuthorityError):
    """No usable bearer token was presented."""

    default_reason = Reason.CREDENTIALS_MISSING


class PermissionDenied(AuthorityError):
    """The caller is known but may not do this."""

    default_reason = Reason.ROLE_TOO_LOW


class NotFound(AuthorityError):
    """No such thing, or the caller may not know it exists."""

    default_reason = Reason.ORGANIZATION_NOT_FOUND


class AlreadyExists(AuthorityError):
    """A unique name is taken."""

    default_reason = Reason.ALREADY_EXISTS


class FailedPrecondition(AuthorityError):
    """The request is well formed but the current state forbids it."""

    default_reason = Reason.LAST_OWNER


class ResourceExhausted(AuthorityError):
    """A limit was reached; `retry_after_seconds` (sent as a google.rpc.RetryInfo) says when
    to try again, when that is known."""

    default_reason = Reason.LIMIT_REACHED

    def __init__(
        self, message: str, reason: Reason | None = None, retry_after_seconds: float | None = None
    ) -> None:
        super().__init__(message, reason)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(AuthorityError):
    """The token store cannot be reached (or stayed contended); the caller may retry."""

    default_reason = Reason.STORE_UNAVAILABLE
