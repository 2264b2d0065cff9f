"""The installation (issue 7): the pepper check, the last global-administrator token, global
tokens, break-glass and bootstrap. Each test has a database of its own: these tests lock
administrators out and change installation-wide facts, which the session's deployment must
never see. The `authority` commands run as real subprocesses, as an operator runs them.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from authority.domain.token_format import SCANNER_REGEX
from authority.server import STOP_GRACE, STOP_MARGIN
from authority.v1 import admin_pb2, token_authority_pb2_grpc
from authority.v1 import token_authority_pb2 as pb
from tests.harness import (
    PEPPER_HEX,
    ServerHandle,
    bearer,
    serve,
    unique,
)
from tests.integration.conftest import Fresh
from tests.integration.helpers import (
    Credential,
    Metadata,
    credential,
    error_reason,
    make_principal,
    refused,
    validate,
)

OTHER_PEPPER_HEX = "cd" * 32
TOKEN_RE = re.compile(SCANNER_REGEX)
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
# A refusing command exits within this; a healthy `serve` logs `serving` within it.
QUICK_SECONDS = 15.0


def environment(database_url: str, pepper_hex: str = PEPPER_HEX) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("AUTHORITY_")}
    env["AUTHORITY_DATABASE_URL"] = database_url
    env["AUTHORITY_PEPPER_HEX"] = pepper_hex
    env["AUTHORITY_LOG_LEVEL"] = "INFO"
    return env


def authority(
    directory: Path, database_url: str, *arguments: str, pepper_hex: str = PEPPER_HEX
) -> subprocess.CompletedProcess[str]:
    """`python -m authority ...`, which must end quickly (a serving process is a failure)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "authority", *arguments],
            env=environment(database_url, pepper_hex),
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=QUICK_SECONDS,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"`authority {' '.join(arguments)}` did not end: {expired.stderr!r}")


def authority_all(
    directory: Path,
    database_url: str,
    commands: Sequence[Sequence[str]],
    pepper_hex: str = PEPPER_HEX,
) -> list[subprocess.CompletedProcess[str]]:
    """Several `authority` commands at once (each takes a second or so to start)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(
            pool.map(
                lambda arguments: authority(
                    directory, database_url, *arguments, pepper_hex=pepper_hex
                ),
                commands,
            )
        )


def log_lines(stderr: str) -> list[dict[str, object]]:
    """The JSON log lines of a command's stderr."""
    lines = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def revoke(server: ServerHandle, by: Credential, token_id: str) -> pb.Token:
    revoked: pb.Token = server.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=token_id), metadata=by.metadata
    )
    return revoked


def issue_global(server: ServerHandle, by: Credential, **fields: Any) -> Credential:
    """Another global-administrator token (organization empty), issued by a global one."""
    issued = server.tokens.IssueToken(
        pb.IssueTokenRequest(organization="", label=unique("global"), scopes=["*"], **fields),
        metadata=by.metadata,
    )
    return credential(issued)


def can_create_an_organization(server: ServerHandle, token: str) -> bool:
    name = unique("org")
    created = server.admin.CreateOrganization(
        admin_pb2.CreateOrganizationRequest(name=name), metadata=bearer(token)
    )
    return bool(created.name == name)


# -- 4. the pepper ------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["grpcio", "thin"])
def test_serve_refuses_a_database_first_used_with_another_pepper_and_starts_with_its_own(
    blank_database: str, tmp_path: Path, server: str
) -> None:
    with serve(blank_database):  # first use: records PEPPER_HEX's fingerprint
        pass

    started = time.monotonic()
    completed = authority(
        tmp_path,
        blank_database,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--server",
        server,
        pepper_hex=OTHER_PEPPER_HEX,
    )

    assert completed.returncode != 0, completed.stderr
    assert time.monotonic() - started < QUICK_SECONDS
    assert "AUTHORITY_PEPPER_HEX" in completed.stderr, completed.stderr
    assert all(line.get("msg") != "serving" for line in log_lines(completed.stderr))
    assert OTHER_PEPPER_HEX not in completed.stderr and PEPPER_HEX not in completed.stderr

    # With the pepper the database was first used with, it serves.
    process = subprocess.Popen(
        [sys.executable, "-m", "authority", "serve", "--listen", "127.0.0.1:0", "--server", server],
        env=environment(blank_database),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        listen = _wait_for_serving(process, seen)
        with grpc.insecure_channel(listen) as channel:
            stub = token_authority_pb2_grpc.TokenAuthorityStub(channel)
            assert stub.Ping(pb.PingRequest(payload="x"), timeout=5).payload == "x"
    finally:
        process.terminate()
        try:
            # Past the server's own deadline for stopping, which ends it with a reason.
            process.wait(timeout=STOP_GRACE + STOP_MARGIN + QUICK_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stderr is not None
        seen.append(process.stderr.read())
    assert process.returncode == 0, "".join(seen)


def _wait_for_serving(process: subprocess.Popen[str], seen: list[str]) -> str:
    """The address of `authority serve` once it logs `serving`; fails if it ends first."""
    assert process.stderr is not None
    deadline = time.monotonic() + QUICK_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([process.stderr], [], [], remaining)
        if not ready:
            break
        line = process.stderr.readline()
        if not line:
            pytest.fail(f"`authority serve` ended ({process.wait()}): {''.join(seen)}")
        seen.append(line)
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("msg") == "serving":
                return str(entry["listen"])
    pytest.fail(f"`authority serve` did not log `serving` in time: {''.join(seen)}")


def test_bootstrap_and_break_glass_refuse_another_pepper_and_change_nothing(
    blank_database: str, tmp_path: Path
) -> None:
    with serve(blank_database):
        pass

    for command in ("bootstrap", "break-glass"):
        completed = authority(
            tmp_path, blank_database, command, "--quiet", pepper_hex=OTHER_PEPPER_HEX
        )
        assert completed.returncode != 0, (command, completed.stdout)
        assert "AUTHORITY_PEPPER_HEX" in completed.stderr, (command, completed.stderr)
        assert TOKEN_RE.search(completed.stdout) is None
        assert TOKEN_RE.search(completed.stderr) is None

    # The refused bootstrap created nobody: the right pepper still bootstraps.
    completed = authority(tmp_path, blank_database, "bootstrap", "--quiet")
    assert completed.returncode == 0, completed.stderr
    assert TOKEN_RE.fullmatch(completed.stdout.strip())


# -- 5. the last live global-administrator token ------------------------------------------------


def refused_as_the_last_global_token(server: ServerHandle, token_id: str, bearer: Metadata) -> None:
    """RevokeToken of `token_id` is refused: it is the last live global-administrator token."""
    error = refused(
        FAILED_PRECONDITION,
        server.tokens.RevokeToken,
        pb.RevokeTokenRequest(token_id=token_id),
        bearer,
    )
    assert error_reason(error) == "LAST_GLOBAL_ADMIN_TOKEN", error.details()


def test_the_last_live_global_admin_token_cannot_be_revoked_until_another_is_issued(
    fresh: Fresh,
) -> None:
    server, admin = fresh.server, fresh.admin

    refused_as_the_last_global_token(server, admin.token_id, admin.metadata)
    assert validate(server, admin.secret).valid

    second = issue_global(server, admin)
    assert (second.token.organization, second.token.subject) == ("", "admin")
    assert not second.token.HasField("expires_at")
    assert can_create_an_organization(server, second.secret)

    assert revoke(server, second, admin.token_id).HasField("revoked_at")
    assert not validate(server, admin.secret).valid
    refused_as_the_last_global_token(server, second.token_id, second.metadata)
    assert can_create_an_organization(server, second.secret)


def test_an_expired_global_token_does_not_count_as_live(fresh: Fresh) -> None:
    server, admin = fresh.server, fresh.admin
    short = issue_global(server, admin, ttl=Duration(seconds=60))
    server.clock.advance(120)
    assert not validate(server, short.secret).valid

    refused_as_the_last_global_token(server, admin.token_id, admin.metadata)
    assert validate(server, admin.secret).valid
    # The expired one is no one's last token: it may be revoked.
    assert revoke(server, admin, short.token_id).HasField("revoked_at")


def test_a_global_token_issued_by_an_expiring_global_token_inherits_its_expiry(
    fresh: Fresh,
) -> None:
    server, admin = fresh.server, fresh.admin
    short = issue_global(server, admin, ttl=Duration(seconds=3600))

    child = issue_global(server, short)
    assert child.token.expires_at == short.token.expires_at

    ordinary = make_principal(server, admin.secret)
    error = refused(
        FAILED_PRECONDITION,
        server.tokens.IssueToken,
        pb.IssueTokenRequest(organization="", subject=ordinary, scopes=["*"]),
        admin.metadata,
    )
    assert error_reason(error) == "SUBJECT_NOT_A_MEMBER", error.details()


# -- break-glass and bootstrap ----------------------------------------------------------------


def test_break_glass_issues_a_working_global_admin_token_and_logs_it(
    fresh: Fresh, tmp_path: Path
) -> None:
    completed = authority(tmp_path, fresh.database_url, "break-glass", "--name", "admin", "--quiet")

    assert completed.returncode == 0, completed.stderr
    token = completed.stdout.strip()
    assert TOKEN_RE.fullmatch(token), completed.stdout
    assert completed.stdout == f"{token}\n"
    token_id = token.split("_")[1]
    assert token not in completed.stderr and token.split("_", 2)[2] not in completed.stderr
    warnings = [
        line
        for line in log_lines(completed.stderr)
        if line.get("level") == "warning" and "break-glass" in str(line.get("msg"))
    ]
    assert len(warnings) == 1, completed.stderr
    assert warnings[0]["token_id"] == token_id

    server = fresh.server
    answer = validate(server, token, "authority.v1.Admin.CreateOrganization")
    assert (answer.valid, answer.organization, answer.subject) == (True, "", "admin")
    assert can_create_an_organization(server, token)
    record = server.tokens.GetToken(pb.GetTokenRequest(token_id=token_id), metadata=bearer(token))
    assert record.created_by == "break-glass"
    assert validate(server, fresh.admin.secret).valid, "break-glass revoked the old token"


def test_break_glass_for_someone_who_is_not_a_global_admin_fails_clearly(
    fresh: Fresh, tmp_path: Path
) -> None:
    ordinary = make_principal(fresh.server, fresh.admin.secret)

    names = ["nobody", ordinary]
    commands = [("break-glass", "--name", name) for name in names]
    outcomes = authority_all(tmp_path, fresh.database_url, commands)
    for name, completed in zip(names, outcomes, strict=True):
        assert completed.returncode != 0, completed.stdout
        assert f"{name!r} is not a global administrator" in completed.stderr, completed.stderr
        assert TOKEN_RE.search(completed.stdout + completed.stderr) is None


def test_bootstrap_after_bootstrap_refuses_and_points_at_break_glass(
    fresh: Fresh, tmp_path: Path
) -> None:
    commands = [("bootstrap", "--name", name) for name in ("admin", "someone-else")]
    for completed in authority_all(tmp_path, fresh.database_url, commands):
        assert completed.returncode != 0, completed.stdout
        assert "break-glass" in completed.stderr, completed.stderr
        assert TOKEN_RE.search(completed.stdout + completed.stderr) is None


def test_serve_on_a_taken_port_says_so_in_one_line_and_exits(
    blank_database: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"

        completed = authority(tmp_path, blank_database, "serve", "--listen", address)

    assert completed.returncode == 1, completed.stderr
    assert f"authority: cannot listen on {address}" in completed.stderr, completed.stderr
    assert "AUTHORITY_LISTEN" in completed.stderr
    assert "Traceback" not in completed.stderr
