"""The `authority` command as an operator runs it: real subprocesses on a SQLite file in tmp."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from authority.client import TokenAuthorityClient
from authority.domain.token_format import SCANNER_REGEX
from tests.harness import serve
from tests.integration.test_grpcurl import served_process

BIN = Path(sys.executable).parent
AUTHORITY = BIN / "authority"
TOKEN_RE = re.compile(SCANNER_REGEX)


def _environment(directory: Path, **extra: str) -> dict[str, str]:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("AUTHORITY_")
    }
    environment["AUTHORITY_DATABASE_URL"] = _database_url(directory)
    environment["AUTHORITY_PEPPER_FILE"] = str(directory / "pepper")
    environment.update(extra)
    return environment


def _database_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'authority.db'}"


def authority(directory: Path, *arguments: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AUTHORITY), *arguments],
        env=_environment(directory, **extra),
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _pepper_hex(directory: Path) -> str:
    return (directory / "pepper").read_text().strip()


def test_bootstrap_prints_the_token_once_alone_on_its_last_line_and_it_validates(
    tmp_path: Path,
) -> None:
    completed = authority(tmp_path, "bootstrap")

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    token = lines[-1]
    assert TOKEN_RE.fullmatch(token), lines
    assert completed.stdout.count(token) == 1 and token not in completed.stderr
    assert all(TOKEN_RE.search(line) is None for line in lines[:-1])
    # The pepper was created for this deployment, readable by its owner only.
    assert stat.S_IMODE((tmp_path / "pepper").stat().st_mode) == 0o600
    with (
        serve(_database_url(tmp_path), pepper_hex=_pepper_hex(tmp_path)) as server,
        TokenAuthorityClient(server.address, token=token) as client,
    ):
        result = client.validate(token, "authority.v1.Admin.CreateOrganization")
        organization = client.create_organization("first-org")
    assert (result.valid, result.subject, result.organization, result.scopes) == (
        True,
        "admin",
        "",
        ("*",),
    )
    assert organization.name == "first-org"


def test_bootstrap_quiet_prints_only_the_token(tmp_path: Path) -> None:
    completed = authority(tmp_path, "bootstrap", "--quiet", "--name", "root")

    assert completed.returncode == 0, completed.stderr
    assert TOKEN_RE.fullmatch(completed.stdout.removesuffix("\n"))


def test_second_bootstrap_refuses_clearly_and_prints_no_token(tmp_path: Path) -> None:
    first = authority(tmp_path, "bootstrap")
    again = authority(tmp_path, "bootstrap")
    other_name = authority(tmp_path, "bootstrap", "--name", "mallory")

    assert first.returncode == 0, first.stderr
    for refused in (again, other_name):
        assert refused.returncode != 0
        assert "global administrator already exists" in refused.stderr
        assert TOKEN_RE.search(refused.stdout + refused.stderr) is None
        assert "Traceback" not in refused.stderr
    # The first administrator's token still works.
    token = first.stdout.splitlines()[-1]
    with (
        serve(_database_url(tmp_path), pepper_hex=_pepper_hex(tmp_path)) as server,
        TokenAuthorityClient(server.address) as client,
    ):
        assert client.validate(token).valid


def test_migrate_is_idempotent_and_keeps_the_data(tmp_path: Path) -> None:
    first = authority(tmp_path, "migrate")
    bootstrap = authority(tmp_path, "bootstrap", "--quiet")
    second = authority(tmp_path, "migrate")

    for completed in (first, bootstrap, second):
        assert completed.returncode == 0, completed.stderr
    assert "newest schema" in first.stdout and first.stdout == second.stdout
    with sqlite3.connect(tmp_path / "authority.db") as database:
        versions = database.execute("SELECT version_num FROM alembic_version").fetchall()
        principals = database.execute("SELECT name FROM principals").fetchall()
    assert len(versions) == 1
    assert principals == [("admin",)]


@pytest.mark.parametrize(
    "database_url",
    ["nosuchdriver://db.example/authority", "postgresql://postgres@127.0.0.1:1/authority"],
    ids=["unknown-driver", "database-down"],
)
def test_an_unusable_database_url_fails_with_a_one_line_message_not_a_traceback(
    tmp_path: Path, database_url: str
) -> None:
    completed = authority(tmp_path, "migrate", AUTHORITY_DATABASE_URL=database_url)

    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr, completed.stderr
    assert completed.stderr.startswith("authority: "), completed.stderr


def test_hint_prints_grpcurl_lines_that_work_when_pasted_twice(tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    bootstrap = authority(tmp_path, "bootstrap", "--quiet")
    assert bootstrap.returncode == 0, bootstrap.stderr
    token_file.write_text(bootstrap.stdout)

    with serve(_database_url(tmp_path), pepper_hex=_pepper_hex(tmp_path)) as server:
        hint = authority(
            tmp_path, "hint", "--listen", server.address, "--token-file", str(token_file)
        )
        assert hint.returncode == 0, hint.stderr
        block = _pasted_block(hint.stdout)
        assert f"grpcurl -plaintext {server.address} list" in block
        # Pasted into a shell with .venv/bin on PATH, as the hint says, and pasted again.
        environment = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        first, second = (_paste(block, environment, tmp_path) for _ in range(2))
        with TokenAuthorityClient(server.address, token=bootstrap.stdout.strip()) as client:
            created = [organization.name for organization in client.list_organizations()]
            listed = [list(client.list_tokens(name)) for name in created]

    for output in (first, second):
        assert output.returncode == 0, output.stderr
        assert '"secret": "tka_' in output.stdout
    assert len(created) == 2 and all(name.startswith("acme-") for name in created)
    assert [[token.scopes for token in tokens] for tokens in listed] == [[("download",)]] * 2


def test_hint_lines_work_when_pasted_in_a_fresh_terminal_in_another_directory(
    tmp_path: Path,
) -> None:
    # As `make run` calls it: the token file relative to the checkout, grpcurl in .venv/bin.
    bootstrap = authority(tmp_path, "bootstrap", "--quiet")
    assert bootstrap.returncode == 0, bootstrap.stderr
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "admin-token").write_text(bootstrap.stdout)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fresh_shell = {
        name: value for name, value in os.environ.items() if not name.startswith("AUTHORITY_")
    }
    fresh_shell["PATH"] = os.pathsep.join(
        entry for entry in os.environ["PATH"].split(os.pathsep) if Path(entry) != BIN
    )

    with serve(_database_url(tmp_path), pepper_hex=_pepper_hex(tmp_path)) as server:
        hint = authority(
            tmp_path, "hint", "--listen", server.address, "--token-file", "var/admin-token"
        )
        assert hint.returncode == 0, hint.stderr
        output = _paste(_pasted_block(hint.stdout), fresh_shell, elsewhere)

    assert output.returncode == 0, output.stderr
    assert str(tmp_path / "var" / "admin-token") in hint.stdout
    assert '"secret": "tka_' in output.stdout


def test_hint_defaults_to_the_configured_listen_address(tmp_path: Path) -> None:
    completed = authority(tmp_path, "hint", AUTHORITY_LISTEN="127.0.0.1:6123")

    assert completed.returncode == 0, completed.stderr
    assert "grpcurl -plaintext 127.0.0.1:6123 list" in completed.stdout


def _pasted_block(text: str) -> str:
    """The lines a hint asks to paste: the indented ones, as a person selects them."""
    return "\n".join(line.strip() for line in text.splitlines() if line.startswith("  "))


def _paste(block: str, environment: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The block run as one terminal runs pasted lines, stopping at the first failure."""
    return subprocess.run(
        ["bash", "-e", "-c", block],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_unknown_log_level_is_refused_in_one_line(tmp_path: Path) -> None:
    completed = authority(tmp_path, "migrate", AUTHORITY_LOG_LEVEL="LOUD")

    assert completed.returncode == 1
    assert (
        completed.stderr == "authority: log level 'LOUD': use one of DEBUG, INFO, WARNING, ERROR\n"
    )


def test_served_calls_are_logged_as_json_lines_without_secrets(tmp_path: Path) -> None:
    with served_process(tmp_path) as served:
        token = served.admin_token
        with TokenAuthorityClient(served.address, token=token, timeout=30) as client:
            client.create_organization("acme")
            client.validate(token)
    log = served.log.read_text()

    entries = [json.loads(line) for line in log.splitlines()]
    assert any(
        entry["msg"] == "rpc"
        and entry["rpc_method"] == "authority.v1.Admin.CreateOrganization"
        and entry["rpc_status"] == "OK"
        and entry["token_id"] == token[4:20]
        and entry["duration_ms"] >= 0
        for entry in entries
    )
    assert token not in log
    assert token[21:] not in log
