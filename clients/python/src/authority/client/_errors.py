"""One exception hierarchy for every refused call, built from the gRPC status.

The server sends a `google.rpc.Status` with rich details next to the plain status: an
`ErrorInfo` whose stable `reason` (e.g. `TOKEN_REVOKED`, `LAST_OWNER`) every exception exposes
as `.reason`, so that callers branch on data rather than on message text; for
INVALID_ARGUMENT a `BadRequest` naming the offending fields, exposed as `field_violations`; and
for a rate limit a `RetryInfo`, exposed as `ResourceExhausted.retry_delay`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field: its name (e.g. `label`) and what is wrong with it."""

    field: str
    description: str


class AuthorityClientError(Exception):
    """A call to the Token Authority failed; `code` and `message` say how.

    Catch this to handle every refusal; catch a subclass to handle one status.
    """

    code: grpc.StatusCode

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        # The server's ErrorInfo reason (domain authority.v1); empty when it sent none.
        self.reason = reason


class InvalidArgument(AuthorityClientError):
    """A request field is missing or malformed; `field_violations` name the fields. Also a
    ValidateBatch with more requests than the server takes (reason `BATCH_TOO_LARGE`)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        field_violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(code, message, reason)
        self.field_violations = field_violations

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the offending fields, in the server's order."""
        return tuple(violation.field for violation in self.field_violations)


class Unauthenticated(AuthorityClientError):
    """No usable bearer token: none given, malformed, unknown, expired or revoked."""


class PermissionDenied(AuthorityClientError):
    """The bearer token is known but may not do this (its scopes or its role)."""


class NotFound(AuthorityClientError):
    """No such thing, or the bearer may not know that it exists."""


class AlreadyExists(AuthorityClientError):
    """A unique name (organisation, principal) is taken."""


class FailedPrecondition(AuthorityClientError):
    """The request is well formed but the current state forbids it."""


class ResourceExhausted(AuthorityClientError):
    """A rate or quota limit was reached; retrying later may help. `retry_delay` is how long
    the server asks the caller to wait (its RetryInfo), None when it did not say."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(code, message, reason)
        self.retry_delay = retry_delay


class Unavailable(AuthorityClientError):
    """The server could not be reached; retrying later may help."""


class DeadlineExceeded(AuthorityClientError):
    """The call took longer than the client's timeout."""


class Internal(AuthorityClientError):
    """The server failed; its log holds the incident named in the message."""


_BY_CODE: dict[grpc.StatusCode, type[AuthorityClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: Internal,
}


ERROR_DOMAIN = "authority.v1"


def error_from_rpc(error: grpc.RpcError) -> AuthorityClientError:
    """The client exception for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code = error.code()
    message = error.details() or code.name
    details = _details(error)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(code, message, details.reason, details.violations)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(code, message, details.reason, details.retry_delay)
    return _BY_CODE.get(code, AuthorityClientError)(code, message, details.reason)


@dataclass(frozen=True, slots=True)
class _Details:
    reason: str = ""
    violations: tuple[FieldViolation, ...] = ()
    retry_delay: timedelta | None = None


def _details(error: Any) -> _Details:
    """The ErrorInfo reason, the BadRequest field violations and the RetryInfo delay of the
    rich status."""
    # Both sync errors and AioRpcError offer code(), details() and trailing_metadata(),
    # which is all from_call reads. A status it cannot parse is no reason to hide the error.
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)
    except ValueError:
        return _Details()
    if status is None:
        return _Details()
    reason = ""
    violations: list[FieldViolation] = []
    retry_delay: timedelta | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == ERROR_DOMAIN:
                reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(
                FieldViolation(item.field, item.description)
                for item in bad_request.field_violations
            )
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
            retry_delay = retry_info.retry_delay.ToTimedelta()
    return _Details(reason, tuple(violations), retry_delay)
