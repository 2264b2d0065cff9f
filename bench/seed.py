"""Fill a database with N tokens fast: a few hundred real ones, the rest filler rows.

Filler rows have random ids and random hashes (no secret exists for them); they make the
store as large as asked without paying for token generation. The real tokens, whose values
the load generators present, are returned.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from authority.domain.token_format import SecretHasher, new_token, new_token_id
from authority.store.database import create_engines, is_sqlite, migrate
from authority.store.schema import OrganizationRow, TokenRow

ORGANIZATION = "bench"
BATCH = 20_000


def _row(token_id: str, secret_hash: bytes, now: datetime) -> dict[str, object]:
    return {
        "token_id": token_id,
        "secret_hash": secret_hash,
        "organization": ORGANIZATION,
        "subject": None,
        "label": "bench",
        "description": "",
        "scopes": ["download", "upload"],
        "properties": {},
        "created_at": now,
        "expires_at": None,
        "revoked_at": None,
        "created_by": "bench",
    }


def _filler(count: int, now: datetime) -> Iterator[list[dict[str, object]]]:
    batch: list[dict[str, object]] = []
    for _ in range(count):
        batch.append(_row(new_token_id(), secrets.token_bytes(32), now))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def seed(url: str, total: int, live: int, pepper: bytes) -> list[str]:
    """Migrate `url`, store `total` tokens of which `live` are real; return the live values."""
    migrate(url)
    hasher = SecretHasher(pepper)
    now = datetime.now(UTC)
    values = [new_token() for _ in range(live)]
    writer, _ = create_engines(url, 1)
    with writer.begin() as connection:
        connection.execute(
            insert(OrganizationRow),
            [{"name": ORGANIZATION, "display_name": "Bench", "created_at": now}],
        )
        connection.execute(
            insert(TokenRow), [_row(v.token_id, hasher.hash(v), now) for v in values]
        )
        if is_sqlite(url):
            for batch in _filler(total - live, now):
                connection.execute(insert(TokenRow), batch)
    if not is_sqlite(url):
        _copy_filler_postgres(url, total - live, now)
    writer.dispose()
    return [v.value for v in values]


def _copy_filler_postgres(url: str, count: int, now: datetime) -> None:
    """COPY is an order of magnitude faster than INSERT for a million rows."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        columns = "token_id, secret_hash, organization, label, description, scopes, properties, "
        columns += "created_at, created_by"
        with cursor.copy(f"COPY tokens ({columns}) FROM STDIN") as copy:
            for _ in range(count):
                copy.write_row(
                    (
                        new_token_id(),
                        os.urandom(32),
                        ORGANIZATION,
                        "bench",
                        "",
                        '["download", "upload"]',
                        "{}",
                        now,
                        "bench",
                    )
                )
