"""A load generator process: grpc.aio, prebuilt request bytes, many calls in flight.

Run as `python -m bench.load SPEC_JSON`; prints one JSON line with counts, latencies and the
CPU time this process used. Requests and responses stay bytes: the client spends its share
of the two cores on calls, not on protobuf.
"""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import sys
import time
from collections import deque
from typing import Any

import grpc


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _unary(
    channels: list[grpc.aio.Channel], method: str, payloads: list[bytes], spec: dict[str, Any]
) -> list[float]:
    calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
        channel.unary_unary(method) for channel in channels
    ]
    concurrency: int = spec["concurrency"]
    measure_from = time.perf_counter() + spec["warmup"]
    end = measure_from + spec["duration"]
    latencies: list[float] = []

    async def worker(offset: int) -> None:
        call = calls[offset % len(calls)]
        index = offset
        count = len(payloads)
        while True:
            started = time.perf_counter()
            if started >= end:
                return
            await call(payloads[index % count])
            index += concurrency
            finished = time.perf_counter()
            if finished >= measure_from and finished < end:
                latencies.append(finished - started)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies


async def _stream(
    channels: list[grpc.aio.Channel], method: str, payloads: list[bytes], spec: dict[str, Any]
) -> list[float]:
    calls: list[grpc.aio.StreamStreamMultiCallable[bytes, bytes]] = [
        channel.stream_stream(method) for channel in channels
    ]
    window: int = spec["window"]
    measure_from = time.perf_counter() + spec["warmup"]
    end = measure_from + spec["duration"]
    latencies: list[float] = []

    async def one_stream(number: int) -> None:
        call = calls[number % len(calls)]
        stream = call()
        sent: deque[float] = deque()
        credit = asyncio.Semaphore(window)
        done = False

        async def reader() -> None:
            while True:
                response = await stream.read()
                if response is grpc.aio.EOF:
                    return
                finished = time.perf_counter()
                started = sent.popleft()
                credit.release()
                if finished >= measure_from and finished < end:
                    latencies.append(finished - started)

        reading = asyncio.create_task(reader())
        index = number * 7919
        while not done:
            await credit.acquire()
            now = time.perf_counter()
            if now >= end:
                done = True
                break
            sent.append(now)
            await stream.write(payloads[index % len(payloads)])
            index += 1
        await stream.done_writing()
        await reading

    await asyncio.gather(*(one_stream(i) for i in range(spec["concurrency"])))
    return latencies


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    payloads = [base64.b64decode(item) for item in spec["payloads"]]
    options: list[tuple[str, int]] = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    connections: int = spec.get("connections", 1)
    if connections > 1:
        # Channels to one target share a TCP connection unless each has its own pool: a
        # server of several workers (SO_REUSEPORT) is reached through several connections.
        options.append(("grpc.use_local_subchannel_pool", 1))
    channels = [
        grpc.aio.insecure_channel(spec["target"], options=options) for _ in range(connections)
    ]
    try:
        for channel in channels:
            await channel.channel_ready()
        cpu_before = _cpu_seconds()
        if spec["mode"] == "stream":
            latencies = await _stream(channels, spec["method"], payloads, spec)
        else:
            latencies = await _unary(channels, spec["method"], payloads, spec)
        cpu = _cpu_seconds() - cpu_before
    finally:
        for channel in channels:
            await channel.close()
    return {"latencies": latencies, "cpu": cpu, "wall": spec["warmup"] + spec["duration"]}


def main() -> None:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(run(spec))))


if __name__ == "__main__":
    main()
