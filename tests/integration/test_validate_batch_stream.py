"""ValidateBatch and ValidateStream through the real server (issue 4).

Batches answer in order and within a configured limit; streams answer every request once,
matched by request_id, and refuse a token from the moment its revoke returned.
"""

from __future__ import annotations

import queue
from collections import Counter
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from authority.domain.token_format import new_token
from authority.v1 import token_authority_pb2 as pb
from authority.v1 import token_authority_pb2_grpc
from tests.conftest import Deployment
from tests.harness import ServerHandle, serve
from tests.integration.helpers import (
    Metadata,
    cache_activity,
    cache_stats,
    counted,
    invalid_argument,
    issue,
    make_org,
    validate,
)

BATCH_MAX = 8
OK = (True, pb.REASON_UNSPECIFIED)
REVOKED = (False, pb.REASON_REVOKED)


@pytest.fixture(scope="module")
def small_batches(deployment: Deployment) -> Iterator[ServerHandle]:
    with serve(deployment.database_url, validate_batch_max=BATCH_MAX) as server:
        yield server


@pytest.fixture
def org(cached: ServerHandle, admin_token: str) -> str:
    return make_org(cached, admin_token)


def outcome(answer: pb.ValidateResponse) -> tuple[bool, int]:
    return answer.valid, answer.reason


# -- ValidateBatch ---------------------------------------------------------------------------


def test_batch_of_mixed_tokens_answers_each_in_order_as_validate_would(
    cached: ServerHandle, uncached: ServerHandle, auth: Metadata, org: str
) -> None:
    held = issue(cached, auth, org, scopes=["download-only"], ttl=Duration(seconds=600))
    assert validate(cached, held.secret).valid  # cached before the batch
    fresh = issue(cached, auth, org, scopes=["upload-only"])  # read from the store by the batch
    revoked = issue(cached, auth, org)
    assert validate(cached, revoked.secret).valid  # cached, then revoked
    cached.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=revoked.token.token_id), metadata=auth)
    unknown = new_token().value
    items = [
        ("valid-cached", held.secret, "download", OK),
        ("valid-read", fresh.secret, "upload", OK),
        ("malformed", held.secret[:-1], "download", (False, pb.REASON_MALFORMED)),
        ("unknown", unknown, "download", (False, pb.REASON_UNKNOWN)),
        ("revoked", revoked.secret, "download", REVOKED),
        ("denied-cached", held.secret, "upload", (False, pb.REASON_PERMISSION_DENIED)),
        ("denied-read", fresh.secret, "download", (False, pb.REASON_PERMISSION_DENIED)),
        ("invalid", held.secret, "not a permission", (False, pb.REASON_INVALID_PERMISSION)),
        ("unknown-again", unknown, "", (False, pb.REASON_UNKNOWN)),
        ("", held.secret, "", OK),  # no request_id: none echoed
    ]
    requests = [
        pb.ValidateRequest(token=token, permission=permission, request_id=request_id)
        for request_id, token, permission, _ in items
    ]

    answers = list(cached.tokens.ValidateBatch(pb.ValidateBatchRequest(requests=requests)).results)
    without_cache = list(
        uncached.tokens.ValidateBatch(pb.ValidateBatchRequest(requests=requests)).results
    )
    one_by_one = [cached.tokens.Validate(request) for request in requests]

    assert [(a.request_id, *outcome(a)) for a in answers] == [
        (request_id, *expected) for request_id, _, _, expected in items
    ]
    assert answers[0].token_id == held.token.token_id
    assert answers[1].token_id == fresh.token.token_id
    assert answers == one_by_one
    assert answers == without_cache


def test_batch_of_exactly_the_limit_is_answered(small_batches: ServerHandle) -> None:
    requests = [
        pb.ValidateRequest(token=new_token().value, request_id=str(index))
        for index in range(BATCH_MAX)
    ]

    answers = small_batches.tokens.ValidateBatch(pb.ValidateBatchRequest(requests=requests))

    assert [answer.request_id for answer in answers.results] == [str(i) for i in range(BATCH_MAX)]
    assert {outcome(answer) for answer in answers.results} == {(False, pb.REASON_UNKNOWN)}


def test_batch_one_over_the_limit_is_invalid_and_validates_nothing(
    small_batches: ServerHandle, admin_token: str
) -> None:
    requests = [pb.ValidateRequest(token=new_token().value) for _ in range(BATCH_MAX + 1)]

    before = cache_stats(small_batches, admin_token)
    error = invalid_argument(
        "requests", small_batches.tokens.ValidateBatch, pb.ValidateBatchRequest(requests=requests)
    )
    after = cache_stats(small_batches, admin_token)

    assert str(BATCH_MAX) in (error.details() or "")  # tells the caller how far to split
    assert cache_activity(before, after) == counted()


def test_empty_batch_gets_an_empty_answer(small_batches: ServerHandle) -> None:
    answer = small_batches.tokens.ValidateBatch(pb.ValidateBatchRequest())

    assert answer == pb.ValidateBatchResponse()


# -- ValidateStream --------------------------------------------------------------------------


def _requests_from(outbox: queue.Queue[pb.ValidateRequest | None]) -> Iterator[pb.ValidateRequest]:
    """The request side of a stream, fed by the test one request at a time; None ends it."""
    while (request := outbox.get()) is not None:
        yield request


def test_stream_answers_every_request_once_and_refuses_a_token_once_its_revoke_returned(
    cached: ServerHandle, auth: Metadata, admin_token: str, org: str
) -> None:
    tokens = [issue(cached, auth, org, scopes=["download-only"]) for _ in range(10)]
    for issued in tokens:
        assert validate(cached, issued.secret).valid  # cached
    revoked: set[str] = set()
    wrong: list[tuple[str, str, tuple[bool, int], tuple[bool, int]]] = []
    outbox: queue.Queue[pb.ValidateRequest | None] = queue.Queue()
    other_channel = grpc.insecure_channel(cached.address)
    manager = token_authority_pb2_grpc.TokenAuthorityStub(other_channel)

    before = cache_stats(cached, admin_token)
    answers = cached.tokens.ValidateStream(_requests_from(outbox), timeout=60)
    try:
        for index in range(2000):
            if index % 200 == 100:  # ten revokes, on another channel, while the stream is open
                victim = tokens[index // 200].token.token_id
                manager.RevokeToken(pb.RevokeTokenRequest(token_id=victim), metadata=auth)
                revoked.add(victim)
            issued = tokens[index % len(tokens)]
            request_id = f"r{index}"
            outbox.put(
                pb.ValidateRequest(
                    token=issued.secret, permission="download", request_id=request_id
                )
            )
            answer = next(answers)
            expected = REVOKED if issued.token.token_id in revoked else OK
            if (answer.request_id, outcome(answer)) != (request_id, expected):
                wrong.append((request_id, answer.request_id, expected, outcome(answer)))
        outbox.put(None)
        extra = list(answers)
    finally:
        outbox.put(None)
        answers.cancel()
        other_channel.close()
    after = cache_stats(cached, admin_token)

    assert wrong == []
    assert extra == []
    assert len(revoked) == 10
    # Each revoke (its bearer a hit) dropped one entry; the next request for that token read
    # the store once and every other answer came from the cache.
    assert cache_activity(before, after) == counted(
        hits=2000, misses=10, store_reads=10, invalidations=10
    )


def test_pipelined_stream_answers_each_request_exactly_once_matched_by_request_id(
    cached: ServerHandle, auth: Metadata, org: str
) -> None:
    held = issue(cached, auth, org, scopes=["download-only"])
    assert validate(cached, held.secret).valid  # cached: answered at once
    fresh = issue(cached, auth, org, scopes=["download-only"])  # first asked mid-stream
    kinds: list[tuple[Callable[[], str], str, tuple[bool, int]]] = [
        (lambda: held.secret, "download", OK),
        (lambda: held.secret, "upload", (False, pb.REASON_PERMISSION_DENIED)),
        (lambda: fresh.secret, "download", OK),
        (lambda: new_token().value, "download", (False, pb.REASON_UNKNOWN)),  # a store read
        (lambda: held.secret[:-2], "download", (False, pb.REASON_MALFORMED)),
    ]
    requests: list[pb.ValidateRequest] = []
    expected: dict[str, tuple[bool, int]] = {}
    for index in range(2000):
        token, permission, verdict = kinds[index % len(kinds)]
        request_id = f"p{index}"
        requests.append(
            pb.ValidateRequest(token=token(), permission=permission, request_id=request_id)
        )
        expected[request_id] = verdict

    answers = list(cached.tokens.ValidateStream(iter(requests), timeout=60))

    assert Counter(answer.request_id for answer in answers) == Counter(expected.keys())
    assert {answer.request_id: outcome(answer) for answer in answers} == expected


def test_stream_of_no_requests_ends_with_no_answers(cached: ServerHandle) -> None:
    assert list(cached.tokens.ValidateStream(iter([]), timeout=10)) == []
