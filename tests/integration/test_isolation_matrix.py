"""Who may call what, where: every management call x every kind of caller x two organisations.

One table, `EXPECTED`, written out by hand from the access rules (docs: issue 7), gives for each
call and each kind of caller the outcome on the caller's own organisation and on another one:
OK, or the exact gRPC status and google.rpc.ErrorInfo reason. Every cell runs through the real
server on every backend, with fresh targets where the call changes something, and OK cells are
checked for what they return (a member lists only its own tokens, a non-global caller lists only
its own organisation, a revoked token stops validating...); refusals are checked to change
nothing where that is cheap to see.

The world (built once per backend):
- `own`: the organisation of every caller but the stranger; `admin` (the global administrator
  principal) is an OWNER there, so that it can hold a token confined to it.
- `other`: another organisation, with an owner and a token of its own.
- `third`: the stranger's organisation. For the stranger, `own` means `third` and `other` means
  the organisation everybody else lives in.
For the calls that take no organisation (CreateOrganization, ListOrganizations,
CreatePrincipal, GetCacheStats, RotateSigningKey) the target changes nothing: both columns must
agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from authority.v1 import admin_pb2
from authority.v1 import token_authority_pb2 as pb
from tests.conftest import Deployment
from tests.harness import ManualClock, ServerHandle, bearer, unique
from tests.integration.helpers import (
    MANAGE_SCOPES,
    ROLES,
    Metadata,
    User,
    add_member,
    all_organizations,
    all_tokens,
    current_kid,
    error_reason,
    issue,
    make_org,
    make_org_key,
    make_principal,
    make_user_with_token,
    members,
    refused,
    rpc_of,
    signing_keys,
    validate,
)

# -- the table ------------------------------------------------------------------------------

Outcome = tuple[str, str]  # (gRPC status name, ErrorInfo reason); OK is ("OK", "")

OK: Outcome = ("OK", "")
NO_ORG: Outcome = ("NOT_FOUND", "ORGANIZATION_NOT_FOUND")
NO_TOKEN: Outcome = ("NOT_FOUND", "TOKEN_NOT_FOUND")
GLOBAL_ONLY: Outcome = ("PERMISSION_DENIED", "GLOBAL_ADMIN_REQUIRED")
NO_SCOPE: Outcome = ("PERMISSION_DENIED", "SCOPE_MISSING")
TOO_LOW: Outcome = ("PERMISSION_DENIED", "ROLE_TOO_LOW")
REVOKED: Outcome = ("UNAUTHENTICATED", "TOKEN_REVOKED")
EXPIRED: Outcome = ("UNAUTHENTICATED", "TOKEN_EXPIRED")

# The kinds of caller:
#   global      the bootstrap token (no organisation, subject `admin`)
#   confined    a token of `admin` confined to `own` (where `admin` is an OWNER)
#   owner       an OWNER of `own`, scopes MANAGE_SCOPES
#   admin       an ADMIN of `own`, scopes MANAGE_SCOPES
#   member      a MEMBER of `own`, scopes MANAGE_SCOPES
#   key_full    an organisation key of `own`, scopes MANAGE_SCOPES
#   key_narrow  an organisation key of `own`, scopes [TokenAuthority.ListTokens, download]
#   stranger    an OWNER of `third` (its `own` is `third`, its `other` is everybody's `own`)
#   revoked     an owner's token of `own`, revoked
#   expired     an owner's token of `own` (ttl 1h), the server's clock moved past it
#
# The calls and their targets (fresh for every cell where the call changes something):
#   IssueToken        an organisation key (no subject, no label) with scopes ["download"]
#   GetToken          a token of a fresh plain member of the target, issued by the global admin
#   GetOwnerToken     GetToken of a token of a fresh OWNER of the target
#   ListTokens        the target's tokens
#   RevokeToken       as GetToken
#   RevokeOwnerToken  RevokeToken of a token of a fresh OWNER of the target
#   CreateOrganization, CreatePrincipal   a fresh name
#   ListOrganizations, GetCacheStats      -
#   RotateSigningKey  - (the installation's key: a new current kid, the old one still published)
#   AddMember         a fresh principal, as `member`
#   RemoveMember      a fresh plain member of the target (holding a token)
#   ListMembers       the target
#
# call -> caller -> (outcome on the caller's own organisation, outcome on another one)
# fmt: off
EXPECTED: dict[str, dict[str, tuple[Outcome, Outcome]]] = {
    "IssueToken": {
        "global":     (OK,       OK),
        "confined":   (OK,       NO_ORG),
        "owner":      (OK,       NO_ORG),
        "admin":      (OK,       NO_ORG),
        "member":     (TOO_LOW,  NO_ORG),  # members issue only for themselves
        "key_full":   (OK,       NO_ORG),
        "key_narrow": (NO_SCOPE, NO_SCOPE),
        "stranger":   (OK,       NO_ORG),
        "revoked":    (REVOKED,  REVOKED),
        "expired":    (EXPIRED,  EXPIRED),
    },
    "GetToken": {
        "global":     (OK,       OK),
        "confined":   (OK,       NO_TOKEN),
        "owner":      (OK,       NO_TOKEN),
        "admin":      (OK,       NO_TOKEN),
        "member":     (NO_TOKEN, NO_TOKEN),  # another member's token
        "key_full":   (OK,       NO_TOKEN),
        "key_narrow": (NO_SCOPE, NO_SCOPE),
        "stranger":   (OK,       NO_TOKEN),
        "revoked":    (REVOKED,  REVOKED),
        "expired":    (EXPIRED,  EXPIRED),
    },
    "GetOwnerToken": {
        "global":     (OK,       OK),
        "confined":   (OK,       NO_TOKEN),
        "owner":      (OK,       NO_TOKEN),
        "admin":      (OK,       NO_TOKEN),  # admins see owners' tokens
        "member":     (NO_TOKEN, NO_TOKEN),
        "key_full":   (OK,       NO_TOKEN),
        "key_narrow": (NO_SCOPE, NO_SCOPE),
        "stranger":   (OK,       NO_TOKEN),
        "revoked":    (REVOKED,  REVOKED),
        "expired":    (EXPIRED,  EXPIRED),
    },
    "ListTokens": {
        "global":     (OK,       OK),
        "confined":   (OK,       NO_ORG),
        "owner":      (OK,       NO_ORG),
        "admin":      (OK,       NO_ORG),
        "member":     (OK,       NO_ORG),  # its own tokens only
        "key_full":   (OK,       NO_ORG),
        "key_narrow": (OK,       NO_ORG),
        "stranger":   (OK,       NO_ORG),
        "revoked":    (REVOKED,  REVOKED),
        "expired":    (EXPIRED,  EXPIRED),
    },
    "RevokeToken": {
        "global":     (OK,       OK),
        "confined":   (OK,       NO_TOKEN),
        "owner":      (OK,       NO_TOKEN),
        "admin":      (OK,       NO_TOKEN),
        "member":     (NO_TOKEN, NO_TOKEN),  # another member's token
        "key_full":   (OK,       NO_TOKEN),
        "key_narrow": (NO_SCOPE, NO_SCOPE),
        "stranger":   (OK,       NO_TOKEN),
        "revoked":    (REVOKED,  REVOKED),
        "expired":    (EXPIRED,  EXPIRED),
    },
    "RevokeOwnerToken": {
        "global":     (OK,       OK),
        "confined":   (OK,       NO_TOKEN),
        "owner":      (OK,       NO_TOKEN),
        "admin":      (TOO_LOW,  NO_TOKEN),  # sees it, may not revoke it
        "member":     (NO_TOKEN, NO_TOKEN),
        "key_full":   (TOO_LOW,  NO_TOKEN),  # a key stands as an admin
        "key_narrow": (NO_SCOPE, NO_SCOPE),
        "stranger":   (OK,       NO_TOKEN),
        "revoked":    (REVOKED,  REVOKED),
        "expired":    (EXPIRED,  EXPIRED),
    },
    "CreateOrganization": {
        "global":     (OK,          OK),
        "confined":   (GLOBAL_ONLY, GLOBAL_ONLY),
        "owner":      (GLOBAL_ONLY, GLOBAL_ONLY),
        "admin":      (GLOBAL_ONLY, GLOBAL_ONLY),
        "member":     (GLOBAL_ONLY, GLOBAL_ONLY),
        "key_full":   (GLOBAL_ONLY, GLOBAL_ONLY),
        "key_narrow": (NO_SCOPE,    NO_SCOPE),
        "stranger":   (GLOBAL_ONLY, GLOBAL_ONLY),
        "revoked":    (REVOKED,     REVOKED),
        "expired":    (EXPIRED,     EXPIRED),
    },
    "ListOrganizations": {
        "global":     (OK,       OK),  # every organisation
        "confined":   (OK,       OK),  # only `own`
        "owner":      (OK,       OK),  # only `own`
        "admin":      (OK,       OK),  # only `own`
        "member":     (OK,       OK),  # only `own`
        "key_full":   (OK,       OK),  # only `own`
        "key_narrow": (NO_SCOPE, NO_SCOPE),
        "stranger":   (OK,       OK),  # only `third`
        "revoked":    (REVOKED,  REVOKED),
        "expired":    (EXPIRED,  EXPIRED),
    },
    "CreatePrincipal": {
        "global":     (OK,          OK),
        "confined":   (GLOBAL_ONLY, GLOBAL_ONLY),
        "owner":      (GLOBAL_ONLY, GLOBAL_ONLY),
        "admin":      (GLOBAL_ONLY, GLOBAL_ONLY),
        "member":     (GLOBAL_ONLY, GLOBAL_ONLY),
        "key_full":   (GLOBAL_ONLY, GLOBAL_ONLY),
        "key_narrow": (NO_SCOPE,    NO_SCOPE),
        "stranger":   (GLOBAL_ONLY, GLOBAL_ONLY),
        "revoked":    (REVOKED,     REVOKED),
        "expired":    (EXPIRED,     EXPIRED),
    },
    "AddMember": {
        "global":     (OK,       OK),
        "confined":   (OK,       NO_ORG),
        "owner":      (OK,       NO_ORG),
        "admin":      (OK,       NO_ORG),  # a plain member: admins may
        "member":     (TOO_LOW,  NO_ORG),
        "key_full":   (OK,       NO_ORG),
        "key_narrow": (NO_SCOPE, NO_SCOPE),
        "stranger":   (OK,       NO_ORG),
        "revoked":    (REVOKED,  REVOKED),
        "expired":    (EXPIRED,  EXPIRED),
    },
    "RemoveMember": {
        "global":     (OK,       OK),
        "confined":   (OK,       NO_ORG),
        "owner":      (OK,       NO_ORG),
        "admin":      (OK,       NO_ORG),  # a plain member: admins may
        "member":     (TOO_LOW,  NO_ORG),
        "key_full":   (OK,       NO_ORG),
        "key_narrow": (NO_SCOPE, NO_SCOPE),
        "stranger":   (OK,       NO_ORG),
        "revoked":    (REVOKED,  REVOKED),
        "expired":    (EXPIRED,  EXPIRED),
    },
    "ListMembers": {
        "global":     (OK,       OK),
        "confined":   (OK,       NO_ORG),
        "owner":      (OK,       NO_ORG),
        "admin":      (OK,       NO_ORG),
        "member":     (OK,       NO_ORG),
        "key_full":   (OK,       NO_ORG),
        "key_narrow": (NO_SCOPE, NO_SCOPE),
        "stranger":   (OK,       NO_ORG),
        "revoked":    (REVOKED,  REVOKED),
        "expired":    (EXPIRED,  EXPIRED),
    },
    "ListAuditEvents": {
        "global":     (OK,       OK),
        "confined":   (OK,       NO_ORG),
        "owner":      (OK,       NO_ORG),
        "admin":      (OK,       NO_ORG),
        "member":     (TOO_LOW,  NO_ORG),  # the trail is for owners and admins
        "key_full":   (OK,       NO_ORG),  # a key stands as an admin
        "key_narrow": (NO_SCOPE, NO_SCOPE),
        "stranger":   (OK,       NO_ORG),
        "revoked":    (REVOKED,  REVOKED),
        "expired":    (EXPIRED,  EXPIRED),
    },
    "WatchEvents": {
        "global":     (OK,       OK),
        "confined":   (OK,       NO_ORG),
        "owner":      (OK,       NO_ORG),
        "admin":      (OK,       NO_ORG),
        "member":     (OK,       NO_ORG),  # events of its own tokens only
        "key_full":   (OK,       NO_ORG),
        "key_narrow": (NO_SCOPE, NO_SCOPE),
        "stranger":   (OK,       NO_ORG),
        "revoked":    (REVOKED,  REVOKED),
        "expired":    (EXPIRED,  EXPIRED),
    },
    "GetCacheStats": {
        "global":     (OK,          OK),
        "confined":   (GLOBAL_ONLY, GLOBAL_ONLY),
        "owner":      (GLOBAL_ONLY, GLOBAL_ONLY),
        "admin":      (GLOBAL_ONLY, GLOBAL_ONLY),
        "member":     (GLOBAL_ONLY, GLOBAL_ONLY),
        "key_full":   (GLOBAL_ONLY, GLOBAL_ONLY),
        "key_narrow": (NO_SCOPE,    NO_SCOPE),
        "stranger":   (GLOBAL_ONLY, GLOBAL_ONLY),
        "revoked":    (REVOKED,     REVOKED),
        "expired":    (EXPIRED,     EXPIRED),
    },
    "RotateSigningKey": {
        "global":     (OK,          OK),
        "confined":   (GLOBAL_ONLY, GLOBAL_ONLY),
        "owner":      (GLOBAL_ONLY, GLOBAL_ONLY),
        "admin":      (GLOBAL_ONLY, GLOBAL_ONLY),
        "member":     (GLOBAL_ONLY, GLOBAL_ONLY),
        "key_full":   (GLOBAL_ONLY, GLOBAL_ONLY),
        "key_narrow": (NO_SCOPE,    NO_SCOPE),
        "stranger":   (GLOBAL_ONLY, GLOBAL_ONLY),
        "revoked":    (REVOKED,     REVOKED),
        "expired":    (EXPIRED,     EXPIRED),
    },
}
# fmt: on

CALLERS = [
    "global",
    "confined",
    "owner",
    "admin",
    "member",
    "key_full",
    "key_narrow",
    "stranger",
    "revoked",
    "expired",
]
TARGETS = ["own", "other"]
NARROW_SCOPES = ["authority.v1.TokenAuthority.ListTokens", "download"]
EXPIRED_TTL = 3600  # seconds; the `expired` cells move the clock past it

# The table is complete: every call, every caller, no more.
assert all(set(row) == set(CALLERS) for row in EXPECTED.values()), "a row is incomplete"


def cells() -> list[Any]:
    return [
        pytest.param(caller, target, call, id=f"{caller}-{target}-{call}")
        for call in EXPECTED
        for caller in CALLERS
        for target in TARGETS
    ]


# -- the world ------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    server: ServerHandle
    admin_token: str
    own: str
    other: str
    third: str
    owners: dict[str, User]  # organisation -> an owner of it, with a live token
    member: User  # the `member` caller
    bearers: dict[str, Metadata]  # caller kind -> the metadata presenting its token

    @property
    def admin(self) -> Metadata:
        return bearer(self.admin_token)

    def target(self, caller: str, target: str) -> str:
        if caller == "stranger":
            return self.third if target == "own" else self.own
        return self.own if target == "own" else self.other

    def organizations_of(self, caller: str) -> list[str]:
        """What ListOrganizations shows a non-global caller: its own organisation only."""
        return [self.third if caller == "stranger" else self.own]


@pytest.fixture(scope="module")
def world(deployment: Deployment) -> World:
    server, admin_token = deployment.server, deployment.admin_token
    admin = bearer(admin_token)
    own = make_org(server, admin_token, "own")
    other = make_org(server, admin_token, "other")
    third = make_org(server, admin_token, "third")
    add_member(server, admin_token, own, "admin", "owner")
    owners = {
        org: make_user_with_token(server, admin_token, org, "owner") for org in (own, other, third)
    }
    owner = owners[own]
    revoked = issue(server, admin, own, subject=owner.name, scopes=list(MANAGE_SCOPES))
    server.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=revoked.token.token_id), metadata=admin
    )
    expiring = issue(
        server,
        admin,
        own,
        subject=owner.name,
        scopes=list(MANAGE_SCOPES),
        ttl=Duration(seconds=EXPIRED_TTL),
    )
    member = make_user_with_token(server, admin_token, own, "member")
    confined = issue(server, admin, own, subject="admin", scopes=list(MANAGE_SCOPES))
    bearers = {
        "global": admin,
        "confined": bearer(confined.secret),
        "owner": owner.metadata,
        "admin": make_user_with_token(server, admin_token, own, "admin").metadata,
        "member": member.metadata,
        "key_full": make_org_key(server, admin_token, own, MANAGE_SCOPES).metadata,
        "key_narrow": make_org_key(server, admin_token, own, NARROW_SCOPES).metadata,
        "stranger": owners[third].metadata,
        "revoked": bearer(revoked.secret),
        "expired": bearer(expiring.secret),
    }
    return World(server, admin_token, own, other, third, owners, member, bearers)


# -- one cell: the request, its fresh target, and what to check afterwards ------------------


@dataclass
class Action:
    stub: str
    method: str
    request: Any
    accepted: Callable[[Any], None]  # checks on the response of an OK cell
    unchanged: Callable[[], None] = lambda: None  # checks that a refusal changed nothing
    # A server stream answers with its first message (or the error that ends it).
    streaming: bool = False


def issue_token(w: World, caller: str, org: str) -> Action:
    def accepted(response: pb.IssueTokenResponse) -> None:
        token = response.token
        assert (token.organization, token.subject, list(token.scopes)) == (org, "", ["download"])
        assert not token.HasField("expires_at"), "no bearer here expires: neither does the key"
        assert validate(w.server, response.secret, "download").valid

    request = pb.IssueTokenRequest(organization=org, scopes=["download"])  # no label: optional
    return Action("tokens", "IssueToken", request, accepted)


def token_call(method: str, role: str) -> Callable[[World, str, str], Action]:
    """GetToken / RevokeToken of a fresh token of a fresh `role` of the target organisation."""

    def prepare(w: World, caller: str, org: str) -> Action:
        holder = make_user_with_token(w.server, w.admin_token, org, role)
        credential = holder.credential

        def accepted(token: pb.Token) -> None:
            assert (token.token_id, token.organization) == (credential.token_id, org)
            assert token.subject == holder.name
            if method == "RevokeToken":
                assert token.HasField("revoked_at")
                assert not validate(w.server, credential.secret).valid
            else:
                assert not token.HasField("revoked_at")

        def unchanged() -> None:
            assert validate(w.server, credential.secret).valid

        request_type = pb.RevokeTokenRequest if method == "RevokeToken" else pb.GetTokenRequest
        return Action(
            "tokens", method, request_type(token_id=credential.token_id), accepted, unchanged
        )

    return prepare


def list_tokens(w: World, caller: str, org: str) -> Action:
    def accepted(response: pb.ListTokensResponse) -> None:
        listed = all_tokens(w.server, w.bearers[caller], org)
        assert listed, "the first page was checked below; the whole listing is not empty"
        assert {token.organization for token in listed} == {org}
        ids = {token.token_id for token in listed}
        if caller == "member":
            assert {token.subject for token in listed} == {w.member.name}
            assert w.member.credential.token_id in ids
        else:  # everyone else sees every token, owners' included
            assert w.owners[org].credential.token_id in ids
        assert {token.token_id for token in response.tokens} <= ids

    return Action("tokens", "ListTokens", pb.ListTokensRequest(organization=org), accepted)


def create_organization(w: World, caller: str, org: str) -> Action:
    name = unique("neworg")

    def accepted(response: admin_pb2.Organization) -> None:
        assert response.name == name
        members(w.server, w.admin_token, name)  # it exists now

    def unchanged() -> None:
        refused(
            grpc.StatusCode.NOT_FOUND,
            w.server.admin.ListMembers,
            admin_pb2.ListMembersRequest(organization=name),
            w.admin,
        )

    request = admin_pb2.CreateOrganizationRequest(name=name, display_name="New")
    return Action("admin", "CreateOrganization", request, accepted, unchanged)


def list_organizations(w: World, caller: str, org: str) -> Action:
    def accepted(response: admin_pb2.ListOrganizationsResponse) -> None:
        names = all_organizations(w.server, w.bearers[caller])
        if caller == "global":
            assert {w.own, w.other, w.third} <= set(names)
        else:
            assert names == w.organizations_of(caller)
        first_page = [item.name for item in response.organizations]
        assert first_page == names[: len(first_page)]

    request = admin_pb2.ListOrganizationsRequest(page_size=1000)
    return Action("admin", "ListOrganizations", request, accepted)


def create_principal(w: World, caller: str, org: str) -> Action:
    name = unique("newuser")

    def accepted(response: admin_pb2.Principal) -> None:
        assert (response.name, response.global_admin) == (name, False)

    request = admin_pb2.CreatePrincipalRequest(name=name, kind=admin_pb2.PRINCIPAL_KIND_USER)
    return Action("admin", "CreatePrincipal", request, accepted)


def add_member_call(w: World, caller: str, org: str) -> Action:
    principal = make_principal(w.server, w.admin_token, "joiner")

    def accepted(response: admin_pb2.Membership) -> None:
        assert (response.organization, response.principal) == (org, principal)
        assert members(w.server, w.admin_token, org).get(principal) == ROLES["member"]

    def unchanged() -> None:
        assert principal not in members(w.server, w.admin_token, org)

    request = admin_pb2.AddMemberRequest(
        organization=org, principal=principal, role=admin_pb2.ROLE_MEMBER
    )
    return Action("admin", "AddMember", request, accepted, unchanged)


def remove_member_call(w: World, caller: str, org: str) -> Action:
    leaver = make_user_with_token(w.server, w.admin_token, org, "member", prefix="leaver")

    def accepted(response: admin_pb2.RemoveMemberResponse) -> None:
        assert list(response.revoked_token_ids) == [leaver.credential.token_id]
        assert leaver.name not in members(w.server, w.admin_token, org)
        assert not validate(w.server, leaver.credential.secret).valid

    def unchanged() -> None:
        assert members(w.server, w.admin_token, org).get(leaver.name) == ROLES["member"]
        assert validate(w.server, leaver.credential.secret).valid

    request = admin_pb2.RemoveMemberRequest(organization=org, principal=leaver.name)
    return Action("admin", "RemoveMember", request, accepted, unchanged)


def list_members_call(w: World, caller: str, org: str) -> Action:
    def accepted(response: admin_pb2.ListMembersResponse) -> None:
        listed = {item.principal: item.role for item in response.members}
        assert listed == members(w.server, w.admin_token, org)
        assert listed[w.owners[org].name] == ROLES["owner"]

    return Action("admin", "ListMembers", admin_pb2.ListMembersRequest(organization=org), accepted)


def get_cache_stats(w: World, caller: str, org: str) -> Action:
    def accepted(response: admin_pb2.CacheStats) -> None:
        assert response.max_entries > 0 and response.size >= 0

    return Action("admin", "GetCacheStats", admin_pb2.GetCacheStatsRequest(), accepted)


def rotate_signing_key(w: World, caller: str, org: str) -> Action:
    before = current_kid(w.server)

    def accepted(response: admin_pb2.RotateSigningKeyResponse) -> None:
        assert response.retired_kid == before and response.kid != before
        published = [key.kid for key in signing_keys(w.server).keys]
        assert published[0] == response.kid and before in published

    def unchanged() -> None:
        assert current_kid(w.server) == before

    request = admin_pb2.RotateSigningKeyRequest()
    return Action("admin", "RotateSigningKey", request, accepted, unchanged)


def list_audit_events(w: World, caller: str, org: str) -> Action:
    def accepted(response: admin_pb2.ListAuditEventsResponse) -> None:
        assert response.events, "the organisation was created and used: it has a trail"
        assert {event.organization for event in response.events} == {org}

    request = admin_pb2.ListAuditEventsRequest(organization=org)
    return Action("admin", "ListAuditEvents", request, accepted)


def watch_events(w: World, caller: str, org: str) -> Action:
    def accepted(event: pb.TokenEvent) -> None:
        assert event.organization == org
        if caller == "member":
            assert event.subject == w.member.name  # the first of its own tokens' events

    request = pb.WatchEventsRequest(organization=org)
    return Action("tokens", "WatchEvents", request, accepted, streaming=True)


PREPARE: dict[str, Callable[[World, str, str], Action]] = {
    "IssueToken": issue_token,
    "GetToken": token_call("GetToken", "member"),
    "GetOwnerToken": token_call("GetToken", "owner"),
    "ListTokens": list_tokens,
    "RevokeToken": token_call("RevokeToken", "member"),
    "RevokeOwnerToken": token_call("RevokeToken", "owner"),
    "CreateOrganization": create_organization,
    "ListOrganizations": list_organizations,
    "CreatePrincipal": create_principal,
    "AddMember": add_member_call,
    "RemoveMember": remove_member_call,
    "ListMembers": list_members_call,
    "ListAuditEvents": list_audit_events,
    "WatchEvents": watch_events,
    "GetCacheStats": get_cache_stats,
    "RotateSigningKey": rotate_signing_key,
}
assert set(PREPARE) == set(EXPECTED)


@pytest.mark.parametrize(("caller", "target", "call"), cells())
def test_isolation_matrix(
    world: World, clock: ManualClock, caller: str, target: str, call: str
) -> None:
    own, other = EXPECTED[call][caller]
    status, reason = own if target == "own" else other
    organization = world.target(caller, target)
    action = PREPARE[call](world, caller, organization)
    rpc = rpc_of(world.server, action.stub, action.method)
    if action.streaming:
        stream = rpc

        def rpc(request: Any, metadata: Metadata) -> Any:
            return next(iter(stream(request, metadata=metadata, timeout=10)))

    if caller == "expired":
        clock.advance(EXPIRED_TTL + 1)  # put back by the fixture

    if (status, reason) == OK:
        action.accepted(rpc(action.request, metadata=world.bearers[caller]))
        return
    error = refused(grpc.StatusCode[status], rpc, action.request, world.bearers[caller])
    action.unchanged()
    assert error_reason(error) == reason, error.details()
