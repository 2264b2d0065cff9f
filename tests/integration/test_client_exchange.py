"""The client's key exchange through a real server: `exchange_key`, `refresh_token` and
`signing_keys` on both clients, and `KeyExchangeCredentials` as a backend job uses it: calls to
another service across several expiries without noticing, a new exchange when a refresh is
refused, one exchange for many callers, a revoked key surfacing as Unauthenticated, and the
key in no repr, message or log.

The job's clock is the server's ManualClock: expiries pass without sleeping. The job calls a
small "storage" service of the test's own, which checks each call's bearer with Validate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import jwt
import pytest

from authority.client import (
    AccessToken,
    AsyncKeyExchangeCredentials,
    AsyncTokenAuthorityClient,
    InvalidArgument,
    IssuedToken,
    KeyExchangeCredentials,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    TokenAuthorityClient,
    Unauthenticated,
    Unavailable,
)
from authority.v1 import token_authority_pb2 as pb
from authority.v1 import token_authority_pb2_grpc
from tests.harness import ManualClock, ServerHandle, serve
from tests.integration import own_server
from tests.integration.own_server import Counting, wall

MAX_TTL = 900
WINDOW = 86400
# The storage service answers Ping on the TokenAuthority service name: the stubs are at hand.
SERVICE = "authority.v1.TokenAuthority"


# The module's own database and server, and the fixtures around them (used by name).
own_database, admin_token, server = (
    own_server.own_database,
    own_server.admin_token,
    own_server.server,
)
admin, key, counted = own_server.admin, own_server.key, own_server.counted


@dataclass
class Storage:
    """The service the job calls: each Ping must carry a bearer that Validate accepts for
    `download`. Records every authorization value it received."""

    address: str
    authority: TokenAuthorityClient
    received: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)

    def ping(self, request: pb.PingRequest, context: grpc.ServicerContext) -> pb.PingResponse:
        authorization = dict(context.invocation_metadata()).get("authorization", "")
        assert isinstance(authorization, str)
        self.received.append(authorization)
        scheme, _, token = authorization.partition(" ")
        answer = self.authority.validate(token, "download")
        if scheme != "Bearer" or not answer.valid:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"refused: {answer.reason}")
        self.accepted.append(answer.token_id)
        return pb.PingResponse(payload="stored")


@pytest.fixture
def storage(server: ServerHandle) -> Iterator[Storage]:
    """The storage service on a port of its own (plaintext: the job reaches it over a local
    channel, which gRPC allows call credentials on)."""
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    with TokenAuthorityClient(server.address) as authority:
        storage = Storage(f"127.0.0.1:{port}", authority)
        ping_handler = grpc.unary_unary_rpc_method_handler(
            storage.ping,
            request_deserializer=pb.PingRequest.FromString,
            response_serializer=pb.PingResponse.SerializeToString,
        )
        grpc_server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Ping": ping_handler}),)
        )
        grpc_server.start()
        yield storage
        grpc_server.stop(grace=None)


def storage_channel(storage: Storage, call_credentials: grpc.CallCredentials) -> grpc.Channel:
    credentials = grpc.composite_channel_credentials(
        grpc.local_channel_credentials(), call_credentials
    )
    return grpc.secure_channel(storage.address, credentials)


def ping(channel: grpc.Channel) -> str:
    response: pb.PingResponse = token_authority_pb2_grpc.TokenAuthorityStub(channel).Ping(
        pb.PingRequest(), timeout=10
    )
    return response.payload


# -- the clients ------------------------------------------------------------------------------


def test_exchange_key_gives_an_access_token_that_validates_and_keeps_its_value_out_of_repr(
    admin: TokenAuthorityClient, key: IssuedToken, clock: ManualClock
) -> None:
    now = clock()

    issued = admin.exchange_key(
        key.secret, scopes=["download"], ttl=timedelta(minutes=5), audience="storage"
    )

    assert isinstance(issued, AccessToken)
    assert issued.expires_at == now + timedelta(minutes=5)
    assert issued.refresh_until == now + timedelta(seconds=WINDOW)
    assert issued.access_token not in repr(issued) and issued.token_id in repr(issued)
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert (claims["jti"], claims["aud"], claims["scope"]) == (
        issued.token_id,
        "storage",
        "download",
    )
    answer = admin.validate(issued.access_token, "download")
    assert answer.valid and answer.token_id == issued.token_id
    assert admin.validate(issued.access_token, "reports.monthly").reason is (
        Reason.PERMISSION_DENIED
    )


def test_refresh_token_renews_an_expired_token_with_its_lifetime_and_its_window(
    admin: TokenAuthorityClient, key: IssuedToken, clock: ManualClock
) -> None:
    issued = admin.exchange_key(key.secret, ttl=timedelta(minutes=5))
    clock.advance(10 * 60)
    assert admin.validate(issued.access_token).reason is Reason.EXPIRED

    renewed = admin.refresh_token(issued.access_token)

    assert renewed.token_id != issued.token_id
    assert renewed.expires_at == clock() + timedelta(minutes=5)
    assert renewed.refresh_until == issued.refresh_until
    assert admin.validate(renewed.access_token, "download").valid


def test_signing_keys_is_the_published_jwk_set_holding_the_key_that_signed(
    admin: TokenAuthorityClient, key: IssuedToken
) -> None:
    issued = admin.exchange_key(key.secret)

    document = json.loads(admin.signing_keys())

    kids = [entry["kid"] for entry in document["keys"]]
    assert jwt.get_unverified_header(issued.access_token)["kid"] == kids[0]
    assert {entry["alg"] for entry in document["keys"]} == {"EdDSA"}
    key_set = jwt.PyJWKSet.from_json(admin.signing_keys())
    claims = jwt.decode(
        issued.access_token, key_set[kids[0]].key, algorithms=["EdDSA"], audience="token-authority"
    )
    assert claims["parent"] == key.token.token_id


def test_refused_exchanges_raise_the_client_errors_with_their_reasons(
    admin: TokenAuthorityClient, key: IssuedToken
) -> None:
    with pytest.raises(Unauthenticated) as malformed:
        admin.exchange_key("not-a-key")
    with pytest.raises(PermissionDenied) as wider:
        admin.exchange_key(key.secret, scopes=["upload"])
    with pytest.raises(InvalidArgument) as negative:
        admin.exchange_key(key.secret, ttl=timedelta(seconds=-1))
    with pytest.raises(Unauthenticated) as not_ours:
        admin.refresh_token("a.b.c")
    with pytest.raises(TypeError, match="not a str"):
        admin.exchange_key(key.secret, scopes="download")

    assert malformed.value.reason == "TOKEN_MALFORMED"
    assert wider.value.reason == "SCOPE_EXCEEDS_ISSUER"
    assert negative.value.fields == ("ttl",)
    assert not_ours.value.reason == "TOKEN_MALFORMED"


def test_a_key_refused_again_and_again_is_limited_with_the_delay_to_wait(
    admin: TokenAuthorityClient, key: IssuedToken
) -> None:
    admin.revoke_token(key.token.token_id)
    refusals: list[str] = []

    with pytest.raises(ResourceExhausted) as limited:
        for _ in range(20):
            try:
                admin.exchange_key(key.secret)
            except Unauthenticated as refused:
                refusals.append(refused.reason)

    assert refusals and set(refusals) == {"TOKEN_REVOKED"}
    assert limited.value.retry_delay == timedelta(seconds=5)
    assert key.secret not in str(limited.value)


def test_the_async_client_exchanges_refreshes_and_fetches_the_keys(
    server: ServerHandle, key: IssuedToken, clock: ManualClock
) -> None:
    async def scenario() -> tuple[AccessToken, AccessToken, str, str]:
        async with AsyncTokenAuthorityClient(server.address) as client:
            issued = await client.exchange_key(key.secret, scopes=["download"])
            clock.advance(MAX_TTL)
            renewed = await client.refresh_token(issued.access_token)
            jwks = await client.signing_keys()
            try:
                await client.exchange_key("tka_garbage")
            except Unauthenticated as refused:
                return issued, renewed, jwks, refused.reason
            raise AssertionError("a garbage key was exchanged")

    issued, renewed, jwks, reason = asyncio.run(scenario())

    assert renewed.token_id != issued.token_id
    assert renewed.expires_at == issued.expires_at + timedelta(seconds=MAX_TTL)
    kid = jwt.get_unverified_header(renewed.access_token)["kid"]
    assert kid in {entry["kid"] for entry in json.loads(jwks)["keys"]}
    assert reason == "TOKEN_MALFORMED"


# -- KeyExchangeCredentials -------------------------------------------------------------------


def test_a_job_calls_a_service_across_several_expiries_without_noticing(
    key: IssuedToken,
    clock: ManualClock,
    storage: Storage,
    counted: tuple[grpc.Channel, Counting],
) -> None:
    channel, counting = counted
    credentials = KeyExchangeCredentials(channel=channel, key=key.secret, clock=wall(clock))
    job = storage_channel(storage, credentials.call_credentials())

    # Four lifetimes of 15 minutes, a call every 5 minutes: the token expires under the job.
    answers = []
    for _ in range(13):
        answers.append(ping(job))
        clock.advance(5 * 60)
    job.close()

    assert answers == ["stored"] * 13
    assert counting.calls["ExchangeKey"] == 1
    assert counting.calls["RefreshToken"] == 4
    assert len(set(storage.accepted)) == 5  # one access token per lifetime
    assert key.token.token_id not in storage.accepted
    assert all(value.startswith("Bearer ey") for value in storage.received)
    assert not any(key.secret in value for value in storage.received)


def test_a_token_near_its_expiry_is_refreshed_before_it_expires(
    key: IssuedToken, clock: ManualClock, counted: tuple[grpc.Channel, Counting]
) -> None:
    channel, counting = counted
    credentials = KeyExchangeCredentials(
        channel=channel, key=key.secret, ttl=timedelta(minutes=5), clock=wall(clock)
    )
    first = credentials.access_token()

    clock.advance(5 * 60 - 61)  # the margin is a minute (a third of 5 minutes is more)
    assert credentials.access_token() == first
    clock.advance(2)
    second = credentials.access_token()

    assert second.token_id != first.token_id
    assert second.expires_at == clock() + timedelta(minutes=5)
    assert counting.calls == Counter({"ExchangeKey": 1, "RefreshToken": 1})


def test_past_its_refresh_window_the_key_is_exchanged_again_without_a_refresh(
    key: IssuedToken, clock: ManualClock, counted: tuple[grpc.Channel, Counting]
) -> None:
    channel, counting = counted
    credentials = KeyExchangeCredentials(channel=channel, key=key.secret, clock=wall(clock))
    first = credentials.access_token()

    clock.advance(WINDOW + 1)
    second = credentials.access_token()

    assert second.token_id != first.token_id
    assert second.refresh_until == clock() + timedelta(seconds=WINDOW)
    assert counting.calls == Counter({"ExchangeKey": 2})


def test_a_refresh_the_server_refuses_is_answered_by_a_new_exchange(
    key: IssuedToken,
    admin: TokenAuthorityClient,
    clock: ManualClock,
    counted: tuple[grpc.Channel, Counting],
) -> None:
    # The job's clock is two minutes behind the server's: it still thinks it may refresh
    # when the server's window has closed.
    channel, counting = counted
    behind = wall(clock)
    credentials = KeyExchangeCredentials(
        channel=channel, key=key.secret, clock=lambda: behind() - 120
    )
    first = credentials.access_token()

    clock.advance(WINDOW + 60)
    second = credentials.token()

    assert counting.calls == Counter({"ExchangeKey": 2, "RefreshToken": 1})
    assert admin.validate(second, "download").valid
    assert admin.validate(first.access_token).reason is Reason.EXPIRED


def test_concurrent_callers_wait_for_one_exchange_and_one_refresh(
    key: IssuedToken, clock: ManualClock, counted: tuple[grpc.Channel, Counting]
) -> None:
    channel, counting = counted
    credentials = KeyExchangeCredentials(channel=channel, key=key.secret, clock=wall(clock))

    def together() -> set[str]:
        start = threading.Barrier(8)

        def call() -> str:
            start.wait()
            return credentials.token()

        with futures.ThreadPoolExecutor(max_workers=8) as pool:
            return set(pool.map(lambda _: call(), range(8)))

    first = together()
    clock.advance(MAX_TTL)  # expired: nobody may go on with the old token
    second = together()

    assert len(first) == len(second) == 1 and first != second
    assert counting.calls == Counter({"ExchangeKey": 1, "RefreshToken": 1})


def test_during_an_outage_the_live_token_is_used_until_it_expires(
    own_database: str, key: IssuedToken
) -> None:
    with serve(own_database) as replica:
        credentials = KeyExchangeCredentials(
            replica.address, key.secret, timeout=2.0, clock=wall(replica.clock)
        )
        first = credentials.token()
    # The replica is gone: the refresh due within the margin fails, the token still works.
    replica.clock.advance(MAX_TTL - 30)
    assert credentials.token() == first
    replica.clock.advance(30)
    with pytest.raises(Unavailable):
        credentials.token()
    credentials.close()


def test_a_revoked_key_surfaces_as_unauthenticated_and_the_key_is_never_shown(
    server: ServerHandle,
    key: IssuedToken,
    admin: TokenAuthorityClient,
    clock: ManualClock,
    storage: Storage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    credentials = KeyExchangeCredentials(server.address, key.secret, clock=wall(clock))
    job = storage_channel(storage, credentials.call_credentials())
    assert ping(job) == "stored"

    admin.revoke_token(key.token.token_id)
    clock.advance(MAX_TTL)
    with pytest.raises(Unauthenticated) as revoked:
        credentials.token()
    with pytest.raises(grpc.RpcError) as failed_call:
        ping(job)
    job.close()
    credentials.close()

    assert revoked.value.reason == "TOKEN_REVOKED"
    details = failed_call.value.details() or ""
    assert "revoked" in details
    assert len(storage.received) == 1  # the failed call never left the job
    shown = [str(revoked.value), repr(revoked.value), details, repr(credentials), caplog.text]
    assert not any(key.secret in text for text in shown)
    assert repr(credentials) == f"KeyExchangeCredentials(target={server.address!r})"


def test_credentials_need_a_key_and_one_way_to_the_authority(server: ServerHandle) -> None:
    with pytest.raises(TypeError, match="API key is required"):
        KeyExchangeCredentials(server.address)
    with pytest.raises(TypeError, match="one of the two"):
        KeyExchangeCredentials(server.address, "tka_x", channel=server.channel)
    with pytest.raises(TypeError, match="not a str"):
        KeyExchangeCredentials(server.address, "tka_x", scopes="download")


def test_async_credentials_share_one_exchange_and_carry_a_job_on_a_grpc_aio_channel(
    key: IssuedToken, clock: ManualClock, storage: Storage, server: ServerHandle
) -> None:
    async def scenario() -> tuple[set[str], list[str], Counter[str]]:
        calls: Counter[str] = Counter()

        class AsyncCounting(grpc.aio.UnaryUnaryClientInterceptor):
            async def intercept_unary_unary(
                self, continuation: Callable[..., Any], client_call_details: Any, request: Any
            ) -> Any:
                method = client_call_details.method  # bytes on grpc.aio
                calls[method.decode().rsplit("/", 1)[-1]] += 1
                return await continuation(client_call_details, request)

        channel = grpc.aio.insecure_channel(server.address, interceptors=[AsyncCounting()])
        async with AsyncKeyExchangeCredentials(
            channel=channel, key=key.secret, clock=wall(clock)
        ) as credentials:
            together = set(await asyncio.gather(*(credentials.token() for _ in range(8))))
            job = grpc.aio.secure_channel(
                storage.address,
                grpc.composite_channel_credentials(
                    grpc.local_channel_credentials(), credentials.call_credentials()
                ),
            )
            stub = token_authority_pb2_grpc.TokenAuthorityStub(job)
            answers = []
            for _ in range(7):
                answers.append((await stub.Ping(pb.PingRequest(), timeout=10)).payload)
                clock.advance(5 * 60)
            await job.close()
        await channel.close()
        return together, answers, calls

    together, answers, calls = asyncio.run(scenario())

    assert len(together) == 1
    assert answers == ["stored"] * 7
    assert calls == Counter({"ExchangeKey": 1, "RefreshToken": 2})
    assert len(set(storage.accepted)) == 3


def test_closed_credentials_refuse_to_hand_out_tokens(
    server: ServerHandle, key: IssuedToken
) -> None:
    with KeyExchangeCredentials(server.address, key.secret) as credentials:
        assert credentials.token()
    with pytest.raises(RuntimeError, match="closed"):
        credentials.token()
