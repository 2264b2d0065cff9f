"""The change feed against a fake log: what it applies, skips, confirms and reports."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from authority.aio import wait_set
from authority.cache.feed import BATCH, ChangeFeed
from authority.cache.validator import CacheConfig, Validator
from authority.domain.errors import Unavailable
from authority.domain.events import (
    SYSTEM,
    Event,
    EventKind,
    RecordedEvent,
    token_event,
)
from authority.domain.models import TokenRecord
from authority.domain.token_format import SecretHasher, new_token
from authority.domain.validation import ValidationEntry
from tests.harness import PEPPER_HEX, ManualClock, ManualMonotonic

HASHER = SecretHasher(bytes.fromhex(PEPPER_HEX))
AT = datetime(2026, 11, 27, tzinfo=UTC)
STALENESS = 30.0


class FakeLog:
    """The store's change-log reads, over a list; `down` makes every read fail."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        self.down = False
        self.reads = 0
        # Reads after this many fail (None: never).
        self.fail_after: int | None = None

    def append(self, event: Event) -> RecordedEvent:
        recorded = RecordedEvent(len(self.events) + 1, event)
        self.events.append(recorded)
        return recorded

    def events_after(self, sequence: int, limit: int) -> list[RecordedEvent]:
        self.reads += 1
        if self.down or (self.fail_after is not None and self.reads > self.fail_after):
            raise Unavailable("the token store is unavailable (test); retry shortly")
        return [event for event in self.events if event.sequence > sequence][:limit]

    def last_sequence(self) -> int:
        return len(self.events)

    # Unused by the feed; present so that the fake satisfies the Store protocol's reads.
    def run(self, work: object) -> object:  # pragma: no cover
        raise NotImplementedError

    def get_token(self, token_id: str) -> None:  # pragma: no cover
        raise NotImplementedError


def revoked(token_id: str) -> Event:
    return token_event(EventKind.TOKEN_REVOKED, SYSTEM, "acme", token_id, AT)


class World:
    def __init__(self) -> None:
        self.log = FakeLog()
        self.monotonic = ManualMonotonic()
        self.loads: list[str] = []
        self.token = new_token()
        record = TokenRecord(
            token_id=self.token.token_id,
            secret_hash=HASHER.hash(self.token),
            organization="acme",
            subject=None,
            label="",
            description="",
            scopes=("download",),
            created_at=AT,
            expires_at=None,
            revoked_at=None,
            created_by="test",
        )
        entry = ValidationEntry.from_record(record)

        async def load(token_id: str) -> ValidationEntry | None:
            self.loads.append(token_id)
            return entry

        self.validator = Validator(
            load, HASHER, ManualClock(), CacheConfig(max_staleness=STALENESS), self.monotonic
        )
        self.feed = ChangeFeed(
            self.log,  # type: ignore[arg-type]  # the reads the feed makes, nothing more
            self.validator,
            poll_seconds=0.005,
            bound_seconds=STALENESS,
            monotonic=self.monotonic,
        )
        self.health: list[bool] = []
        self.feed.health_listeners.append(self.health.append)

    async def validate(self) -> bool:
        return (await self.validator.validate(self.token.value, "download")).valid


async def until(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    async def poll() -> None:
        # Nothing signals these conditions (they watch the feed from outside): poll them.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.002)

    await asyncio.wait_for(poll(), seconds)


def run(scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        world = World()
        await world.feed.start()
        try:
            await scenario(world)
        finally:
            await world.feed.stop()

    asyncio.run(main())


def test_a_change_committed_elsewhere_drops_the_cached_entry() -> None:
    async def scenario(world: World) -> None:
        assert await world.validate()
        world.log.append(revoked(world.token.token_id))
        await until(lambda: world.feed.last_sequence == 1)
        assert await world.validate()  # re-read (the fake store still says alive)
        assert world.loads == [world.token.token_id] * 2

    run(scenario)


def test_events_that_touch_no_token_leave_the_cache_alone() -> None:
    async def scenario(world: World) -> None:
        assert await world.validate()
        world.log.append(Event(EventKind.ORGANIZATION_CREATED, AT, SYSTEM, "acme", "acme"))
        await until(lambda: world.feed.last_sequence == 1)
        assert await world.validate()
        assert world.loads == [world.token.token_id]  # still the one read

    run(scenario)


def test_a_change_applied_as_it_was_committed_is_not_applied_again_by_the_follower() -> None:
    async def scenario(world: World) -> None:
        recorded = world.log.append(revoked(world.token.token_id))
        world.feed.committed([recorded])
        await until(lambda: world.feed.last_sequence == 1)
        assert await world.validate()
        assert world.validator.stats().invalidations == 1

    run(scenario)


def test_entries_outlive_the_staleness_bound_only_while_the_feed_confirms_them() -> None:
    async def scenario(world: World) -> None:
        assert await world.validate()
        world.monotonic.value += STALENESS * 10
        reads = world.log.reads
        await until(lambda: world.log.reads > reads + 1)  # a read that began after the move
        assert await world.validate()
        assert world.loads == [world.token.token_id]  # confirmed: answered from the cache

        world.log.down = True
        world.monotonic.value += STALENESS + 1
        await until(lambda: world.health == [False])  # silent past the bound: NOT_SERVING
        assert await world.validate()
        assert world.loads == [world.token.token_id] * 2  # re-read before answering

        world.log.down = False
        await until(lambda: world.health == [False, True])  # and back, by itself

    run(scenario)


def test_a_backlog_is_read_to_its_end_before_anything_is_confirmed() -> None:
    async def scenario(world: World) -> None:
        started_confirmed = world.validator.confirmed
        world.monotonic.value += 10
        fail_after = world.log.reads + 1
        world.log.fail_after = fail_after  # the backlog's second page fails
        for _ in range(BATCH + 5):
            world.log.append(revoked("0" * 16))
        await until(lambda: world.feed.last_sequence == BATCH)  # the first page was applied
        await until(lambda: world.log.reads > fail_after + 2)  # and retried since
        assert world.validator.confirmed == started_confirmed  # nothing confirmed mid-backlog

        world.log.fail_after = None
        await until(lambda: world.feed.last_sequence == BATCH + 5)
        await until(lambda: world.validator.confirmed > started_confirmed)

    run(scenario)


def test_a_feed_turned_off_never_reads_the_log() -> None:
    async def scenario() -> None:
        world = World()
        feed = ChangeFeed(
            world.log,  # type: ignore[arg-type]
            world.validator,
            poll_seconds=0,
            bound_seconds=STALENESS,
        )
        await feed.start()
        await asyncio.sleep(0.05)
        await feed.stop()
        assert world.log.reads == 0
        assert not feed.enabled

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", sorted(EventKind))
def test_only_token_events_invalidate(kind: EventKind) -> None:
    world = World()
    event = Event(kind, AT, SYSTEM, "acme", world.token.token_id, world.token.token_id)
    world.feed.apply([RecordedEvent(1, event)])
    expected = 1 if kind.value.startswith("token.") else 0
    assert world.validator.stats().invalidations == expected


def test_a_wake_at_the_moment_of_stop_does_not_keep_the_follower_running() -> None:
    """On Python 3.11, asyncio.wait_for swallowed a cancel that came as its event was set: a
    NOTIFY as the server stopped kept the follower polling and the server's stop waiting."""

    async def scenario() -> None:
        world = World()
        feed = ChangeFeed(
            world.log,  # type: ignore[arg-type]
            world.validator,
            poll_seconds=60,  # the follower waits for a wake after its first read
            bound_seconds=STALENESS,
            monotonic=world.monotonic,
        )
        await feed.start()
        await until(lambda: world.log.reads == 1)
        await asyncio.sleep(0.05)  # into its wait
        feed._notified()  # what the LISTEN thread does on a NOTIFY
        async with asyncio.timeout(5):
            await feed.stop()
        assert world.log.reads == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("set_it", [True, False])
def test_wait_set_passes_a_cancel_that_comes_as_the_event_is_set(set_it: bool) -> None:
    async def scenario() -> None:
        event = asyncio.Event()
        waiter = asyncio.create_task(wait_set(event, 60))
        await asyncio.sleep(0.01)
        if set_it:
            event.set()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(scenario())


def test_wait_set_says_whether_the_event_was_set() -> None:
    async def scenario() -> None:
        event = asyncio.Event()
        assert await wait_set(event, 0.01) is False
        event.set()
        assert await wait_set(event, 60) is True

    asyncio.run(scenario())
