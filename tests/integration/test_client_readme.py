"""The client README's quick start runs as written against a live server and prints what the
README says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import Deployment

README = Path(__file__).resolve().parents[2] / "clients" / "python" / "README.md"


def _block(marker: str, language: str) -> str:
    block = re.search(
        rf"<!-- {marker}:start -->\n```{language}\n(.*?)```\n<!-- {marker}:end -->",
        README.read_text(),
        re.S,
    )
    assert block, f"{README} lost its marked block {marker}"
    return block.group(1)


def test_the_client_quick_start_runs_as_written_and_prints_what_the_readme_shows(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Where the README runs it: a checkout after `make run`, var/admin-token beside it.
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "admin-token").write_text(deployment.admin_token + "\n")
    script = tmp_path / "quickstart.py"
    script.write_text(_block("client-quickstart", "python"))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")}
    environment["AUTHORITY_LISTEN"] = deployment.server.address

    runs = [
        subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for _ in range(2)  # it makes an organisation of its own: a second run works too
    ]

    for run in runs:
        assert run.returncode == 0, run.stderr
        assert run.stdout == _block("client-quickstart-output", "text")


def test_the_backend_job_example_runs_as_written_and_prints_what_the_readme_shows(
    deployment: Deployment, tmp_path: Path
) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "admin-token").write_text(deployment.admin_token + "\n")
    script = tmp_path / "job.py"
    script.write_text(_block("client-job", "python"))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")}
    environment["AUTHORITY_LISTEN"] = deployment.server.address

    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout == _block("client-job-output", "text")
