"""One error hierarchy for every refusal; api/errors.py maps each class to a gRPC status."""

from __future__ import annotations


class AuthorityError(Exception):
    """A refusal a caller can act on. The message is shown to the caller as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AuthorityError):
    """A field of the request is missing or malformed; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class Unauthenticated(AuthorityError):
    """No usable bearer token was presented."""


class PermissionDenied(AuthorityError):
    """The caller is known but may not do this."""


class NotFound(AuthorityError):
    """No such thing, or the caller may not know it exists."""


class AlreadyExists(AuthorityError):
    """A unique name is taken."""


class FailedPrecondition(AuthorityError):
    """The request is well formed but the current state forbids it."""


class ResourceExhausted(AuthorityError):
    """A limit was reached."""


class Unavailable(AuthorityError):
    """The token store cannot be reached; the caller may retry."""
