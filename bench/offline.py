"""Offline verification in one process: what a service saves by not calling Validate.

Run as `python -m bench.offline`: reads one JSON spec on stdin (target, tokens, permission,
the verifier's cache size or null for its default, warmup, windows, seconds per window),
verifies the access tokens in turn with `authority.client.OfflineVerifier` (the signing keys
fetched once, no RPC per token), and prints one JSON line: verifications per second in each
window and the CPU share of this process. One process, one thread: the unary Validate rate it
is compared with is the server's, which is one process too.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

from authority.client import OfflineVerifier


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(spec: dict[str, Any]) -> dict[str, Any]:
    tokens: list[str] = spec["tokens"]
    permission: str = spec["permission"]
    cache_size: int | None = spec["cache_size"]
    verifier = (
        OfflineVerifier(spec["target"])
        if cache_size is None
        else OfflineVerifier(spec["target"], cache_size=cache_size)
    )
    with verifier:
        return _measure(verifier, tokens, permission, spec)


def _measure(
    verifier: OfflineVerifier, tokens: list[str], permission: str, spec: dict[str, Any]
) -> dict[str, Any]:
    verify = verifier.verify
    count = len(tokens)
    index = 0

    def verify_for(seconds: float) -> int:
        nonlocal index
        done = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            # A refusal means a misconfigured run (wrong keys, expired tokens): never a figure.
            if not verify(tokens[index % count], permission).valid:
                raise SystemExit("an access token did not verify offline")
            index += 1
            done += 1
        return done

    verify_for(spec["warmup"])  # the key set fetched, whatever the verifier caches filled
    rates: list[float] = []
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    for _ in range(spec["windows"]):
        window_started = time.perf_counter()
        done = verify_for(spec["seconds"])
        rates.append(done / (time.perf_counter() - window_started))
    cpu = (_cpu_seconds() - cpu_before) / (time.perf_counter() - started)
    return {"rates": rates, "cpu": cpu}


def main() -> None:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(run(spec)))


if __name__ == "__main__":
    main()
