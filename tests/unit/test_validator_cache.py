"""The Validate cache: bounds, negative entries, coalesced misses and invalidation.

The store port is a plain async function (`FakeStore.load`) that counts its calls; clocks are
moved by hand, so nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest

from authority.cache.validator import CacheConfig, Validator
from authority.domain.exchange import AccessClaims, SignedClaims
from authority.domain.models import TokenRecord
from authority.domain.token_format import ParsedToken, SecretHasher, new_token
from authority.domain.validation import Reason, ValidationEntry
from tests.harness import ManualClock, ManualMonotonic

HASHER = SecretHasher(b"k" * 32)
T = TypeVar("T")


class FakeStore:
    """Token entries by id, and a loader that records every read.

    With a `gate`, a read takes its snapshot, says it has `started`, then waits for the gate:
    that is a store read in flight while the test changes things.
    """

    def __init__(self) -> None:
        self.entries: dict[str, ValidationEntry] = {}
        self.loads: list[str] = []
        self.failure: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.started: asyncio.Event | None = None

    def issue(self, clock: ManualClock, scopes: tuple[str, ...] = ("download",)) -> ParsedToken:
        token = new_token()
        self.put(token, clock, scopes=scopes)
        return token

    def put(
        self,
        token: ParsedToken,
        clock: ManualClock,
        scopes: tuple[str, ...] = ("download",),
        revoked: bool = False,
        ttl: timedelta | None = None,
    ) -> None:
        record = TokenRecord(
            token_id=token.token_id,
            secret_hash=HASHER.hash(token),
            organization="acme",
            subject=None,
            label="test",
            description="",
            scopes=scopes,
            created_at=clock(),
            expires_at=clock() + ttl if ttl else None,
            revoked_at=clock() if revoked else None,
            created_by="test",
        )
        self.entries[token.token_id] = ValidationEntry.from_record(record)

    def hold(self) -> None:
        """From now on reads wait for `release()`. Call inside the running loop."""
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()

    async def wait_until_a_read_started(self) -> None:
        """Returns once a new read is in flight; fails (rather than hangs) if none starts."""
        assert self.started is not None
        await asyncio.wait_for(self.started.wait(), timeout=5)
        self.started.clear()

    async def load(self, token_id: str) -> ValidationEntry | None:
        self.loads.append(token_id)
        entry, failure = self.entries.get(token_id), self.failure
        if self.gate is not None:
            assert self.started is not None
            self.started.set()
            await self.gate.wait()
        if failure is not None:
            raise failure
        return entry


@dataclasses.dataclass
class Setup:
    store: FakeStore
    validator: Validator
    clock: ManualClock
    monotonic: ManualMonotonic


def make(**config: Any) -> Setup:
    store, clock, monotonic = FakeStore(), ManualClock(), ManualMonotonic()
    settings = CacheConfig(**config)
    validator = Validator(store.load, HASHER, clock, settings, monotonic=monotonic)
    return Setup(store, validator, clock, monotonic)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await scenario()

    return asyncio.run(main())


def validate(setup: Setup, token: ParsedToken | str, permission: str = "download") -> Reason:
    value = token.value if isinstance(token, ParsedToken) else token
    return run(lambda: setup.validator.validate(value, permission)).reason


# -- hits and staleness -----------------------------------------------------------------------


def test_a_hit_does_not_read_the_store() -> None:
    setup = make()
    token = setup.store.issue(setup.clock)
    assert validate(setup, token) is Reason.OK
    assert validate(setup, token) is Reason.OK
    assert validate(setup, token, "upload") is Reason.PERMISSION_DENIED
    assert setup.store.loads == [token.token_id]
    stats = setup.validator.stats()
    assert (stats.hits, stats.misses, stats.store_reads, stats.size) == (2, 1, 1, 1)


def test_a_hit_and_a_miss_give_the_same_answer_for_every_reason() -> None:
    setup = make()
    live, revoked, expiring = new_token(), new_token(), new_token()
    setup.store.put(live, setup.clock)
    setup.store.put(revoked, setup.clock, revoked=True)
    setup.store.put(expiring, setup.clock, ttl=timedelta(seconds=10))
    setup.clock.advance(10)
    cases = [
        (live, "download", Reason.OK),
        (live, "", Reason.OK),
        (live, "upload", Reason.PERMISSION_DENIED),
        (live, "a..b", Reason.INVALID_PERMISSION),
        (revoked, "download", Reason.REVOKED),
        (expiring, "download", Reason.EXPIRED),
        (new_token(live.token_id), "download", Reason.UNKNOWN),
    ]
    misses = [validate(make_fresh_view(setup), token, permission) for token, permission, _ in cases]
    for token in (live, revoked, expiring):
        validate(setup, token, "")  # fills the cache
    reads = len(setup.store.loads)
    hits = [validate(setup, token, permission) for token, permission, _ in cases]
    assert len(setup.store.loads) == reads
    assert misses == hits == [reason for _, _, reason in cases]


def make_fresh_view(setup: Setup) -> Setup:
    """Another empty cache over the same store and clock: every first answer is a miss."""
    validator = Validator(
        setup.store.load, HASHER, setup.clock, CacheConfig(), monotonic=setup.monotonic
    )
    return Setup(setup.store, validator, setup.clock, setup.monotonic)


def test_a_cached_token_is_refused_at_its_expiry_second_without_a_store_read() -> None:
    setup = make()
    token = new_token()
    setup.store.put(token, setup.clock, ttl=timedelta(seconds=60))
    assert validate(setup, token) is Reason.OK
    setup.clock.advance(59.999999)
    assert validate(setup, token) is Reason.OK
    setup.clock.advance(0.000001)
    assert validate(setup, token) is Reason.EXPIRED
    assert len(setup.store.loads) == 1


def test_an_entry_is_re_read_after_max_staleness() -> None:
    setup = make(max_staleness=30.0)
    token = setup.store.issue(setup.clock)
    assert validate(setup, token) is Reason.OK
    setup.store.put(token, setup.clock, revoked=True)  # changed by another replica

    setup.monotonic.value += 29.999
    assert validate(setup, token) is Reason.OK  # still within the staleness bound
    assert len(setup.store.loads) == 1

    setup.monotonic.value += 0.001
    assert validate(setup, token) is Reason.REVOKED
    assert len(setup.store.loads) == 2


# -- the entry bound --------------------------------------------------------------------------


def test_the_least_recently_used_entry_is_evicted_beyond_max_entries() -> None:
    setup = make(max_entries=2)
    first, second, third = (setup.store.issue(setup.clock) for _ in range(3))
    validate(setup, first)
    validate(setup, second)
    validate(setup, first)  # a hit: `first` is now the most recently used
    validate(setup, third)  # evicts `second`
    stats = setup.validator.stats()
    assert (stats.size, stats.evictions, stats.max_entries) == (2, 1, 2)

    setup.store.loads.clear()
    assert validate(setup, first) is Reason.OK
    assert validate(setup, third) is Reason.OK
    assert setup.store.loads == []
    assert validate(setup, second) is Reason.OK
    assert setup.store.loads == [second.token_id]


def test_max_entries_zero_disables_the_cache() -> None:
    setup = make(max_entries=0)
    token = setup.store.issue(setup.clock)
    unknown = new_token()
    for _ in range(3):
        assert validate(setup, token) is Reason.OK
        assert validate(setup, unknown) is Reason.UNKNOWN
    assert setup.store.loads == [token.token_id, unknown.token_id] * 3
    stats = setup.validator.stats()
    assert (stats.hits, stats.size, stats.negative_size, stats.store_reads) == (0, 0, 0, 6)


# -- malformed and unknown tokens -------------------------------------------------------------


def test_malformed_tokens_never_reach_the_store() -> None:
    setup = make()
    value = setup.store.issue(setup.clock).value
    bad_checksum = value[:-1] + ("0" if value[-1] != "0" else "1")
    for malformed in ["", "garbage", value[:-1], value + "0", bad_checksum]:
        assert validate(setup, malformed) is Reason.MALFORMED
    assert setup.store.loads == []
    assert setup.validator.stats().misses == 0


def test_an_unknown_id_is_answered_from_the_negative_cache_until_negative_ttl() -> None:
    setup = make(negative_ttl=5.0)
    unknown = new_token()
    assert validate(setup, unknown) is Reason.UNKNOWN
    setup.monotonic.value += 4.999
    assert validate(setup, unknown) is Reason.UNKNOWN
    assert setup.store.loads == [unknown.token_id]
    assert setup.validator.stats().negative_hits == 1

    setup.store.put(unknown, setup.clock)  # created since, e.g. by another replica
    setup.monotonic.value += 0.001
    assert validate(setup, unknown) is Reason.OK
    assert setup.store.loads == [unknown.token_id] * 2


def test_invalidate_forgets_a_negative_entry_at_once() -> None:
    setup = make()
    token = new_token()
    assert validate(setup, token) is Reason.UNKNOWN
    setup.store.put(token, setup.clock)
    setup.validator.invalidate(token.token_id)
    assert validate(setup, token) is Reason.OK


def test_a_flood_of_unknown_ids_never_evicts_live_entries() -> None:
    setup = make(max_entries=2, negative_entries=100)
    live = [setup.store.issue(setup.clock) for _ in range(2)]
    for token in live:
        validate(setup, token)
    before = setup.validator.stats()

    async def flood() -> list[Reason]:
        return [
            (await setup.validator.validate(new_token().value, "download")).reason
            for _ in range(1000)
        ]

    assert set(run(flood)) == {Reason.UNKNOWN}
    after = setup.validator.stats()
    assert (after.size, after.evictions) == (before.size, before.evictions) == (2, 0)
    assert after.negative_size == 100

    setup.store.loads.clear()
    assert [validate(setup, token) for token in live] == [Reason.OK, Reason.OK]
    assert setup.store.loads == []


# -- coalescing -------------------------------------------------------------------------------


def test_concurrent_misses_for_one_id_make_one_store_read() -> None:
    setup = make()
    token = setup.store.issue(setup.clock)

    async def scenario() -> list[Reason]:
        setup.store.hold()
        tasks = [
            asyncio.create_task(setup.validator.validate(token.value, "download"))
            for _ in range(10)
        ]
        await setup.store.wait_until_a_read_started()
        assert setup.store.loads == [token.token_id]
        setup.store.release()
        return [verdict.reason for verdict in await asyncio.gather(*tasks)]

    assert run(scenario) == [Reason.OK] * 10
    stats = setup.validator.stats()
    assert (stats.store_reads, stats.coalesced, stats.size) == (1, 9, 1)


def test_a_failed_store_read_reaches_every_waiter_and_is_not_cached() -> None:
    setup = make()
    token = setup.store.issue(setup.clock)
    outage = ConnectionError("database is down")

    async def scenario() -> list[BaseException | object]:
        setup.store.failure = outage
        setup.store.hold()
        tasks = [
            asyncio.create_task(setup.validator.validate(token.value, "download")) for _ in range(5)
        ]
        await setup.store.wait_until_a_read_started()
        setup.store.release()
        return await asyncio.gather(*tasks, return_exceptions=True)

    assert run(scenario) == [outage] * 5
    assert len(setup.store.loads) == 1
    stats = setup.validator.stats()
    assert (stats.size, stats.negative_size) == (0, 0)

    setup.store.failure = None
    setup.store.gate = None
    assert validate(setup, token) is Reason.OK
    assert len(setup.store.loads) == 2


def test_waiters_still_get_an_answer_when_the_caller_that_started_the_read_is_cancelled() -> None:
    """A client that gives up (deadline, disconnect) must not cancel other clients' calls."""
    setup = make()
    token = setup.store.issue(setup.clock)

    async def scenario() -> list[BaseException | object]:
        setup.store.hold()
        first, *others = [
            asyncio.create_task(setup.validator.validate(token.value, "download")) for _ in range(4)
        ]
        await setup.store.wait_until_a_read_started()
        assert setup.validator.stats().coalesced == 3  # the others wait for the first's read
        first.cancel()
        setup.store.release()
        results = await asyncio.gather(*others, return_exceptions=True)
        return [getattr(result, "reason", result) for result in results]

    assert run(scenario) == [Reason.OK] * 3


# -- invalidation -----------------------------------------------------------------------------


def test_a_read_in_flight_during_invalidate_is_not_cached() -> None:
    setup = make()
    token = setup.store.issue(setup.clock)

    async def scenario() -> Reason:
        setup.store.hold()
        before = asyncio.create_task(setup.validator.validate(token.value, "download"))
        await setup.store.wait_until_a_read_started()  # the read saw the live token
        setup.store.put(token, setup.clock, revoked=True)
        setup.validator.invalidate(token.token_id)
        setup.store.release()
        return (await before).reason

    assert run(scenario) is Reason.OK  # it started before the revoke
    assert setup.validator.stats().size == 0
    setup.store.gate = None
    assert validate(setup, token) is Reason.REVOKED
    assert len(setup.store.loads) == 2


def test_a_validate_started_after_invalidate_makes_its_own_read() -> None:
    setup = make()
    token = setup.store.issue(setup.clock)

    async def scenario() -> tuple[Reason, Reason]:
        setup.store.hold()
        before = asyncio.create_task(setup.validator.validate(token.value, "download"))
        await setup.store.wait_until_a_read_started()
        setup.store.put(token, setup.clock, revoked=True)
        setup.validator.invalidate(token.token_id)
        after = asyncio.create_task(setup.validator.validate(token.value, "download"))
        await setup.store.wait_until_a_read_started()
        assert setup.store.loads == [token.token_id] * 2
        setup.store.release()
        return (await before).reason, (await after).reason

    assert run(scenario) == (Reason.OK, Reason.REVOKED)
    setup.store.gate = None
    setup.store.loads.clear()
    assert validate(setup, token) is Reason.REVOKED
    assert setup.store.loads == []  # the fresh read was cached, the stale one was not
    assert setup.validator.stats().invalidations == 1


def test_invalidate_makes_the_next_validate_re_read_a_cached_token() -> None:
    setup = make()
    token = setup.store.issue(setup.clock)
    assert validate(setup, token) is Reason.OK
    setup.store.put(token, setup.clock, revoked=True)
    setup.validator.invalidate(token.token_id)
    assert validate(setup, token) is Reason.REVOKED
    assert len(setup.store.loads) == 2


@pytest.mark.parametrize("max_entries", [1, 3, 100])
def test_the_entry_bound_holds_and_every_entry_beyond_it_is_counted_as_evicted(
    max_entries: int,
) -> None:
    setup = make(max_entries=max_entries)
    tokens = [setup.store.issue(setup.clock) for _ in range(max_entries + 5)]
    for count, token in enumerate(tokens, start=1):
        assert validate(setup, token) is Reason.OK
        stats = setup.validator.stats()
        assert (stats.size, stats.evictions) == (
            min(count, max_entries),
            max(0, count - max_entries),
        ), count
    assert stats.max_entries == max_entries

    # The newest `max_entries` tokens are the ones held; the first one was evicted.
    setup.store.loads.clear()
    for token in tokens[-max_entries:]:
        assert validate(setup, token) is Reason.OK
    assert setup.store.loads == []
    assert validate(setup, tokens[0]) is Reason.OK
    assert setup.store.loads == [tokens[0].token_id]
    assert setup.validator.stats().size == max_entries


def test_validate_now_answers_hits_and_known_absent_ids_and_defers_the_rest() -> None:
    setup = make()
    token, unknown = setup.store.issue(setup.clock), new_token()
    assert setup.validator.validate_now("garbage", "download") is not None
    assert setup.validator.validate_now(token.value, "download") is None  # a miss: no read here
    assert setup.store.loads == []

    validate(setup, token)
    validate(setup, unknown)
    hit = setup.validator.validate_now(token.value, "upload")
    absent = setup.validator.validate_now(unknown.value, "download")
    assert hit is not None and hit.reason is Reason.PERMISSION_DENIED
    assert absent is not None and absent.reason is Reason.UNKNOWN
    assert len(setup.store.loads) == 2


# -- signed access tokens ---------------------------------------------------------------------


KID = "kid-1"


class FakeSigned:
    """A signed-token reader: claims by whole value (all signed by KID), counting every
    verification; the keys published, as a set the test changes."""

    def __init__(self) -> None:
        self.claims: dict[str, AccessClaims] = {}
        self.reads: list[str] = []
        self.published = {KID}
        self.ring = object()  # replaced by `rotate`, as a reload replaces the key ring

    def rotate(self) -> None:
        self.ring = object()

    def key_set(self) -> object:
        return self.ring

    def read(self, value: str, now: datetime) -> SignedClaims | Reason:
        self.reads.append(value)
        claims = self.claims.get(value)
        if claims is None or KID not in self.published:
            return Reason.UNKNOWN
        return SignedClaims(KID, claims)

    def publishes(self, kid: str, now_ts: float) -> bool:
        return kid in self.published


def signed_setup(**config: Any) -> tuple[Setup, FakeSigned, ParsedToken, str]:
    store, clock, monotonic, reader = FakeStore(), ManualClock(), ManualMonotonic(), FakeSigned()
    validator = Validator(
        store.load, HASHER, clock, CacheConfig(**config), monotonic=monotonic, read_signed=reader
    )
    parent = store.issue(clock, scopes=("download", "upload"))
    stamp = int(clock().timestamp())
    value = "aaaa.bbbb.cccc"
    reader.claims[value] = AccessClaims(
        "iss", f"key:{parent.token_id}", "iss", stamp, stamp + 60, "J" * 16,
        parent.token_id, ("download",), "acme", parent.token_id, stamp + 3600,
    )  # fmt: skip
    return Setup(store, validator, clock, monotonic), reader, parent, value


def test_an_access_token_is_verified_once_then_answered_from_the_cache() -> None:
    setup, reader, parent, value = signed_setup()

    reasons = [validate(setup, value, permission) for permission in ("download", "upload", "")]

    assert reasons == [Reason.OK, Reason.PERMISSION_DENIED, Reason.OK]
    assert reader.reads == [value]
    assert setup.store.loads == [parent.token_id]  # its key, read once


def test_an_access_token_dies_with_its_key_as_soon_as_the_key_is_invalidated() -> None:
    setup, _, parent, value = signed_setup()
    assert validate(setup, value) is Reason.OK

    setup.store.put(parent, setup.clock, scopes=("download", "upload"), revoked=True)
    setup.validator.invalidate(parent.token_id)

    assert validate(setup, value) is Reason.REVOKED


def test_an_access_token_expires_and_its_keys_absence_makes_it_unknown() -> None:
    setup, _, parent, value = signed_setup()
    setup.clock.advance(60)
    assert validate(setup, value) is Reason.EXPIRED

    del setup.store.entries[parent.token_id]
    setup.validator.invalidate(parent.token_id)
    assert validate(setup, value) is Reason.UNKNOWN


def test_refused_values_are_remembered_only_for_the_negative_ttl() -> None:
    setup, reader, _, value = signed_setup(negative_ttl=5.0)
    forged = "aaaa.bbbb.dddd"  # same shape, not verified: nothing is keyed by jti

    assert validate(setup, forged) is Reason.UNKNOWN
    assert validate(setup, forged) is Reason.UNKNOWN
    assert reader.reads.count(forged) == 1
    setup.monotonic.value += 5  # e.g. another process's new key has reached this one since
    reader.claims[forged] = reader.claims[value]
    assert validate(setup, forged) is Reason.OK


def test_a_refusal_does_not_outlive_the_key_set_it_was_judged_against() -> None:
    """A token signed by another process with a key this one has not loaded yet is refused
    here; once the rotation reaches this process it verifies, without waiting out the
    negative TTL."""
    setup, reader, _, value = signed_setup(negative_ttl=5.0)
    newer = "aaaa.bbbb.eeee"

    assert validate(setup, newer) is Reason.UNKNOWN  # its key id: not published here yet
    reader.claims[newer] = reader.claims[value]
    assert validate(setup, newer) is Reason.UNKNOWN  # the refusal holds for the same key set
    reader.rotate()

    assert validate(setup, newer) is Reason.OK
    assert reader.reads.count(newer) == 2


def test_values_that_are_neither_keys_nor_jwts_are_malformed_unread() -> None:
    setup, reader, _, _ = signed_setup()

    for value in ("", "tka_x", "a.b", "a.b.c.d", "a.b.c!", "a." + "b" * 5000 + ".c"):
        assert validate(setup, value) is Reason.MALFORMED
    assert reader.reads == []


def more_access_tokens(reader: FakeSigned, count: int) -> list[str]:
    """`count` further verified access tokens of `parent` (each refresh mints a new one)."""
    template = next(iter(reader.claims.values()))
    values = []
    for index in range(count):
        value = f"aaaa.bbbb.{index:04d}"
        reader.claims[value] = dataclasses.replace(template, token_id=f"{index:016d}")
        values.append(value)
    return values


def test_access_tokens_have_their_own_bound_and_a_flood_of_them_evicts_no_key() -> None:
    setup, reader, _, first = signed_setup(max_entries=2, access_token_entries=3)
    other = setup.store.issue(setup.clock)
    assert validate(setup, other) is Reason.OK  # the two keys fill the key bound
    assert validate(setup, first) is Reason.OK
    flood = more_access_tokens(reader, 100)
    setup.store.loads.clear()

    assert {validate(setup, value) for value in flood} == {Reason.OK}

    stats = setup.validator.stats()
    assert (stats.size, stats.evictions) == (2, 0)  # no key entry went
    assert validate(setup, other) is Reason.OK
    assert setup.store.loads == []  # neither key was read again
    reads = len(reader.reads)
    assert [validate(setup, value) for value in flood[-3:]] == [Reason.OK] * 3
    assert len(reader.reads) == reads  # the newest three are held
    assert validate(setup, first) is Reason.OK
    assert reader.reads[reads:] == [first]  # the oldest is verified again


def test_access_token_entries_zero_verifies_every_time_and_keeps_the_key_cached() -> None:
    setup, reader, parent, value = signed_setup(access_token_entries=0)
    assert validate(setup, value) is Reason.OK  # reads the key
    reader.reads.clear()

    assert [validate(setup, value) for _ in range(3)] == [Reason.OK] * 3

    assert reader.reads == [value] * 3
    assert setup.store.loads == [parent.token_id]


def test_a_token_this_process_signed_is_answered_without_a_signature_check() -> None:
    setup, reader, _, _ = signed_setup()
    value = more_access_tokens(reader, 1)[0]

    setup.validator.signed(value, SignedClaims(KID, reader.claims[value]))

    assert validate(setup, value) is Reason.OK
    assert setup.validator.access_claims(value, setup.clock()) == reader.claims[value]
    assert reader.reads == []


def test_refresh_reads_an_access_tokens_claims_once_like_validate() -> None:
    setup, reader, _, value = signed_setup()
    claims = reader.claims[value]

    answers = [setup.validator.access_claims(value, setup.clock()) for _ in range(3)]

    assert answers == [claims] * 3
    assert validate(setup, value) is Reason.OK
    assert reader.reads == [value]
    assert setup.validator.access_claims("aaaa.bbbb.dddd", setup.clock()) is Reason.UNKNOWN
    assert setup.validator.access_claims("a.b", setup.clock()) is Reason.MALFORMED


def test_a_held_token_whose_key_is_no_longer_published_is_unknown() -> None:
    setup, reader, _, value = signed_setup()
    minted = more_access_tokens(reader, 1)[0]
    setup.validator.signed(minted, SignedClaims(KID, reader.claims[minted]))
    assert validate(setup, value) is Reason.OK
    assert validate(setup, minted) is Reason.OK

    reader.published.clear()  # the key that signed both has left the published set

    assert validate(setup, value) is Reason.UNKNOWN
    assert setup.validator.access_claims(minted, setup.clock()) is Reason.UNKNOWN
    # Dropped, not merely refused: presented again, each is checked again (and refused).
    reader.reads.clear()
    assert validate(setup, value) is Reason.UNKNOWN
    assert validate(setup, minted) is Reason.UNKNOWN
    assert reader.reads == [value, minted]


def test_tokens_handed_over_as_signed_keep_to_the_access_token_bound() -> None:
    setup, reader, _, _ = signed_setup(access_token_entries=2)
    minted = more_access_tokens(reader, 3)
    for value in minted:
        setup.validator.signed(value, SignedClaims(KID, reader.claims[value]))

    assert [validate(setup, value) for value in minted[1:]] == [Reason.OK] * 2
    assert reader.reads == []
    assert validate(setup, minted[0]) is Reason.OK
    assert reader.reads == [minted[0]]  # the oldest was evicted


def test_with_access_token_entries_zero_nothing_signed_is_held() -> None:
    setup, reader, _, first = signed_setup(access_token_entries=0)
    assert validate(setup, first) is Reason.OK  # the key is cached from here on
    value = more_access_tokens(reader, 1)[0]
    reader.reads.clear()

    setup.validator.signed(value, SignedClaims(KID, reader.claims[value]))

    assert validate(setup, value) is Reason.OK
    assert reader.reads == [value]
