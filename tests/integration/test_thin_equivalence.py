"""The thin path answers exactly as the grpcio servicer does.

One real grpcio server (tests/harness.py), and the thin path two ways: the ASGI app built over
the same Runtime (both paths share one Validator and one cache), run on the server's own event
loop and driven by a fake ASGI server; and the thin server as deployed (Envoy, the embedded
app and grpcio behind it, `AUTHORITY_SERVER=thin`) on the same database, called over the
wire. The grpcio side is called through a real channel with raw bytes in and out (no stub), so
that the answers are compared byte for byte, and statuses by code, message and
the serialized google.rpc.Status of grpc-status-details-bin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from authority.api.thin import ThinGrpc, build_app, path_of
from authority.domain.token_format import new_token
from authority.v1 import token_authority_pb2 as pb
from tests.conftest import Deployment
from tests.harness import ManualClock, ServerHandle, bearer, serve
from tests.integration.helpers import issue, make_org
from tests.thin_asgi import FakeClient, drive, grpc_scope, request


@dataclass(frozen=True)
class Outcome:
    """What a caller sees of a call: the answer messages (bytes), and the status."""

    answers: tuple[bytes, ...]
    code: int
    message: str
    details: bytes | None


def thin_call(server: ServerHandle, app: ThinGrpc, method: str, messages: list[bytes]) -> Outcome:
    client = FakeClient(request(*messages))
    assert server.loop is not None
    future = asyncio.run_coroutine_threadsafe(
        drive(app, grpc_scope(path_of(method)), client), server.loop
    )
    future.result(timeout=15)
    code = client.code
    details = None
    if b"grpc-status-details-bin" in client.trailers:
        details = client.details.SerializeToString()
    return Outcome(tuple(client.answers), code, client.message, details)


def _status_of(error: grpc.RpcError, answers: list[bytes]) -> Outcome:
    assert isinstance(error, grpc.Call)
    details = None
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            details = value
    return Outcome(tuple(answers), error.code().value[0], error.details() or "", details)


def grpcio_unary(server: ServerHandle, method: str, message: bytes) -> Outcome:
    rpc: grpc.UnaryUnaryMultiCallable[bytes, bytes] = server.channel.unary_unary(path_of(method))
    try:
        answer = rpc(message, timeout=15)
    except grpc.RpcError as error:
        return _status_of(error, [])
    assert isinstance(answer, bytes)
    return Outcome((answer,), 0, "", None)


def grpcio_stream(server: ServerHandle, method: str, messages: list[bytes]) -> Outcome:
    rpc: grpc.StreamStreamMultiCallable[bytes, bytes] = server.channel.stream_stream(
        path_of(method)
    )
    answers: list[bytes] = []
    try:
        for answer in rpc(iter(messages), timeout=15):
            assert isinstance(answer, bytes)
            answers.append(answer)
    except grpc.RpcError as error:
        return _status_of(error, answers)
    return Outcome(tuple(answers), 0, "", None)


@dataclass
class Thin:
    """The thin path as a test calls it: `call` a method with request messages; `advance`
    its wall clock (the ASGI app shares the grpcio server's, the deployed server has its own)."""

    call: Callable[[str, list[bytes]], Outcome]
    advance: Callable[[float], None]
    # Read by a grpcio client (the deployed server), which may drop answers that arrived just
    # before an error status; the fake ASGI client keeps every one.
    wire: bool = False


def both(server: ServerHandle, thin: Thin, method: str, message: bytes) -> Outcome:
    """The grpcio answer first (it warms the shared cache, as production traffic would), then
    the thin one, asserted equal."""
    expected = grpcio_unary(server, method, message)
    got = thin.call(method, [message])
    assert got == expected
    return got


@dataclass
class Tokens:
    valid: str
    revoked: str
    expiring: str
    with_properties: str


# Enough entries that two processes' hash orders would almost never agree by chance (8! ways).
PROPERTIES = {key: f"value-{key}" for key in ("tier", "zone", "a", "team", "cost", "b", "z", "m")}


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[ServerHandle]:
    """A grpcio server in this process (whatever AUTHORITY_TEST_SERVER says): the thin app
    runs on its loop, over its Runtime."""
    with serve(deployment.database_url, server="grpcio") as grpcio:
        yield grpcio


@pytest.fixture(scope="module")
def deployed(deployment: Deployment) -> Iterator[ServerHandle]:
    """The thin server as `authority serve --server thin` runs it, on the same database."""
    with serve(deployment.database_url, server="thin") as thin:
        yield thin


@pytest.fixture(params=["asgi", "deployed"])
def thin(request: pytest.FixtureRequest, server: ServerHandle) -> Iterator[Thin]:
    if request.param == "asgi":
        app = build_app(server.running.application.runtime)
        yield Thin(lambda method, messages: thin_call(server, app, method, messages), _unmoved)
        return
    deployed: ServerHandle = request.getfixturevalue("deployed")
    start = deployed.clock()
    deployed.clock.set(server.clock())  # expiries computed alike (RefreshToken's)

    def call(method: str, messages: list[bytes]) -> Outcome:
        if method == "ValidateStream":
            return grpcio_stream(deployed, method, messages)
        assert len(messages) == 1
        return grpcio_unary(deployed, method, messages[0])

    yield Thin(call, deployed.clock.advance, wire=True)
    deployed.clock.set(start)


def _unmoved(seconds: float) -> None:
    """The ASGI app runs over the grpcio server's Runtime: the test moved that clock."""


@pytest.fixture
def tokens(server: ServerHandle, admin_token: str) -> Tokens:
    org = make_org(server, admin_token, "thin")
    auth = bearer(admin_token)
    valid = issue(server, auth, org, scopes=["download"])
    revoked = issue(server, auth, org, scopes=["download"])
    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=revoked.token.token_id), metadata=auth)
    expiring = issue(server, auth, org, scopes=["download"], ttl=Duration(seconds=600))
    props = issue(
        server,
        auth,
        org,
        scopes=["download"],
        properties=PROPERTIES,
    )
    return Tokens(valid.secret, revoked.secret, expiring.secret, props.secret)


def validate_requests(tokens: Tokens) -> dict[str, pb.ValidateRequest]:
    return {
        "valid": pb.ValidateRequest(token=tokens.valid, permission="download"),
        "valid, alive only": pb.ValidateRequest(token=tokens.valid),
        "valid, request_id echoed": pb.ValidateRequest(
            token=tokens.valid, permission="download", request_id="r-1"
        ),
        "permission denied": pb.ValidateRequest(token=tokens.valid, permission="upload"),
        "revoked": pb.ValidateRequest(token=tokens.revoked, permission="download"),
        "unknown": pb.ValidateRequest(token=new_token().value, permission="download"),
        "malformed": pb.ValidateRequest(token="not-a-token", permission="download"),
        "empty": pb.ValidateRequest(),
        "signed but forged": pb.ValidateRequest(token="eyJhbGciOiJFZERTQSJ9.e30.c2ln"),
        "request_id too long": pb.ValidateRequest(token=tokens.valid, request_id="r" * 300),
        "request_id too long, unknown token": pb.ValidateRequest(
            token=new_token().value, request_id="x" * 257
        ),
    }


def test_validate_answers_and_refusals_are_byte_identical(
    server: ServerHandle, thin: Thin, tokens: Tokens
) -> None:
    for name, message in validate_requests(tokens).items():
        outcome = both(server, thin, "Validate", message.SerializeToString())
        if "too long" in name:
            assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], name
            assert outcome.details, name
        else:
            assert outcome.code == 0, name


def test_validate_on_a_cold_cache_matches_too(
    server: ServerHandle, admin_token: str, thin: Thin
) -> None:
    """The thin path reads the store first (validate_missed), the grpcio one hits the cache."""
    org = make_org(server, admin_token, "thin-cold")
    secret = issue(server, bearer(admin_token), org, scopes=["download"]).secret
    message = pb.ValidateRequest(
        token=secret, permission="download", request_id="c"
    ).SerializeToString()
    first = thin.call("Validate", [message])
    assert first == grpcio_unary(server, "Validate", message)
    assert pb.ValidateResponse.FromString(first.answers[0]).valid


def test_an_expired_token_is_refused_alike(
    server: ServerHandle, thin: Thin, tokens: Tokens, clock: ManualClock
) -> None:
    message = pb.ValidateRequest(token=tokens.expiring, permission="download").SerializeToString()
    assert both(server, thin, "Validate", message).code == 0
    clock.advance(3600)
    thin.advance(3600)
    outcome = both(server, thin, "Validate", message)
    assert pb.ValidateResponse.FromString(outcome.answers[0]).reason == pb.REASON_EXPIRED


def test_an_answer_with_properties_is_byte_identical_too(
    server: ServerHandle, thin: Thin, tokens: Tokens
) -> None:
    """Both servers send the rendered answer as it is (no parse and serialize again, which
    would move request_id before the properties and may reorder the map's entries)."""
    message = pb.ValidateRequest(
        token=tokens.with_properties, permission="download", request_id="p"
    ).SerializeToString()
    outcome = both(server, thin, "Validate", message)
    assert dict(pb.ValidateResponse.FromString(outcome.answers[0]).properties) == PROPERTIES


def test_validate_batch_is_byte_identical(server: ServerHandle, thin: Thin, tokens: Tokens) -> None:
    requests = [
        message for name, message in validate_requests(tokens).items() if "too long" not in name
    ]
    batch = pb.ValidateBatchRequest(requests=requests).SerializeToString()
    outcome = both(server, thin, "ValidateBatch", batch)
    assert len(pb.ValidateBatchResponse.FromString(outcome.answers[0]).results) == len(requests)
    assert both(server, thin, "ValidateBatch", b"").answers == (b"",)


def test_validate_batch_refusals_match(server: ServerHandle, thin: Thin, tokens: Tokens) -> None:
    limit = server.running.application.runtime.batch_max
    oversized = pb.ValidateBatchRequest(
        requests=[pb.ValidateRequest(token=tokens.valid)] * (limit + 1)
    ).SerializeToString()
    outcome = both(server, thin, "ValidateBatch", oversized)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    long_id = pb.ValidateBatchRequest(
        requests=[
            pb.ValidateRequest(token=tokens.valid),
            pb.ValidateRequest(token=tokens.valid, request_id="q" * 300),
        ]
    ).SerializeToString()
    assert (
        both(server, thin, "ValidateBatch", long_id).code
        == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    )


def test_validate_stream_is_byte_identical_for_cached_tokens(
    server: ServerHandle, thin: Thin, tokens: Tokens
) -> None:
    requests = [
        pb.ValidateRequest(
            token=message.token, permission=message.permission, request_id=f"s{i}"
        ).SerializeToString()
        for i, message in enumerate(validate_requests(tokens).values())
        if len(message.request_id) <= 256
    ] * 3
    expected = grpcio_stream(server, "ValidateStream", requests)  # also warms the cache
    expected = grpcio_stream(server, "ValidateStream", requests)
    assert expected.code == 0
    thin.call("ValidateStream", requests)  # warms the deployed server's cache
    answered = thin.call("ValidateStream", requests)
    if thin.wire:
        # The deployed server's cache is its own: an entry that lapsed under load (its bound,
        # a change another test made) is a store read, whose answer may overtake earlier ones,
        # as the API allows. Each answer is still byte for byte grpcio's.
        answered = replace(answered, answers=tuple(sorted(answered.answers)))
        expected = replace(expected, answers=tuple(sorted(expected.answers)))
    assert answered == expected


def test_validate_stream_refusal_mid_stream_matches(
    server: ServerHandle, thin: Thin, tokens: Tokens
) -> None:
    good = pb.ValidateRequest(token=tokens.valid, permission="download", request_id="g")
    bad = pb.ValidateRequest(token=tokens.valid, request_id="b" * 300)
    requests = [good.SerializeToString(), bad.SerializeToString(), good.SerializeToString()]
    grpcio_stream(server, "ValidateStream", requests[:1])  # warm
    thin.call("ValidateStream", requests[:1])
    expected = grpcio_stream(server, "ValidateStream", requests)
    assert expected.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    got = thin.call("ValidateStream", requests)
    assert (got.code, got.message, got.details) == (
        expected.code,
        expected.message,
        expected.details,
    )
    # The answers sent before the refusal: grpcio may or may not flush its queued answer
    # before the status; the thin path sends it, so it is one of what grpcio can send. (A
    # grpcio client, in turn, may drop an answer that came just before the error status.)
    assert got.answers[: len(expected.answers)] == expected.answers or thin.wire
    assert len(got.answers) == 1 or (thin.wire and len(got.answers) <= 1)


def test_refresh_token_refusals_match(server: ServerHandle, thin: Thin) -> None:
    for value in ["", "not.a.jwt", "eyJhbGciOiJFZERTQSJ9.e30.c2ln", new_token().value]:
        message = pb.RefreshTokenRequest(access_token=value).SerializeToString()
        outcome = both(server, thin, "RefreshToken", message)
        assert outcome.code == grpc.StatusCode.UNAUTHENTICATED.value[0], value
        assert outcome.details


def test_refresh_token_answers_alike(server: ServerHandle, admin_token: str, thin: Thin) -> None:
    """Each refresh signs a new token (a new jti), so the two answers differ in the token and
    its id; everything else (expiry, refresh limit, the claims but jti) is the same."""
    org = make_org(server, admin_token, "thin-refresh")
    key = issue(server, bearer(admin_token), org, scopes=["download"]).secret
    exchanged = server.tokens.ExchangeKey(pb.ExchangeKeyRequest(key=key, scopes=["download"]))
    message = pb.RefreshTokenRequest(access_token=exchanged.access_token).SerializeToString()
    expected = grpcio_unary(server, "RefreshToken", message)
    got = thin.call("RefreshToken", [message])
    assert (got.code, expected.code) == (0, 0)
    mine = pb.RefreshTokenResponse.FromString(got.answers[0])
    theirs = pb.RefreshTokenResponse.FromString(expected.answers[0])
    assert mine.expires_at == theirs.expires_at
    assert mine.refresh_until == theirs.refresh_until
    assert mine.token_id != theirs.token_id and mine.access_token != theirs.access_token
    # The refreshed token is one the service accepts, on either path.
    check = pb.ValidateRequest(token=mine.access_token, permission="download").SerializeToString()
    outcome = both(server, thin, "Validate", check)
    assert pb.ValidateResponse.FromString(outcome.answers[0]).valid


def test_bytes_that_are_not_a_message(server: ServerHandle, thin: Thin) -> None:
    """Not the same, by design: grpcio answers UNKNOWN with the parser's words; the thin path
    INTERNAL (what gRPC's other implementations answer), quoting nothing of the request."""
    garbage = b"\x0a\xff\xff\xff\xff\x0f"
    got = thin.call("Validate", [garbage])
    assert got.code == grpc.StatusCode.INTERNAL.value[0]
    assert got.message == "the request message could not be parsed"
    expected = grpcio_unary(server, "Validate", garbage)
    assert expected.code == grpc.StatusCode.UNKNOWN.value[0]
