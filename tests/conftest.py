"""Fixtures: one migrated database per backend per worker, a server per backend, an admin."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authority.domain.clock import system_clock
from authority.domain.service import AuthorityService
from authority.domain.token_format import SecretHasher
from authority.settings import Settings
from authority.store.database import create_engines
from authority.store.repository import SqlStore
from tests.harness import (
    PEPPER_HEX,
    ServerHandle,
    create_postgres_database,
    create_sqlite_database,
    drop_postgres_database,
    serve,
)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database shared by the tests of one worker; names are made unique per test."""
    if request.param == "sqlite":
        yield create_sqlite_database(tmp_path_factory.mktemp("sqlite"))
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


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
        store = SqlStore(*create_engines(database_url, 1))
        try:
            service = AuthorityService(store, system_clock, SecretHasher(bytes.fromhex(PEPPER_HEX)))
            issued = service.bootstrap("admin")
        finally:
            store.dispose()
        yield Deployment(server, issued.secret, database_url)


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
