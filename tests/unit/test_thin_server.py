"""The thin server's Envoy configuration and the caller's address behind it, as data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from authority.api.errors import peer_of
from authority.api.thin import HOT_METHODS, path_of
from authority.api.token_authority import SERVICE
from authority.settings import Settings
from authority.thin_contract import NOT_GRPC_BODY, PEER_HEADER, SERVICE_NAME
from authority.thin_server import environment, envoy_config

PRIVATE = Path("/run/authority-private")


def config(reuse_port: bool = False) -> dict[str, Any]:
    return envoy_config("127.0.0.1", 50051, PRIVATE, reuse_port=reuse_port)


def manager(cfg: dict[str, Any]) -> dict[str, Any]:
    listener = cfg["static_resources"]["listeners"][0]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def test_only_the_hot_methods_reach_the_embedded_app_and_it_is_started_once() -> None:
    composite = manager(config())["http_filters"][0]["typed_config"]
    matchers = composite["xds_matcher"]["matcher_list"]["matchers"]
    assert len(matchers) == 1  # one action: one instance of the app
    predicates = matchers[0]["predicate"]["or_matcher"]["predicate"]
    paths = {p["single_predicate"]["value_match"]["exact"] for p in predicates}
    assert paths == {path_of(method) for method in HOT_METHODS}
    assert path_of("Ping") not in paths and "/authority.v1.Admin/CreateOrganization" not in paths
    embedded = matchers[0]["on_match"]["action"]["typed_config"]["typed_config"]
    app = json.loads(embedded["typed_config"]["filter_config"]["value"])
    assert app["app"] == "authority.thin_app:app" and app["lifespan"] is True


def test_every_other_grpc_path_goes_to_grpcio_on_the_private_socket_with_no_envoy_timeout() -> None:
    cfg = config()
    grpc, rest = manager(cfg)["route_config"]["virtual_hosts"][0]["routes"]
    assert grpc["match"]["prefix"] == "/"
    (content_type,) = grpc["match"]["headers"]
    assert content_type["name"] == "content-type"
    assert content_type["string_match"] == {"safe_regex": {"regex": "application/grpc([+;].*)?"}}
    assert grpc["route"] == {"cluster": "grpcio", "timeout": "0s"}
    # What is not gRPC is answered as the app answers it on the hot methods.
    assert rest == {
        "match": {"prefix": "/"},
        "direct_response": {"status": 415, "body": {"inline_string": NOT_GRPC_BODY}},
    }
    cluster = cfg["static_resources"]["clusters"][0]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": str(PRIVATE / "grpcio.sock")}}


def test_the_admin_api_is_never_on_a_port() -> None:
    assert config()["admin"] == {"address": {"pipe": {"path": str(PRIVATE / "admin.sock")}}}


@pytest.mark.parametrize("reuse_port", [False, True])
def test_the_port_is_shared_only_when_asked(reuse_port: bool) -> None:
    listener = config(reuse_port)["static_resources"]["listeners"][0]
    assert listener["enable_reuse_port"] is reuse_port


def test_grpc_needs_long_streams_a_bounded_window_and_the_callers_address() -> None:
    hcm = manager(config())
    assert hcm["codec_type"] == "HTTP2"
    assert hcm["stream_idle_timeout"] == "0s" and hcm["request_timeout"] == "0s"
    assert hcm["http2_protocol_options"]["initial_stream_window_size"] == 256 << 10
    (added,) = hcm["route_config"]["request_headers_to_add"]
    assert added["header"] == {"key": PEER_HEADER, "value": "%DOWNSTREAM_REMOTE_ADDRESS%"}
    assert added["append_action"] == "OVERWRITE_IF_EXISTS_OR_ADD"  # a caller's is replaced


def test_every_setting_reaches_the_embedded_app() -> None:
    settings = Settings(cache_max_entries=7, listen="127.0.0.1:9", server="thin")
    env = environment(settings, PRIVATE)
    assert Settings.from_env(env) == settings
    assert env["AUTHORITY_THIN_GRPCIO_SOCKET"] == str(PRIVATE / "grpcio.sock")


class FakeContext:
    def __init__(self, peer: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self._peer = peer
        self._metadata = metadata

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


@pytest.mark.parametrize(
    ("peer", "metadata", "expected"),
    [
        ("ipv4:10.0.0.7:5123", (), "ipv4:10.0.0.7:5123"),
        # Directly on a port, the header is the caller's own: not trusted.
        ("ipv4:10.0.0.7:5123", ((PEER_HEADER, "203.0.113.9:1"),), "ipv4:10.0.0.7:5123"),
        ("unix:/run/a/grpcio.sock", ((PEER_HEADER, "10.0.0.7:5123"),), "ipv4:10.0.0.7:5123"),
        ("unix:/run/a/grpcio.sock", ((PEER_HEADER, "[::1]:5123"),), "ipv6:[::1]:5123"),
        ("unix:/run/a/grpcio.sock", (), "unix:/run/a/grpcio.sock"),
        ("unix:/run/a/grpcio.sock", ((PEER_HEADER, "x" * 65),), "unix:/run/a/grpcio.sock"),
    ],
)
def test_the_callers_address(
    peer: str, metadata: tuple[tuple[str, str], ...], expected: str
) -> None:
    assert peer_of(FakeContext(peer, metadata)) == expected  # type: ignore[arg-type]


def test_the_contracts_service_is_the_protos_and_its_paths_are_the_hot_methods() -> None:
    assert SERVICE.full_name == SERVICE_NAME
    assert {path_of(m) for m in HOT_METHODS} == {
        f"/{SERVICE.full_name}/{m}"
        for m in ("Validate", "ValidateBatch", "ValidateStream", "RefreshToken")
    }
    assert all(SERVICE.methods_by_name.get(m) is not None for m in HOT_METHODS)


def test_the_supervisor_imports_none_of_the_object_graph() -> None:
    """The process that waits beside Envoy for the server's life: what it imports it holds
    (the CLI execs into it after migrating, so as not to hold SQLAlchemy and the app)."""
    probe = (
        "import sys, authority.thin_server\n"
        "print(sorted(m for m in sys.modules if m.startswith(('authority', 'sqlalchemy', "
        "'alembic', 'jwt', 'cryptography', 'psycopg', 'argon2'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == str(
        sorted(
            [
                "authority",
                "authority.logs",
                "authority.settings",
                "authority.thin_contract",
                "authority.thin_server",
                "authority.workers",
            ]
        )
    )
