"""The README's shell sessions work when pasted: each is extracted and run as written, twice."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_grpcurl import (
    AUTHORITY,
    ServedProcess,
    _environment,
    served_process,
)

README = Path(__file__).resolve().parents[2] / "README.md"
VENV = Path(AUTHORITY).parent.parent
DEFAULT_ADDRESS = "127.0.0.1:50051"


def _block(marker: str) -> str:
    block = re.search(
        rf"<!-- {marker}:start -->\n```bash\n(.*?)```\n<!-- {marker}:end -->",
        README.read_text(),
        re.S,
    )
    assert block, f"README.md lost its marked block {marker}"
    return block.group(1)


@dataclass
class Checkout:
    """A directory laid out as a checkout after `make run`, and the server it started."""

    directory: Path
    served: ServedProcess


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    directory = tmp_path_factory.mktemp("checkout")
    (directory / "var").mkdir()
    (directory / ".venv").symlink_to(VENV)
    with served_process(directory) as served:
        (directory / "var" / "admin-token").write_text(served.admin_token + "\n")
        yield Checkout(directory, served)


def _fresh_shell(directory: Path) -> dict[str, str]:
    """A new terminal's environment: no AUTHORITY_* settings, and no .venv/bin on PATH."""
    environment = _environment(directory)
    for name in [name for name in environment if name.startswith("AUTHORITY_")]:
        del environment[name]
    environment["PATH"] = os.pathsep.join(
        entry
        for entry in environment["PATH"].split(os.pathsep)
        if Path(entry).resolve() != (VENV / "bin").resolve()
    )
    return environment


def _bash(script: str, cwd: Path, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _run_twice(checkout: Checkout, name: str) -> list[subprocess.CompletedProcess[str]]:
    """The README block `name` run as written, twice in fresh shells, against the served
    process; the two runs (each must succeed)."""
    served = checkout.served
    script = _block(name).replace(f"ADDR={DEFAULT_ADDRESS}", f"ADDR={served.address}")
    assert f"ADDR={served.address}" in script
    runs = [_bash(script, checkout.directory, _fresh_shell(checkout.directory)) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{served.log.read_text()}"
    return runs


def test_the_readme_grpcurl_session_runs_as_written_twice_against_one_server(
    checkout: Checkout,
) -> None:
    for run in _run_twice(checkout, "readme-session"):
        answers = run.stdout
        assert "authority.v1.TokenAuthority" in answers
        assert answers.count('"valid": true') == 1
        assert "REASON_PERMISSION_DENIED" in answers
        assert "REASON_REVOKED" in answers
        assert answers.index("REASON_PERMISSION_DENIED") < answers.index("REASON_REVOKED")


def test_the_readme_backend_job_flow_runs_as_written_twice_against_one_server(
    checkout: Checkout,
) -> None:
    for run in _run_twice(checkout, "readme-exchange"):
        answers = run.stdout
        assert '"refresh_until"' in answers
        assert answers.count('"valid": true') == 2  # the access token, then the refreshed one
        assert "REASON_REVOKED" in answers
        assert answers.strip().endswith("refresh refused: the key is revoked")
        assert "TOKEN_REVOKED" in run.stderr
        # The CLI's exchange and refresh each said which token they minted, on stderr.
        assert len(re.findall(r"^access token \w+: expires ", run.stderr, re.M)) == 2, run.stderr


def test_the_readme_cli_block_runs_as_written_from_a_fresh_shell_twice(
    checkout: Checkout, tmp_path: Path
) -> None:
    served = checkout.served
    block = _block("readme-cli").replace(
        f"AUTHORITY_LISTEN={DEFAULT_ADDRESS}", f"AUTHORITY_LISTEN={served.address}"
    )
    assert f"AUTHORITY_LISTEN={served.address}" in block
    # The export lines run from the checkout; everything after them, from another directory.
    setup, separator, commands = block.partition("\n\n")
    assert separator and all(line.startswith("export ") for line in setup.splitlines()), setup
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = f"{setup}\ncd {elsewhere}\n{commands}"

    runs = [_bash(script, checkout.directory, _fresh_shell(checkout.directory)) for _ in range(2)]

    organizations = []
    for run in runs:
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{served.log.read_text()}"
        lines = run.stdout.splitlines()
        assert lines[-1] == "refused (exit 2)", run.stdout
        created, issued, listed, got, valid, revoked, refused = (
            json.loads(line) for line in lines[:-1]
        )
        organizations.append(created["name"])
        assert created["display_name"] == "Acme Inc."
        assert issued["secret"].startswith("tka_")
        assert issued["token"]["properties"] == {"team": "infra"}
        assert listed["token_id"] == got["token_id"] == issued["token"]["token_id"]
        assert valid["valid"] is True and "reason" not in valid
        assert revoked["revoked_at"]
        assert (refused["valid"], refused["reason"]) == (False, "REASON_REVOKED")
    assert organizations[0] != organizations[1]
