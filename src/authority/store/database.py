"""Engines and migrations. SQLite gets WAL and explicit BEGIN IMMEDIATE for writers."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect, pool, text
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).parent / "migrations"
# The session-level advisory lock `migrate` holds on PostgreSQL (the change log's append lock,
# store/repository.py, is another key).
_MIGRATION_LOCK_KEY = 0x70A7_4A01


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def normalize_url(url: str) -> str:
    """Plain `postgresql://` means psycopg 3, the driver this project ships with."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The same PostgreSQL database as a libpq URL, for a plain psycopg connection (LISTEN)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_engines(url: str, pool_size: int) -> tuple[Engine, Engine]:
    """(writer, reader).

    On SQLite a transaction that reads and then writes can fail with `database is locked`
    without waiting, so writers start with BEGIN IMMEDIATE (serialised, waiting on
    busy_timeout). The reader runs in autocommit on every backend: the Validate read is one
    SELECT, consistent on its own, and holds no transaction (no snapshot, no lock) between
    calls; under WAL it never blocks a writer.
    """
    url = normalize_url(url)
    if not is_sqlite(url):
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        return engine, engine.execution_options(isolation_level="AUTOCOMMIT")
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    writer = _sqlite_engine(url, pool_size, "BEGIN IMMEDIATE")
    reader = _sqlite_engine(url, pool_size, None)
    return writer, reader


def _sqlite_engine(url: str, pool_size: int, begin: str | None) -> Engine:
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"check_same_thread": False, "isolation_level": None, "timeout": 30},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    if begin is not None:

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql(begin)

    return engine


def alembic_config(url: str) -> Config:
    # Imported here: alembic costs a third of a second to import, and a server process that
    # is not migrating (every thin server's Envoy, every worker) never needs it.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (idempotent).

    Safe when several processes start at once (replicas, `serve --workers N`): the upgrade
    runs under a lock, so that one process migrates and the others, once they get the lock,
    find the schema at head and do nothing.
    """
    from alembic import command

    with _migration_lock(url):
        command.upgrade(alembic_config(url), "head")


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """PostgreSQL: an advisory lock held by a connection of its own for the whole upgrade.
    SQLite: an exclusive flock on a file beside the database (`<file>.migrate-lock`)."""
    if not is_sqlite(url):
        engine = create_engine(normalize_url(url), poolclass=pool.NullPool)
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(
                    text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
                try:
                    yield
                finally:
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                    )
        finally:
            engine.dispose()
        return
    database = make_url(url).database
    if not database or database == ":memory:":
        yield  # a database no other process can see
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Never removed: deleting a lock file lets two processes lock two different files.
    descriptor = os.open(f"{path}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def schema_is_current(engine: Engine) -> bool:
    """Whether migrations have been applied at all (cheap check used by `serve`)."""
    return inspect(engine).has_table("tokens")
