"""Fixtures for a test module that needs a server and a database of its own (its clock jumps,
it rotates the signing key or restarts servers: no other module should see that), and a
channel that counts the calls made through it. A module imports the fixtures it uses."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from authority.client import IssuedToken, TokenAuthorityClient
from tests.harness import ManualClock, ServerHandle, bootstrap_admin, new_database, serve, unique


@pytest.fixture(scope="module")
def own_database(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[str]:
    with new_database("sqlite", tmp_path_factory.mktemp(request.module.__name__)) as url:
        yield url


@pytest.fixture(scope="module")
def admin_token(own_database: str) -> str:
    return bootstrap_admin(own_database)


@pytest.fixture(scope="module")
def server(own_database: str) -> Iterator[ServerHandle]:
    """The module's server (the conftest's `clock` and `org` fixtures use it)."""
    with serve(own_database) as own:
        yield own


@pytest.fixture
def admin(server: ServerHandle, admin_token: str) -> Iterator[TokenAuthorityClient]:
    with TokenAuthorityClient(server.address, token=admin_token) as client:
        yield client


@pytest.fixture
def key(admin: TokenAuthorityClient, org: str) -> IssuedToken:
    """An organisation key of `org` (download and reports.*), never expiring."""
    return admin.issue_token(org, unique("job"), scopes=["download", "reports.*"])


def wall(clock: ManualClock) -> Callable[[], float]:
    """The server's ManualClock as the seconds the client's `clock=` expects."""
    return lambda: clock().timestamp()


class Counting(grpc.UnaryUnaryClientInterceptor):
    """Counts the unary calls made through a channel, by method name."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        with self._lock:
            self.calls[client_call_details.method.rsplit("/", 1)[-1]] += 1
        return continuation(client_call_details, request)


@pytest.fixture
def counted(server: ServerHandle) -> Iterator[tuple[grpc.Channel, Counting]]:
    """A channel to the server that counts the calls made through it."""
    counting = Counting()
    channel = grpc.insecure_channel(server.address)
    yield grpc.intercept_channel(channel, counting), counting
    channel.close()
