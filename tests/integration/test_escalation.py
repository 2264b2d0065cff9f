"""Nobody gains power they were not given (issue 7), through the real server on each backend.

A token never stands above the caller that issues it: not by its subject's role, not by its
lifetime, and not by being global. A bad value is answered INVALID_ARGUMENT with a short,
bounded message that never quotes anything shaped like a token. Every refusal is checked for
its google.rpc.ErrorInfo reason, and, where it is cheap to see, for having changed nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authority.v1 import admin_pb2
from authority.v1 import token_authority_pb2 as pb
from tests.harness import ServerHandle, bearer, unique
from tests.integration.helpers import (
    MANAGE_SCOPES,
    Credential,
    Metadata,
    add_member,
    all_tokens,
    bad_request_fields,
    credential,
    error_reason,
    issue,
    make_org_key,
    make_principal,
    make_user_with_token,
    members,
    refused,
    validate,
)

PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


def token_ids(server: ServerHandle, admin_token: str, organization: str) -> set[str]:
    """Every token of the organisation, revoked ones included, as the admin sees them."""
    return {token.token_id for token in all_tokens(server, bearer(admin_token), organization)}


def caller_of(server: ServerHandle, admin_token: str, organization: str, kind: str) -> Metadata:
    """A management bearer of `organization`: a user with role `kind`, or a full org key."""
    if kind == "key":
        return make_org_key(server, admin_token, organization, MANAGE_SCOPES).metadata
    return make_user_with_token(server, admin_token, organization, kind).metadata


def issue_request(organization: str, subject: str = "", **fields: Any) -> pb.IssueTokenRequest:
    return pb.IssueTokenRequest(
        organization=organization,
        subject=subject,
        label=unique("label"),
        scopes=list(MANAGE_SCOPES),
        **fields,
    )


# -- 1. the subject's role: never above the issuer's standing ---------------------------------


@pytest.mark.parametrize("kind", ["admin", "key"])
def test_an_admin_or_org_key_issues_for_members_admins_and_keys_but_never_for_an_owner(
    server: ServerHandle, admin_token: str, org: str, kind: str
) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner")
    member = make_principal(server, admin_token)
    add_member(server, admin_token, org, member, "member")
    other_admin = make_principal(server, admin_token)
    add_member(server, admin_token, org, other_admin, "admin")
    caller = caller_of(server, admin_token, org, kind)
    before = token_ids(server, admin_token, org)

    error = refused(
        PERMISSION_DENIED, server.tokens.IssueToken, issue_request(org, owner.name), caller
    )
    assert error_reason(error) == "SUBJECT_OUTRANKS_ISSUER", error.details()
    assert token_ids(server, admin_token, org) == before, "a refused IssueToken stored a token"

    issued = {
        subject: issue(server, caller, org, subject=subject, scopes=list(MANAGE_SCOPES))
        for subject in (member, other_admin, "")
    }
    for subject, response in issued.items():
        assert response.token.subject == subject
        answer = validate(server, response.secret, "authority.v1.TokenAuthority.IssueToken")
        assert answer.valid, (subject, answer)


def test_an_admin_cannot_issue_itself_an_owner_token_and_so_cannot_make_itself_owner(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner")
    admin = make_user_with_token(server, admin_token, org, "admin")
    before = token_ids(server, admin_token, org)

    # The escalation: a token acting for the owner, then promoting oneself with it.
    error = refused(
        PERMISSION_DENIED, server.tokens.IssueToken, issue_request(org, owner.name), admin.metadata
    )
    assert error_reason(error) == "SUBJECT_OUTRANKS_ISSUER", error.details()
    promote = admin_pb2.AddMemberRequest(organization=org, principal=admin.name, role_name="owner")
    error = refused(PERMISSION_DENIED, server.admin.AddMember, promote, admin.metadata)
    assert error_reason(error) == "ROLE_TOO_LOW", error.details()

    assert members(server, admin_token, org)[admin.name] == admin_pb2.ROLE_ADMIN
    assert token_ids(server, admin_token, org) == before


def test_a_member_issues_only_for_itself_never_an_org_key(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    member = make_user_with_token(server, admin_token, org, "member")
    other = make_principal(server, admin_token)
    add_member(server, admin_token, org, other, "member")
    before = token_ids(server, admin_token, org)

    for subject in ("", other):
        error = refused(
            PERMISSION_DENIED,
            server.tokens.IssueToken,
            issue_request(org, subject),
            member.metadata,
        )
        assert error_reason(error) == "ROLE_TOO_LOW", (subject, error.details())
    assert token_ids(server, admin_token, org) == before

    own = issue(server, member.metadata, org, subject=member.name, scopes=list(MANAGE_SCOPES))
    assert own.token.subject == member.name


@pytest.mark.parametrize("kind", ["admin", "key"])
def test_an_admin_or_org_key_sees_an_owner_token_but_cannot_revoke_it_the_owner_can(
    server: ServerHandle, admin_token: str, org: str, kind: str
) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner")
    caller = caller_of(server, admin_token, org, kind)
    target = owner.credential.token_id

    seen = server.tokens.GetToken(pb.GetTokenRequest(token_id=target), metadata=caller)
    assert (seen.token_id, seen.subject) == (target, owner.name)
    error = refused(
        PERMISSION_DENIED,
        server.tokens.RevokeToken,
        pb.RevokeTokenRequest(token_id=target),
        caller,
    )
    assert error_reason(error) == "ROLE_TOO_LOW", error.details()
    assert validate(server, owner.credential.secret).valid, "a refused revoke revoked the token"

    # An owner's tokens are an owner's business: another owner may revoke it.
    other_owner = make_user_with_token(server, admin_token, org, "owner")
    revoked = server.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=target), metadata=other_owner.metadata
    )
    assert revoked.HasField("revoked_at")
    assert not validate(server, owner.credential.secret).valid


def test_an_admin_revokes_the_tokens_of_members_admins_and_org_keys(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    admin = make_user_with_token(server, admin_token, org, "admin")
    targets = [
        make_user_with_token(server, admin_token, org, "member").credential,
        make_user_with_token(server, admin_token, org, "admin").credential,
        make_org_key(server, admin_token, org, MANAGE_SCOPES),
    ]
    owner = make_user_with_token(server, admin_token, org, "owner")

    for target in targets:
        server.tokens.RevokeToken(
            pb.RevokeTokenRequest(token_id=target.token_id), metadata=admin.metadata
        )
        assert not validate(server, target.secret).valid
    error = refused(
        PERMISSION_DENIED,
        server.tokens.RevokeToken,
        pb.RevokeTokenRequest(token_id=owner.credential.token_id),
        admin.metadata,
    )
    assert error_reason(error) == "ROLE_TOO_LOW", error.details()


# -- 2. the lifetime: never beyond the issuer's -------------------------------------------------


def expiring_bearer(
    server: ServerHandle, admin_token: str, organization: str, kind: str, ttl: timedelta
) -> tuple[Credential, str]:
    """A management bearer of `organization` expiring after `ttl`; the subject it may issue
    for (its own name; an organisation key issues keys)."""
    subject = ""
    if kind != "key":
        subject = make_principal(server, admin_token)
        add_member(server, admin_token, organization, subject, kind)
    response = issue(
        server,
        bearer(admin_token),
        organization,
        subject=subject,
        scopes=list(MANAGE_SCOPES),
        ttl=Duration(seconds=int(ttl.total_seconds())),
    )
    return credential(response), subject


def timestamp(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


@pytest.mark.parametrize("kind", ["owner", "admin", "member", "key"])
def test_a_token_never_outlives_the_bearer_that_issues_it(
    server: ServerHandle, admin_token: str, org: str, kind: str
) -> None:
    now = int(server.clock().timestamp())
    issuer, subject = expiring_bearer(server, admin_token, org, kind, timedelta(hours=1))
    limit = issuer.token.expires_at
    assert limit.seconds == now + 3600

    # No expiry asked: it inherits the bearer's.
    inherited = issue(server, issuer.metadata, org, subject=subject, scopes=["download"])
    assert inherited.token.HasField("expires_at"), "an expiring bearer issued an eternal token"
    assert inherited.token.expires_at == limit

    # A later one, by instant or by ttl: refused, and nothing stored.
    before = token_ids(server, admin_token, org)
    later: list[dict[str, Timestamp | Duration]] = [
        {"expires_at": timestamp(limit.seconds + 1)},
        {"expires_at": timestamp(limit.seconds + 365 * 86400)},
        {"ttl": Duration(seconds=2 * 3600)},
    ]
    for expiry in later:
        error = refused(
            PERMISSION_DENIED,
            server.tokens.IssueToken,
            issue_request(org, subject, **expiry),
            issuer.metadata,
        )
        assert error_reason(error) == "LIFETIME_EXCEEDS_ISSUER", (expiry, error.details())
    assert token_ids(server, admin_token, org) == before

    # An earlier one, or exactly the bearer's, is kept as asked.
    earlier = issue(
        server, issuer.metadata, org, subject=subject, expires_at=timestamp(limit.seconds - 600)
    )
    assert earlier.token.expires_at.seconds == limit.seconds - 600
    by_ttl = issue(server, issuer.metadata, org, subject=subject, ttl=Duration(seconds=600))
    assert by_ttl.token.expires_at.seconds == now + 600
    same = issue(server, issuer.metadata, org, subject=subject, expires_at=limit)
    assert same.token.expires_at == limit

    # The same requests from a bearer that never expires are granted as asked.
    eternal = issue(server, bearer(admin_token), org, subject=subject)
    assert not eternal.token.HasField("expires_at")
    far = issue(server, bearer(admin_token), org, subject=subject, ttl=Duration(seconds=7200))
    assert far.token.expires_at.seconds == now + 7200


# -- 3. a bad value is never echoed back in full, nor anything shaped like a token -------------

# 100 KB that no field accepts and that is not shaped like a secret (no long alphanumeric run).
HUGE = ("Not A Valid Value! " * 6000)[:100_000]
MAX_MESSAGE = 1000


def status_texts(error: grpc.RpcError) -> list[str]:
    """The message and every human-readable string of the google.rpc details."""
    texts = [error.details() or ""]
    status = rpc_status.from_call(error)
    assert status is not None
    texts.append(status.message)
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            texts.extend(violation.description for violation in bad_request.field_violations)
        texts.append(detail.value.decode("latin-1"))
    return texts


Call = Callable[[ServerHandle, str], tuple[Callable[..., Any], Any]]

HUGE_CASES: dict[str, tuple[str, Call]] = {
    "CreateOrganization.name": (
        "name",
        lambda s, org: (s.admin.CreateOrganization, admin_pb2.CreateOrganizationRequest(name=HUGE)),
    ),
    "IssueToken.organization": (
        "organization",
        lambda s, org: (s.tokens.IssueToken, pb.IssueTokenRequest(organization=HUGE)),
    ),
    "ListTokens.organization": (
        "organization",
        lambda s, org: (s.tokens.ListTokens, pb.ListTokensRequest(organization=HUGE)),
    ),
    "IssueToken.scopes": (
        "scopes",
        lambda s, org: (s.tokens.IssueToken, pb.IssueTokenRequest(organization=org, scopes=[HUGE])),
    ),
    "IssueToken.properties key": (
        "properties",
        lambda s, org: (
            s.tokens.IssueToken,
            pb.IssueTokenRequest(organization=org, properties={HUGE: "value"}),
        ),
    ),
    "GetToken.token_id": (
        "token_id",
        lambda s, org: (s.tokens.GetToken, pb.GetTokenRequest(token_id=HUGE)),
    ),
    "RevokeToken.token_id": (
        "token_id",
        lambda s, org: (s.tokens.RevokeToken, pb.RevokeTokenRequest(token_id=HUGE)),
    ),
    "CreatePrincipal.name": (
        "name",
        lambda s, org: (
            s.admin.CreatePrincipal,
            admin_pb2.CreatePrincipalRequest(name=HUGE, kind_name="user"),
        ),
    ),
    "AddMember.principal": (
        "principal",
        lambda s, org: (
            s.admin.AddMember,
            admin_pb2.AddMemberRequest(organization=org, principal=HUGE, role_name="member"),
        ),
    ),
    "AddMember.role_name": (
        "role_name",
        lambda s, org: (
            s.admin.AddMember,
            admin_pb2.AddMemberRequest(organization=org, principal="someone", role_name=HUGE),
        ),
    ),
}


@pytest.mark.parametrize("case", list(HUGE_CASES))
def test_a_huge_bad_value_is_invalid_argument_with_a_short_message(
    server: ServerHandle, admin_token: str, org: str, case: str
) -> None:
    field, build = HUGE_CASES[case]
    rpc, request = build(server, org)

    error = refused(INVALID_ARGUMENT, rpc, request, bearer(admin_token))

    assert error_reason(error) == "FIELD_INVALID", error.details()
    assert bad_request_fields(error) == [field]
    message = error.details() or ""
    assert field in message
    assert len(message) < MAX_MESSAGE, f"{len(message)} characters: {message[:200]!r}..."
    for text in status_texts(error):
        assert HUGE[:41] not in text, f"more than a short prefix echoed: {text[:200]!r}"
        assert len(text) < 2 * MAX_MESSAGE


@pytest.mark.parametrize("rpc_name", ["GetToken", "RevokeToken"])
def test_a_token_value_passed_as_token_id_is_never_echoed(
    server: ServerHandle, admin_token: str, org: str, rpc_name: str
) -> None:
    victim = make_user_with_token(server, admin_token, org, "owner").credential
    secret_part = victim.secret.split("_", 2)[2]
    request_type = pb.GetTokenRequest if rpc_name == "GetToken" else pb.RevokeTokenRequest
    rpc = getattr(server.tokens, rpc_name)

    for pasted in (victim.secret, f" {victim.secret}\n", victim.secret[:-1]):
        error = refused(INVALID_ARGUMENT, rpc, request_type(token_id=pasted), bearer(admin_token))
        assert error_reason(error) == "FIELD_INVALID"
        assert bad_request_fields(error) == ["token_id"]
        for text in status_texts(error):
            assert secret_part[:20] not in text, f"the secret was echoed: {text!r}"
            assert "tka_" not in text, f"a token-shaped value was echoed: {text!r}"
        metadata = error.trailing_metadata() or ()
        for metadatum in metadata:
            # grpc-stubs say bytes, but a key without -bin carries str (hence the isinstance).
            value: str | bytes = metadatum.value
            raw = value if isinstance(value, bytes) else value.encode()
            assert secret_part[:20].encode() not in raw

    assert validate(server, victim.secret).valid


# -- 6. a global token: only from a global administrator's global token, for one ---------------


@pytest.mark.parametrize("kind", ["owner", "key", "confined-global-admin"])
def test_only_a_global_admins_global_token_may_issue_a_global_token(
    server: ServerHandle, admin_token: str, org: str, kind: str
) -> None:
    if kind == "confined-global-admin":
        # The global administrator's own token confined to an organisation it owns.
        add_member(server, admin_token, org, "admin", "owner")
        caller = issue(server, bearer(admin_token), org, subject="admin", scopes=["*"]).secret
        metadata = bearer(caller)
    else:
        metadata = caller_of(server, admin_token, org, kind)

    for subject in ("", "admin"):
        error = refused(
            PERMISSION_DENIED,
            server.tokens.IssueToken,
            pb.IssueTokenRequest(organization="", subject=subject, scopes=["*"]),
            metadata,
        )
        assert error_reason(error) == "GLOBAL_ADMIN_REQUIRED", (subject, error.details())


def test_a_global_token_acts_only_for_a_global_administrator(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    ordinary = make_principal(server, admin_token)
    add_member(server, admin_token, org, ordinary, "owner")

    for subject in (ordinary, unique("nobody")):
        error = refused(
            FAILED_PRECONDITION,
            server.tokens.IssueToken,
            pb.IssueTokenRequest(organization="", subject=subject, scopes=["*"]),
            bearer(admin_token),
        )
        assert error_reason(error) == "SUBJECT_NOT_A_MEMBER", (subject, error.details())
        assert "global administrator" in (error.details() or "")
