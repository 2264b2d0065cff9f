"""Servers beside the deployment's, on the same database, for the Validate cache tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Deployment
from tests.harness import ServerHandle, bearer, serve
from tests.integration.helpers import Metadata


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
