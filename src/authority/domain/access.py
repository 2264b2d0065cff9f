"""Who is calling, and with what standing: the facts the policy decides on, gathered under lock.

`authorize` is the one place where a unit of work takes its locks (see `ports.Hold`): the
organisation row first, then the bearer's token row, re-checked alive inside the transaction
(the cache that authenticated it may be a moment behind a concurrent revoke). Use cases call it
first and then ask `policy` their question.
"""

from __future__ import annotations

from authority.domain import policy
from authority.domain.clock import Clock
from authority.domain.errors import NotFound, Reason, Unauthenticated, shown
from authority.domain.policy import Actor, Caller, Standing
from authority.domain.ports import Hold, Transaction
from authority.domain.validation import ValidationEntry


def caller_from_entry(entry: ValidationEntry, peer: str = "", request_id: str = "") -> Caller:
    """The Caller the api layer builds after authenticating a bearer."""
    return Caller(
        token_id=entry.token_id,
        organization=entry.organization or None,
        subject=entry.subject or None,
        matcher=entry.matcher,
        expires_at=entry.expires_at,
        peer=peer,
        request_id=request_id,
    )


def organization_not_found(organization: str) -> NotFound:
    """Worded the same whether it does not exist or the caller has no standing there."""
    return NotFound(f"organization {shown(organization)} not found", Reason.ORGANIZATION_NOT_FOUND)


class Access:
    """Resolves callers to actors inside a unit of work."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def _recheck_bearer(self, tx: Transaction, caller: Caller) -> None:
        """The bearer is still alive now that its row is locked against a revoke."""
        record = tx.lock_token(caller.token_id)
        if record is None or record.revoked_at is not None:
            raise Unauthenticated(
                "the bearer token was revoked: ask for a new one", Reason.TOKEN_REVOKED
            )
        if record.expires_at is not None and record.expires_at <= self._clock():
            raise Unauthenticated(
                "the bearer token has expired: ask for a new one", Reason.TOKEN_EXPIRED
            )

    def _is_global_admin(self, tx: Transaction, caller: Caller) -> bool:
        if caller.organization is not None or caller.subject is None:
            return False
        principal = tx.get_principal(caller.subject)
        return principal is not None and principal.global_admin

    def authorize(self, tx: Transaction, caller: Caller, organization: str, hold: Hold) -> Actor:
        """The caller's standing in `organization`, the organisation locked as `hold` says.

        NotFound when it does not exist or the caller has no standing there (the same answer).
        """
        found = tx.lock_organization(organization, hold)
        if hold is not Hold.READ:
            self._recheck_bearer(tx, caller)
        if found is None:
            raise organization_not_found(organization)
        role = None
        if caller.subject is not None and caller.organization == organization:
            role = tx.get_role(organization, caller.subject)
        standing = policy.standing_of(caller, organization, role, self._is_global_admin(tx, caller))
        if standing is None:
            raise organization_not_found(organization)
        return Actor(caller, standing)

    def authorize_global(
        self, tx: Transaction, caller: Caller, action: str, hold: Hold = Hold.READ
    ) -> Actor:
        """A global administrator's global token, or PermissionDenied. With a hold other than
        READ, installation-wide invariants are locked first (`tx.lock_global`)."""
        if hold is not Hold.READ:
            tx.lock_global()
            self._recheck_bearer(tx, caller)
        standing = policy.standing_of(caller, None, None, self._is_global_admin(tx, caller))
        policy.require_global(standing, action)
        return Actor(caller, Standing.GLOBAL)

    def is_global(self, tx: Transaction, caller: Caller) -> bool:
        """Whether the caller stands globally (for calls that answer everyone, differently)."""
        return self._is_global_admin(tx, caller)
