"""`authority org|token|validate`: the operator's CLI against a running server, as JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from authority import cli
from tests.conftest import Deployment
from tests.harness import unique

AUTHORITY = Path(sys.executable).parent / "authority"


def run(
    deployment: Deployment, *arguments: str, stdin: str = "", token: str | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")}
    environment["AUTHORITY_TOKEN"] = deployment.admin_token if token is None else token
    return subprocess.run(
        [str(AUTHORITY), *arguments, "--target", deployment.server.address],
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def lines(completed: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert completed.returncode == 0, completed.stderr
    return [json.loads(line) for line in completed.stdout.splitlines()]


def test_an_operator_issues_validates_lists_and_revokes_a_token_from_the_shell(
    deployment: Deployment,
) -> None:
    org = unique("ops")
    created = lines(run(deployment, "org", "create", org, "--display-name", "Ops"))
    issued = lines(
        run(
            deployment,
            "token",
            "issue",
            "--org",
            org,
            "--label",
            "ci",
            "--scope",
            "download-only",
            "--ttl",
            "30d",
            "--property",
            "team=infra",
        )
    )[0]
    secret, token_id = issued["secret"], issued["token"]["token_id"]
    download = run(deployment, "validate", "--permission", "download", stdin=secret + "\n")
    upload = run(deployment, "validate", "--permission", "upload", stdin=secret + "\n")
    listed = lines(run(deployment, "token", "list", "--org", org))
    revoked = lines(run(deployment, "token", "revoke", token_id))[0]
    after = run(deployment, "validate", "--permission", "download", stdin=secret + "\n")

    assert created == [{"name": org, "display_name": "Ops", "created_at": created[0]["created_at"]}]
    assert issued["token"]["scopes"] == ["download"]
    assert issued["token"]["properties"] == {"team": "infra"}
    lifetime = datetime.fromisoformat(issued["token"]["expires_at"]) - datetime.fromisoformat(
        issued["token"]["created_at"]
    )
    assert lifetime == timedelta(days=30)
    assert download.returncode == 0 and json.loads(download.stdout)["valid"] is True
    # A valid answer carries no reason (not even REASON_UNSPECIFIED); a refusal always does.
    assert "reason" not in json.loads(download.stdout)
    assert "REASON_UNSPECIFIED" not in download.stdout
    assert upload.returncode == 2
    assert json.loads(upload.stdout)["reason"] == "REASON_PERMISSION_DENIED"
    assert [token["token_id"] for token in listed] == [token_id]
    assert "secret" not in listed[0]
    assert revoked["revoked_at"]
    assert after.returncode == 2 and json.loads(after.stdout)["reason"] == "REASON_REVOKED"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("token", "get", "nope"), "authority: INVALID_ARGUMENT: token_id"),
        (("token", "revoke", "A" * 16), "authority: NOT_FOUND"),
        (("token", "issue", "--org", "acme", "--label", "x", "--ttl", "3"), "authority: --ttl '3'"),
        (
            ("token", "issue", "--org", "acme", "--label", "x", "--property", "novalue"),
            "authority: --property 'novalue': use key=value",
        ),
        (("org", "create", "Not A Slug"), "authority: INVALID_ARGUMENT: name"),
    ],
)
def test_a_refused_command_says_why_in_one_line_and_exits_1(
    deployment: Deployment, arguments: tuple[str, ...], message: str
) -> None:
    completed = run(deployment, *arguments)

    assert completed.returncode == 1
    assert completed.stderr.startswith(message), completed.stderr
    assert "Traceback" not in completed.stderr
    assert completed.stdout == ""


def test_without_a_bearer_the_cli_says_where_to_put_one(
    deployment: Deployment, tmp_path: Path
) -> None:
    completed = run(deployment, "org", "list", "--token-file", str(tmp_path / "missing"), token="")

    assert completed.returncode == 1
    assert "set AUTHORITY_TOKEN or pass --token-file" in completed.stderr


def test_a_bad_bearer_is_unauthenticated(deployment: Deployment) -> None:
    completed = run(deployment, "org", "list", token="garbage")

    assert completed.returncode == 1
    assert completed.stderr.startswith("authority: UNAUTHENTICATED")


def test_the_token_file_can_come_from_authority_token_file(
    deployment: Deployment, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(deployment.admin_token + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")}
    environment["AUTHORITY_TOKEN_FILE"] = str(token_file)

    completed = subprocess.run(
        [str(AUTHORITY), "org", "list", "--target", deployment.server.address],
        env=environment,
        cwd=elsewhere,  # no var/admin-token here: the file named by the environment is used
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr
    assert all("name" in json.loads(line) for line in completed.stdout.splitlines())


# -- help: client commands take client flags only ---------------------------------------------

CLIENT_COMMANDS = [
    ("org", "create"),
    ("org", "list"),
    ("token", "issue"),
    ("token", "list"),
    ("token", "get"),
    ("token", "revoke"),
    ("validate",),
]
SERVER_ONLY_FLAGS = ("--database-url", "--log-level")


def _help(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([*command, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=" ".join)
def test_client_commands_list_no_server_flags_in_their_help(
    capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    text = _help(capsys, *command)

    assert "--target" in text and "--token-file" in text
    for flag in SERVER_ONLY_FLAGS:
        assert flag not in text, f"authority {' '.join(command)} --help lists {flag}"


@pytest.mark.parametrize("command", ["serve", "migrate", "bootstrap"])
def test_server_commands_keep_their_server_flags(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    text = _help(capsys, command)

    assert all(flag in text for flag in SERVER_ONLY_FLAGS)


def test_a_server_flag_given_to_a_client_command_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["org", "list", "--database-url", "sqlite:///x.db"])

    assert exited.value.code == 2
    assert "unrecognized arguments: --database-url" in capsys.readouterr().err
