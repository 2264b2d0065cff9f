"""The served process, driven as an operator does: `authority serve` and the real `grpcurl`.

grpcurl has no .proto files here: everything it knows comes from server reflection.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authority.v1 import token_authority_pb2
from tests.harness import TEST_SERVER

BIN = Path(sys.executable).parent
AUTHORITY, GRPCURL = BIN / "authority", BIN / "grpcurl"
READY_DEADLINE_SECONDS = 30.0
# grpcurl exits with 64 + the gRPC status code when a call fails.
GRPCURL_STATUS_EXIT = 64


@dataclass
class ServedProcess:
    process: subprocess.Popen[bytes]
    address: str
    admin_token: str
    log: Path
    # How it was started, for `restart`.
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    arguments: tuple[str, ...] = ()

    def restart(self) -> None:
        """Serve again on the same address (stopping it first if it still runs); returns once
        it answers SERVING."""
        _stop(self.process)
        self.process, _, _ = _start_serving(
            self.log.parent, self.environment, *self.arguments, address=self.address
        )
        _wait_until_serving(self.process, self.address, self.log)

    def grpcurl(
        self, *arguments: str, data: dict[str, Any] | None = None, token: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run grpcurl against the served process, as an operator would type it."""
        command = [str(GRPCURL), "-plaintext", "-max-time", "10"]
        if token is not None:
            command += ["-H", f"authorization: Bearer {token}"]
        if data is not None:
            command += ["-d", json.dumps(data)]
        return subprocess.run(
            [*command, self.address, *arguments], capture_output=True, text=True, timeout=30
        )

    def call(self, method: str, data: dict[str, Any], token: str | None = None) -> Any:
        """A grpcurl call that must succeed; its JSON answer."""
        completed = self.grpcurl(method, data=data, token=token)
        assert completed.returncode == 0, f"{method}: {completed.stderr}\n{self.log.read_text()}"
        return json.loads(completed.stdout)


def _environment(directory: Path, **settings: str) -> dict[str, str]:
    """No AUTHORITY_* of ours but the server the suite tests (AUTHORITY_TEST_SERVER); a SQLite
    file and a pepper file in `directory`, unless
    `settings` (AUTHORITY_<NAME>=value) say otherwise."""
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("AUTHORITY_")
    }
    environment["AUTHORITY_SERVER"] = TEST_SERVER  # the server the suite runs against
    environment["AUTHORITY_DATABASE_URL"] = f"sqlite:///{directory / 'authority.db'}"
    environment["AUTHORITY_PEPPER_FILE"] = str(directory / "pepper")
    environment.update((f"AUTHORITY_{name.upper()}", value) for name, value in settings.items())
    return environment


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_serving(process: subprocess.Popen[bytes], address: str, log: Path) -> None:
    """Poll the health service until it answers SERVING; fail early if the process died."""
    deadline = time.monotonic() + READY_DEADLINE_SECONDS
    request = health_pb2.HealthCheckRequest(service="authority.v1.TokenAuthority")
    # Retry the connection every 0.1 s, not after gRPC's default backoff (1 s, growing): the
    # server is known to come up within seconds.
    retry_soon = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 100),
    ]
    with grpc.insecure_channel(address, options=retry_soon) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                pytest.fail(f"authority serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                # wait_for_ready blocks until the port accepts or the timeout: no sleep needed.
                answer = health.Check(request, timeout=0.5, wait_for_ready=True)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"not serving after {READY_DEADLINE_SECONDS}s:\n{log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout=15)


def _start_serving(
    directory: Path, environment: dict[str, str], *arguments: str, address: str | None = None
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`authority serve [arguments]` on `address` (default: a free loopback port), its output
    appended to directory/serve.log."""
    address, log = address or f"127.0.0.1:{_free_port()}", directory / "serve.log"
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            [str(AUTHORITY), "serve", "--listen", address, *arguments],
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return process, address, log


@contextmanager
def served_process(
    directory: Path, *arguments: str, admin_token: str | None = None, **settings: str
) -> Iterator[ServedProcess]:
    """`authority bootstrap`, then `authority serve [arguments]` on a free loopback port; always
    stopped. By default on a fresh SQLite file in `directory`; `settings` are AUTHORITY_*
    values (e.g. database_url=..., pepper_hex=...), and `admin_token` skips the bootstrap for
    a database that already has its administrator."""
    environment = _environment(directory, **settings)
    if admin_token is None:
        bootstrap = subprocess.run(
            [str(AUTHORITY), "bootstrap"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bootstrap.returncode == 0, bootstrap.stderr
        admin_token = bootstrap.stdout.splitlines()[-1]
    process, address, log = _start_serving(directory, environment, *arguments)
    served = ServedProcess(process, address, admin_token, log, environment, arguments)
    try:
        _wait_until_serving(process, address, log)
        yield served
    finally:
        _stop(served.process)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProcess]:
    with served_process(tmp_path_factory.mktemp("served")) as process:
        yield process


def test_reflection_lists_the_services_and_describes_every_rpc_of_the_contract(
    served: ServedProcess,
) -> None:
    listed = served.grpcurl("list")
    described = served.grpcurl("describe", "authority.v1.TokenAuthority")
    message = served.grpcurl("describe", "authority.v1.ValidateRequest")

    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {
        "authority.v1.TokenAuthority",
        "authority.v1.Admin",
        "grpc.health.v1.Health",
    }
    assert any("ServerReflection" in name for name in listed.stdout.split())
    assert described.returncode == 0, described.stderr
    contract = token_authority_pb2.DESCRIPTOR.services_by_name["TokenAuthority"]
    for method in contract.methods:
        assert f"rpc {method.name} (" in described.stdout
    for field in ("token", "permission", "request_id"):
        assert field in message.stdout


def test_readme_session_download_only_token_until_revoked(served: ServedProcess) -> None:
    admin = served.admin_token
    organization = served.call(
        "authority.v1.Admin/CreateOrganization",
        {"name": "acme", "display_name": "Acme Inc."},
        token=admin,
    )
    issued = served.call(
        "authority.v1.TokenAuthority/IssueToken",
        {"organization": "acme", "label": "ci-download", "scopes": ["download-only"]},
        token=admin,
    )
    secret, token_id = issued["secret"], issued["token"]["token_id"]
    validate = "authority.v1.TokenAuthority/Validate"

    download = served.call(validate, {"token": secret, "permission": "download"})
    upload = served.call(validate, {"token": secret, "permission": "upload"})
    revoked = served.call(
        "authority.v1.TokenAuthority/RevokeToken", {"token_id": token_id}, token=admin
    )
    after = served.call(validate, {"token": secret, "permission": "download"})

    assert organization["name"] == "acme" and organization["display_name"] == "Acme Inc."
    assert issued["token"]["scopes"] == ["download"] and secret.startswith("tka_")
    assert download["valid"] is True and download["token_id"] == token_id
    assert upload.get("valid", False) is False
    assert upload["reason"] == "REASON_PERMISSION_DENIED"
    assert "revoked_at" in revoked
    assert after.get("valid", False) is False and after["reason"] == "REASON_REVOKED"
    assert secret not in served.log.read_text()  # logs never hold a token value


def test_refused_calls_show_a_clear_status_and_message(served: ServedProcess) -> None:
    no_bearer = served.grpcurl(
        "authority.v1.TokenAuthority/IssueToken", data={"organization": "acme", "label": "x"}
    )
    bad_name = served.grpcurl(
        "authority.v1.Admin/CreateOrganization",
        data={"name": "Not A Slug"},
        token=served.admin_token,
    )

    assert no_bearer.returncode == GRPCURL_STATUS_EXIT + grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert "Code: Unauthenticated" in no_bearer.stderr
    assert "authorization: Bearer" in no_bearer.stderr  # says what to send
    assert bad_name.returncode == GRPCURL_STATUS_EXIT + grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "Code: InvalidArgument" in bad_name.stderr
    assert '"field":"name"' in bad_name.stderr  # the google.rpc.BadRequest detail
    assert "Traceback" not in no_bearer.stderr + bad_name.stderr


def test_sigterm_stops_the_served_process_cleanly(tmp_path: Path) -> None:
    process, address, log = _start_serving(tmp_path, _environment(tmp_path))
    try:
        _wait_until_serving(process, address, log)
    finally:
        exit_code = _stop(process)

    assert exit_code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
