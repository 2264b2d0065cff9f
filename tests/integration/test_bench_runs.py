"""`make bench` keeps working: a tiny run end to end (not a timed test: no figure is judged)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# It starts about twelve server processes one after another: slow on a busy machine.
@pytest.mark.timeout(300)
def test_the_benchmark_runs_end_to_end_and_prints_its_tables(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")}
    environment["AUTHORITY_BENCH_RESULTS"] = str(tmp_path)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--sizes",
            "50",
            "--duration",
            "0.3",
            "--warmup",
            "0.2",
            "--rounds",
            "1",
            "--clients",
            "1",
            "--concurrency",
            "4",
            "--rss-entries",
            "200",
            "--no-postgres",
            # The several-process part (bench/propagation.py), as small as it goes.
            "--revocations",
            "5",
            "--propagation-load",
            "50",
            "--replica-rounds",
            "1",
            "--feed-writes",
            "5",
            # The thin server against grpcio (bench/thin.py), on the same tiny database.
            "--thin-size",
            "50",
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=290,
    )

    assert completed.returncode == 0, completed.stderr
    report = (tmp_path / "latest.md").read_text()
    assert report in completed.stdout
    for scenario in (
        "Ping (empty RPC), baseline",
        "Validate, cache hit",
        "ValidateBatch of 100",
        "ValidateStream",
        "Validate, cache off",
        "Ping (empty RPC), access-token-sized",
        "ExchangeKey",
        "RefreshToken",
        "Validate, access token (cache hit)",
    ):
        assert f"| {scenario} |" in report
    assert "| RefreshToken / Ping >= 0.80 (50) |" in report
    assert "| cache-hit Validate of an access token / Ping >= 0.80 (50) |" in report
    # Offline verification ran with the client package's verifier, both ways.
    assert "Offline verification (authority.client.OfflineVerifier, one process" in report
    assert "with the verifier's default cache" in report
    assert "with cache_size=0" in report
    # The default server, its memory over the supervisor and Envoy.
    assert "Server (thin) memory, PSS summed over its processes: " in report
    assert "| target | measured | met |" in report
    assert "| SQLite (polls every 50 ms) | all | 15 |" in report
    assert "| all (median of 3 ratios; range " in report
    # The control: the same measurement between replicas of one setting (on/on, off/off).
    assert "| control: replica / another of the same setting (median of 6; range " in report
    assert "| --workers 1 |" in report
    assert "--workers 2 |" in report or "skipped: --workers not available" in report
    assert "revocation reaches every replica, p99 under 100 ms (SQLite" in report
    assert "the feed costs under 5%" in report
    # The thin server against grpcio: every scenario measured on both, with figures.
    header = "| scenario | grpcio µs/call | thin µs/call | ratio | grpcio rate | thin rate |"
    assert header in report
    for scenario, unit in (
        ("Ping (empty RPC)", "calls"),
        ("Validate, cache hit", "calls"),
        ("ValidateBatch of 100 (per token)", "tokens"),
        ("ValidateStream (per message)", "msgs"),
        ("Validate, cache hit, paced at 1,000 calls/s", "calls"),
    ):
        rates = rf"[\d,]+ {unit}/s \| [\d,]+ {unit}/s"
        assert re.search(
            rf"\| {re.escape(scenario)} \| \d+ \| \d+ \| [\d.]+x \| {rates} \|", report
        )
    assert "Validate (cache hit) against Ping on the same server, same round: grpcio " in report
    # The engine alone (bench/floor_app.py): what no app on it can go below, and the ceiling.
    assert re.search(r"The engine's floor at 1,000 calls/s: .* costs \d+ µs per call", report)
    assert re.search(r"grpcio's paced Validate over it, [\d.]+x, is the most", report)
    targets = [
        ">= 3x fewer µs per call at saturation (cache-hit Validate, grpc.aio clients)",
        ">= 1.5x at 1,000 calls/s (cache-hit Validate)",
    ]
    if shutil.which("h2load"):  # the cheap client's row, where nghttp2-client is installed
        row = r"\| Validate, cache hit, h2load client \(C, -c 4 -m 32 -t 1\) \| \d+ \| \d+ \| "
        assert re.search(row, report)
        targets.append(">= 3x fewer µs per call at saturation (cache-hit Validate, h2load client)")
    else:
        assert "h2load is not installed (Debian: nghttp2-client)" in report
    for target in targets:
        assert re.search(rf"\| {re.escape(target)} \| [\d.]+x \| (yes|NO) \|", report), target
