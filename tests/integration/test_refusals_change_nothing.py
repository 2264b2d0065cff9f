"""A refused call changes nothing stored, and no input ever earns UNKNOWN (or a crash)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from authority.v1 import admin_pb2
from authority.v1 import token_authority_pb2 as pb
from tests.conftest import Deployment
from tests.harness import ServerHandle, bearer, unique
from tests.integration.helpers import (
    MANAGE_SCOPES,
    Credential,
    Metadata,
    User,
    all_organizations,
    all_tokens,
    make_org,
    make_org_key,
    make_principal,
    make_user_with_token,
    members,
    refused,
    validate,
)

Code = grpc.StatusCode


@dataclass(frozen=True)
class World:
    """One organisation with every kind of caller, and an outsider from another."""

    server: ServerHandle
    admin_token: str
    admin: Metadata
    org: str
    owner: User
    manager: User
    member: User
    peer: User
    download_key: Credential
    limited_key: Credential
    revoked: Credential
    stranger: str  # a principal that belongs nowhere
    outsider: User


@pytest.fixture(scope="module")
def world(deployment: Deployment) -> World:
    """Shared by this module's tests: each one checks that its refusal left it as it was."""
    server, admin_token = deployment.server, deployment.admin_token
    org = make_org(server, admin_token)
    admin = bearer(admin_token)
    revoked = make_org_key(server, admin_token, org, list(MANAGE_SCOPES))
    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=revoked.token_id), metadata=admin)
    return World(
        server=server,
        admin_token=admin_token,
        admin=admin,
        org=org,
        owner=make_user_with_token(server, admin_token, org, "owner"),
        manager=make_user_with_token(server, admin_token, org, "admin"),
        member=make_user_with_token(server, admin_token, org, "member"),
        peer=make_user_with_token(server, admin_token, org, "member"),
        download_key=make_org_key(server, admin_token, org, ["download-only"]),
        limited_key=make_org_key(
            server, admin_token, org, ["authority.v1.TokenAuthority.*", "download-only"]
        ),
        revoked=revoked,
        stranger=make_principal(server, admin_token),
        outsider=make_user_with_token(server, admin_token, make_org(server, admin_token), "owner"),
    )


def snapshot(world: World) -> tuple[list[bytes], dict[str, int], list[str]]:
    """Everything stored about the organisation, as the global administrator sees it."""
    tokens = all_tokens(world.server, world.admin, world.org, include_revoked=True)
    return (
        [token.SerializeToString(deterministic=True) for token in tokens],
        members(world.server, world.admin_token, world.org),
        all_organizations(world.server, world.admin),
    )


Refusal = Callable[[World], tuple[Callable[..., Any], Any, Metadata, Code]]


def _issue(world: World, **fields: Any) -> pb.IssueTokenRequest:
    fields.setdefault("label", "x")
    return pb.IssueTokenRequest(organization=world.org, **fields)


def _add(world: World, principal: str, role: str) -> admin_pb2.AddMemberRequest:
    return admin_pb2.AddMemberRequest(organization=world.org, principal=principal, role_name=role)


def _remove(world: World, principal: str) -> admin_pb2.RemoveMemberRequest:
    return admin_pb2.RemoveMemberRequest(organization=world.org, principal=principal)


def _revoke(token_id: str) -> pb.RevokeTokenRequest:
    return pb.RevokeTokenRequest(token_id=token_id)


REFUSALS: dict[str, Refusal] = {
    "issue-without-credentials": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w),
        (),
        Code.UNAUTHENTICATED,
    ),
    "issue-with-a-revoked-bearer": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, scopes=["download-only"]),
        w.revoked.metadata,
        Code.UNAUTHENTICATED,
    ),
    "issue-with-a-download-only-key": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, scopes=["download-only"]),
        w.download_key.metadata,
        Code.PERMISSION_DENIED,
    ),
    "issue-stronger-than-the-caller": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, scopes=["*"]),
        w.limited_key.metadata,
        Code.PERMISSION_DENIED,
    ),
    "member-issues-for-a-peer": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, subject=w.peer.name, scopes=["download-only"]),
        w.member.metadata,
        Code.PERMISSION_DENIED,
    ),
    "issue-for-a-non-member": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, subject=w.stranger),
        w.admin,
        Code.FAILED_PRECONDITION,
    ),
    "issue-from-another-organisation": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, scopes=["download-only"]),
        w.outsider.metadata,
        Code.NOT_FOUND,
    ),
    "issue-with-a-label-too-long": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, label="l" * 101),
        w.admin,
        Code.INVALID_ARGUMENT,
    ),
    "issue-expiring-in-the-past": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, expires_at=Timestamp(seconds=1_000_000)),
        w.admin,
        Code.INVALID_ARGUMENT,
    ),
    "issue-with-a-bad-scope": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, scopes=["download-only", "not a scope"]),
        w.admin,
        Code.INVALID_ARGUMENT,
    ),
    "member-revokes-a-peers-token": lambda w: (
        w.server.tokens.RevokeToken,
        _revoke(w.peer.credential.token_id),
        w.member.metadata,
        Code.NOT_FOUND,
    ),
    "outsider-revokes-a-key": lambda w: (
        w.server.tokens.RevokeToken,
        _revoke(w.download_key.token_id),
        w.outsider.metadata,
        Code.NOT_FOUND,
    ),
    "download-only-key-revokes-itself": lambda w: (
        w.server.tokens.RevokeToken,
        _revoke(w.download_key.token_id),
        w.download_key.metadata,
        Code.PERMISSION_DENIED,
    ),
    "admin-promotes-a-member-to-owner": lambda w: (
        w.server.admin.AddMember,
        _add(w, w.member.name, "owner"),
        w.manager.metadata,
        Code.PERMISSION_DENIED,
    ),
    "member-adds-a-member": lambda w: (
        w.server.admin.AddMember,
        _add(w, w.stranger, "member"),
        w.member.metadata,
        Code.PERMISSION_DENIED,
    ),
    "demote-the-last-owner": lambda w: (
        w.server.admin.AddMember,
        _add(w, w.owner.name, "admin"),
        w.owner.metadata,
        Code.FAILED_PRECONDITION,
    ),
    "add-a-principal-that-does-not-exist": lambda w: (
        w.server.admin.AddMember,
        _add(w, unique("ghost"), "member"),
        w.admin,
        Code.NOT_FOUND,
    ),
    "add-with-a-bad-role-name": lambda w: (
        w.server.admin.AddMember,
        _add(w, w.stranger, "superuser"),
        w.admin,
        Code.INVALID_ARGUMENT,
    ),
    "outsider-adds-itself": lambda w: (
        w.server.admin.AddMember,
        _add(w, w.outsider.name, "owner"),
        w.outsider.metadata,
        Code.NOT_FOUND,
    ),
    "remove-the-last-owner": lambda w: (
        w.server.admin.RemoveMember,
        _remove(w, w.owner.name),
        w.admin,
        Code.FAILED_PRECONDITION,
    ),
    "admin-removes-the-owner": lambda w: (
        w.server.admin.RemoveMember,
        _remove(w, w.owner.name),
        w.manager.metadata,
        Code.PERMISSION_DENIED,
    ),
    "member-removes-a-peer": lambda w: (
        w.server.admin.RemoveMember,
        _remove(w, w.peer.name),
        w.member.metadata,
        Code.PERMISSION_DENIED,
    ),
    "outsider-removes-a-member": lambda w: (
        w.server.admin.RemoveMember,
        _remove(w, w.member.name),
        w.outsider.metadata,
        Code.NOT_FOUND,
    ),
    "remove-a-non-member": lambda w: (
        w.server.admin.RemoveMember,
        _remove(w, w.stranger),
        w.admin,
        Code.NOT_FOUND,
    ),
    "create-a-duplicate-organisation": lambda w: (
        w.server.admin.CreateOrganization,
        admin_pb2.CreateOrganizationRequest(name=w.org, display_name="Hijacked"),
        w.admin,
        Code.ALREADY_EXISTS,
    ),
    "create-an-organisation-with-a-bad-name": lambda w: (
        w.server.admin.CreateOrganization,
        admin_pb2.CreateOrganizationRequest(name="Bad Name"),
        w.admin,
        Code.INVALID_ARGUMENT,
    ),
    "create-a-duplicate-principal": lambda w: (
        w.server.admin.CreatePrincipal,
        admin_pb2.CreatePrincipalRequest(name=w.member.name, kind_name="service"),
        w.admin,
        Code.ALREADY_EXISTS,
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_management_call_changes_nothing_stored(world: World, case: str) -> None:
    rpc, request, metadata, code = REFUSALS[case](world)
    before = snapshot(world)

    refused(code, rpc, request, metadata)

    assert snapshot(world) == before
    for credential in (world.owner.credential, world.member.credential, world.download_key):
        assert validate(world.server, credential.secret).valid


def test_refused_duplicate_organisation_keeps_the_original_display_name(world: World) -> None:
    before = {
        organization.name: organization
        for organization in world.server.admin.ListOrganizations(
            admin_pb2.ListOrganizationsRequest(page_size=1000), metadata=world.owner.metadata
        ).organizations
    }

    refused(
        Code.ALREADY_EXISTS,
        world.server.admin.CreateOrganization,
        admin_pb2.CreateOrganizationRequest(name=world.org, display_name="Hijacked"),
        world.admin,
    )
    after = world.server.admin.ListOrganizations(
        admin_pb2.ListOrganizationsRequest(), metadata=world.owner.metadata
    )

    assert list(after.organizations) == [before[world.org]]


@pytest.mark.parametrize("caller", ["owner", "key"])
def test_organisation_refused_to_a_non_administrator_is_not_created(
    world: World, caller: str
) -> None:
    metadata = world.owner.metadata if caller == "owner" else world.limited_key.metadata
    name = unique("refused")
    request = admin_pb2.CreateOrganizationRequest(name=name)

    refused(Code.PERMISSION_DENIED, world.server.admin.CreateOrganization, request, metadata)

    assert name not in all_organizations(world.server, world.admin)
    assert world.server.admin.CreateOrganization(request, metadata=world.admin).name == name


def test_principal_refused_to_a_non_administrator_is_not_created(world: World) -> None:
    name = unique("refused")
    request = admin_pb2.CreatePrincipalRequest(name=name, kind_name="user")

    refused(
        Code.PERMISSION_DENIED, world.server.admin.CreatePrincipal, request, world.owner.metadata
    )

    assert world.server.admin.CreatePrincipal(request, metadata=world.admin).name == name


# -- no input earns UNKNOWN ------------------------------------------------------------------


def _forged_page_token(world: World, position: object) -> str:
    """A page token for the right query but with a position the service never handed out."""
    real = world.server.tokens.ListTokens(
        pb.ListTokensRequest(organization=world.org, page_size=1), metadata=world.admin
    ).next_page_token
    padded = real + "=" * (-len(real) % 4)
    try:
        query, _ = json.loads(base64.urlsafe_b64decode(padded))
    except ValueError:
        return real + "x"  # not the shape this test knows: tamper with it some other way
    raw = json.dumps([query, position]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


HOSTILE: dict[str, Callable[[World], tuple[Callable[..., Any], Any, Metadata]]] = {
    "nul-in-label": lambda w: (w.server.tokens.IssueToken, _issue(w, label="a\x00b"), w.admin),
    "nul-in-description": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, description="a\x00b"),
        w.admin,
    ),
    "nul-in-property-value": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, properties={"k": "a\x00b"}),
        w.admin,
    ),
    "nul-in-scope": lambda w: (w.server.tokens.IssueToken, _issue(w, scopes=["a\x00b"]), w.admin),
    "nul-in-subject": lambda w: (w.server.tokens.IssueToken, _issue(w, subject="a\x00b"), w.admin),
    "nul-in-organization": lambda w: (
        w.server.tokens.IssueToken,
        pb.IssueTokenRequest(organization="ac\x00me", label="x"),
        w.admin,
    ),
    "unicode-label": lambda w: (w.server.tokens.IssueToken, _issue(w, label="ラベル 🚀"), w.admin),
    "huge-label": lambda w: (w.server.tokens.IssueToken, _issue(w, label="x" * 100_000), w.admin),
    "ten-thousand-scopes": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, scopes=[f"s{i}" for i in range(10_000)]),
        w.admin,
    ),
    "profile-out-of-range": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, scope_profile=-1),
        w.admin,
    ),
    "expiry-beyond-year-9999": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, expires_at=Timestamp(seconds=2**40)),
        w.admin,
    ),
    "expiry-in-year-9999": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, expires_at=Timestamp(seconds=253402300799)),
        w.admin,
    ),
    "expiry-with-negative-nanos": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, expires_at=Timestamp(seconds=4_000_000_000, nanos=-1)),
        w.admin,
    ),
    "ttl-of-minus-forever": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, ttl=Duration(seconds=-(2**62))),
        w.admin,
    ),
    "ttl-with-huge-nanos": lambda w: (
        w.server.tokens.IssueToken,
        _issue(w, ttl=Duration(seconds=1, nanos=2**31 - 1)),
        w.admin,
    ),
    "get-with-unicode-id": lambda w: (
        w.server.tokens.GetToken,
        pb.GetTokenRequest(token_id="é" * 16),
        w.admin,
    ),
    "get-with-nul-id": lambda w: (
        w.server.tokens.GetToken,
        pb.GetTokenRequest(token_id="\x00" * 16),
        w.admin,
    ),
    "list-with-huge-page-size-negative": lambda w: (
        w.server.tokens.ListTokens,
        pb.ListTokensRequest(organization=w.org, page_size=-(2**31)),
        w.admin,
    ),
    "list-with-a-megabyte-page-token": lambda w: (
        w.server.tokens.ListTokens,
        pb.ListTokensRequest(organization=w.org, page_token="A" * 1_000_000),
        w.admin,
    ),
    "list-with-a-forged-huge-position": lambda w: (
        w.server.tokens.ListTokens,
        pb.ListTokensRequest(
            organization=w.org, page_size=1, page_token=_forged_page_token(w, 10**30)
        ),
        w.admin,
    ),
    "list-with-a-forged-text-position": lambda w: (
        w.server.tokens.ListTokens,
        pb.ListTokensRequest(
            organization=w.org, page_size=1, page_token=_forged_page_token(w, "x\x00")
        ),
        w.admin,
    ),
    "list-with-a-forged-nested-position": lambda w: (
        w.server.tokens.ListTokens,
        pb.ListTokensRequest(
            organization=w.org, page_size=1, page_token=_forged_page_token(w, [[1]])
        ),
        w.admin,
    ),
    "list-organizations-with-a-forged-token": lambda w: (
        w.server.admin.ListOrganizations,
        admin_pb2.ListOrganizationsRequest(page_token="W1sib3JnYW5pemF0aW9ucyIsbnVsbF0sMV0"),
        w.admin,
    ),
    "validate-a-megabyte-token": lambda w: (
        w.server.tokens.Validate,
        pb.ValidateRequest(token="tka_" + "A" * 1_000_000, permission="download"),
        (),
    ),
    "validate-a-unicode-token": lambda w: (
        w.server.tokens.Validate,
        pb.ValidateRequest(token="tka_" + "é" * 66),
        (),
    ),
    "validate-a-nul-permission": lambda w: (
        w.server.tokens.Validate,
        pb.ValidateRequest(token=w.owner.credential.secret, permission="down\x00load"),
        (),
    ),
    "validate-a-megabyte-permission": lambda w: (
        w.server.tokens.Validate,
        pb.ValidateRequest(token=w.owner.credential.secret, permission="a." * 500_000),
        (),
    ),
    "validate-batch-over-the-limit": lambda w: (
        w.server.tokens.ValidateBatch,
        pb.ValidateBatchRequest(requests=[pb.ValidateRequest(token="x")] * 5000),
        (),
    ),
    "nul-in-display-name": lambda w: (
        w.server.admin.CreateOrganization,
        admin_pb2.CreateOrganizationRequest(name=unique("nul"), display_name="a\x00b"),
        w.admin,
    ),
    "unicode-principal-name": lambda w: (
        w.server.admin.CreatePrincipal,
        admin_pb2.CreatePrincipalRequest(name="alïce", kind_name="user"),
        w.admin,
    ),
    "kind-out-of-range": lambda w: (
        w.server.admin.CreatePrincipal,
        admin_pb2.CreatePrincipalRequest(
            name=unique("p"), kind=admin_pb2.PrincipalKind.ValueType(-1)
        ),
        w.admin,
    ),
    "role-out-of-range": lambda w: (
        w.server.admin.AddMember,
        admin_pb2.AddMemberRequest(
            organization=w.org, principal=w.stranger, role=admin_pb2.Role.ValueType(-1)
        ),
        w.admin,
    ),
    "an-eight-kilobyte-bearer": lambda w: (
        w.server.tokens.ListTokens,
        pb.ListTokensRequest(organization=w.org),
        (("authorization", "Bearer " + "x" * 8000),),
    ),
}


@dataclass(frozen=True)
class Refused:
    """The call must fail with one of `codes` (more than one only where gRPC itself decides)."""

    codes: tuple[Code, ...] = (Code.INVALID_ARGUMENT,)


@dataclass(frozen=True)
class Answered:
    """The call must succeed (the input is odd but valid) and `check` must hold of the answer."""

    check: Callable[[Any], bool]


INVALID = Refused()
MALFORMED_TOKEN = Answered(
    lambda answer: (answer.valid, answer.reason) == (False, pb.REASON_MALFORMED)
)
INVALID_PERMISSION = Answered(
    lambda answer: (answer.valid, answer.reason) == (False, pb.REASON_INVALID_PERMISSION)
)
# What each hostile input must earn. Every case is here: the test fails on a missing one.
EXPECTED: dict[str, Refused | Answered] = {
    "nul-in-label": INVALID,
    "nul-in-description": INVALID,
    "nul-in-property-value": INVALID,
    "nul-in-scope": INVALID,
    "nul-in-subject": INVALID,
    "nul-in-organization": INVALID,
    "unicode-label": Answered(lambda answer: answer.token.label == "ラベル 🚀"),
    "huge-label": INVALID,
    "ten-thousand-scopes": INVALID,
    "profile-out-of-range": INVALID,
    "expiry-beyond-year-9999": INVALID,
    "expiry-in-year-9999": Answered(lambda answer: answer.token.expires_at.seconds == 253402300799),
    "expiry-with-negative-nanos": INVALID,
    "ttl-of-minus-forever": INVALID,
    "ttl-with-huge-nanos": INVALID,
    "get-with-unicode-id": INVALID,
    "get-with-nul-id": INVALID,
    "list-with-huge-page-size-negative": INVALID,
    "list-with-a-megabyte-page-token": INVALID,
    "list-with-a-forged-huge-position": INVALID,
    "list-with-a-forged-text-position": INVALID,
    "list-with-a-forged-nested-position": INVALID,
    "list-organizations-with-a-forged-token": INVALID,
    "validate-a-megabyte-token": MALFORMED_TOKEN,
    "validate-a-unicode-token": MALFORMED_TOKEN,
    "validate-a-nul-permission": INVALID_PERMISSION,
    "validate-a-megabyte-permission": INVALID_PERMISSION,
    "validate-batch-over-the-limit": INVALID,
    "nul-in-display-name": INVALID,
    "unicode-principal-name": INVALID,
    "kind-out-of-range": INVALID,
    "role-out-of-range": INVALID,
    # Over gRPC's 8 KiB soft metadata limit, gRPC itself refuses some such calls
    # (RESOURCE_EXHAUSTED) at random; the others reach us and are refused as malformed bearers.
    "an-eight-kilobyte-bearer": Refused((Code.UNAUTHENTICATED, Code.RESOURCE_EXHAUSTED)),
}


def test_every_hostile_case_has_an_expected_outcome() -> None:
    assert set(EXPECTED) == set(HOSTILE)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_earns_its_expected_answer_never_unknown_or_internal(
    world: World, case: str
) -> None:
    rpc, request, metadata = HOSTILE[case](world)
    expected = EXPECTED[case]
    before = snapshot(world)

    if isinstance(expected, Refused):
        with pytest.raises(grpc.RpcError) as caught:
            rpc(request, metadata=metadata)
        error = caught.value
        assert error.code() in expected.codes, f"{error.code()}: {error.details()}"
        message = error.details()
        assert message and "Traceback" not in message
        assert snapshot(world) == before
    else:
        answer = rpc(request, metadata=metadata)
        assert expected.check(answer), answer

    assert world.server.tokens.Ping(pb.PingRequest(payload="still up")).payload == "still up"
