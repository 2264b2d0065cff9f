"""The hot handlers of the thin path over a real Validator and a fake store: cached answers
without a coroutine, the stream's order and its bound on reads in flight, store failures as
statuses, and one log line per call that never holds the token."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any, cast

import pytest

from authority.api import convert
from authority.api.runtime import Runtime
from authority.api.thin import Code, ThinGrpc, build_app, path_of
from authority.api.thin._hot import HotMethods
from authority.domain.errors import Unavailable
from authority.domain.token_format import new_token
from authority.v1 import token_authority_pb2 as pb
from tests.thin_asgi import (
    FakeClient,
    chunk,
    drive,
    error_info,
    framed,
    grpc_scope,
    request,
)
from tests.unit.test_validator_cache import Setup, make

BATCH_MAX = 3


def runtime_of(setup: Setup) -> Runtime:
    """What the hot handlers use of a Runtime: the Validator and the batch limit."""
    return cast(Runtime, SimpleNamespace(validator=setup.validator, batch_max=BATCH_MAX))


def ask(token: str, permission: str = "download", request_id: str = "") -> bytes:
    return pb.ValidateRequest(
        token=token, permission=permission, request_id=request_id
    ).SerializeToString()


def answer(raw: bytes) -> pb.ValidateResponse:
    return pb.ValidateResponse.FromString(raw)


async def call(app: ThinGrpc, method: str, client: FakeClient) -> FakeClient:
    return await drive(app, grpc_scope(path_of(method)), client)


def test_a_cached_validate_is_answered_with_bytes_and_no_coroutine() -> None:
    async def scenario() -> None:
        setup = make()
        token = setup.store.issue(setup.clock)
        hot = HotMethods(runtime_of(setup))
        pending = hot.validate(ask(token.value, request_id="r1"))
        assert not isinstance(pending, bytes)
        first = await pending
        cached = hot.validate(ask(token.value, request_id="r1"))
        assert isinstance(cached, bytes)
        assert cached == first
        assert answer(cached).valid and answer(cached).request_id == "r1"
        assert setup.store.loads == [token.token_id]

    asyncio.run(scenario())


def test_validate_through_the_app_answers_the_rendered_verdict() -> None:
    async def scenario() -> None:
        setup = make()
        token = setup.store.issue(setup.clock)
        app = build_app(runtime_of(setup))
        client = await call(app, "Validate", FakeClient(request(ask(token.value, "upload"))))
        assert client.code == Code.OK
        assert answer(client.answers[0]).reason == pb.REASON_PERMISSION_DENIED
        verdict = setup.validator.validate_now(token.value, "upload")
        assert verdict is not None
        assert client.answers == [convert.rendered_verdict(verdict, "")]

    asyncio.run(scenario())


def test_a_stream_answers_cached_tokens_in_order_and_misses_when_read() -> None:
    async def scenario() -> None:
        setup = make()
        cached = setup.store.issue(setup.clock)
        cold = setup.store.issue(setup.clock)
        await setup.validator.validate(cached.value, "download")
        app = build_app(runtime_of(setup))
        setup.store.hold()
        client = FakeClient(
            [
                chunk(framed(ask(cold.value, request_id="cold")), more=True),
                *(
                    chunk(framed(ask(cached.value, request_id=f"c{i}")), more=True)
                    for i in range(5)
                ),
            ]
        )
        running = asyncio.create_task(call(app, "ValidateStream", client))
        await setup.store.wait_until_a_read_started()
        for _ in range(20):
            await asyncio.sleep(0)
        # The cached answers went out while the cold read waits: it does not hold them up.
        assert [answer(raw).request_id for raw in client.answers] == [f"c{i}" for i in range(5)]
        setup.store.release()
        client.push(chunk(b""))
        await running
        assert [answer(raw).request_id for raw in client.answers][-1] == "cold"
        assert all(answer(raw).valid for raw in client.answers)
        assert client.code == Code.OK

    asyncio.run(scenario())


def test_a_stream_holds_at_most_stream_buffer_reads_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("authority.api.thin._hot.STREAM_BUFFER", 2)

    async def scenario() -> None:
        setup = make()
        app = build_app(runtime_of(setup))
        setup.store.hold()
        unknown = [new_token().value for _ in range(5)]
        client = FakeClient(
            request(*(ask(value, request_id=str(i)) for i, value in enumerate(unknown)))
        )
        running = asyncio.create_task(call(app, "ValidateStream", client))
        for _ in range(50):
            await asyncio.sleep(0)
        assert len(setup.store.loads) == 2  # the third waits for a slot
        setup.store.release()
        await running
        assert sorted(answer(raw).request_id for raw in client.answers) == ["0", "1", "2", "3", "4"]
        assert all(answer(raw).reason == pb.REASON_UNKNOWN for raw in client.answers)
        assert client.code == Code.OK

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("failure", "code", "reason"),
    [
        (Unavailable("the token store is unavailable"), 14, "STORE_UNAVAILABLE"),
        (RuntimeError("driver said: tka_ leaked"), Code.INTERNAL, None),
    ],
)
def test_a_store_failure_under_a_stream_read_ends_it_with_a_status(
    failure: Exception, code: int, reason: str | None
) -> None:
    async def scenario() -> FakeClient:
        setup = make()
        setup.store.failure = failure
        app = build_app(runtime_of(setup))
        return await call(app, "ValidateStream", FakeClient(request(ask(new_token().value))))

    client = asyncio.run(scenario())
    assert client.answers == []
    assert client.code == code
    # A fault carries ErrorInfo INTERNAL and its incident, as grpcio's api/errors answers.
    assert error_info(client.details).reason == (reason or "INTERNAL")
    assert "tka_" not in client.message


def test_a_stream_refuses_a_long_request_id_before_any_read() -> None:
    async def scenario() -> tuple[FakeClient, Setup]:
        setup = make()
        app = build_app(runtime_of(setup))
        client = FakeClient(request(ask(new_token().value, request_id="r" * 257)))
        return await call(app, "ValidateStream", client), setup

    client, setup = asyncio.run(scenario())
    assert client.code == Code.INVALID_ARGUMENT
    assert setup.store.loads == []


def test_a_batch_over_the_limit_is_refused_with_its_reason() -> None:
    async def scenario() -> FakeClient:
        setup = make()
        batch = pb.ValidateBatchRequest(
            requests=[pb.ValidateRequest(token=new_token().value)] * (BATCH_MAX + 1)
        )
        app = build_app(runtime_of(setup))
        return await call(app, "ValidateBatch", FakeClient(request(batch.SerializeToString())))

    client = asyncio.run(scenario())
    assert client.code == Code.INVALID_ARGUMENT
    assert error_info(client.details).reason == "BATCH_TOO_LARGE"


def test_a_batch_answers_in_order() -> None:
    async def scenario() -> FakeClient:
        setup = make()
        live = setup.store.issue(setup.clock)
        batch = pb.ValidateBatchRequest(
            requests=[
                pb.ValidateRequest(token=live.value, permission="download", request_id="a"),
                pb.ValidateRequest(token="junk", request_id="b"),
                pb.ValidateRequest(token=new_token().value, request_id="c"),
            ]
        )
        app = build_app(runtime_of(setup))
        return await call(app, "ValidateBatch", FakeClient(request(batch.SerializeToString())))

    client = asyncio.run(scenario())
    results = pb.ValidateBatchResponse.FromString(client.answers[0]).results
    assert [(r.request_id, r.valid) for r in results] == [("a", True), ("b", False), ("c", False)]
    assert [r.reason for r in results][1:] == [pb.REASON_MALFORMED, pb.REASON_UNKNOWN]


def test_bytes_that_are_not_a_request_are_internal_and_not_quoted() -> None:
    async def scenario() -> FakeClient:
        app = build_app(runtime_of(make()))
        return await call(app, "Validate", FakeClient([chunk(framed(b"\x0a\xff\xfftka_"))]))

    client = asyncio.run(scenario())
    assert client.code == Code.INTERNAL
    assert client.message == "the request message could not be parsed"


def test_each_call_logs_one_line_without_the_token(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[Any]:
        setup = make()
        token = setup.store.issue(setup.clock)
        app = build_app(runtime_of(setup))
        await call(app, "Validate", FakeClient(request(ask(token.value))))
        await call(app, "Validate", FakeClient(request(ask(token.value, request_id="x" * 300))))
        return [token.value]

    with caplog.at_level(logging.DEBUG, logger="authority.calls"):
        (secret,) = asyncio.run(scenario())
    lines = [r for r in caplog.records if r.name == "authority.calls"]
    assert [(r.levelno, r.rpc_status) for r in lines] == [  # type: ignore[attr-defined]
        (logging.DEBUG, "OK"),
        (logging.INFO, "INVALID_ARGUMENT"),
    ]
    assert {r.rpc_method for r in lines} == {"authority.v1.TokenAuthority.Validate"}  # type: ignore[attr-defined]
    assert lines[1].reason == "FIELD_INVALID"  # type: ignore[attr-defined]
    for record in lines:
        assert secret not in str(record.__dict__)
