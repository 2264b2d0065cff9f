"""`authority org|token|validate`: the operator's CLI against a running server, as JSON lines;
and a job's `authority token exchange|refresh`, which print the access token alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest

from authority import cli
from authority.v1 import token_authority_pb2 as pb
from tests.conftest import Deployment
from tests.harness import bearer, unique
from tests.integration.helpers import Credential, make_org, make_org_key, validate

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


# -- a job's commands: token exchange and token refresh ----------------------------------------


def job(
    deployment: Deployment, *arguments: str, stdin: str = "", **environment: str
) -> subprocess.CompletedProcess[str]:
    """`authority token ...` as a job runs it: no bearer, the secret where `environment` or
    `stdin` puts it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")}
    return subprocess.run(
        [str(AUTHORITY), "token", *arguments, "--target", deployment.server.address],
        env={**clean, **environment},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def printed_token(completed: subprocess.CompletedProcess[str]) -> str:
    """The access token: alone on stdout, its id (never the token) on stderr."""
    assert completed.returncode == 0, completed.stderr
    token = completed.stdout.removesuffix("\n")
    assert token.count(".") == 2 and "\n" not in token, completed.stdout
    claims = jwt.decode(token, options={"verify_signature": False})
    assert completed.stderr.startswith(f"access token {claims['jti']}: expires "), completed.stderr
    assert token not in completed.stderr
    return token


@pytest.fixture
def job_key(deployment: Deployment) -> Credential:
    org = make_org(deployment.server, deployment.admin_token)
    return make_org_key(deployment.server, deployment.admin_token, org, ["download", "upload"])


def test_a_job_exchanges_its_key_from_the_environment_a_file_or_stdin_and_refreshes(
    deployment: Deployment, job_key: Credential, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(job_key.secret + "\n")
    narrowed = ("--scope", "download", "--ttl", "10m", "--audience", "storage")

    from_env = printed_token(job(deployment, "exchange", *narrowed, AUTHORITY_KEY=job_key.secret))
    from_flag = printed_token(job(deployment, "exchange", "--key-file", str(key_file)))
    from_file_env = printed_token(job(deployment, "exchange", AUTHORITY_KEY_FILE=str(key_file)))
    from_stdin = printed_token(job(deployment, "exchange", stdin=job_key.secret + "\n"))
    refreshed = printed_token(job(deployment, "refresh", AUTHORITY_ACCESS_TOKEN=from_env))
    piped = printed_token(job(deployment, "refresh", stdin=refreshed + "\n"))

    claims = jwt.decode(from_env, options={"verify_signature": False})
    assert (claims["scope"], claims["aud"], claims["exp"] - claims["iat"]) == (
        "download",
        "storage",
        600,
    )
    assert claims["parent"] == job_key.token_id
    for token in (from_flag, from_file_env, from_stdin):
        assert jwt.decode(token, options={"verify_signature": False})["scope"] == "download upload"
    renewed = jwt.decode(piped, options={"verify_signature": False})
    assert renewed["jti"] != claims["jti"] and renewed["scope"] == "download"
    assert validate(deployment.server, piped, "download").valid
    assert validate(deployment.server, piped, "upload").reason == pb.REASON_PERMISSION_DENIED


def test_json_prints_the_token_its_id_and_times_as_one_object(
    deployment: Deployment, job_key: Credential
) -> None:
    completed = job(deployment, "exchange", "--json", AUTHORITY_KEY=job_key.secret)

    [answer] = lines(completed)
    assert set(answer) == {"access_token", "token_id", "expires_at", "refresh_until"}
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    assert answer["token_id"] == claims["jti"]
    assert datetime.fromisoformat(answer["expires_at"]).timestamp() == claims["exp"]
    assert datetime.fromisoformat(answer["refresh_until"]).timestamp() == claims["refresh_until"]
    assert completed.stderr == ""
    refreshed = lines(job(deployment, "refresh", "--json", stdin=answer["access_token"]))[0]
    assert refreshed["token_id"] != answer["token_id"]
    assert refreshed["refresh_until"] == answer["refresh_until"]


def test_a_refused_exchange_or_refresh_says_why_in_one_line_and_exits_1(
    deployment: Deployment, job_key: Credential
) -> None:
    wider = job(deployment, "exchange", "--scope", "billing.read", AUTHORITY_KEY=job_key.secret)
    forged = job(deployment, "refresh", AUTHORITY_ACCESS_TOKEN="aaaa.bbbb.cccc")
    deployment.server.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=job_key.token_id), metadata=bearer(deployment.admin_token)
    )
    revoked = job(deployment, "exchange", AUTHORITY_KEY=job_key.secret)
    nothing = job(deployment, "exchange")
    bad_ttl = job(deployment, "exchange", "--ttl", "soon", AUTHORITY_KEY=job_key.secret)

    for completed, message in [
        (wider, "authority: PERMISSION_DENIED: "),
        (forged, "authority: UNAUTHENTICATED: the access token is malformed"),
        (revoked, "authority: UNAUTHENTICATED: the key was revoked"),
        (nothing, "authority: no key: set AUTHORITY_KEY, pass --key-file"),
        (bad_ttl, "authority: --ttl 'soon'"),
    ]:
        assert completed.returncode == 1, completed.stderr
        assert completed.stderr.startswith(message), completed.stderr
        assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr
        assert completed.stdout == ""
        assert job_key.secret not in completed.stderr


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
JOB_COMMANDS = [("token", "exchange"), ("token", "refresh")]


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


@pytest.mark.parametrize("command", JOB_COMMANDS, ids=" ".join)
def test_job_commands_take_a_target_but_no_bearer_and_no_server_flags(
    capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    text = _help(capsys, *command)

    assert "--target" in text and "--json" in text
    for flag in ("--token-file", *SERVER_ONLY_FLAGS):
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
