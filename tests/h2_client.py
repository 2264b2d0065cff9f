"""A raw HTTP/2 (h2c, prior knowledge) client for the tests that speak gRPC frame by frame.

grpcio clients cannot send what a hostile or broken peer sends (a bad length prefix, a
truncated message, a reset in the middle, a sender that never reads), so these tests drive the
server with python-hyper's h2 state machine over a plain socket. Every wait is bounded: the
socket times out, and each helper that waits takes a deadline, so a server that hangs fails a
test instead of blocking it.
"""

from __future__ import annotations

import base64
import socket
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

TIMEOUT = 5.0
_PREFIX = struct.Struct(">BI")


def grpc_frame(message: bytes, *, flag: int = 0, length: int | None = None) -> bytes:
    """A length-prefixed message; `flag` and `length` may lie, for the hostile cases."""
    return _PREFIX.pack(flag, len(message) if length is None else length) + message


def grpc_messages(data: bytes) -> list[bytes]:
    """The uncompressed messages of a response body; asserts the framing is exact."""
    messages = []
    offset = 0
    while offset < len(data):
        flag, length = _PREFIX.unpack_from(data, offset)
        assert flag == 0, f"a response message with flag {flag}"
        start = offset + _PREFIX.size
        assert start + length <= len(data), "a response message is cut short"
        messages.append(data[start : start + length])
        offset = start + length
    return messages


@dataclass
class Response:
    """What one stream received: its headers, body, trailers, and a reset if there was one."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    trailers: dict[str, str] = field(default_factory=dict)
    header_blocks: list[list[tuple[str, str]]] = field(default_factory=list)
    reset: int | None = None
    ended: bool = False

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    @property
    def status(self) -> int:
        return int(self.headers[":status"])

    @property
    def grpc_status(self) -> int | None:
        """The call's status: from the trailers, or the headers of a trailers-only answer."""
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if value is None else int(value)

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))

    @property
    def details(self) -> bytes | None:
        """grpc-status-details-bin, decoded (gRPC sends base64 with or without padding)."""
        value = self.trailers.get(
            "grpc-status-details-bin", self.headers.get("grpc-status-details-bin")
        )
        if value is None:
            return None
        return base64.b64decode(value + "=" * (-len(value) % 4))

    @property
    def messages(self) -> list[bytes]:
        return grpc_messages(bytes(self.data))

    def all_headers(self) -> Iterator[tuple[str, str]]:
        """Every header and trailer the stream received."""
        for block in self.header_blocks:
            yield from block


class H2Client:
    """One HTTP/2 connection to 127.0.0.1:`port`, its streams' responses collected by id.

    With `auto_ack` (the default) received data is acknowledged at once, so the server's send
    window is replenished as a well-behaved reader would; without it the client reads frames
    but grants no window, as a client that never consumes its responses.
    """

    def __init__(
        self,
        port: int,
        *,
        timeout: float = TIMEOUT,
        auto_ack: bool = True,
        initial_window: int | None = None,
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.auto_ack = auto_ack
        self.conn = H2Connection(config=H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        if initial_window is not None:
            self.conn.update_settings({0x4: initial_window})  # SETTINGS_INITIAL_WINDOW_SIZE
        self.responses: dict[int, Response] = {}
        self.unacknowledged: dict[int, int] = {}  # stream id -> received bytes not granted back
        self.terminated: ConnectionTerminated | None = None
        self.window_updates = 0
        self.flush()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self.flush()
        except OSError:
            pass
        finally:
            self.sock.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    # -- sending -------------------------------------------------------------------------------

    def start(
        self,
        path: str,
        *,
        content_type: str | None = "application/grpc",
        headers: Sequence[tuple[str, str]] = (),
        end_stream: bool = False,
        method: str = "POST",
    ) -> int:
        """Open a stream to `path` (a POST unless told); returns its id."""
        stream_id = self.conn.get_next_available_stream_id()
        block = [
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("te", "trailers"),
        ]
        if content_type is not None:
            block.append(("content-type", content_type))
        block.extend(headers)
        self.responses[stream_id] = Response()
        self.conn.send_headers(stream_id, block, end_stream=end_stream)
        self.flush()
        return stream_id

    def send(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Send `data` on a stream, waiting (bounded) for flow-control window as needed."""
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout
        while view:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"stream {stream_id}: no send window for {self.timeout}s")
                self.read(0.2)
                continue
            chunk = view[:window]
            view = view[window:]
            self.conn.send_data(stream_id, bytes(chunk), end_stream=end_stream and not view)
            self.flush()
        if end_stream and not data:
            self.conn.end_stream(stream_id)
            self.flush()

    def send_available(self, stream_id: int, data: bytes) -> int:
        """Send as much of `data` as the current window allows, without waiting; how much."""
        sent = 0
        while sent < len(data):
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                break
            chunk = data[sent : sent + window]
            self.conn.send_data(stream_id, chunk)
            sent += len(chunk)
        self.flush()
        return sent

    def end(self, stream_id: int) -> None:
        self.conn.end_stream(stream_id)
        self.flush()

    def grant(self, stream_id: int) -> None:
        """Hand back the window of everything received on a stream (and the connection)."""
        size = self.unacknowledged.pop(stream_id, 0)
        if size:
            self.conn.acknowledge_received_data(size, stream_id)
            self.flush()

    def reset(self, stream_id: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        self.conn.reset_stream(stream_id, code)
        self.flush()

    def call(
        self,
        path: str,
        messages: Iterable[bytes] = (),
        *,
        body: bytes | None = None,
        content_type: str | None = "application/grpc",
        headers: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Open a stream, send `body` (else the framed `messages`) and end it; its id."""
        payload = body if body is not None else b"".join(grpc_frame(m) for m in messages)
        stream_id = self.start(path, content_type=content_type, headers=headers)
        self.send(stream_id, payload, end_stream=True)
        return stream_id

    # -- receiving -----------------------------------------------------------------------------

    def read(self, timeout: float) -> bool:
        """Read what arrives within `timeout` (at most one recv) and handle it; False if the
        socket stayed quiet."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._handle(self.conn.receive_data(data))
        self.flush()
        return True

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, ResponseReceived | TrailersReceived):
                assert event.stream_id is not None and event.headers is not None
                block = [(_text(k), _text(v)) for k, v in event.headers]
                response = self.responses[event.stream_id]
                if isinstance(event, ResponseReceived):
                    response.headers = dict(block)
                else:
                    response.trailers = dict(block)
                response.header_blocks.append(block)
            elif isinstance(event, DataReceived):
                assert event.stream_id is not None and event.data is not None
                self.responses[event.stream_id].data += event.data
                if event.flow_controlled_length:
                    self.unacknowledged[event.stream_id] = (
                        self.unacknowledged.get(event.stream_id, 0) + event.flow_controlled_length
                    )
                    if self.auto_ack:
                        self.grant(event.stream_id)
            elif isinstance(event, StreamEnded):
                assert event.stream_id is not None
                self.responses[event.stream_id].ended = True
            elif isinstance(event, StreamReset):
                assert event.stream_id is not None
                self.responses[event.stream_id].reset = int(event.error_code or 0)
            elif isinstance(event, WindowUpdated):
                self.window_updates += 1
            elif isinstance(event, ConnectionTerminated):
                self.terminated = event

    def wait(self, stream_ids: Iterable[int], timeout: float | None = None) -> list[Response]:
        """The responses of `stream_ids` once every one has ended or been reset."""
        ids = list(stream_ids)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not all(self.responses[i].done for i in ids):
            left = deadline - time.monotonic()
            if left <= 0:
                pending = [i for i in ids if not self.responses[i].done]
                raise TimeoutError(f"streams {pending[:10]} not answered in time")
            self.read(min(left, 0.5))
        return [self.responses[i] for i in ids]

    def response(self, stream_id: int, timeout: float | None = None) -> Response:
        return self.wait([stream_id], timeout)[0]

    def messages_received(self, stream_id: int, count: int, timeout: float | None = None) -> None:
        """Wait until `count` whole messages arrived on a stream (it may stay open)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        response = self.responses[stream_id]
        while len(grpc_messages_prefix(bytes(response.data))) < count:
            if response.done or time.monotonic() > deadline:
                raise TimeoutError(f"stream {stream_id}: {count} messages not received")
            self.read(0.5)


def grpc_messages_prefix(data: bytes) -> list[bytes]:
    """The whole messages at the start of a body that may still be arriving."""
    messages = []
    offset = 0
    while len(data) - offset >= _PREFIX.size:
        _flag, length = _PREFIX.unpack_from(data, offset)
        start = offset + _PREFIX.size
        if start + length > len(data):
            break
        messages.append(data[start : start + length])
        offset = start + length
    return messages


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
