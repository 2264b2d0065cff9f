"""Which way should the aio server reach the database? Measured, not assumed.

Compares the Validate read (one indexed SELECT by token id) done
  (a) with a sync SQLAlchemy engine in a bounded thread pool (what the server does), and
  (b) with SQLAlchemy's asyncio engine (aiosqlite / psycopg async),
at the same concurrency on the event loop, for SQLite and PostgreSQL. Also reports how late
a 1 ms timer fires on the loop meanwhile (loop responsiveness).

Run: `.venv/bin/python -m bench.store_modes` (after `make bench` has seeded the databases).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.ext.asyncio import create_async_engine

from authority.domain.token_format import parse_token
from authority.store.database import create_engines, normalize_url
from authority.store.repository import _GET_TOKEN, SqlStore
from bench.__main__ import RESULTS, _prepared

CONCURRENCY = 32
SECONDS = 3.0


async def _drive(lookup: Callable[[str], Awaitable[object]], ids: list[str]) -> tuple[float, float]:
    """(lookups per second, p99 lateness of a 1 ms timer in ms)."""
    end = time.perf_counter() + SECONDS
    done = 0
    lateness: list[float] = []

    async def worker(offset: int) -> None:
        nonlocal done
        index = offset
        while time.perf_counter() < end:
            await lookup(ids[index % len(ids)])
            index += CONCURRENCY
            done += 1

    async def ticker() -> None:
        while time.perf_counter() < end:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append((time.perf_counter() - started - 0.001) * 1000)

    await asyncio.gather(ticker(), *(worker(i) for i in range(CONCURRENCY)))
    lateness.sort()
    return done / SECONDS, lateness[int(len(lateness) * 0.99)] if lateness else 0.0


async def _threaded(url: str, ids: list[str]) -> tuple[float, float]:
    store = SqlStore(*create_engines(url, 4))
    executor = ThreadPoolExecutor(max_workers=4)
    loop = asyncio.get_running_loop()

    async def lookup(token_id: str) -> object:
        return await loop.run_in_executor(executor, store.get_token, token_id)

    try:
        return await _drive(lookup, ids)
    finally:
        executor.shutdown()
        store.dispose()


async def _async_engine(url: str, ids: list[str]) -> tuple[float, float]:
    url = normalize_url(url)
    url = url.replace("sqlite://", "sqlite+aiosqlite://").replace("+psycopg", "+psycopg_async")
    engine = create_async_engine(url, pool_size=4, max_overflow=4)
    engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def lookup(token_id: str) -> object:
        async with engine.connect() as connection:
            result = await connection.execute(_GET_TOKEN, {"token_id": token_id})
            return result.first()

    try:
        return await _drive(lookup, ids)
    finally:
        await engine.dispose()


def main() -> None:
    rows = ["| store | mode | lookups/s | 1 ms timer p99 lateness |", "|---|---|---|---|"]
    for kind in ("sqlite", "postgres"):
        database = _prepared(kind, 10_000)
        ids = [token.token_id for token in map(parse_token, database.tokens) if token]
        for mode, run in (
            ("sync engine + thread pool", _threaded),
            ("asyncio engine", _async_engine),
        ):
            rates = []
            lateness = []
            for _ in range(3):
                rate, late = asyncio.run(run(database.url, ids))
                rates.append(rate)
                lateness.append(late)
            rows.append(
                f"| {kind} | {mode} | {statistics.median(rates):,.0f} "
                f"| {statistics.median(lateness):.2f} ms |"
            )
    report = "\n".join(rows)
    print(report)
    (RESULTS / "store_modes.md").write_text(report + "\n")
    print(json.dumps({"written": str(RESULTS / "store_modes.md")}))


if __name__ == "__main__":
    main()
