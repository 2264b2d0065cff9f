"""The access policy: every rule of who may do what, in one place, as pure functions.

Nothing here reads the store. `access.py` gathers the facts (the caller's standing, the roles
involved) under the locks that keep them true until commit, and asks these functions; the use
cases never re-derive an answer. `tests/unit/test_policy.py` holds each rule to a table.

The lattice: MEMBER < ADMIN < OWNER < GLOBAL. A principal's standing in an organisation is its
role there; an organisation key (a token with no subject) stands as an ADMIN of its own
organisation; a global administrator's global token stands above every organisation, while its
tokens confined to an organisation stand there by the principal's role like anyone else's. On
top of its standing, a bearer acts only within its scopes.

The one rule behind the others: nobody gains power they were not given. A token never carries
more than the caller that issues it, on every axis: the standing it confers (its subject's role),
its scopes and its lifetime.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from authority.domain.errors import NotFound, PermissionDenied, Reason, shown
from authority.domain.models import Role
from authority.domain.scopes import PermissionMatcher


class Standing(enum.IntEnum):
    """A caller's rank where it acts; comparable (`>=` means at least as strong)."""

    MEMBER = 1
    ADMIN = 2
    OWNER = 3
    GLOBAL = 4


ROLE_STANDING = {
    Role.MEMBER: Standing.MEMBER,
    Role.ADMIN: Standing.ADMIN,
    Role.OWNER: Standing.OWNER,
}
# What an organisation key (a token with no subject) stands as in its own organisation.
ORGANIZATION_KEY_STANDING = Standing.ADMIN


@dataclass(frozen=True, slots=True)
class Caller:
    """The bearer of a management call, as authenticated (before any standing is known)."""

    token_id: str
    organization: str | None
    subject: str | None
    matcher: PermissionMatcher
    expires_at: datetime | None
    # Where the call came from and its id (also in the server's log line): for the audit trail.
    peer: str = ""
    request_id: str = ""

    @property
    def actor(self) -> str:
        """Recorded as `created_by`: the principal, or the organisation key itself."""
        return self.subject or f"key:{self.token_id}"


@dataclass(frozen=True, slots=True)
class Actor:
    """A caller with its standing where it acts (an organisation, or everywhere for GLOBAL)."""

    caller: Caller
    standing: Standing


def standing_of(
    caller: Caller, organization: str | None, role: Role | None, global_admin: bool
) -> Standing | None:
    """The caller's standing in `organization` (None: everywhere), given its subject's role
    there and whether its subject is a global administrator. None when it has no standing.

    Only a global token (no organisation) of a global administrator stands globally; a token is
    confined to its own organisation whatever else its subject may be.
    """
    if caller.organization is None:
        return Standing.GLOBAL if global_admin and caller.subject is not None else None
    if organization is None or caller.organization != organization:
        return None
    if caller.subject is None:
        return ORGANIZATION_KEY_STANDING
    return ROLE_STANDING[role] if role is not None else None


def conferred(subject: str | None, subject_role: Role | None) -> Standing:
    """The standing a token of an organisation confers on its bearer: an organisation key's,
    or its subject's role (a former member's tokens confer the least)."""
    if subject is None:
        return ORGANIZATION_KEY_STANDING
    return ROLE_STANDING[subject_role] if subject_role is not None else Standing.MEMBER


def require_global(standing: Standing | None, action: str) -> None:
    """Global administration (organisations, principals, process stats, global tokens)."""
    if standing is not Standing.GLOBAL:
        raise PermissionDenied(
            f"only a global administrator's global token may {action}",
            Reason.GLOBAL_ADMIN_REQUIRED,
        )


def may_issue(
    actor: Actor,
    subject: str | None,
    subject_role: Role | None,
    scopes: Iterable[str],
) -> None:
    """Whether `actor` may issue a token for `subject` (None: an organisation key) whose role
    is `subject_role`, holding `scopes`. The lifetime axis is `issued_expiry`."""
    caller = actor.caller
    if actor.standing is Standing.MEMBER and subject != caller.subject:
        raise PermissionDenied(
            "members may issue tokens only for themselves: set subject to "
            + shown(caller.subject or ""),
            Reason.ROLE_TOO_LOW,
        )
    if conferred(subject, subject_role) > actor.standing:
        what = f"principal {shown(subject)} ({subject_role})" if subject else "an organisation key"
        raise PermissionDenied(
            f"cannot issue a token for {what}: it would stand above the calling token "
            f"({actor.standing.name.lower()}); ask an owner",
            Reason.SUBJECT_OUTRANKS_ISSUER,
        )
    scopes_within(caller.matcher, scopes, "the calling token")


def scopes_within(held: PermissionMatcher, scopes: Iterable[str], holder: str) -> None:
    """The scope axis: a token carries no scope that the one it derives from (its issuer, or
    the key an access token is exchanged for) does not cover."""
    for scope in scopes:
        if not held.covers(scope):
            raise PermissionDenied(
                f"cannot grant scope {shown(scope)}: {holder} does not hold it "
                "(a token may not be stronger than the one it comes from)",
                Reason.SCOPE_EXCEEDS_ISSUER,
            )


def may_exchange(key: PermissionMatcher, requested: Iterable[str]) -> None:
    """ExchangeKey: an access token holds the key's scopes or a subset, never more."""
    scopes_within(key, requested, "the key")


def issued_expiry(caller: Caller, requested: datetime | None) -> datetime | None:
    """The lifetime axis: a token never outlives the bearer that issues it.

    No expiry asked of an expiring bearer means the bearer's own; a later one is refused.
    There is no exception, not even for owners: a stolen short-lived token must not be able to
    mint a long-lived one. An owner who wants a longer token issues it with a longer bearer.
    """
    limit = caller.expires_at
    if limit is None:
        return requested
    if requested is None:
        return limit
    if requested > limit:
        raise PermissionDenied(
            f"the token would outlive the calling token, which expires at {limit.isoformat()}: "
            "ask for an earlier expiry, or issue it with a longer-lived token",
            Reason.LIFETIME_EXCEEDS_ISSUER,
        )
    return requested


class TokenAccess(enum.Enum):
    """What a caller may do with one token."""

    HIDDEN = "hidden"
    SEE = "see"
    MANAGE = "manage"


def token_access(
    actor: Actor, token_subject: str | None, token_subject_role: Role | None
) -> TokenAccess:
    """Owners manage every token of their organisation; admins and organisation keys manage
    the tokens that confer no more than they hold and see the others; members manage their own.
    """
    if actor.standing >= Standing.OWNER:
        return TokenAccess.MANAGE
    if actor.standing is Standing.MEMBER:
        own = token_subject is not None and token_subject == actor.caller.subject
        return TokenAccess.MANAGE if own else TokenAccess.HIDDEN
    if conferred(token_subject, token_subject_role) > actor.standing:
        return TokenAccess.SEE
    return TokenAccess.MANAGE


def require_token_access(access: TokenAccess, wanted: TokenAccess, hidden: NotFound) -> None:
    """NotFound (as for a missing token) when hidden; PermissionDenied when only visible."""
    if access is TokenAccess.HIDDEN:
        raise hidden
    if wanted is TokenAccess.MANAGE and access is not TokenAccess.MANAGE:
        raise PermissionDenied(
            "this token confers more than the calling token holds: only an owner may change it",
            Reason.ROLE_TOO_LOW,
        )


def listed_subject(actor: Actor) -> str | None:
    """Whose tokens a listing shows: a member's own only; None means every token."""
    return actor.caller.subject if actor.standing is Standing.MEMBER else None


def watched_subject(actor: Actor) -> str | None:
    """Whose token events WatchEvents shows: the tokens a listing shows, so that following the
    events never reveals a token ListTokens hides (a member's own only; None: every token)."""
    return listed_subject(actor)


def may_change_membership(
    actor: Actor, organization: str, current: Role | None, new: Role | None
) -> None:
    """Owners and global administrators manage every role; admins (and organisation keys) only
    plain members, before and after; members nobody. `new` None is a removal."""
    if actor.standing >= Standing.OWNER:
        return
    if actor.standing is Standing.ADMIN:
        if all(role in (None, Role.MEMBER) for role in (current, new)):
            return
        raise PermissionDenied(
            "only owners may change owners and admins; admins may manage members",
            Reason.ROLE_TOO_LOW,
        )
    raise PermissionDenied(
        f"members of {shown(organization)} may not manage its members", Reason.ROLE_TOO_LOW
    )


def may_read_audit(actor: Actor) -> None:
    """The audit trail of an organisation: its owners and admins (organisation keys stand as
    admins) and global administrators; members may not read who did what to whom."""
    if actor.standing < Standing.ADMIN:
        raise PermissionDenied(
            "only owners and admins may read the organisation's audit trail", Reason.ROLE_TOO_LOW
        )
