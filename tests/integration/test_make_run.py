"""`make run` as an operator types it: the address comes from AUTHORITY_LISTEN or LISTEN=.

The Makefile runs in a scratch directory beside links to this checkout (its var/ and SQLite
database land there). The install and stub stamps are marked old (`make -o`), so the run
neither reinstalls nor regenerates anything in the checkout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import grpc
import pytest
from sqlalchemy.engine import make_url

from authority.v1 import admin_pb2, admin_pb2_grpc, token_authority_pb2_grpc
from authority.v1 import token_authority_pb2 as pb
from tests.harness import POSTGRES_ADMIN_URL, bearer, drop_postgres_database
from tests.integration.test_grpcurl import _free_port, _wait_until_serving

REPOSITORY = Path(__file__).resolve().parents[2]
LINKED = ["Makefile", "pyproject.toml", "protos", "clients", ".venv"]
KEEP_AS_THEY_ARE = [".venv/.installed", "clients/python/src/authority/v1/.stamp"]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _sandbox(directory: Path) -> Path:
    for name in LINKED:
        (directory / name).symlink_to(REPOSITORY / name)
    return directory


def _environment(**extra: str) -> dict[str, str]:
    """A shell's environment with nothing of ours (or of an enclosing make) in it."""
    dropped = ("AUTHORITY_", "MAKE", "MFLAGS")
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(dropped) and name != "LISTEN"
    }
    environment.update(extra)
    return environment


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group this test started (make and the server it exec'd)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)


def _make_run(directory: Path, address: str, *arguments: str, **environment: str) -> str:
    """`make run [arguments]`, stopped once it serves on `address`; what it printed."""
    log = directory / f"make-run-{time.monotonic_ns()}.log"
    command = ["make", "--no-print-directory"]
    for stamp in KEEP_AS_THEY_ARE:
        command += ["-o", stamp]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "run", *arguments],
            cwd=directory,
            env=_environment(**environment),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_serving(process, address, log)
    finally:
        _stop_group(process)
    return log.read_text()


def test_make_run_serves_on_the_address_in_authority_listen(tmp_path: Path) -> None:
    directory = _sandbox(tmp_path)
    address = f"127.0.0.1:{_free_port()}"

    output = _make_run(directory, address, AUTHORITY_LISTEN=address)

    assert f"Token Authority is starting on {address}" in output
    assert f"grpcurl -plaintext {address} list" in output
    assert (directory / "var" / "admin-token").stat().st_mode & 0o777 == 0o600
    assert "Traceback" not in output


def test_listen_on_the_make_line_wins_over_authority_listen(tmp_path: Path) -> None:
    directory = _sandbox(tmp_path)
    dry_run = ["make", "--no-print-directory", "--dry-run"]
    for stamp in KEEP_AS_THEY_ARE:
        dry_run += ["-o", stamp]
    environment = _environment(AUTHORITY_LISTEN="127.0.0.1:6001")

    from_environment, on_the_line = (
        subprocess.run(
            [*dry_run, "run", *arguments],
            cwd=directory,
            env=environment,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        for arguments in ([], ["LISTEN=127.0.0.1:6002"])
    )

    assert "authority serve --listen 127.0.0.1:6001" in from_environment
    assert "authority serve --listen 127.0.0.1:6002" in on_the_line
    assert "127.0.0.1:6001" not in on_the_line


def test_make_run_cluster_serves_three_replicas_that_agree_on_a_revocation(
    tmp_path: Path,
) -> None:
    """`make run-cluster` as the README shows it: three replicas on one PostgreSQL database
    (a scratch one here), the administrator's token in var/, a revocation made through one
    refused by another at once."""
    directory = _sandbox(tmp_path)
    ports = [_free_port() for _ in range(3)]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    database = f"authority_cluster_{uuid.uuid4().hex[:12]}"
    log = directory / "make-run-cluster.log"
    command = ["make", "--no-print-directory"]
    for stamp in KEEP_AS_THEY_ARE:
        command += ["-o", stamp]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                *command,
                "run-cluster",
                f"CLUSTER_PORTS={' '.join(map(str, ports))}",
                f"CLUSTER_DATABASE={database}",
            ],
            cwd=directory,
            env=_environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    channels: list[grpc.Channel] = []
    try:
        for address in addresses:
            _wait_until_serving(process, address, log)
        token_file = directory / "var" / "cluster-admin-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        admin = bearer(token_file.read_text().strip())
        channels.extend(grpc.insecure_channel(address) for address in addresses)
        first, second, third = map(token_authority_pb2_grpc.TokenAuthorityStub, channels)
        admin_stub = admin_pb2_grpc.AdminStub(channels[0])
        organization = f"cluster-{uuid.uuid4().hex[:8]}"
        admin_stub.CreateOrganization(
            admin_pb2.CreateOrganizationRequest(name=organization), metadata=admin
        )
        issued = first.IssueToken(
            pb.IssueTokenRequest(organization=organization, label="cluster"), metadata=admin
        )
        check = pb.ValidateRequest(token=issued.secret)
        assert third.Validate(check, timeout=5).valid  # now in the third replica's cache

        second.RevokeToken(pb.RevokeTokenRequest(token_id=issued.token.token_id), metadata=admin)
        deadline = time.monotonic() + 1.0
        while third.Validate(check, timeout=5).valid and time.monotonic() < deadline:
            time.sleep(0.01)

        assert third.Validate(check, timeout=5).reason == pb.REASON_REVOKED
    finally:
        for channel in channels:
            channel.close()
        _stop_group(process)
        drop_postgres_database(
            make_url(POSTGRES_ADMIN_URL).set(database=database).render_as_string(False)
        )
    printed = log.read_text()
    assert f"starting 3 replicas on one database: {', '.join(addresses)}" in printed
    assert "Traceback" not in printed
