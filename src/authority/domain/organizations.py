"""Organisation use cases: organisations, principals and memberships. One unit of work each."""

from __future__ import annotations

from authority.domain import pagination, policy
from authority.domain.access import Access
from authority.domain.clock import Clock
from authority.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    shown,
)
from authority.domain.events import Event, EventKind, Initiator, token_event
from authority.domain.models import (
    Membership,
    Organization,
    Principal,
    PrincipalKind,
    Role,
    check_organization_name,
    check_principal_name,
    check_text,
)
from authority.domain.policy import Caller
from authority.domain.ports import Hold, Store, Transaction
from authority.domain.tokens import MAX_LABEL, Page


class OrganizationService:
    """The organisation use cases. Holds no state of its own beyond what it was given."""

    def __init__(self, store: Store, clock: Clock, access: Access) -> None:
        self._store = store
        self._clock = clock
        self._access = access

    def require_global_admin(self, caller: Caller, action: str) -> None:
        """PermissionDenied unless the caller is a global administrator's global token."""
        self._store.run(lambda tx: self._access.authorize_global(tx, caller, action))

    def create_organization(self, caller: Caller, name: str, display_name: str) -> Organization:
        """Global administrators create organisations."""
        check_organization_name(name, "name")
        check_text("display_name", display_name, MAX_LABEL)
        organization = Organization(name, display_name or name, self._clock())

        def work(tx: Transaction) -> Organization:
            self._access.authorize_global(tx, caller, "create organisations")
            if tx.get_organization(name) is not None:
                raise AlreadyExists(f"organization {shown(name)} already exists")
            tx.add_organization(organization)
            tx.record(
                Event(
                    EventKind.ORGANIZATION_CREATED,
                    organization.created_at,
                    Initiator.of(caller),
                    name,
                    name,
                )
            )
            return organization

        return self._store.run(work)

    def list_organizations(
        self, caller: Caller, page_size: int, page_token: str
    ) -> Page[Organization]:
        """Every organisation for a global administrator; otherwise the caller's own."""
        limit = pagination.page_size(page_size)

        def work(tx: Transaction) -> Page[Organization]:
            only: list[str] | None = None
            if not self._access.is_global(tx, caller):
                only = []
                if caller.organization is not None:
                    try:
                        self._access.authorize(tx, caller, caller.organization, Hold.READ)
                        only = [caller.organization]
                    except NotFound:
                        pass
            query: list[object] = ["organizations", only]
            after = pagination.decode(page_token, query, str)
            rows = tx.list_organizations(only, after, limit + 1)
            next_token = pagination.encode(query, rows[limit - 1].name) if len(rows) > limit else ""
            return Page(rows[:limit], next_token)

        return self._store.run(work)

    def create_principal(self, caller: Caller, name: str, kind: PrincipalKind | None) -> Principal:
        """Global administrators register users and services."""
        check_principal_name(name, "name")
        if kind is None:
            raise InvalidArgument("kind", "is required: PRINCIPAL_KIND_USER or _SERVICE")
        principal = Principal(name, kind, False, self._clock())

        def work(tx: Transaction) -> Principal:
            self._access.authorize_global(tx, caller, "create principals")
            if tx.get_principal(name) is not None:
                raise AlreadyExists(f"principal {shown(name)} already exists")
            tx.add_principal(principal)
            tx.record(
                Event(
                    EventKind.PRINCIPAL_CREATED,
                    principal.created_at,
                    Initiator.of(caller),
                    None,
                    name,
                    details={"kind": kind.value},
                )
            )
            return principal

        return self._store.run(work)

    def add_member(
        self, caller: Caller, organization: str, principal: str, role: Role | None
    ) -> Membership:
        """Add a principal to an organisation, or change its role there."""
        check_organization_name(organization)
        check_principal_name(principal)
        if role is None:
            raise InvalidArgument("role", "is required: owner, admin or member")
        membership = Membership(organization, principal, role)

        def work(tx: Transaction) -> Membership:
            actor = self._access.authorize(tx, caller, organization, Hold.CHANGE)
            current = tx.get_role(organization, principal)
            policy.may_change_membership(actor, organization, current, role)
            if tx.get_principal(principal) is None:
                raise NotFound(
                    f"principal {shown(principal)} not found; create it first",
                    Reason.PRINCIPAL_NOT_FOUND,
                )
            if current is Role.OWNER and role is not Role.OWNER:
                _keep_an_owner(tx, organization)
            tx.set_role(membership)
            if current is not role:
                changes = {"role": role.value, "previous_role": current.value if current else ""}
                kind = (
                    EventKind.MEMBERSHIP_ADDED
                    if current is None
                    else (EventKind.MEMBERSHIP_ROLE_CHANGED)
                )
                tx.record(
                    Event(
                        kind,
                        self._clock(),
                        Initiator.of(caller),
                        organization,
                        principal,
                        details=changes,
                    )
                )
            return membership

        return self._store.run(work)

    def remove_member(self, caller: Caller, organization: str, principal: str) -> list[str]:
        """Remove a principal; its tokens in the organisation are revoked. Returns their ids.

        The organisation stays locked until commit, so no token for the principal can be issued
        between the sweep and the removal (IssueToken holds the same lock, shared).
        """
        check_organization_name(organization)
        check_principal_name(principal)

        def work(tx: Transaction) -> list[str]:
            actor = self._access.authorize(tx, caller, organization, Hold.CHANGE)
            current = tx.get_role(organization, principal)
            policy.may_change_membership(actor, organization, current, None)
            if current is None:
                raise NotFound(
                    f"principal {shown(principal)} is not a member of {shown(organization)}",
                    Reason.NOT_A_MEMBER,
                )
            if current is Role.OWNER:
                _keep_an_owner(tx, organization)
            tx.remove_membership(organization, principal)
            now = self._clock()
            revoked = tx.revoke_tokens_of(organization, principal, now)
            initiator = Initiator.of(caller)
            tx.record(
                Event(
                    EventKind.MEMBERSHIP_REMOVED,
                    now,
                    initiator,
                    organization,
                    principal,
                    details={"previous_role": current.value, "revoked": str(len(revoked))},
                )
            )
            for token_id in revoked:
                tx.record(
                    token_event(
                        EventKind.TOKEN_REVOKED,
                        initiator,
                        organization,
                        token_id,
                        now,
                        because="membership.removed",
                    )
                )
            return revoked

        return self._store.run(work)

    def list_members(self, caller: Caller, organization: str) -> list[Membership]:
        """Anyone with a standing in the organisation may see its members."""
        check_organization_name(organization)

        def work(tx: Transaction) -> list[Membership]:
            self._access.authorize(tx, caller, organization, Hold.READ)
            return tx.list_members(organization)

        return self._store.run(work)


def _keep_an_owner(tx: Transaction, organization: str) -> None:
    """Checked under the organisation's exclusive lock: no concurrent change can race it."""
    owners = [m for m in tx.list_members(organization) if m.role is Role.OWNER]
    if len(owners) <= 1:
        raise FailedPrecondition(
            f"{shown(organization)} would have no owner left: make another member owner first",
            Reason.LAST_OWNER,
        )
