"""Background traffic: steady Validate calls on several servers until told to stop.

Run as `python -m bench.background`: reads one JSON spec line on stdin (targets, payloads,
calls per second per target, calls in flight per target), calls at that pace until the next
line (or the end of stdin), then prints one JSON line: calls, errors and seconds per target.
Unlike bench/load.py it does not saturate the servers: it is the load under which another
measurement is taken (revocation propagation), not the measurement itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from typing import Any

import grpc

METHOD = "/authority.v1.TokenAuthority/Validate"


async def _paced(
    channel: grpc.aio.Channel,
    payloads: list[bytes],
    rate: float,
    in_flight: int,
    stop: asyncio.Event,
) -> tuple[int, int]:
    """Calls at `rate` per second over `in_flight` workers until `stop`; (calls, errors)."""
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
    interval = in_flight / rate
    calls = errors = 0

    async def worker(offset: int) -> None:
        nonlocal calls, errors
        index = offset
        due = time.perf_counter() + interval * offset / in_flight
        while not stop.is_set():
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await call(payloads[index % len(payloads)])
                calls += 1
            except grpc.aio.AioRpcError:
                errors += 1
            index += in_flight
            # Behind schedule (the server was slow): go on from now, never burst to catch up.
            due = max(due + interval, time.perf_counter() - interval)

    await asyncio.gather(*(worker(offset) for offset in range(in_flight)))
    return calls, errors


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    payloads = [base64.b64decode(item) for item in spec["payloads"]]
    stop = asyncio.Event()
    channels = [grpc.aio.insecure_channel(target) for target in spec["targets"]]
    for channel in channels:
        await channel.channel_ready()
    print("ready", flush=True)
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    waiting = loop.run_in_executor(None, sys.stdin.readline)
    waiting.add_done_callback(lambda _: stop.set())
    counts = await asyncio.gather(
        *(_paced(channel, payloads, spec["rate"], spec["in_flight"], stop) for channel in channels)
    )
    seconds = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return {
        "calls": [calls for calls, _ in counts],
        "errors": [errors for _, errors in counts],
        "seconds": seconds,
    }


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(run(spec))))


if __name__ == "__main__":
    main()
