"""`make bench`, several processes on one database, kept coherent by the change feed.

- Revocation propagation: 3 replicas (`python -m authority serve` on three loopback ports, one
  database, one pepper) under steady Validate load on all three (bench/background.py, warmed
  tokens). Each revocation goes through the replicas in turn; from its RevokeToken reply, each
  replica is asked Validate of that token in a loop (one asyncio task per replica, in this
  process) until it answers REVOKED, bounded by a timeout. The delay per (revocation, replica)
  pair is reported.
- Feed cost: the cache-hit Validate rate of each replica against a twin with the feed off
  (AUTHORITY_FEED_POLL_SECONDS=0), measured like the cache-hit rows of the main table
  (bench/load.py, alternating rounds), while changes are written through another replica.
- `serve --workers 2` against `--workers 1` on SQLite: the Validate rate through one address.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
import psycopg
from sqlalchemy.engine import make_url

from authority.v1 import token_authority_pb2 as pb
from authority.v1 import token_authority_pb2_grpc
from bench.__main__ import (
    POSTGRES,
    RESULTS,
    SERVICE,
    Database,
    ProcessTree,
    Sample,
    Scenario,
    _encode,
    _free_port,
    _measure,
    _prepared,
    _validate_payloads,
)
from bench.seed import ORGANIZATION, seed

REPLICAS = 3
# Tokens the background load and the feed-cost rows validate (never revoked).
LOAD_TOKENS = 1000
GOAL_P99_MS = 100.0
GOAL_FEED_COST = 0.05
# Calls in flight per replica from the background load: a steady pace, not saturation.
BACKGROUND_IN_FLIGHT = 8
# Connections per client process to a `--workers` server: the kernel spreads connections,
# not calls, among the workers.
WORKER_CONNECTIONS = 4
# Each database, and how a replica hears of another's changes there.
STORES = {"postgres": "PostgreSQL", "sqlite": "SQLite"}
HEARING = {"postgres": "LISTEN/NOTIFY", "sqlite": "polls every 50 ms"}


# -- processes -----------------------------------------------------------------------------------


@dataclass
class Replica:
    target: str
    process: ProcessTree


def _environment(database: Database, feed: bool = True) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("AUTHORITY_FEED_POLL_SECONDS", "AUTHORITY_WORKERS")
    }
    environment.update(
        AUTHORITY_DATABASE_URL=database.url,
        AUTHORITY_PEPPER_HEX=database.pepper_hex,
        AUTHORITY_LOG_LEVEL="WARNING",
        AUTHORITY_CACHE_MAX_ENTRIES="100000",
        AUTHORITY_VALIDATE_BATCH_MAX="1000",
        # As in the main table: the cache-hit rows measure hits only. A replica whose feed
        # failed would then keep a revoked token's answer for the hour: a timeout, not hidden.
        AUTHORITY_CACHE_MAX_STALENESS_SECONDS="3600",
    )
    if not feed:
        environment["AUTHORITY_FEED_POLL_SECONDS"] = "0"
    return environment


@contextmanager
def _servers(
    database: Database, count: int, feed: bool = True, workers: int | None = None
) -> Iterator[list[Replica]]:
    """`count` servers on one database, each on a port of its own, started at once."""
    environment = _environment(database, feed)
    started: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        for _ in range(count):
            port = _free_port()
            command = [sys.executable, "-m", "authority", "serve", "--listen", f"127.0.0.1:{port}"]
            if workers is not None:
                command += ["--workers", str(workers)]
            started.append((subprocess.Popen(command, env=environment), port))
        replicas = []
        for process, port in started:
            replica = Replica(f"127.0.0.1:{port}", ProcessTree(process.pid))
            _wait_ready(process, replica, port, workers or 1)
            replicas.append(replica)
        yield replicas
    finally:
        for process, _ in started:
            process.terminate()
        for process, _ in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(
    process: subprocess.Popen[bytes], replica: Replica, port: int, workers: int
) -> None:
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(replica.target) as channel:
        ready = grpc.channel_ready_future(channel)
        while not ready.done():
            if process.poll() is not None:
                raise SystemExit(f"server on {replica.target} exited ({process.returncode})")
            if time.monotonic() > deadline:
                raise SystemExit(f"server on {replica.target} did not start")
            time.sleep(0.1)
    # Every worker listening, so that each gets its share of connections from the start.
    while replica.process.listening(port) < workers:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the {workers} workers on {replica.target} did not all start")
        time.sleep(0.1)


def _warm(target: str, tokens: Sequence[str], connections: int = 1) -> list[str]:
    """Validate every token through `connections` connections of their own (each worker of a
    `--workers` server caches them); return the token ids, in order."""
    token_ids: list[str] = []
    for _ in range(connections):
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(target, options=options) as channel:
            stub = token_authority_pb2_grpc.TokenAuthorityStub(channel)
            token_ids = []
            for start in range(0, len(tokens), 1000):
                chunk = tokens[start : start + 1000]
                answers = stub.ValidateBatch(
                    pb.ValidateBatchRequest(requests=[pb.ValidateRequest(token=t) for t in chunk])
                )
                if not all(answer.valid for answer in answers.results):
                    raise SystemExit(f"bench tokens did not all validate on {target}")
                token_ids.extend(answer.token_id for answer in answers.results)
    return token_ids


# -- a database of its own -----------------------------------------------------------------------


@contextmanager
def _scratch_database(kind: str, live: int) -> Iterator[Database]:
    """A database for this run only (revocations change it), seeded with `live` tokens and
    dropped afterwards; named after this process, so that concurrent runs never share one."""
    name = f"authority_bench_replicas_{os.getpid()}"
    if kind == "sqlite":
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{name}.db"
        url = f"sqlite:///{path}"
    else:
        url = make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    _drop_scratch(kind, url)
    if kind != "sqlite":
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    try:
        pepper_hex = secrets.token_hex(32)
        tokens = seed(url, live, live, bytes.fromhex(pepper_hex))
        yield Database(url, tokens, pepper_hex)
    finally:
        _drop_scratch(kind, url)


def _drop_scratch(kind: str, url: str) -> None:
    database = make_url(url).database or ""
    if kind == "sqlite":
        for suffix in ("", "-wal", "-shm", ".migrate-lock"):
            Path(database + suffix).unlink(missing_ok=True)
        return
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _administrator(database: Database) -> str:
    """A global administrator's token (`authority bootstrap`), to revoke and issue with."""
    completed = subprocess.run(
        [sys.executable, "-m", "authority", "bootstrap", "--quiet"],
        env=_environment(database),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"bootstrap failed: {completed.stderr.strip()}")
    return completed.stdout.strip().splitlines()[-1]


# -- traffic ---------------------------------------------------------------------------------------


class Background:
    """bench/background.py in a process of its own: Validate at `rate` calls/s on each target,
    from entering to leaving; `calls_per_second` per target afterwards."""

    def __init__(self, targets: Sequence[str], tokens: Sequence[str], rate: float) -> None:
        self._spec = {
            "targets": list(targets),
            "payloads": _encode(_validate_payloads(tokens)),
            "rate": rate,
            "in_flight": BACKGROUND_IN_FLIGHT,
        }
        self._process: subprocess.Popen[str] | None = None
        self.calls_per_second: list[float] = []
        self.errors = 0

    def __enter__(self) -> Background:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.background"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(self._spec) + "\n")
        process.stdin.flush()
        if process.stdout.readline().strip() != "ready":
            raise SystemExit("the background load did not start")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        if kind is not None:  # the measurement failed: say why, not that this was cut short
            process.kill()
            process.wait()
            return
        process.stdin.write("stop\n")
        process.stdin.close()
        report = json.loads(process.stdout.read() or "{}")
        if process.wait(timeout=60) != 0 or not report:
            raise SystemExit("the background load failed")
        self.calls_per_second = [calls / report["seconds"] for calls in report["calls"]]
        self.errors = sum(report["errors"])


class Writer:
    """Changes at a steady rate (IssueToken, in a thread) through the replica `via`: the log
    that the feeds follow while their Validate rate is measured."""

    def __init__(self, targets: Sequence[str], administrator: str, rate: float) -> None:
        self.via = 0
        self.written = 0
        self.errors = 0
        self.seconds = 0.0
        self._started = 0.0
        self._targets = list(targets)
        self._metadata = (("authorization", f"Bearer {administrator}"),)
        self._rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-writer", daemon=True)

    def __enter__(self) -> Writer:
        self._started = time.perf_counter()
        if self._rate > 0:
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.seconds = time.perf_counter() - self._started

    def _run(self) -> None:
        channels = [grpc.insecure_channel(target) for target in self._targets]
        stubs = [token_authority_pb2_grpc.TokenAuthorityStub(channel) for channel in channels]
        request = pb.IssueTokenRequest(organization=ORGANIZATION, label="bench-feed-write")
        interval = 1 / self._rate
        due = time.perf_counter()
        try:
            while not self._stop.is_set():
                try:
                    stubs[self.via].IssueToken(request, metadata=self._metadata, timeout=10)
                    self.written += 1
                except grpc.RpcError:
                    self.errors += 1
                due = max(due + interval, time.perf_counter() - interval)
                self._stop.wait(max(0.0, due - time.perf_counter()))
        finally:
            for channel in channels:
                channel.close()


# -- revocation propagation ------------------------------------------------------------------------


@dataclass
class Delay:
    via: int  # the replica the revocation went through
    replica: int
    seconds: float | None  # None: not REVOKED within the timeout


async def _until_revoked(
    stub: token_authority_pb2_grpc.TokenAuthorityAsyncStub,
    request: pb.ValidateRequest,
    since: float,
    bound: float,
) -> float | None:
    while True:
        answer = await stub.Validate(request)
        now = time.perf_counter()
        if answer.reason == pb.REASON_REVOKED:
            return now - since
        if not answer.valid:
            raise SystemExit(f"a revoked token was answered {pb.Reason.Name(answer.reason)}")
        if now - since > bound:
            return None


async def _round_trip(
    stub: token_authority_pb2_grpc.TokenAuthorityAsyncStub, request: pb.ValidateRequest, sent: float
) -> float:
    answer = await stub.Validate(request)
    if not answer.valid:
        raise SystemExit(f"a live token was answered {pb.Reason.Name(answer.reason)}")
    return time.perf_counter() - sent


async def _revocations(
    targets: Sequence[str],
    administrator: str,
    victims: Sequence[tuple[str, str]],
    steady: str,
    bound: float,
) -> tuple[list[Delay], list[float]]:
    """Revoke each (token id, value) through the replicas in turn; time each replica's news.
    First, the floor: round trips of a Validate of `steady` (cached, never revoked) sent to the
    three replicas at once, as the probes are."""
    channels = [grpc.aio.insecure_channel(target) for target in targets]
    try:
        for channel in channels:
            await channel.channel_ready()
        stubs = [token_authority_pb2_grpc.TokenAuthorityStub(channel) for channel in channels]
        metadata = (("authorization", f"Bearer {administrator}"),)
        # Revocations land at moments unrelated to any poll interval; seeded: reproducible.
        pauses = random.Random(8)
        floor: list[float] = []
        steady_request = pb.ValidateRequest(token=steady)
        for _ in range(min(len(victims), 100)):
            sent = time.perf_counter()
            floor += await asyncio.gather(*(_round_trip(s, steady_request, sent) for s in stubs))
            await asyncio.sleep(pauses.uniform(0.0, 0.02))
        delays: list[Delay] = []
        for number, (token_id, value) in enumerate(victims):
            via = number % len(stubs)
            await stubs[via].RevokeToken(
                pb.RevokeTokenRequest(token_id=token_id), metadata=metadata
            )
            replied = time.perf_counter()
            request = pb.ValidateRequest(token=value)
            seconds = await asyncio.gather(
                *(_until_revoked(stub, request, replied, bound) for stub in stubs)
            )
            delays.extend(Delay(via, replica, s) for replica, s in enumerate(seconds))
            await asyncio.sleep(pauses.uniform(0.0, 0.02))
        return delays, floor
    finally:
        for channel in channels:
            await channel.close()


@dataclass
class Propagation:
    store: str
    revocations: int
    delays: list[Delay]
    floor: list[float]  # round trips of a cached Validate under the same load
    load_per_replica: list[float]
    load_errors: int
    timeout: float

    def row(self, label: str, delays: Sequence[Delay]) -> str:
        ordered = sorted(d.seconds if d.seconds is not None else math.inf for d in delays)
        late = sum(1 for d in delays if d.seconds is None)
        return (
            f"| {STORES[self.store]} ({HEARING[self.store]}) | {label} | {len(delays)} "
            f"| {self._ms(_at(ordered, 0.5))} | {self._ms(_at(ordered, 0.99))} "
            f"| {self._ms(ordered[-1])} | {late} |"
        )

    def floor_row(self) -> str:
        ordered = sorted(self.floor)
        return (
            f"| {STORES[self.store]} | a cached Validate (the floor) | {len(ordered)} "
            f"| {self._ms(_at(ordered, 0.5))} | {self._ms(_at(ordered, 0.99))} "
            f"| {self._ms(ordered[-1])} | |"
        )

    def p99_ms(self) -> float:
        ordered = sorted(d.seconds if d.seconds is not None else math.inf for d in self.delays)
        return _at(ordered, 0.99) * 1000

    def _ms(self, seconds: float) -> str:
        return f"> {self.timeout * 1000:.0f}" if math.isinf(seconds) else f"{seconds * 1000:.1f}"


def _at(ordered: Sequence[float], fraction: float) -> float:
    """The same percentile as the main table's (the value at that rank)."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _propagation(
    kind: str,
    database: Database,
    replicas: list[Replica],
    administrator: str,
    victims: int,
    args: argparse.Namespace,
) -> Propagation:
    targets = [replica.target for replica in replicas]
    token_ids: list[str] = []
    for replica in replicas:
        token_ids = _warm(replica.target, database.tokens)
    doomed = list(zip(token_ids[:victims], database.tokens[:victims], strict=True))
    with Background(targets, database.tokens[victims:], args.propagation_load) as background:
        delays, floor = asyncio.run(
            _revocations(
                targets, administrator, doomed, database.tokens[victims], args.propagation_timeout
            )
        )
    return Propagation(
        kind,
        victims,
        delays,
        floor,
        background.calls_per_second,
        background.errors,
        args.propagation_timeout,
    )


# -- the feed's cost -----------------------------------------------------------------------------


@dataclass
class FeedCost:
    replica: int
    on: list[Sample] = field(default_factory=list)
    off: list[Sample] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)


@dataclass
class Feed:
    store: str
    replicas: list[FeedCost]
    changes_per_second: float
    # With no Validate load: how much more CPU (in cores) a feed-on replica used than a
    # feed-off one while the changes went on. Far steadier than a rate on a shared machine.
    idle_cores: float

    def rate_cost(self) -> float:
        """1 - the median of every round's on / off rate ratio."""
        return 1 - statistics.median(r for cost in self.replicas for r in cost.ratios)

    def control_ratios(self) -> list[float]:
        """The same ratio between two replicas of the same setting (on / on, off / off) in each
        round: what the measurement gives where there is no difference to find."""
        ratios = []
        for first, second in itertools.pairwise([*self.replicas, self.replicas[0]]):
            for arms in ("on", "off"):
                for one, other in zip(getattr(first, arms), getattr(second, arms), strict=True):
                    ratios.append(one.rate / other.rate)
        return ratios

    def loaded_cores(self) -> float:
        """The CPU a feed-on replica uses under the cache-hit load (median)."""
        return statistics.median(s.server_cpu for cost in self.replicas for s in cost.on)

    def cpu_cost(self) -> float:
        """The feed's own CPU as a share of a loaded replica's CPU."""
        return self.idle_cores / self.loaded_cores()


def _idle_cores(processes: Sequence[ProcessTree], seconds: float) -> list[float]:
    """CPU used by each process (in cores) over `seconds`."""
    before = [sum(process.cpu_times()) for process in processes]
    started = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - started
    after = [sum(process.cpu_times()) for process in processes]
    return [(late - early) / elapsed for early, late in zip(before, after, strict=True)]


def _feed_cost(
    kind: str,
    database: Database,
    administrator: str,
    tokens: Sequence[str],
    args: argparse.Namespace,
) -> Feed:
    """REPLICAS feed-on replicas against as many twins with the feed off, all started
    together for this (same age, same history: replicas that had just served the propagation
    run measured slower against fresh twins, feed or no feed), alternating, while changes go
    through another feed-on replica."""
    scenario = Scenario(
        "Validate, cache hit", kind, "calls", 1, f"{SERVICE}/Validate", _validate_payloads(tokens)
    )
    costs = [FeedCost(number) for number in range(REPLICAS)]
    with (
        _servers(database, REPLICAS) as on_replicas,
        _servers(database, REPLICAS, feed=False) as off_replicas,
    ):
        for replica in (*on_replicas, *off_replicas):
            _warm(replica.target, tokens)
        targets = [replica.target for replica in on_replicas]
        with Writer(targets, administrator, args.feed_writes) as writer:
            # First with no Validate load: the feed's own CPU (the writes go through replica 1).
            idle = _idle_cores(
                [r.process for r in (*on_replicas[1:], *off_replicas)], 2 * args.duration
            )
            followers = len(on_replicas) - 1
            idle_cores = statistics.mean(idle[:followers]) - statistics.mean(idle[followers:])
            for round_number in range(args.replica_rounds):
                for cost, on, off in zip(costs, on_replicas, off_replicas, strict=True):
                    writer.via = (cost.replica + 1) % len(on_replicas)
                    # Alternate which goes first, so that a drift favours neither.
                    if round_number % 2 == 0:
                        on_sample = _measure(on.target, on.process, scenario, args)
                        off_sample = _measure(off.target, off.process, scenario, args)
                    else:
                        off_sample = _measure(off.target, off.process, scenario, args)
                        on_sample = _measure(on.target, on.process, scenario, args)
                    cost.on.append(on_sample)
                    cost.off.append(off_sample)
                    cost.ratios.append(on_sample.rate / off_sample.rate)
    if writer.errors:
        raise SystemExit(f"{writer.errors} changes failed while the feed cost was measured")
    return Feed(kind, costs, writer.written / writer.seconds, idle_cores)


def _per_call_us(samples: Sequence[Sample]) -> float:
    return statistics.median(sample.server_cpu / sample.rate * 1e6 for sample in samples)


# -- workers -------------------------------------------------------------------------------------


def _workers_available() -> bool:
    completed = subprocess.run(
        [sys.executable, "-m", "authority", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "--workers" in completed.stdout


def _workers(size: int, args: argparse.Namespace) -> tuple[dict[int, list[Sample]], list[float]]:
    """`serve --workers N` for N in 1, 2 (1 alone when the flag is missing), alternating
    rounds; (samples per N, ratios of 2 to 1 per round)."""
    database = _prepared("sqlite", size)
    counts = [1, 2] if _workers_available() else [1]
    scenario = Scenario(
        "Validate, cache hit",
        "sqlite",
        "calls",
        1,
        f"{SERVICE}/Validate",
        _validate_payloads(database.tokens),
        connections=WORKER_CONNECTIONS,
    )
    samples: dict[int, list[Sample]] = {count: [] for count in counts}
    ratios: list[float] = []
    with ExitStack() as stack:
        servers = {}
        for count in counts:
            workers = count if len(counts) > 1 else None
            servers[count] = stack.enter_context(_servers(database, 1, workers=workers))[0]
        for count, server in servers.items():
            _warm(server.target, database.tokens, connections=8 * count)
        for round_number in range(args.replica_rounds):
            for count in counts if round_number % 2 == 0 else counts[::-1]:
                server = servers[count]
                samples[count].append(_measure(server.target, server.process, scenario, args))
            if len(counts) > 1:
                ratios.append(samples[2][-1].rate / samples[1][-1].rate)
    return samples, ratios


# -- the report ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> str:
    """Measure all three and return the report's section (markdown)."""
    kinds = ["sqlite"] if args.no_postgres else ["postgres", "sqlite"]
    propagations: list[Propagation] = []
    feed: Feed | None = None
    for kind in kinds:
        print(f"- revocation propagation across {REPLICAS} replicas, {STORES[kind]}", flush=True)
        with _scratch_database(kind, args.revocations + LOAD_TOKENS) as database:
            administrator = _administrator(database)
            with _servers(database, REPLICAS) as replicas:
                propagations.append(
                    _propagation(kind, database, replicas, administrator, args.revocations, args)
                )
            if kind == kinds[0]:
                print(f"- feed on vs off, {STORES[kind]}", flush=True)
                feed = _feed_cost(
                    kind, database, administrator, database.tokens[args.revocations :], args
                )
    print("- serve --workers 2 vs 1, SQLite", flush=True)
    size = int(args.sizes.split(",")[0])
    worker_samples, worker_ratios = _workers(size, args)
    assert feed is not None
    return "\n\n".join(
        [
            _propagation_table(propagations, args),
            _feed_table(feed, args),
            _workers_table(size, worker_samples, worker_ratios, args),
            _goals(propagations, feed),
        ]
    )


def _propagation_table(propagations: list[Propagation], args: argparse.Namespace) -> str:
    load = ", ".join(
        f"{STORES[p.store]} {statistics.mean(p.load_per_replica):,.0f}" for p in propagations
    )
    lines = [
        f"Revocation propagation: {REPLICAS} replicas (`python -m authority serve` on three "
        f"loopback ports, one database, one pepper), {args.revocations} revocations through "
        f"each replica in turn, under Validate load on all three ({args.propagation_load:,.0f} "
        f"calls/s per replica asked of one load process; achieved: {load}). Each pair is the "
        "delay from the RevokeToken reply to that replica's first REVOKED answer (a Validate "
        "loop per replica):",
        "",
        "| database (how replicas hear) | replicas | pairs | p50 ms | p99 ms | max ms "
        f"| not REVOKED within {args.propagation_timeout:g} s |",
        "|" + "---|" * 7,
    ]
    for p in propagations:
        lines.append(p.row("all", p.delays))
        lines.append(p.row("the one revoked through", [d for d in p.delays if d.via == d.replica]))
        lines.append(p.row("the two others", [d for d in p.delays if d.via != d.replica]))
        lines.append(p.floor_row())
    for p in propagations:
        if p.load_errors:
            lines.append(f"\n{STORES[p.store]}: {p.load_errors} background Validate calls failed.")
    return "\n".join(lines)


def _feed_table(feed: Feed, args: argparse.Namespace) -> str:
    lines = [
        f"Feed cost ({STORES[feed.store]}): the cache-hit Validate rate of each replica, feed "
        "on, against a twin with it off (AUTHORITY_FEED_POLL_SECONDS=0), measured like the "
        f"cache-hit rows above ({args.replica_rounds} alternating rounds, medians), while "
        f"{feed.changes_per_second:.0f} changes/s (IssueToken) went through another replica:",
        "",
        "| replica | feed on | feed off | on / off | server µs per call, on / off |",
        "|---|---|---|---|---|",
    ]
    for cost in feed.replicas:
        on = statistics.median(sample.rate for sample in cost.on)
        off = statistics.median(sample.rate for sample in cost.off)
        lines.append(
            f"| {cost.replica + 1} | {on:,.0f} calls/s | {off:,.0f} calls/s "
            f"| {statistics.median(cost.ratios):.3f}x "
            f"| {_per_call_us(cost.on):.0f} / {_per_call_us(cost.off):.0f} |"
        )
    every = [ratio for cost in feed.replicas for ratio in cost.ratios]
    lines.append(
        f"| all (median of {len(every)} ratios; range {min(every):.2f} to {max(every):.2f}) "
        f"| | | {statistics.median(every):.3f}x | |"
    )
    control = feed.control_ratios()
    lines.append(
        f"| control: replica / another of the same setting (median of {len(control)}; range "
        f"{min(control):.2f} to {max(control):.2f}) | | | {statistics.median(control):.3f}x | |"
    )
    how = ""
    if feed.store == "postgres" and feed.changes_per_second:
        # NOTIFY wakes a follower per commit; on SQLite it polls whether or not anything changed.
        per_change = feed.idle_cores / feed.changes_per_second * 1e6
        how = f" ({per_change:,.0f} µs of CPU per change)"
    lines += [
        "",
        f"With no Validate load, a feed-on replica following those changes used "
        f"{feed.idle_cores:.1%} of a core more than a feed-off one{how}; under the cache-hit "
        f"load a replica uses {feed.loaded_cores():.0%} of a core, so the feed's own CPU is "
        f"{feed.cpu_cost():.1%} of it.",
    ]
    return "\n".join(lines)


def _workers_table(
    size: int, samples: dict[int, list[Sample]], ratios: list[float], args: argparse.Namespace
) -> str:
    lines = [
        f"`serve --workers` on SQLite ({size:,} stored tokens): the cache-hit Validate rate "
        f"through one address ({args.clients} client process{'es' if args.clients > 1 else ''}, "
        f"{WORKER_CONNECTIONS} "
        f"connections each, {args.replica_rounds} alternating rounds):",
        "",
        "| server | rate | ratio to 1 worker | p50 ms | p99 ms | server CPU | client CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for count, measured in samples.items():
        ordered = sorted(latency for sample in measured for latency in sample.latencies)
        ratio = f"{statistics.median(ratios):.2f}x" if count == 2 else "1.00x"
        lines.append(
            f"| --workers {count} | {statistics.median(s.rate for s in measured):,.0f} calls/s "
            f"| {ratio} | {_at(ordered, 0.5) * 1000:.2f} | {_at(ordered, 0.99) * 1000:.2f} "
            f"| {statistics.median(s.server_cpu for s in measured):.0%} "
            f"| {statistics.median(s.client_cpu for s in measured):.0%} |"
        )
    if 2 not in samples:
        lines.append("")
        lines.append("--workers 2: skipped: --workers not available (`authority serve --help`).")
    return "\n".join(lines)


def _goals(propagations: list[Propagation], feed: Feed) -> str:
    lines = ["| target | measured | met |", "|---|---|---|"]
    for p in propagations:
        p99 = p.p99_ms()
        shown = f"> {p.timeout * 1000:.0f} ms" if math.isinf(p99) else f"{p99:.1f} ms"
        met = "yes" if p99 < GOAL_P99_MS else "NO"
        lines.append(
            f"| revocation reaches every replica, p99 under {GOAL_P99_MS:.0f} ms "
            f"({STORES[p.store]}) | {shown} | {met} |"
        )
    for label, cost in (
        ("Validate rate, on / off", feed.rate_cost()),
        ("its own CPU / a loaded replica's", feed.cpu_cost()),
    ):
        met = "yes" if cost < GOAL_FEED_COST else "NO"
        lines.append(
            f"| the feed costs under {GOAL_FEED_COST:.0%} of a replica ({label}, "
            f"{feed.changes_per_second:.0f} changes/s) | {cost:.1%} | {met} |"
        )
    return "\n".join(lines)
