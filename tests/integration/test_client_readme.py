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


def _run_as_written(
    marker: str, deployment: Deployment, directory: Path, times: int
) -> list[subprocess.CompletedProcess[str]]:
    """The marked block as a script, run `times` times where the README runs it: a checkout
    after `make run`, var/admin-token beside it."""
    (directory / "var").mkdir()
    (directory / "var" / "admin-token").write_text(deployment.admin_token + "\n")
    script = directory / f"{marker}.py"
    script.write_text(_block(marker, "python"))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")}
    environment["AUTHORITY_LISTEN"] = deployment.server.address
    return [
        subprocess.run(
            [sys.executable, str(script)],
            cwd=directory,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for _ in range(times)
    ]


def test_the_client_quick_start_runs_as_written_and_prints_what_the_readme_shows(
    deployment: Deployment, tmp_path: Path
) -> None:
    # It makes an organisation of its own: a second run works too.
    for run in _run_as_written("client-quickstart", deployment, tmp_path, times=2):
        assert run.returncode == 0, run.stderr
        assert run.stdout == _block("client-quickstart-output", "text")


def test_the_backend_job_example_runs_as_written_and_prints_what_the_readme_shows(
    deployment: Deployment, tmp_path: Path
) -> None:
    [run] = _run_as_written("client-job", deployment, tmp_path, times=1)

    assert run.returncode == 0, run.stderr
    assert run.stdout == _block("client-job-output", "text")
