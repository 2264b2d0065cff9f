"""gRPC over HTTP/2 as an ASGI app: routing, framing, deadlines, encodings, status trailers.

The HTTP/2 engine (Envoy through pyvoy, in step 2 of issue 10) does the protocol work in
native code; this module does only what gRPC adds on top (PROTOCOL-HTTP2.md), for the few
methods that carry the traffic. It knows nothing of tokens: handlers take and return
serialized messages, and a domain error becomes a status through the `map_error` it is given
(the service's one mapping, api/errors.status_of).

Every input is bounded before it is held: a message's declared length is checked before its
bytes are read, gzip inflation stops at the same bound, and a stream reads ahead at most
READ_AHEAD bytes (then it stops calling receive(), so the engine's HTTP/2 window closes on a
client that outruns the handler). No status message quotes request bytes, and a fault is
answered INTERNAL with an incident id, its traceback only in the server log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import logging
import struct
import time
import traceback
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from authority.thin_contract import NOT_GRPC_BODY

log = logging.getLogger("authority.calls")

# ASGI 3, as much of it as this app uses.
Scope = Mapping[str, Any]
Event = dict[str, Any]
Receive = Callable[[], Awaitable[Event]]
Send = Callable[[Event], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The same receive limit as the grpcio server (server.py), so that a request one path
# accepts the other does too.
MAX_MESSAGE: Final = 16 * 1024 * 1024
# How many request bytes a stream holds that its handler has not asked for yet.
READ_AHEAD: Final = 64 * 1024
# After a stream's answer is complete, how long its reader may still wait for the engine to
# say the stream is gone before it is cancelled (cancelling a pending receive() is what
# pyvoy 1.3 mishandles, so it is the exception, not the rule).
DRAIN_TIMEOUT: Final = 5.0


class Code(enum.IntEnum):
    """The gRPC status codes this layer answers by itself (a mapped error may carry any)."""

    OK = 0
    CANCELLED = 1
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13


class GrpcError(Exception):
    """Ends a call with a status: `code`, a message for people, and optionally the
    serialized google.rpc.Status sent as grpc-status-details-bin."""

    def __init__(self, code: int, message: str = "", details: bytes | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


# A unary handler answers at once (bytes: a cache hit creates no coroutine) or gives an
# awaitable of the answer, awaited under the call's deadline.
UnaryHandler = Callable[[bytes], "bytes | Awaitable[bytes]"]
SendMessage = Callable[[bytes], Awaitable[None]]
StreamHandler = Callable[["Messages", SendMessage], Awaitable[None]]
# The service's error mapping: a status for an error it knows, None for a fault.
ErrorMapper = Callable[[Exception], "GrpcError | None"]
# The status of a fault, given its incident id (the service adds its ErrorInfo).
FaultStatus = Callable[[str], GrpcError]
# Told once per call handled here: method path, status code, start (perf_counter), error.
CallObserver = Callable[[str, int, float, "Exception | None"], None]

_PREFIX: Final = struct.Struct(">BI")
_TIMEOUT_UNITS: Final = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}
_HEADERS: Final = (
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", b"identity,gzip"),
)
_TRAILERS_OK: Final = ((b"grpc-status", b"0"),)
_DEADLINE: Final = "Deadline Exceeded"  # grpcio's wording


def _start() -> Event:
    # A fresh event per call: an engine may keep or change what it is handed.
    return {"type": "http.response.start", "status": 200, "headers": _HEADERS, "trailers": True}


def _trailers(headers: Sequence[tuple[bytes, bytes]]) -> Event:
    return {"type": "http.response.trailers", "headers": headers, "more_trailers": False}


def frame(message: bytes) -> bytes:
    """One length-prefixed, uncompressed message."""
    return _PREFIX.pack(0, len(message)) + message


def parse_timeout(value: bytes) -> float:
    """grpc-timeout in seconds: 1 to 8 ASCII digits and a unit (H M S m u n).

    Raises ValueError otherwise; int() alone would also take signs, spaces and underscores.
    """
    digits, unit = value[:-1], value[-1:]
    if not 1 <= len(digits) <= 8 or not digits.isdigit() or not unit:
        raise ValueError("malformed grpc-timeout")
    scale = _TIMEOUT_UNITS.get(unit[0])
    if scale is None:
        raise ValueError("malformed grpc-timeout")
    return int(digits) * scale


def percent_encode(message: str) -> bytes:
    """grpc-message: UTF-8, with '%' and every byte outside printable ASCII percent-encoded."""
    out = bytearray()
    for byte in message.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def status_trailers(
    code: int, message: str = "", details: bytes | None = None
) -> list[tuple[bytes, bytes]]:
    """The trailers that end a call; -bin values are base64 without padding, as gRPC sends."""
    headers = [(b"grpc-status", str(int(code)).encode())]
    if message:
        headers.append((b"grpc-message", percent_encode(message)))
    if details:
        headers.append((b"grpc-status-details-bin", base64.b64encode(details).rstrip(b"=")))
    return headers


def inflate(data: bytes, gzip: bool, limit: int) -> bytes:
    """A compressed message's bytes, refused past `limit` however small the input (a bomb)."""
    if not gzip:
        raise GrpcError(Code.INTERNAL, "a compressed message without grpc-encoding")
    inflater = zlib.decompressobj(wbits=31)  # gzip framing only
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise GrpcError(Code.INTERNAL, "the message could not be decompressed") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise GrpcError(Code.RESOURCE_EXHAUSTED, _too_large(limit))
    if not inflater.eof or inflater.unused_data:
        raise GrpcError(Code.INTERNAL, "the message could not be decompressed")
    return out


def _payload(flag: int, message: bytes, gzip: bool, limit: int) -> bytes:
    """A message's bytes by its prefix's flag: 0 as they are, 1 compressed, nothing else."""
    if flag == 0:
        return message
    if flag == 1:
        return inflate(message, gzip, limit)
    raise GrpcError(Code.INTERNAL, "a message prefix with an unknown flag")


def _too_large(limit: int) -> str:
    return f"a message is larger than the limit ({limit} bytes)"


@dataclass(frozen=True, slots=True)
class _Head:
    timeout: float | None
    gzip: bool


class _NotGrpc(Exception):
    """Not a gRPC request at all: answered with HTTP 415, as the spec asks."""


class _Disconnected(Exception):
    """The client reset the stream or went away: nobody is left to answer."""


def _read_head(scope: Scope) -> _Head:
    """The request head: not gRPC (HTTP 415) is decided before any gRPC header is read."""
    if scope.get("method") != "POST":
        raise _NotGrpc
    headers = dict(scope.get("headers", ()))  # names are lowercase in ASGI
    content_type = headers.get(b"content-type", b"")
    # thin_contract.GRPC_CONTENT_TYPE_REGEX (Envoy's routes on the other methods), unrolled.
    if content_type != b"application/grpc" and not content_type.startswith(
        (b"application/grpc+", b"application/grpc;")
    ):
        raise _NotGrpc
    timeout: float | None = None
    if b"grpc-timeout" in headers:
        try:
            timeout = parse_timeout(headers[b"grpc-timeout"])
        except ValueError:
            # INTERNAL, as grpcio, C-core and grpc-go answer it (a library never says
            # INVALID_ARGUMENT: that is the application's).
            raise GrpcError(Code.INTERNAL, "malformed grpc-timeout") from None
    encoding = headers.get(b"grpc-encoding", b"identity")
    if encoding not in (b"identity", b"gzip"):
        # The value is not quoted: it is the caller's bytes.
        raise GrpcError(Code.UNIMPLEMENTED, "grpc-encoding not supported: use identity or gzip")
    return _Head(timeout, encoding == b"gzip")


class Messages(AsyncIterator[bytes]):
    """A stream's request messages, read ahead by a pump task into a bounded buffer.

    The pump is also what notices http.disconnect (RST_STREAM, a lost connection) while the
    handler is busy elsewhere: it cancels the handler. It stops calling receive() while more
    than `read_ahead` bytes wait unconsumed (the buffer can exceed it by one engine chunk, or
    grow to one whole message when a single message is larger).
    """

    def __init__(
        self, receive: Receive, gzip: bool, max_message: int, read_ahead: int = READ_AHEAD
    ) -> None:
        self._receive = receive
        self._gzip = gzip
        self._max_message = max_message
        self._read_ahead = read_ahead
        self._buffer = bytearray()
        self._ended = False  # the request body is complete
        self._draining = False  # the answer is complete: drop what still arrives
        self.disconnected = False
        self._failure: BaseException | None = None
        self._ready = asyncio.Event()  # the buffer grew, or the body ended
        self._room = asyncio.Event()  # the buffer is below the read-ahead bound
        self._room.set()

    async def pump(self, handler: asyncio.Task[None]) -> None:
        """Read the request body until the stream ends; cancel `handler` on a disconnect."""
        try:
            while True:
                await self._room.wait()
                event = await self._receive()
                if event["type"] == "http.disconnect":
                    self.disconnected = True
                    handler.cancel()
                    return
                if self._ended or self._draining:
                    continue  # only a disconnect matters now
                body = event.get("body", b"")
                if body:
                    self._buffer += body
                    if len(self._buffer) > self._read_ahead:
                        self._room.clear()
                if not event.get("more_body", False):
                    self._ended = True
                self._ready.set()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # an engine fault: surfaced by the next read
            self._failure = error
            self._ready.set()

    def drain(self) -> None:
        """The answer is complete: drop what is held and read on only to see the end."""
        self._draining = True
        self._buffer.clear()
        self._room.set()

    def __aiter__(self) -> Messages:
        return self

    async def __anext__(self) -> bytes:
        while True:
            buffer = self._buffer
            if len(buffer) >= 5:
                flag, length = _PREFIX.unpack_from(buffer)
                if length > self._max_message:
                    raise GrpcError(Code.RESOURCE_EXHAUSTED, _too_large(self._max_message))
                end = 5 + length
                if len(buffer) >= end:
                    message = bytes(buffer[5:end])
                    del buffer[:end]
                    if len(buffer) <= self._read_ahead:
                        self._room.set()
                    return _payload(flag, message, self._gzip, self._max_message)
                self._room.set()  # one message larger than the read-ahead: read on
            if self._failure is not None:
                raise GrpcError(Code.INTERNAL, "the request stream failed")
            if self._ended:
                if buffer:
                    raise GrpcError(Code.INTERNAL, "the request ended inside a message")
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()


class ThinGrpc:
    """The ASGI app: `unary` and `streams` map a path (/package.Service/Method) to a handler.

    Any other path goes to `fallback` (an ASGI app: in step 2 Envoy routes those to grpcio
    before they reach Python), or without one is answered UNIMPLEMENTED.
    """

    def __init__(
        self,
        unary: Mapping[str, UnaryHandler],
        streams: Mapping[str, StreamHandler],
        *,
        map_error: ErrorMapper,
        fallback: AsgiApp | None = None,
        observe: CallObserver | None = None,
        fault_status: FaultStatus | None = None,
        max_message: int = MAX_MESSAGE,
        read_ahead: int = READ_AHEAD,
    ) -> None:
        self._unary = dict(unary)
        self._streams = dict(streams)
        self._map_error = map_error
        self._fallback = fallback
        self._observe = observe
        self._fault_status = fault_status or _fault_status
        self._max_message = max_message
        self._read_ahead = read_ahead

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if self._fallback is not None:
                await self._fallback(scope, receive, send)
            elif scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        path: str = scope["path"]
        unary = self._unary.get(path)
        if unary is not None:
            await self._call_unary(path, unary, scope, receive, send)
            return
        stream = self._streams.get(path)
        if stream is not None:
            await self._call_stream(path, stream, scope, receive, send)
            return
        if self._fallback is not None:
            await self._fallback(scope, receive, send)
            return
        try:
            _read_head(scope)
        except _NotGrpc:
            await _refuse_not_grpc(send)
            return
        except GrpcError:
            pass  # the method is unknown whatever its headers say
        await _finish(send, Code.UNIMPLEMENTED, "Method not found!")

    async def _call_unary(
        self, path: str, handler: UnaryHandler, scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        try:
            head = _read_head(scope)
            if head.timeout is None:
                answer = await self._answer(handler, receive, head.gzip)
            else:
                answer = await self._answer_by(handler, receive, head)
        except _NotGrpc:
            await _refuse_not_grpc(send)
            return
        except _Disconnected:
            self._told(path, Code.CANCELLED, started, None)
            return
        except Exception as error:
            status = self._status_of(path, error)
            self._told(path, status.code, started, error)
            await _finish(send, status.code, status.message, status.details)
            return
        try:
            await send(_start())
            await send({"type": "http.response.body", "body": frame(answer), "more_body": False})
            await send(_trailers(_TRAILERS_OK))
        except OSError:  # the stream was reset while we answered: nobody to tell
            self._told(path, Code.CANCELLED, started, None)
            return
        self._told(path, Code.OK, started, None)

    async def _answer(self, handler: UnaryHandler, receive: Receive, gzip: bool) -> bytes:
        answer = handler(await self._read_one(receive, gzip))
        if isinstance(answer, bytes):
            return answer
        return await answer

    async def _answer_by(self, handler: UnaryHandler, receive: Receive, head: _Head) -> bytes:
        """`_answer` under the caller's deadline: reading the request counts against it."""
        assert head.timeout is not None
        if head.timeout <= 0:
            raise GrpcError(Code.DEADLINE_EXCEEDED, _DEADLINE)
        deadline = asyncio.timeout(head.timeout)
        try:
            async with deadline:
                return await self._answer(handler, receive, head.gzip)
        except TimeoutError:
            if deadline.expired():
                raise GrpcError(Code.DEADLINE_EXCEEDED, _DEADLINE) from None
            raise

    async def _read_one(self, receive: Receive, gzip: bool) -> bytes:
        """The one request message of a unary call; its length is checked before its bytes
        are held, and nothing may follow it."""
        body = bytearray()
        limit = self._max_message + 5
        more = True
        while more:
            event = await receive()
            if event["type"] == "http.disconnect":
                raise _Disconnected
            body += event.get("body", b"")
            more = bool(event.get("more_body", False))
            if len(body) >= 5:
                length = _PREFIX.unpack_from(body)[1]
                if length > self._max_message:
                    raise GrpcError(Code.RESOURCE_EXHAUSTED, _too_large(self._max_message))
                limit = 5 + length
            if len(body) > limit:
                raise GrpcError(Code.INTERNAL, "a unary call takes exactly one message")
        if len(body) < 5 or len(body) != limit:
            raise GrpcError(Code.INTERNAL, "the request ended inside a message")
        return _payload(body[0], bytes(body[5:]), gzip, self._max_message)

    async def _call_stream(
        self, path: str, handler: StreamHandler, scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        try:
            head = _read_head(scope)
            if head.timeout is not None and head.timeout <= 0:
                raise GrpcError(Code.DEADLINE_EXCEEDED, _DEADLINE)
        except _NotGrpc:
            await _refuse_not_grpc(send)
            return
        except GrpcError as refused:
            self._told(path, refused.code, started, refused)
            await _finish(send, refused.code, refused.message, refused.details)
            return
        await send(_start())
        messages = Messages(receive, head.gzip, self._max_message, self._read_ahead)

        async def send_message(message: bytes) -> None:
            # Awaits the engine's flow control: a client that stops reading holds us here.
            # While the read-ahead is full the pump is not in receive(), so a reset stream
            # shows here: ASGI engines raise OSError on a send to a closed stream.
            try:
                await send(
                    {"type": "http.response.body", "body": frame(message), "more_body": True}
                )
            except OSError:
                messages.disconnected = True
                raise _Disconnected from None

        deadline = asyncio.timeout(head.timeout)

        async def run() -> None:
            async with deadline:
                await handler(messages, send_message)

        running = asyncio.create_task(run())
        pump = asyncio.create_task(messages.pump(running))
        error: Exception | None = None
        try:
            await running
            status = GrpcError(Code.OK)
        except asyncio.CancelledError:
            if not messages.disconnected:
                pump.cancel()
                raise  # the app itself is being cancelled
            self._told(path, Code.CANCELLED, started, None)
            return  # the stream is gone: nobody to answer
        except _Disconnected:
            self._told(path, Code.CANCELLED, started, None)
            messages.drain()  # the pump reads on to the engine's http.disconnect
            await _settle(pump)
            return
        except TimeoutError as timeout:
            error = timeout
            if deadline.expired():
                status = GrpcError(Code.DEADLINE_EXCEEDED, _DEADLINE)
            else:
                status = self._status_of(path, timeout)
        except Exception as failure:
            error = failure
            status = self._status_of(path, failure)
        messages.drain()
        self._told(path, status.code, started, error)
        if not messages.disconnected:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await send(_trailers(status_trailers(status.code, status.message, status.details)))
        await _settle(pump)

    def _status_of(self, path: str, error: Exception) -> GrpcError:
        """The status for an exception: its own, the mapping's, else INTERNAL (logged)."""
        if isinstance(error, GrpcError):
            return error
        mapped = self._map_error(error)
        if mapped is not None:
            return mapped
        incident = uuid.uuid4().hex[:12]
        # The class and the frames, not the message: a message may quote what it was given.
        log.error(
            "internal error in %s (incident %s): %s\n%s",
            path,
            incident,
            type(error).__name__,
            "".join(traceback.format_tb(error.__traceback__)),
        )
        return self._fault_status(incident)

    def _told(self, path: str, code: int, started: float, error: Exception | None) -> None:
        if self._observe is not None:
            self._observe(path, code, started, error)


def _fault_status(incident: str) -> GrpcError:
    return GrpcError(
        Code.INTERNAL, f"internal error (incident {incident}); the server log has the details"
    )


async def _settle(pump: asyncio.Task[None]) -> None:
    """Let a drained stream's reader end with the stream; cancel it if the engine never says."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT):  # cancels the reader when it times out
            await pump


async def _finish(send: Send, code: int, message: str, details: bytes | None = None) -> None:
    """A call that ends with a status and no message."""
    await send(_start())
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    await send(_trailers(status_trailers(code, message, details)))


async def _refuse_not_grpc(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 415,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": NOT_GRPC_BODY.encode()})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop here (the object graph is built by its owner)."""
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
