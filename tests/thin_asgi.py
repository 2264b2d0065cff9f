"""The fake ASGI server the thin gRPC path is tested with (no tests of its own: shared by
test_thin_grpc.py and test_thin_hot.py). A scope, a receive() fed by the test, a send()
that records what the app answered. No network, no HTTP/2 engine."""

from __future__ import annotations

import asyncio
import base64
import gzip
import struct
import urllib.parse
from collections.abc import Iterable
from typing import Any

from google.rpc import error_details_pb2, status_pb2

from authority.api.thin import AsgiApp

Event = dict[str, Any]


def grpc_scope(
    path: str,
    *headers: tuple[bytes, bytes],
    content_type: bytes = b"application/grpc",
    method: str = "POST",
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "2",
        "method": method,
        "scheme": "http",
        "path": path,
        "headers": [(b"content-type", content_type), (b"te", b"trailers"), *headers],
        "client": ("127.0.0.1", 50000),
        "extensions": {"http.response.trailers": {}},
    }


def framed(message: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", 1 if compressed else 0, len(message)) + message


def gzipped(message: bytes) -> bytes:
    return framed(gzip.compress(message), compressed=True)


def chunk(body: bytes, more: bool = False) -> Event:
    return {"type": "http.request", "body": body, "more_body": more}


def request(*messages: bytes) -> list[Event]:
    """A request body holding `messages`, one receive() event each."""
    if not messages:
        return [chunk(b"")]
    return [chunk(framed(m), more=i < len(messages) - 1) for i, m in enumerate(messages)]


DISCONNECT: Event = {"type": "http.disconnect"}


class FakeClient:
    """One HTTP/2 stream as the app sees it.

    receive() hands out the queued events, waiting for more when none is queued; once the
    answer is complete it says http.disconnect (the stream is over), as engines do. With
    `endless`, every receive() returns that chunk: a client that never stops sending.
    `reading` cleared: a client that never reads its answers.
    """

    def __init__(self, events: Iterable[Event] = (), endless: bytes | None = None) -> None:
        self.incoming: list[Event] = list(events)
        self.endless = endless
        self.sent: list[Event] = []
        self.receives = 0
        self.complete = False
        self._arrived = asyncio.Event()
        # Cleared: the client reads no answer, so the engine's flow control holds every send
        # of a message (as a closed HTTP/2 window would).
        self.reading = asyncio.Event()
        self.reading.set()
        self.reset = False

    def push(self, event: Event) -> None:
        self.incoming.append(event)
        self._arrived.set()

    async def receive(self) -> Event:
        self.receives += 1
        while True:
            if self.incoming:
                return self.incoming.pop(0)
            if self.complete:
                return DISCONNECT
            if self.endless is not None:
                return chunk(self.endless, more=True)
            self._arrived.clear()
            await self._arrived.wait()

    async def send(self, event: Event) -> None:
        assert not self.complete, f"sent after the answer was complete: {event}"
        if event.get("body"):
            await self.reading.wait()
        if self.reset:
            raise OSError("the stream was reset")  # what ASGI engines raise then
        self.sent.append(event)
        if event["type"] == "http.response.trailers" or (
            event["type"] == "http.response.body" and not self._expects_trailers()
        ):
            self.complete = True
            self._arrived.set()

    def _expects_trailers(self) -> bool:
        return bool(self.sent and self.sent[0].get("trailers"))

    # What the client would see.
    @property
    def http_status(self) -> int:
        status: int = self.sent[0]["status"]
        return status

    @property
    def trailers(self) -> dict[bytes, bytes]:
        found = [e for e in self.sent if e["type"] == "http.response.trailers"]
        assert len(found) == 1, self.sent
        return dict(found[0]["headers"])

    @property
    def code(self) -> int:
        return int(self.trailers[b"grpc-status"])

    @property
    def message(self) -> str:
        return urllib.parse.unquote(self.trailers.get(b"grpc-message", b"").decode("ascii"))

    @property
    def details(self) -> status_pb2.Status:
        encoded = self.trailers[b"grpc-status-details-bin"]
        assert not encoded.endswith(b"=")
        padded = encoded + b"=" * (-len(encoded) % 4)
        return status_pb2.Status.FromString(base64.b64decode(padded, validate=True))

    @property
    def answers(self) -> list[bytes]:
        body = b"".join(e.get("body", b"") for e in self.sent if e["type"] == "http.response.body")
        out = []
        while body:
            compressed, length = struct.unpack_from(">BI", body)
            assert compressed == 0
            out.append(body[5 : 5 + length])
            body = body[5 + length :]
        return out


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo in the details")


def bad_request_fields(status: status_pb2.Status) -> list[str]:
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return [violation.field for violation in bad.field_violations]
    return []


async def drive(app: AsgiApp, scope: dict[str, Any], client: FakeClient) -> FakeClient:
    await asyncio.wait_for(app(scope, client.receive, client.send), 10)
    return client


def call(app: AsgiApp, scope: dict[str, Any], client: FakeClient) -> FakeClient:
    """Run one call to its end on a fresh event loop."""
    return asyncio.run(drive(app, scope, client))
