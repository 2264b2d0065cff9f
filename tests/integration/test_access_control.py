"""Who may call what: bearer authentication, method scopes, roles and organisation isolation."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from authority.domain.token_format import new_token
from authority.v1 import admin_pb2
from authority.v1 import token_authority_pb2 as pb
from tests.harness import ManualClock, ServerHandle, bearer, unique
from tests.integration.helpers import (
    MANAGE_SCOPES,
    Metadata,
    add_member,
    all_organizations,
    all_tokens,
    credential,
    error_message,
    issue,
    make_org,
    make_org_key,
    make_principal,
    make_user_with_token,
    management_calls,
    refused,
    rpc_of,
    validate,
)

NOT_FOUND = grpc.StatusCode.NOT_FOUND
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def issue_request(org: str, **fields: object) -> pb.IssueTokenRequest:
    return pb.IssueTokenRequest(organization=org, label="x", **fields)  # type: ignore[arg-type]


def assert_same_refusal(
    hidden: grpc.RpcError, hidden_name: str, missing: grpc.RpcError, missing_name: str
) -> None:
    """Both NOT_FOUND, and the messages differ in nothing but the name asked about."""
    assert hidden.code() == missing.code() == NOT_FOUND
    assert error_message(hidden).replace(hidden_name, "NAME") == error_message(missing).replace(
        missing_name, "NAME"
    )


def checksum_broken(secret: str) -> str:
    """The token with its last (checksum) character changed: always a different character."""
    return secret[:-1] + ("y" if secret.endswith("x") else "x")


# -- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize("method", [method for _, method, _ in management_calls("acme", "0" * 16)])
def test_every_management_call_without_credentials_is_unauthenticated(
    server: ServerHandle, org: str, method: str
) -> None:
    calls = {name: (stub, request) for stub, name, request in management_calls(org, "0" * 16)}
    stub, request = calls[method]

    error = refused(UNAUTHENTICATED, rpc_of(server, stub, method), request)

    assert "authorization" in error_message(error) and "Bearer" in error_message(error)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(lambda secret: f"Basic {secret}", id="basic-scheme"),
        pytest.param(lambda secret: secret, id="no-scheme"),
        pytest.param(lambda secret: "Bearer", id="scheme-only"),
        pytest.param(lambda secret: "Bearer    ", id="blank-credential"),
        pytest.param(lambda secret: "Bearer garbage", id="garbage"),
        pytest.param(lambda secret: f"Bearer {secret[:-1]}", id="truncated"),
        pytest.param(lambda secret: f"Bearer {checksum_broken(secret)}", id="checksum-broken"),
        pytest.param(lambda secret: f"Bearer {new_token().value}", id="never-issued"),
    ],
)
def test_malformed_or_unknown_bearer_is_unauthenticated(
    server: ServerHandle, admin_token: str, org: str, header: object
) -> None:
    assert callable(header)

    refused(
        UNAUTHENTICATED,
        server.tokens.ListTokens,
        pb.ListTokensRequest(organization=org),
        (("authorization", header(admin_token)),),
    )


def test_a_bearer_whose_checksum_is_broken_is_unauthenticated_whatever_it_ends_with(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    # A real bearer of each kind of ending: one ending in "x" (1 token in 62) and one not.
    keys: dict[bool, str] = {}
    for _ in range(2000):
        key = make_org_key(server, admin_token, org, list(MANAGE_SCOPES))
        keys.setdefault(key.secret.endswith("x"), key.secret)
        if len(keys) == 2:
            break
    assert set(keys) == {True, False}, "no issued token ended in x in 2000 tries"

    for secret in keys.values():
        assert checksum_broken(secret) != secret
        refused(
            UNAUTHENTICATED,
            server.tokens.ListTokens,
            pb.ListTokensRequest(organization=org),
            (("authorization", f"Bearer {checksum_broken(secret)}"),),
        )


def test_bearer_with_the_right_id_but_a_wrong_secret_is_unauthenticated(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner")
    forged = new_token(owner.credential.token_id).value

    refused(
        UNAUTHENTICATED,
        server.tokens.ListTokens,
        pb.ListTokensRequest(organization=org),
        bearer(forged),
    )


def test_bearer_scheme_is_case_insensitive(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner")

    response = server.tokens.ListTokens(
        pb.ListTokensRequest(organization=org),
        metadata=(("authorization", f"bearer {owner.credential.secret}"),),
    )

    assert owner.credential.token_id in [token.token_id for token in response.tokens]


def test_revoked_bearer_is_unauthenticated_at_once(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner")
    request = pb.ListTokensRequest(organization=org)
    server.tokens.ListTokens(request, metadata=owner.metadata)  # works, and is now cached

    server.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=owner.credential.token_id), metadata=bearer(admin_token)
    )
    error = refused(UNAUTHENTICATED, server.tokens.ListTokens, request, owner.metadata)

    assert "revoked" in error_message(error)


def test_expired_bearer_is_unauthenticated(
    server: ServerHandle, admin_token: str, org: str, clock: ManualClock
) -> None:
    name = make_principal(server, admin_token)
    add_member(server, admin_token, org, name, "owner")
    issued = issue(
        server,
        bearer(admin_token),
        org,
        subject=name,
        scopes=list(MANAGE_SCOPES),
        ttl=Duration(seconds=60),
    )
    request = pb.ListTokensRequest(organization=org)
    server.tokens.ListTokens(request, metadata=bearer(issued.secret))

    clock.advance(60)
    error = refused(UNAUTHENTICATED, server.tokens.ListTokens, request, bearer(issued.secret))

    assert "expired" in error_message(error)


# -- the bearer's scopes against the called method ------------------------------------------


@pytest.mark.parametrize(
    ("method", "request_for"),
    [
        ("IssueToken", lambda org, token_id: issue_request(org, scopes=["download-only"])),
        ("ListTokens", lambda org, token_id: pb.ListTokensRequest(organization=org)),
        ("GetToken", lambda org, token_id: pb.GetTokenRequest(token_id=token_id)),
        ("RevokeToken", lambda org, token_id: pb.RevokeTokenRequest(token_id=token_id)),
    ],
)
def test_download_only_key_can_manage_nothing(
    server: ServerHandle, admin_token: str, org: str, method: str, request_for: object
) -> None:
    key = make_org_key(server, admin_token, org, ["download-only"])
    assert callable(request_for)

    error = refused(
        PERMISSION_DENIED,
        rpc_of(server, "tokens", method),
        request_for(org, key.token_id),
        key.metadata,
    )

    assert f"authority.v1.TokenAuthority.{method}" in error_message(error)
    assert validate(server, key.secret, "download").valid  # not revoked by its own key


@pytest.mark.parametrize(
    "service_scope", ["authority.v1.TokenAuthority.*", "/authority.v1.TokenAuthority/*"]
)
def test_key_scoped_to_the_token_methods_manages_its_own_organisation(
    server: ServerHandle, admin_token: str, org: str, service_scope: str
) -> None:
    key = make_org_key(server, admin_token, org, [service_scope, "download-only"])

    issued = issue(server, key.metadata, org, scopes=["download-only"])
    token_id = issued.token.token_id
    listed = all_tokens(server, key.metadata, org, include_revoked=False)
    got = server.tokens.GetToken(pb.GetTokenRequest(token_id=token_id), metadata=key.metadata)
    revoked = server.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=token_id), metadata=key.metadata
    )

    assert issued.token.created_by == f"key:{key.token_id}"
    assert {key.token_id, token_id} <= {token.token_id for token in listed}
    assert got.token_id == token_id
    assert revoked.HasField("revoked_at")
    assert validate(server, issued.secret, "download").reason == pb.REASON_REVOKED


def test_key_scoped_to_one_method_may_call_only_that_method(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    key = make_org_key(server, admin_token, org, ["authority.v1.TokenAuthority.ListTokens"])

    listed = all_tokens(server, key.metadata, org)
    refused(
        PERMISSION_DENIED,
        server.tokens.GetToken,
        pb.GetTokenRequest(token_id=key.token_id),
        key.metadata,
    )

    assert key.token_id in [token.token_id for token in listed]


def test_key_scoped_to_the_token_methods_may_not_call_admin_methods(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    key = make_org_key(server, admin_token, org, ["authority.v1.TokenAuthority.*"])

    error = refused(
        PERMISSION_DENIED,
        server.admin.ListMembers,
        admin_pb2.ListMembersRequest(organization=org),
        key.metadata,
    )

    assert "authority.v1.Admin.ListMembers" in error_message(error)


HELD = ["authority.v1.TokenAuthority.*", "download-only", "environment.control.*"]


@pytest.mark.parametrize(
    "scopes",
    [
        [],  # nothing means `all`, and the key holds no upload
        ["upload-only"],
        ["all"],
        ["*"],
        ["authority.v1.*"],
        ["authority.v1.Admin.AddMember"],
        ["environment.*"],
        ["download-only", "environment.other.Stop"],
    ],
)
def test_issuing_more_scopes_than_the_caller_holds_is_denied(
    server: ServerHandle, admin_token: str, org: str, scopes: list[str]
) -> None:
    key = make_org_key(server, admin_token, org, HELD)

    error = refused(
        PERMISSION_DENIED, server.tokens.IssueToken, issue_request(org, scopes=scopes), key.metadata
    )

    assert "scope" in error_message(error)


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        (["download-only"], ["download"]),
        (["environment.control.StopEnv"], ["environment.control.StopEnv"]),
        (["environment.control.sub.*"], ["environment.control.sub.*"]),
        (["environment.control.*"], ["environment.control.*"]),
        (["authority.v1.TokenAuthority.GetToken"], ["authority.v1.TokenAuthority.GetToken"]),
    ],
)
def test_issuing_scopes_the_caller_holds_is_allowed(
    server: ServerHandle, admin_token: str, org: str, scopes: list[str], expected: list[str]
) -> None:
    key = make_org_key(server, admin_token, org, HELD)

    issued = issue(server, key.metadata, org, scopes=scopes)

    assert list(issued.token.scopes) == expected


# -- roles within an organisation ------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_owners_and_admins_manage_every_token_of_their_organisation(
    server: ServerHandle, admin_token: str, org: str, role: str
) -> None:
    manager = make_user_with_token(server, admin_token, org, role)
    member = make_user_with_token(server, admin_token, org, "member")
    key = make_org_key(server, admin_token, org, ["download-only"])

    for_member = issue(server, manager.metadata, org, subject=member.name, scopes=["all"])
    org_key = issue(server, manager.metadata, org, scopes=["download-only"])
    listed = {token.token_id for token in all_tokens(server, manager.metadata, org)}
    got = server.tokens.GetToken(
        pb.GetTokenRequest(token_id=member.credential.token_id), metadata=manager.metadata
    )
    server.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=key.token_id), metadata=manager.metadata
    )

    assert for_member.token.subject == member.name
    assert for_member.token.created_by == manager.name
    assert org_key.token.subject == ""
    assert {
        member.credential.token_id,
        key.token_id,
        for_member.token.token_id,
        org_key.token.token_id,
    } <= listed
    assert got.subject == member.name
    assert validate(server, key.secret).reason == pb.REASON_REVOKED


def test_member_may_issue_tokens_for_itself(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    member = make_user_with_token(server, admin_token, org, "member")

    issued = issue(server, member.metadata, org, subject=member.name, scopes=["download-only"])

    assert issued.token.subject == member.name
    assert issued.token.created_by == member.name
    assert validate(server, issued.secret, "download").valid


@pytest.mark.parametrize("subject", ["peer", ""], ids=["for-a-peer", "organisation-key"])
def test_member_may_not_issue_tokens_for_anyone_else(
    server: ServerHandle, admin_token: str, org: str, subject: str
) -> None:
    member = make_user_with_token(server, admin_token, org, "member")
    peer = make_user_with_token(server, admin_token, org, "member")
    subject = peer.name if subject == "peer" else ""

    error = refused(
        PERMISSION_DENIED,
        server.tokens.IssueToken,
        issue_request(org, subject=subject, scopes=["download-only"]),
        member.metadata,
    )

    assert member.name in error_message(error)  # tells the member which subject it may use


def test_member_lists_only_its_own_tokens(server: ServerHandle, admin_token: str, org: str) -> None:
    member = make_user_with_token(server, admin_token, org, "member")
    make_user_with_token(server, admin_token, org, "member")
    make_org_key(server, admin_token, org, ["download-only"])
    own = issue(server, member.metadata, org, subject=member.name, scopes=["download-only"])

    listed = all_tokens(server, member.metadata, org)

    assert [token.token_id for token in listed] == [
        own.token.token_id,
        member.credential.token_id,
    ]


def test_member_gets_and_revokes_its_own_tokens(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    member = make_user_with_token(server, admin_token, org, "member")
    own = issue(server, member.metadata, org, subject=member.name, scopes=["download-only"])
    request_id = own.token.token_id

    got = server.tokens.GetToken(pb.GetTokenRequest(token_id=request_id), metadata=member.metadata)
    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=request_id), metadata=member.metadata)

    assert got == own.token
    assert validate(server, own.secret).reason == pb.REASON_REVOKED


@pytest.mark.parametrize("method", ["GetToken", "RevokeToken"])
@pytest.mark.parametrize("whose", ["peer", "key"])
def test_member_is_told_another_members_token_does_not_exist(
    server: ServerHandle, admin_token: str, org: str, method: str, whose: str
) -> None:
    member = make_user_with_token(server, admin_token, org, "member")
    if whose == "peer":
        target = make_user_with_token(server, admin_token, org, "member").credential
    else:
        target = make_org_key(server, admin_token, org, ["download-only"])
    missing = new_token().token_id
    request_type = pb.GetTokenRequest if method == "GetToken" else pb.RevokeTokenRequest
    rpc = rpc_of(server, "tokens", method)

    hidden = refused(NOT_FOUND, rpc, request_type(token_id=target.token_id), member.metadata)
    absent = refused(NOT_FOUND, rpc, request_type(token_id=missing), member.metadata)

    assert_same_refusal(hidden, target.token_id, absent, missing)
    assert validate(server, target.secret).valid


def test_demoted_admin_loses_its_rights_with_the_next_call(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    manager = make_user_with_token(server, admin_token, org, "admin")
    peer = make_user_with_token(server, admin_token, org, "member")
    request = pb.GetTokenRequest(token_id=peer.credential.token_id)
    server.tokens.GetToken(request, metadata=manager.metadata)

    add_member(server, admin_token, org, manager.name, "member")

    refused(NOT_FOUND, server.tokens.GetToken, request, manager.metadata)
    assert [t.token_id for t in all_tokens(server, manager.metadata, org)] == [
        manager.credential.token_id
    ]


# -- subjects --------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["nowhere", "another-organisation", "does-not-exist"])
def test_subject_must_be_a_member_of_the_organisation(
    server: ServerHandle, admin_token: str, org: str, where: str
) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner")
    if where == "does-not-exist":
        subject = unique("ghost")
    else:
        subject = make_principal(server, admin_token)
        if where == "another-organisation":
            add_member(server, admin_token, make_org(server, admin_token), subject, "owner")

    for metadata in (bearer(admin_token), owner.metadata):
        error = refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            server.tokens.IssueToken,
            issue_request(org, subject=subject, scopes=["download-only"]),
            metadata,
        )
        assert subject in error_message(error) and "AddMember" in error_message(error)


# -- isolation between organisations ---------------------------------------------------------


def _calls_on_organisation(org: str, principal: str) -> list[tuple[str, str, object]]:
    return [
        ("tokens", "IssueToken", issue_request(org, scopes=["download-only"])),
        ("tokens", "ListTokens", pb.ListTokensRequest(organization=org)),
        ("admin", "ListMembers", admin_pb2.ListMembersRequest(organization=org)),
        (
            "admin",
            "AddMember",
            admin_pb2.AddMemberRequest(organization=org, principal=principal, role_name="member"),
        ),
        (
            "admin",
            "RemoveMember",
            admin_pb2.RemoveMemberRequest(organization=org, principal=principal),
        ),
    ]


def _outsiders(server: ServerHandle, admin_token: str) -> dict[str, Metadata]:
    home = make_org(server, admin_token, "home")
    return {
        "owner": make_user_with_token(server, admin_token, home, "owner").metadata,
        "key": make_org_key(server, admin_token, home, list(MANAGE_SCOPES)).metadata,
    }


@pytest.mark.parametrize("outsider", ["owner", "key"])
def test_another_organisation_looks_exactly_like_one_that_does_not_exist(
    server: ServerHandle, admin_token: str, org: str, outsider: str
) -> None:
    caller = _outsiders(server, admin_token)[outsider]
    victim = make_user_with_token(server, admin_token, org, "member")
    missing = unique("missing")

    for index, (stub, method, request) in enumerate(_calls_on_organisation(org, victim.name)):
        hidden = refused(NOT_FOUND, rpc_of(server, stub, method), request, caller)
        _, _, missing_request = _calls_on_organisation(missing, victim.name)[index]
        absent = refused(NOT_FOUND, rpc_of(server, stub, method), missing_request, caller)
        assert_same_refusal(hidden, org, absent, missing)

    assert list(all_tokens(server, bearer(admin_token), org)) == [victim.credential.token]
    assert victim.name in {
        member.principal
        for member in server.admin.ListMembers(
            admin_pb2.ListMembersRequest(organization=org), metadata=bearer(admin_token)
        ).members
    }


@pytest.mark.parametrize("method", ["GetToken", "RevokeToken"])
@pytest.mark.parametrize("outsider", ["owner", "key"])
def test_another_organisations_token_looks_exactly_like_one_that_does_not_exist(
    server: ServerHandle, admin_token: str, org: str, method: str, outsider: str
) -> None:
    caller = _outsiders(server, admin_token)[outsider]
    target = make_org_key(server, admin_token, org, ["download-only"])
    missing = new_token().token_id
    request_type = pb.GetTokenRequest if method == "GetToken" else pb.RevokeTokenRequest
    rpc = rpc_of(server, "tokens", method)

    hidden = refused(NOT_FOUND, rpc, request_type(token_id=target.token_id), caller)
    absent = refused(NOT_FOUND, rpc, request_type(token_id=missing), caller)

    assert_same_refusal(hidden, target.token_id, absent, missing)
    assert validate(server, target.secret, "download").valid


def test_global_administrators_own_token_is_hidden_from_organisation_owners(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner")
    admin_id = validate(server, admin_token).token_id
    missing = new_token().token_id
    rpc = server.tokens.GetToken

    hidden = refused(NOT_FOUND, rpc, pb.GetTokenRequest(token_id=admin_id), owner.metadata)
    absent = refused(NOT_FOUND, rpc, pb.GetTokenRequest(token_id=missing), owner.metadata)

    assert_same_refusal(hidden, admin_id, absent, missing)


def test_token_is_confined_to_its_own_organisation_whatever_its_subject_belongs_to(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner")
    second = make_org(server, admin_token)
    add_member(server, admin_token, second, owner.name, "owner")

    refused(
        NOT_FOUND,
        server.tokens.ListTokens,
        pb.ListTokensRequest(organization=second),
        owner.metadata,
    )
    assert all_organizations(server, owner.metadata) == [org]


@pytest.mark.parametrize("caller", ["owner", "member", "key"])
def test_list_organizations_shows_only_the_callers_own(
    server: ServerHandle, admin_token: str, org: str, caller: str
) -> None:
    make_org(server, admin_token)
    if caller == "key":
        metadata = make_org_key(server, admin_token, org, list(MANAGE_SCOPES)).metadata
    else:
        metadata = make_user_with_token(server, admin_token, org, caller).metadata

    assert all_organizations(server, metadata) == [org]


def test_global_administrator_lists_every_organisation(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    other = make_org(server, admin_token)

    assert {org, other} <= set(all_organizations(server, bearer(admin_token)))


def test_removed_member_token_no_longer_authenticates(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    member = make_user_with_token(server, admin_token, org, "member")

    server.admin.RemoveMember(
        admin_pb2.RemoveMemberRequest(organization=org, principal=member.name),
        metadata=bearer(admin_token),
    )

    refused(
        UNAUTHENTICATED,
        server.tokens.ListTokens,
        pb.ListTokensRequest(organization=org),
        member.metadata,
    )


def test_organisation_key_issued_by_a_key_records_the_issuing_key(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    key = make_org_key(server, admin_token, org, list(MANAGE_SCOPES))

    child = credential(issue(server, key.metadata, org, scopes=["download-only"]))

    assert child.token.created_by == f"key:{key.token_id}"
    assert child.token.organization == org and child.token.subject == ""
