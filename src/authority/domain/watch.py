"""WatchEvents: an organisation's token events from a position, as the caller may see them.

The stream itself (history, then live) is the api layer's; this is the read it repeats: one
unit of work that resolves the caller's standing in the organisation, asks the policy whose
tokens it may follow (the same answer as for a listing) and reads the next page of the log.
Each page re-resolves the standing, so a watcher removed from the organisation, or demoted,
sees no further event it may no longer see.
"""

from __future__ import annotations

from authority.domain import policy
from authority.domain.access import Access
from authority.domain.errors import FailedPrecondition, InvalidArgument, Reason
from authority.domain.events import WatchedEvent
from authority.domain.models import check_organization_name
from authority.domain.policy import Caller
from authority.domain.ports import Hold, Store, Transaction

# Events read per page at most: what one read holds in memory, whatever the backlog.
MAX_PAGE = 500


def check_watch(organization: str, after_sequence: int) -> None:
    """The request's fields, before anything is read."""
    check_organization_name(organization)
    if after_sequence < 0:
        raise InvalidArgument(
            "after_sequence",
            "must be 0 (from the oldest event kept) or the sequence of the last event seen",
        )


class EventWatch:
    """Reads pages of an organisation's token events for WatchEvents."""

    def __init__(self, store: Store, access: Access) -> None:
        self._store = store
        self._access = access

    def page(
        self, caller: Caller, organization: str, after_sequence: int, limit: int = MAX_PAGE
    ) -> list[WatchedEvent]:
        """The token events after `after_sequence` that the caller may see, oldest first.

        NotFound (ORGANIZATION_NOT_FOUND) when the caller has no standing there, as ListTokens.
        """
        check_watch(organization, after_sequence)
        limit = max(1, min(limit, MAX_PAGE))

        def work(tx: Transaction) -> list[WatchedEvent]:
            actor = self._access.authorize(tx, caller, organization, Hold.READ)
            principal = policy.watched_subject(actor)
            purged = tx.events_purged_through()
            if 0 < after_sequence < purged:
                raise FailedPrecondition(
                    f"events after {after_sequence} up to {purged} are past the audit "
                    "retention and gone: list the organisation's tokens again, then watch "
                    f"from {purged}",
                    Reason.POSITION_EXPIRED,
                )
            return tx.token_events_after(organization, principal, after_sequence, limit)

        return self._store.run(work)
