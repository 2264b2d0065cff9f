"""The audit trail: who did what to which object, when, from where, read from the change log.

Every change a use case makes is recorded in its own unit of work (`tx.record`), and so is
every key exchange (`access_token.issued`, domain/exchange.py); this module reads it back
(ListAuditEvents, `authority audit export`), records the management calls and key exchanges that
were refused (in a unit of work of their own, since the refused one rolled back, and no faster
than a token bucket per organisation allows, so that an attack cannot flood the log), and
deletes what is older than the retention.

Nothing read from here ever carries a token value: every text field is scrubbed of anything
shaped like one (a label is the caller's free text), and the log never held a hash or a
password.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from authority.domain import pagination, policy
from authority.domain.access import Access
from authority.domain.clock import Clock
from authority.domain.errors import InvalidArgument, shown
from authority.domain.events import Event, EventKind, Initiator, Outcome, RecordedEvent
from authority.domain.models import check_organization_name, check_principal_name, check_text
from authority.domain.policy import Actor, Caller, Standing
from authority.domain.ports import EventQuery, Hold, Store, Transaction
from authority.domain.token_format import SCANNER_REGEX, is_token_id
from authority.domain.tokens import Page

# How many refused calls are recorded at most, per organisation (and for the callers that could
# not be identified, together) per process: a sustained rate and a burst.
REFUSALS_PER_SECOND = 10.0
REFUSAL_BURST = 50
# Events read or deleted per transaction by the export and the retention.
BATCH = 1000
# What an organisation key is called as an actor (as `created_by` calls it).
KEY_PREFIX = "key:"
MAX_OBJECT = 160
REDACTED = "(redacted: shaped like a token)"
_TOKEN_SHAPED = re.compile(SCANNER_REGEX)

Monotonic = Callable[[], float]


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What a reader of the trail asks for, as given (empty: any)."""

    organization: str = ""
    # A principal's name, or `key:<token_id>` for an organisation key.
    actor: str = ""
    # An EventKind value, e.g. `token.revoked`.
    action: str = ""
    # An event's subject: a token id, a principal's or organisation's name, a method.
    object: str = ""
    since: datetime | None = None
    until: datetime | None = None


def event_query(wanted: AuditFilter) -> EventQuery:
    """The store's query for a filter, every field checked (InvalidArgument names the bad one)."""
    organization = wanted.organization and check_organization_name(wanted.organization)
    principal = token_id = None
    if wanted.actor.startswith(KEY_PREFIX):
        token_id = wanted.actor[len(KEY_PREFIX) :]
        if not is_token_id(token_id):
            raise InvalidArgument("actor", f"{shown(wanted.actor)}: use key:<token id>")
    elif wanted.actor:
        principal = check_principal_name(wanted.actor, "actor")
    kinds = {kind.value for kind in EventKind}
    if wanted.action and wanted.action not in kinds:
        raise InvalidArgument(
            "action", f"{shown(wanted.action)}: use one of {', '.join(sorted(kinds))}"
        )
    check_text("object", wanted.object, MAX_OBJECT)
    if wanted.since and wanted.until and wanted.until <= wanted.since:
        raise InvalidArgument("until", "must be later than since")
    return EventQuery(
        organization=organization or None,
        actor_principal=principal,
        actor_token_id=token_id,
        kind=wanted.action or None,
        subject=wanted.object or None,
        since=wanted.since,
        until=wanted.until,
    )


def scrubbed(recorded: RecordedEvent) -> RecordedEvent:
    """The event with anything shaped like a token value replaced (a label is free text)."""
    event = recorded.event

    def clean(text: str) -> str:
        return _TOKEN_SHAPED.sub(REDACTED, text) if "tka_" in text else text

    initiator = event.initiator
    return RecordedEvent(
        recorded.sequence,
        dataclasses.replace(
            event,
            subject=clean(event.subject),
            initiator=dataclasses.replace(
                initiator, peer=clean(initiator.peer), request_id=clean(initiator.request_id)
            ),
            details={clean(key): clean(value) for key, value in event.details.items()},
        ),
    )


def as_json(recorded: RecordedEvent) -> dict[str, Any]:
    """One line of `authority audit export`: the fields of the API's AuditEvent."""
    event = recorded.event
    return {
        "sequence": recorded.sequence,
        "occurred_at": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "action": event.kind.value,
        "organization": event.organization or "",
        "object": event.subject,
        "token_id": event.token_id or "",
        "actor_principal": event.initiator.principal or "",
        "actor_token_id": event.initiator.token_id or "",
        "peer": event.initiator.peer,
        "request_id": event.initiator.request_id,
        "outcome": event.outcome.value,
        "details": dict(event.details),
    }


@dataclass(frozen=True, slots=True)
class Refusal:
    """A management call (or a key exchange) that was refused, as the api layer saw it."""

    method: str
    # The status code's name and the ErrorInfo reason: never the message (it may quote input).
    code: str
    reason: str
    initiator: Initiator
    # The calling token's organisation; None for a global token or an unidentified caller.
    organization: str | None
    identified: bool

    @classmethod
    def of(
        cls,
        method: str,
        code: str,
        reason: str,
        caller: Caller | None,
        peer: str,
        request_id: str,
    ) -> Refusal:
        """`caller` None: the bearer (or the key to exchange) could not be identified
        (missing, unknown, revoked...)."""
        if caller is None:
            return cls(method, code, reason, Initiator(None, None, peer, request_id), None, False)
        return cls(method, code, reason, Initiator.of(caller), caller.organization, True)

    @property
    def bucket(self) -> str:
        """Whose allowance it uses: its organisation's, the global tokens', or the one that
        every unidentified caller shares (an attacker cannot get more by changing address)."""
        if not self.identified:
            return "unidentified"
        return f"org:{self.organization}" if self.organization else "global"


class RefusalLimiter:
    """A token bucket per key: at most `burst` at once, refilled at `rate` per second.

    Thread-safe. Counts what it turned away, so that the next event admitted for the key can
    say how many refusals went unrecorded before it.
    """

    def __init__(
        self,
        rate: float = REFUSALS_PER_SECOND,
        burst: int = REFUSAL_BURST,
        monotonic: Monotonic = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._monotonic = monotonic
        self._max_keys = max_keys
        # key -> [tokens, last refill, turned away since the last admitted]
        self._buckets: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def admit(self, key: str) -> int | None:
        """None when over the limit (counted); otherwise how many were turned away before."""
        now = self._monotonic()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self._max_keys:
                    self._forget_idle(now)
                bucket = self._buckets.setdefault(key, [self._burst, now, 0])
            tokens, last, turned_away = bucket
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            if tokens < 1:
                bucket[:] = [tokens, now, turned_away + 1]
                return None
            bucket[:] = [tokens - 1, now, 0]
            return int(turned_away)

    def _forget_idle(self, now: float) -> None:
        """Buckets refilled to the brim, with nothing to report, hold no state worth keeping."""
        for key, (tokens, last, turned_away) in list(self._buckets.items()):
            if turned_away == 0 and tokens + (now - last) * self._rate >= self._burst:
                del self._buckets[key]


class AuditService:
    """Reads, exports and prunes the trail; records refused calls. Holds no state of its own
    beyond its limiter."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        access: Access,
        retention_days: int = 365,
        limiter: RefusalLimiter | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._access = access
        self._retention_days = retention_days
        self._limiter = limiter or RefusalLimiter()

    def list_events(
        self, caller: Caller, wanted: AuditFilter, page_size: int, page_token: str
    ) -> Page[RecordedEvent]:
        """Newest first. An organisation's owners and admins see its events; a global
        administrator's global token every event (organisation optional for it alone)."""
        query = event_query(wanted)
        limit = pagination.page_size(page_size)

        def work(tx: Transaction) -> Page[RecordedEvent]:
            if query.organization is None:
                if not self._access.is_global(tx, caller):
                    raise InvalidArgument(
                        "organization", "is required (only a global administrator reads every one)"
                    )
                actor = Actor(caller, Standing.GLOBAL)
            else:
                actor = self._access.authorize(tx, caller, query.organization, Hold.READ)
            policy.may_read_audit(actor)
            before = pagination.decode(page_token, _page_key(query), int)
            rows = tx.find_events(query, before, limit + 1)
            next_token = ""
            if len(rows) > limit:
                next_token = pagination.encode(_page_key(query), rows[limit - 1].sequence)
            return Page([scrubbed(row) for row in rows[:limit]], next_token)

        return self._store.run(work)

    def export(self, wanted: AuditFilter, batch: int = BATCH) -> Iterator[RecordedEvent]:
        """Every matching event, oldest first, read `batch` at a time (one transaction each),
        so that a long trail never sits in memory. For the server host: no caller, no policy."""
        query = event_query(wanted)
        after = 0
        while True:
            rows = self._store.run(
                functools.partial(_oldest_after, query=query, after=after, limit=batch)
            )
            for row in rows:
                yield scrubbed(row)
            if len(rows) < batch:
                return
            after = rows[-1].sequence

    # -- refused calls --------------------------------------------------------------------------

    def admit(self, refusal: Refusal) -> Event | None:
        """The event to record for a refused call, or None when its bucket is empty (cheap:
        call it before spending a database thread on the write)."""
        turned_away = self._limiter.admit(refusal.bucket)
        if turned_away is None:
            return None
        details: dict[str, str] = {
            "method": refusal.method,
            "code": refusal.code,
            "reason": refusal.reason,
        }
        if turned_away:
            details["unrecorded_before"] = str(turned_away)
        return Event(
            EventKind.CALL_REFUSED,
            self._clock(),
            refusal.initiator,
            refusal.organization,
            refusal.method,
            None,
            Outcome.REFUSED,
            details,
        )

    def record(self, event: Event) -> None:
        """Write one event in a unit of work of its own."""
        self._store.run(lambda tx: tx.record(event))

    # -- retention ------------------------------------------------------------------------------

    def enforce_retention(self, batch: int = BATCH) -> int:
        """Delete events older than the retention (by when they occurred, never by sequence:
        a replica's position is a sequence, however far behind), `batch` per transaction.
        0 days keeps everything. Returns how many went."""
        if self._retention_days <= 0:
            return 0
        cutoff = self._clock() - timedelta(days=self._retention_days)
        deleted = 0
        while True:
            gone = self._store.run(lambda tx: tx.delete_events_before(cutoff, batch))
            deleted += gone
            if gone < batch:
                return deleted


def _page_key(query: EventQuery) -> list[object]:
    """What a page token is bound to: every filter (a token of another query is refused)."""
    return [
        "audit",
        query.organization,
        query.actor_principal,
        query.actor_token_id,
        query.kind,
        query.subject,
        query.since.isoformat() if query.since else None,
        query.until.isoformat() if query.until else None,
    ]


def _oldest_after(
    tx: Transaction, query: EventQuery, after: int, limit: int
) -> list[RecordedEvent]:
    return tx.find_events(query, after, limit, newest_first=False)
