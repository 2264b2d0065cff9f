"""Servers beside the deployment's, on the same database, for the Validate cache tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Deployment
from tests.harness import ManualClock, ServerHandle, bearer, serve
from tests.integration.helpers import Metadata, make_org


@pytest.fixture(scope="module")
def cached(deployment: Deployment) -> Iterator[ServerHandle]:
    """A server with the cache on (default bounds) sharing the deployment's database."""
    with serve(deployment.database_url) as server:
        yield server


@pytest.fixture(scope="module")
def uncached(deployment: Deployment) -> Iterator[ServerHandle]:
    """A server with the cache off (every Validate reads the store), same database."""
    with serve(deployment.database_url, cache_max_entries=0) as server:
        yield server


@pytest.fixture
def auth(admin_token: str) -> Metadata:
    return bearer(admin_token)


@pytest.fixture
def clock(server: ServerHandle) -> Iterator[ManualClock]:
    """The server's wall clock, put back afterwards: the other tests of the session share it."""
    start = server.clock()
    yield server.clock
    server.clock.set(start)


@pytest.fixture
def org(server: ServerHandle, admin_token: str) -> str:
    """A fresh organisation on the deployment's server."""
    return make_org(server, admin_token)
