"""The access policy, rule by rule, against tables a reviewer can check line by line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from authority.domain import policy
from authority.domain.errors import NotFound, PermissionDenied, Reason
from authority.domain.models import Role
from authority.domain.policy import Actor, Caller, Standing, TokenAccess
from authority.domain.scopes import PermissionMatcher

MANAGE = ("authority.v1.*", "download", "upload")
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def caller(
    organization: str | None = "acme",
    subject: str | None = "alice",
    scopes: tuple[str, ...] = MANAGE,
    expires_at: datetime | None = None,
) -> Caller:
    return Caller("t" * 16, organization, subject, PermissionMatcher.compile(scopes), expires_at)


def actor(standing: Standing, subject: str | None = "alice", **fields: object) -> Actor:
    return Actor(caller(subject=subject, **fields), standing)  # type: ignore[arg-type]


# -- standing ---------------------------------------------------------------------------------

GLOBAL_TOKEN = caller(organization=None, subject="root")
CONFINED_GLOBAL = caller(organization="acme", subject="root")
ORG_KEY = caller(subject=None)


@pytest.mark.parametrize(
    ("who", "organization", "role", "global_admin", "expected"),
    [
        # a global administrator's global token stands everywhere ...
        (GLOBAL_TOKEN, "acme", None, True, Standing.GLOBAL),
        (GLOBAL_TOKEN, None, None, True, Standing.GLOBAL),
        # ... but a global token of anyone else stands nowhere
        (GLOBAL_TOKEN, "acme", Role.OWNER, False, None),
        # a global administrator's token confined to acme stands there by its role only
        (CONFINED_GLOBAL, "acme", Role.MEMBER, True, Standing.MEMBER),
        (CONFINED_GLOBAL, "acme", None, True, None),
        (CONFINED_GLOBAL, None, None, True, None),
        (CONFINED_GLOBAL, "globex", Role.OWNER, True, None),
        # roles in one's own organisation
        (caller(), "acme", Role.OWNER, False, Standing.OWNER),
        (caller(), "acme", Role.ADMIN, False, Standing.ADMIN),
        (caller(), "acme", Role.MEMBER, False, Standing.MEMBER),
        (caller(), "acme", None, False, None),
        # a token is confined to its organisation, whatever its subject is elsewhere
        (caller(), "globex", Role.OWNER, False, None),
        (caller(), None, None, False, None),
        # an organisation key stands as an admin of its own organisation, nowhere else
        (ORG_KEY, "acme", None, False, Standing.ADMIN),
        (ORG_KEY, "globex", None, False, None),
        (ORG_KEY, None, None, False, None),
    ],
)
def test_standing(
    who: Caller,
    organization: str | None,
    role: Role | None,
    global_admin: bool,
    expected: Standing | None,
) -> None:
    assert policy.standing_of(who, organization, role, global_admin) is expected


def test_the_lattice_is_ordered() -> None:
    assert Standing.MEMBER < Standing.ADMIN < Standing.OWNER < Standing.GLOBAL
    assert policy.ORGANIZATION_KEY_STANDING is Standing.ADMIN


@pytest.mark.parametrize(
    ("subject", "role", "expected"),
    [
        (None, None, Standing.ADMIN),  # an organisation key
        ("bob", Role.OWNER, Standing.OWNER),
        ("bob", Role.ADMIN, Standing.ADMIN),
        ("bob", Role.MEMBER, Standing.MEMBER),
        ("bob", None, Standing.MEMBER),  # a former member
    ],
)
def test_what_a_token_confers(subject: str | None, role: Role | None, expected: Standing) -> None:
    assert policy.conferred(subject, role) is expected


@pytest.mark.parametrize("standing", [None, Standing.OWNER, Standing.ADMIN, Standing.MEMBER])
def test_global_actions_need_the_global_standing(standing: Standing | None) -> None:
    with pytest.raises(PermissionDenied) as refused:
        policy.require_global(standing, "create organisations")
    assert refused.value.reason is Reason.GLOBAL_ADMIN_REQUIRED
    policy.require_global(Standing.GLOBAL, "create organisations")


# -- issuing: the subject's role --------------------------------------------------------------

ALLOWED = None
# (caller's standing, subject: None for an organisation key, "alice" for itself, "bob" another
#  principal, with bob's role) -> None (allowed) or the reason of the refusal
ISSUE_TABLE: list[tuple[Standing, str | None, Role | None, Reason | None]] = [
    (Standing.GLOBAL, "bob", Role.OWNER, ALLOWED),
    (Standing.GLOBAL, None, None, ALLOWED),
    (Standing.OWNER, "bob", Role.OWNER, ALLOWED),
    (Standing.OWNER, "bob", Role.ADMIN, ALLOWED),
    (Standing.OWNER, None, None, ALLOWED),
    (Standing.ADMIN, "bob", Role.OWNER, Reason.SUBJECT_OUTRANKS_ISSUER),
    (Standing.ADMIN, "bob", Role.ADMIN, ALLOWED),
    (Standing.ADMIN, "bob", Role.MEMBER, ALLOWED),
    (Standing.ADMIN, None, None, ALLOWED),  # an organisation key stands as an admin
    (Standing.MEMBER, "alice", Role.MEMBER, ALLOWED),  # for itself
    (Standing.MEMBER, "bob", Role.MEMBER, Reason.ROLE_TOO_LOW),
    (Standing.MEMBER, None, None, Reason.ROLE_TOO_LOW),
]


@pytest.mark.parametrize(("standing", "subject", "role", "expected"), ISSUE_TABLE)
def test_a_token_never_confers_more_standing_than_its_issuer(
    standing: Standing, subject: str | None, role: Role | None, expected: Reason | None
) -> None:
    issuer = actor(standing)
    if expected is None:
        policy.may_issue(issuer, subject, role, ["download"])
        return
    with pytest.raises(PermissionDenied) as refused:
        policy.may_issue(issuer, subject, role, ["download"])
    assert refused.value.reason is expected


def test_an_organisation_key_with_all_methods_cannot_issue_for_an_owner() -> None:
    """The escalation of the v1 service: a key holding authority.v1.* minted an owner's token."""
    key = Actor(ORG_KEY, Standing.ADMIN)
    with pytest.raises(PermissionDenied) as refused:
        policy.may_issue(key, "olivia", Role.OWNER, ["authority.v1.*"])
    assert refused.value.reason is Reason.SUBJECT_OUTRANKS_ISSUER


# -- issuing: scopes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "asked", "allowed"),
    [
        (("*",), ("*",), True),
        (("download",), ("download",), True),
        (("download",), ("upload",), False),
        (("download",), ("*",), False),
        (("a.b.*",), ("a.b.c",), True),
        (("a.b.*",), ("a.b.*",), True),
        (("a.b.*",), ("a.*",), False),
        (("a.b.c",), ("a.b.*",), False),
        (("authority.v1.*",), ("authority.v1.Admin.AddMember",), True),
    ],
)
def test_a_token_never_holds_a_scope_its_issuer_lacks(
    held: tuple[str, ...], asked: tuple[str, ...], allowed: bool
) -> None:
    issuer = actor(Standing.OWNER, scopes=held)
    if allowed:
        policy.may_issue(issuer, None, None, asked)
        return
    with pytest.raises(PermissionDenied) as refused:
        policy.may_issue(issuer, None, None, asked)
    assert refused.value.reason is Reason.SCOPE_EXCEEDS_ISSUER


# -- issuing: lifetime -------------------------------------------------------------------------

HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("bearer_expires", "requested", "expected"),
    [
        (None, None, None),  # a bearer that never expires issues what is asked
        (None, NOW + 100 * HOUR, NOW + 100 * HOUR),
        (NOW + HOUR, None, NOW + HOUR),  # nothing asked: the bearer's own expiry
        (NOW + HOUR, NOW + HOUR / 2, NOW + HOUR / 2),
        (NOW + HOUR, NOW + HOUR, NOW + HOUR),
        (NOW + HOUR, NOW + 2 * HOUR, Reason.LIFETIME_EXCEEDS_ISSUER),
    ],
)
def test_a_token_never_outlives_its_issuer(
    bearer_expires: datetime | None,
    requested: datetime | None,
    expected: datetime | Reason | None,
) -> None:
    issuer = caller(expires_at=bearer_expires)
    if isinstance(expected, Reason):
        with pytest.raises(PermissionDenied) as refused:
            policy.issued_expiry(issuer, requested)
        assert refused.value.reason is expected
        return
    assert policy.issued_expiry(issuer, requested) == expected


# -- tokens: who sees and manages which -------------------------------------------------------

HIDDEN, SEE, MANAGE_IT = TokenAccess.HIDDEN, TokenAccess.SEE, TokenAccess.MANAGE
# (caller's standing, the token's subject, its role) -> access; the caller is alice
TOKEN_TABLE: list[tuple[Standing, str | None, Role | None, TokenAccess]] = [
    (Standing.GLOBAL, "bob", Role.OWNER, MANAGE_IT),
    (Standing.OWNER, "bob", Role.OWNER, MANAGE_IT),
    (Standing.OWNER, None, None, MANAGE_IT),
    (Standing.ADMIN, "bob", Role.OWNER, SEE),
    (Standing.ADMIN, "bob", Role.ADMIN, MANAGE_IT),
    (Standing.ADMIN, "bob", Role.MEMBER, MANAGE_IT),
    (Standing.ADMIN, "bob", None, MANAGE_IT),  # a former member's
    (Standing.ADMIN, None, None, MANAGE_IT),  # an organisation key
    (Standing.MEMBER, "alice", Role.MEMBER, MANAGE_IT),
    (Standing.MEMBER, "bob", Role.MEMBER, HIDDEN),
    (Standing.MEMBER, None, None, HIDDEN),
]


@pytest.mark.parametrize(("standing", "subject", "role", "expected"), TOKEN_TABLE)
def test_token_access(
    standing: Standing, subject: str | None, role: Role | None, expected: TokenAccess
) -> None:
    assert policy.token_access(actor(standing), subject, role) is expected


def test_a_hidden_token_is_not_found_and_a_visible_one_is_not_changed() -> None:
    hidden = NotFound("token 'x' not found", Reason.TOKEN_NOT_FOUND)
    with pytest.raises(NotFound):
        policy.require_token_access(HIDDEN, SEE, hidden)
    policy.require_token_access(SEE, SEE, hidden)
    with pytest.raises(PermissionDenied) as refused:
        policy.require_token_access(SEE, MANAGE_IT, hidden)
    assert refused.value.reason is Reason.ROLE_TOO_LOW
    policy.require_token_access(MANAGE_IT, MANAGE_IT, hidden)


@pytest.mark.parametrize(
    ("standing", "listed"),
    [
        (Standing.GLOBAL, None),
        (Standing.OWNER, None),
        (Standing.ADMIN, None),
        (Standing.MEMBER, "alice"),
    ],
)
def test_members_list_only_their_own_tokens(standing: Standing, listed: str | None) -> None:
    assert policy.listed_subject(actor(standing)) == listed


@pytest.mark.parametrize(
    ("who", "watched"),
    [
        (actor(Standing.GLOBAL, subject="root", organization=None), None),
        (actor(Standing.OWNER), None),
        (actor(Standing.ADMIN), None),
        (actor(Standing.ADMIN, subject=None), None),  # an organisation key
        (actor(Standing.MEMBER), "alice"),
    ],
)
def test_watchers_see_the_events_of_the_tokens_they_may_list(
    who: Actor, watched: str | None
) -> None:
    assert policy.watched_subject(who) == watched == policy.listed_subject(who)


# -- memberships -------------------------------------------------------------------------------

# (caller's standing, the principal's current role, the new role: None removes) -> allowed
MEMBERSHIP_TABLE: list[tuple[Standing, Role | None, Role | None, bool]] = [
    (Standing.GLOBAL, Role.OWNER, None, True),
    (Standing.OWNER, Role.OWNER, Role.MEMBER, True),
    (Standing.OWNER, None, Role.OWNER, True),
    (Standing.OWNER, Role.ADMIN, None, True),
    (Standing.ADMIN, None, Role.MEMBER, True),
    (Standing.ADMIN, Role.MEMBER, None, True),
    (Standing.ADMIN, Role.MEMBER, Role.MEMBER, True),
    (Standing.ADMIN, None, Role.ADMIN, False),
    (Standing.ADMIN, Role.MEMBER, Role.ADMIN, False),
    (Standing.ADMIN, Role.ADMIN, Role.MEMBER, False),
    (Standing.ADMIN, Role.ADMIN, None, False),
    (Standing.ADMIN, Role.OWNER, None, False),
    (Standing.ADMIN, None, Role.OWNER, False),
    (Standing.MEMBER, None, Role.MEMBER, False),
    (Standing.MEMBER, Role.MEMBER, None, False),
]


@pytest.mark.parametrize(("standing", "current", "new", "allowed"), MEMBERSHIP_TABLE)
def test_who_may_change_a_membership(
    standing: Standing, current: Role | None, new: Role | None, allowed: bool
) -> None:
    if allowed:
        policy.may_change_membership(actor(standing), "acme", current, new)
        return
    with pytest.raises(PermissionDenied) as refused:
        policy.may_change_membership(actor(standing), "acme", current, new)
    assert refused.value.reason is Reason.ROLE_TOO_LOW


# -- the audit trail --------------------------------------------------------------------------

# (caller, its standing in acme) -> allowed; an organisation key stands as an admin
AUDIT_TABLE: list[tuple[Caller, Standing, bool]] = [
    (GLOBAL_TOKEN, Standing.GLOBAL, True),
    (caller(), Standing.OWNER, True),
    (caller(), Standing.ADMIN, True),
    (ORG_KEY, Standing.ADMIN, True),
    (caller(), Standing.MEMBER, False),
    (CONFINED_GLOBAL, Standing.MEMBER, False),
]


@pytest.mark.parametrize(("who", "standing", "allowed"), AUDIT_TABLE)
def test_who_may_read_the_audit_trail(who: Caller, standing: Standing, allowed: bool) -> None:
    if allowed:
        policy.may_read_audit(Actor(who, standing))
        return
    with pytest.raises(PermissionDenied) as refused:
        policy.may_read_audit(Actor(who, standing))
    assert refused.value.reason is Reason.ROLE_TOO_LOW


@pytest.mark.parametrize(
    ("held", "asked", "allowed"),
    [
        (("download", "upload"), ("download",), True),
        (("download",), ("download", "upload"), False),
        (("reports.*",), ("reports.monthly",), True),
        (("reports.*",), ("reports.*",), True),
        (("reports.monthly",), ("reports.*",), False),
        (("download",), ("*",), False),
        (("*",), ("anything.at.all",), True),
    ],
)
def test_an_access_token_never_holds_a_scope_its_key_lacks(
    held: tuple[str, ...], asked: tuple[str, ...], allowed: bool
) -> None:
    key = PermissionMatcher.compile(held)
    if allowed:
        policy.may_exchange(key, asked)
        return
    with pytest.raises(PermissionDenied) as refused:
        policy.may_exchange(key, asked)
    assert refused.value.reason is Reason.SCOPE_EXCEEDS_ISSUER


@pytest.mark.parametrize("scope", ["tka_0000", "a" * 40, "tka_0000000000000000_.*"])
def test_a_refused_scope_is_never_quoted_when_it_is_shaped_like_a_secret(scope: str) -> None:
    """Found by the hostile-input properties: `tka_0000` is a valid scope name."""
    issuer = actor(Standing.OWNER, scopes=("download",))
    with pytest.raises(PermissionDenied) as refused:
        policy.may_issue(issuer, None, None, [scope])
    assert scope not in refused.value.message and "tka_" not in refused.value.message
