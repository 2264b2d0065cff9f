"""The one place where domain errors become gRPC statuses, and where every call is logged.

Servicer methods are wrapped by `management` (authenticates the bearer first), `streaming` (the
same for a server stream) or `public` (Validate, Ping). Each maps `AuthorityError` to its status
with google.rpc details, turns any other exception into INTERNAL without leaking a stack trace
to the caller, and logs one line per call: method, status, duration, token id. Never a secret.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from authority.domain import errors
from authority.domain.audit import Refusal
from authority.domain.policy import Caller
from authority.thin_contract import PEER_HEADER

# By class, and looked up along the class hierarchy (most specific first), so that a new
# subclass of NotFound is NOT_FOUND without being listed here.
_STATUS: dict[type[errors.AuthorityError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}

R = TypeVar("R")
log = logging.getLogger("authority.calls")


Context = grpc.aio.ServicerContext[Any, Any]


class HasRuntime(Protocol):
    @property
    def runtime(self) -> HasAuthenticate: ...


class HasAuthenticate(Protocol):
    async def authenticate(self, context: Context, permission: str, request_id: str) -> Caller: ...
    async def record_refusal(self, refusal: Refusal) -> None: ...


class ScopeMissing(errors.PermissionDenied):
    """A valid bearer whose scopes do not cover the method: refused, but its caller is known
    (and recorded as such in the audit trail)."""

    def __init__(self, message: str, caller: Caller) -> None:
        super().__init__(message, errors.Reason.SCOPE_MISSING)
        self.caller = caller


# A message longer than this is cut: with the details it must fit gRPC's trailers (8 KiB).
MAX_MESSAGE = 1000


def peer_of(context: Context) -> str:
    """The caller's address, as grpcio gives it (`ipv4:10.0.0.7:51234`). Behind the thin
    server's Envoy, grpcio's own peer is the private unix socket; only then is Envoy's header
    trusted (a caller reaching grpcio directly on a port cannot set it)."""
    peer = context.peer()
    if not peer.startswith("unix:"):
        return peer
    for key, value in context.invocation_metadata() or ():
        if key == PEER_HEADER and isinstance(value, str) and 0 < len(value) <= 64:
            # Envoy writes 10.0.0.7:51234 or [::1]:51234.
            return f"ipv6:{value}" if value.startswith("[") else f"ipv4:{value}"
    return peer


def code_of(error: errors.AuthorityError) -> grpc.StatusCode:
    """The status code of a domain error: that of its nearest mapped class."""
    for cls in type(error).__mro__:
        code = _STATUS.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def _error_info(reason: errors.Reason) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason.value, domain=errors.ERROR_DOMAIN))
    return detail


def _bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def status_of(error: errors.AuthorityError) -> grpc.Status:
    """The gRPC status for a domain error, as grpcio sends it (see `status_message_of`)."""
    converted: grpc.Status = rpc_status.to_status(status_message_of(error))
    return converted


def status_message_of(error: errors.AuthorityError) -> status_pb2.Status:
    """The google.rpc.Status for a domain error, with an ErrorInfo (its reason), for a bad
    field a BadRequest naming it, and for a limit with a known delay a RetryInfo."""
    code = code_of(error)
    status = status_pb2.Status(code=code.value[0], message=_bounded(error.message))
    status.details.append(_error_info(error.reason))
    if isinstance(error, errors.InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.field, description=_bounded(error.description)
                    )
                ]
            )
        )
        status.details.append(detail)
    if isinstance(error, errors.ResourceExhausted) and error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, round(error.retry_after_seconds * 1e9)))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(detail)
    return status


async def _abort(context: Context, status: grpc.Status) -> NoReturn:
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable: abort raises")


def internal_status(incident: str) -> status_pb2.Status:
    """What a caller hears of a bug: INTERNAL, an incident id to find the log line by, and
    ErrorInfo INTERNAL; never the exception's text."""
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (incident {incident}); the server log has the details",
        details=[_error_info(errors.Reason.INTERNAL)],
    )


async def _abort_internal(context: Context, method: str, error: Exception) -> NoReturn:
    incident = uuid.uuid4().hex[:12]
    log.error("internal error in %s (incident %s)", method, incident, exc_info=error)
    await _abort(context, rpc_status.to_status(internal_status(incident)))


def log_call(
    method: str, code: str, started: float, token_id: str, level: int, **fields: object
) -> None:
    """The one log line of a call: method, status, duration, token id. Never a secret."""
    if log.isEnabledFor(level):
        log.log(
            level,
            "rpc",
            extra={
                "rpc_method": method,
                "rpc_status": code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "token_id": token_id,
                **fields,
            },
        )


async def fail(
    context: Context,
    method: str,
    error: Exception,
    started: float,
    token_id: str = "",
    **fields: object,
) -> NoReturn:
    """End a call that raised: a domain error becomes its status, anything else INTERNAL."""
    if isinstance(error, errors.AuthorityError):
        status = status_of(error)
        log_call(
            method, status.code.name, started, token_id, logging.INFO, reason=error.reason, **fields
        )
        await _abort(context, status)
    log_call(method, "INTERNAL", started, token_id, logging.ERROR, **fields)
    await _abort_internal(context, method, error)


def refusal_of(
    method: str, error: Exception, caller: Caller | None, peer: str, request_id: str
) -> Refusal | None:
    """What the audit trail records of a failed management call: its status and reason, never
    its message; of a fault (INTERNAL) only that. None when the store itself is unavailable
    (there is nowhere to record it, and it is not the caller's doing)."""
    if isinstance(error, errors.Unavailable):
        return None
    if isinstance(error, errors.AuthorityError):
        code, reason = code_of(error).name, error.reason.value
    else:
        code, reason = "INTERNAL", errors.Reason.INTERNAL.value
    if caller is None and isinstance(error, ScopeMissing):
        # A valid bearer refused for its scopes is known, though authentication did not end.
        caller = error.caller
    return Refusal.of(method, code, reason, caller, peer, request_id)


async def refuse(
    servicer: HasRuntime,
    context: Context,
    method: str,
    error: Exception,
    caller: Caller | None,
    started: float,
    request_id: str,
    **fields: object,
) -> NoReturn:
    """End a failed management call: record the refusal in the audit trail, then `fail`."""
    refusal = refusal_of(method, error, caller, peer_of(context), request_id)
    if refusal is not None:
        await servicer.runtime.record_refusal(refusal)
    token_id = caller.token_id if caller is not None else ""
    await fail(context, method, error, started, token_id, request_id=request_id, **fields)


def new_request_id() -> str:
    """Names one call in the log line, the audit trail and nowhere else."""
    return uuid.uuid4().hex[:16]


S = TypeVar("S", bound=HasRuntime)
Request = TypeVar("Request")


def permission_of(service: ServiceDescriptor, name: str) -> str:
    """The permission a bearer needs for one RPC, derived from the service descriptor (so no
    permission string is typed by hand): `authority.v1.TokenAuthority.IssueToken`."""
    method = service.methods_by_name.get(name)
    if method is None:
        raise LookupError(f"{service.full_name} has no method {name}")
    return method.full_name


def management(
    service: ServiceDescriptor,
) -> Callable[
    [Callable[[S, Request, Caller], Awaitable[R]]],
    Callable[[S, Request, Context], Awaitable[R]],
]:
    """Authenticate the bearer for the method of `service` named like the handler (the
    method's full name is the permission the bearer needs), run the call, map errors, log
    one line. A refused call is also put in the audit trail (`Runtime.record_refusal`)."""

    def wrap(
        handler: Callable[[S, Request, Caller], Awaitable[R]],
    ) -> Callable[[S, Request, Context], Awaitable[R]]:
        method = permission_of(service, handler.__name__)

        @functools.wraps(handler)
        async def call(servicer: S, request: Request, context: Context) -> R:
            started = time.perf_counter()
            token_id = ""
            request_id = new_request_id()
            caller: Caller | None = None
            try:
                caller = await servicer.runtime.authenticate(context, method, request_id)
                token_id = caller.token_id
                result = await handler(servicer, request, caller)
            except Exception as error:
                await refuse(servicer, context, method, error, caller, started, request_id)
            log_call(method, "OK", started, token_id, logging.INFO, request_id=request_id)
            return result

        return call

    return wrap


# Authenticates the stream's bearer again, now (a revoked or expired bearer raises).
Reauthenticate = Callable[[], Awaitable[Caller]]


def streaming(
    service: ServiceDescriptor,
) -> Callable[
    [Callable[[S, Request, Caller, Reauthenticate], AsyncGenerator[R, None]]],
    Callable[[S, Request, Context], AsyncIterator[R]],
]:
    """`management` for a server stream: authenticate before the first message, map an error
    raised at any point to its status (with the same ErrorInfo), log one line when the stream
    ends (OK, its status, or CANCELLED when the caller hung up) with how many messages went.

    The handler is also given a way to authenticate the bearer again, so that a long-lived
    stream stops once its bearer is revoked or expires.
    """

    def wrap(
        handler: Callable[[S, Request, Caller, Reauthenticate], AsyncGenerator[R, None]],
    ) -> Callable[[S, Request, Context], AsyncIterator[R]]:
        method = permission_of(service, handler.__name__)

        @functools.wraps(handler)
        async def call(servicer: S, request: Request, context: Context) -> AsyncIterator[R]:
            started = time.perf_counter()
            token_id = ""
            request_id = new_request_id()
            sent = 0
            ended = "CANCELLED"  # unless it ends otherwise: the caller hung up
            caller: Caller | None = None

            async def authenticate() -> Caller:
                return await servicer.runtime.authenticate(context, method, request_id)

            try:
                caller = await authenticate()
                token_id = caller.token_id
                async with contextlib.aclosing(
                    handler(servicer, request, caller, authenticate)
                ) as messages:
                    async for message in messages:
                        yield message
                        sent += 1
                ended = "OK"
            except Exception as error:
                ended = ""  # `refuse` logs the line
                await refuse(
                    servicer, context, method, error, caller, started, request_id, messages=sent
                )
            finally:
                if ended:
                    log_call(
                        method,
                        ended,
                        started,
                        token_id,
                        logging.INFO,
                        request_id=request_id,
                        messages=sent,
                    )

        return call

    return wrap


def keyed(
    service: ServiceDescriptor,
) -> Callable[
    [Callable[[Any, Request, Context, str], Awaitable[R]]],
    Callable[[Any, Request, Context], Awaitable[R]],
]:
    """For a call whose credential is in the request (ExchangeKey): no bearer, but a request id
    that its audit event and its one INFO log line share (such calls are few, and recorded)."""

    def wrap(
        handler: Callable[[Any, Request, Context, str], Awaitable[R]],
    ) -> Callable[[Any, Request, Context], Awaitable[R]]:
        method = permission_of(service, handler.__name__)

        @functools.wraps(handler)
        async def call(servicer: Any, request: Request, context: Context) -> R:
            started = time.perf_counter()
            request_id = new_request_id()
            try:
                result = await handler(servicer, request, context, request_id)
            except Exception as error:
                await fail(context, method, error, started, request_id=request_id)
            log_call(method, "OK", started, "", logging.INFO, request_id=request_id)
            return result

        return call

    return wrap


def public(
    service: ServiceDescriptor,
) -> Callable[
    [Callable[[Any, Request, Context], Awaitable[R]]],
    Callable[[Any, Request, Context], Awaitable[R]],
]:
    """For the hot path: no bearer, errors mapped, one DEBUG line per call."""

    def wrap(
        handler: Callable[[Any, Request, Context], Awaitable[R]],
    ) -> Callable[[Any, Request, Context], Awaitable[R]]:
        method = permission_of(service, handler.__name__)

        @functools.wraps(handler)
        async def call(servicer: Any, request: Request, context: Context) -> R:
            started = time.perf_counter()
            try:
                result = await handler(servicer, request, context)
            except Exception as error:
                await fail(context, method, error, started)
            log_call(method, "OK", started, "", logging.DEBUG)
            return result

        return call

    return wrap
