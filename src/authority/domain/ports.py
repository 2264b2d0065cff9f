"""What the domain needs from storage. store/ implements these; tests may use the real store."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

from authority.domain.events import Event, RecordedEvent, WatchedEvent
from authority.domain.models import Membership, Organization, Principal, Role, TokenRecord

if TYPE_CHECKING:  # signing.py uses these ports
    from authority.domain.signing import SigningKeyRecord

T = TypeVar("T")


class Hold(enum.Enum):
    """How a unit of work holds the organisation it acts in, until it commits.

    The one locking protocol, decided here and applied by `access.authorize`: every unit of work
    locks the organisation row first (then the bearer's token row, then what it changes), so
    that the facts an invariant was checked on stay true until commit on every backend.
    """

    # Reads only: no lock (a read racing a change is answered from either side of it).
    READ = "read"
    # Adds to the organisation (IssueToken): shared, so issues run side by side, but never
    # beside a change of who belongs to it.
    ADD = "add"
    # Changes who belongs or what is alive (members, roles, revocations): exclusive.
    CHANGE = "change"


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which events of the change log to read; None (or empty) matches everything."""

    # None: every organisation's, and the installation-wide events too.
    organization: str | None = None
    actor_principal: str | None = None
    # An organisation key (a token with no subject) as the actor.
    actor_token_id: str | None = None
    kind: str | None = None
    subject: str | None = None
    # At or after `since`, before `until` (by occurred_at).
    since: datetime | None = None
    until: datetime | None = None


class Transaction(Protocol):
    """One unit of work: everything done through it commits together or not at all."""

    def lock_organization(self, name: str, hold: Hold) -> Organization | None:
        """The organisation, locked as `hold` says (SELECT ... FOR SHARE / FOR UPDATE)."""
        ...

    def lock_token(self, token_id: str) -> TokenRecord | None:
        """The token, locked against a concurrent revoke until commit (FOR SHARE)."""
        ...

    def lock_global(self) -> None:
        """Serialise units of work that check an installation-wide invariant (the global
        administrators' tokens, bootstrap)."""
        ...

    def get_organization(self, name: str) -> Organization | None: ...
    def add_organization(self, organization: Organization) -> None: ...
    def list_organizations(
        self, only: Sequence[str] | None, after: str | None, limit: int
    ) -> list[Organization]: ...

    def get_principal(self, name: str) -> Principal | None: ...
    def add_principal(self, principal: Principal) -> None: ...
    def any_global_admin(self) -> bool: ...

    def get_role(self, organization: str, principal: str) -> Role | None: ...
    def set_role(self, membership: Membership) -> None: ...
    def remove_membership(self, organization: str, principal: str) -> bool: ...
    def list_members(self, organization: str) -> list[Membership]: ...
    def organizations_of(self, principal: str) -> list[str]: ...

    def add_token(self, record: TokenRecord) -> None: ...
    def get_token(self, token_id: str) -> TokenRecord | None: ...
    def list_tokens(
        self,
        organization: str,
        subject: str | None,
        include_revoked: bool,
        before: int | None,
        limit: int,
    ) -> list[tuple[int, TokenRecord]]:
        """Newest first; each record with its cursor (a position to continue `before`)."""
        ...

    def revoke_token(self, token_id: str, at: datetime) -> TokenRecord | None:
        """Set revoked_at unless already set; the stored record afterwards."""
        ...

    def revoke_tokens_of(self, organization: str, subject: str, at: datetime) -> list[str]:
        """Revoke every live token of `subject` in `organization`; their ids."""
        ...

    def count_live_global_tokens(self, now: datetime) -> int:
        """Global tokens of global administrators, neither revoked nor expired at `now`."""
        ...

    def get_fact(self, name: str) -> str | None: ...
    def add_fact(self, name: str, value: str) -> None: ...

    def signing_keys(self) -> list[SigningKeyRecord]:
        """Every stored signing key (current, retired, and gone ones not yet deleted)."""
        ...

    def add_signing_key(self, record: SigningKeyRecord) -> None: ...
    def retire_signing_key(self, kid: str, at: datetime) -> None: ...
    def delete_signing_keys(self, kids: Sequence[str]) -> None: ...

    def find_events(
        self, query: EventQuery, cursor: int | None, limit: int, newest_first: bool = True
    ) -> list[RecordedEvent]:
        """Events matching `query` in sequence order, from the `cursor` sequence (exclusive):
        below it newest first, above it oldest first."""
        ...

    def delete_events_before(self, cutoff: datetime, limit: int) -> int:
        """Delete at most `limit` of the oldest events that occurred before `cutoff`, never the
        newest event of all (so that sequence numbers never go back); how many went. The
        newest sequence deleted is remembered (`events_purged_through`)."""
        ...

    def events_purged_through(self) -> int:
        """The newest sequence number the retention has deleted (0: none)."""
        ...

    def record(self, event: Event) -> None:
        """Append an event to the change log as part of this unit of work: written with the
        commit (or not at all), then handed to the dispatcher."""
        ...

    def token_events_after(
        self, organization: str, principal: str | None, after: int, limit: int
    ) -> list[WatchedEvent]:
        """The organisation's token events after sequence `after`, oldest first, at most
        `limit`; only those of `principal`'s tokens unless it is None."""
        ...

    def claim_expired(self, now: datetime, limit: int) -> list[TokenRecord]:
        """Mark at most `limit` tokens that expired by `now` and were not yet announced as
        announced, and return them. Each token is claimed once however many units of work
        sweep at the same time (PostgreSQL: rows another holds are skipped)."""
        ...

    def claim_expiring(self, horizon: datetime, now: datetime, limit: int) -> list[TokenRecord]:
        """The same for tokens that expire by `horizon` and were not yet warned of."""
        ...


class Store(Protocol):
    """Runs units of work and serves the single read the Validate path needs."""

    def run(self, work: Callable[[Transaction], T]) -> T:
        """Run `work` in one transaction and commit; a unit of work the database aborts for a
        conflict (deadlock, serialisation failure) is run again, a bounded number of times."""
        ...

    def get_token(self, token_id: str) -> TokenRecord | None: ...

    def events_after(self, sequence: int, limit: int) -> list[RecordedEvent]:
        """Committed events after `sequence`, oldest first: no gap can open behind them."""
        ...

    def last_sequence(self) -> int:
        """The newest committed event's sequence number (0: none yet)."""
        ...
