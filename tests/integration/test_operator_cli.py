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
