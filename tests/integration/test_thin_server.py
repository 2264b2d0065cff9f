"""`authority serve --server thin` as an operator runs it: one address for every service, a
clear refusal of a taken port, a drain on SIGTERM, no Envoy left behind, the caller's address
in the audit trail (not Envoy's socket)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import psutil
import pytest

from authority.v1 import admin_pb2, admin_pb2_grpc, token_authority_pb2_grpc
from authority.v1 import token_authority_pb2 as pb
from tests.harness import bearer
from tests.integration.helpers import eventually
from tests.integration.test_grpcurl import AUTHORITY, ServedProcess, _environment, served_process


def serving_line(served: ServedProcess) -> dict[str, object]:
    """The "serving" log line (written just after health first answers SERVING)."""
    found: list[dict[str, object]] = []

    def logged() -> bool:
        for line in served.log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("msg") == "serving":
                found.append(json.loads(line))
                return True
        return False

    assert eventually(logged, 5), served.log.read_text()
    return found[0]


def envoy_of(served: ServedProcess) -> psutil.Process:
    envoy_pid = serving_line(served)["envoy_pid"]
    assert isinstance(envoy_pid, int)
    return psutil.Process(envoy_pid)


def test_every_service_answers_on_the_one_address_and_reflection_lists_them(
    tmp_path: Path,
) -> None:
    with served_process(tmp_path, "--server", "thin") as served:
        listed = served.grpcurl("list")
        answer = served.call(
            "authority.v1.TokenAuthority/Validate",
            {"token": served.admin_token},
        )
        health = served.grpcurl("grpc.health.v1.Health/Check")
        assert serving_line(served)["server"] == "thin"

    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {
        "authority.v1.TokenAuthority",
        "authority.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert answer["valid"] is True  # the hot path (Envoy's embedded app)
    assert '"SERVING"' in health.stdout  # grpcio, behind Envoy


def test_a_taken_port_is_refused_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        completed = subprocess.run(
            [str(AUTHORITY), "serve", "--server", "thin", "--listen", f"127.0.0.1:{port}"],
            env=_environment(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == (
        f"authority: cannot listen on 127.0.0.1:{port}: the port is taken or the address is "
        "not this host's; choose another with --listen or AUTHORITY_LISTEN"
    )


def test_an_unknown_server_setting_is_refused_in_one_line(tmp_path: Path) -> None:
    completed = subprocess.run(
        [str(AUTHORITY), "serve"],
        env=_environment(tmp_path, server="nginx"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 1
    assert completed.stderr.strip() == "authority: AUTHORITY_SERVER='nginx': use grpcio or thin"


def test_sigterm_drains_a_stream_in_flight_refuses_new_connections_and_leaves_no_envoy(
    tmp_path: Path,
) -> None:
    with served_process(tmp_path, "--server", "thin") as served:
        envoy = envoy_of(served)
        request = pb.ValidateRequest(token=served.admin_token, permission="download")
        with grpc.insecure_channel(served.address) as channel:
            stub = token_authority_pb2_grpc.TokenAuthorityStub(channel)
            outbox: list[pb.ValidateRequest] = [request]
            sent = 0

            def requests() -> object:
                nonlocal sent
                while sent < 2:
                    if sent < len(outbox):
                        sent += 1
                        yield outbox[sent - 1]
                    else:
                        time.sleep(0.01)

            stream = stub.ValidateStream(requests(), timeout=20)  # type: ignore[arg-type]
            assert next(stream).valid
            served.process.send_signal(signal.SIGTERM)
            # Draining: the listener is closed, the stream in flight goes on.
            assert eventually(lambda: not _accepts(served.address), 5)
            outbox.append(request)
            assert next(stream).valid
            assert list(stream) == []  # then it ends with OK
        assert served.process.wait(timeout=15) == 0
    assert eventually(lambda: not envoy.is_running(), 5)


def test_envoy_stops_at_once_when_its_supervisor_is_killed(tmp_path: Path) -> None:
    """As a crash stops a grpcio server: the port is free for a replacement at once (a
    restarted replica must not find the old one still answering from its cache)."""
    with served_process(tmp_path, "--server", "thin") as served:
        envoy = envoy_of(served)
        served.process.kill()
        assert eventually(lambda: not _accepts(served.address), 0.5)
        assert eventually(lambda: not envoy.is_running() or envoy.status() == "zombie", 5)


def test_the_audit_trail_has_the_callers_address_not_envoys_socket(tmp_path: Path) -> None:
    with (
        served_process(tmp_path, "--server", "thin") as served,
        grpc.insecure_channel(served.address) as channel,
    ):
        admin = admin_pb2_grpc.AdminStub(channel)
        # Refused, with a spoofed address that Envoy must overwrite.
        with pytest.raises(grpc.RpcError):
            admin.ListOrganizations(
                admin_pb2.ListOrganizationsRequest(),
                metadata=(("x-authority-peer", "203.0.113.9:1"),),
            )
        events = admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(action="call.refused"),
            metadata=bearer(served.admin_token),
        ).events
    peers = [event.peer for event in events]
    assert len(peers) == 1 and peers[0].startswith("ipv4:127.0.0.1:"), peers


def _accepts(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def test_the_pid_in_the_serving_line_is_the_supervisors(tmp_path: Path) -> None:
    with served_process(tmp_path, "--server", "thin") as served:
        line = serving_line(served)
        assert line["pid"] == served.process.pid
        assert envoy_of(served).ppid() == served.process.pid
        assert os.path.basename(envoy_of(served).exe()).startswith("envoy")
