"""WatchEvents: one organisation's token events from a position, the history and then live.

The store is the source of truth. The stream reads the log in pages after the last sequence it
sent until it has caught up, then waits. The change feed wakes it when this process applies
events of that organisation (its own commits at once, other processes' as soon as the feed
reads them); the stream then reads the store again after its last sequence. The batch that
woke it is never sent as such, so a consumer that resumes from the last sequence it saw misses
nothing and sees nothing twice (sequences become visible in commit order), and a wake-up that
never comes costs at most RECHECK_SECONDS.

Before each read after a wait the bearer is authenticated again (a cache hit unless it
changed) and the caller's standing re-resolved with the read: a revoked bearer ends the stream
with UNAUTHENTICATED at the next event, or within RECHECK_SECONDS if none comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from authority.aio import wait_set
from authority.api.errors import Reauthenticate
from authority.domain.events import TOKEN_KINDS, RecordedEvent, WatchedEvent
from authority.domain.policy import Caller
from authority.domain.watch import MAX_PAGE, check_watch

if TYPE_CHECKING:
    from authority.api.runtime import Runtime

# Read the log (and re-check the bearer) at least this often when no event wakes the stream.
RECHECK_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """Every event in the log up to now has been sent; `sequence` is the last one (or the
    starting position), the place to resume from."""

    sequence: int


async def follow(
    runtime: Runtime,
    caller: Caller,
    authenticate: Reauthenticate,
    organization: str,
    after_sequence: int,
    mark_caught_up: bool = False,
) -> AsyncGenerator[WatchedEvent | CaughtUp, None]:
    """The organisation's token events after `after_sequence` the caller may see, in order,
    until the caller hangs up (or its bearer or standing goes); with `mark_caught_up`, one
    CaughtUp once the history is out."""
    check_watch(organization, after_sequence)
    wake = asyncio.Event()
    bearer_id = caller.token_id

    def organization_or_bearer(recorded: RecordedEvent) -> bool:
        return recorded.event.organization == organization or recorded.event.token_id == bearer_id

    def on_events(batch: Sequence[RecordedEvent]) -> None:
        # Called on the loop with every batch this process applies: cheap, never raises.
        # Token events only: an exchange's `access_token.issued` is not streamed, and a wake
        # costs every watcher of the organisation a read.
        if not wake.is_set() and any(
            recorded.event.kind in TOKEN_KINDS and organization_or_bearer(recorded)
            for recorded in batch
        ):
            wake.set()

    runtime.event_listeners.append(on_events)
    last = after_sequence
    try:
        while True:
            wake.clear()  # before the read: an event committed during it wakes the next one
            page = await runtime.run(runtime.watch.page, caller, organization, last, MAX_PAGE)
            for watched in page:
                yield watched
                last = watched.recorded.sequence
            if len(page) == MAX_PAGE:
                continue  # more history to read at once
            if mark_caught_up:
                mark_caught_up = False
                yield CaughtUp(last)
            await wait_set(wake, RECHECK_SECONDS)
            caller = await authenticate()
    finally:
        runtime.event_listeners.remove(on_events)
