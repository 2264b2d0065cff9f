"""The Validate cache through the real server (issue 4): answers, invalidation, bounds, stats.

Servers of their own run on the deployment's database, so the bootstrap administrator's token
works on every one of them; `cache_stats` snapshots are compared with `cache_activity`, which
takes off the snapshot's own bearer lookup. Clocks are moved by hand, never slept on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from authority.domain.token_format import new_token
from authority.v1 import admin_pb2, token_authority_pb2_grpc
from authority.v1 import token_authority_pb2 as pb
from tests.conftest import Deployment
from tests.harness import ServerHandle, serve
from tests.integration.helpers import (
    Metadata,
    cache_activity,
    cache_stats,
    counted,
    issue,
    make_org,
    make_user_with_token,
    refused,
    validate,
)

OK = (True, pb.REASON_UNSPECIFIED)
REVOKED = (False, pb.REASON_REVOKED)
EXPIRED = (False, pb.REASON_EXPIRED)
UNKNOWN = (False, pb.REASON_UNKNOWN)
MALFORMED = (False, pb.REASON_MALFORMED)


@pytest.fixture
def org(cached: ServerHandle, admin_token: str) -> str:
    return make_org(cached, admin_token)


@pytest.fixture
def clocks(cached: ServerHandle, uncached: ServerHandle) -> Iterator[None]:
    """Both servers' wall clocks at one moment, put back afterwards: the module shares them."""
    start = cached.clock()
    uncached.clock.set(start)
    yield
    cached.clock.set(start)
    uncached.clock.set(start)


def set_clocks(moment: datetime, *servers: ServerHandle) -> None:
    for server in servers:
        server.clock.set(moment)


def timestamp_of(moment: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(moment)
    return message


def outcome(answer: pb.ValidateResponse) -> tuple[bool, int]:
    return answer.valid, answer.reason


# -- hits and misses answer alike --------------------------------------------------------------


@dataclass
class Scene:
    """What a case needs to make the token it presents."""

    cached: ServerHandle
    uncached: ServerHandle
    auth: Metadata
    organization: str

    def issue(self, **fields: object) -> pb.IssueTokenResponse:
        return issue(self.cached, self.auth, self.organization, **fields)

    def revoke(self, token_id: str) -> None:
        self.cached.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=token_id), metadata=self.auth)


# A case makes (the request to present, the token_id the answer must name: "" when not found).
Case = Callable[[Scene], tuple[pb.ValidateRequest, str]]


def _request(token: str, permission: str = "") -> pb.ValidateRequest:
    return pb.ValidateRequest(token=token, permission=permission, request_id="req-7")


def _valid(scene: Scene) -> tuple[pb.ValidateRequest, str]:
    issued = scene.issue(scopes=["download-only"], ttl=Duration(seconds=3600))
    return _request(issued.secret, "download"), issued.token.token_id


def _alive(scene: Scene) -> tuple[pb.ValidateRequest, str]:
    issued = scene.issue(scopes=["environment.control.StopEnv"], properties={"k": "v"})
    return _request(issued.secret), issued.token.token_id


def _allowed_by_prefix(scene: Scene) -> tuple[pb.ValidateRequest, str]:
    issued = scene.issue(scopes=["environment.control.*", "upload-only"])
    return _request(issued.secret, "/environment.control/StopEnv"), issued.token.token_id


def _malformed(scene: Scene) -> tuple[pb.ValidateRequest, str]:
    issued = scene.issue()
    return _request(issued.secret[:-1], "download"), ""


def _unknown(scene: Scene) -> tuple[pb.ValidateRequest, str]:
    return _request(new_token().value, "download"), ""


def _wrong_secret(scene: Scene) -> tuple[pb.ValidateRequest, str]:
    issued = scene.issue()
    return _request(new_token(issued.token.token_id).value, "download"), ""


def _expired(scene: Scene) -> tuple[pb.ValidateRequest, str]:
    issued = scene.issue(ttl=Duration(seconds=60))
    moment = scene.cached.clock() + timedelta(seconds=60)
    set_clocks(moment, scene.cached, scene.uncached)
    return _request(issued.secret, "download"), issued.token.token_id


def _revoked(scene: Scene) -> tuple[pb.ValidateRequest, str]:
    issued = scene.issue()
    scene.revoke(issued.token.token_id)
    return _request(issued.secret, "download"), issued.token.token_id


def _permission_denied(scene: Scene) -> tuple[pb.ValidateRequest, str]:
    issued = scene.issue(scopes=["upload-only"])
    return _request(issued.secret, "download"), issued.token.token_id


def _invalid_permission(scene: Scene) -> tuple[pb.ValidateRequest, str]:
    issued = scene.issue(scopes=["*"])
    return _request(issued.secret, "not a permission"), issued.token.token_id


# What the cache counts for the first (miss) and the second (hit) Validate of a case.
FOUND = (counted(misses=1, store_reads=1), counted(hits=1))
ABSENT = (counted(misses=1, store_reads=1), counted(negative_hits=1))
NEVER_LOOKED_UP = (counted(), counted())


@pytest.mark.parametrize(
    ("case", "expected", "lookups"),
    [
        pytest.param(_valid, OK, FOUND, id="ok"),
        pytest.param(_alive, OK, FOUND, id="ok-alive-only"),
        pytest.param(_allowed_by_prefix, OK, FOUND, id="ok-by-prefix-scope"),
        pytest.param(_malformed, MALFORMED, NEVER_LOOKED_UP, id="malformed"),
        pytest.param(_unknown, UNKNOWN, ABSENT, id="unknown-id"),
        pytest.param(_wrong_secret, UNKNOWN, FOUND, id="unknown-secret-of-a-real-id"),
        pytest.param(_expired, EXPIRED, FOUND, id="expired"),
        pytest.param(_revoked, REVOKED, FOUND, id="revoked"),
        pytest.param(_permission_denied, (False, pb.REASON_PERMISSION_DENIED), FOUND, id="denied"),
        pytest.param(
            _invalid_permission, (False, pb.REASON_INVALID_PERMISSION), FOUND, id="invalid-perm"
        ),
    ],
)
@pytest.mark.usefixtures("clocks")
def test_a_cache_hit_answers_exactly_as_a_store_read_and_as_a_server_without_cache(
    cached: ServerHandle,
    uncached: ServerHandle,
    auth: Metadata,
    admin_token: str,
    org: str,
    case: Case,
    expected: tuple[bool, int],
    lookups: tuple[dict[str, int], dict[str, int]],
) -> None:
    request, token_id = case(Scene(cached, uncached, auth, org))

    before = cache_stats(cached, admin_token)
    from_store = cached.tokens.Validate(request)
    between = cache_stats(cached, admin_token)
    from_cache = cached.tokens.Validate(request)
    after = cache_stats(cached, admin_token)
    without_cache = [uncached.tokens.Validate(request) for _ in range(2)]

    assert outcome(from_store) == expected
    assert (from_store.token_id, from_store.request_id) == (token_id, "req-7")
    assert from_cache == from_store
    assert without_cache == [from_store, from_store]
    assert (cache_activity(before, between), cache_activity(between, after)) == lookups
    assert cache_stats(uncached, admin_token).hits == 0  # it really never answered from a cache


# -- changes made through this process -------------------------------------------------------


def test_revoke_through_the_server_is_refused_by_the_very_next_validate_of_a_cached_token(
    cached: ServerHandle, auth: Metadata, admin_token: str, org: str
) -> None:
    issued = issue(cached, auth, org, scopes=["download-only"])
    assert validate(cached, issued.secret, "download").valid  # read from the store, cached
    before = cache_stats(cached, admin_token)
    hit = validate(cached, issued.secret, "download")
    cached_then = cache_stats(cached, admin_token)

    cached.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=issued.token.token_id), metadata=auth)
    answer = validate(cached, issued.secret, "download")
    after = cache_stats(cached, admin_token)

    assert hit.valid and cache_activity(before, cached_then) == counted(hits=1)
    assert outcome(answer) == REVOKED and answer.token_id == issued.token.token_id
    # The revoke (its bearer a hit) dropped the entry, so the next Validate read the store.
    assert cache_activity(cached_then, after) == counted(
        hits=1, invalidations=1, misses=1, store_reads=1
    )


def test_removing_a_member_refuses_their_cached_token_at_once(
    cached: ServerHandle, auth: Metadata, admin_token: str, org: str
) -> None:
    user = make_user_with_token(cached, admin_token, org, scopes=["download-only"])
    assert validate(cached, user.credential.secret, "download").valid  # cached
    assert validate(cached, user.credential.secret, "download").valid  # a hit

    removed = cached.admin.RemoveMember(
        admin_pb2.RemoveMemberRequest(organization=org, principal=user.name), metadata=auth
    )
    answer = validate(cached, user.credential.secret, "download")

    assert list(removed.revoked_token_ids) == [user.credential.token_id]
    assert outcome(answer) == REVOKED


# -- expiry against the injected clock -------------------------------------------------------


@pytest.mark.usefixtures("clocks")
def test_a_token_is_valid_a_second_before_its_expiry_and_expired_at_it_cached_or_not(
    cached: ServerHandle, uncached: ServerHandle, auth: Metadata, admin_token: str, org: str
) -> None:
    expires = cached.clock() + timedelta(seconds=60)
    held = issue(cached, auth, org, expires_at=timestamp_of(expires))  # cached before expiry
    first_read_late = issue(cached, auth, org, expires_at=timestamp_of(expires))

    set_clocks(expires - timedelta(seconds=1), cached, uncached)
    just_before = [
        validate(cached, held.secret, "download"),
        validate(cached, held.secret, "download"),
        validate(uncached, held.secret, "download"),
        validate(uncached, first_read_late.secret, "download"),
    ]
    set_clocks(expires, cached, uncached)
    before = cache_stats(cached, admin_token)
    from_cache = validate(cached, held.secret, "download")
    from_store = validate(cached, first_read_late.secret, "download")
    after = cache_stats(cached, admin_token)
    without_cache = [
        validate(uncached, held.secret, "download"),
        validate(uncached, first_read_late.secret, "download"),
    ]

    assert [outcome(answer) for answer in just_before] == [OK] * 4
    assert [outcome(answer) for answer in (from_cache, from_store, *without_cache)] == [EXPIRED] * 4
    assert cache_activity(before, after) == counted(hits=1, misses=1, store_reads=1)
    assert from_cache.expires_at.ToDatetime(tzinfo=UTC) == expires
    assert without_cache == [from_cache, from_store]


# -- other replicas: the change feed, and the staleness bound when it is silent ----------------


def wait_for_outcome(
    server: ServerHandle, secret: str, expected: tuple[bool, int], seconds: float = 5.0
) -> float:
    """Validate until the answer is `expected`; how long it took (fails after `seconds`)."""
    started = time.monotonic()
    while outcome(validate(server, secret, "download")) != expected:
        assert time.monotonic() - started < seconds, f"still not {expected} after {seconds} s"
        time.sleep(0.005)
    return time.monotonic() - started


def test_a_revoke_on_another_replica_reaches_this_ones_cache_through_the_change_feed(
    deployment: Deployment, auth: Metadata, admin_token: str
) -> None:
    url = deployment.database_url
    with serve(url) as here, serve(url) as there:
        org = make_org(here, admin_token)
        issued = issue(here, auth, org, scopes=["download-only"])
        assert validate(here, issued.secret, "download").valid  # cached here

        there.tokens.RevokeToken(
            pb.RevokeTokenRequest(token_id=issued.token.token_id), metadata=auth
        )
        took = wait_for_outcome(here, issued.secret, REVOKED)

    # The feed polls every 50 ms (SQLite) or is woken by NOTIFY (PostgreSQL); no staleness
    # bound had to pass (the manual monotonic clock never moved).
    assert took < 1.0


def test_with_the_feed_off_a_revoke_elsewhere_is_seen_once_the_entry_is_past_max_staleness(
    deployment: Deployment, auth: Metadata, admin_token: str
) -> None:
    # The bound the feed improves on: a replica with no feed learns of a change made
    # elsewhere when its entry is re-read, at most cache_max_staleness_seconds after.
    url = deployment.database_url
    with (
        serve(url, cache_max_staleness_seconds=30.0, feed_poll_seconds=0) as here,
        serve(url) as there,
    ):
        org = make_org(here, admin_token)
        issued = issue(here, auth, org, scopes=["download-only"])
        assert validate(here, issued.secret, "download").valid  # cached here

        there.tokens.RevokeToken(
            pb.RevokeTokenRequest(token_id=issued.token.token_id), metadata=auth
        )
        at_the_revoking_replica = validate(there, issued.secret, "download")
        before = cache_stats(here, admin_token)
        right_after = validate(here, issued.secret, "download")
        here.monotonic.value += 29.9
        almost_stale = validate(here, issued.secret, "download")
        after = cache_stats(here, admin_token)
        here.monotonic.value += 0.2
        stale = validate(here, issued.secret, "download")

    assert outcome(at_the_revoking_replica) == REVOKED
    assert (outcome(right_after), outcome(almost_stale)) == (OK, OK)
    assert cache_activity(before, after) == counted(hits=2)  # both answered from the cache
    assert outcome(stale) == REVOKED


def test_entries_outlive_the_bound_while_the_feed_confirms_them_and_not_once_it_is_silent(
    deployment: Deployment, auth: Metadata, admin_token: str
) -> None:
    # In this process: the test stops the server's feed and watches its validator.
    with serve(deployment.database_url, cache_max_staleness_seconds=30.0, server="grpcio") as here:
        assert here.loop is not None
        org = make_org(here, admin_token)
        issued = issue(here, auth, org, scopes=["download-only"])
        assert validate(here, issued.secret, "download").valid  # cached here
        feed = here.running.application.feed

        here.monotonic.value += 100.0  # far past the bound, but the feed keeps confirming
        confirmed_at = here.running.application.validator.confirmed
        while here.running.application.validator.confirmed == confirmed_at:
            time.sleep(0.01)
        before = cache_stats(here, admin_token)
        confirmed = validate(here, issued.secret, "download")
        middle = cache_stats(here, admin_token)

        asyncio.run_coroutine_threadsafe(feed.stop(), here.loop).result(10)  # the feed falls silent
        here.monotonic.value += 30.1
        silent = validate(here, issued.secret, "download")
        after = cache_stats(here, admin_token)

    assert outcome(confirmed) == outcome(silent) == OK
    assert cache_activity(before, middle) == counted(hits=1)
    # Silent past the bound, nothing is answered from the cache: the token was re-read first,
    # and so was GetCacheStats' own bearer (which cache_activity otherwise counts as a hit).
    assert cache_activity(middle, after) == counted(hits=-1, misses=2, store_reads=2)


# -- bounds: the flood of unknown ids, coalesced misses, malformed values ----------------------


def test_a_flood_of_random_unknown_ids_evicts_no_live_entry(
    deployment: Deployment, auth: Metadata, admin_token: str
) -> None:
    with serve(deployment.database_url, cache_max_entries=50, negative_cache_entries=100) as server:
        org = make_org(server, admin_token)
        live = [issue(server, auth, org, scopes=["download-only"]) for _ in range(20)]
        for issued in live:
            assert validate(server, issued.secret, "download").valid  # cached
        before = cache_stats(server, admin_token)
        flood = [new_token().value for _ in range(5000)]
        answers: list[pb.ValidateResponse] = []
        for start in range(0, len(flood), 1000):
            requests = [pb.ValidateRequest(token=value) for value in flood[start : start + 1000]]
            answers += server.tokens.ValidateBatch(
                pb.ValidateBatchRequest(requests=requests)
            ).results
        # The newest unknown ids, asked again one by one, are answered by the negative cache.
        answers += [validate(server, value) for value in flood[-10:]]
        during = cache_stats(server, admin_token)
        again = [validate(server, issued.secret, "download") for issued in live]
        after = cache_stats(server, admin_token)

    assert [outcome(answer) for answer in answers] == [UNKNOWN] * 5010
    assert before.size == len(live) + 1  # the live tokens and the administrator's bearer
    assert (during.size, during.evictions) == (before.size, before.evictions)
    assert during.negative_size == 100
    assert cache_activity(before, during) == counted(
        misses=5000, store_reads=5000, negative_hits=10
    )
    assert [outcome(answer) for answer in again] == [OK] * len(live)
    assert cache_activity(during, after) == counted(hits=len(live))


def test_concurrent_validates_of_one_uncached_token_read_the_store_once(
    cached: ServerHandle, auth: Metadata, admin_token: str, org: str
) -> None:
    issued = issue(cached, auth, org, scopes=["download-only"])
    request = pb.ValidateRequest(token=issued.secret, permission="download")
    callers = 50

    async def validate_concurrently() -> list[pb.ValidateResponse]:
        async with grpc.aio.insecure_channel(cached.address) as channel:
            await channel.channel_ready()
            stub = token_authority_pb2_grpc.TokenAuthorityStub(channel)
            return list(await asyncio.gather(*(stub.Validate(request) for _ in range(callers))))

    before = cache_stats(cached, admin_token)
    answers = asyncio.run(validate_concurrently())
    activity = cache_activity(before, cache_stats(cached, admin_token))

    assert [outcome(answer) for answer in answers] == [OK] * callers
    assert activity["store_reads"] == 1, activity
    # A call that arrived while the read was under way joined it; one that came after was a hit.
    assert activity["coalesced"] + activity["hits"] == callers - 1, activity
    assert activity == counted(
        misses=1 + activity["coalesced"],
        coalesced=activity["coalesced"],
        hits=activity["hits"],
        store_reads=1,
    )


@pytest.mark.parametrize("known", [True, False], ids=["live-token", "unknown-id"])
def test_misses_for_one_id_in_one_batch_are_coalesced_into_one_store_read(
    cached: ServerHandle, auth: Metadata, admin_token: str, org: str, known: bool
) -> None:
    token = issue(cached, auth, org).secret if known else new_token().value
    copies = 50
    batch = pb.ValidateBatchRequest(requests=[pb.ValidateRequest(token=token)] * copies)

    before = cache_stats(cached, admin_token)
    answers = cached.tokens.ValidateBatch(batch).results
    between = cache_stats(cached, admin_token)
    next_answer = validate(cached, token)
    after = cache_stats(cached, admin_token)

    assert {outcome(answer) for answer in answers} == {OK if known else UNKNOWN}
    assert len(answers) == copies
    assert cache_activity(before, between) == counted(
        misses=copies, coalesced=copies - 1, store_reads=1
    )
    assert outcome(next_answer) == outcome(answers[0])
    assert cache_activity(between, after) == (
        counted(hits=1) if known else counted(negative_hits=1)
    )


def malformed_values(secret: str, count: int) -> list[str]:
    """`count` distinct mangled forms of a real token: every one must fail format or checksum."""
    values: dict[str, None] = {}
    for index in range(len(secret)):
        for replacement in "0Az9bQx7_-. é\x00":
            if replacement != secret[index]:
                values[secret[:index] + replacement + secret[index + 1 :]] = None
    for length in range(len(secret)):
        values[secret[:length]] = None
        values[secret[length:]] = None
    for extra in "0Az_ \n":
        values[secret + extra] = None
        values[extra + secret] = None
    values[secret.upper()] = values[secret.lower()] = values[secret * 2] = None
    values.pop(secret, None)
    assert len(values) >= count
    return list(values)[:count]


def test_malformed_tokens_never_reach_the_cache_or_the_store(
    cached: ServerHandle, auth: Metadata, admin_token: str, org: str
) -> None:
    issued = issue(cached, auth, org)
    assert validate(cached, issued.secret).valid  # its id is cached: a lookup would be a hit
    values = malformed_values(issued.secret, 1000)
    batch = pb.ValidateBatchRequest(requests=[pb.ValidateRequest(token=v) for v in values])

    before = cache_stats(cached, admin_token)
    one_by_one = [validate(cached, value, "download") for value in values]
    in_a_batch = list(cached.tokens.ValidateBatch(batch).results)
    after = cache_stats(cached, admin_token)

    assert [outcome(answer) for answer in one_by_one + in_a_batch] == [MALFORMED] * 2000
    assert not any(answer.token_id for answer in one_by_one + in_a_batch)
    assert cache_activity(before, after) == counted()


# -- GetCacheStats ---------------------------------------------------------------------------


def test_cache_stats_start_from_nothing_and_the_entry_bound_holds_on_the_server(
    deployment: Deployment, auth: Metadata, admin_token: str
) -> None:
    bound = 3
    with serve(deployment.database_url, cache_max_entries=bound) as server:
        # The only lookup so far is this call's own bearer, read from the store and now cached.
        start = cache_stats(server, admin_token)
        org = make_org(server, admin_token)
        issued = [issue(server, auth, org, scopes=["download-only"]) for _ in range(bound + 2)]
        sizes = []
        for token in issued:
            assert validate(server, token.secret, "download").valid
            sizes.append(cache_stats(server, admin_token).size)
        before = cache_stats(server, admin_token)
        newest = validate(server, issued[-1].secret, "download")
        oldest = validate(server, issued[0].secret, "download")
        after = cache_stats(server, admin_token)

    assert start == admin_pb2.CacheStats(misses=1, store_reads=1, size=1, max_entries=bound)
    assert sizes == [2, 3, 3, 3, 3]  # the bearer and the tokens, never more than the bound
    # Nothing was invalidated, so every entry read from the store is either held or evicted.
    assert (before.size, before.max_entries) == (bound, bound)
    assert before.evictions > 0
    assert before.size + before.evictions == before.store_reads
    # The least recently used went first: the newest token is a hit, the oldest a store read.
    assert newest.valid and oldest.valid
    assert cache_activity(before, after) == counted(hits=1, misses=1, store_reads=1, evictions=1)


@pytest.mark.parametrize("role", ["owner", "admin", "member"])
def test_cache_stats_are_refused_to_anyone_but_a_global_administrator(
    cached: ServerHandle, admin_token: str, org: str, role: str
) -> None:
    user = make_user_with_token(cached, admin_token, org, role=role, scopes=["*"])

    refused(
        grpc.StatusCode.PERMISSION_DENIED,
        cached.admin.GetCacheStats,
        admin_pb2.GetCacheStatsRequest(),
        user.metadata,
    )
