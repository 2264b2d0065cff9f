"""Servers beside the deployment's, on the same database, for the Validate cache tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from authority.v1 import token_authority_pb2 as pb
from tests.conftest import Deployment
from tests.harness import ManualClock, ServerHandle, bearer, bootstrap_admin, serve
from tests.integration.helpers import Credential, Metadata, make_org, validate


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


@dataclass
class Fresh:
    """A server on a database of its own, whose global administrator a test may lock out."""

    database_url: str
    server: ServerHandle
    admin: Credential


@pytest.fixture
def fresh(blank_database: str, request: pytest.FixtureRequest) -> Iterator[Fresh]:
    """A bootstrapped server on a blank database (each backend), for installation-wide tests;
    on grpcio in this process for a test marked `in_process` (it reads the server's log)."""
    secret = bootstrap_admin(blank_database)
    mode = "grpcio" if request.node.get_closest_marker("in_process") else None
    with serve(blank_database, server=mode) as server:
        token_id = validate(server, secret).token_id
        token = server.tokens.GetToken(
            pb.GetTokenRequest(token_id=token_id), metadata=bearer(secret)
        )
        yield Fresh(blank_database, server, Credential(secret, token_id, token))


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
