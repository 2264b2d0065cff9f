"""The change feed: keeps this process's Validate cache exact with the change log.

Two ways in, one way of applying:
- a commit made by this process hands its events over at once (`committed`, called by the
  store in the worker thread that committed, before the RPC that made the change returns);
- a follower task reads the log from the last sequence it applied, woken by PostgreSQL's
  LISTEN/NOTIFY or by its poll interval, so that another process's changes arrive within the
  interval and a lost notification, a dropped connection or a restart loses nothing.

Each successful read of the log confirms every cache entry as of the moment it began (every
change committed before then has been applied), which is what lets entries outlive the
staleness bound while the feed is alive, and only while it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from authority.aio import wait_set
from authority.cache.validator import Monotonic, Validator
from authority.domain.errors import Unavailable
from authority.domain.events import TOKEN_KINDS, RecordedEvent
from authority.domain.ports import Store

log = logging.getLogger("authority.feed")

# How many events one read of the log takes at most (then it reads again at once).
BATCH = 1000
# On PostgreSQL a NOTIFY wakes the follower at once; it still polls, this many times slower.
NOTIFIED_POLL_FACTOR = 20

HealthListener = Callable[[bool], None]
EventListener = Callable[[Sequence[RecordedEvent]], None]


class ChangeFeed:
    """Applies the change log to one process's cache; reports whether it is keeping up."""

    def __init__(
        self,
        store: Store,
        validator: Validator,
        poll_seconds: float,
        bound_seconds: float,
        executor: Executor | None = None,
        listen_url: str | None = None,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        self._store = store
        self._executor = executor
        self._validator = validator
        self._poll = poll_seconds
        self._bound = bound_seconds
        self._listen_url = listen_url
        self._monotonic = monotonic
        self._last = 0
        # Sequences this process applied as it committed them, ahead of the follower, which
        # skips them (a second invalidation would cost a needless store read).
        self._applied_ahead: set[int] = set()
        self._healthy = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = threading.Event()
        self._listener: threading.Thread | None = None
        self.health_listeners: list[HealthListener] = []
        self.event_listeners: list[EventListener] = []

    @property
    def enabled(self) -> bool:
        return self._poll > 0

    @property
    def last_sequence(self) -> int:
        """The newest sequence this process has applied."""
        return self._last

    # -- applying ------------------------------------------------------------------------------

    def committed(self, events: list[RecordedEvent]) -> None:
        """From the thread that just committed: apply on the loop, ahead of the RPC's reply."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._apply_committed, events)

    def _apply_committed(self, events: list[RecordedEvent]) -> None:
        if self.enabled:
            # The follower may have read them first (it raced the committing thread here).
            events = [recorded for recorded in events if recorded.sequence > self._last]
            self._applied_ahead.update(recorded.sequence for recorded in events)
        self.apply(events)

    def apply(self, events: Sequence[RecordedEvent]) -> None:
        """Invalidate the tokens the events touch. On the event loop; idempotent."""
        invalidate = self._validator.invalidate
        for recorded in events:
            event = recorded.event
            if event.token_id is not None and event.kind in TOKEN_KINDS:
                invalidate(event.token_id)
        for listener in self.event_listeners:
            listener(events)

    # -- following ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start following from the log's current end (the cache starts empty)."""
        self._loop = asyncio.get_running_loop()
        if not self.enabled:
            return
        self._wake = asyncio.Event()
        self._last = await self._loop.run_in_executor(self._executor, self._store.last_sequence)
        self._validator.confirm(self._monotonic())
        if self._listen_url is not None:
            self._listener = threading.Thread(
                target=self._listen, name="authority-feed-listen", daemon=True
            )
            self._listener.start()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._listener.join, 5)

    async def _follow(self) -> None:
        assert self._loop is not None and self._wake is not None
        interval = self._poll * (NOTIFIED_POLL_FACTOR if self._listener else 1)
        while not self._stopping.is_set():
            began = self._monotonic()
            try:
                events = await self._loop.run_in_executor(
                    self._executor, self._store.events_after, self._last, BATCH
                )
            except Unavailable:
                events = None
            except Exception:  # a bug must not stop the feed for good
                log.exception("change feed: reading the log failed")
                events = None
            if events is None:
                self._set_healthy(self._monotonic() - self._validator.confirmed < self._bound)
            else:
                if events:
                    ahead = self._applied_ahead
                    self.apply([recorded for recorded in events if recorded.sequence not in ahead])
                    self._last = events[-1].sequence
                    self._applied_ahead = {sequence for sequence in ahead if sequence > self._last}
                if len(events) == BATCH:
                    continue  # more to read: the confirmation waits until we are caught up
                self._validator.confirm(began)
                self._set_healthy(True)
            self._wake.clear()
            await wait_set(self._wake, interval)

    def _set_healthy(self, healthy: bool) -> None:
        if healthy != self._healthy:
            self._healthy = healthy
            log.warning("change feed %s", "caught up" if healthy else "lost beyond the bound")
            for listener in self.health_listeners:
                listener(healthy)

    def _notified(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _listen(self) -> None:
        """PostgreSQL LISTEN in a thread of its own; any NOTIFY wakes the follower."""
        import psycopg  # only on PostgreSQL

        from authority.store.repository import EVENTS_CHANNEL

        assert self._loop is not None and self._listen_url is not None
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._listen_url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    # Anything committed while we were not listening is read by the next poll.
                    self._loop.call_soon_threadsafe(self._notified)
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._loop.call_soon_threadsafe(self._notified)
            except psycopg.Error as error:
                log.warning("change feed: LISTEN connection lost (%s)", type(error).__name__)
                self._stopping.wait(0.5)
