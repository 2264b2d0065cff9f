"""Test harness: real servers on real ports, real databases, controllable clocks.

The server runs in a background thread with its own asyncio loop, exactly as `authority serve`
builds it (`build_application` + `start_server`); tests talk to it over a real gRPC channel.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psycopg
from sqlalchemy.engine import make_url

from authority.domain.clock import system_clock
from authority.domain.installation import Installation
from authority.domain.token_format import SecretHasher
from authority.server import Application, RunningServer, build_application, start_server
from authority.settings import Settings
from authority.store.database import create_engines, migrate
from authority.store.repository import SqlStore
from authority.thin_server import ThinServer
from authority.v1 import admin_pb2_grpc, token_authority_pb2_grpc

POSTGRES_ADMIN_URL = os.environ.get(
    "AUTHORITY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
PEPPER_HEX = "ab" * 32


class ManualClock:
    """Wall clock the test moves by hand; starts at the real time so expiries look sane.

    With `path`, every move is also written there, for a server in another process (the thin
    server's embedded app reads it through SharedClock)."""

    def __init__(self, path: Path | None = None) -> None:
        self._now = datetime.now(UTC).replace(microsecond=0)
        self._lock = threading.Lock()
        self.path = path
        self._publish()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment
            self._publish()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._publish()

    def _publish(self) -> None:
        if self.path is not None:
            _write_atomically(self.path, self._now.isoformat())


class ManualMonotonic:
    """Monotonic clock for cache staleness; moved by hand (and shared through `path`)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.value = 1000.0

    def __call__(self) -> float:
        return self._value

    @property
    def value(self) -> float:
        return self._value

    @value.setter
    def value(self, value: float) -> None:
        self._value = value
        if self.path is not None:
            _write_atomically(self.path, repr(value))


class SharedClock:
    """A ManualClock's moves, read in the server's process."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __call__(self) -> datetime:
        return datetime.fromisoformat(self._path.read_text())


class SharedMonotonic:
    def __init__(self, path: Path) -> None:
        self._path = path

    def __call__(self) -> float:
        return float(self._path.read_text())


def _write_atomically(path: Path, text: str) -> None:
    if not path.parent.exists():  # its server has stopped; the test may still move the clock
        return
    draft = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    draft.write_text(text)
    os.replace(draft, path)


def create_postgres_database() -> str:
    """A fresh, migrated PostgreSQL database for one test session; returns its URL."""
    name = f"authority_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    migrate(url)
    return url


def drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bootstrap_admin(database_url: str, name: str = "admin") -> str:
    """The first global administrator of a migrated database; its token's value."""
    store = SqlStore(*create_engines(database_url, 1))
    try:
        hasher = SecretHasher(bytes.fromhex(PEPPER_HEX))
        return Installation(store, system_clock, hasher).bootstrap(name).secret
    finally:
        store.dispose()


@contextmanager
def new_database(backend: str, directory: Path) -> Iterator[str]:
    """A fresh migrated database on `backend` (sqlite or postgres), dropped afterwards."""
    if backend == "sqlite":
        yield create_sqlite_database(directory)
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


def create_sqlite_database(directory: Path) -> str:
    url = f"sqlite:///{directory / 'authority.db'}"
    migrate(url)
    return url


@dataclass
class ServerHandle:
    """A running server and what tests need to drive it."""

    running: RunningServer | ThinRunning
    loop: asyncio.AbstractEventLoop | None  # None: the server runs in another process
    clock: ManualClock
    monotonic: ManualMonotonic
    channel: grpc.Channel
    tokens: token_authority_pb2_grpc.TokenAuthorityStub
    admin: admin_pb2_grpc.AdminStub

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def call_soon(self, function: object) -> None:
        """Run a plain function on the server's loop thread and wait for it."""
        assert self.loop is not None, "the thin server runs in Envoy's process"
        future = asyncio.run_coroutine_threadsafe(_call(function), self.loop)
        future.result(timeout=10)


async def _call(function: object) -> None:
    assert callable(function)
    function()


class ThinRunning:
    """The thin server (Envoy) as tests see it: its port, and an object graph of the test's
    own over the same database and pepper, for what tests read beside the interface (the
    signing keys, reloaded at each use as every server process does after a rotation)."""

    def __init__(self, server: ThinServer, settings: Settings) -> None:
        self.server = server
        self.port = server.port
        self._settings = settings
        self._application: Application | None = None

    @property
    def application(self) -> Application:
        if self._application is None:
            self._application = build_application(self._settings)
        self._application.signing.reload()
        return self._application

    def close(self) -> None:
        if self._application is not None:
            self._application.executor.shutdown(wait=True)
            self._application.store.dispose()


# Which server `serve` starts unless a test says: grpcio (server.py) or thin (thin_server.py).
# grpcio, the product's fallback, by default: it starts in this process in a fraction of a
# second, the thin server (an Envoy process) in about one, and the suite starts many servers.
# `make test` runs the hot-path and caller-facing tests against thin too, `make test-thin` all.
TEST_SERVER = os.environ.get("AUTHORITY_TEST_SERVER", "grpcio")


@contextmanager
def serve(database_url: str, **overrides: object) -> Iterator[ServerHandle]:
    """Start a server on an ephemeral loopback port against `database_url`."""
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=database_url,
        pepper_hex=PEPPER_HEX,
        log_level="WARNING",
        # Tests share a database per backend and move their servers' clocks by hand: a sweep
        # would announce other tests' tokens as expired (and invalidate them) at random. The
        # tests of the sweep turn it on.
        expiry_sweep_seconds=0,
        server=TEST_SERVER,
    ).replace(**overrides)
    if settings.server == "thin":
        with _serve_thin(settings) as handle:
            yield handle
        return
    clock = ManualClock()
    monotonic = ManualMonotonic()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="authority-test-server", daemon=True)
    thread.start()
    application = build_application(settings, clock=clock, monotonic=monotonic)
    running = asyncio.run_coroutine_threadsafe(start_server(application), loop).result(10)
    try:
        with _handle(running, loop, clock, monotonic) as handle:
            yield handle
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(grace=0.5), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@contextmanager
def _handle(
    running: RunningServer | ThinRunning,
    loop: asyncio.AbstractEventLoop | None,
    clock: ManualClock,
    monotonic: ManualMonotonic,
) -> Iterator[ServerHandle]:
    """The handle of a started server, with a channel to it (closed afterwards)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield ServerHandle(
            running=running,
            loop=loop,
            clock=clock,
            monotonic=monotonic,
            channel=channel,
            tokens=token_authority_pb2_grpc.TokenAuthorityStub(channel),
            admin=admin_pb2_grpc.AdminStub(channel),
        )
    finally:
        channel.close()


# What tests/thin_embedded.py reads: the files the test's clocks are shared through.
CLOCK_FILE_ENV = "AUTHORITY_TEST_CLOCK_FILE"
MONOTONIC_FILE_ENV = "AUTHORITY_TEST_MONOTONIC_FILE"


@contextmanager
def _serve_thin(settings: Settings) -> Iterator[ServerHandle]:
    """The thin server as `authority serve --server thin` runs it (Envoy with the embedded
    app, grpcio behind it), its clocks the test's own through files."""
    directory = Path(tempfile.mkdtemp(prefix="authority-test-clocks-"))
    clock = ManualClock(directory / "clock")
    monotonic = ManualMonotonic(directory / "monotonic")
    server = ThinServer(
        settings,
        app="tests.thin_embedded:app",
        environ={
            CLOCK_FILE_ENV: str(clock.path),
            MONOTONIC_FILE_ENV: str(monotonic.path),
        },
    )
    server.start()
    running = ThinRunning(server, settings)
    try:
        with _handle(running, None, clock, monotonic) as handle:
            yield handle
    finally:
        running.close()
        server.stop(grace=0.5)
        shutil.rmtree(directory, ignore_errors=True)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying a bearer token."""
    return (("authorization", f"Bearer {token}"),)


def unique(prefix: str) -> str:
    """A name no other test uses (tests share a database per backend)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
