"""`make bench`, the thin server (`serve --server thin`) against the plain grpcio server.

Both servers run at once on one SQLite database, their caches warmed. Each scenario is
measured on one then the other (the order swapped every round), for `--rounds` rounds:
- saturated, with bench/load.py as in the main table: Ping, cache-hit Validate,
  ValidateBatch of 100 and ValidateStream;
- paced at 1,000 cache-hit Validate calls/s (bench/background.py): the load a server sees
  most of its life, where fixed per-wakeup costs are not spread over many calls.
Server CPU is summed over the server's process tree: a thin server is a supervisor whose
Envoy child (with Python embedded) does the work. Each ratio is grpcio's µs of CPU per call
over the thin server's, in the same round; the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from authority.settings import Settings
from authority.thin_server import ThinServer
from authority.v1 import token_authority_pb2 as pb
from authority.v1 import token_authority_pb2_grpc
from bench.__main__ import (
    SERVICE,
    Database,
    ProcessTree,
    Sample,
    _cache_hits,
    _check,
    _measure,
    _ping,
    _prepared,
    _server,
    _warm,
    server_cpu_in_window,
)
from bench.propagation import Background

SERVERS = ("grpcio", "thin")
PACED_RATE = 1000.0
GOAL_SATURATED = 3.0
GOAL_PACED = 1.5
PING = "Ping (empty RPC)"
VALIDATE = "Validate, cache hit"
PACED = f"Validate, cache hit, paced at {PACED_RATE:,.0f} calls/s"
H2LOAD = "Validate, cache hit, h2load client"
# h2load (nghttp2, C) as the client: 4 connections of 32 streams, as grpc.aio's in the rows
# above, but costing far less than the server, so that it saturates the thin server too.
H2LOAD_ARGS = ("-c", "4", "-m", "32", "-t", "1")
# The table's name for each scenario, with the unit its µs are per.
LABELS = {
    PING: PING,
    VALIDATE: VALIDATE,
    "ValidateBatch of 100": "ValidateBatch of 100 (per token)",
    "ValidateStream": "ValidateStream (per message)",
    PACED: PACED,
    H2LOAD: f"{H2LOAD} (C, {' '.join(H2LOAD_ARGS)})",
}


@dataclass
class Running:
    target: str
    tree: ProcessTree


@dataclass
class Pair:
    """One scenario on both servers: samples per server, and grpcio µs / thin µs per round."""

    name: str
    unit: str
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {s: [] for s in SERVERS})
    ratios: list[float] = field(default_factory=list)

    def add(self, grpcio: Sample, thin: Sample) -> None:
        self.samples["grpcio"].append(grpcio)
        self.samples["thin"].append(thin)
        self.ratios.append(_us(grpcio) / _us(thin))

    def us(self, server: str) -> float:
        return statistics.median(_us(sample) for sample in self.samples[server])

    def rate(self, server: str) -> float:
        return statistics.median(sample.rate for sample in self.samples[server])

    def cores(self, server: str) -> float:
        return statistics.median(sample.server_cpu for sample in self.samples[server])

    def ratio(self) -> float:
        return statistics.median(self.ratios)


@dataclass
class Comparison:
    size: int
    rounds: int
    pairs: list[Pair]
    idle: dict[str, float]  # cores each server used with no load
    paced_errors: int
    # The engine alone (bench/floor_app.py), paced as the PACED row, one sample per round.
    floor: list[Sample] = field(default_factory=list)

    def floor_us(self) -> float:
        return statistics.median(_us(sample) for sample in self.floor)

    def ceiling(self) -> float:
        """grpcio's paced µs per call over the floor's, per round: the most any app on this
        engine could gain at PACED_RATE (median over rounds)."""
        paced = next(pair for pair in self.pairs if pair.name == PACED)
        return statistics.median(
            _us(grpcio) / _us(floor)
            for grpcio, floor in zip(paced.samples["grpcio"], self.floor, strict=True)
        )


def _us(sample: Sample) -> float:
    """Server µs of CPU per unit (call, token or message): `rate` is counted in units."""
    return sample.server_cpu / sample.rate * 1e6 if sample.rate else float("inf")


def _answers_agree(servers: dict[str, Running], database: Database) -> None:
    """Refuse to compare servers that do not answer alike: the prebuilt token validates on
    both (`_check`), and a real token and an altered one get the same answer from each."""
    token = database.tokens[0]
    requests = [
        pb.ValidateRequest(token=token, permission="download"),
        pb.ValidateRequest(token=token[:-1] + ("A" if token[-1] != "A" else "B")),
    ]
    answers: dict[str, list[pb.ValidateResponse]] = {}
    for name, running in servers.items():
        _check(running.target, requests[0])
        with grpc.insecure_channel(running.target) as channel:
            stub = token_authority_pb2_grpc.TokenAuthorityStub(channel)
            answers[name] = [stub.Validate(request) for request in requests]
        for answer in answers[name]:
            answer.ClearField("request_id")
    if answers["grpcio"] != answers["thin"]:
        raise SystemExit(f"grpcio and thin answer Validate differently: {answers}")
    if answers["thin"][1].valid:
        raise SystemExit("an altered bench token validated")


def _idle(servers: dict[str, Running], seconds: float) -> dict[str, float]:
    before = {name: sum(running.tree.cpu_times()) for name, running in servers.items()}
    started = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - started
    return {
        name: (sum(running.tree.cpu_times()) - before[name]) / elapsed
        for name, running in servers.items()
    }


def _paced(running: Running, tokens: Sequence[str], args: argparse.Namespace) -> tuple[Sample, int]:
    """Server CPU over `duration` while bench/background.py calls Validate at PACED_RATE;
    (the sample, at the rate the load achieved; failed calls)."""
    with Background([running.target], tokens, PACED_RATE) as background:
        time.sleep(args.warmup)
        before = sum(running.tree.cpu_times())
        started = time.perf_counter()
        time.sleep(args.duration)
        cores = (sum(running.tree.cpu_times()) - before) / (time.perf_counter() - started)
    return Sample(background.calls_per_second[0], [], cores, 0.0), background.errors


@contextmanager
def _floor() -> Iterator[Running]:
    """The thin server's Envoy configuration with bench/floor_app.py in place of our app."""
    server = ThinServer(Settings(listen="127.0.0.1:0"), app="bench.floor_app:app")
    server.start()
    try:
        yield Running(f"127.0.0.1:{server.port}", ProcessTree(server.pid))
    finally:
        server.stop(grace=0)


def _orders(round_number: int) -> tuple[str, ...]:
    """Swapped each round, so that a drift of the shared machine favours neither server."""
    return SERVERS if round_number % 2 == 0 else SERVERS[::-1]


def compare(size: int, args: argparse.Namespace) -> Comparison:
    database = _prepared("sqlite", size)
    scenarios = [_ping(database.tokens, ""), *_cache_hits(database.tokens)]
    pairs = [Pair(scenario.name, scenario.unit) for scenario in scenarios]
    paced = Pair(PACED, "calls")
    h2load = Pair(H2LOAD, "calls") if shutil.which("h2load") else None
    errors = 0
    floor: list[Sample] = []
    with (
        _server(database, 100_000, "grpcio") as grpcio,
        _server(database, 100_000, "thin") as thin,
        _floor() as engine,
    ):
        servers = {
            "grpcio": Running(*grpcio),
            "thin": Running(*thin),
        }
        if len(servers["thin"].tree.members()) < 2:
            raise SystemExit("the thin server has no Envoy process: is it really thin?")
        _answers_agree(servers, database)
        for running in servers.values():
            _warm(running.target, database.tokens)
        # At least 2 s: an idle server's CPU is a few clock ticks a second.
        idle = _idle(servers, max(2.0, args.duration))
        for round_number in range(args.rounds):
            for scenario, pair in zip(scenarios, pairs, strict=True):
                sampled = {
                    name: _measure(servers[name].target, servers[name].tree, scenario, args)
                    for name in _orders(round_number)
                }
                pair.add(sampled["grpcio"], sampled["thin"])
            paced_samples: dict[str, Sample] = {}
            for name in _orders(round_number):
                paced_samples[name], failed = _paced(servers[name], database.tokens, args)
                errors += failed
            paced.add(paced_samples["grpcio"], paced_samples["thin"])
            sample, failed = _paced(engine, database.tokens, args)
            floor.append(sample)
            errors += failed
            if h2load is not None:
                by_h2load = {
                    name: _h2load(servers[name], database.tokens[0], args)
                    for name in _orders(round_number)
                }
                h2load.add(by_h2load["grpcio"], by_h2load["thin"])
    measured = [*pairs, paced, *([h2load] if h2load is not None else [])]
    return Comparison(size, args.rounds, measured, idle, errors, floor)


def _h2load(running: Running, token: str, args: argparse.Namespace) -> Sample:
    """Cache-hit Validate of one token under h2load; server CPU sampled inside its measured
    window, as bench/load.py's is. h2load counts an HTTP 200 as a success whatever the
    grpc-status, so the answer was checked first (`_answers_agree`, the same request)."""
    message = pb.ValidateRequest(token=token, permission="download").SerializeToString()
    with tempfile.NamedTemporaryFile(suffix=".grpc") as body:
        body.write(b"\x00" + struct.pack(">I", len(message)) + message)
        body.flush()
        command = [
            "h2load",
            *H2LOAD_ARGS,
            "-D",
            f"{round(args.duration * 1000)}ms",
            "--warm-up-time",
            f"{round(args.warmup * 1000)}ms",
            "-d",
            body.name,
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"http://{running.target}{SERVICE}/Validate",
        ]
        client = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        cores = server_cpu_in_window(running.tree, args)
        output, _ = client.communicate(timeout=60)
    rate = re.search(r"finished in [^,]+, ([\d.]+) req/s", output)
    counts = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", output)
    failed = counts is None or int(counts[1]) == 0 or any(int(n) for n in counts.groups()[1:])
    if client.returncode != 0 or rate is None or failed:
        raise SystemExit(f"h2load failed against {running.target}:\n{output}")
    return Sample(float(rate[1]), [], cores, 0.0)


def _validate_over_ping(comparison: Comparison, server: str) -> tuple[float, float]:
    """(Validate rate / Ping rate, Validate µs / Ping µs), each the median over rounds."""
    ping = next(pair for pair in comparison.pairs if pair.name == PING)
    validate = next(pair for pair in comparison.pairs if pair.name == VALIDATE)
    rounds = list(zip(validate.samples[server], ping.samples[server], strict=True))
    return (
        statistics.median(v.rate / p.rate for v, p in rounds),
        statistics.median(_us(v) / _us(p) for v, p in rounds),
    )


def report(comparison: Comparison) -> str:
    """The section (markdown): the table, Validate against Ping, and the issue's targets."""
    lines = [
        f"Thin server (`serve --server thin`: Envoy, the hot methods on the thin path in its "
        f"embedded Python) against the plain grpcio server, {comparison.size:,} stored tokens "
        f"(SQLite), cache hits, both servers up at once, {comparison.rounds} alternating rounds "
        f"(medians; the saturated rows loaded as in the main table, the paced row by one "
        f"process at {PACED_RATE:,.0f} calls/s, the h2load row by h2load, whose client costs a "
        "fraction of the server's). Server CPU is summed over each server's "
        "process tree; ratio = grpcio µs / thin µs in the same round:",
        "",
        "| scenario | grpcio µs/call | thin µs/call | ratio | grpcio rate | thin rate "
        "| server CPU, grpcio / thin |",
        "|" + "---|" * 7,
    ]
    for pair in comparison.pairs:
        lines.append(
            f"| {LABELS[pair.name]} | {pair.us('grpcio'):.0f} | {pair.us('thin'):.0f} "
            f"| {pair.ratio():.2f}x | {pair.rate('grpcio'):,.0f} {pair.unit}/s "
            f"| {pair.rate('thin'):,.0f} {pair.unit}/s "
            f"| {pair.cores('grpcio'):.0%} / {pair.cores('thin'):.0%} |"
        )
    over_ping = {server: _validate_over_ping(comparison, server) for server in SERVERS}
    lines += [
        "",
        "Validate (cache hit) against Ping on the same server, same round: "
        + "; ".join(
            f"{server} {rate:.2f}x the rate, {cost:.2f}x the µs per call"
            for server, (rate, cost) in over_ping.items()
        )
        + " (Ping is not a hot method: on the thin server Envoy forwards it to grpcio). "
        f"With no load, grpcio used {comparison.idle['grpcio']:.1%} of a core and the thin "
        f"server {comparison.idle['thin']:.1%}.",
    ]
    paced = next(pair for pair in comparison.pairs if pair.name == PACED)
    lines += [
        "",
        f"The engine's floor at {PACED_RATE:,.0f} calls/s: an empty answer from an ASGI app "
        "that does nothing (bench/floor_app.py), in the thin server's own Envoy and pyvoy "
        f"configuration, costs {comparison.floor_us():.0f} µs per call, against "
        f"{paced.us('thin'):.0f} for the thin server's Validate. grpcio's paced Validate over it, "
        f"{comparison.ceiling():.2f}x, is the most any app on this engine could gain at this "
        "rate.",
    ]
    if comparison.paced_errors:
        lines.append(f"\n{comparison.paced_errors} paced calls failed.")
    saturated = next(pair for pair in comparison.pairs if pair.name == VALIDATE).ratio()
    by_h2load = next((pair for pair in comparison.pairs if pair.name == H2LOAD), None)
    if by_h2load is None:
        lines.append(
            "\nh2load is not installed (Debian: nghttp2-client), so its row is missing: "
            "the grpc.aio clients alone load the servers."
        )
    targets = [
        (
            f">= {GOAL_SATURATED:g}x fewer µs per call at saturation (cache-hit Validate, "
            "grpc.aio clients)",
            saturated,
            GOAL_SATURATED,
        )
    ]
    if by_h2load is not None:
        targets.append(
            (
                f">= {GOAL_SATURATED:g}x fewer µs per call at saturation (cache-hit Validate, "
                "h2load client)",
                by_h2load.ratio(),
                GOAL_SATURATED,
            )
        )
    targets.append(
        (
            f">= {GOAL_PACED:g}x at {PACED_RATE:,.0f} calls/s (cache-hit Validate)",
            paced.ratio(),
            GOAL_PACED,
        )
    )
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for label, value, goal in targets:
        lines.append(f"| {label} | {value:.2f}x | {'yes' if value >= goal else 'NO'} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    print(f"- thin server vs grpcio ({args.thin_size:,} stored tokens, SQLite)", flush=True)
    return report(compare(args.thin_size, args))
