"""The hot TokenAuthority methods on the thin path: Validate, ValidateBatch, ValidateStream,
RefreshToken.

Each does what its servicer method in api/token_authority.py does, with the same domain
objects (one Runtime, so one Validator and one cache for both paths) and the same error
mapping (api/errors.status_of), so that a caller cannot tell the paths apart. What differs is
only the transport: requests arrive as bytes, and the pre-rendered answers go out as they are
instead of being parsed into a message for grpcio to serialize again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from authority.api import convert
from authority.api.errors import internal_status, log_call, permission_of, status_message_of
from authority.api.runtime import Runtime
from authority.api.thin._grpc import Code, GrpcError, Messages, SendMessage
from authority.api.token_authority import SERVICE, STREAM_BUFFER
from authority.domain.errors import AuthorityError
from authority.domain.validation import check_batch_size, check_request_id
from authority.thin_contract import path_of
from authority.v1 import token_authority_pb2 as pb

M = TypeVar("M", bound=Message)

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def status_error(error: Exception) -> GrpcError | None:
    """A domain error as the status grpcio sends for it (code, message, details), through the
    one mapping; None for anything else, which is a fault."""
    if not isinstance(error, AuthorityError):
        return None
    status = status_message_of(error)
    return GrpcError(status.code, status.message, status.SerializeToString())


def fault_status(incident: str) -> GrpcError:
    """INTERNAL as the grpcio path answers it (api/errors.internal_status)."""
    status = internal_status(incident)
    return GrpcError(status.code, status.message, status.SerializeToString())


def parse(message_type: type[M], raw: bytes) -> M:
    """A request message; bytes that are not one are refused without being quoted."""
    try:
        return message_type.FromString(raw)
    except DecodeError:
        raise GrpcError(Code.INTERNAL, "the request message could not be parsed") from None


class HotMethods:
    """The handlers, bound to the server's one Runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._validator = runtime.validator
        self._methods = {
            path_of(name): permission_of(SERVICE, name)
            for name in ("Validate", "ValidateBatch", "ValidateStream", "RefreshToken")
        }

    def validate(self, raw: bytes) -> bytes | Awaitable[bytes]:
        """A cached verdict at once (no coroutine is made), else a store read to await."""
        request = parse(pb.ValidateRequest, raw)
        verdict = self._validator.validate_now(request.token, request.permission)
        if verdict is None:
            return self._validate_missed(request)
        return convert.rendered_verdict(verdict, request.request_id)

    async def _validate_missed(self, request: pb.ValidateRequest) -> bytes:
        verdict = await self._validator.validate_missed(request.token, request.permission)
        return convert.rendered_verdict(verdict, request.request_id)

    def validate_batch(self, raw: bytes) -> Awaitable[bytes]:
        """Through Validator.validate_batch as grpcio's does, so the cache counts the same."""
        requests = parse(pb.ValidateBatchRequest, raw).requests
        check_batch_size(len(requests), self._runtime.batch_max)
        return self._validate_batch(requests)

    async def _validate_batch(self, requests: Sequence[pb.ValidateRequest]) -> bytes:
        verdicts = await self._validator.validate_batch(requests)
        return convert.rendered_batch(verdicts, requests)

    async def validate_stream(self, messages: Messages, send_message: SendMessage) -> None:
        """Cached tokens answered at once, in order; a miss reads in a task of its own and may
        be overtaken (callers match answers by request_id). At most STREAM_BUFFER reads (or
        their answers) are pending: then the stream stops reading requests until one is sent."""
        validator = self._validator
        slots = asyncio.Semaphore(STREAM_BUFFER)
        try:
            async with asyncio.TaskGroup() as reads:
                async for raw in messages:
                    request = parse(pb.ValidateRequest, raw)
                    check_request_id(request.request_id)  # before a read could swallow it
                    verdict = validator.validate_now(request.token, request.permission)
                    if verdict is not None:
                        await send_message(convert.rendered_verdict(verdict, request.request_id))
                        continue
                    await slots.acquire()
                    reads.create_task(self._read_then_answer(request, send_message, slots))
        except ExceptionGroup as group:
            # The first failure ends the call with its status, as on grpcio.
            raise group.exceptions[0] from None

    async def _read_then_answer(
        self, request: pb.ValidateRequest, send_message: SendMessage, slots: asyncio.Semaphore
    ) -> None:
        # The slot is held until the answer is sent: a client that stops reading then stops
        # the stream at STREAM_BUFFER answers waiting, not at one task per request.
        try:
            await send_message(await self._validate_missed(request))
        finally:
            slots.release()

    def refresh_token(self, raw: bytes) -> Awaitable[bytes]:
        request = parse(pb.RefreshTokenRequest, raw)
        return self._refresh(request.access_token)

    async def _refresh(self, access_token: str) -> bytes:
        issued = await self._runtime.access_tokens.refresh(access_token)
        return pb.RefreshTokenResponse(**convert.access_token(issued)).SerializeToString()

    def observe(self, path: str, code: int, started: float, error: Exception | None) -> None:
        """The one log line per call that api/errors.public writes on grpcio: DEBUG when OK,
        INFO with the reason when refused, ERROR for a fault."""
        method = self._methods.get(path, path)
        name = _CODE_NAMES.get(code, str(code))
        if isinstance(error, AuthorityError):
            log_call(method, name, started, "", logging.INFO, reason=error.reason)
        elif code in (Code.OK, Code.CANCELLED):
            log_call(method, name, started, "", logging.DEBUG)
        elif code == Code.INTERNAL and error is not None and not isinstance(error, GrpcError):
            log_call(method, name, started, "", logging.ERROR)
        else:
            log_call(method, name, started, "", logging.INFO)
