"""gRPC over HTTP/2 on the thin server, frame by frame: what a broken or hostile peer gets.

The thin server (`serve --server thin`) answers the hot TokenAuthority methods in the thin
layer (api/thin/_grpc.py behind Envoy) and routes every other path to grpcio. A grpcio client
only ever sends well-formed calls, so these tests speak raw HTTP/2 (tests/h2_client.py, h2c
with prior knowledge): bad length prefixes, truncated and oversized messages, wrong content
types, tiny and malformed deadlines, resets, a client that never reads, many streams on one
connection, compression, and statuses with details. Each case runs on a hot path and, where
the case means the same there, on a path routed to grpcio (Ping, Health), so that both halves
are seen to behave alike; where they do not, a test per half says what each does and why, and
an xfail names what is still wrong.

Every refusal is checked for its exact grpc-status, for a grpc-message (and details) that does
not quote the request (CANARY is in every request that could be quoted), and for the absence
of the headers Envoy would add of its own (`server: envoy`, `x-envoy-*`).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from h2.errors import ErrorCodes

from authority.api.thin import MAX_MESSAGE, READ_AHEAD
from authority.thin_contract import NOT_GRPC_BODY
from authority.thin_server import STREAM_WINDOW
from authority.v1 import token_authority_pb2 as pb
from tests.h2_client import H2Client, Response, grpc_frame, grpc_messages_prefix
from tests.harness import ServerHandle, bootstrap_admin, new_database, serve
from tests.integration.helpers import make_org, make_org_key

M = TypeVar("M", bound=Message)

VALIDATE = "/authority.v1.TokenAuthority/Validate"
VALIDATE_BATCH = "/authority.v1.TokenAuthority/ValidateBatch"
VALIDATE_STREAM = "/authority.v1.TokenAuthority/ValidateStream"
PING = "/authority.v1.TokenAuthority/Ping"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
CACHE_STATS = "/authority.v1.Admin/GetCacheStats"

# In every request whose bytes a status message could quote: it must never come back.
CANARY = "canary-7Qz"
# How long a refusal may take: the server answers at once, this is only the bound of a test.
PROMPT = 2.0


@dataclass(frozen=True)
class Thin:
    server: ServerHandle
    key: str  # a live organisation key: Validate answers it valid

    @property
    def port(self) -> int:
        return self.server.port

    def client(self, **options: bool) -> H2Client:
        return H2Client(self.port, **options)


@contextmanager
def thin_server(directory: Path) -> Iterator[Thin]:
    """A thin server on a SQLite database of its own, with an organisation key."""
    with new_database("sqlite", directory) as url:
        admin_token = bootstrap_admin(url)
        with serve(url, server="thin") as server:
            org = make_org(server, admin_token)
            key = make_org_key(server, admin_token, org, ["all"]).secret
            yield Thin(server, key)


@pytest.fixture(scope="module")
def thin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Thin]:
    """The server of the module's tests."""
    with thin_server(tmp_path_factory.mktemp("thin-http2")) as server:
        yield server


@pytest.fixture(scope="module")
def tainted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Thin]:
    """A server apart for the malformed gRPC headers sent to its grpcio half: they leave
    Envoy's connection to grpcio unable to carry that header for anyone (see
    test_a_malformed_header_from_one_client_does_not_break_anothers_calls)."""
    with thin_server(tmp_path_factory.mktemp("thin-http2-tainted")) as server:
        yield server


def validate_request(token: str = CANARY, request_id: str = CANARY) -> bytes:
    return pb.ValidateRequest(token=token, request_id=request_id).SerializeToString()


PING_REQUEST = pb.PingRequest(payload=CANARY).SerializeToString()
HEALTH_REQUEST = health_pb2.HealthCheckRequest().SerializeToString()

# A unary method on each half, with a well-formed request for it.
UNARY = [
    pytest.param(VALIDATE, validate_request(), id="thin-Validate"),
    pytest.param(PING, PING_REQUEST, id="grpcio-Ping"),
    pytest.param(HEALTH_CHECK, HEALTH_REQUEST, id="grpcio-HealthCheck"),
]


def assert_no_envoy_headers(response: Response) -> None:
    for name, value in response.all_headers():
        assert not name.startswith("x-envoy-"), (name, value)
        assert name != "server", (name, value)


def assert_status(response: Response, code: int, *quoted: str) -> None:
    """A gRPC answer (HTTP 200, application/grpc) that ends with `code`, quoting none of
    `quoted` (CANARY always) in its message or details."""
    assert response.reset in (None, ErrorCodes.NO_ERROR), f"reset {response.reset}"
    assert response.ended, "the stream did not end"
    assert response.status == 200, response.headers
    assert response.headers.get("content-type", "").startswith("application/grpc")
    assert response.grpc_status == code, (response.grpc_status, response.grpc_message)
    details = response.details or b""
    for text in (CANARY, *quoted):
        assert text not in response.grpc_message, response.grpc_message
        assert text.encode() not in details
    assert_no_envoy_headers(response)


def assert_ok_unary(response: Response) -> bytes:
    """One message, then trailers with grpc-status 0; the message."""
    assert_status(response, 0)
    assert response.trailers.get("grpc-status") == "0", "status 0 belongs in the trailers"
    (message,) = response.messages
    return message


def still_serving(client: H2Client) -> None:
    """The connection (and the server) answers a well-formed call after whatever came before."""
    answer = pb.ValidateResponse.FromString(
        assert_ok_unary(client.response(client.call(VALIDATE, [validate_request()])))
    )
    assert answer.request_id == CANARY


# -- 1. a well-formed call ---------------------------------------------------------------------


def test_a_well_formed_unary_call_gets_one_message_and_status_trailers(thin: Thin) -> None:
    with thin.client() as client:
        validated = client.response(client.call(VALIDATE, [validate_request(thin.key, "r-1")]))
        pinged = client.response(client.call(PING, [PING_REQUEST]))
        checked = client.response(client.call(HEALTH_CHECK, [HEALTH_REQUEST]))
    answer = pb.ValidateResponse.FromString(assert_ok_unary(validated))
    assert answer.valid and answer.request_id == "r-1"
    assert validated.headers["content-type"] == "application/grpc"
    assert pb.PingResponse.FromString(assert_ok_unary(pinged)).payload == CANARY
    health = health_pb2.HealthCheckResponse.FromString(assert_ok_unary(checked))
    assert health.status == health_pb2.HealthCheckResponse.SERVING


# -- 2. a bad length prefix --------------------------------------------------------------------


@pytest.mark.parametrize(("path", "message"), UNARY)
def test_a_compressed_flag_without_grpc_encoding_is_internal(
    thin: Thin, path: str, message: bytes
) -> None:
    with thin.client() as client:
        refused = client.response(client.call(path, body=grpc_frame(message, flag=1)))
        assert_status(refused, 13)
        still_serving(client)


def test_a_compressed_flag_without_grpc_encoding_ends_a_stream_internal(thin: Thin) -> None:
    with thin.client() as client:
        stream = client.call(VALIDATE_STREAM, body=grpc_frame(validate_request(), flag=1))
        assert_status(client.response(stream), 13)


# Only the thin half: grpcio (C-core 1.85) is erratic with a flag other than 0 or 1: it may
# hand the handler an empty message (Ping answers with no payload) or never answer the call
# (Health/Check, or Ping with flag 3), the same with or without Envoy in front.
@pytest.mark.parametrize("flag", [2, 3, 0x80, 0xFF])
@pytest.mark.parametrize("path", [VALIDATE, VALIDATE_STREAM])
def test_a_prefix_flag_above_one_is_internal(thin: Thin, path: str, flag: int) -> None:
    with thin.client() as client:
        refused = client.response(client.call(path, body=grpc_frame(validate_request(), flag=flag)))
        assert_status(refused, 13)
        assert refused.messages == []
        still_serving(client)


# -- 3. a truncated message --------------------------------------------------------------------

_GRPCIO_HANGS_ON_TRUNCATION = pytest.mark.xfail(
    strict=True,
    reason="grpcio (C-core 1.85) never answers a request that ends inside a message, with or "
    "without Envoy in front; only the caller's deadline ends it (here DEADLINE_EXCEEDED)",
)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(VALIDATE, id="thin-Validate"),
        pytest.param(VALIDATE_STREAM, id="thin-ValidateStream"),
        pytest.param(VALIDATE_BATCH, id="thin-ValidateBatch"),
        pytest.param(PING, id="grpcio-Ping", marks=_GRPCIO_HANGS_ON_TRUNCATION),
    ],
)
def test_a_message_cut_short_by_end_stream_is_internal_at_once(thin: Thin, path: str) -> None:
    body = grpc_frame(CANARY.encode(), length=100)  # 100 declared, 10 sent, then END_STREAM
    with thin.client() as client:
        started = time.monotonic()
        # The deadline only bounds the grpcio half's hang; the thin half answers at once.
        stream = client.call(path, body=body, headers=[("grpc-timeout", "1S")])
        refused = client.response(stream)
        assert_status(refused, 13)
        assert time.monotonic() - started < PROMPT
        still_serving(client)


def test_a_stream_cut_short_after_a_whole_message_answers_it_then_internal(thin: Thin) -> None:
    body = grpc_frame(validate_request()) + grpc_frame(b"\x0a\x05abcde", length=100)
    with thin.client() as client:
        refused = client.response(client.call(VALIDATE_STREAM, body=body))
    assert_status(refused, 13)
    (answer,) = refused.messages
    assert pb.ValidateResponse.FromString(answer).request_id == CANARY


# -- 4. an oversized message -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(VALIDATE, id="thin-Validate"),
        pytest.param(VALIDATE_STREAM, id="thin-ValidateStream"),
        pytest.param(PING, id="grpcio-Ping"),
        pytest.param(HEALTH_WATCH, id="grpcio-HealthWatch"),
    ],
)
def test_a_message_declared_over_the_limit_is_refused_before_its_body(
    thin: Thin, path: str
) -> None:
    """Only the prefix is sent, and the stream stays open: the answer cannot have waited
    for (or read) the body."""
    with thin.client() as client:
        stream = client.start(path)
        started = time.monotonic()
        client.send(stream, grpc_frame(b"", length=MAX_MESSAGE + 1))
        refused = client.response(stream)
        assert time.monotonic() - started < PROMPT
        assert_status(refused, 8)
        assert refused.messages == []
        still_serving(client)


# -- 5. not a gRPC request ---------------------------------------------------------------------


# Every half: the app answers on the hot methods, Envoy's routes on the rest (grpcio itself
# resets a GET, which Envoy turned into a 503 "upstream connect error", and answered any content
# type as gRPC); an unknown path too.
EVERY_HALF = [VALIDATE, VALIDATE_STREAM, PING, HEALTH_CHECK, CACHE_STATS, "/nowhere"]


def assert_not_grpc(refused: Response) -> None:
    assert refused.status == 415
    assert refused.grpc_status is None
    assert refused.data == NOT_GRPC_BODY.encode()
    assert CANARY.encode() not in refused.data
    assert_no_envoy_headers(refused)


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/json", "application"])
@pytest.mark.parametrize("path", EVERY_HALF)
def test_a_request_that_is_not_grpc_gets_http_415(
    thin: Thin, path: str, content_type: str | None
) -> None:
    with thin.client() as client:
        assert_not_grpc(
            client.response(client.call(path, [validate_request()], content_type=content_type))
        )
        still_serving(client)


@pytest.mark.parametrize("path", EVERY_HALF)
def test_a_browsers_get_gets_http_415(thin: Thin, path: str) -> None:
    with thin.client() as client:
        get = client.start(path, method="GET", content_type=None, end_stream=True)
        assert_not_grpc(client.response(get))
        still_serving(client)


@pytest.mark.parametrize("path", [VALIDATE, VALIDATE_STREAM])
def test_a_get_that_says_grpc_gets_http_415_on_the_thin_half(thin: Thin, path: str) -> None:
    """(The grpcio half resets it; Envoy turns that into UNAVAILABLE, "upstream connect error
    or disconnect/reset before headers". Its own answer would be grpc-status UNKNOWN.)"""
    with thin.client() as client:
        assert_not_grpc(client.response(client.start(path, method="GET", end_stream=True)))
        still_serving(client)


@pytest.mark.parametrize("content_type", ["application/grpc+proto", "application/grpc; x=y"])
def test_grpc_content_types_with_a_suffix_reach_either_half(thin: Thin, content_type: str) -> None:
    with thin.client() as client:
        for path, message in ((PING, PING_REQUEST), (VALIDATE, validate_request())):
            answered = client.response(client.call(path, [message], content_type=content_type))
            assert answered.status == 200 and answered.grpc_status == 0, answered.headers


# -- 6. deadlines ------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", ["1n", "1u", "100m"])
def test_a_deadline_ends_a_waiting_grpcio_call_with_deadline_exceeded(
    thin: Thin, timeout: str
) -> None:
    """Health Watch with no request message yet waits for one: only the deadline ends it
    (trailers-only: no answer had begun)."""
    with thin.client() as client:
        started = time.monotonic()
        stream = client.start(HEALTH_WATCH, headers=[("grpc-timeout", timeout)])
        refused = client.response(stream)
        assert time.monotonic() - started < PROMPT
        assert_status(refused, 4)
        still_serving(client)


# Enough calls that a race lost now and then shows. When Envoy enforced grpc-timeout too (a
# route with max_stream_duration.grpc_timeout_header_max), its timer won 2-4% of the tiny
# deadlines and about 60% of those after a first answer, and then ended the stream with
# RST_STREAM(INTERNAL_ERROR) instead of grpc-status 4: grpcio clients saw INTERNAL.
DEADLINE_TRIES = 10
# A deadline after a first answer: long enough that the answer comes first on a busy machine.
AFTER_ANSWER = "200m"
AFTER_ANSWER_TRIES = 5


def test_a_deadline_ends_validate_stream_with_deadline_exceeded(thin: Thin) -> None:
    """ValidateStream with its request stream open waits for the next message: the deadline
    must end it with grpc-status 4, whether or not an answer was sent before."""
    outcomes = []
    with thin.client() as client:
        for _ in range(DEADLINE_TRIES):
            for timeout in ("1n", "1u", "1m"):
                stream = client.start(VALIDATE_STREAM, headers=[("grpc-timeout", timeout)])
                outcomes.append(_status_or_reset(client.response(stream)))
        for index in range(AFTER_ANSWER_TRIES):
            stream = client.start(VALIDATE_STREAM, headers=[("grpc-timeout", AFTER_ANSWER)])
            client.send(stream, grpc_frame(validate_request(request_id=f"d-{index}")))
            client.messages_received(stream, 1)
            outcomes.append(_status_or_reset(client.response(stream)))
        still_serving(client)
    assert outcomes == [4] * len(outcomes)


def test_a_deadline_after_a_grpcio_stream_has_answered_ends_with_status_trailers(
    thin: Thin,
) -> None:
    outcomes = []
    with thin.client() as client:
        for _ in range(AFTER_ANSWER_TRIES):
            stream = client.start(HEALTH_WATCH, headers=[("grpc-timeout", AFTER_ANSWER)])
            client.send(stream, grpc_frame(HEALTH_REQUEST), end_stream=True)
            client.messages_received(stream, 1)
            outcomes.append(_status_or_reset(client.response(stream)))
        still_serving(client)
    assert outcomes == [4] * len(outcomes)


def _status_or_reset(response: Response) -> str | int:
    """A deadline's outcome: its status code (checked as any refusal), else how it was reset."""
    if response.reset not in (None, ErrorCodes.NO_ERROR) or response.grpc_status is None:
        return f"reset {response.reset}"
    assert_status(response, response.grpc_status)
    return response.grpc_status


# Not 1 to 8 digits and a unit. C-core also takes 9 digits ("123456789S"), which the thin
# half refuses: the spec says at most 8.
GRPCIO_MALFORMED_TIMEOUTS = ["abc", "1x", "-1S", "1.5S", CANARY]
MALFORMED_TIMEOUTS = [*GRPCIO_MALFORMED_TIMEOUTS, "123456789S"]


@pytest.mark.parametrize("value", MALFORMED_TIMEOUTS)
@pytest.mark.parametrize("path", [VALIDATE, VALIDATE_STREAM])
def test_a_malformed_grpc_timeout_is_internal_on_the_thin_half(
    thin: Thin, path: str, value: str
) -> None:
    """INTERNAL, as the grpcio half (the next test), C-core and grpc-go say."""
    with thin.client() as client:
        stream = client.call(path, [validate_request()], headers=[("grpc-timeout", value)])
        refused = client.response(stream)
        assert_status(refused, 13, value)
        assert refused.messages == []
        still_serving(client)


@pytest.mark.parametrize("value", GRPCIO_MALFORMED_TIMEOUTS)
def test_a_malformed_grpc_timeout_is_internal_on_the_grpcio_half(tainted: Thin, value: str) -> None:
    with tainted.client() as client:
        stream = client.call(PING, [PING_REQUEST], headers=[("grpc-timeout", value)])
        refused = client.response(stream)
        assert_status(refused, 13, value)
        assert refused.messages == []
        still_serving(client)


# -- 7. cancellation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "request_bytes", "end"),
    [
        pytest.param(VALIDATE_STREAM, validate_request(), False, id="thin-ValidateStream"),
        pytest.param(HEALTH_WATCH, HEALTH_REQUEST, True, id="grpcio-HealthWatch"),
    ],
)
def test_a_cancelled_stream_leaves_its_connection_usable(
    thin: Thin, path: str, request_bytes: bytes, end: bool
) -> None:
    with thin.client() as client:
        for _ in range(3):  # a reset leaves nothing behind that troubles the next call
            stream = client.start(path)
            client.send(stream, grpc_frame(request_bytes), end_stream=end)
            client.messages_received(stream, 1)
            client.reset(stream, ErrorCodes.CANCEL)
            still_serving(client)
        # A stream of the same method on the same connection runs to its end.
        stream = client.start(path)
        client.send(stream, grpc_frame(request_bytes), end_stream=end)
        client.messages_received(stream, 1)
        if not end:
            client.end(stream)
            assert_status(client.response(stream), 0)
        assert client.terminated is None


def test_a_grpcio_client_cancelling_validate_stream_keeps_its_channel(thin: Thin) -> None:
    release = threading.Event()

    def requests() -> Iterator[pb.ValidateRequest]:
        yield pb.ValidateRequest(token=thin.key, request_id="c-1")
        release.wait(10)  # the request stream stays open (grpcio reads it on its own thread)

    try:
        call = thin.server.tokens.ValidateStream(requests(), timeout=10)
        first = next(call)
        assert first.valid and first.request_id == "c-1"
        call.cancel()
        with pytest.raises(grpc.RpcError) as cancelled:
            next(call)
        assert cancelled.value.code() == grpc.StatusCode.CANCELLED
    finally:
        release.set()
    answer = thin.server.tokens.Validate(pb.ValidateRequest(token=thin.key), timeout=5)
    assert answer.valid


# -- 8. a client that never reads --------------------------------------------------------------

# What the server may take in from a stream whose answers nobody reads before it stops:
# Envoy's buffer for the stream (its default limit, 1 MiB), which the stream window (256 KiB)
# and the thin layer's read-ahead (64 KiB) fit in. Measured: 1.01 MB.
BLOCKED_BOUND = 2 << 20
# No window granted for this long, with the window at zero: the server has stopped reading.
QUIET = 1.0


def test_a_client_that_never_reads_is_stopped_and_does_not_stop_others(thin: Thin) -> None:
    # Answers as large as a request allows (request_id is echoed, at most 256 characters), so
    # that the answers nobody reads pile up quickly; "not-a-token" is answered without a read.
    request = grpc_frame(validate_request(token="not-a-token", request_id="r" * 256))
    batch = request * 256
    with thin.client(auto_ack=False) as stuck:
        stream = stuck.start(VALIDATE_STREAM)
        sent = position = 0
        progress = time.monotonic()
        give_up = progress + 20
        while sent < BLOCKED_BOUND and time.monotonic() < give_up:
            count = stuck.send_available(stream, batch[position:])
            if count:
                sent += count
                position = (position + count) % len(batch)
                progress = time.monotonic()
            elif time.monotonic() - progress > QUIET:
                break
            else:
                stuck.read(0.05)
        assert sent < BLOCKED_BOUND, "the server kept reading a stream whose answers pile up"
        assert stuck.conn.local_flow_control_window(stream) == 0, f"sent {sent} bytes"
        assert sent > STREAM_WINDOW + READ_AHEAD, "the server read less than its window"
        assert len(stuck.responses[stream].data) <= 65535  # h2's default window, never granted

        # Another connection is served at once meanwhile, on both halves.
        with thin.client() as other:
            started = time.monotonic()
            answer = pb.ValidateResponse.FromString(
                assert_ok_unary(other.response(other.call(VALIDATE, [validate_request(thin.key)])))
            )
            assert answer.valid
            assert_ok_unary(other.response(other.call(PING, [PING_REQUEST])))
            assert time.monotonic() - started < PROMPT

        # Reading again unblocks the stream: the server answers on.
        seen = len(grpc_messages_prefix(bytes(stuck.responses[stream].data)))
        stuck.grant(stream)
        stuck.messages_received(stream, seen + 10)

        # A reset while the server is blocked sending frees it; the connection serves on.
        stuck.reset(stream, ErrorCodes.CANCEL)
        stuck.grant(stream)
        stuck.auto_ack = True
        still_serving(stuck)

    with thin.client() as after:
        still_serving(after)


# -- 9. many streams on one connection ---------------------------------------------------------


@pytest.mark.parametrize(
    "path", [pytest.param(VALIDATE, id="thin-Validate"), pytest.param(PING, id="grpcio-Ping")]
)
def test_many_concurrent_streams_on_one_connection_are_all_answered(thin: Thin, path: str) -> None:
    count = 200
    with thin.client() as client:
        streams = []
        for index in range(count):  # all opened before any answer is read
            if path == VALIDATE:
                request = validate_request(thin.key, f"m-{index}")
            else:
                request = pb.PingRequest(payload=f"m-{index}").SerializeToString()
            streams.append(client.call(path, [request]))
        responses = client.wait(streams, timeout=15)
    for index, response in enumerate(responses):
        answer = assert_ok_unary(response)
        if path == VALIDATE:
            validated = pb.ValidateResponse.FromString(answer)
            assert validated.valid and validated.request_id == f"m-{index}"
        else:
            assert pb.PingResponse.FromString(answer).payload == f"m-{index}"


# -- 10. compression ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        pytest.param(VALIDATE, validate_request(), id="thin-Validate"),
        pytest.param(PING, PING_REQUEST, id="grpcio-Ping"),
    ],
)
def test_a_gzip_message_is_accepted(thin: Thin, path: str, message: bytes) -> None:
    body = grpc_frame(gzip.compress(message), flag=1)
    with thin.client() as client:
        answered = client.response(
            client.call(path, body=body, headers=[("grpc-encoding", "gzip")])
        )
    answer = assert_ok_unary(answered)
    assert CANARY.encode() in answer  # the request_id or payload, echoed: it was inflated


def test_a_gzip_message_on_a_stream_is_accepted(thin: Thin) -> None:
    body = b"".join(
        grpc_frame(gzip.compress(validate_request(thin.key, f"z-{i}")), flag=1) for i in range(3)
    )
    with thin.client() as client:
        stream = client.call(VALIDATE_STREAM, body=body, headers=[("grpc-encoding", "gzip")])
        answered = client.response(stream)
    assert_status(answered, 0)
    ids = sorted(pb.ValidateResponse.FromString(m).request_id for m in answered.messages)
    assert ids == ["z-0", "z-1", "z-2"]


def test_a_grpcio_client_sending_gzip_is_served_on_the_thin_half(thin: Thin) -> None:
    answer = thin.server.tokens.Validate(
        pb.ValidateRequest(token=thin.key, request_id="g" * 200),
        compression=grpc.Compression.Gzip,
        timeout=5,
    )
    assert answer.valid and answer.request_id == "g" * 200


def test_a_message_that_is_not_gzip_is_internal(thin: Thin) -> None:
    body = grpc_frame(validate_request(), flag=1)  # flagged compressed, but plain bytes
    with thin.client() as client:
        refused = client.response(
            client.call(VALIDATE, body=body, headers=[("grpc-encoding", "gzip")])
        )
        assert_status(refused, 13)
        still_serving(client)


UNKNOWN_ENCODINGS = ["snappy", CANARY]


@pytest.mark.parametrize("encoding", UNKNOWN_ENCODINGS)
@pytest.mark.parametrize("path", [VALIDATE, VALIDATE_STREAM])
def test_an_unknown_grpc_encoding_is_unimplemented_on_the_thin_half(
    thin: Thin, path: str, encoding: str
) -> None:
    """UNIMPLEMENTED, the spec's answer; the grpcio half (C-core) refuses the header itself
    as INTERNAL ("Error parsing 'grpc-encoding' metadata"), the next test."""
    with thin.client() as client:
        stream = client.call(path, [validate_request()], headers=[("grpc-encoding", encoding)])
        refused = client.response(stream)
        assert_status(refused, 12, encoding)
        assert refused.messages == []
        still_serving(client)


@pytest.mark.parametrize("encoding", UNKNOWN_ENCODINGS)
def test_an_unknown_grpc_encoding_is_internal_on_the_grpcio_half(
    tainted: Thin, encoding: str
) -> None:
    with tainted.client() as client:
        stream = client.call(PING, [PING_REQUEST], headers=[("grpc-encoding", encoding)])
        refused = client.response(stream)
        assert_status(refused, 13, encoding)
        assert refused.messages == []
        still_serving(client)


def test_a_malformed_header_from_one_client_does_not_break_anothers_calls(
    tmp_path: Path,
) -> None:
    """grpc C-core (1.85, grpc/grpc#34721) poisons a connection's HPACK state when a header
    fails to parse; Envoy gives each caller's connection its own to grpcio, so the damage
    stays with the caller that did it, as without Envoy."""
    with thin_server(tmp_path) as fresh:
        for name, value in (("grpc-timeout", "abc"), ("grpc-encoding", "snappy")):
            with fresh.client() as hostile:
                hostile.response(hostile.call(PING, [PING_REQUEST], headers=[(name, value)]))
        health = health_pb2_grpc.HealthStub(fresh.server.channel)
        failures = []
        for _ in range(5):
            for compression in (None, grpc.Compression.Gzip):
                try:
                    health.Check(
                        health_pb2.HealthCheckRequest(), timeout=5, compression=compression
                    )
                except grpc.RpcError as error:
                    failures.append(f"{error.code()}: {error.details()}")
        assert failures == []


# -- 11. statuses with details -----------------------------------------------------------------


def _status_details(response: Response) -> status_pb2.Status:
    raw = response.details
    assert raw is not None, "no grpc-status-details-bin"
    status = status_pb2.Status.FromString(raw)
    assert status.code == response.grpc_status
    assert status.message == response.grpc_message
    return status


def _detail(status: status_pb2.Status, kind: type[M]) -> M:
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            unpacked = kind()
            detail.Unpack(unpacked)
            return unpacked
    raise AssertionError(f"no {kind.__name__} among the details")


def test_a_management_call_without_a_bearer_is_unauthenticated_with_details(thin: Thin) -> None:
    with thin.client() as client:
        refused = client.response(client.call(CACHE_STATS, [b""]))
    assert_status(refused, 16)
    status = _status_details(refused)
    info = _detail(status, error_details_pb2.ErrorInfo)
    assert info.domain == "authority.v1" and info.reason == "CREDENTIALS_MISSING"


def test_a_batch_over_the_limit_is_invalid_argument_with_details(thin: Thin) -> None:
    batch = pb.ValidateBatchRequest(
        requests=[pb.ValidateRequest(token=CANARY, request_id=CANARY)] * 1001
    )
    with thin.client() as client:
        refused = client.response(client.call(VALIDATE_BATCH, [batch.SerializeToString()]))
    assert_status(refused, 3)
    assert refused.trailers.get("grpc-status") == "3"  # after headers, as the thin layer sends
    status = _status_details(refused)
    bad_request = _detail(status, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["requests"]
    info = _detail(status, error_details_pb2.ErrorInfo)
    assert info.reason == "BATCH_TOO_LARGE"


def test_the_server_is_healthy_after_all_of_it(thin: Thin) -> None:
    health = health_pb2_grpc.HealthStub(thin.server.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    with thin.client() as client:
        still_serving(client)
