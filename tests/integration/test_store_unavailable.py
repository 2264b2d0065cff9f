"""When the store goes away, callers hear UNAVAILABLE (retryable), never UNKNOWN or INTERNAL."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import psycopg
import pytest
from sqlalchemy.engine import make_url

from authority.domain.token_format import new_token
from authority.v1 import admin_pb2
from authority.v1 import token_authority_pb2 as pb
from tests.harness import (
    POSTGRES_ADMIN_URL,
    bearer,
    bootstrap_admin,
    create_postgres_database,
    drop_postgres_database,
    serve,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def database() -> Iterator[str]:
    url = create_postgres_database()
    try:
        yield url
    finally:
        _allow_connections(url, True)
        drop_postgres_database(url)


def _allow_connections(url: str, allowed: bool) -> None:
    """Take the database away (or give it back), ending every open connection to it."""
    name = make_url(url).database
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


def _bootstrap(url: str) -> str:
    return bootstrap_admin(url)


def test_a_lost_database_gives_unavailable_and_its_return_gives_answers_again(
    database: str,
) -> None:
    admin_token = _bootstrap(database)
    with serve(database) as server:
        auth = bearer(admin_token)
        server.admin.CreateOrganization(
            admin_pb2.CreateOrganizationRequest(name="acme"), metadata=auth
        )
        issued = server.tokens.IssueToken(
            pb.IssueTokenRequest(organization="acme", label="ci"), metadata=auth
        )
        uncached = new_token().value  # well formed, never stored: Validate must read the store
        assert server.tokens.Validate(pb.ValidateRequest(token=issued.secret)).valid  # cached

        _allow_connections(database, False)
        with pytest.raises(grpc.RpcError) as validate_error:
            server.tokens.Validate(pb.ValidateRequest(token=uncached))
        with pytest.raises(grpc.RpcError) as list_error:
            server.tokens.ListTokens(pb.ListTokensRequest(organization="acme"), metadata=auth)
        cached = server.tokens.Validate(pb.ValidateRequest(token=issued.secret))

        _allow_connections(database, True)
        recovered = server.tokens.Validate(pb.ValidateRequest(token=uncached))

    assert validate_error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "unavailable" in (validate_error.value.details() or "")
    assert list_error.value.code() == grpc.StatusCode.UNAVAILABLE
    # Tokens already in the cache keep validating while the store is away.
    assert cached.valid
    assert not recovered.valid and recovered.reason == pb.REASON_UNKNOWN
