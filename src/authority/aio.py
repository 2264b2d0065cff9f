"""asyncio helpers the layers share."""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; True if it was set.

    Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives as the event
    is set (gh-86296, fixed in 3.12), and a loop around it outlives its task's cancel. The
    change feed's follower did, now and then, on PostgreSQL (a NOTIFY as the server stopped):
    the server's stop waited for it forever.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
