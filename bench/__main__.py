"""`make bench`: every figure is a ratio to an empty RPC (Ping) on the same server, same run.

For each store size it starts the real server (`python -m authority serve`) in its own
process, loads it from separate client processes (bench/load.py) and prints a table. Seeded
databases are kept under bench/results/ and reused by later runs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from authority.v1 import token_authority_pb2 as pb
from authority.v1 import token_authority_pb2_grpc
from bench.seed import seed

ROOT = Path(__file__).resolve().parent.parent
# Seeded databases and reports; a test points this elsewhere to run the bench hermetically.
RESULTS = Path(os.environ.get("AUTHORITY_BENCH_RESULTS", ROOT / "bench" / "results"))
POSTGRES = os.environ.get("AUTHORITY_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
LIVE_TOKENS = 1000
SERVICE = "/authority.v1.TokenAuthority"


@dataclass
class Database:
    url: str
    tokens: list[str]
    pepper_hex: str


class ProcessTree:
    """A server process and the processes it started (the workers of `--workers`, the thin
    server's Envoy): what a server costs is summed over all of them."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def members(self) -> list[psutil.Process]:
        return [self.root, *self.root.children(recursive=True)]

    def cpu_times(self) -> tuple[float, float]:
        user = system = 0.0
        for process in self.members():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            user += times.user
            system += times.system
        return user, system

    def memory_mb(self) -> float:
        """Proportional set size (MB) summed over the tree: a library page the processes
        share counts once, where summed RSS would count it in each."""
        total = 0
        for process in self.members():
            try:
                total += process.memory_full_info().pss
            except psutil.NoSuchProcess:
                continue
        return total / 2**20

    def listening(self, port: int) -> int:
        """How many processes of the tree listen on `port`."""
        count = 0
        for process in self.members():
            try:
                sockets = process.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            if any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets):
                count += 1
        return count


@dataclass
class Result:
    scenario: str
    store: str
    size: int
    unit: str
    rate: float
    p50_ms: float
    p99_ms: float
    server_cpu: float
    client_cpu: float
    ratio: float = 0.0
    per_call: int = 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _prepared(kind: str, size: int, live: int = LIVE_TOKENS) -> Database:
    """A seeded database, reused across runs (its tokens and pepper kept beside it)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = RESULTS / f"{kind}-{size}-{live}.json"
    if kind == "sqlite":
        url = f"sqlite:///{RESULTS / f'{kind}-{size}-{live}.db'}"
    else:
        url = (
            make_url(POSTGRES)
            .set(database=f"authority_bench_{size}_{live}")
            .render_as_string(hide_password=False)
        )
    if meta.exists() and _database_exists(kind, url):
        saved = json.loads(meta.read_text())
        return Database(url, saved["tokens"], saved["pepper_hex"])
    _drop(kind, url)
    pepper_hex = secrets.token_hex(32)
    print(f"  seeding {kind} with {size:,} tokens ...", flush=True)
    started = time.perf_counter()
    tokens = seed(url, size, live, bytes.fromhex(pepper_hex))
    print(f"  seeded in {time.perf_counter() - started:.1f} s", flush=True)
    meta.write_text(json.dumps({"tokens": tokens, "pepper_hex": pepper_hex}))
    return Database(url, tokens, pepper_hex)


def _database_exists(kind: str, url: str) -> bool:
    database = make_url(url).database or ""
    if kind == "sqlite":
        return Path(database).exists()
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        row = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        return row.fetchone() is not None


def _drop(kind: str, url: str) -> None:
    database = make_url(url).database or ""
    if kind == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(database + suffix).unlink(missing_ok=True)
        return
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{database}"')


@contextmanager
def _server(
    database: Database, cache_entries: int, server: str | None = None
) -> Iterator[tuple[str, ProcessTree]]:
    """`authority serve` on a free port, until the context ends. `server`: grpcio or thin
    (`serve --server`); by default what AUTHORITY_SERVER says, else the default (thin). A thin
    server is a supervisor whose Envoy child does the work: its CPU and memory are summed over
    the process tree."""
    port = _free_port()
    env = dict(
        os.environ,
        AUTHORITY_DATABASE_URL=database.url,
        AUTHORITY_PEPPER_HEX=database.pepper_hex,
        AUTHORITY_CACHE_MAX_ENTRIES=str(cache_entries),
        AUTHORITY_LOG_LEVEL="WARNING",
        AUTHORITY_VALIDATE_BATCH_MAX="1000",
        # Longer than a run: the cache-hit rows measure hits only. A re-read costs what one
        # "cache off" Validate costs, once per token per staleness period (30 s by default).
        AUTHORITY_CACHE_MAX_STALENESS_SECONDS="3600",
        # Longer than a run: the access tokens the access-token rows present stay alive.
        AUTHORITY_ACCESS_TOKEN_MAX_TTL_SECONDS="3600",
    )
    command = [sys.executable, "-m", "authority", "serve", "--listen", f"127.0.0.1:{port}"]
    if server is not None:
        command += ["--server", server]
    process = subprocess.Popen(command, env=env)
    target = f"127.0.0.1:{port}"
    try:
        _wait_serving(target, process)
        yield target, ProcessTree(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_serving(target: str, process: subprocess.Popen[bytes]) -> None:
    """Until health says SERVING through the port. A listening port is not enough: Envoy
    listens before the Python behind it is up. A fresh channel per try: a channel that has
    seen the port refused waits out its reconnect backoff."""
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server on {target} exited ({process.returncode})")
        with grpc.insecure_channel(target) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the server on {target} did not start")
        time.sleep(0.1)


def _encode(messages: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(item).decode() for item in messages]


def _load(
    target: str,
    server: ProcessTree,
    method: str,
    payloads: Sequence[bytes],
    args: argparse.Namespace,
    mode: str = "unary",
    concurrency: int | None = None,
    connections: int = 1,
) -> tuple[list[float], float, float, float]:
    """Run the client processes; (latencies, measured seconds, server CPU, client CPU)."""
    spec = {
        "target": target,
        "method": method,
        "mode": mode,
        "payloads": _encode(payloads),
        "concurrency": concurrency or args.concurrency,
        "window": args.window,
        "warmup": args.warmup,
        "duration": args.duration,
        "connections": connections,
    }
    clients = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.load"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(args.clients)
    ]
    for client in clients:
        assert client.stdin is not None
        client.stdin.write(json.dumps(spec))
        client.stdin.close()
    server_cpu = server_cpu_in_window(server, args)
    latencies: list[float] = []
    client_cpu = 0.0
    for client in clients:
        assert client.stdout is not None
        report = json.loads(client.stdout.read())
        if client.wait(timeout=120) != 0:
            raise SystemExit("a load generator failed")
        latencies.extend(report["latencies"])
        client_cpu += report["cpu"] / report["wall"]
    return latencies, args.duration, server_cpu, client_cpu


@dataclass
class Scenario:
    name: str
    store: str
    unit: str
    per_call: int
    method: str
    payloads: list[bytes]
    mode: str = "unary"
    concurrency: int | None = None
    # TCP connections per client process (a server of several workers needs several).
    connections: int = 1


@dataclass
class Sample:
    rate: float
    latencies: list[float]
    server_cpu: float
    client_cpu: float


def server_cpu_in_window(server: ProcessTree, args: argparse.Namespace) -> float:
    """Cores the server used inside a load generator's measured window (started just now:
    `warmup` seconds, then `duration`), a margin from either end."""
    margin = min(0.3, args.duration / 4)
    time.sleep(args.warmup + margin)
    cpu_before = sum(server.cpu_times())
    window_started = time.perf_counter()
    time.sleep(args.duration - 2 * margin)
    return (sum(server.cpu_times()) - cpu_before) / (time.perf_counter() - window_started)


def _measure(
    target: str, server: ProcessTree, scenario: Scenario, args: argparse.Namespace
) -> Sample:
    latencies, seconds, server_cpu, client_cpu = _load(
        target,
        server,
        scenario.method,
        scenario.payloads,
        args,
        mode=scenario.mode,
        concurrency=scenario.concurrency,
        connections=scenario.connections,
    )
    return Sample(len(latencies) * scenario.per_call / seconds, latencies, server_cpu, client_cpu)


def _summarise(scenario: Scenario, size: int, samples: list[Sample], ratios: list[float]) -> Result:
    ordered = sorted(latency for sample in samples for latency in sample.latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
    return Result(
        scenario=scenario.name,
        store=scenario.store,
        size=size,
        unit=scenario.unit,
        rate=statistics.median(sample.rate for sample in samples),
        p50_ms=(statistics.median(ordered) if ordered else 0.0) * 1000,
        p99_ms=p99 * 1000,
        server_cpu=statistics.median(sample.server_cpu for sample in samples),
        client_cpu=statistics.median(sample.client_cpu for sample in samples),
        ratio=statistics.median(ratios),
        per_call=scenario.per_call,
    )


def _compare(
    target: str,
    server: ProcessTree,
    baseline: Scenario,
    scenarios: list[Scenario],
    size: int,
    args: argparse.Namespace,
) -> list[Result]:
    """Alternate baseline and scenarios for several rounds; each ratio is taken against the
    baseline of its own round, and the median over rounds is reported. Two cores are shared
    by server and clients, so neighbouring measurements are what make a ratio honest."""
    base_samples: list[Sample] = []
    samples: dict[str, list[Sample]] = {scenario.name: [] for scenario in scenarios}
    ratios: dict[str, list[float]] = {scenario.name: [] for scenario in scenarios}
    for _ in range(args.rounds):
        base = _measure(target, server, baseline, args)
        base_samples.append(base)
        for scenario in scenarios:
            sample = _measure(target, server, scenario, args)
            samples[scenario.name].append(sample)
            ratios[scenario.name].append(sample.rate / base.rate)
    results = [_summarise(baseline, size, base_samples, [1.0] * len(base_samples))]
    for scenario in scenarios:
        results.append(_summarise(scenario, size, samples[scenario.name], ratios[scenario.name]))
    return results


def _check(target: str, request: pb.ValidateRequest) -> None:
    """Refuse to measure a misconfigured run: the prebuilt token must validate."""
    with grpc.insecure_channel(target) as channel:
        answer = token_authority_pb2_grpc.TokenAuthorityStub(channel).Validate(request)
    if not answer.valid:
        raise SystemExit(f"bench token did not validate: {pb.Reason.Name(answer.reason)}")


def _warm(target: str, tokens: Sequence[str]) -> None:
    """Load every live token into the cache first, so that no miss lands in a measurement."""
    request = pb.ValidateBatchRequest(requests=[pb.ValidateRequest(token=t) for t in tokens])
    with grpc.insecure_channel(target) as channel:
        answers = token_authority_pb2_grpc.TokenAuthorityStub(channel).ValidateBatch(request)
    if not all(answer.valid for answer in answers.results):
        raise SystemExit("bench tokens did not all validate")


def _validate_payloads(tokens: Sequence[str]) -> list[bytes]:
    return [
        pb.ValidateRequest(token=token, permission="download").SerializeToString()
        for token in tokens
    ]


def _exchange(target: str, keys: Sequence[str]) -> list[str]:
    """One access token per key, exchanged before the measurements. Every key must exchange:
    failed exchanges are rate-limited, so a bad key would spoil the ExchangeKey row."""
    with grpc.insecure_channel(target) as channel:
        stub = token_authority_pb2_grpc.TokenAuthorityStub(channel)
        pending = [stub.ExchangeKey.future(pb.ExchangeKeyRequest(key=key)) for key in keys]
        try:
            return [call.result().access_token for call in pending]
        except grpc.RpcError as error:
            raise SystemExit(f"a bench key did not exchange: {error}") from None


@dataclass
class Offline:
    """Offline verification in one process (bench/offline.py), verifications/s and CPU share:
    with the verifier's default cache (1,024 tokens: the LIVE_TOKENS presented all fit, so each
    signature is checked once), and with none (a signature check per verification)."""

    tokens: int
    cached: tuple[float, float]
    uncached: tuple[float, float]


def _offline(
    target: str, access_tokens: list[str], args: argparse.Namespace, cache_size: int | None
) -> tuple[float, float]:
    """(median verifications/s over `rounds` windows of half a measurement, CPU share)."""
    spec = {
        "target": target,
        "tokens": access_tokens,
        "permission": "download",
        "cache_size": cache_size,
        "warmup": args.warmup,
        "windows": args.rounds,
        "seconds": args.duration / 2,
    }
    completed = subprocess.run(
        [sys.executable, "-m", "bench.offline"],
        input=json.dumps(spec),
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit("the offline verification run failed")
    report = json.loads(completed.stdout)
    return statistics.median(report["rates"]), report["cpu"]


def _ping(tokens: Sequence[str], label: str) -> Scenario:
    # Ping carries as many bytes as a Validate request.
    payloads = [pb.PingRequest(payload=token + "download").SerializeToString() for token in tokens]
    return Scenario(f"Ping (empty RPC){label}", "-", "calls", 1, f"{SERVICE}/Ping", payloads)


def _cache_hits(tokens: Sequence[str]) -> list[Scenario]:
    """Validate, ValidateBatch of 100 and ValidateStream of warmed (cached) SQLite tokens."""
    unary = _validate_payloads(tokens)
    batch = [
        pb.ValidateBatchRequest(
            requests=[
                pb.ValidateRequest(token=t, permission="download") for t in tokens[i : i + 100]
            ]
        ).SerializeToString()
        for i in range(0, len(tokens), 100)
    ]
    return [
        Scenario("Validate, cache hit", "sqlite", "calls", 1, f"{SERVICE}/Validate", unary),
        Scenario(
            "ValidateBatch of 100",
            "sqlite",
            "tokens",
            100,
            f"{SERVICE}/ValidateBatch",
            batch,
            concurrency=4,
        ),
        Scenario(
            "ValidateStream",
            "sqlite",
            "msgs",
            1,
            f"{SERVICE}/ValidateStream",
            unary,
            mode="stream",
            concurrency=2,
        ),
    ]


def run_size(size: int, args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    sqlite = _prepared("sqlite", size)
    unary = _validate_payloads(sqlite.tokens)
    with _server(sqlite, 100_000) as (target, server):
        _check(target, pb.ValidateRequest(token=sqlite.tokens[0], permission="download"))
        _warm(target, sqlite.tokens)
        results += _compare(
            target,
            server,
            _ping(sqlite.tokens, ", baseline"),
            _cache_hits(sqlite.tokens),
            size,
            args,
        )
    with _server(sqlite, 0) as (target, server):
        _check(target, pb.ValidateRequest(token=sqlite.tokens[0], permission="download"))
        results += _compare(
            target,
            server,
            _ping(sqlite.tokens, ", cache-off server"),
            [Scenario("Validate, cache off", "sqlite", "calls", 1, f"{SERVICE}/Validate", unary)],
            size,
            args,
        )
    if not args.no_postgres:
        postgres = _prepared("postgres", size)
        with _server(postgres, 0) as (target, server):
            _check(target, pb.ValidateRequest(token=postgres.tokens[0], permission="download"))
            results += _compare(
                target,
                server,
                _ping(postgres.tokens, ", PostgreSQL server"),
                [
                    Scenario(
                        "Validate, cache off",
                        "postgres",
                        "calls",
                        1,
                        f"{SERVICE}/Validate",
                        _validate_payloads(postgres.tokens),
                    )
                ],
                size,
                args,
            )
    return results


def run_access_tokens(size: int, args: argparse.Namespace) -> tuple[list[Result], Offline]:
    """ExchangeKey, RefreshToken and Validate of an access token, against a Ping as large as
    the access-token requests; then offline verification. They run at one size only: their
    cost does not depend on how many tokens are stored (the key comes from the Validate
    cache, and the exchange's audit event is an append)."""
    sqlite = _prepared("sqlite", size)
    with _server(sqlite, 100_000) as (target, server):
        access_tokens = _exchange(target, sqlite.tokens)
        _warm(target, access_tokens)
        results = _compare(
            target,
            server,
            _ping(access_tokens, ", access-token-sized"),
            [
                Scenario(
                    "ExchangeKey",
                    "sqlite",
                    "calls",
                    1,
                    f"{SERVICE}/ExchangeKey",
                    [pb.ExchangeKeyRequest(key=key).SerializeToString() for key in sqlite.tokens],
                ),
                Scenario(
                    "RefreshToken",
                    "sqlite",
                    "calls",
                    1,
                    f"{SERVICE}/RefreshToken",
                    [
                        pb.RefreshTokenRequest(access_token=token).SerializeToString()
                        for token in access_tokens
                    ],
                ),
                Scenario(
                    "Validate, access token (cache hit)",
                    "sqlite",
                    "calls",
                    1,
                    f"{SERVICE}/Validate",
                    _validate_payloads(access_tokens),
                ),
            ],
            size,
            args,
        )
        offline = Offline(
            len(access_tokens),
            cached=_offline(target, access_tokens, args, None),
            uncached=_offline(target, access_tokens, args, 0),
        )
    return results, offline


def measure_memory(entries: int) -> tuple[float, float, float]:
    """Server memory (MB, PSS over its processes) before and after caching `entries` tokens,
    and MB per 100k entries."""
    database = _prepared("sqlite", entries, live=entries)
    batches = [
        pb.ValidateBatchRequest(
            requests=[pb.ValidateRequest(token=t) for t in database.tokens[i : i + 1000]]
        )
        for i in range(0, len(database.tokens), 1000)
    ]
    with _server(database, entries) as (target, server), grpc.insecure_channel(target) as channel:
        stub = token_authority_pb2_grpc.TokenAuthorityStub(channel)
        stub.Validate(pb.ValidateRequest(token=database.tokens[0]))
        before = server.memory_mb()
        for request in batches:
            answers = stub.ValidateBatch(request)
            assert all(answer.valid for answer in answers.results)
        after = server.memory_mb()
    return before, after, (after - before) * 100_000 / entries


def _table(results: list[Result]) -> str:
    header = (
        "| scenario | store | stored tokens | rate | ratio to Ping | p50 ms | p99 ms "
        "| server CPU | server µs per call | client CPU |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.store} | {r.size:,} | {r.rate:,.0f} {r.unit}/s | {r.ratio:.2f}x "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.server_cpu:.0%} "
            f"| {r.server_cpu * r.per_call / r.rate * 1e6:.0f} | {r.client_cpu:.0%} |"
        )
    return "\n".join(lines)


def _targets(results: list[Result], memory_mb: float) -> str:
    """The issue's targets, each with the measured figure and whether it is met."""

    def find(name: str, store: str, size: int) -> Result | None:
        return next(
            (r for r in results if r.scenario == name and r.store == store and r.size == size),
            None,
        )

    lines = ["| target | measured | met |", "|---|---|---|"]

    def add(label: str, value: float, goal: float, unit: str = "x", below: bool = False) -> None:
        met = value <= goal if below else value >= goal
        lines.append(f"| {label} | {value:.2f}{unit} | {'yes' if met else 'NO'} |")

    sizes = sorted({r.size for r in results})
    for size in sizes:
        hit = find("Validate, cache hit", "sqlite", size)
        batch = find("ValidateBatch of 100", "sqlite", size)
        stream = find("ValidateStream", "sqlite", size)
        off = find("Validate, cache off", "sqlite", size)
        if hit:
            add(f"cache-hit Validate / Ping >= 0.90 ({size:,} stored)", hit.ratio, 0.90)
        if hit and batch:
            add(f"Batch-100 tokens/s / unary Validate >= 30 ({size:,})", batch.rate / hit.rate, 30)
        if hit and stream:
            add(f"Stream msgs/s / unary Validate >= 2 ({size:,})", stream.rate / hit.rate, 2)
        if off:
            add(f"cache-off Validate (SQLite) / Ping >= 0.40 ({size:,})", off.ratio, 0.40)
        refresh = find("RefreshToken", "sqlite", size)
        signed_hit = find("Validate, access token (cache hit)", "sqlite", size)
        if refresh:
            add(f"RefreshToken / Ping >= 0.80 ({size:,})", refresh.ratio, 0.80)
        if signed_hit:
            add(
                f"cache-hit Validate of an access token / Ping >= 0.80 ({size:,})",
                signed_hit.ratio,
                0.80,
            )
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        for r in results:
            if r.size != large or r.scenario.startswith("Ping"):
                continue
            other = find(r.scenario, r.store, small)
            if other:
                add(
                    f"{r.scenario} ({r.store}) ratio at {large:,} vs {small:,}: within 10%",
                    abs(r.ratio / other.ratio - 1) * 100,
                    10,
                    unit="%",
                    below=True,
                )
    add(
        "server memory (PSS) with 100,000 cached entries < 300 MB",
        memory_mb,
        300,
        unit=" MB",
        below=True,
    )
    return "\n".join(lines)


def _offline_line(results: list[Result], offline: Offline | None) -> str:
    """Offline verification as a multiple of the unary Validate of the same tokens."""
    hit = next((r for r in results if r.scenario == "Validate, access token (cache hit)"), None)
    if offline is None or hit is None:
        return ""
    (cached, cached_cpu), (uncached, uncached_cpu) = offline.cached, offline.uncached
    return (
        f"Offline verification (authority.client.OfflineVerifier, one process, "
        f"{offline.tokens:,} access tokens in turn), against the unary Validate of the same "
        f"tokens (cache hit, {hit.rate:,.0f} calls/s) in the same run: {cached:,.0f} "
        f"verifications/s at {cached_cpu:.0%} CPU with the verifier's default cache "
        f"({cached / hit.rate:.1f}x), {uncached:,.0f}/s at {uncached_cpu:.0%} CPU with "
        f"cache_size=0, a signature check each ({uncached / hit.rate:.1f}x).\n\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--sizes", default="10000,1000000", help="stored tokens, comma-separated")
    parser.add_argument("--duration", type=float, default=2.5, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=0.7)
    parser.add_argument("--rounds", type=int, default=5, help="baseline/scenario alternations")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight per client")
    parser.add_argument("--window", type=int, default=64, help="messages in flight per stream")
    parser.add_argument("--rss-entries", type=int, default=100_000)
    parser.add_argument("--no-postgres", action="store_true")
    replicas = parser.add_argument_group("several processes on one database (bench/propagation.py)")
    replicas.add_argument("--revocations", type=int, default=200, help="revocations timed")
    replicas.add_argument(
        "--propagation-load",
        type=float,
        default=1000,
        help="Validate calls/s per replica meanwhile",
    )
    replicas.add_argument("--propagation-timeout", type=float, default=2.0, help="seconds")
    replicas.add_argument(
        "--replica-rounds", type=int, default=3, help="rounds of the feed and --workers rows"
    )
    replicas.add_argument(
        "--feed-writes", type=float, default=20, help="changes/s while the feed cost is measured"
    )
    replicas.add_argument("--no-replicas", action="store_true", help="skip this part")
    thin = parser.add_argument_group("the thin server against grpcio (bench/thin.py)")
    thin.add_argument("--thin-size", type=int, default=10_000, help="stored tokens")
    skip = thin.add_mutually_exclusive_group()
    skip.add_argument("--no-thin", action="store_true", help="skip this part")
    skip.add_argument("--only-thin", action="store_true", help="run this part alone")
    args = parser.parse_args()
    print(
        f"Token Authority benchmark: {os.cpu_count()} cores, {args.clients} client processes",
        flush=True,
    )
    command = "make bench" + (f" BENCH_ARGS='{' '.join(sys.argv[1:])}'" if sys.argv[1:] else "")
    when = time.strftime("%Y-%m-%d")
    if args.only_thin:
        _write(f"{_thin(args)}\n\nProduced by `{command}` on {when}.\n")
        return
    results: list[Result] = []
    offline: Offline | None = None
    for size in (int(item) for item in args.sizes.split(",")):
        print(f"- {size:,} stored tokens", flush=True)
        results.extend(run_size(size, args))
        if offline is None:
            print(f"- access tokens ({size:,} stored tokens)", flush=True)
            access_results, offline = run_access_tokens(size, args)
            results.extend(access_results)
    table = _table(results)
    before, after, per_100k = measure_memory(args.rss_entries)
    targets = _targets(results, before + per_100k)
    several = ""
    if not args.no_replicas:
        # Imported here: bench.propagation imports this module by name.
        from bench import propagation

        several = propagation.run(args) + "\n\n"
    thin_section = "" if args.no_thin else _thin(args) + "\n\n"
    rss = (
        f"Server ({_measured_server()}) memory, PSS summed over its processes: "
        f"{before:.0f} MB at start, {after:.0f} MB with {args.rss_entries:,} "
        f"cached entries ({per_100k:.0f} MB per 100,000 entries)."
    )
    offline_line = _offline_line(results, offline)
    _write(
        f"{table}\n\n{rss}\n\n{offline_line}{targets}\n\n{several}{thin_section}"
        f"Produced by `{command}` on {when}.\n"
    )


def _measured_server() -> str:
    """The server the main table measured: `authority serve`'s default unless the
    environment chose (AUTHORITY_SERVER=grpcio measures the fallback)."""
    from authority.settings import Settings

    return Settings.from_env().server


def _thin(args: argparse.Namespace) -> str:
    # Imported here, as bench.propagation: bench.thin imports this module by name.
    from bench import thin

    return thin.run(args)


def _write(report: str) -> None:
    print()
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(report)


if __name__ == "__main__":
    main()
