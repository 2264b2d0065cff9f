"""The store: repositories over the ORM, one Session per transaction (the unit of work)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker
from sqlalchemy.sql import Executable

from authority.domain.errors import AlreadyExists, Reason, Unavailable
from authority.domain.events import (
    TOKEN_KINDS,
    Event,
    EventKind,
    Initiator,
    Outcome,
    RecordedEvent,
    WatchedEvent,
)
from authority.domain.models import (
    Membership,
    Organization,
    Principal,
    PrincipalKind,
    Role,
    TokenRecord,
)
from authority.domain.ports import EventQuery, Hold, Transaction
from authority.domain.signing import SigningKeyRecord
from authority.store.schema import (
    EventRow,
    FactRow,
    MembershipRow,
    OrganizationRow,
    PrincipalRow,
    SigningKeyRow,
    TokenRow,
)

T = TypeVar("T")
# SQLSTATEs of a transaction the database aborted to resolve a conflict; running it again is
# the remedy (PostgreSQL: serialization_failure, deadlock_detected).
_CONFLICTS = frozenset({"40001", "40P01"})
# Any fixed number, as long as every process uses the same one: the key of the advisory lock
# that serialises installation-wide invariants (`Transaction.lock_global`).
_GLOBAL_LOCK_KEY = 0x70A7_4A11
# Held from the moment a unit of work appends to the change log until it commits, so that
# sequence numbers become visible in their order: a reader that has seen N has seen all < N.
_EVENTS_LOCK_KEY = 0x70A7_4A12
# The PostgreSQL channel on which a commit announces its newest sequence number.
EVENTS_CHANNEL = "authority_events"
Dispatcher = Callable[[list[RecordedEvent]], None]
# The fact naming the newest sequence number the audit retention has deleted.
EVENTS_PURGED_THROUGH = "events_purged_through"

_TOKEN_COLUMNS = (
    TokenRow.token_id,
    TokenRow.secret_hash,
    TokenRow.organization,
    TokenRow.subject,
    TokenRow.label,
    TokenRow.description,
    TokenRow.scopes,
    TokenRow.created_at,
    TokenRow.expires_at,
    TokenRow.revoked_at,
    TokenRow.created_by,
    TokenRow.properties,
)
# The Validate read: a Core statement compiled once, no ORM identity map on the hot path.
_GET_TOKEN = select(*_TOKEN_COLUMNS).where(TokenRow.token_id == bindparam("token_id"))
_EVENTS_AFTER = (
    select(*EventRow.__table__.columns)
    .where(EventRow.seq > bindparam("after"))
    .order_by(EventRow.seq)
    .limit(bindparam("limit"))
)
_LAST_SEQUENCE = select(func.max(EventRow.seq))


def _token_from_row(row: TokenRow | Row[*tuple[Any, ...]]) -> TokenRecord:
    """From an ORM row or a Core row of _TOKEN_COLUMNS (same attribute names)."""
    return TokenRecord(
        token_id=row.token_id,
        secret_hash=bytes(row.secret_hash),
        organization=row.organization,
        subject=row.subject,
        label=row.label,
        description=row.description,
        scopes=tuple(row.scopes),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        created_by=row.created_by,
        properties=dict(row.properties),
    )


def _event_row(event: Event) -> dict[str, Any]:
    return {
        "occurred_at": event.occurred_at,
        "kind": event.kind.value,
        "organization": event.organization,
        "subject": event.subject,
        "token_id": event.token_id,
        "actor_principal": event.initiator.principal,
        "actor_token_id": event.initiator.token_id,
        "peer": event.initiator.peer[:128],
        "request_id": event.initiator.request_id[:64],
        "outcome": event.outcome.value,
        "details": dict(event.details),
    }


def _event_from_row(row: EventRow | Row[*tuple[Any, ...]]) -> RecordedEvent:
    return RecordedEvent(
        row.seq,
        Event(
            kind=EventKind(row.kind),
            occurred_at=row.occurred_at,
            initiator=Initiator(row.actor_principal, row.actor_token_id, row.peer, row.request_id),
            organization=row.organization,
            subject=row.subject,
            token_id=row.token_id,
            outcome=Outcome(row.outcome),
            details=dict(row.details),
        ),
    )


def _unavailable(error: OperationalError) -> Unavailable:
    # Only the exception's class: a driver's message can quote the statement's parameters.
    reason = type(error.orig).__name__ if error.orig is not None else type(error).__name__
    return Unavailable(f"the token store is unavailable ({reason}); retry shortly")


class _Conflict(Exception):
    """The database aborted the unit of work to resolve a conflict; it may be run again."""


def _is_conflict(error: DBAPIError) -> bool:
    return getattr(error.orig, "sqlstate", None) in _CONFLICTS


class SqlTransaction:
    """Implements domain.ports.Transaction over one Session."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._postgres = session.get_bind().dialect.name == "postgresql"
        self.events: list[Event] = []

    def record(self, event: Event) -> None:
        self.events.append(event)

    def write_events(self) -> list[RecordedEvent]:
        """Append the recorded events to the log, last thing before the commit."""
        if not self.events:
            return []
        if self._postgres:
            self._session.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _EVENTS_LOCK_KEY}
            )
        sequences = [
            self._session.execute(
                insert(EventRow).values(**_event_row(event)).returning(EventRow.seq)
            ).scalar_one()
            for event in self.events
        ]
        if self._postgres:
            # Delivered when (and only if) the transaction commits.
            self._session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": EVENTS_CHANNEL, "payload": str(sequences[-1])},
            )
        return [
            RecordedEvent(sequence, event)
            for sequence, event in zip(sequences, self.events, strict=True)
        ]

    # the audit trail
    def find_events(
        self, query: EventQuery, cursor: int | None, limit: int, newest_first: bool = True
    ) -> list[RecordedEvent]:
        # Every filter is an equality or a range beside the sequence order, so that an index
        # (organization, seq), (actor_principal, seq), (subject, seq) or the primary key serves
        # each page from the cursor on, however long the log.
        statement = select(EventRow).limit(limit)
        if newest_first:
            statement = statement.order_by(EventRow.seq.desc())
            if cursor is not None:
                statement = statement.where(EventRow.seq < cursor)
        else:
            statement = statement.order_by(EventRow.seq)
            if cursor is not None:
                statement = statement.where(EventRow.seq > cursor)
        equalities = (
            (EventRow.organization, query.organization),
            (EventRow.actor_principal, query.actor_principal),
            (EventRow.actor_token_id, query.actor_token_id),
            (EventRow.kind, query.kind),
            (EventRow.subject, query.subject),
        )
        for column, value in equalities:
            if value is not None:
                statement = statement.where(column == value)
        if query.actor_token_id is not None:
            statement = statement.where(EventRow.actor_principal.is_(None))
        if query.since is not None:
            statement = statement.where(EventRow.occurred_at >= query.since)
        if query.until is not None:
            statement = statement.where(EventRow.occurred_at < query.until)
        return [_event_from_row(row) for row in self._session.scalars(statement)]

    def delete_events_before(self, cutoff: datetime, limit: int) -> int:
        # The newest event stays whatever its age: on SQLite the next sequence number is the
        # largest one left plus one, and a log emptied to nothing would start again at 1
        # behind every follower's position.
        self.lock_global()  # replicas prune one at a time (and record how far, once)
        newest = select(func.max(EventRow.seq)).scalar_subquery()
        doomed = (
            select(EventRow.seq)
            .where(EventRow.occurred_at < cutoff, EventRow.seq < newest)
            .order_by(EventRow.seq)
            .limit(limit)
        )
        result = self._session.execute(
            delete(EventRow)
            .where(EventRow.seq.in_(doomed.scalar_subquery()))
            .returning(EventRow.seq)
            .execution_options(synchronize_session=False)
        )
        deleted = list(result.scalars())
        if deleted:
            # A follower resuming from before this point would miss events: it is told so.
            purged = max(deleted)
            stored = self.get_fact(EVENTS_PURGED_THROUGH)
            if stored is None:
                self.add_fact(EVENTS_PURGED_THROUGH, str(purged))
            elif int(stored) < purged:
                self._session.execute(
                    update(FactRow)
                    .where(FactRow.name == EVENTS_PURGED_THROUGH)
                    .values(value=str(purged))
                )
        return len(deleted)

    def events_purged_through(self) -> int:
        stored = self.get_fact(EVENTS_PURGED_THROUGH)
        return int(stored) if stored is not None else 0

    # locks (SQLite needs none: its writers begin IMMEDIATE, one at a time)
    def lock_organization(self, name: str, hold: Hold) -> Organization | None:
        query = select(OrganizationRow).where(OrganizationRow.name == name)
        if hold is Hold.ADD:
            query = query.with_for_update(read=True)
        elif hold is Hold.CHANGE:
            query = query.with_for_update()
        row = self._session.scalars(query.execution_options(populate_existing=True)).first()
        return Organization(row.name, row.display_name, row.created_at) if row else None

    def lock_token(self, token_id: str) -> TokenRecord | None:
        query = select(*_TOKEN_COLUMNS).where(TokenRow.token_id == token_id)
        row = self._session.execute(query.with_for_update(read=True)).first()
        return _token_from_row(row) if row is not None else None

    def lock_global(self) -> None:
        if self._postgres:
            self._session.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _GLOBAL_LOCK_KEY}
            )

    # organisations
    def get_organization(self, name: str) -> Organization | None:
        row = self._session.get(OrganizationRow, name)
        return Organization(row.name, row.display_name, row.created_at) if row else None

    def add_organization(self, organization: Organization) -> None:
        self._session.add(
            OrganizationRow(
                name=organization.name,
                display_name=organization.display_name,
                created_at=organization.created_at,
            )
        )
        self._session.flush()

    def list_organizations(
        self, only: Sequence[str] | None, after: str | None, limit: int
    ) -> list[Organization]:
        query = select(OrganizationRow).order_by(OrganizationRow.name).limit(limit)
        if only is not None:
            query = query.where(OrganizationRow.name.in_(only))
        if after is not None:
            query = query.where(OrganizationRow.name > after)
        return [
            Organization(row.name, row.display_name, row.created_at)
            for row in self._session.scalars(query)
        ]

    # principals
    def get_principal(self, name: str) -> Principal | None:
        row = self._session.get(PrincipalRow, name)
        if row is None:
            return None
        return Principal(row.name, PrincipalKind(row.kind), row.global_admin, row.created_at)

    def add_principal(self, principal: Principal) -> None:
        self._session.add(
            PrincipalRow(
                name=principal.name,
                kind=principal.kind.value,
                global_admin=principal.global_admin,
                created_at=principal.created_at,
            )
        )
        self._session.flush()

    def any_global_admin(self) -> bool:
        query = select(func.count()).select_from(PrincipalRow).where(PrincipalRow.global_admin)
        return bool(self._session.scalar(query))

    # memberships
    def get_role(self, organization: str, principal: str) -> Role | None:
        row = self._session.get(MembershipRow, (organization, principal))
        return Role(row.role) if row else None

    def set_role(self, membership: Membership) -> None:
        row = self._session.get(MembershipRow, (membership.organization, membership.principal))
        if row is None:
            self._session.add(
                MembershipRow(
                    organization=membership.organization,
                    principal=membership.principal,
                    role=membership.role.value,
                )
            )
        else:
            row.role = membership.role.value
        self._session.flush()

    def remove_membership(self, organization: str, principal: str) -> bool:
        result = self._session.execute(
            delete(MembershipRow).where(
                MembershipRow.organization == organization, MembershipRow.principal == principal
            )
        )
        return bool(getattr(result, "rowcount", 0))

    def list_members(self, organization: str) -> list[Membership]:
        query = (
            select(MembershipRow)
            .where(MembershipRow.organization == organization)
            .order_by(MembershipRow.principal)
        )
        return [
            Membership(row.organization, row.principal, Role(row.role))
            for row in self._session.scalars(query)
        ]

    def organizations_of(self, principal: str) -> list[str]:
        query = select(MembershipRow.organization).where(MembershipRow.principal == principal)
        return list(self._session.scalars(query))

    # tokens
    def add_token(self, record: TokenRecord) -> None:
        self._session.add(
            TokenRow(
                token_id=record.token_id,
                secret_hash=record.secret_hash,
                organization=record.organization,
                subject=record.subject,
                label=record.label,
                description=record.description,
                scopes=list(record.scopes),
                properties=dict(record.properties),
                created_at=record.created_at,
                expires_at=record.expires_at,
                revoked_at=record.revoked_at,
                created_by=record.created_by,
            )
        )
        self._session.flush()

    def get_token(self, token_id: str) -> TokenRecord | None:
        row = self._session.scalar(select(TokenRow).where(TokenRow.token_id == token_id))
        return _token_from_row(row) if row else None

    def list_tokens(
        self,
        organization: str,
        subject: str | None,
        include_revoked: bool,
        before: int | None,
        limit: int,
    ) -> list[tuple[int, TokenRecord]]:
        query = (
            select(TokenRow)
            .where(TokenRow.organization == organization)
            .order_by(TokenRow.seq.desc())
            .limit(limit)
        )
        if subject is not None:
            query = query.where(TokenRow.subject == subject)
        if not include_revoked:
            query = query.where(TokenRow.revoked_at.is_(None))
        if before is not None:
            query = query.where(TokenRow.seq < before)
        return [(row.seq, _token_from_row(row)) for row in self._session.scalars(query)]

    def revoke_tokens_of(self, organization: str, subject: str, at: datetime) -> list[str]:
        # One statement: on PostgreSQL it sees every token committed before it began, and the
        # organisation lock held by the caller keeps new ones out until commit.
        result = self._session.execute(
            update(TokenRow)
            .where(
                TokenRow.organization == organization,
                TokenRow.subject == subject,
                TokenRow.revoked_at.is_(None),
            )
            .values(revoked_at=at)
            .returning(TokenRow.token_id)
            .execution_options(synchronize_session=False)
        )
        revoked = sorted(result.scalars())
        self._session.expire_all()
        return revoked

    def count_live_global_tokens(self, now: datetime) -> int:
        query = (
            select(func.count())
            .select_from(TokenRow)
            .join(PrincipalRow, PrincipalRow.name == TokenRow.subject)
            .where(
                TokenRow.organization.is_(None),
                PrincipalRow.global_admin,
                TokenRow.revoked_at.is_(None),
                or_(TokenRow.expires_at.is_(None), TokenRow.expires_at > now),
            )
        )
        return int(self._session.scalar(query) or 0)

    # facts
    def get_fact(self, name: str) -> str | None:
        row = self._session.get(FactRow, name)
        return row.value if row else None

    def add_fact(self, name: str, value: str) -> None:
        self._session.add(FactRow(name=name, value=value))
        self._session.flush()

    # signing keys
    def signing_keys(self) -> list[SigningKeyRecord]:
        query = select(SigningKeyRow).order_by(SigningKeyRow.created_at)
        return [
            SigningKeyRecord(
                row.kid,
                bytes(row.public_key),
                bytes(row.sealed_private_key),
                row.created_at,
                row.retired_at,
            )
            for row in self._session.scalars(query.execution_options(populate_existing=True))
        ]

    def add_signing_key(self, record: SigningKeyRecord) -> None:
        self._session.add(
            SigningKeyRow(
                kid=record.kid,
                public_key=record.public_key,
                sealed_private_key=record.sealed_private_key,
                created_at=record.created_at,
                retired_at=record.retired_at,
            )
        )
        self._session.flush()

    def retire_signing_key(self, kid: str, at: datetime) -> None:
        self._session.execute(
            update(SigningKeyRow)
            .where(SigningKeyRow.kid == kid, SigningKeyRow.retired_at.is_(None))
            .values(retired_at=at)
            .execution_options(synchronize_session=False)
        )

    def delete_signing_keys(self, kids: Sequence[str]) -> None:
        self._session.execute(
            delete(SigningKeyRow)
            .where(SigningKeyRow.kid.in_(list(kids)))
            .execution_options(synchronize_session=False)
        )

    def revoke_token(self, token_id: str, at: datetime) -> TokenRecord | None:
        self._session.execute(
            update(TokenRow)
            .where(TokenRow.token_id == token_id, TokenRow.revoked_at.is_(None))
            .values(revoked_at=at)
            .execution_options(synchronize_session=False)
        )
        self._session.expire_all()
        return self.get_token(token_id)

    # WatchEvents and the expiry sweep
    def token_events_after(
        self, organization: str, principal: str | None, after: int, limit: int
    ) -> list[WatchedEvent]:
        # The (organization, seq) index serves the range from `after` on, however long the log;
        # the token's row (by its unique id) adds its principal and expiry.
        query = (
            select(EventRow, TokenRow.subject, TokenRow.expires_at)
            .outerjoin(TokenRow, TokenRow.token_id == EventRow.token_id)
            .where(
                EventRow.organization == organization,
                EventRow.seq > after,
                EventRow.kind.in_(sorted(TOKEN_KINDS)),
            )
            .order_by(EventRow.seq)
            .limit(limit)
        )
        if principal is not None:
            query = query.where(TokenRow.subject == principal)
        return [
            WatchedEvent(_event_from_row(row), subject, expires_at)
            for row, subject, expires_at in self._session.execute(query)
        ]

    def claim_expired(self, now: datetime, limit: int) -> list[TokenRecord]:
        return self._claim(TokenRow.expiry_announced_at, now, now, limit)

    def claim_expiring(self, horizon: datetime, now: datetime, limit: int) -> list[TokenRecord]:
        return self._claim(TokenRow.expiring_announced_at, horizon, now, limit)

    def _claim(
        self,
        announced: InstrumentedAttribute[datetime | None],
        horizon: datetime,
        now: datetime,
        limit: int,
    ) -> list[TokenRecord]:
        """Set `announced` on tokens expiring by `horizon` that lack it, in one statement.

        On PostgreSQL the candidates are locked FOR UPDATE SKIP LOCKED, so that sweeps running
        side by side (one per replica) claim disjoint tokens and never wait on each other; the
        outer condition is re-checked on each row, so a token another sweep committed meanwhile
        is not claimed twice. SQLite runs one writer at a time (BEGIN IMMEDIATE).
        """
        pending = (
            select(TokenRow.seq)
            .where(
                TokenRow.expires_at.is_not(None),
                announced.is_(None),
                TokenRow.expires_at <= horizon,
            )
            .order_by(TokenRow.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        result = self._session.execute(
            update(TokenRow)
            .where(TokenRow.seq.in_(pending.scalar_subquery()), announced.is_(None))
            .values({announced: now})
            .returning(*_TOKEN_COLUMNS)
            .execution_options(synchronize_session=False)
        )
        # In the order they expired: the events are recorded (and numbered) in this order.
        return sorted(
            (_token_from_row(row) for row in result),
            key=lambda record: (record.expires_at or now, record.token_id),
        )


class SqlStore:
    """Implements domain.ports.Store. Thread-safe.

    Management transactions take a pooled connection each. The Validate read keeps one
    autocommit connection per worker thread: a pool checkout would cost more than the query.
    """

    # How often a unit of work aborted for a conflict is run again before the caller is told
    # to retry (UNAVAILABLE, STORE_CONTENDED).
    attempts = 5

    def __init__(self, writer: Engine, reader: Engine) -> None:
        # Handed every unit of work's events once it committed (server.py sets it).
        self.dispatch: Dispatcher | None = None
        self._sessions = sessionmaker(writer, expire_on_commit=False)
        self._reader = reader
        self._local = threading.local()
        self._held: list[Connection] = []
        self._held_lock = threading.Lock()
        self.writer = writer

    @contextmanager
    def transaction(self) -> Iterator[SqlTransaction]:
        with self._sessions() as session:
            try:
                with session.begin():
                    tx = SqlTransaction(session)
                    yield tx
                    committed = tx.write_events()
            except IntegrityError as error:
                # Two callers raced for the same unique name: the loser hears it plainly.
                raise AlreadyExists("it already exists (created concurrently)") from error
            except DBAPIError as error:
                if _is_conflict(error):
                    raise _Conflict from error
                if isinstance(error, OperationalError):
                    raise _unavailable(error) from error
                raise
        if committed and self.dispatch is not None:
            self.dispatch(committed)

    def run(self, work: Callable[[Transaction], T]) -> T:
        """Run `work` as one unit of work; again, a bounded number of times, when the database
        aborted it for a conflict (a deadlock between two lock orders it did not choose)."""
        for attempt in range(self.attempts):
            try:
                with self.transaction() as tx:
                    return work(tx)
            except _Conflict:
                # Back off a little, at random, so that the two sides do not meet again.
                time.sleep((attempt + 1) * 0.005 * (1 + secrets.randbelow(100) / 100))
        raise Unavailable("the token store stayed contended; retry shortly", Reason.STORE_CONTENDED)

    def _read_connection(self) -> Connection:
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is None or connection.closed or connection.invalidated:
            connection = self._reader.connect()
            self._local.connection = connection
            with self._held_lock:
                self._held.append(connection)
        return connection

    def _read(self, query: Executable, parameters: dict[str, Any]) -> Sequence[Row[Any]]:
        """One statement on this thread's held autocommit reader connection.

        The hot reads (Validate's token lookup, the change feed's poll) run here: opening an
        ORM session per read cost more than the query itself. No commit: the reader is in
        autocommit, so no transaction stays open between reads.
        """
        try:
            return self._read_connection().execute(query, parameters).all()
        except DBAPIError:
            # The held connection may have died (database restart): one retry on a new one.
            self._local.connection = None
            try:
                return self._read_connection().execute(query, parameters).all()
            except OperationalError as error:
                raise _unavailable(error) from error

    def get_token(self, token_id: str) -> TokenRecord | None:
        """The Validate read path: one indexed lookup on this thread's reader connection."""
        rows = self._read(_GET_TOKEN, {"token_id": token_id})
        return _token_from_row(rows[0]) if rows else None

    def events_after(self, sequence: int, limit: int) -> list[RecordedEvent]:
        rows = self._read(_EVENTS_AFTER, {"after": sequence, "limit": limit})
        return [_event_from_row(row) for row in rows]

    def last_sequence(self) -> int:
        rows = self._read(_LAST_SEQUENCE, {})
        return int(rows[0][0] or 0) if rows else 0

    def dispose(self) -> None:
        with self._held_lock:
            for connection in self._held:
                connection.close()
            self._held.clear()
        self.writer.dispose()
        self._reader.dispose()
