"""Token lifecycle: expiry announced when the time comes, not only when someone asks.

A token stops working the moment its expires_at passes: Validate compares it with the clock,
and nothing is written then. Those who follow the change log (WatchEvents consumers, the
audit trail) also need to hear of it when it happens. Each server sweeps every few seconds:
one unit of work claims the tokens whose expiry has passed (or entered the warning window) and
that were not yet announced, marks them and records `token.expired` / `token.expiring`. The
mark and the event commit together, so each announcement is made exactly once, however many
replicas sweep at the same moment and whichever of them crashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from authority.domain.clock import Clock
from authority.domain.events import SYSTEM, Event, EventKind, token_event
from authority.domain.models import TokenRecord
from authority.domain.ports import Store, Transaction

# Tokens claimed per unit of work: bounds a transaction when many expire at the same moment.
SWEEP_BATCH = 500


def announces_expiry(record: TokenRecord) -> bool:
    """Whether a token's passing its expiry is news: not when it was revoked before then (it
    was already dead, and `token.revoked` said so)."""
    assert record.expires_at is not None
    return record.revoked_at is None or record.revoked_at > record.expires_at


def warns_of_expiry(record: TokenRecord, now: datetime) -> bool:
    """Whether to warn that a token will soon expire: only while it is alive (a token found
    already expired gets `token.expired` alone)."""
    assert record.expires_at is not None
    return record.revoked_at is None and record.expires_at > now


@dataclass(frozen=True, slots=True)
class Announced:
    """What one sweep recorded."""

    expired: int = 0
    expiring: int = 0


class ExpiryAnnouncer:
    """Records `token.expired` and `token.expiring` once each, when their time comes."""

    def __init__(
        self, store: Store, clock: Clock, warning: timedelta, batch: int = SWEEP_BATCH
    ) -> None:
        self._store = store
        self._clock = clock
        self._warning = warning
        self._batch = batch

    def sweep(self) -> Announced:
        """Announce every expiry due by now, a batch per unit of work, until none is left."""
        now = self._clock()
        expired = expiring = 0
        while True:
            claimed, announced = self._store.run(lambda tx: self._announce(tx, now))
            expired += announced.expired
            expiring += announced.expiring
            if claimed < self._batch:
                return Announced(expired, expiring)

    def _announce(self, tx: Transaction, now: datetime) -> tuple[int, Announced]:
        warned: list[TokenRecord] = []
        if self._warning > timedelta(0):
            warned = tx.claim_expiring(now + self._warning, now, self._batch)
        expired = tx.claim_expired(now, self._batch)
        # Claimed but not announced (revoked first, or already past): marked all the same,
        # so that the sweep never looks at them again.
        warnings = [record for record in warned if warns_of_expiry(record, now)]
        expiries = [record for record in expired if announces_expiry(record)]
        for record in warnings:
            tx.record(_expiry_event(EventKind.TOKEN_EXPIRING, record, now))
        for record in expiries:
            assert record.expires_at is not None
            tx.record(_expiry_event(EventKind.TOKEN_EXPIRED, record, record.expires_at))
        return max(len(warned), len(expired)), Announced(len(expiries), len(warnings))


def _expiry_event(kind: EventKind, record: TokenRecord, at: datetime) -> Event:
    assert record.expires_at is not None
    return token_event(
        kind,
        SYSTEM,
        record.organization,
        record.token_id,
        at,
        principal=record.subject or "",
        expires_at=record.expires_at.isoformat(),
    )
