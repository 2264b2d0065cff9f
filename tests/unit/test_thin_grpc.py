"""The thin gRPC layer (authority.api.thin._grpc) against hostile and odd requests, driven as
an ASGI app by a fake server: framing, content type, deadlines, encodings, trailers, routing,
and a bidi stream's read-ahead bound and cancellation."""

from __future__ import annotations

import asyncio
import gzip
import logging
import struct
from collections.abc import Awaitable
from typing import Any

import pytest

from authority.api.thin import Code, GrpcError, Messages, ThinGrpc, status_error
from authority.api.thin._grpc import parse_timeout, percent_encode, status_trailers
from authority.domain.errors import InvalidArgument, Reason, Unauthenticated
from tests.thin_asgi import (
    DISCONNECT,
    FakeClient,
    bad_request_fields,
    call,
    chunk,
    drive,
    error_info,
    framed,
    grpc_scope,
    gzipped,
    request,
)

ECHO = "/test.Thin/Echo"
LATER = "/test.Thin/Later"
REFUSE = "/test.Thin/Refuse"
BREAK = "/test.Thin/Break"
STREAM = "/test.Thin/Stream"
LIMIT = 1024
# Built at run time, so that it appears in no source line a traceback could quote.
SECRET = "tka_" + "Q" * 30


class Service:
    """Handlers that record what they were given."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.sleep = 0.0
        self.gate = asyncio.Event()
        self.cancelled = False
        self.wait_for_gate = False

    def echo(self, raw: bytes) -> bytes:
        self.seen.append(raw)
        return raw

    def later(self, raw: bytes) -> Awaitable[bytes]:
        return self._later(raw)

    async def _later(self, raw: bytes) -> bytes:
        await asyncio.sleep(self.sleep)
        return b"later:" + raw

    def refuse(self, raw: bytes) -> bytes:
        raise InvalidArgument("request_id", "at most 256 characters (got 300)")

    def break_(self, raw: bytes) -> bytes:
        raise RuntimeError(f"{SECRET} leaked into a message")

    async def stream(self, messages: Messages, send_message: Any) -> None:
        try:
            if self.wait_for_gate:
                await self.gate.wait()
            async for raw in messages:
                if raw == b"refuse":
                    raise Unauthenticated("the bearer token was revoked", Reason.TOKEN_REVOKED)
                if raw == b"hang":
                    await asyncio.Event().wait()
                await send_message(b"re:" + raw)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def make_app(service: Service, **options: Any) -> ThinGrpc:
    return ThinGrpc(
        unary={
            ECHO: service.echo,
            LATER: service.later,
            REFUSE: service.refuse,
            BREAK: service.break_,
        },
        streams={STREAM: service.stream},
        map_error=status_error,
        max_message=LIMIT,
        read_ahead=options.pop("read_ahead", 4 * LIMIT),
        **options,
    )


def unary(path: str, events: list[dict[str, Any]], *headers: tuple[bytes, bytes]) -> FakeClient:
    return call(make_app(Service()), grpc_scope(path, *headers), FakeClient(events))


# -- framing ---------------------------------------------------------------------------------


def test_one_framed_message_is_answered_with_headers_message_and_ok_trailers() -> None:
    client = unary(ECHO, request(b"hello"))
    assert client.http_status == 200
    assert (b"content-type", b"application/grpc") in client.sent[0]["headers"]
    assert client.answers == [b"hello"]
    assert client.trailers == {b"grpc-status": b"0"}


def test_a_message_split_over_many_chunks_is_reassembled() -> None:
    body = framed(b"x" * 300)
    events = [chunk(body[i : i + 7], more=i + 7 < len(body)) for i in range(0, len(body), 7)]
    assert unary(ECHO, events).answers == [b"x" * 300]


def test_an_empty_message_is_a_message() -> None:
    assert unary(ECHO, [chunk(framed(b""))]).answers == [b""]


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00\x00\x00", framed(b"0123456789")[:9]],
    ids=["no message", "truncated prefix", "truncated message"],
)
def test_a_truncated_request_is_internal_and_reaches_no_handler(body: bytes) -> None:
    service = Service()
    client = call(make_app(service), grpc_scope(ECHO), FakeClient([chunk(body)]))
    assert client.code == Code.INTERNAL
    assert service.seen == []


def test_a_prefix_flag_other_than_0_or_1_is_refused() -> None:
    body = b"\x02" + framed(b"x")[1:]
    assert unary(ECHO, [chunk(body)]).code == Code.INTERNAL
    client = call(make_app(Service()), grpc_scope(STREAM), FakeClient([chunk(body)]))
    assert client.code == Code.INTERNAL


def test_a_unary_call_with_two_messages_is_refused() -> None:
    client = unary(ECHO, [chunk(framed(b"a") + framed(b"b"))])
    assert client.code == Code.INTERNAL
    assert client.answers == []


def test_an_oversized_declared_length_is_refused_before_its_bytes_are_read() -> None:
    service = Service()
    prefix = struct.pack(">BI", 0, LIMIT + 1)
    client = FakeClient([chunk(prefix, more=True)], endless=b"y" * 4096)
    call(make_app(service), grpc_scope(ECHO), client)
    assert client.code == Code.RESOURCE_EXHAUSTED
    assert client.receives == 1
    assert service.seen == []


def test_a_message_at_the_limit_is_accepted() -> None:
    assert unary(ECHO, request(b"z" * LIMIT)).answers == [b"z" * LIMIT]


# -- encodings -------------------------------------------------------------------------------


def test_a_gzip_message_with_grpc_encoding_gzip_is_inflated() -> None:
    client = unary(ECHO, [chunk(gzipped(b"squeezed"))], (b"grpc-encoding", b"gzip"))
    assert client.answers == [b"squeezed"]


def test_an_uncompressed_message_may_come_with_grpc_encoding_gzip() -> None:
    assert unary(ECHO, request(b"plain"), (b"grpc-encoding", b"gzip")).answers == [b"plain"]


@pytest.mark.parametrize("encoding", [None, b"identity"])
def test_a_compressed_flag_without_gzip_encoding_is_internal(encoding: bytes | None) -> None:
    headers = [(b"grpc-encoding", encoding)] if encoding else []
    client = unary(ECHO, [chunk(gzipped(b"x"))], *headers)
    assert client.code == Code.INTERNAL


def test_a_gzip_bomb_is_refused_at_the_message_limit() -> None:
    bomb = gzip.compress(b"\0" * (64 * LIMIT))
    assert len(bomb) < LIMIT
    client = unary(ECHO, [chunk(framed(bomb, compressed=True))], (b"grpc-encoding", b"gzip"))
    assert client.code == Code.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    "payload",
    # mtime=0 and named ids: every xdist worker must collect the same test ids.
    [
        b"not gzip at all",
        gzip.compress(b"abc", mtime=0)[:-4],
        gzip.compress(b"abc", mtime=0) + b"junk",
    ],
    ids=["not gzip", "truncated", "trailing junk"],
)
def test_broken_gzip_is_internal(payload: bytes) -> None:
    client = unary(ECHO, [chunk(framed(payload, compressed=True))], (b"grpc-encoding", b"gzip"))
    assert client.code == Code.INTERNAL


def test_an_unknown_encoding_is_unimplemented_and_not_quoted() -> None:
    client = unary(ECHO, request(b"x"), (b"grpc-encoding", b"br<script>"))
    assert client.code == Code.UNIMPLEMENTED
    assert "script" not in client.message
    assert (b"grpc-accept-encoding", b"identity,gzip") in client.sent[0]["headers"]


# -- not gRPC: HTTP 415 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "method"),
    [
        (b"text/plain", "POST"),
        (b"application/json", "POST"),
        (b"application/grpc-web", "POST"),
        (b"application/grpc", "GET"),
        (b"application/grpc", "PUT"),
    ],
)
def test_a_request_that_is_not_grpc_is_answered_http_415(content_type: bytes, method: str) -> None:
    service = Service()
    scope = grpc_scope(ECHO, content_type=content_type, method=method)
    client = call(make_app(service), scope, FakeClient(request(b"x")))
    assert client.http_status == 415
    assert service.seen == []


@pytest.mark.parametrize("content_type", [b"application/grpc+proto", b"application/grpc;x=1"])
def test_grpc_content_type_variants_are_accepted(content_type: bytes) -> None:
    client = call(
        make_app(Service()),
        grpc_scope(ECHO, content_type=content_type),
        FakeClient(request(b"ok")),
    )
    assert client.answers == [b"ok"]


# -- grpc-timeout ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"2H", 7200.0),
        (b"3M", 180.0),
        (b"10S", 10.0),
        (b"250m", 0.25),
        (b"7u", 7e-6),
        (b"9n", 9e-9),
        (b"99999999S", 99999999.0),
        (b"0n", 0.0),
    ],
)
def test_grpc_timeout_units(value: bytes, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


def test_a_request_that_is_not_grpc_is_415_whatever_its_grpc_headers_say() -> None:
    scope = grpc_scope(ECHO, (b"grpc-timeout", b"bad"), content_type=b"text/html")
    assert call(make_app(Service()), scope, FakeClient(request(b"x"))).http_status == 415


@pytest.mark.parametrize(
    "value",
    [b"", b"S", b"10", b"123456789S", b"-1S", b"+1S", b" 1S", b"1_0S", b"1.5S", b"10s", b"10x"],
)
def test_a_malformed_grpc_timeout_is_refused(value: bytes) -> None:
    with pytest.raises(ValueError, match="malformed"):
        parse_timeout(value)
    client = unary(ECHO, request(b"x"), (b"grpc-timeout", value))
    assert client.code == Code.INTERNAL  # as grpcio answers it
    assert client.answers == []


def test_an_expired_deadline_answers_deadline_exceeded_without_calling_the_handler() -> None:
    service = Service()
    scope = grpc_scope(ECHO, (b"grpc-timeout", b"0n"))
    client = call(make_app(service), scope, FakeClient(request(b"x")))
    assert client.code == Code.DEADLINE_EXCEEDED
    assert service.seen == []


def test_a_handler_slower_than_the_deadline_is_cut_off() -> None:
    service = Service()
    service.sleep = 30
    scope = grpc_scope(LATER, (b"grpc-timeout", b"50m"))
    client = call(make_app(service), scope, FakeClient(request(b"x")))
    assert client.code == Code.DEADLINE_EXCEEDED


def test_a_handler_within_the_deadline_answers() -> None:
    scope = grpc_scope(LATER, (b"grpc-timeout", b"5S"))
    assert call(make_app(Service()), scope, FakeClient(request(b"x"))).answers == [b"later:x"]


def test_a_stream_slower_than_its_deadline_is_cut_off() -> None:
    scope = grpc_scope(STREAM, (b"grpc-timeout", b"50m"))
    client = call(make_app(Service()), scope, FakeClient(request(b"a", b"hang")))
    assert client.answers == [b"re:a"]
    assert client.code == Code.DEADLINE_EXCEEDED


# -- status trailers -------------------------------------------------------------------------


def test_grpc_message_is_percent_encoded_and_round_trips() -> None:
    text = "revoked: é% done\n100%"
    encoded = percent_encode(text)
    assert all(0x20 <= byte <= 0x7E for byte in encoded)
    assert b"%C3%A9%25" in encoded
    headers = dict(status_trailers(16, text))
    assert headers[b"grpc-message"] == encoded
    import urllib.parse

    assert urllib.parse.unquote(encoded.decode()) == text


def test_a_domain_error_carries_its_status_message_and_details_decodable_as_protobuf() -> None:
    client = unary(REFUSE, request(b"x"))
    assert client.http_status == 200
    assert client.code == Code.INVALID_ARGUMENT
    assert client.message == "request_id: at most 256 characters (got 300)"
    status = client.details
    assert status.code == Code.INVALID_ARGUMENT
    assert status.message == client.message
    info = error_info(status)
    assert (info.domain, info.reason) == ("authority.v1", "FIELD_INVALID")
    assert bad_request_fields(status) == ["request_id"]


def test_details_bin_decodes_with_grpc_status() -> None:
    from grpc_status import rpc_status

    client = unary(REFUSE, request(b"x"))
    raw = client.trailers[b"grpc-status-details-bin"]
    import base64

    details = base64.b64decode(raw + b"=" * (-len(raw) % 4))

    class Call:
        def code(self) -> Any:
            import grpc

            return grpc.StatusCode.INVALID_ARGUMENT

        def details(self) -> str:
            return client.message

        def trailing_metadata(self) -> Any:
            return (("grpc-status-details-bin", details),)

    status = rpc_status.from_call(Call())
    assert error_info(status).reason == "FIELD_INVALID"


def test_a_fault_is_internal_with_an_incident_and_no_secret_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="authority.calls"):
        client = unary(BREAK, request(b"x"))
    assert client.code == Code.INTERNAL
    assert "incident" in client.message
    assert SECRET not in client.message and "Traceback" not in client.message
    assert b"grpc-status-details-bin" not in client.trailers
    records = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(records) == 1
    assert "RuntimeError" in records[0].getMessage()
    assert SECRET not in records[0].getMessage()
    assert "break_" in records[0].getMessage()  # where it happened is logged


def test_a_grpc_error_raised_by_a_handler_is_answered_as_is() -> None:
    def teapot(raw: bytes) -> bytes:
        raise GrpcError(Code.RESOURCE_EXHAUSTED, "slow down", b"\x08\x08")

    app = ThinGrpc({ECHO: teapot}, {}, map_error=status_error)
    client = call(app, grpc_scope(ECHO), FakeClient(request(b"x")))
    assert client.code == Code.RESOURCE_EXHAUSTED
    assert client.message == "slow down"
    assert client.details.code == Code.RESOURCE_EXHAUSTED


# -- routing ---------------------------------------------------------------------------------


def test_an_unknown_method_is_unimplemented_without_a_fallback() -> None:
    client = unary("/authority.v1.TokenAuthority/IssueToken", request(b"x"))
    assert client.code == Code.UNIMPLEMENTED


def test_an_unknown_method_goes_to_the_fallback_untouched() -> None:
    seen: list[str] = []

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        event = await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": event["body"]})

    app = make_app(Service(), fallback=fallback)
    client = call(
        app, grpc_scope("/authority.v1.Admin/ListOrganizations"), FakeClient([chunk(b"raw")])
    )
    assert seen == ["/authority.v1.Admin/ListOrganizations"]
    assert client.http_status == 204
    assert client.sent[1]["body"] == b"raw"


def test_lifespan_without_a_fallback_completes() -> None:
    client = FakeClient([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    call(make_app(Service()), {"type": "lifespan"}, client)
    assert [e["type"] for e in client.sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


def test_a_client_gone_before_its_message_gets_no_answer() -> None:
    service = Service()
    client = call(make_app(service), grpc_scope(ECHO), FakeClient([chunk(b"\0", True), DISCONNECT]))
    assert client.sent == []
    assert service.seen == []


# -- bidi stream -----------------------------------------------------------------------------


def test_a_stream_answers_in_order_then_ok() -> None:
    messages = [f"m{i}".encode() for i in range(50)]
    client = call(make_app(Service()), grpc_scope(STREAM), FakeClient(request(*messages)))
    assert client.answers == [b"re:" + m for m in messages]
    assert client.code == Code.OK


def test_a_stream_of_many_small_messages_in_one_chunk() -> None:
    body = b"".join(framed(f"{i}".encode()) for i in range(300))
    client = call(make_app(Service()), grpc_scope(STREAM), FakeClient([chunk(body)]))
    assert len(client.answers) == 300
    assert client.code == Code.OK


def test_a_stream_ended_by_a_domain_error_keeps_its_answers_and_sends_the_status() -> None:
    client = call(
        make_app(Service()), grpc_scope(STREAM), FakeClient(request(b"a", b"refuse", b"b"))
    )
    assert client.answers == [b"re:a"]
    assert client.code == 16
    assert error_info(client.details).reason == "TOKEN_REVOKED"


def test_a_stream_truncated_inside_a_message_is_internal() -> None:
    body = framed(b"a") + framed(b"bcdef")[:-2]
    client = call(make_app(Service()), grpc_scope(STREAM), FakeClient([chunk(body)]))
    assert client.answers == [b"re:a"]
    assert client.code == Code.INTERNAL


def test_an_oversized_stream_message_is_refused_by_its_prefix() -> None:
    body = framed(b"a") + struct.pack(">BI", 0, LIMIT + 1)
    client = FakeClient([chunk(body, more=True)], endless=b"y" * 512)
    call(make_app(Service(), read_ahead=10 * LIMIT), grpc_scope(STREAM), client)
    assert client.answers == [b"re:a"]
    assert client.code == Code.RESOURCE_EXHAUSTED


def test_gzip_stream_messages_are_inflated() -> None:
    body = gzipped(b"one") + framed(b"two")
    scope = grpc_scope(STREAM, (b"grpc-encoding", b"gzip"))
    assert call(make_app(Service()), scope, FakeClient([chunk(body)])).answers == [
        b"re:one",
        b"re:two",
    ]


def test_the_read_ahead_is_bounded_when_the_handler_does_not_consume() -> None:
    async def scenario() -> None:
        service = Service()
        service.wait_for_gate = True
        piece = framed(b"p" * 1000)  # 1005 bytes a chunk
        client = FakeClient(endless=piece)
        app = make_app(service, read_ahead=4096)
        call_task = asyncio.create_task(drive(app, grpc_scope(STREAM), client))
        for _ in range(50):
            await asyncio.sleep(0)
        # 5 chunks take the buffer past 4096 bytes; then the pump stops asking.
        assert client.receives == 5
        service.gate.set()  # the handler consumes: reading resumes
        for _ in range(50):
            await asyncio.sleep(0)
        assert client.receives > 5
        assert len(client.answers) > 0
        client.push(DISCONNECT)
        client.endless = None
        await call_task
        assert service.cancelled

    asyncio.run(scenario())


def test_a_client_that_never_reads_stops_the_stream_at_the_read_ahead() -> None:
    async def scenario() -> None:
        service = Service()
        client = FakeClient(endless=framed(b"q" * 1000))
        client.reading.clear()
        app = make_app(service, read_ahead=4096)
        call_task = asyncio.create_task(drive(app, grpc_scope(STREAM), client))
        for _ in range(100):
            await asyncio.sleep(0)
        # One answer is held in send(); the handler waits there, so it stops consuming and
        # the pump stops asking once the read-ahead is full.
        assert client.answers == []
        held = client.receives
        assert held <= 7
        for _ in range(100):
            await asyncio.sleep(0)
        assert client.receives == held
        call_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call_task
        assert service.cancelled

    asyncio.run(scenario())


def test_a_reset_seen_by_a_held_send_ends_the_stream_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        client = FakeClient(endless=framed(b"q" * 1000))
        client.reading.clear()
        call_task = asyncio.create_task(
            drive(make_app(Service(), read_ahead=4096), grpc_scope(STREAM), client)
        )
        for _ in range(50):
            await asyncio.sleep(0)
        client.reset = True  # RST_STREAM while the send is held by flow control
        client.endless = None
        client.complete = True  # the engine now answers receive() with http.disconnect
        client.reading.set()
        await call_task
        assert not any(e["type"] == "http.response.trailers" for e in client.sent)

    with caplog.at_level(logging.ERROR, logger="authority.calls"):
        asyncio.run(scenario())
    assert caplog.records == []


def test_a_disconnect_cancels_the_stream_handler_and_nothing_more_is_sent() -> None:
    async def scenario() -> None:
        service = Service()
        client = FakeClient([chunk(framed(b"a") + framed(b"hang"), more=True)])
        call_task = asyncio.create_task(drive(make_app(service), grpc_scope(STREAM), client))
        for _ in range(20):
            await asyncio.sleep(0)
        assert client.answers == [b"re:a"]
        client.push(DISCONNECT)
        await call_task
        assert service.cancelled
        assert not any(e["type"] == "http.response.trailers" for e in client.sent)

    asyncio.run(scenario())


def test_a_stream_with_a_bad_head_is_refused_before_reading() -> None:
    client = FakeClient(request(b"a"))
    call(make_app(Service()), grpc_scope(STREAM, (b"grpc-encoding", b"zstd")), client)
    assert client.code == Code.UNIMPLEMENTED
    assert client.receives == 0
