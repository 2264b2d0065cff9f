"""Fixtures: one migrated database per backend per worker, a server per backend, an admin."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import pytest
from hypothesis import HealthCheck, settings

from authority.settings import Settings
from tests.harness import (
    PEPPER_HEX,
    ServerHandle,
    bootstrap_admin,
    create_sqlite_database,
    new_database,
    serve,
)


class _Common(TypedDict):
    """The settings both Hypothesis profiles share, typed as register_profile takes them."""

    deadline: None
    suppress_health_check: list[HealthCheck]
    print_blob: bool


# Property-based tests (tests/integration/test_hostile_input.py): a short run in `make test`,
# a long one with HYPOTHESIS_PROFILE=long. They drive a real server, so no deadline, and their
# function-scoped fixtures are meant to be shared by all the examples of a test.
_HYPOTHESIS: _Common = {
    "deadline": None,
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    "print_blob": True,
}
# The short run stops at the first failure and shrinks only that one: quick to report.
# The short profile (make test, CI) is derandomized: the same examples every run, so that it
# never fails by chance; the long one explores afresh each time (run it to hunt).
settings.register_profile(
    "short", max_examples=20, report_multiple_bugs=False, derandomize=True, **_HYPOTHESIS
)
settings.register_profile("long", max_examples=400, **_HYPOTHESIS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "short"))

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database shared by the tests of one worker; names are made unique per test."""
    with new_database(request.param, tmp_path_factory.mktemp(request.param)) as url:
        yield url


@pytest.fixture(params=BACKENDS)
def blank_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of one test's own, with nothing in it, on each backend."""
    with new_database(request.param, tmp_path) as url:
        yield url


@dataclass
class Deployment:
    """A running server plus its bootstrap administrator's token."""

    server: ServerHandle
    admin_token: str
    database_url: str


@pytest.fixture(scope="session")
def deployment(database_url: str) -> Iterator[Deployment]:
    """A server (cache on) with a global administrator, per backend."""
    with serve(database_url) as server:
        yield Deployment(server, bootstrap_admin(database_url), database_url)


@pytest.fixture(scope="session")
def in_process(deployment: Deployment) -> Iterator[Deployment]:
    """The deployment, with its server in this process on grpcio whatever AUTHORITY_TEST_SERVER
    says: for tests that read the server's own log records or patch its classes (the thin
    server runs in Envoy's process). Same database, same administrator."""
    if deployment.server.loop is not None:
        yield deployment
        return
    with serve(deployment.database_url, server="grpcio") as server:
        yield Deployment(server, deployment.admin_token, deployment.database_url)


@pytest.fixture
def server(deployment: Deployment) -> ServerHandle:
    return deployment.server


@pytest.fixture
def admin_token(deployment: Deployment) -> str:
    return deployment.admin_token


@pytest.fixture
def fresh_database(tmp_path: Path) -> str:
    """An empty migrated SQLite database for tests that need a blank slate (bootstrap)."""
    return create_sqlite_database(tmp_path)


@pytest.fixture
def settings_for(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'authority.db'}", pepper_hex=PEPPER_HEX)
