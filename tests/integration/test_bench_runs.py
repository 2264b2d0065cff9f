"""`make bench` keeps working: a tiny run end to end (not a timed test: no figure is judged)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
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
    ):
        assert f"| {scenario} |" in report
    assert "Server RSS:" in report
    assert "| target | measured | met |" in report
