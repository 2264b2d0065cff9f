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
    # A management call or a key exchange refused (bad bearer or key, missing scope, no
    # standing...): audit only.
    CALL_REFUSED = "call.refused"
    # An API key exchanged for a signed access token (subject and token_id: the access token's
    # jti; the initiator: the key and its principal; details: key_id, scopes, audience,
    # expires_at, refresh_until). Audit only, see TOKEN_KINDS. A refresh is not recorded: it
    # must stay free of database writes (the parent key's state comes from the Validate cache).
    ACCESS_TOKEN_ISSUED = "access_token.issued"


# The kinds that change what Validate must answer for a token (its cache entry), and the
# kinds WatchEvents streams. Not ACCESS_TOKEN_ISSUED: an access token is no stored token (no row
# a gateway could GetToken, no cache entry to invalidate: Validate reads its claims and its
# parent key's entry), it dies with its parent (whose token.revoked and token.expired are here)
# or at its own `exp`, and one is minted per exchange, a volume a gateway has no use for.
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
