"""Domain events: what a unit of work changed, recorded in the same transaction.

Use cases append events to their transaction (`tx.record`); the store writes them to the
append-only change log with a strictly increasing sequence number as part of the commit and,
once committed, hands them to the dispatcher. The one log serves three needs: the audit trail,
the stream others follow (WatchEvents) and the invalidation of every process's cache, so no
servicer has to remember to invalidate anything.

An event never carries a secret, a hash or a password: ids, names and roles only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from authority.domain.policy import Caller


class EventKind(enum.StrEnum):
    """What happened. Stable: consumers filter on these strings."""

    TOKEN_ISSUED = "token.issued"
    TOKEN_REVOKED = "token.revoked"
    TOKEN_CHANGED = "token.changed"
    TOKEN_EXPIRED = "token.expired"
    TOKEN_EXPIRING = "token.expiring"
    MEMBERSHIP_ADDED = "membership.added"
    MEMBERSHIP_ROLE_CHANGED = "membership.role_changed"
    MEMBERSHIP_REMOVED = "membership.removed"
    ORGANIZATION_CREATED = "organization.created"
    PRINCIPAL_CREATED = "principal.created"
    # A new signing key signs from now on (subject: its kid; the retired kid in details).
    # Every process reloads its key set when it sees one.
    SIGNING_KEY_ROTATED = "signing_key.rotated"
    # A management call refused (bad bearer, missing scope, no standing...): audit only.
    CALL_REFUSED = "call.refused"


# The kinds that change what Validate must answer for a token (its cache entry).
TOKEN_KINDS = frozenset(
    {
        EventKind.TOKEN_ISSUED,
        EventKind.TOKEN_REVOKED,
        EventKind.TOKEN_CHANGED,
        EventKind.TOKEN_EXPIRED,
        EventKind.TOKEN_EXPIRING,
    }
)


class Outcome(enum.StrEnum):
    OK = "ok"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Initiator:
    """Who did it: the principal and the token it presented, from where, in which call."""

    principal: str | None = None
    token_id: str | None = None
    peer: str = ""
    request_id: str = ""

    @classmethod
    def of(cls, caller: Caller) -> Initiator:
        return cls(caller.subject, caller.token_id, caller.peer, caller.request_id)


SYSTEM = Initiator(principal=None, token_id=None, peer="", request_id="")


@dataclass(frozen=True, slots=True)
class Event:
    """One change, as a use case records it (the store adds the sequence number)."""

    kind: EventKind
    occurred_at: datetime
    initiator: Initiator
    organization: str | None
    # What it is about: a token id, a principal's name or an organisation's name.
    subject: str
    token_id: str | None = None
    outcome: Outcome = Outcome.OK
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the change log holds it: with its place in the order of commits."""

    sequence: int
    event: Event


def token_event(
    kind: EventKind,
    actor: Initiator,
    organization: str | None,
    token_id: str,
    at: datetime,
    **details: str,
) -> Event:
    """An event about one token (what the caches and WatchEvents follow)."""
    return Event(kind, at, actor, organization, token_id, token_id, Outcome.OK, details)


@dataclass(frozen=True, slots=True)
class WatchedEvent:
    """A token event as WatchEvents shows it, with the token's principal and expiry as they
    stand (read with the event, from the token's row)."""

    recorded: RecordedEvent
    principal: str | None
    expires_at: datetime | None
